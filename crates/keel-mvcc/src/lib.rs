//! # keel-mvcc: etcd's MVCC state machine
//!
//! The replicated state of a keel group: a multi-version key-value store with etcd 3.4/3.5
//! semantics (revisions, versions, range options, txn, compaction, leases, watch events,
//! `HashKV`), applied from raft log entries in order, deterministically, and persisted
//! through a [`Backend`]. No clocks or IO outside the backend, and no threads but the backend's
//! reader and the index rebuild's second merger at start-up (results do not depend on them);
//! every map whose order can reach a result is a `BTreeMap`.
//!
//! ## Model
//! - **Revisions.** A store-wide main revision, bumped once per write transaction: a put,
//!   a delete that deletes something, a txn that changes something, or a lease revoke that
//!   deletes keys. Changes inside one transaction get sub revisions 0, 1, 2… The store
//!   starts at revision 1, so the first write is revision 2. Reads, deletes of nothing and
//!   read-only txns leave it alone.
//! - **Keys.** Each key has generations: a put creates a generation (version 1,
//!   `create_revision` = that revision), each put adds one to the version, and a delete
//!   ends it with a tombstone. The in-memory key index maps key → revisions;
//!   values stay in the backend and are read by revision, so data larger than memory works.
//! - **Txn.** Compares (on the state before the txn) pick a branch; ops run in order with
//!   one main revision and increasing sub revisions; reads inside see the txn's earlier
//!   writes. Client errors (missing lease, `ignore_*` on a missing key, compacted or future
//!   range revisions, duplicate keys) are found before anything is written, so a failing
//!   command changes nothing.
//! - **Leases** are replicated state without a clock: grant, revoke (deletes attached keys
//!   in one revision) and checkpoint are commands; the leader decides expiry.
//! - **Events.** Every change yields an [`Event`] (with `prev_kv`) for
//!   [`Store::take_events`]; [`Store::events_since`] reads history back for watches that
//!   start in the past.
//!
//! ## Durability contract
//! - [`Store::apply`] changes the in-memory state and appends to a pending write batch.
//!   Reads ([`Store::range`], events, hashes, snapshots) see applied state at once,
//!   committed or not.
//! - [`Store::commit`] writes the pending batch **and the applied raft index** in one
//!   atomic backend transaction. After it returns, everything applied so far is durable;
//!   before, a crash loses the uncommitted tail, and the durable applied index
//!   ([`Store::durable_applied_index`]) says exactly where replay must resume.
//!   [`Store::apply_batch`] is apply-all-then-commit.
//! - A host must not acknowledge to a client anything it would not replay: since the raft
//!   log holds the command, acknowledging after apply (before commit) is fine — after a
//!   crash the command is re-applied from the log. The backend commit may therefore be
//!   batched freely; only log truncation must wait for `durable_applied_index`.
//! - [`Store::apply`] ignores entries whose index is at or below the applied index, so
//!   replaying an overlapping log tail is harmless.
//! - A [`StorageError`] poisons the store (every later call fails); reopen it from the
//!   backend, which holds the last committed state.
//!
//! ## Compaction without stopping the world
//! `Compact(rev)` is applied at once: the compacted revision moves (reads below it fail
//! with `Compacted`) and the in-memory index drops revisions no read can reach (pure
//! memory work, no IO). Deleting those revisions from the backend happens later, in steps
//! that examine a bounded number of stored revisions: automatically with each commit of
//! applied changes ([`StoreOptions::compaction_batch_per_commit`]) and whenever the host calls
//! [`Store::compaction_step`]. A step deletes only revisions
//! that are not in the index and are at or below the compacted revision, so reads at any
//! revision >= the compacted one are correct at every moment. The step cursor is in the
//! meta table; after a restart the index is rebuilt, compacted again, and deletion goes on.
//! `hash_kv`, snapshots and `events_since` skip not-yet-deleted dead revisions, so they
//! do not depend on how far deletion has got.

pub mod backend;
mod codec;
mod command;
mod error;
mod history;
mod index_checkpoint;
mod index_rebuild;
mod key_index;
mod kv;
mod lease;
mod range;
mod read;
mod request;
mod revision;
mod snapshot;
mod store;
mod txn;
mod write;

pub use backend::{Backend, MemBackend, RedbBackend, RevisionSource, WriteBatch};
pub use command::{Command, COMMAND_FORMAT_V1};
pub use error::{DecodeError, MvccError, StorageError};
pub use history::EventBatch;
pub use index_checkpoint::{IndexCheckpoint, SavedIndex};
pub use kv::{Event, EventKind, KeyValue};
pub use read::{LatestView, ReadView};
pub use request::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, LeaseInfo, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, Response, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
pub use revision::Revision;
pub use snapshot::{decode_snapshot, SnapshotError, SNAPSHOT_FORMAT_V1};
pub use store::{ApplyOutcome, HashKv, Store, StoreOptions};
pub use write::MAX_LEASE_TTL_SECONDS;

/// Deepest txn nesting accepted (by the decoder and by apply). etcd bounds nesting only
/// through its ops-per-txn limit; a fixed bound keeps recursion shallow here.
pub const MAX_TXN_DEPTH: usize = 32;

/// Module alias named in the design: the redb backend, the only code touching files.
pub use backend::redb_backend;
