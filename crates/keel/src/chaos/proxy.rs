//! Network partitions on real sockets: a TCP proxy in front of each member's peer port (as
//! etcd's robustness tests use), outside the member processes.
//!
//! Every peer connection starts with keel's hello frame naming the sender, so the proxy of
//! member `to` knows each connection's direction `from -> to`. A blocked direction *stalls*:
//! bytes are held, not dropped, and flow again on heal — what a real partition (packets dropped
//! and retransmitted by TCP) looks like to both ends for partitions shorter than TCP's
//! retransmission timeout. Connections are never closed by a partition, so a member cannot tell
//! it from a silent network (a closed connection is a different, stronger signal to keel).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use keel_codec::peer::{FrameReader, PeerFrame};

/// How often a stalled direction looks again.
const STALL_POLL: Duration = Duration::from_millis(5);
/// The hello must come within this many bytes; a connection that says something else is
/// passed through unblocked.
const HELLO_BYTES_MAX: usize = 64 << 10;

/// Which directions between members (by index) are cut.
#[derive(Default)]
pub struct Net {
    blocked: Mutex<BTreeSet<(usize, usize)>>,
    /// Member ids by index, to read a hello's sender (unknown senders are never blocked).
    members: Mutex<Vec<u64>>,
    stopped: AtomicBool,
}

impl Net {
    pub fn set_members(&self, ids: [u64; 3]) {
        *self.members.lock().expect("net lock") = ids.to_vec();
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.members.lock().expect("net lock").iter().position(|&m| m == id)
    }

    /// Cuts `from -> to` (one way).
    pub fn block(&self, from: usize, to: usize) {
        self.blocked.lock().expect("net lock").insert((from, to));
    }

    pub fn heal(&self) {
        self.blocked.lock().expect("net lock").clear();
    }

    fn is_blocked(&self, from: Option<u64>, to: usize, reverse: bool) -> bool {
        let Some(from) = from.and_then(|id| self.index_of(id)) else { return false };
        let pair = if reverse { (to, from) } else { (from, to) };
        self.blocked.lock().expect("net lock").contains(&pair)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stopped.store(true, Relaxed);
    }
}

/// Starts the proxy of member `to` (an index): accepts on `listen`, forwards to `target`.
pub fn start(listen: SocketAddr, target: SocketAddr, to: usize, net: Arc<Net>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("proxy listen on {listen}"))?;
    std::thread::Builder::new().name(format!("chaos-proxy-{}", listen.port())).spawn(move || {
        for incoming in listener.incoming() {
            if net.stopped.load(Relaxed) {
                return;
            }
            let Ok(client) = incoming else { continue };
            let net = net.clone();
            std::thread::spawn(move || {
                if let Ok(server) = TcpStream::connect(target) {
                    relay(client, server, to, net);
                }
            });
        }
    })?;
    Ok(())
}

/// Relays one connection both ways until either side closes.
fn relay(client: TcpStream, server: TcpStream, to: usize, net: Arc<Net>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let from: Arc<OnceLock<Option<u64>>> = Arc::new(OnceLock::new());
    let (Ok(client_back), Ok(server_back)) = (client.try_clone(), server.try_clone()) else { return };
    let back = {
        let (net, from) = (net.clone(), from.clone());
        // Answers go to whoever connected, once the hello said who that is.
        std::thread::spawn(move || pump(server_back, client_back, &net, &from, to, true, false))
    };
    pump(client, server, &net, &from, to, false, true);
    let _ = back.join();
}

/// Copies `src` to `dst`, holding bytes while the direction is blocked: `from -> to`, or
/// `to -> from` when `reverse`. With `read_hello`, the first frame is read to learn `from`
/// (`None` when it is not a hello).
fn pump(
    mut src: TcpStream,
    mut dst: TcpStream,
    net: &Net,
    from: &OnceLock<Option<u64>>,
    to: usize,
    reverse: bool,
    read_hello: bool,
) {
    let hello = read_hello.then_some(from);
    let mut reader = hello.map(|_| FrameReader::new(HELLO_BYTES_MAX));
    let mut seen = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let (Some(r), Some(cell)) = (reader.as_mut(), hello) {
            seen += n;
            r.push(&buf[..n]);
            match r.next_frame() {
                Ok(Some(PeerFrame::Hello { from, .. })) => {
                    let _ = cell.set(Some(from));
                    reader = None;
                }
                Ok(None) if seen < HELLO_BYTES_MAX => {}
                _ => {
                    let _ = cell.set(None);
                    reader = None;
                }
            }
        }
        while net.is_blocked(from.get().copied().flatten(), to, reverse) {
            if net.stopped.load(Relaxed) {
                break;
            }
            std::thread::sleep(STALL_POLL);
        }
        if dst.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = dst.shutdown(Shutdown::Both);
    let _ = src.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener standing in for a member: collects what arrives on its first connection.
    fn member() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        (addr, rx)
    }

    fn received_within(rx: &std::sync::mpsc::Receiver<Vec<u8>>, wait: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        while let Ok(bytes) = rx.recv_timeout(wait) {
            got.extend(bytes);
        }
        got
    }

    /// A proxy in front of member 1 (of ids 11, 22, 33), what reaches the member, and the net.
    fn proxied_member() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>, Arc<Net>) {
        let (target, arrived) = member();
        let net = Arc::new(Net::default());
        net.set_members([11, 22, 33]);
        let listen = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        start(listen, target, 1, net.clone()).expect("proxy");
        (listen, arrived, net)
    }

    #[test]
    fn a_cut_direction_holds_the_bytes_and_delivers_them_on_heal() {
        let (listen, arrived, net) = proxied_member();
        let mut sender = TcpStream::connect(listen).expect("connect");
        let hello = PeerFrame::Hello { cluster_id: 7, from: 11, to: 22 }.encode();
        sender.write_all(&hello).expect("hello");
        assert_eq!(received_within(&arrived, Duration::from_millis(200)), hello, "an open path passes the hello");
        net.block(0, 1);
        sender.write_all(b"during the partition").expect("write");
        assert!(received_within(&arrived, Duration::from_millis(200)).is_empty(), "nothing crosses a cut");
        net.block(2, 1);
        net.heal();
        assert_eq!(received_within(&arrived, Duration::from_millis(500)), b"during the partition", "held, not lost");
    }

    #[test]
    fn a_connection_that_does_not_start_with_a_hello_is_never_held() {
        let (listen, arrived, net) = proxied_member();
        net.block(0, 1);
        let mut sender = TcpStream::connect(listen).expect("connect");
        sender.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        assert_eq!(received_within(&arrived, Duration::from_millis(500)), b"GET / HTTP/1.1\r\n\r\n");
    }
}
