//! One member over the real disk: the WAL (keel-storage on RealDisk, with fsync), the etcd state
//! machine on redb, and keel-node in between — the stack the server runs, minus the network.
//! Restarting must replay only the log tail after the state machine's durable applied index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_mvcc::{Command, PutRequest, RangeRequest, RedbBackend, Response};
use keel_node::{bootstrap, Answer, GroupWrite, Node, NodeConfig, OutcomeOf};
use keel_raft::{Config, RecoveredState, Role};
use keel_server::{Applied, MvccMachine};
use keel_storage::{Disk, NodeStorage, RealDisk, StorageOptions};

const GROUP: u64 = 1;

struct Member {
    node: Node<MvccMachine<RedbBackend>>,
    storage: NodeStorage,
    outcomes: Vec<OutcomeOf<MvccMachine<RedbBackend>>>,
}

fn persist(storage: &mut NodeStorage, writes: &[GroupWrite]) {
    keel_host::persist_durably(storage, writes).expect("WAL write and fsync");
}

fn open(dir: &Path) -> Member {
    // Every flush durable: the restart test below counts what is replayed.
    open_with(dir, 10_000, Duration::ZERO)
}

/// `snapshot_every` entries a snapshot replaces the log; the store fsyncs every `durable_every`.
fn open_with(dir: &Path, snapshot_every: u64, durable_every: Duration) -> Member {
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new(dir));
    let (mut storage, mut groups, _) = NodeStorage::open(disk, StorageOptions::new()).expect("storage opens");
    if groups.is_empty() {
        let (hard_state, entries) = bootstrap(&[1]);
        persist(
            &mut storage,
            &[GroupWrite { group: GROUP, hard_state: Some(hard_state), entries, ..Default::default() }],
        );
    }
    let mut state: RecoveredState = groups.remove(&GROUP).map(|g| g.raft_state()).unwrap_or_else(|| {
        let (hard_state, entries) = bootstrap(&[1]);
        RecoveredState { hard_state, entries, ..Default::default() }
    });
    let store = keel_server::server::open_store(&dir.join("db.redb"), state.snapshot.as_ref()).expect("store opens");
    // The state machine's durable applied index: raft replays only what comes after it.
    state.applied = state.applied.max(store.durable_applied_index());
    let mut config = NodeConfig::new(1);
    config.snapshot_interval_entries = snapshot_every;
    let mut node = Node::new(config);
    node.add_group(Config::new(1, GROUP), state, MvccMachine::with_durable_interval(store, durable_every))
        .expect("group starts");
    Member { node, storage, outcomes: Vec::new() }
}

impl Member {
    /// One turn of the host loop: poll, persist with fsync, release what waited for it.
    fn turn(&mut self) {
        let output = self.node.poll();
        self.outcomes.extend(output.outcomes);
        if let Some(write) = output.write {
            persist(&mut self.storage, &write.groups);
            self.node.on_write_durable(write.id);
        }
    }

    fn become_leader(&mut self) {
        for _ in 0..100 {
            if self.node.status(GROUP).is_some_and(|s| s.role == Role::Leader) {
                return;
            }
            self.node.tick();
            self.turn();
        }
        panic!("a single member did not elect itself");
    }

    fn wait(
        &mut self,
        id: u64,
    ) -> Answer<keel_server::CommandResult, keel_server::machine::ClearedRead<keel_mvcc::redb_backend::RedbView>> {
        for _ in 0..100 {
            self.turn();
            if let Some(at) = self.outcomes.iter().position(|o| o.id == id) {
                return self.outcomes.remove(at).result.expect("request succeeded");
            }
        }
        panic!("request {id} got no outcome");
    }

    fn put(&mut self, id: u64, key: &str, value: &str) -> i64 {
        let command = Command::Put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            ..Default::default()
        });
        self.node.propose(GROUP, id, Bytes::from(command.encode())).expect("leader accepts");
        match self.wait(id) {
            Answer::Applied(Ok(Applied::Kv(Response::Put(put)))) => put.revision,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn get(&mut self, id: u64, key: &str) -> Option<Bytes> {
        let query = RangeRequest { key: Bytes::from(key.to_string()), ..Default::default() };
        self.node.read(GROUP, id, query).expect("read accepted");
        match self.wait(id) {
            Answer::Read(cleared) => cleared.run().expect("range ok").kvs.first().map(|kv| kv.value.clone()),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    fn applied_commands(&self) -> u64 {
        self.node.machine(GROUP).expect("group").applied_commands()
    }

    fn entries_handed(&self) -> u64 {
        self.node.machine(GROUP).expect("group").entries_handed()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn writes_survive_a_restart_and_only_the_log_tail_is_replayed() {
    let dir = temp_dir("single-member");
    let mut member = open(&dir);
    member.become_leader();
    let first = member.put(1, "/a", "1");
    let second = member.put(2, "/b", "2");
    assert_eq!(second, first + 1, "one revision per put");
    assert_eq!(member.get(3, "/a"), Some(Bytes::from_static(b"1")));
    assert_eq!(member.applied_commands(), 2);
    drop(member);

    // Restart: everything applied was committed to redb with its raft index, so nothing is
    // applied again, and the data is there.
    let mut member = open(&dir);
    member.become_leader();
    assert_eq!(member.get(4, "/b"), Some(Bytes::from_static(b"2")));
    assert_eq!(member.applied_commands(), 0, "a restart re-applied commands the store already had");
    // Only the new term's no-op reached the machine: nothing before the durable applied index.
    assert_eq!(member.entries_handed(), 1, "a restart replayed log entries the store already had");
    let third = member.put(5, "/c", "3");
    assert_eq!(third, second + 1, "revisions continue across the restart");
    drop(member);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn the_driver_thread_serves_writes_and_reads_and_they_survive_a_restart() {
    use std::sync::mpsc;

    use keel_server::{Driver, Input};

    type Inputs = mpsc::Sender<Input<MvccMachine<RedbBackend>>>;
    let dir = temp_dir("driver");
    let run = |dir: &Path, work: &dyn Fn(&Inputs)| {
        let member = open(dir);
        let (inputs, receiver) = mpsc::channel();
        // One member: nothing to send to anyone.
        let driver = Driver::new(
            member.node,
            member.storage,
            receiver,
            Default::default(),
            Box::new(|_| {}),
            (),
            Duration::from_millis(5),
        );
        let thread = std::thread::spawn(move || driver.run());
        work(&inputs);
        drop(inputs);
        thread.join().expect("driver thread").expect("driver ran without storage errors");
    };
    let put = |inputs: &Inputs, key: &str, value: &str| -> i64 {
        let command = Command::Put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            ..Default::default()
        });
        // Until the member has elected itself, proposals are refused; real clients retry too.
        for _ in 0..2_000 {
            let (reply, answer) = mpsc::channel();
            inputs
                .send(Input::Propose {
                    group: GROUP,
                    data: Bytes::from(command.encode()),
                    reply: keel_server::reply_to(reply),
                })
                .expect("driver runs");
            match answer.recv().expect("driver answers") {
                Ok(Ok(Applied::Kv(Response::Put(put)))) => return put.revision,
                Ok(other) => panic!("unexpected response {other:?}"),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        panic!("no leader");
    };
    let get = |inputs: &Inputs, key: &str| -> Option<Bytes> {
        let (reply, answer) = mpsc::channel();
        let query = RangeRequest { key: Bytes::from(key.to_string()), ..Default::default() };
        inputs.send(Input::Read { group: GROUP, query, reply: keel_server::reply_to(reply) }).expect("driver runs");
        let range = answer.recv().expect("driver answers").expect("read served").run().expect("range ok");
        range.kvs.first().map(|kv| kv.value.clone())
    };
    run(&dir, &|inputs| {
        let first = put(inputs, "/x", "1");
        assert_eq!(put(inputs, "/y", "2"), first + 1);
        assert_eq!(get(inputs, "/x"), Some(Bytes::from_static(b"1")));
    });
    run(&dir, &|inputs| {
        put(inputs, "/z", "3");
        assert_eq!(get(inputs, "/y"), Some(Bytes::from_static(b"2")), "lost across a restart");
    });
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_crash_that_loses_unsynced_store_commits_behind_a_snapshot_loses_no_write() {
    let dir = temp_dir("store-behind-snapshot");
    // The store never fsyncs on its own here, and a snapshot replaces the log every 4 entries:
    // after the crash the store is back at nothing while the log starts after a snapshot.
    let mut member = open_with(&dir, 4, Duration::from_secs(3_600));
    member.become_leader();
    for n in 0..10 {
        member.put(100 + n, &format!("/k{n}"), "v");
    }
    // A crash: copy the files as the process leaves them, with nothing closed or flushed, and
    // restart on the copy.
    let crashed = temp_dir("store-behind-snapshot-crashed");
    for entry in std::fs::read_dir(&dir).expect("dir") {
        let path = entry.expect("entry").path();
        copy_all(&path, &crashed.join(path.file_name().expect("name")));
    }
    drop(member);

    let mut member = open_with(&crashed, 4, Duration::from_secs(3_600));
    member.become_leader();
    for n in 0..10 {
        assert_eq!(member.get(200 + n, &format!("/k{n}")), Some(Bytes::from_static(b"v")), "/k{n} lost");
    }
}

fn copy_all(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("dir") {
            let path = entry.expect("entry").path();
            copy_all(&path, &to.join(path.file_name().expect("name")));
        }
    } else {
        std::fs::copy(from, to).expect("copy");
    }
}
