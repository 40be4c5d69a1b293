//! Authentication and access control in the state machine (etcd's `authApplierV3`).
//!
//! The auth store ([`keel_auth::AuthStore`]) is state of the machine like the keys: auth
//! commands change it in log order, and it is saved in the store's meta under
//! [`AUTH_META_KEY`] in the same atomic commit as the data and the applied index. So after a
//! restart it is exactly as of the durable applied index, and replaying the log tail checks
//! each request against the same store it met the first time — on every member alike.
//!
//! A client's request reaches the log wrapped with who made it ([`wrap`]): the user its token
//! names and the auth revision the token was issued at. Applying it checks the user's
//! permissions as of that entry's index, so a permission revoked at index `i` stops every
//! request applied after `i`, on every member. Entries without the wrapping are the cluster's
//! own (lease expiry, automatic compaction) and are not checked, as etcd runs those as root.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use keel_auth::{AuthCommand, AuthError, AuthStore, KeyRange};
use keel_codec::{DecodeError, Reader, Writer};
use keel_mvcc::{Command, RequestOp, TxnRequest};

/// The store meta entry holding the encoded auth store.
pub const AUTH_META_KEY: &str = "keel.auth";

/// Entries whose first byte is this hold a client's request with its user ([`wrap`]).
pub const AUTHED_TAG: u8 = 0xa2;

/// The auth store, shared by the machine (which applies changes to it) and the server (which
/// resolves tokens and checks reads against it). Changes are rare; checks take the lock
/// briefly, and none at all while auth is off.
#[derive(Clone, Default)]
pub struct SharedAuth {
    store: Arc<Mutex<AuthStore>>,
    enabled: Arc<AtomicBool>,
}

impl SharedAuth {
    pub fn lock(&self) -> MutexGuard<'_, AuthStore> {
        // A panic while holding it leaves a store that was either changed or not: still whole.
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether auth is on, without the lock.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Puts `store` in place (at start, or from a snapshot). The tokens this member knows stay,
    /// with their TTL: they are not replicated state.
    pub(crate) fn replace(&self, mut store: AuthStore) {
        let mut held = self.lock();
        std::mem::swap(held.tokens(), store.tokens());
        *held = store;
        self.enabled.store(held.is_enabled(), Ordering::Release);
    }

    pub(crate) fn refresh_enabled(&self, store: &AuthStore) {
        self.enabled.store(store.is_enabled(), Ordering::Release);
    }
}

/// `inner` (an encoded etcd command or auth command) as requested by `user` holding a token of
/// auth revision `revision` (`""` and 0: a request that carried no token).
pub fn wrap(user: &str, revision: u64, inner: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(inner.len() + user.len() + 17);
    w.u8(AUTHED_TAG).bytes(user.as_bytes()).u64(revision);
    let mut out = w.into_vec();
    out.extend_from_slice(inner);
    out
}

/// The inverse of [`wrap`]: the user, the revision and the inner entry.
pub fn unwrap(data: &[u8]) -> Result<(String, u64, &[u8]), DecodeError> {
    let mut r = Reader::new(data);
    if r.u8("authed tag")? != AUTHED_TAG {
        return Err(r.error("authed tag", "not a wrapped request"));
    }
    let user = String::from_utf8(r.bytes("user")?.to_vec()).map_err(|_| r.error("user", "not UTF-8"))?;
    let revision = r.u64("auth revision")?;
    Ok((user, revision, &data[r.offset()..]))
}

/// Whether an auth command needs the root role (all but `Authenticate`, as in etcd).
pub fn needs_admin(command: &AuthCommand) -> bool {
    !matches!(command, AuthCommand::Authenticate { .. })
}

/// The permissions `command` needs, checked as etcd's `authApplierV3` does: a put needs write
/// on its key (and read for `prev_kv`), and write on every key already attached to its lease; a
/// delete write on its range (and read for `prev_kv`); a txn read on every compare's range and
/// the same for each op of both branches, nested txns included (etcd 3.4 skips those: a hole
/// closed here); a revoke write on every key of the lease. Grants, compactions and checkpoints
/// need nothing.
pub fn check_command(
    auth: &AuthStore,
    user: &str,
    revision: u64,
    command: &Command,
    lease_keys: &dyn Fn(i64) -> Vec<Bytes>,
) -> Result<(), AuthError> {
    if !auth.is_enabled() {
        return Ok(());
    }
    let check = |key: &[u8], end: &[u8], write: bool| auth.check(user, revision, KeyRange::new(key, end), write);
    let lease_puts = |lease: i64| -> Result<(), AuthError> {
        if lease == 0 {
            return Ok(());
        }
        lease_keys(lease).iter().try_for_each(|key| check(key, b"", true))
    };
    match command {
        Command::Put(put) => {
            check(&put.key, b"", true)?;
            lease_puts(put.lease)?;
            if put.prev_kv {
                check(&put.key, b"", false)?;
            }
            Ok(())
        }
        Command::DeleteRange(delete) => {
            check(&delete.key, &delete.range_end, true)?;
            if delete.prev_kv {
                check(&delete.key, &delete.range_end, false)?;
            }
            Ok(())
        }
        Command::Txn(txn) => check_txn(txn, &check),
        Command::LeaseRevoke { id } => lease_puts(*id),
        Command::Compact { .. } | Command::LeaseGrant { .. } | Command::LeaseCheckpoint { .. } => Ok(()),
    }
}

/// Checks that `key`..`range_end` may be read (`false`) or written (`true`).
type RangeCheck<'a> = dyn Fn(&[u8], &[u8], bool) -> Result<(), AuthError> + 'a;

fn check_txn(txn: &TxnRequest, check: &RangeCheck) -> Result<(), AuthError> {
    for compare in &txn.compare {
        check(&compare.key, &compare.range_end, false)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            RequestOp::Range(range) => check(&range.key, &range.range_end, false)?,
            RequestOp::Put(put) => {
                check(&put.key, b"", true)?;
                if put.prev_kv {
                    check(&put.key, b"", false)?;
                }
            }
            RequestOp::DeleteRange(delete) => {
                if delete.prev_kv {
                    check(&delete.key, &delete.range_end, false)?;
                }
                check(&delete.key, &delete.range_end, true)?;
            }
            RequestOp::Txn(nested) => check_txn(nested, check)?,
        }
    }
    Ok(())
}
