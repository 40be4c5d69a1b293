//! [`Backend`] on a redb 2.x database file: the only module of this crate that does IO.
//!
//! Each [`Backend::commit`] is one redb write transaction with immediate durability
//! (redb fsyncs before `commit` returns), so a batch and the applied index it carries
//! survive a crash together or not at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Backend, WriteBatch};
use crate::error::StorageError;
use crate::revision::Revision;

const REVISIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("revisions");
const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

fn backend_err(e: impl Into<redb::Error>) -> StorageError {
    StorageError::Backend(e.into().to_string())
}

/// A redb-backed store file.
pub struct RedbBackend {
    /// `None` only for the instant [`Backend::install_file`] swaps the file.
    db: Option<Database>,
    path: PathBuf,
}

/// Rows copied per write transaction when a store is copied to a new file: bounds the memory a
/// copy of any size takes.
const COPY_ROWS_PER_TXN: usize = 50_000;

/// A consistent view of a store's committed content (a redb read transaction, which pins it),
/// to be written to a new database file on another thread: the leader's side of a streamed
/// snapshot. Nothing is held in memory but what one batch of rows needs.
pub struct StoreCopy {
    txn: redb::ReadTransaction,
}

impl StoreCopy {
    /// Writes the view as a complete database file at `to` (through a temporary file, renamed
    /// into place once durable), with `extra_meta` added to its meta table. Returns its size.
    pub fn write_file(self, to: &Path, extra_meta: &[(&str, Vec<u8>)]) -> Result<u64, StorageError> {
        let tmp = to.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let out = Database::create(&tmp).map_err(backend_err)?;
        let revisions = self.txn.open_table(REVISIONS).map_err(backend_err)?;
        let mut rows = revisions.iter().map_err(backend_err)?;
        loop {
            let mut write = out.begin_write().map_err(backend_err)?;
            write.set_durability(redb::Durability::None);
            let mut copied = 0;
            {
                let mut table = write.open_table(REVISIONS).map_err(backend_err)?;
                for row in rows.by_ref() {
                    let (k, v) = row.map_err(backend_err)?;
                    table.insert(k.value(), v.value()).map_err(backend_err)?;
                    copied += 1;
                    if copied == COPY_ROWS_PER_TXN {
                        break;
                    }
                }
            }
            write.commit().map_err(backend_err)?;
            if copied < COPY_ROWS_PER_TXN {
                break;
            }
        }
        // Leases and meta last, in the one durable transaction: a file without its meta is
        // never taken for a store.
        let write = out.begin_write().map_err(backend_err)?;
        {
            let mut table = write.open_table(LEASES).map_err(backend_err)?;
            for row in self.txn.open_table(LEASES).map_err(backend_err)?.iter().map_err(backend_err)? {
                let (k, v) = row.map_err(backend_err)?;
                table.insert(k.value(), v.value()).map_err(backend_err)?;
            }
            let mut table = write.open_table(META).map_err(backend_err)?;
            for row in self.txn.open_table(META).map_err(backend_err)?.iter().map_err(backend_err)? {
                let (k, v) = row.map_err(backend_err)?;
                table.insert(k.value(), v.value()).map_err(backend_err)?;
            }
            for (k, v) in extra_meta {
                table.insert(*k, v.as_slice()).map_err(backend_err)?;
            }
        }
        write.commit().map_err(backend_err)?;
        drop(out);
        std::fs::rename(&tmp, to).map_err(|e| StorageError::Backend(format!("rename {}: {e}", tmp.display())))?;
        sync_parent(to)?;
        std::fs::metadata(to).map(|m| m.len()).map_err(|e| StorageError::Backend(format!("{}: {e}", to.display())))
    }
}

fn sync_parent(path: &Path) -> Result<(), StorageError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::Backend(format!("sync {}: {e}", dir.display())))
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbBackend").field("path", &self.path).finish()
    }
}

impl RedbBackend {
    /// Opens the database at `path`, creating the file and its tables if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(backend_err)?;
        // Create the tables once so read transactions can always open them.
        let txn = db.begin_write().map_err(backend_err)?;
        {
            txn.open_table(REVISIONS).map_err(backend_err)?;
            txn.open_table(LEASES).map_err(backend_err)?;
            txn.open_table(META).map_err(backend_err)?;
        }
        txn.commit().map_err(backend_err)?;
        Ok(RedbBackend { db: Some(db), path })
    }

    fn db(&self) -> Result<&Database, StorageError> {
        self.db.as_ref().ok_or_else(|| StorageError::Backend("the database file is being replaced".into()))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of stored revisions.
    pub fn revision_count(&self) -> Result<u64, StorageError> {
        let txn = self.db()?.begin_read().map_err(backend_err)?;
        let table = txn.open_table(REVISIONS).map_err(backend_err)?;
        table.len().map_err(backend_err)
    }

    fn write(&self, batch: &WriteBatch, clear_first: bool, durable: bool) -> Result<(), StorageError> {
        let mut txn = self.db()?.begin_write().map_err(backend_err)?;
        if !durable {
            txn.set_durability(redb::Durability::None);
        }
        if clear_first {
            txn.delete_table(REVISIONS).map_err(backend_err)?;
            txn.delete_table(LEASES).map_err(backend_err)?;
            txn.delete_table(META).map_err(backend_err)?;
        }
        {
            let mut revs = txn.open_table(REVISIONS).map_err(backend_err)?;
            for rev in &batch.delete_revisions {
                revs.remove(rev.to_key().as_slice()).map_err(backend_err)?;
            }
            for (rev, rec) in &batch.put_revisions {
                revs.insert(rev.to_key().as_slice(), rec.as_slice()).map_err(backend_err)?;
            }
            let mut leases = txn.open_table(LEASES).map_err(backend_err)?;
            for id in &batch.delete_leases {
                leases.remove(*id).map_err(backend_err)?;
            }
            for (id, rec) in &batch.put_leases {
                leases.insert(*id, rec.as_slice()).map_err(backend_err)?;
            }
            let mut meta = txn.open_table(META).map_err(backend_err)?;
            for (k, v) in &batch.meta {
                meta.insert(*k, v.as_slice()).map_err(backend_err)?;
            }
        }
        txn.commit().map_err(backend_err)
    }
}

impl Backend for RedbBackend {
    fn get_revisions(&self, revs: &[Revision]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let txn = self.db()?.begin_read().map_err(backend_err)?;
        let table = txn.open_table(REVISIONS).map_err(backend_err)?;
        let mut out = Vec::with_capacity(revs.len());
        for rev in revs {
            let v = table.get(rev.to_key().as_slice()).map_err(backend_err)?;
            out.push(v.map(|g| g.value().to_vec()));
        }
        Ok(out)
    }

    fn scan_revisions(
        &self,
        from: Revision,
        to: Revision,
        limit: usize,
    ) -> Result<Vec<(Revision, Vec<u8>)>, StorageError> {
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db()?.begin_read().map_err(backend_err)?;
        let table = txn.open_table(REVISIONS).map_err(backend_err)?;
        let (lo, hi) = (from.to_key(), to.to_key());
        let mut out = Vec::new();
        for item in table.range::<&[u8]>(lo.as_slice()..hi.as_slice()).map_err(backend_err)? {
            let (k, v) = item.map_err(backend_err)?;
            out.push((Revision::from_key(k.value())?, v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn load_leases(&self) -> Result<Vec<(i64, Vec<u8>)>, StorageError> {
        let txn = self.db()?.begin_read().map_err(backend_err)?;
        let table = txn.open_table(LEASES).map_err(backend_err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(backend_err)? {
            let (k, v) = item.map_err(backend_err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn load_meta(&self) -> Result<BTreeMap<String, Vec<u8>>, StorageError> {
        let txn = self.db()?.begin_read().map_err(backend_err)?;
        let table = txn.open_table(META).map_err(backend_err)?;
        let mut out = BTreeMap::new();
        for item in table.iter().map_err(backend_err)? {
            let (k, v) = item.map_err(backend_err)?;
            out.insert(k.value().to_owned(), v.value().to_vec());
        }
        Ok(out)
    }

    fn commit(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.write(batch, false, true)
    }

    fn commit_buffered(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.write(batch, false, false)
    }

    fn replace_all(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.write(batch, true, true)
    }

    fn begin_copy(&self) -> Result<Option<StoreCopy>, StorageError> {
        Ok(Some(StoreCopy { txn: self.db()?.begin_read().map_err(backend_err)? }))
    }

    /// Closes the database, renames `incoming` over its file (atomic: a crash leaves the old
    /// file or the new one) and opens that.
    fn install_file(&mut self, incoming: &Path) -> Result<(), StorageError> {
        // Opening checks the file is a database before the old one is given up.
        drop(Database::open(incoming).map_err(backend_err)?);
        self.db = None;
        let renamed = std::fs::rename(incoming, &self.path)
            .map_err(|e| StorageError::Backend(format!("rename {} over the store: {e}", incoming.display())));
        let synced = renamed.and_then(|()| sync_parent(&self.path));
        // Whatever happened, the file at `path` (old or new) is opened again.
        self.db = Some(Database::create(&self.path).map_err(backend_err)?);
        synced
    }
}
