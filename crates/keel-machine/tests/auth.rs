//! Auth in the state machine: requests are checked as they apply, against the auth store as of
//! their index, and the auth store is kept with the data (restart, snapshot) so every replica,
//! replaying or not, decides each request alike.

use bytes::Bytes;
use keel_auth::{AuthCommand, AuthError, AuthStore, Permission, PermissionKind};
use keel_machine::{wrap, Applied, ApplyError, MvccMachine};
use keel_mvcc::{Command, MemBackend, PutRequest, Store, StoreOptions};
use keel_node::StateMachine;

fn machine() -> MvccMachine<MemBackend> {
    let store = Store::open(MemBackend::default(), StoreOptions::default()).expect("store");
    MvccMachine::with_durable_interval(store, std::time::Duration::ZERO)
}

fn put(key: &str) -> Command {
    Command::Put(PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from_static(b"v"),
        ..Default::default()
    })
}

/// As `user` at auth revision `revision`.
fn as_user(user: &str, revision: u64, command: &Command) -> Bytes {
    Bytes::from(wrap(user, revision, &command.encode()))
}

fn admin(command: AuthCommand) -> Bytes {
    Bytes::from(wrap("root", 0, &command.encode()))
}

/// Auth on, root, and alice with read-write on `app/`..`app0`; returns the next free index.
fn set_up(machine: &mut MvccMachine<MemBackend>) -> u64 {
    let grant = Permission { kind: PermissionKind::ReadWrite, key: b"app/".to_vec(), range_end: b"app0".to_vec() };
    let commands = [
        AuthCommand::UserAdd { name: "root".into(), password_hash: Some(b"h".to_vec()) },
        AuthCommand::UserGrantRole { user: "root".into(), role: "root".into() },
        AuthCommand::UserAdd { name: "alice".into(), password_hash: Some(b"h".to_vec()) },
        AuthCommand::RoleAdd { name: "app".into() },
        AuthCommand::RoleGrantPermission { role: "app".into(), permission: grant },
        AuthCommand::UserGrantRole { user: "alice".into(), role: "app".into() },
        AuthCommand::Enable,
    ];
    for (index, command) in (1..).zip(commands) {
        assert_eq!(machine.apply(index, &admin(command.clone())), Ok(Applied::Auth), "{command:?}");
    }
    machine.flush();
    8
}

#[test]
fn a_request_is_applied_only_if_its_user_may_make_it_and_a_refusal_still_takes_its_index() {
    let mut machine = machine();
    let next = set_up(&mut machine);
    let revision = machine.auth().lock().revision();
    assert!(matches!(machine.apply(next, &as_user("alice", revision, &put("app/x"))), Ok(Applied::Kv(_))));
    assert_eq!(
        machine.apply(next + 1, &as_user("alice", revision, &put("other"))),
        Err(ApplyError::Auth(AuthError::PermissionDenied))
    );
    assert_eq!(machine.store().applied_index(), next + 1, "the refused entry consumed its index");
    assert_eq!(machine.apply(next + 2, &as_user("", 0, &put("app/y"))), Err(ApplyError::Auth(AuthError::UserEmpty)));
    // Only root manages auth.
    let add = Bytes::from(wrap("alice", revision, &AuthCommand::RoleAdd { name: "mine".into() }.encode()));
    assert_eq!(machine.apply(next + 3, &add), Err(ApplyError::Auth(AuthError::PermissionDenied)));
    // Revoked at one index: refused from the next on, even for a request checked before.
    let revoke =
        AuthCommand::RoleRevokePermission { role: "app".into(), key: b"app/".to_vec(), range_end: b"app0".to_vec() };
    assert_eq!(machine.apply(next + 4, &admin(revoke)), Ok(Applied::Auth));
    assert_eq!(
        machine.apply(next + 5, &as_user("alice", revision, &put("app/x"))),
        Err(ApplyError::Auth(AuthError::AuthOldRevision))
    );
    let now = machine.auth().lock().revision();
    assert_eq!(
        machine.apply(next + 6, &as_user("alice", now, &put("app/x"))),
        Err(ApplyError::Auth(AuthError::PermissionDenied))
    );
    // The cluster's own entries (lease expiry, compaction) are not a user's: never checked.
    assert!(machine.apply(next + 7, &Bytes::from(put("anything").encode())).is_ok());
}

#[test]
fn the_auth_store_survives_a_restart_as_of_the_durable_index_and_is_not_applied_twice() {
    let mut machine = machine();
    let next = set_up(&mut machine);
    let before = machine.auth().lock().clone();
    let backend = machine.store().backend().clone();
    let reopened = MvccMachine::new(Store::open(backend, StoreOptions::default()).expect("reopen"));
    assert_eq!(*reopened.auth().lock(), before);
    assert!(reopened.auth().is_enabled());
    // Replaying an entry already in the store changes nothing (its revision bump included).
    let mut reopened = reopened;
    let again = admin(AuthCommand::RoleAdd { name: "app".into() });
    assert_eq!(reopened.apply(next - 4, &again), Err(ApplyError::AlreadyApplied));
    assert_eq!(*reopened.auth().lock(), before);
}

#[test]
fn a_snapshot_carries_the_auth_store_to_a_new_replica() {
    let mut machine = machine();
    set_up(&mut machine);
    let snapshot = machine.snapshot(0).expect("snapshot");
    let mut replica = self::machine();
    replica.restore(&snapshot);
    assert_eq!(*replica.auth().lock(), *machine.auth().lock());
    assert!(replica.auth().is_enabled());
    // ... and keeps it in its store, with the data.
    let reopened = MvccMachine::new(Store::open(replica.store().backend().clone(), StoreOptions::default()).unwrap());
    assert_eq!(*reopened.auth().lock(), *machine.auth().lock());
}

#[test]
fn a_damaged_auth_store_stops_the_machine_rather_than_check_differently() {
    let mut machine = machine();
    set_up(&mut machine);
    let mut backend = machine.store().backend().clone();
    let mut damaged = AuthStore::new().encode();
    damaged[0] = 99;
    let mut store = Store::open(backend.clone(), StoreOptions::default()).unwrap();
    store.stage_host_meta(keel_machine::AUTH_META_KEY, damaged);
    store.commit().unwrap();
    backend = store.into_backend();
    let reopened = MvccMachine::new(Store::open(backend, StoreOptions::default()).unwrap());
    assert!(reopened.fatal_error().is_some_and(|e| e.contains("auth store")), "{:?}", reopened.fatal_error());
}
