//! The client port with TLS: handshakes run in tasks of their own (a slow or silent client
//! holds only its own task, never the accept loop), at most [`HANDSHAKES_AT_ONCE`] at a time and
//! each for at most [`HANDSHAKE_TIMEOUT`]; finished connections go to axum through a bounded
//! queue, with the verified client certificate's common name (see `crate::client_port`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; connections beyond are closed at once (a flood of them must not
/// take every core to the key exchange).
pub const HANDSHAKES_AT_ONCE: usize = 256;
/// Finished connections waiting for axum to take them.
const READY_MAX: usize = 64;

/// Who is on the other end of a client connection: its address and, with client certificates,
/// the verified certificate's common name (the user, when auth is on and no token is given).
#[derive(Clone, Debug)]
pub struct ClientAddr {
    pub remote: SocketAddr,
    pub common_name: Option<Arc<str>>,
}

pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, ClientAddr)>,
}

impl TlsListener {
    /// Accepts on `listener`, handshaking with `config` (its ALPN must offer h2 for gRPC).
    /// Certificates must also be what `side` admits (`--client-cert-allowed-hostname`).
    pub fn start(listener: TcpListener, config: Arc<rustls::ServerConfig>, side: Arc<super::Side>) -> TlsListener {
        let (ready_tx, ready) = mpsc::channel(READY_MAX);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = crate::client_port::accept(&listener).await;
                if ready_tx.is_closed() {
                    return;
                }
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::debug!(%remote, "too many TLS handshakes under way; closing a new connection");
                    continue;
                };
                let (acceptor, ready_tx, side) = (acceptor.clone(), ready_tx.clone(), side.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(permit);
                    match handshake {
                        Ok(Ok(tls)) => {
                            if let Err(refusal) = side.admits(tls.get_ref().1.peer_certificates()) {
                                tracing::info!(%remote, %refusal, "refused a client's certificate");
                                return;
                            }
                            let common_name =
                                super::peer_common_name(tls.get_ref().1.peer_certificates()).map(Arc::from);
                            let _ = ready_tx.send((tls, ClientAddr { remote, common_name })).await;
                        }
                        Ok(Err(error)) => tracing::info!(%remote, %error, "refused a client's TLS handshake"),
                        Err(_) => tracing::debug!(%remote, "a client's TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready }
    }
}

impl TlsListener {
    /// The next connection past its handshake.
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, ClientAddr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }
}
