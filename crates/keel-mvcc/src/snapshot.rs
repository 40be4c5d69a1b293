//! Whole-state snapshots for raft snapshot transfer: a logical, backend-independent
//! encoding, versioned and checksummed.
//!
//! Layout (integers big-endian):
//! ```text
//! "KEELMVCC" | version u8 = 1 | applied_index u64 | current_revision i64 | compacted i64
//! | lease count u32 | (id i64, record: u32 len + bytes)*
//! | (1u8, revision 16 bytes, record: u32 len + bytes)* | 0u8
//! | crc32c u32 of everything before
//! ```
//! Only visible revisions are written (what compaction would keep), so two replicas with
//! the same applied commands produce identical snapshots whatever their compaction
//! progress. The decoder is total: malformed input is an error, never a panic.

use std::io::Write;

use crate::backend::{
    Backend, WriteBatch, META_APPLIED_INDEX, META_COMPACTED_REVISION, META_COMPACTION_CURSOR, META_CURRENT_REVISION,
};
use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, StorageError};
use crate::kv::StoredRecord;
use crate::revision::Revision;
use crate::store::{Store, SCAN_CHUNK};

const MAGIC: &[u8; 8] = b"KEELMVCC";
/// Version byte of the snapshot encoding.
pub const SNAPSHOT_FORMAT_V1: u8 = 1;

/// Snapshot write or restore failure.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the store's backend failed (the store is poisoned on restore).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The snapshot bytes are malformed; the store is unchanged.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The output writer failed.
    #[error("snapshot write: {0}")]
    Io(#[from] std::io::Error),
}

/// Forwards to `inner` while keeping a running CRC-32C.
struct CrcWriter<'a, W: Write> {
    inner: &'a mut W,
    crc: u32,
}

impl<W: Write> CrcWriter<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.inner.write_all(bytes)
    }
}

impl<B: Backend> Store<B> {
    /// Streams a snapshot of the applied state (including applied-but-uncommitted
    /// commands; its applied index is [`Store::applied_index`]) to `out`.
    pub fn write_snapshot<W: Write>(&self, out: &mut W) -> Result<(), SnapshotError> {
        let mut cw = CrcWriter { inner: out, crc: 0 };
        let mut w = Writer::new();
        w.buf.extend_from_slice(MAGIC);
        w.u8(SNAPSHOT_FORMAT_V1);
        w.u64(self.applied_index);
        w.i64(self.current_revision);
        w.i64(self.compacted_revision());
        w.len(self.leases.len());
        for (id, lease) in &self.leases {
            w.i64(*id);
            w.bytes(&lease.encode());
        }
        cw.put(&w.finish())?;
        let end = Revision::after_main(self.current_revision);
        let mut cursor = Revision::ZERO;
        loop {
            let (chunk, next) = self.scan_merged(cursor, end, SCAN_CHUNK)?;
            let mut w = Writer::new();
            for (rev, bytes) in chunk {
                let rec = StoredRecord::decode(&bytes)?;
                if self.is_live(rev, &rec.kv.key) {
                    w.u8(1);
                    w.buf.extend_from_slice(&rev.to_key());
                    w.bytes(&bytes);
                }
            }
            cw.put(&w.finish())?;
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        cw.put(&[0])?;
        let crc = cw.crc;
        cw.inner.write_all(&crc.to_be_bytes())?;
        Ok(())
    }

    /// A snapshot in memory.
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::new();
        self.write_snapshot(&mut out)?;
        Ok(out)
    }

    /// A consistent view of the committed state for another thread to stream
    /// ([`crate::redb_backend::StoreCopy::write_rows`]); `None` when the backend is not a file.
    /// Refused while applied changes are not yet committed: the copy must hold exactly
    /// [`Store::applied_index`].
    pub fn begin_copy(&self) -> Result<Option<crate::redb_backend::StoreCopy>, StorageError> {
        if !self.pending.is_empty() {
            return Err(StorageError::Backend("applied changes are not committed yet".into()));
        }
        if !self.unwritten.is_empty() {
            return Err(StorageError::Backend("committed changes are not written yet (see write_buffered)".into()));
        }
        self.backend.begin_copy()
    }

    /// Replaces the whole state by a database file a follower built from a streamed
    /// [`crate::redb_backend::StoreCopy`] ([`crate::redb_backend::RowReceiver`]): the file is
    /// renamed into place and the store reloads from it.
    pub fn install_file(&mut self, incoming: &std::path::Path) -> Result<(), SnapshotError> {
        let result = self.backend.install_file(incoming).and_then(|()| self.load());
        if let Err(e) = result {
            self.forget_uncommitted();
            return Err(SnapshotError::Storage(self.poison_error(e)));
        }
        Ok(())
    }

    /// Replaces the whole state with a snapshot's (one backend transaction), dropping
    /// pending changes and undrained events. Malformed bytes leave the store unchanged.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.restore_with_meta(snapshot, Vec::new())
    }

    /// [`Store::restore`], with meta entries of the host's own (see [`Store::stage_host_meta`])
    /// replaced in the same atomic write.
    pub fn restore_with_meta(
        &mut self,
        snapshot: &[u8],
        host_meta: Vec<(&'static str, Vec<u8>)>,
    ) -> Result<(), SnapshotError> {
        let mut batch = decode_snapshot(snapshot)?;
        batch.meta.extend(host_meta);
        let result = self.backend.replace_all(&batch).and_then(|()| self.load());
        if let Err(e) = result {
            // The in-memory state no longer matches anything: force a reopen.
            self.forget_uncommitted();
            return Err(SnapshotError::Storage(self.poison_error(e)));
        }
        Ok(())
    }
}

/// Decodes and validates a snapshot into the batch that recreates it.
pub fn decode_snapshot(input: &[u8]) -> Result<WriteBatch, DecodeError> {
    if input.len() < MAGIC.len() + 1 + 4 {
        return Err(DecodeError::new("snapshot", 0, "too short"));
    }
    let (body, crc_bytes) = input.split_at(input.len() - 4);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(crc_bytes);
    let want = u32::from_be_bytes(crc);
    let got = crc32c::crc32c(body);
    if want != got {
        return Err(DecodeError::new("snapshot", body.len(), format!("checksum {got:#010x} != stored {want:#010x}")));
    }
    let mut r = Reader::new(body, "snapshot");
    let magic = r.u64()?.to_be_bytes();
    if &magic != MAGIC {
        return Err(DecodeError::new("snapshot", 0, "bad magic"));
    }
    let version = r.u8()?;
    if version != SNAPSHOT_FORMAT_V1 {
        return Err(r.err(format!("unknown snapshot version {version}")));
    }
    let applied = r.u64()?;
    let current = r.i64()?;
    let compacted = r.i64()?;
    if current < 1 || compacted < -1 || compacted > current || applied > i64::MAX as u64 {
        return Err(r.err(format!("inconsistent meta: applied {applied}, current {current}, compacted {compacted}")));
    }
    let mut batch = WriteBatch::default();
    let leases = r.len(12)?;
    for _ in 0..leases {
        let id = r.i64()?;
        let rec = r.bytes()?;
        crate::lease::Lease::decode(&rec)?;
        if batch.put_leases.insert(id, rec.to_vec()).is_some() {
            return Err(r.err(format!("duplicate lease {id}")));
        }
    }
    let mut last: Option<Revision> = None;
    loop {
        match r.u8()? {
            0 => break,
            1 => {}
            t => return Err(r.err(format!("record marker {t}"))),
        }
        let at = r.offset();
        let rev = Revision::from_key(r.take(crate::revision::REVISION_KEY_LEN)?)
            .map_err(|e| DecodeError::new("snapshot", at, e.detail))?;
        if last.is_some_and(|l| l >= rev) || rev.main > current {
            return Err(DecodeError::new("snapshot", at, "revisions out of order or above current"));
        }
        last = Some(rev);
        let rec = r.bytes()?;
        StoredRecord::decode(&rec).map_err(|e| DecodeError::new("snapshot", at, e.to_string()))?;
        batch.put_revisions.insert(rev, rec.to_vec());
    }
    r.expect_end()?;
    batch.meta.insert(META_APPLIED_INDEX, applied.to_be_bytes().to_vec());
    batch.meta.insert(META_CURRENT_REVISION, current.to_be_bytes().to_vec());
    batch.meta.insert(META_COMPACTED_REVISION, compacted.to_be_bytes().to_vec());
    batch.meta.insert(META_COMPACTION_CURSOR, Vec::new());
    Ok(batch)
}
