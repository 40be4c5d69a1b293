//! Peer transport over TCP: raft messages coalesced per peer, a hello that names the cluster and
//! both members first (so another cluster or an unknown member is refused before anything
//! reaches raft), reconnects with backoff, and frames checksummed and decoded without panics.
//!
//! Raft tolerates lost messages, so a peer that is down or slow costs only its own queue: when
//! the bounded queue is full, messages to that peer are dropped rather than blocking the node.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use keel_codec::peer::{check_hello, encode_chunked, FrameReader, PeerFrame, Reassembly};
use keel_raft::{Message, NodeId};

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

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MAX: usize = 4_096;
/// Messages coalesced into one frame.
const MESSAGES_PER_FRAME_MAX: usize = 512;
/// Frames larger than this (a snapshot) go in chunks, so no single write or read is huge and
/// the per-frame limit below stays small.
pub const PEER_CHUNK_BYTES: usize = 1 << 20;
/// Largest frame accepted from a peer in one piece.
pub const PEER_FRAME_BYTES_MAX: usize = 4 << 20;
/// Largest frame reassembled from chunks (a snapshot message): raft snapshots are held in memory
/// whole today; streaming them from disk lifts this bound.
pub const PEER_MESSAGE_BYTES_MAX: usize = 1 << 30;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Sends raft messages to peers; cheap to call from the driver (never blocks). Peers come and
/// go with membership changes ([`PeerSender::set_peers`]).
pub struct PeerSender {
    cluster_id: u64,
    me: NodeId,
    attributes: Option<PeerFrame>,
    queues: std::sync::Mutex<BTreeMap<NodeId, (SocketAddr, SyncSender<Outgoing>)>>,
}

impl PeerSender {
    /// Starts one sender thread per peer.
    pub fn start(cluster_id: u64, me: NodeId, peers: &BTreeMap<NodeId, SocketAddr>) -> PeerSender {
        PeerSender::start_with(cluster_id, me, peers, None)
    }

    /// Like [`PeerSender::start`]; every connection also sends `attributes` right after its hello.
    pub fn start_with(
        cluster_id: u64,
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        attributes: Option<PeerFrame>,
    ) -> PeerSender {
        let sender = PeerSender { cluster_id, me, attributes, queues: std::sync::Mutex::new(BTreeMap::new()) };
        sender.set_peers(peers);
        sender
    }

    /// Makes the peer set exactly `peers` (this member excluded): new peers get a sender thread,
    /// removed ones lose theirs (it ends once its queue is dropped), moved ones are restarted.
    pub fn set_peers(&self, peers: &BTreeMap<NodeId, SocketAddr>) {
        let mut queues = self.queues.lock().expect("peer queues lock");
        queues.retain(|id, (addr, _)| peers.get(id) == Some(addr));
        for (&id, &addr) in peers {
            if id == self.me || queues.contains_key(&id) {
                continue;
            }
            let (queue, receiver) = mpsc::sync_channel(PEER_QUEUE_MAX);
            let (cluster_id, me, attributes) = (self.cluster_id, self.me, self.attributes.clone());
            std::thread::Builder::new()
                .name(format!("keel-peer-{id:x}"))
                .spawn(move || send_loop(cluster_id, me, id, addr, attributes, receiver))
                .expect("spawn peer sender thread");
            queues.insert(id, (addr, queue));
        }
    }

    pub fn send(&self, msg: Message) {
        self.send_out(Outgoing::Raft(msg));
    }

    pub fn send_out(&self, msg: Outgoing) {
        let queues = self.queues.lock().expect("peer queues lock");
        let Some((_, queue)) = queues.get(&msg.to()) else {
            tracing::debug!(to = msg.to(), "dropping a message to an unknown peer");
            return;
        };
        match queue.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => tracing::debug!("peer queue full; dropping a message (raft retries)"),
        }
    }
}

fn send_loop(
    cluster_id: u64,
    me: NodeId,
    to: NodeId,
    addr: SocketAddr,
    attributes: Option<PeerFrame>,
    queue: Receiver<Outgoing>,
) {
    let mut backoff = BACKOFF_MIN;
    // Connect right away, not at the first message: the hello and attributes tell the peer who
    // we are (its MemberList shows our client URLs) even before raft has anything to say to it.
    let mut stream: Option<TcpStream> = connect(cluster_id, me, to, addr, attributes.as_ref()).ok();
    loop {
        let first = match queue.recv_timeout(backoff) {
            Ok(first) => first,
            Err(RecvTimeoutError::Disconnected) => return,
            // Idle: keep trying to reach a peer we are not connected to, for the same reason.
            Err(RecvTimeoutError::Timeout) => {
                if stream.is_none() {
                    match connect(cluster_id, me, to, addr, attributes.as_ref()) {
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
        if stream.is_none() {
            match connect(cluster_id, me, to, addr, attributes.as_ref()) {
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
            if let Err(error) = connected.write_all(&bytes) {
                tracing::debug!(peer = to, %error, "peer connection lost");
                stream = None;
            }
        }
    }
}

fn connect(
    cluster_id: u64,
    me: NodeId,
    to: NodeId,
    addr: SocketAddr,
    attributes: Option<&PeerFrame>,
) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_nodelay(true)?;
    stream.write_all(&PeerFrame::Hello { cluster_id, from: me, to }.encode())?;
    if let Some(attributes) = attributes {
        stream.write_all(&attributes.encode())?;
    }
    Ok(stream)
}

/// Accepts peer connections on `listener` and hands every accepted message to `deliver`.
pub fn start_listener(
    listener: TcpListener,
    cluster_id: u64,
    me: NodeId,
    is_member: Arc<dyn Fn(NodeId) -> bool + Send + Sync>,
    deliver: Arc<dyn Fn(Incoming) + Send + Sync>,
) {
    std::thread::Builder::new()
        .name("keel-peer-listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (is_member, deliver) = (is_member.clone(), deliver.clone());
                let _ = std::thread::Builder::new().name("keel-peer-conn".into()).spawn(move || {
                    let mut accepted = None;
                    receive_loop(stream, cluster_id, me, &*is_member, &*deliver, &mut accepted);
                    if let Some(from) = accepted {
                        deliver(Incoming::PeerLost(from));
                    }
                });
            }
        })
        .expect("spawn peer listener thread");
}

fn receive_loop(
    mut stream: TcpStream,
    cluster_id: u64,
    me: NodeId,
    is_member: &dyn Fn(NodeId) -> bool,
    deliver: &dyn Fn(Incoming),
    accepted: &mut Option<NodeId>,
) {
    let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut reader = FrameReader::new(PEER_FRAME_BYTES_MAX);
    let mut reassembly = Reassembly::new(PEER_MESSAGE_BYTES_MAX);
    let mut buf = vec![0u8; 64 << 10];
    let mut from: Option<NodeId> = None;
    loop {
        let read = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
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
                None => match check_hello(&frame, cluster_id, me, is_member) {
                    Ok(id) => {
                        from = Some(id);
                        *accepted = Some(id);
                    }
                    Err(refusal) => {
                        tracing::warn!(%peer, %refusal, "refusing a peer connection");
                        return;
                    }
                },
                Some(id) => match frame {
                    PeerFrame::Messages(messages) => {
                        // A peer speaks only for itself and only to us.
                        for msg in messages.into_iter().filter(|m| m.from == id && m.to == me) {
                            deliver(Incoming::Raft(msg));
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
