//! Peer transport over TCP: raft messages coalesced per peer, a hello that names the cluster and
//! both members first (so another cluster or an unknown member is refused before anything
//! reaches raft), reconnects with backoff, and frames checksummed and decoded without panics.
//!
//! Raft tolerates lost messages, so a peer that is down or slow costs only its own queue: when
//! the bounded queue is full, messages to that peer are dropped rather than blocking the node.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use keel_codec::peer::{check_hello, encode_chunked, FrameReader, PeerFrame, Reassembly};
use keel_raft::{Message, MessageBody, NodeId};

use crate::machine::{FileTicket, SnapshotOutbox, MEMBERS_META_KEY};
use crate::tls::peer::{PeerStream, PeerTls};

/// What the node sends a peer: raft messages (coalesced into frames) or a frame of its own
/// (a forwarded proposal, a reply to one). Both share the peer's queue, so they leave in order.
#[derive(Debug)]
pub enum Outgoing {
    Raft(Message),
    Frame { to: NodeId, frame: PeerFrame },
}

impl Outgoing {
    fn to(&self) -> NodeId {
        match self {
            Outgoing::Raft(msg) => msg.to,
            Outgoing::Frame { to, .. } => *to,
        }
    }
}

/// What a peer connection delivers: a raft message, or another frame with the member it came
/// from (already checked by the hello).
#[derive(Debug)]
pub enum Incoming {
    Raft(Message),
    Frame {
        from: NodeId,
        frame: PeerFrame,
    },
    /// A member's connection to us closed (its process died, or it reconnects): raft may stop
    /// waiting for a leader that is gone (`Node::report_peer_lost`).
    PeerLost(NodeId),
}

/// Whom the peer listener lets in, decided from the id a connection's hello names (after the
/// cluster id matched).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A member: everything it sends is delivered.
    Member,
    /// A process of this cluster that holds no replica (a spare): only its membership-protocol
    /// frames are delivered, so it can never speak to raft.
    Guest,
    /// A member that was removed from the cluster: it is told so ([`PeerFrame::Removed`]) and
    /// the connection closed, so it cannot rejoin with its stale state.
    Removed,
    Refused,
}

/// What a dialing member does when a peer tells it it was removed from the cluster.
pub type OnRemoved = Arc<dyn Fn(NodeId) + Send + Sync>;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MAX: usize = 4_096;
/// Messages coalesced into one frame.
const MESSAGES_PER_FRAME_MAX: usize = 512;
/// Frames larger than this (a snapshot) go in chunks, so no single write or read is huge and
/// the per-frame limit below stays small.
pub const PEER_CHUNK_BYTES: usize = 1 << 20;
/// Largest frame accepted from a peer in one piece.
pub const PEER_FRAME_BYTES_MAX: usize = 4 << 20;
/// Largest frame reassembled from chunks (a snapshot message of a machine that sends its state
/// in the message; the etcd store is streamed instead, see [`stream_rows`]).
pub const PEER_MESSAGE_BYTES_MAX: usize = 1 << 30;
/// Bytes of a streamed store per frame.
const FILE_CHUNK_BYTES: usize = 1 << 20;
/// Largest store a peer may stream to us.
const FILE_BYTES_MAX: u64 = 1 << 40;
/// After a completed stream, the same peer gets no other for this long (it is installing).
const RESTREAM_AFTER: Duration = Duration::from_secs(10);
/// A streamed file's connection gives up when the other side stalls this long.
const FILE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// A peer that was down is tried again at least this often (as etcd's peer streams redial every
/// 100 ms): a member restarting after kill -9 hears from its leader a heartbeat after it listens,
/// not up to a second later.
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Sends raft messages to peers; cheap to call from the driver (never blocks). Peers come and
/// go with membership changes ([`PeerSender::set_peers`]).
/// Bytes this member's peer transport wrote to its peers' connections (raft messages and the
/// frames between them) and read from the connections peers opened to it (everything, streamed
/// stores included): etcd's `etcd_network_peer_{sent,received}_bytes_total`.
#[derive(Debug, Default)]
pub struct PeerTraffic {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

pub struct PeerSender {
    traffic: Arc<PeerTraffic>,
    cluster_id: u64,
    me: NodeId,
    attributes: Option<PeerFrame>,
    queues: std::sync::Mutex<BTreeMap<NodeId, (PeerAddress, SyncSender<Outgoing>)>>,
    /// Peers a store is being streamed to: one transfer per peer at a time, and raft's retries
    /// of the same snapshot are dropped while it runs.
    streaming: Arc<std::sync::Mutex<std::collections::BTreeSet<NodeId>>>,
    /// When a stream to each peer last completed: the follower is installing it (renaming the
    /// file and loading its index takes a while for a big store), so raft's retries meanwhile
    /// are dropped too, for [`RESTREAM_AFTER`].
    streamed: Arc<std::sync::Mutex<BTreeMap<NodeId, std::time::Instant>>>,
    /// Where the machine leaves the store views snapshots name.
    outbox: Option<Arc<SnapshotOutbox>>,
    on_removed: Option<OnRemoved>,
    /// Where to find a peer the member records do not name (yet): see [`AddressFallback`].
    fallback: std::sync::Mutex<Option<AddressFallback>>,
    /// Peer TLS (`https://` peer URLs): every connection this member dials uses it.
    tls: Option<Arc<PeerTls>>,
}

/// Where a peer listens, for a peer this member's records do not name yet: a new member must
/// answer a leader that joined after it was configured (a spare that replaced a voter). Its
/// answers cannot wait for the record of that leader, which comes with the log it cannot ask
/// for without answering: the membership protocol's view has the address.
pub type AddressFallback = Arc<dyn Fn(NodeId) -> Option<PeerAddress> + Send + Sync>;

/// Where a peer listens, as its member record names it. Resolved by the thread that connects,
/// each time it connects (so a peer whose name moves is found again), never by the driver: a
/// slow or dead DNS server must not stall the thread that drives raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    pub host: String,
    pub port: u16,
}

impl From<SocketAddr> for PeerAddress {
    fn from(addr: SocketAddr) -> Self {
        let host = match addr {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        };
        PeerAddress { host, port: addr.port() }
    }
}

impl std::fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl PeerAddress {
    /// The address to dial: IPv4 first, as the listener resolves its own (see [`resolve_host`]).
    pub(crate) fn resolve(&self) -> std::io::Result<SocketAddr> {
        resolve_host(&self.host, self.port)
    }
}

/// Resolves `host` (a name, or an IP literal, IPv6 ones possibly in URL brackets), preferring
/// IPv4 as Go's resolver does for "localhost": a member listening on a name binds what this
/// returns, and its peers dial the same.
pub fn resolve_host(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| std::io::Error::other(format!("{host}:{port} resolves to no address")))
}

impl PeerSender {
    /// Starts one sender thread per peer.
    pub fn start(cluster_id: u64, me: NodeId, peers: &BTreeMap<NodeId, PeerAddress>) -> PeerSender {
        PeerSender::start_with(cluster_id, me, peers, None)
    }

    /// Like [`PeerSender::start`]; every connection also sends `attributes` right after its hello.
    pub fn start_with(
        cluster_id: u64,
        me: NodeId,
        peers: &BTreeMap<NodeId, PeerAddress>,
        attributes: Option<PeerFrame>,
    ) -> PeerSender {
        let sender = PeerSender {
            cluster_id,
            me,
            attributes,
            queues: std::sync::Mutex::new(BTreeMap::new()),
            streaming: Arc::default(),
            streamed: Arc::default(),
            outbox: None,
            on_removed: None,
            traffic: Arc::default(),
            fallback: std::sync::Mutex::new(None),
            tls: None,
        };
        sender.set_peers(peers);
        sender
    }

    /// Makes the peer set exactly `peers` (this member excluded): new peers get a sender thread,
    /// removed ones lose theirs (it ends once its queue is dropped), moved ones are restarted.
    pub fn set_peers(&self, peers: &BTreeMap<NodeId, PeerAddress>) {
        let mut queues = self.queues.lock().expect("peer queues lock");
        queues.retain(|id, (addr, _)| peers.get(id) == Some(addr));
        for (&id, addr) in peers {
            if id == self.me || queues.contains_key(&id) {
                continue;
            }
            queues.insert(id, (addr.clone(), self.start_sender(id, addr.clone())));
        }
    }

    /// A sender thread for peer `id` at `addr`, and its queue.
    fn start_sender(&self, id: NodeId, addr: PeerAddress) -> SyncSender<Outgoing> {
        let (queue, receiver) = mpsc::sync_channel(PEER_QUEUE_MAX);
        let (cluster_id, me, attributes) = (self.cluster_id, self.me, self.attributes.clone());
        let (on_removed, traffic, tls) = (self.on_removed.clone(), self.traffic.clone(), self.tls.clone());
        let dialer = Dialer { cluster_id, me, tls };
        std::thread::Builder::new()
            .name(format!("keel-peer-{id:x}"))
            .spawn(move || send_loop(&dialer, (id, addr), attributes, receiver, on_removed, &traffic))
            .expect("spawn peer sender thread");
        queue
    }

    /// Where to look for peers the records do not name (see [`AddressFallback`]).
    pub fn set_address_fallback(&self, fallback: AddressFallback) {
        *self.fallback.lock().expect("fallback lock") = Some(fallback);
    }

    /// Calls `on_removed` when a peer answers a connection with [`PeerFrame::Removed`]. Set it
    /// before the first [`PeerSender::set_peers`] that names a peer (senders started earlier
    /// keep none).
    pub fn with_on_removed(mut self, on_removed: OnRemoved) -> Self {
        self.on_removed = Some(on_removed);
        self
    }

    /// Dials every peer with TLS. Set it before the first [`PeerSender::set_peers`] that names a
    /// peer.
    pub fn with_tls(mut self, tls: Option<Arc<PeerTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Counts the bytes sent into `traffic`. Set it before the first [`PeerSender::set_peers`]
    /// that names a peer.
    pub fn with_traffic(mut self, traffic: Arc<PeerTraffic>) -> Self {
        self.traffic = traffic;
        self
    }

    /// Streams the store views snapshots name from `outbox`.
    pub fn with_outbox(mut self, outbox: Arc<SnapshotOutbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    pub fn send(&self, msg: Message) {
        self.send_out(Outgoing::Raft(msg));
    }

    pub fn send_out(&self, msg: Outgoing) {
        if let Outgoing::Raft(message) = &msg {
            if let MessageBody::InstallSnapshot { snapshot } = &message.body {
                if let Some(ticket) = FileTicket::decode(&snapshot.data) {
                    self.start_stream(message.clone(), ticket);
                    return;
                }
            }
        }
        let mut queues = self.queues.lock().expect("peer queues lock");
        let to = msg.to();
        if !queues.contains_key(&to) && to != self.me {
            let fallback = self.fallback.lock().expect("fallback lock").clone();
            if let Some(addr) = fallback.and_then(|find| find(to)) {
                tracing::info!(peer = %format!("{to:x}"), "reaching a peer the member records do not name yet, at the address gossip knows");
                let queue = self.start_sender(to, addr.clone());
                queues.insert(to, (addr, queue));
            }
        }
        let Some((_, queue)) = queues.get(&to) else {
            tracing::debug!(to, "dropping a message to an unknown peer");
            return;
        };
        match queue.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => tracing::debug!("peer queue full; dropping a message (raft retries)"),
        }
    }
}

impl PeerSender {
    /// Streams the store view a snapshot names to its follower on a connection of its own (TCP
    /// is the flow control: the rows go no faster than the follower writes them), then the
    /// snapshot message itself. Heartbeats and appends keep their own connection meanwhile.
    fn start_stream(&self, message: Message, ticket: FileTicket) {
        let to = message.to;
        // Taken whatever happens next, so a view never outlives its one chance.
        let Some((applied, view, members)) = self.outbox.as_ref().and_then(|outbox| outbox.take(ticket.source)) else {
            return;
        };
        let outbox = self.outbox.clone().expect("taken from it above");
        let Some(addr) = self.queues.lock().expect("peer queues lock").get(&to).map(|(addr, _)| addr.clone()) else {
            outbox.stream_ended(ticket.source);
            return;
        };
        let installing =
            self.streamed.lock().expect("streamed lock").get(&to).is_some_and(|at| at.elapsed() < RESTREAM_AFTER);
        if installing || !self.streaming.lock().expect("streaming lock").insert(to) {
            outbox.stream_ended(ticket.source);
            return; // a transfer to this peer is under way; raft asks again if it fails
        }
        let dialer = Dialer { cluster_id: self.cluster_id, me: self.me, tls: self.tls.clone() };
        let (streaming, streamed) = (self.streaming.clone(), self.streamed.clone());
        let source = ticket.source;
        let spawned = std::thread::Builder::new().name(format!("keel-snap-{to:x}")).spawn(move || {
            let started = std::time::Instant::now();
            let rows = StoreRows { view, members };
            match stream_rows(&dialer, to, addr, &message, &rows) {
                Ok(bytes) => {
                    streamed.lock().expect("streamed lock").insert(to, std::time::Instant::now());
                    tracing::info!(
                    peer = %format!("{to:x}"),
                    applied,
                    bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "streamed the store for a snapshot"
                    )
                }
                Err(error) => tracing::warn!(peer = %format!("{to:x}"), %error, "streaming the store failed"),
            }
            outbox.stream_ended(source);
            streaming.lock().expect("streaming lock").remove(&to);
        });
        if spawned.is_err() {
            self.streaming.lock().expect("streaming lock").remove(&to);
            if let Some(outbox) = &self.outbox {
                outbox.stream_ended(source);
            }
        }
    }
}

/// A store view and the member records that go with it.
struct StoreRows {
    view: keel_mvcc::redb_backend::StoreCopy,
    members: Vec<u8>,
}

/// Cuts a byte stream into [`PeerFrame::FileChunk`]s on a socket, keeping its size and CRC.
struct ChunkWriter<'a> {
    stream: &'a mut PeerStream,
    buf: Vec<u8>,
    offset: u64,
    crc: u32,
}

impl ChunkWriter<'_> {
    fn emit(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        let bytes = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(FILE_CHUNK_BYTES)));
        let len = bytes.len() as u64;
        self.stream.write_all(&PeerFrame::FileChunk { offset: self.offset, bytes }.encode())?;
        self.offset += len;
        Ok(())
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FILE_CHUNK_BYTES {
            self.emit()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.emit()
    }
}

/// The leader's side of a streamed snapshot: hello, the store's rows in chunks, their end with
/// size and checksum, then the raft message. Returns the bytes sent.
fn stream_rows(
    dialer: &Dialer,
    to: NodeId,
    addr: PeerAddress,
    message: &Message,
    rows: &StoreRows,
) -> std::io::Result<u64> {
    let mut stream = dialer.connect(to, &addr, None)?;
    stream.tcp().set_write_timeout(Some(FILE_STALL_TIMEOUT))?;
    let mut writer = ChunkWriter { stream: &mut stream, buf: Vec::with_capacity(FILE_CHUNK_BYTES), offset: 0, crc: 0 };
    rows.view
        .write_rows(&mut writer, &[(MEMBERS_META_KEY, rows.members.clone())])
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    writer.flush()?;
    let (size, crc) = (writer.offset, writer.crc);
    stream.write_all(&PeerFrame::FileEnd { size, crc }.encode())?;
    stream.write_all(&PeerFrame::Messages(vec![message.clone()]).encode())?;
    stream.flush()?;
    Ok(size)
}

fn send_loop(
    dialer: &Dialer,
    (to, addr): (NodeId, PeerAddress),
    attributes: Option<PeerFrame>,
    queue: Receiver<Outgoing>,
    on_removed: Option<OnRemoved>,
    traffic: &PeerTraffic,
) {
    let mut backoff = BACKOFF_MIN;
    // Connect right away, not at the first message: the hello and attributes tell the peer who
    // we are (its MemberList shows our client URLs) even before raft has anything to say to it.
    let mut stream: Option<PeerStream> = dialer.connect(to, &addr, attributes.as_ref()).ok();
    loop {
        let first = match queue.recv_timeout(backoff) {
            Ok(first) => first,
            Err(RecvTimeoutError::Disconnected) => return,
            // Idle: keep trying to reach a peer we are not connected to, for the same reason.
            Err(RecvTimeoutError::Timeout) => {
                if stream.is_none() {
                    match dialer.connect(to, &addr, attributes.as_ref()) {
                        Ok(connected) => {
                            stream = Some(connected);
                            backoff = BACKOFF_MIN;
                        }
                        Err(_) => backoff = (backoff * 2).min(BACKOFF_MAX),
                    }
                } else {
                    backoff = BACKOFF_MAX;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        batch.extend(queue.try_iter().take(MESSAGES_PER_FRAME_MAX - 1));
        if let Some(connected) = stream.as_mut().filter(|s| closed_by_peer(s.tcp()) || sent_back(s.tcp())) {
            if told_removed(connected) {
                tracing::error!(peer = to, "a member says this member was removed from the cluster");
                if let Some(on_removed) = &on_removed {
                    on_removed(to);
                }
            }
            // The peer restarted since: writing into the old connection would seem to succeed
            // and lose the batch (a follower's pre-vote to another follower is the first thing
            // it sends in a long while, and losing it costs a whole election timeout).
            tracing::debug!(peer = to, "peer connection closed by the peer; reconnecting");
            stream = None;
        }
        if stream.is_none() {
            match dialer.connect(to, &addr, attributes.as_ref()) {
                Ok(connected) => {
                    stream = Some(connected);
                    backoff = BACKOFF_MIN;
                }
                Err(error) => {
                    tracing::debug!(peer = to, %addr, %error, "peer unreachable; retrying with backoff");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue; // this batch is dropped; raft resends what matters
                }
            }
        }
        // Consecutive raft messages share a frame; other frames go between them in order.
        let mut bytes = Vec::new();
        let mut messages = Vec::new();
        for out in batch {
            match out {
                Outgoing::Raft(msg) => messages.push(msg),
                Outgoing::Frame { frame, .. } => {
                    if !messages.is_empty() {
                        let batch = PeerFrame::Messages(std::mem::take(&mut messages));
                        encode_chunked(&mut bytes, &batch, PEER_CHUNK_BYTES);
                    }
                    encode_chunked(&mut bytes, &frame, PEER_CHUNK_BYTES);
                }
            }
        }
        if !messages.is_empty() {
            encode_chunked(&mut bytes, &PeerFrame::Messages(messages), PEER_CHUNK_BYTES);
        }
        if let Some(connected) = stream.as_mut() {
            match connected.write_all(&bytes) {
                Ok(()) => {
                    traffic.sent.fetch_add(bytes.len() as u64, Relaxed);
                }
                Err(error) => {
                    tracing::debug!(peer = to, %error, "peer connection lost");
                    stream = None;
                }
            }
        }
    }
}

/// Whether the peer wrote anything back on our outgoing connection: it never does, except to
/// say [`PeerFrame::Removed`] before it closes.
fn sent_back(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let readable = matches!(stream.peek(&mut [0u8; 1]), Ok(n) if n > 0);
    let _ = stream.set_nonblocking(false);
    readable
}

/// Whether what a closing peer left on the connection is [`PeerFrame::Removed`].
fn told_removed(stream: &mut PeerStream) -> bool {
    let mut buf = [0u8; 64];
    let _ = stream.tcp().set_read_timeout(Some(Duration::from_millis(50)));
    let Ok(read) = stream.read(&mut buf) else { return false };
    let mut reader = FrameReader::new(buf.len());
    reader.push(&buf[..read]);
    matches!(reader.next_frame(), Ok(Some(PeerFrame::Removed)))
}

/// Whether the peer has closed (or reset) our outgoing connection to it. Nothing is ever sent back
/// on it, so anything readable is the end of it.
fn closed_by_peer(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    closed || stream.set_nonblocking(false).is_err()
}

/// What a member dials its peers as: its cluster and id (for the hello) and its peer TLS.
struct Dialer {
    cluster_id: u64,
    me: NodeId,
    tls: Option<Arc<PeerTls>>,
}

impl Dialer {
    /// A connection to peer `to` at `addr`, past the TLS handshake (if any) and the hello.
    fn connect(&self, to: NodeId, addr: &PeerAddress, attributes: Option<&PeerFrame>) -> std::io::Result<PeerStream> {
        let tcp = TcpStream::connect_timeout(&addr.resolve()?, Duration::from_millis(500))?;
        tcp.set_nodelay(true)?;
        let mut stream = crate::tls::peer::dial(tcp, self.tls.as_deref(), &addr.host)?;
        let mut hello = PeerFrame::Hello { cluster_id: self.cluster_id, from: self.me, to }.encode();
        if let Some(attributes) = attributes {
            hello.extend_from_slice(&attributes.encode());
        }
        stream.write_all(&hello)?;
        Ok(stream)
    }
}

/// Accepts peer connections on `listener` and hands every accepted message to `deliver`.
/// Streamed stores are refused (see [`start_listener_with_files`]).
pub fn start_listener(
    listener: TcpListener,
    cluster_id: u64,
    me: NodeId,
    is_member: Arc<dyn Fn(NodeId) -> bool + Send + Sync>,
    deliver: Arc<dyn Fn(Incoming) + Send + Sync>,
) {
    let admit = Arc::new(move |id| if is_member(id) { Admission::Member } else { Admission::Refused });
    start_listener_with_files(listener, cluster_id, me, admit, deliver, ListenerOptions::default())
}

/// What a peer listener does besides delivering messages.
#[derive(Default)]
pub struct ListenerOptions {
    /// Where stores peers stream for snapshots are received (`None`: refused).
    pub files_dir: Option<std::path::PathBuf>,
    /// Counts the bytes read.
    pub traffic: Arc<PeerTraffic>,
    /// Peer TLS: only certificates from the peer CA get past the handshake.
    pub tls: Option<Arc<PeerTls>>,
}

/// [`start_listener`], receiving stores peers stream for snapshots into `files_dir`.
pub fn start_listener_with_files(
    listener: TcpListener,
    cluster_id: u64,
    me: NodeId,
    admit: Arc<dyn Fn(NodeId) -> Admission + Send + Sync>,
    deliver: Arc<dyn Fn(Incoming) + Send + Sync>,
    options: ListenerOptions,
) {
    let ListenerOptions { files_dir, traffic, tls } = options;
    std::thread::Builder::new()
        .name("keel-peer-listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (admit, deliver, files_dir) = (admit.clone(), deliver.clone(), files_dir.clone());
                let (traffic, tls) = (traffic.clone(), tls.clone());
                let _ = std::thread::Builder::new().name("keel-peer-conn".into()).spawn(move || {
                    let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
                    // Only certificates from the peer CA get past the handshake.
                    let stream = match crate::tls::peer::accept(stream, tls.as_deref()) {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::warn!(%peer, %error, "refused a peer connection's TLS handshake");
                            return;
                        }
                    };
                    let mut conn = Connection {
                        accepted: None,
                        files_dir,
                        incoming: None,
                        received: None,
                        streamed: false,
                        guest: false,
                    };
                    receive_loop(stream, &peer, cluster_id, me, &*admit, &*deliver, &mut conn, &traffic);
                    // An unfinished stream's receiver removes its partial file when dropped.
                    drop(conn.incoming.take());
                    // A stream's own connection ending says nothing about the peer's health.
                    // (A guest's connection ending says nothing to raft either.)
                    if let (Some(from), false) = (conn.accepted, conn.streamed) {
                        if admit(from) == Admission::Member {
                            deliver(Incoming::PeerLost(from));
                        }
                    }
                });
            }
        })
        .expect("spawn peer listener thread");
}

/// One accepted connection's state.
struct Connection {
    accepted: Option<NodeId>,
    files_dir: Option<std::path::PathBuf>,
    /// A file being received.
    incoming: Option<IncomingFile>,
    /// The store received whole on this connection.
    received: Option<std::path::PathBuf>,
    /// This connection carries a stream (not the peer's raft traffic).
    streamed: bool,
    /// Admitted as a [`Admission::Guest`]: only membership frames count, until the process
    /// becomes a member (a spare added as a learner keeps its connections).
    guest: bool,
}

struct IncomingFile {
    rows: keel_mvcc::redb_backend::RowReceiver,
    path: std::path::PathBuf,
    written: u64,
    crc: u32,
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos())
}

impl Connection {
    fn file_chunk(&mut self, from: NodeId, offset: u64, bytes: &[u8]) -> Result<(), String> {
        self.streamed = true;
        let Some(dir) = &self.files_dir else { return Err("this member receives no files".into()) };
        if self.received.is_some() {
            return Err("a second file on one connection".into());
        }
        if self.incoming.is_none() {
            // The rows build `received-….tmp`, renamed to `.db` once complete and checked.
            let path = dir.join(format!("received-{from:016x}-{}.db", unique_suffix()));
            let rows = keel_mvcc::redb_backend::RowReceiver::create(&path)
                .map_err(|e| format!("create {}: {e}", path.display()))?;
            self.incoming = Some(IncomingFile { rows, path, written: 0, crc: 0 });
        }
        let incoming = self.incoming.as_mut().expect("created above");
        if offset != incoming.written {
            return Err(format!("chunk at {offset}, expected {}", incoming.written));
        }
        if incoming.written + bytes.len() as u64 > FILE_BYTES_MAX {
            return Err(format!("file over {FILE_BYTES_MAX} bytes"));
        }
        incoming.rows.push(bytes).map_err(|e| format!("receive {}: {e}", incoming.path.display()))?;
        incoming.written += bytes.len() as u64;
        incoming.crc = crc32c::crc32c_append(incoming.crc, bytes);
        Ok(())
    }

    /// The stream is complete: checked, made durable and renamed to where a snapshot may use it.
    fn file_end(&mut self, size: u64, crc: u32) -> Result<(), String> {
        let Some(incoming) = self.incoming.take() else { return Err("a file end without a file".into()) };
        if incoming.written != size || incoming.crc != crc {
            // Dropping the receiver removes its partial file.
            return Err(format!(
                "a stream of {} bytes crc {:#x}, announced {size} crc {crc:#x}",
                incoming.written, incoming.crc
            ));
        }
        let path = incoming.path;
        incoming.rows.finish(&path).map_err(|e| format!("finish {}: {e}", path.display()))?;
        self.received = Some(path);
        Ok(())
    }

    /// A snapshot naming a file is delivered only with the file this connection received, and
    /// then names that file: a peer can never make us install a path of its choosing.
    fn resolve_ticket(&self, mut msg: Message) -> Option<Message> {
        if let MessageBody::InstallSnapshot { snapshot } = &mut msg.body {
            if let Some(ticket) = FileTicket::decode(&snapshot.data) {
                let path = self.received.as_ref()?;
                let local =
                    FileTicket { applied: ticket.applied, source: 0, path: path.to_string_lossy().into_owned() };
                snapshot.data = local.encode();
            }
        }
        Some(msg)
    }
}

#[allow(clippy::too_many_arguments)]
fn receive_loop(
    mut stream: impl Read + Write,
    peer: &str,
    cluster_id: u64,
    me: NodeId,
    admit: &dyn Fn(NodeId) -> Admission,
    deliver: &dyn Fn(Incoming),
    conn: &mut Connection,
    traffic: &PeerTraffic,
) {
    let mut reader = FrameReader::new(PEER_FRAME_BYTES_MAX);
    let mut reassembly = Reassembly::new(PEER_MESSAGE_BYTES_MAX);
    let mut buf = vec![0u8; 64 << 10];
    let mut from: Option<NodeId> = None;
    loop {
        let read = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        traffic.received.fetch_add(read as u64, Relaxed);
        reader.push(&buf[..read]);
        loop {
            let frame = match reader.next_frame() {
                // Only a member that said hello may make us hold a large frame in memory.
                Ok(Some(PeerFrame::Chunk { .. })) if from.is_none() => {
                    tracing::warn!(%peer, "refusing a peer connection that sent data before its hello");
                    return;
                }
                Ok(Some(PeerFrame::Chunk { last, bytes })) => match reassembly.push(last, &bytes) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(%peer, %error, "closing a peer connection that sent a bad chunked frame");
                        return;
                    }
                },
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%peer, %error, "closing a peer connection that sent a bad frame");
                    return;
                }
            };
            match from {
                None => match check_hello(&frame, cluster_id, me, |id| admit(id) != Admission::Refused) {
                    Ok(id) => match admit(id) {
                        Admission::Removed => {
                            tracing::warn!(%peer, member = %format!("{id:x}"), "a removed member tried to rejoin; telling it so");
                            let _ = stream.write_all(&PeerFrame::Removed.encode());
                            return;
                        }
                        Admission::Refused => return,
                        admission => {
                            from = Some(id);
                            conn.accepted = Some(id);
                            conn.guest = admission == Admission::Guest;
                        }
                    },
                    Err(refusal) => {
                        tracing::warn!(%peer, %refusal, "refusing a peer connection");
                        return;
                    }
                },
                Some(id)
                    if conn.guest && !matches!(frame, PeerFrame::Membership(_)) && admit(id) != Admission::Member =>
                {
                    tracing::debug!(%peer, "dropping a frame from a process that is not a member");
                }
                Some(id) => match frame {
                    PeerFrame::Messages(messages) => {
                        // A peer speaks only for itself and only to us.
                        for msg in messages.into_iter().filter(|m| m.from == id && m.to == me) {
                            match conn.resolve_ticket(msg) {
                                Some(msg) => deliver(Incoming::Raft(msg)),
                                None => tracing::warn!(%peer, "dropping a snapshot that names a file never received"),
                            }
                        }
                    }
                    PeerFrame::FileChunk { offset, bytes } => {
                        if let Err(error) = conn.file_chunk(id, offset, &bytes) {
                            tracing::warn!(%peer, %error, "closing a peer connection streaming a bad file");
                            return;
                        }
                    }
                    PeerFrame::FileEnd { size, crc } => {
                        if let Err(error) = conn.file_end(size, crc) {
                            tracing::warn!(%peer, %error, "closing a peer connection streaming a bad file");
                            return;
                        }
                    }
                    PeerFrame::Hello { .. } => {
                        tracing::warn!(%peer, "closing a peer connection that sent a second hello");
                        return;
                    }
                    frame => deliver(Incoming::Frame { from: id, frame }),
                },
            }
        }
    }
}
