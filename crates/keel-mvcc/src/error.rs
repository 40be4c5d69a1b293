//! Error types.
//!
//! Two families, kept apart on purpose (as openraft separates API errors from fatal ones):
//! - [`MvccError`]: the answer to a client request (compacted, future revision, missing key, ...).
//!   The command was still *applied* (the raft index is consumed) and the state is intact.
//! - [`StorageError`]: the backend failed or returned data that does not decode. The store
//!   stops serving (it is poisoned) and must be reopened from its backend.
//!
//! The `Display` strings of [`MvccError`] are exactly etcd's, so the server can map them
//! to gRPC statuses in one place.

/// An error answered to the client. Messages match etcd 3.4/3.5 exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// Reading (or compacting, or watching) below the compacted revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// Reading or compacting above the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value` / `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put names a lease that is not granted, or a revoke names an unknown lease.
    #[error("lease not found")]
    LeaseNotFound,
    /// A grant asks for more than [`crate::MAX_LEASE_TTL_SECONDS`].
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// A grant reuses a lease id that is already granted (or id 0).
    #[error("lease already exists")]
    LeaseExists,
    /// A txn puts one key twice, or puts and deletes the same key.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A put carries both `ignore_value` and a value (etcd checks this at the API).
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put carries both `ignore_lease` and a lease (etcd checks this at the API).
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// Txns nested deeper than [`crate::MAX_TXN_DEPTH`]; keel's own bound, etcd has none.
    #[error("etcdserver: too many nested txns")]
    TxnTooDeep,
    /// The store could not read its backend; see [`StorageError`].
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A fatal error: the backend failed, or stored bytes are corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The backend (redb) reported an error.
    #[error("mvcc backend: {0}")]
    Backend(String),
    /// Stored bytes do not decode.
    #[error("mvcc backend corrupt: {0}")]
    Corrupt(#[from] DecodeError),
    /// The in-memory index refers to a revision the backend does not hold.
    #[error("mvcc backend corrupt: revision {main}/{sub} missing")]
    MissingRevision {
        /// Main revision.
        main: i64,
        /// Sub revision.
        sub: i64,
    },
    /// A previous storage error left the in-memory state unknown; reopen the store.
    #[error("mvcc store poisoned by an earlier storage error; reopen it")]
    Poisoned,
}

/// Malformed input to a decoder (command, stored record or snapshot). Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("decode {what} at offset {offset}: {detail}")]
pub struct DecodeError {
    /// What was being decoded.
    pub what: &'static str,
    /// Byte offset in the input where decoding failed.
    pub offset: usize,
    /// What was wrong.
    pub detail: String,
}

impl DecodeError {
    pub(crate) fn new(what: &'static str, offset: usize, detail: impl Into<String>) -> Self {
        DecodeError { what, offset, detail: detail.into() }
    }
}
