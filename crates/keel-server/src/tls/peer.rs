//! TLS on the peer transport (blocking sockets, a thread per connection): the dialing side
//! presents this member's certificate and checks the peer's; the listening side admits only
//! certificates from the peer CA and, with `--peer-cert-allowed-cn`, only that common name.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use super::{Side, TlsError};

/// A handshake that has not finished by then fails (the peer is dead, or not speaking TLS).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Peer TLS, both directions.
#[derive(Debug)]
pub struct PeerTls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    side: Side,
}

impl PeerTls {
    pub fn new(side: &Side, allowed_cn: &str) -> Result<PeerTls, TlsError> {
        let mut server = side.server_config(&[])?;
        // The dialing side never reads its outgoing connection except to learn it was closed
        // or told `Removed`: tickets sent after the handshake would look like either.
        server.send_tls13_tickets = 0;
        Ok(PeerTls {
            client: Arc::new(side.client_config()?),
            server: Arc::new(server),
            side: side.clone().with_allowed_cn(allowed_cn),
        })
    }
}

/// An outgoing peer connection, in the clear or in TLS.
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl PeerStream {
    /// The socket under it (for timeouts and for peeking at whether the peer closed it).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(tcp) => tcp,
            PeerStream::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            PeerStream::Plain(tcp) => tcp.read(buf),
            PeerStream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            PeerStream::Plain(tcp) => tcp.write(data),
            PeerStream::Tls(tls) => tls.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            PeerStream::Plain(tcp) => tcp.flush(),
            PeerStream::Tls(tls) => tls.flush(),
        }
    }
}

/// Runs a handshake to its end on `tcp`, within [`HANDSHAKE_TIMEOUT`].
fn handshake<C, D>(conn: &mut C, tcp: &mut TcpStream) -> std::io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    while conn.is_handshaking() {
        conn.complete_io(tcp)?;
    }
    // What is left to send (the client's Finished) goes now, not with the first frame.
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)
}

/// Dials with TLS when `tls` is set: the peer's certificate must be valid for `host`.
pub fn dial(mut tcp: TcpStream, tls: Option<&PeerTls>, host: &str) -> std::io::Result<PeerStream> {
    let Some(tls) = tls else { return Ok(PeerStream::Plain(tcp)) };
    let name = super::server_name(host).map_err(std::io::Error::other)?;
    let mut conn = ClientConnection::new(tls.client.clone(), name).map_err(std::io::Error::other)?;
    handshake(&mut conn, &mut tcp)?;
    Ok(PeerStream::Tls(Box::new(StreamOwned::new(conn, tcp))))
}

/// An accepted peer connection, in the clear or in TLS.
pub enum AcceptedStream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for AcceptedStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            AcceptedStream::Plain(tcp) => tcp.read(buf),
            AcceptedStream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for AcceptedStream {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            AcceptedStream::Plain(tcp) => tcp.write(data),
            AcceptedStream::Tls(tls) => tls.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            AcceptedStream::Plain(tcp) => tcp.flush(),
            AcceptedStream::Tls(tls) => tls.flush(),
        }
    }
}

/// Accepts with TLS when `tls` is set: the handshake verified the peer's certificate (when the
/// peer CA demands one); `--peer-cert-allowed-cn` and `--peer-cert-allowed-hostname` are
/// checked here.
pub fn accept(mut tcp: TcpStream, tls: Option<&PeerTls>) -> std::io::Result<AcceptedStream> {
    let Some(tls) = tls else { return Ok(AcceptedStream::Plain(tcp)) };
    let mut conn = ServerConnection::new(tls.server.clone()).map_err(std::io::Error::other)?;
    handshake(&mut conn, &mut tcp)?;
    tls.side.admits(conn.peer_certificates()).map_err(std::io::Error::other)?;
    Ok(AcceptedStream::Tls(Box::new(StreamOwned::new(conn, tcp))))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Duration;

    use super::*;
    use crate::tls::certs::ThrowawayCa;
    use crate::tls::TlsFlags;

    const YEAR: Duration = Duration::from_secs(365 * 86_400);

    /// A member's peer TLS, with a certificate named `name` from `ca`, trusting `trusted`.
    fn peer_tls(
        dir: &std::path::Path,
        ca: &ThrowawayCa,
        name: &str,
        trusted: &ThrowawayCa,
        allowed_cn: &str,
    ) -> PeerTls {
        peer_tls_with(dir, ca, name, trusted, allowed_cn, |_| {}).0
    }

    /// [`peer_tls`] with its flags changed by `tweak` first; and the certificate's serial.
    fn peer_tls_with(
        dir: &std::path::Path,
        ca: &ThrowawayCa,
        name: &str,
        trusted: &ThrowawayCa,
        allowed_cn: &str,
        tweak: impl FnOnce(&mut TlsFlags),
    ) -> (PeerTls, Vec<u8>) {
        let pair = ca.member(name, &["127.0.0.1".to_string()]).expect("issue");
        pair.write(dir, name).expect("write");
        let trusted_file = dir.join(format!("trusted-by-{name}.pem"));
        std::fs::write(&trusted_file, &trusted.cert_pem).expect("write CA");
        let mut flags = TlsFlags {
            cert_file: dir.join(format!("{name}.pem")).to_string_lossy().into_owned(),
            key_file: dir.join(format!("{name}-key.pem")).to_string_lossy().into_owned(),
            trusted_ca_file: trusted_file.to_string_lossy().into_owned(),
            client_cert_auth: true,
            ..TlsFlags::default()
        };
        tweak(&mut flags);
        let side = Side::from_flags(&flags, &dir.join("fixtures"), &[], YEAR).expect("side");
        (PeerTls::new(&side, allowed_cn).expect("peer tls"), pair.serial)
    }

    /// Dials `listener` with `dialer` while it accepts with `acceptor`; what each side got,
    /// and the bytes the acceptor read after the handshake.
    fn connect(dialer: PeerTls, acceptor: PeerTls) -> (std::io::Result<()>, std::io::Result<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepting = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().expect("accept");
            let mut stream = accept(tcp, Some(&acceptor))?;
            let mut hello = vec![0u8; 5];
            stream.read_exact(&mut hello)?;
            Ok((hello, stream)) // kept open until the dialer has looked
        });
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let dialed = dial(tcp, Some(&dialer), "127.0.0.1").and_then(|mut stream| {
            stream.write_all(b"hello")?;
            stream.flush()?;
            // The acceptor's verdict on our certificate reaches us after our handshake ends.
            std::thread::sleep(Duration::from_millis(100));
            let mut nothing = [0u8; 1];
            stream.tcp().set_read_timeout(Some(Duration::from_millis(200)))?;
            match stream.read(&mut nothing) {
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(()),
                Ok(0) => Err(std::io::Error::other("closed by the acceptor")),
                Ok(_) => Err(std::io::Error::other("the acceptor sent something")),
                Err(e) => Err(e),
            }
        });
        let accepted = accepting.join().expect("acceptor thread").map(|(hello, _stream)| hello);
        (dialed, accepted)
    }

    #[test]
    fn peers_of_one_ca_connect_and_exchange_bytes() {
        let dir = tempdir("one-ca");
        let ca = ThrowawayCa::new("cluster CA", YEAR).expect("ca");
        let (dialed, accepted) = connect(peer_tls(&dir, &ca, "m1", &ca, ""), peer_tls(&dir, &ca, "m2", &ca, ""));
        dialed.expect("the dialer is connected and nothing comes back");
        assert_eq!(accepted.expect("the acceptor reads the hello"), b"hello");
    }

    #[test]
    fn a_peer_whose_certificate_comes_from_another_ca_is_refused_at_the_handshake() {
        let dir = tempdir("other-ca");
        let cluster = ThrowawayCa::new("cluster CA", YEAR).expect("ca");
        let other = ThrowawayCa::new("another CA", YEAR).expect("ca");
        // The intruder trusts the cluster's CA (it knows where it dials), but its own
        // certificate comes from another CA.
        let (dialed, accepted) =
            connect(peer_tls(&dir, &other, "intruder", &cluster, ""), peer_tls(&dir, &cluster, "m1", &cluster, ""));
        let refusal = accepted.expect_err("the member refuses the intruder");
        assert!(refusal.to_string().to_lowercase().contains("certificate"), "{refusal}");
        assert!(dialed.is_err(), "the intruder learns it was refused");
    }

    #[test]
    fn a_member_does_not_dial_a_peer_whose_certificate_comes_from_another_ca() {
        let dir = tempdir("impostor");
        let cluster = ThrowawayCa::new("cluster CA", YEAR).expect("ca");
        let other = ThrowawayCa::new("another CA", YEAR).expect("ca");
        let (dialed, accepted) =
            connect(peer_tls(&dir, &cluster, "m1", &cluster, ""), peer_tls(&dir, &other, "impostor", &cluster, ""));
        assert!(dialed.is_err(), "the member refuses the impostor's certificate");
        assert!(accepted.is_err());
    }

    #[test]
    fn with_an_allowed_common_name_only_that_name_gets_in() {
        let dir = tempdir("allowed-cn");
        let ca = ThrowawayCa::new("cluster CA", YEAR).expect("ca");
        let (_, accepted) = connect(peer_tls(&dir, &ca, "member", &ca, ""), peer_tls(&dir, &ca, "m1", &ca, "member"));
        assert_eq!(accepted.expect("the allowed name gets in"), b"hello");
        let (_, accepted) = connect(peer_tls(&dir, &ca, "stranger", &ca, ""), peer_tls(&dir, &ca, "m2", &ca, "member"));
        let refusal = accepted.expect_err("another name of the same CA is refused");
        assert!(refusal.to_string().contains("allowed common name"), "{refusal}");
    }

    #[test]
    fn a_peer_whose_certificate_the_ca_revoked_is_refused_and_the_others_are_not() {
        let dir = tempdir("crl");
        let ca = ThrowawayCa::new("cluster CA", YEAR).expect("ca");
        let (revoked, serial) = peer_tls_with(&dir, &ca, "revoked", &ca, "", |_| {});
        let crl = dir.join("crl.pem");
        std::fs::write(&crl, ca.revocation_list(&[&serial]).expect("crl")).expect("write crl");
        let with_crl = |flags: &mut TlsFlags| flags.crl_file = crl.to_string_lossy().into_owned();
        let (_, accepted) = connect(revoked, peer_tls_with(&dir, &ca, "m1", &ca, "", with_crl).0);
        let refusal = accepted.expect_err("a revoked certificate is refused");
        assert!(refusal.to_string().to_lowercase().contains("revoked"), "{refusal}");
        let (_, accepted) =
            connect(peer_tls(&dir, &ca, "m2", &ca, ""), peer_tls_with(&dir, &ca, "m3", &ca, "", with_crl).0);
        assert_eq!(accepted.expect("a certificate not revoked gets in"), b"hello");
    }

    #[test]
    fn with_an_allowed_hostname_only_certificates_valid_for_it_get_in() {
        let dir = tempdir("allowed-host");
        let ca = ThrowawayCa::new("cluster CA", YEAR).expect("ca");
        let allow = |host: &'static str| move |flags: &mut TlsFlags| flags.allowed_hostname = host.into();
        let (_, accepted) =
            connect(peer_tls(&dir, &ca, "m1", &ca, ""), peer_tls_with(&dir, &ca, "m2", &ca, "", allow("127.0.0.1")).0);
        assert_eq!(accepted.expect("a certificate for 127.0.0.1 gets in"), b"hello");
        let (_, accepted) =
            connect(peer_tls(&dir, &ca, "m3", &ca, ""), peer_tls_with(&dir, &ca, "m4", &ca, "", allow("10.9.9.9")).0);
        let refusal = accepted.expect_err("a certificate for another host is refused");
        assert!(refusal.to_string().contains("allowed hostname"), "{refusal}");
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }
}
