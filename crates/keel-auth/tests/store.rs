//! The auth store's rules, as etcd 3.4 applies them: what each command refuses, what the
//! revision does, and what a request may do.

use keel_auth::{AuthCommand, AuthError, AuthStore, KeyRange, Permission, PermissionKind};
use proptest::prelude::*;

fn apply(store: &mut AuthStore, command: AuthCommand) -> Result<(), AuthError> {
    let before = store.clone();
    let result = store.apply(&command);
    if result.is_err() {
        assert_eq!(*store, before, "a refused {command:?} changed the store");
    }
    result
}

fn user_add(name: &str) -> AuthCommand {
    AuthCommand::UserAdd { name: name.into(), password_hash: Some(b"hash".to_vec()) }
}

fn grant_role(user: &str, role: &str) -> AuthCommand {
    AuthCommand::UserGrantRole { user: user.into(), role: role.into() }
}

fn grant(role: &str, kind: PermissionKind, key: &str, end: &str) -> AuthCommand {
    let permission = Permission { kind, key: key.into(), range_end: end.into() };
    AuthCommand::RoleGrantPermission { role: role.into(), permission }
}

/// root (with the root role) and alice (role `app`: read-write on the prefix `app/`), auth on.
fn enabled_store() -> AuthStore {
    let mut store = AuthStore::new();
    for command in [
        user_add("root"),
        AuthCommand::RoleAdd { name: "root".into() },
        grant_role("root", "root"),
        user_add("alice"),
        AuthCommand::RoleAdd { name: "app".into() },
        grant("app", PermissionKind::ReadWrite, "app/", "app0"),
        grant_role("alice", "app"),
        AuthCommand::Enable,
    ] {
        apply(&mut store, command).unwrap();
    }
    store
}

#[test]
fn auth_is_enabled_only_once_root_exists_with_the_root_role() {
    let mut store = AuthStore::new();
    assert_eq!(store.revision(), 1);
    assert_eq!(apply(&mut store, AuthCommand::Enable), Err(AuthError::RootUserNotExist));
    apply(&mut store, user_add("root")).unwrap();
    assert_eq!(apply(&mut store, AuthCommand::Enable), Err(AuthError::RootRoleNotExist));
    apply(&mut store, grant_role("root", "root")).unwrap();
    let revision = store.revision();
    apply(&mut store, AuthCommand::Enable).unwrap();
    assert!(store.is_enabled());
    assert_eq!(store.revision(), revision, "enabling leaves the revision alone, as in etcd");
    apply(&mut store, AuthCommand::Enable).unwrap();
    apply(&mut store, AuthCommand::Disable).unwrap();
    assert!(!store.is_enabled());
    assert_eq!(store.revision(), revision + 1, "disabling bumps it");
}

#[test]
fn every_command_refuses_as_etcd_does() {
    let mut store = enabled_store();
    let refused = [
        (user_add(""), AuthError::UserEmpty),
        (user_add("alice"), AuthError::UserAlreadyExist),
        (AuthCommand::UserDelete { name: "nobody".into() }, AuthError::UserNotFound),
        (AuthCommand::UserDelete { name: "root".into() }, AuthError::InvalidAuthMgmt),
        (AuthCommand::UserChangePassword { name: "nobody".into(), password_hash: vec![1] }, AuthError::UserNotFound),
        (grant_role("nobody", "app"), AuthError::UserNotFound),
        (grant_role("nobody", "nothing"), AuthError::UserNotFound),
        (grant_role("alice", "nothing"), AuthError::RoleNotFound),
        (AuthCommand::UserRevokeRole { user: "alice".into(), role: "root".into() }, AuthError::RoleNotGranted),
        (AuthCommand::UserRevokeRole { user: "nobody".into(), role: "app".into() }, AuthError::UserNotFound),
        (AuthCommand::UserRevokeRole { user: "root".into(), role: "root".into() }, AuthError::InvalidAuthMgmt),
        (AuthCommand::RoleAdd { name: "".into() }, AuthError::RoleEmpty),
        (AuthCommand::RoleAdd { name: "app".into() }, AuthError::RoleAlreadyExist),
        (AuthCommand::RoleDelete { name: "nothing".into() }, AuthError::RoleNotFound),
        (AuthCommand::RoleDelete { name: "root".into() }, AuthError::InvalidAuthMgmt),
        (grant("nothing", PermissionKind::Read, "a", ""), AuthError::RoleNotFound),
        (
            AuthCommand::RoleRevokePermission { role: "app".into(), key: b"app/".to_vec(), range_end: vec![] },
            AuthError::PermissionNotGranted,
        ),
        (
            AuthCommand::RoleRevokePermission { role: "nothing".into(), key: vec![], range_end: vec![] },
            AuthError::RoleNotFound,
        ),
        (AuthCommand::Authenticate { user: "nobody".into(), token: "t".into() }, AuthError::AuthFailed),
    ];
    for (command, error) in refused {
        assert_eq!(apply(&mut store, command.clone()), Err(error), "{command:?}");
    }
    apply(&mut store, AuthCommand::UserAdd { name: "cert-only".into(), password_hash: None }).unwrap();
    let token = AuthCommand::Authenticate { user: "cert-only".into(), token: "t".into() };
    assert_eq!(apply(&mut store, token), Err(AuthError::AuthFailed), "no password, no password login");
    apply(&mut store, AuthCommand::Disable).unwrap();
    let token = AuthCommand::Authenticate { user: "alice".into(), token: "t".into() };
    assert_eq!(apply(&mut store, token), Err(AuthError::AuthNotEnabled));
    // With auth off, root may go.
    apply(&mut store, AuthCommand::UserRevokeRole { user: "root".into(), role: "root".into() }).unwrap();
    apply(&mut store, AuthCommand::RoleDelete { name: "root".into() }).unwrap();
    apply(&mut store, AuthCommand::UserDelete { name: "root".into() }).unwrap();
}

#[test]
fn granting_a_role_twice_is_ignored_and_a_permission_granted_again_changes_its_kind() {
    let mut store = enabled_store();
    let revision = store.revision();
    apply(&mut store, grant_role("alice", "app")).unwrap();
    assert_eq!(store.revision(), revision);
    assert_eq!(store.user("alice").unwrap().roles, ["app"]);
    apply(&mut store, grant("app", PermissionKind::Read, "app/", "app0")).unwrap();
    apply(&mut store, grant("app", PermissionKind::Write, "a", "")).unwrap();
    let role = store.role("app").unwrap();
    let listed: Vec<(&[u8], PermissionKind)> = role.permissions.iter().map(|p| (p.key.as_slice(), p.kind)).collect();
    assert_eq!(listed, [(&b"a"[..], PermissionKind::Write), (&b"app/"[..], PermissionKind::Read)], "sorted by key");
}

#[test]
fn a_request_is_checked_against_its_users_roles_at_its_revision() {
    let mut store = enabled_store();
    let rev = store.revision();
    let prefix = KeyRange::new(b"app/", b"app0");
    assert_eq!(store.check("alice", rev, KeyRange::new(b"app/x", b""), true), Ok(()));
    assert_eq!(store.check("alice", rev, prefix, false), Ok(()));
    assert_eq!(store.check("alice", rev, KeyRange::new(b"other", b""), false), Err(AuthError::PermissionDenied));
    assert_eq!(store.check("alice", rev, KeyRange::new(b"app/", b"\0"), false), Err(AuthError::PermissionDenied));
    assert_eq!(store.check("root", rev, KeyRange::new(b"\0", b"\0"), true), Ok(()), "root may do anything");
    assert_eq!(store.check("", 0, prefix, false), Err(AuthError::UserEmpty), "no token");
    assert_eq!(store.check("mallory", rev, prefix, false), Err(AuthError::PermissionDenied));
    assert_eq!(store.check_admin("root"), Ok(()));
    assert_eq!(store.check_admin("alice"), Err(AuthError::PermissionDenied));
    assert_eq!(store.check_admin(""), Err(AuthError::UserEmpty));
    assert_eq!(store.check_admin("mallory"), Err(AuthError::UserNotFound));
    // Revoking the permission takes effect at once, and a request checked before is refused.
    let revoke =
        AuthCommand::RoleRevokePermission { role: "app".into(), key: b"app/".to_vec(), range_end: b"app0".to_vec() };
    apply(&mut store, revoke).unwrap();
    assert_eq!(store.check("alice", rev, prefix, false), Err(AuthError::AuthOldRevision));
    assert_eq!(store.check("alice", store.revision(), prefix, false), Err(AuthError::PermissionDenied));
    // Deleting the role takes it from its users.
    apply(&mut store, grant("app", PermissionKind::Read, "app/", "app0")).unwrap();
    assert_eq!(store.check("alice", store.revision(), prefix, false), Ok(()));
    apply(&mut store, AuthCommand::RoleDelete { name: "app".into() }).unwrap();
    assert!(store.user("alice").unwrap().roles.is_empty());
    assert_eq!(store.check("alice", store.revision(), prefix, false), Err(AuthError::PermissionDenied));
    // With auth off, anything goes.
    apply(&mut store, AuthCommand::Disable).unwrap();
    assert_eq!(store.check("", 0, KeyRange::new(b"\0", b"\0"), true), Ok(()));
    assert_eq!(store.check_admin(""), Ok(()));
}

#[test]
fn a_token_is_assigned_on_apply_and_goes_with_its_users_password() {
    let mut store = enabled_store();
    apply(&mut store, AuthCommand::Authenticate { user: "alice".into(), token: "tok.1".into() }).unwrap();
    let info = store.token_info("tok.1").unwrap();
    assert_eq!((info.user.as_str(), info.revision), ("alice", store.revision()));
    assert_eq!(store.token_info("forged"), Err(AuthError::InvalidAuthToken));
    apply(&mut store, AuthCommand::UserChangePassword { name: "alice".into(), password_hash: b"new".to_vec() })
        .unwrap();
    assert_eq!(store.token_info("tok.1"), Err(AuthError::InvalidAuthToken));
    apply(&mut store, AuthCommand::Authenticate { user: "alice".into(), token: "tok.2".into() }).unwrap();
    apply(&mut store, AuthCommand::UserDelete { name: "alice".into() }).unwrap();
    assert_eq!(store.token_info("tok.2"), Err(AuthError::InvalidAuthToken));
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "root", "alice", "bob", "app"]).prop_map(String::from)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b', 0xff]), 0..3)
}

fn command() -> impl Strategy<Value = AuthCommand> {
    let kind = prop::sample::select(vec![PermissionKind::Read, PermissionKind::Write, PermissionKind::ReadWrite]);
    prop_oneof![
        Just(AuthCommand::Enable),
        Just(AuthCommand::Disable),
        (name(), name()).prop_map(|(user, token)| AuthCommand::Authenticate { user, token }),
        (name(), prop::option::of(bytes()))
            .prop_map(|(name, password_hash)| AuthCommand::UserAdd { name, password_hash }),
        name().prop_map(|name| AuthCommand::UserDelete { name }),
        (name(), bytes()).prop_map(|(name, password_hash)| AuthCommand::UserChangePassword { name, password_hash }),
        (name(), name()).prop_map(|(user, role)| AuthCommand::UserGrantRole { user, role }),
        (name(), name()).prop_map(|(user, role)| AuthCommand::UserRevokeRole { user, role }),
        name().prop_map(|name| AuthCommand::RoleAdd { name }),
        name().prop_map(|name| AuthCommand::RoleDelete { name }),
        (name(), kind, bytes(), bytes()).prop_map(|(role, kind, key, range_end)| {
            AuthCommand::RoleGrantPermission { role, permission: Permission { kind, key, range_end } }
        }),
        (name(), bytes(), bytes()).prop_map(|(role, key, range_end)| AuthCommand::RoleRevokePermission {
            role,
            key,
            range_end
        }),
    ]
}

proptest! {
    #[test]
    fn commands_and_stores_survive_their_encoding_and_damage_is_an_error(commands in prop::collection::vec(command(), 0..40)) {
        let mut store = AuthStore::new();
        let mut replica = AuthStore::new();
        for command in &commands {
            let encoded = command.encode();
            prop_assert!(AuthCommand::is_auth_command(&encoded));
            let decoded = AuthCommand::decode(&encoded).unwrap();
            prop_assert_eq!(&decoded, command);
            for cut in 0..encoded.len() {
                prop_assert!(AuthCommand::decode(&encoded[..cut]).is_err(), "cut at {}", cut);
            }
            // A replica applying the decoded entries ends in the same state, error for error.
            prop_assert_eq!(apply(&mut store, command.clone()), replica.apply(&decoded));
        }
        prop_assert_eq!(&store, &replica);
        let encoded = store.encode();
        let restored = AuthStore::decode(&encoded).unwrap();
        prop_assert_eq!(&restored, &store);
        for user in store.user_names() {
            let r = store.revision();
            for range in [KeyRange::new(b"a", b""), KeyRange::new(b"\0", b"\0"), KeyRange::new(b"a", b"b")] {
                prop_assert_eq!(restored.check(&user, r, range, false), store.check(&user, r, range, false));
                prop_assert_eq!(restored.check(&user, r, range, true), store.check(&user, r, range, true));
            }
        }
        for cut in 0..encoded.len() {
            prop_assert!(AuthStore::decode(&encoded[..cut]).is_err(), "cut at {}", cut);
        }
    }

    #[test]
    fn arbitrary_bytes_decode_to_an_error_or_a_value_never_a_panic(data in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = AuthStore::decode(&data);
        let mut tagged = vec![AuthCommand::TAG];
        tagged.extend(&data);
        let _ = AuthCommand::decode(&tagged);
    }
}
