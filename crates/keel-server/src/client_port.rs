//! The client port's connections: accepted over TCP or TLS, each served by its own task as
//! HTTP/1.1 or HTTP/2 (gRPC, the JSON gateway and the HTTP endpoints share the port, as in
//! etcd), with etcd's `--max-concurrent-streams` per HTTP/2 connection. Every request carries
//! its connection's [`ClientAddr`] (the verified certificate's common name, for TLS), as axum's
//! `ConnectInfo`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower_service::Service;

use crate::tls::listener::{ClientAddr, TlsListener};

/// How the client port speaks HTTP/2.
#[derive(Clone, Copy, Debug)]
pub struct Http2Settings {
    /// `--max-concurrent-streams`: streams one connection may have open at once (etcd's
    /// default: no limit but the protocol's).
    pub max_concurrent_streams: u32,
}

/// Serves `app` on `listener` in the clear.
pub async fn serve_plain(listener: TcpListener, app: Router, settings: Http2Settings) {
    loop {
        let (tcp, remote) = accept(&listener).await;
        tokio::spawn(serve_connection(tcp, ClientAddr { remote, common_name: None }, app.clone(), settings));
    }
}

/// The next client connection on `listener`, set to send small responses at once (Nagle's
/// algorithm against the client's delayed ACK would hold each one ~40 ms).
pub async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, remote)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, remote);
            }
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "accepting a client connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `app` on the connections `listener` has finished the TLS handshake with.
pub async fn serve_tls(mut listener: TlsListener, app: Router, settings: Http2Settings) {
    loop {
        let (tls, client) = listener.accept().await;
        tokio::spawn(serve_connection(tls, client, app.clone(), settings));
    }
}

async fn serve_connection<I>(io: I, client: ClientAddr, app: Router, settings: Http2Settings)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(client.clone()));
        let mut app = app.clone();
        async move { Ok::<_, Infallible>(app.call(request).await.unwrap_or_else(|never| match never {})) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(settings.max_concurrent_streams).enable_connect_protocol();
    // A connection that ends badly (reset, a protocol error) concerns that client only.
    let _ = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await;
}
