//! Three members on 127.0.0.1, each on its own driver thread with its own WAL (real fsync) and
//! redb store, talking over real TCP sockets through the peer transport.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use keel_mvcc::{Command, PutRequest, RangeRequest, RedbBackend, Response, Store, StoreOptions};
use keel_node::{Node, NodeConfig};
use keel_raft::{Config, NodeId, RecoveredState};
use keel_server::{start_listener, Applied, Driver, Input, MvccMachine, PeerAddress, PeerSender};
use keel_storage::{Disk, NodeStorage, RealDisk, StorageOptions};

const GROUP: u64 = 1;
const CLUSTER: u64 = 0x6b65656c;

type Inputs = mpsc::Sender<Input<MvccMachine<RedbBackend>>>;

fn start_member(id: NodeId, dir: PathBuf, listener: TcpListener, addrs: &BTreeMap<NodeId, SocketAddr>) -> Inputs {
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new(&dir));
    let (mut storage, _, _) = NodeStorage::open(disk, StorageOptions::new()).expect("storage opens");
    let voters: Vec<NodeId> = addrs.keys().copied().collect();
    let founding = keel_host::bootstrap_write(GROUP, &voters);
    keel_host::persist_durably(&mut storage, std::slice::from_ref(&founding)).expect("bootstrap");
    let (hard_state, entries) = keel_host::bootstrapped(&founding);
    let store =
        Store::open(RedbBackend::open(dir.join("db.redb")).expect("redb"), StoreOptions::default()).expect("store");
    let mut node = Node::new(NodeConfig::new(id));
    let state = RecoveredState { hard_state, entries, ..Default::default() };
    node.add_group(Config::new(id, GROUP), state, MvccMachine::new(store)).expect("group");
    let (inputs, receiver) = mpsc::channel();
    let addrs: BTreeMap<NodeId, PeerAddress> = addrs.iter().map(|(&id, &addr)| (id, PeerAddress::from(addr))).collect();
    let peers = PeerSender::start(CLUSTER, id, &addrs);
    let deliver_to = inputs.clone();
    let members: Vec<NodeId> = voters.clone();
    start_listener(
        listener,
        CLUSTER,
        id,
        Arc::new(move |from| members.contains(&from)),
        Arc::new(move |incoming| drop(deliver_to.send(Input::Peer(incoming)))),
    );
    let driver = Driver::new(
        node,
        storage,
        receiver,
        Default::default(),
        Box::new(move |out| peers.send_out(out)),
        (),
        Duration::from_millis(10),
    );
    std::thread::spawn(move || driver.run());
    inputs
}

fn put(members: &[Inputs], key: &str, value: &str) -> i64 {
    let command = Command::Put(PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
        ..Default::default()
    });
    for attempt in 0..3_000 {
        let (reply, answer) = mpsc::channel();
        let member = &members[attempt % members.len()];
        member
            .send(Input::Propose {
                group: GROUP,
                data: Bytes::from(command.encode()),
                reply: keel_server::reply_to(reply),
            })
            .expect("driver runs");
        match answer.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(Ok(Applied::Kv(Response::Put(put))))) => return put.revision,
            Ok(Ok(other)) => panic!("unexpected response {other:?}"),
            // Not the leader (or no leader yet): try the next member, as a client would.
            Ok(Err(_)) | Err(_) => std::thread::sleep(Duration::from_millis(3)),
        }
    }
    panic!("no member accepted the write");
}

fn get(member: &Inputs, key: &str) -> Option<Bytes> {
    for _ in 0..1_000 {
        let (reply, answer) = mpsc::channel();
        let query = RangeRequest { key: Bytes::from(key.to_string()), ..Default::default() };
        member.send(Input::Read { group: GROUP, query, reply: keel_server::reply_to(reply) }).expect("driver runs");
        match answer.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(range)) => return range.run().expect("range ok").kvs.first().map(|kv| kv.value.clone()),
            _ => std::thread::sleep(Duration::from_millis(3)),
        }
    }
    panic!("no linearizable read was served");
}

#[test]
fn three_members_replicate_over_tcp_and_every_member_serves_linearizable_reads() {
    let base = std::env::temp_dir().join(format!("keel-three-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let listeners: Vec<TcpListener> = (0..3).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let addrs: BTreeMap<NodeId, SocketAddr> =
        listeners.iter().enumerate().map(|(i, l)| (i as u64 + 1, l.local_addr().expect("addr"))).collect();
    let members: Vec<Inputs> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let dir = base.join(format!("m{}", i + 1));
            std::fs::create_dir_all(&dir).expect("dir");
            start_member(i as u64 + 1, dir, listener, &addrs)
        })
        .collect();
    let first = put(&members, "/k1", "v1");
    let second = put(&members, "/k2", "v2");
    assert_eq!(second, first + 1);
    // A read on any member (followers ask the leader for a read index) sees both writes.
    for member in &members {
        assert_eq!(get(member, "/k1"), Some(Bytes::from_static(b"v1")));
        assert_eq!(get(member, "/k2"), Some(Bytes::from_static(b"v2")));
    }
    // The driver threads end with the test process; their files may go now (Linux keeps open
    // files readable after unlinking).
    let _ = std::fs::remove_dir_all(&base);
}
