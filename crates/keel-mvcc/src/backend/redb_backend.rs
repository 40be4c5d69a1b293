//! [`Backend`] on a redb 2.x database file: the only module of this crate that does IO.
//!
//! Each [`Backend::commit`] is one redb write transaction with immediate durability
//! (redb fsyncs before `commit` returns), so a batch and the applied index it carries
//! survive a crash together or not at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Backend, RevisionSource, RevisionVisitor, SavedIndex, WriteBatch};
use crate::error::StorageError;
use crate::revision::Revision;

const REVISIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("revisions");
const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// redb's own page cache. The kernel's page cache already holds the file, so a cache the size
/// of the data (redb's default is 1 GiB) only doubles it in the process: with 128 MiB the upper
/// levels of the trees and the hot leaves stay here, a 1M-key store loads about 10 % faster and
/// restarts 20–30 % faster (`keel bench mvcc`), and the member's RSS no longer grows with the data.
const PAGE_CACHE_BYTES: usize = 128 << 20;

/// Bytes of headers the reading thread gathers before handing them over.
const HEADER_BATCH_BYTES: usize = 1 << 20;

/// Revision keys and record headers, back to back: `rows[i]` is (end of the i-th key, end of its
/// header), each row starting where the previous one ended.
#[derive(Default)]
struct HeaderBatch {
    bytes: Vec<u8>,
    rows: Vec<(usize, usize)>,
}

impl HeaderBatch {
    fn push(&mut self, key: &[u8], header: &[u8]) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(header);
        self.rows.push((key_end, self.bytes.len()));
    }
}

/// Opens (or creates) a store file with keel's page cache (see [`PAGE_CACHE_BYTES`]). A file that
/// was not closed (a crash, kill -9) is walked whole by redb before it opens, about 1.3 s per GiB
/// here: said in the log, since it is most of such a restart.
fn open_database(path: &Path) -> Result<Database, StorageError> {
    let told = std::sync::atomic::AtomicBool::new(false);
    let file = path.display().to_string();
    Database::builder()
        .set_cache_size(PAGE_CACHE_BYTES)
        .set_repair_callback(move |_| {
            if !told.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(%file, "the store file was not closed cleanly: repairing it");
            }
        })
        .create(path)
        .map_err(backend_err)
}

fn checkpoint_path(store: &Path) -> PathBuf {
    store.with_extension("index")
}

fn backend_err(e: impl Into<redb::Error>) -> StorageError {
    StorageError::Backend(e.into().to_string())
}

/// A redb-backed store file.
pub struct RedbBackend {
    /// `None` only for the instant [`Backend::install_file`] swaps the file. Shared with the sync
    /// thread while one runs.
    db: Option<Arc<Database>>,
    path: PathBuf,
    /// The key index checkpoint, read on its own thread while redb opens the file (after a crash
    /// redb first walks the whole file: the two overlap).
    checkpoint_read_ahead: Option<std::thread::JoinHandle<Option<SavedIndex>>>,
    /// The read transaction the store's own reads go through (a put reads the value it
    /// replaces, for its watch event), kept until the next write: opening one per read was a
    /// tenth of the driver's time under a put load. Dropped before every write, so it never
    /// holds back the pages a commit frees for longer than the commit interval.
    own_view: std::sync::Mutex<Option<RedbView>>,
    /// The durable commit running on its own thread ([`Backend::start_sync`]): fsyncs took 2 ms
    /// and more, ten times a second, on the thread that applies and answers.
    sync: Option<std::thread::JoinHandle<Result<std::time::Duration, StorageError>>>,
}

/// Largest row a stream may carry (a key and a value within etcd's request limits, with room).
const ROW_BYTES_MAX: usize = 64 << 20;

const ROW_END: u8 = 0;
const ROW_REVISION: u8 = 1;
const ROW_LEASE: u8 = 2;
const ROW_META: u8 = 3;

/// A consistent view of a store's committed content (a redb read transaction, which pins it),
/// to be streamed on another thread: the leader's side of a snapshot, as etcd streams its bolt
/// file from a read transaction. Only one row at a time is in memory.
///
/// The stream: rows `[table u8][key len u32][key][value len u32][value]` (big-endian lengths),
/// revisions first, then leases and meta, then `[0]`. The receiver ([`RowReceiver`]) builds a
/// database file from it.
pub struct StoreCopy {
    txn: redb::ReadTransaction,
}

fn put_row(out: &mut impl std::io::Write, table: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    out.write_all(&[table])?;
    out.write_all(&(key.len() as u32).to_be_bytes())?;
    out.write_all(key)?;
    out.write_all(&(value.len() as u32).to_be_bytes())?;
    out.write_all(value)
}

impl StoreCopy {
    /// The applied raft index of the view.
    pub fn applied_index(&self) -> Result<u64, StorageError> {
        let meta = self.txn.open_table(META).map_err(backend_err)?;
        let value = meta.get(crate::backend::META_APPLIED_INDEX).map_err(backend_err)?;
        Ok(value.and_then(|v| <[u8; 8]>::try_from(v.value()).ok()).map_or(0, u64::from_be_bytes))
    }

    /// Writes every row of the view to `out`, with `extra_meta` added to the meta rows.
    pub fn write_rows(
        &self,
        out: &mut impl std::io::Write,
        extra_meta: &[(&str, Vec<u8>)],
    ) -> Result<(), StorageError> {
        let io = |e: std::io::Error| StorageError::Backend(format!("stream the store: {e}"));
        for row in self.txn.open_table(REVISIONS).map_err(backend_err)?.iter().map_err(backend_err)? {
            let (k, v) = row.map_err(backend_err)?;
            put_row(out, ROW_REVISION, k.value(), v.value()).map_err(io)?;
        }
        for row in self.txn.open_table(LEASES).map_err(backend_err)?.iter().map_err(backend_err)? {
            let (k, v) = row.map_err(backend_err)?;
            put_row(out, ROW_LEASE, &k.value().to_be_bytes(), v.value()).map_err(io)?;
        }
        for row in self.txn.open_table(META).map_err(backend_err)?.iter().map_err(backend_err)? {
            let (k, v) = row.map_err(backend_err)?;
            put_row(out, ROW_META, k.value().as_bytes(), v.value()).map_err(io)?;
        }
        for (k, v) in extra_meta {
            put_row(out, ROW_META, k.as_bytes(), v).map_err(io)?;
        }
        out.write_all(&[ROW_END]).map_err(io)
    }
}

/// Bytes of rows gathered before they are written in one transaction.
const RECEIVE_BATCH_BYTES: usize = 8 << 20;
/// The receiving database's page cache.
const RECEIVE_CACHE_BYTES: usize = 32 << 20;

/// The follower's side of a streamed store: rows in, a database file out, in transactions of
/// bounded size so a store of any size takes bounded memory. Total over hostile input: a
/// malformed stream is an error, never a panic.
pub struct RowReceiver {
    db: Option<Database>,
    tmp: PathBuf,
    buf: Vec<u8>,
    /// Rows parsed and not yet written: (table, key, value).
    batch: Vec<(u8, Vec<u8>, Vec<u8>)>,
    batch_bytes: usize,
    ended: bool,
}

impl RowReceiver {
    /// Starts a database at `path` + `.tmp`.
    pub fn create(path: &Path) -> Result<RowReceiver, StorageError> {
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        // A small page cache: the file is written once, front to back, never read here.
        let db = Database::builder().set_cache_size(RECEIVE_CACHE_BYTES).create(&tmp).map_err(backend_err)?;
        Ok(RowReceiver { db: Some(db), tmp, buf: Vec::new(), batch: Vec::new(), batch_bytes: 0, ended: false })
    }

    /// Takes the next bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Some(&table) = self.buf.get(at) {
            if self.ended {
                // Zeros may pad a stream after its end (the Snapshot RPC pads to 512 bytes).
                if table == ROW_END {
                    at += 1;
                    continue;
                }
                return Err(StorageError::Backend("bytes after the end of a streamed store".into()));
            }
            if table == ROW_END {
                self.ended = true;
                at += 1;
                continue;
            }
            if !matches!(table, ROW_REVISION | ROW_LEASE | ROW_META) {
                return Err(StorageError::Backend(format!("unknown streamed table {table}")));
            }
            let rest = &self.buf[at..];
            let len_at =
                |i: usize| rest.get(i..i + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize);
            let Some(key_len) = len_at(1) else { break };
            if key_len > ROW_BYTES_MAX {
                return Err(StorageError::Backend(format!("a streamed key of {key_len} bytes")));
            }
            let Some(value_len) = len_at(5 + key_len) else { break };
            if value_len > ROW_BYTES_MAX {
                return Err(StorageError::Backend(format!("a streamed value of {value_len} bytes")));
            }
            let row_len = 9 + key_len + value_len;
            if rest.len() < row_len {
                break;
            }
            self.batch.push((table, rest[5..5 + key_len].to_vec(), rest[9 + key_len..row_len].to_vec()));
            self.batch_bytes += row_len;
            at += row_len;
            if self.batch_bytes >= RECEIVE_BATCH_BYTES {
                self.write_batch(false)?;
            }
        }
        self.buf.drain(..at);
        Ok(())
    }

    fn write_batch(&mut self, durable: bool) -> Result<(), StorageError> {
        let db = self.db.as_ref().ok_or_else(|| StorageError::Backend("receiver closed".into()))?;
        let mut write = db.begin_write().map_err(backend_err)?;
        if !durable {
            write.set_durability(redb::Durability::None);
        }
        {
            let mut revisions = write.open_table(REVISIONS).map_err(backend_err)?;
            let mut leases = write.open_table(LEASES).map_err(backend_err)?;
            let mut meta = write.open_table(META).map_err(backend_err)?;
            for (table, key, value) in self.batch.drain(..) {
                match table {
                    ROW_REVISION => {
                        revisions.insert(key.as_slice(), value.as_slice()).map_err(backend_err)?;
                    }
                    ROW_LEASE => {
                        let id = <[u8; 8]>::try_from(key.as_slice())
                            .map_err(|_| StorageError::Backend("a streamed lease id is not 8 bytes".into()))?;
                        leases.insert(i64::from_be_bytes(id), value.as_slice()).map_err(backend_err)?;
                    }
                    _ => {
                        let key = std::str::from_utf8(&key)
                            .map_err(|_| StorageError::Backend("a streamed meta key is not UTF-8".into()))?;
                        meta.insert(key, value.as_slice()).map_err(backend_err)?;
                    }
                }
            }
        }
        write.commit().map_err(backend_err)?;
        self.batch_bytes = 0;
        Ok(())
    }

    /// The stream ended: the file is made durable and renamed to `path`.
    pub fn finish(mut self, path: &Path) -> Result<(), StorageError> {
        if !self.ended || !self.buf.is_empty() {
            return Err(StorageError::Backend("the streamed store ended early".into()));
        }
        // One durable commit covers every batch before it; the tables exist even when empty.
        self.write_batch(true)?;
        drop(self.db.take());
        std::fs::rename(&self.tmp, path)
            .map_err(|e| StorageError::Backend(format!("rename {}: {e}", self.tmp.display())))?;
        sync_parent(path)
    }
}

impl Drop for RowReceiver {
    fn drop(&mut self) {
        // Not finished: the partial file goes.
        if self.db.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn sync_parent(path: &Path) -> Result<(), StorageError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::Backend(format!("sync {}: {e}", dir.display())))
}

impl Drop for RedbBackend {
    /// The file is closed cleanly (redb's next open then skips its repair walk) only once the
    /// sync thread has let go of it.
    fn drop(&mut self) {
        if let Err(error) = self.join_sync() {
            tracing::warn!(%error, "the store's last sync failed");
        }
    }
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
        let checkpoint = checkpoint_path(&path);
        let checkpoint_read_ahead = std::thread::Builder::new()
            .name("index-load".into())
            .spawn(move || crate::index_checkpoint::load(&checkpoint))
            .ok();
        let db = open_database(&path)?;
        // Create the tables once so read transactions can always open them.
        let txn = db.begin_write().map_err(backend_err)?;
        {
            txn.open_table(REVISIONS).map_err(backend_err)?;
            txn.open_table(LEASES).map_err(backend_err)?;
            txn.open_table(META).map_err(backend_err)?;
        }
        txn.commit().map_err(backend_err)?;
        Ok(RedbBackend {
            db: Some(Arc::new(db)),
            path,
            checkpoint_read_ahead,
            own_view: std::sync::Mutex::default(),
            sync: None,
        })
    }

    /// The store's content was replaced: the key index checkpoint of the old one goes (one as of
    /// an old revision would still be right, since revisions mean the same on every replica, but
    /// a store replaced is a store to index from its own records).
    fn forget_index_checkpoint(&mut self) -> Result<(), StorageError> {
        self.checkpoint_read_ahead = None;
        let path = checkpoint_path(&self.path);
        crate::index_checkpoint::remove(&path)
            .map_err(|e| StorageError::Backend(format!("remove the key index checkpoint {}: {e}", path.display())))
    }

    fn db(&self) -> Result<&Database, StorageError> {
        self.db.as_deref().ok_or_else(|| StorageError::Backend("the database file is being replaced".into()))
    }

    /// Waits for the sync in flight, if any, and returns its outcome (how long it took).
    fn join_sync(&mut self) -> Result<std::time::Duration, StorageError> {
        match self.sync.take() {
            None => Ok(std::time::Duration::ZERO),
            Some(running) => {
                running.join().unwrap_or_else(|_| Err(StorageError::Backend("the store's sync thread panicked".into())))
            }
        }
    }

    fn own_view(&self) -> std::sync::MutexGuard<'_, Option<RedbView>> {
        self.own_view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `read` through the kept read transaction, opening one if there is none.
    fn read_own<T>(&self, read: impl FnOnce(&RedbView) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let mut kept = self.own_view();
        let view = match kept.take() {
            Some(view) => view,
            None => self.read_view()?,
        };
        let result = read(&view);
        *kept = Some(view);
        result
    }

    /// The next write changes what the kept read transaction would see: it goes.
    fn forget_own_view(&self) {
        self.own_view().take();
    }

    /// Makes this store the starting point of a new cluster's log (`keel snapshot restore`, as
    /// etcdutl resets etcd's consistent index): the applied index goes back to 0, since the new
    /// cluster's log starts at 1 and the old log's indexes mean nothing there, and the old
    /// cluster's own meta rows named in `forget` (its member records) go. Keys, revisions,
    /// compaction and leases stay exactly as they were. Durable when it returns; a store open
    /// over this file must be reopened to see it.
    pub fn start_new_log(&mut self, forget: &[&str]) -> Result<(), StorageError> {
        self.forget_own_view();
        let txn = self.db()?.begin_write().map_err(backend_err)?;
        {
            let mut meta = txn.open_table(META).map_err(backend_err)?;
            meta.insert(super::META_APPLIED_INDEX, 0i64.to_be_bytes().as_slice()).map_err(backend_err)?;
            for name in forget {
                meta.remove(*name).map_err(backend_err)?;
            }
        }
        txn.commit().map_err(backend_err)?;
        // The key index checkpoint names the applied index it was taken at.
        self.forget_index_checkpoint()
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
        self.forget_own_view();
        let mut txn = self.db()?.begin_write().map_err(backend_err)?;
        // No quick-repair: it would save the allocator state with every durable commit so that
        // reopening after kill -9 skips redb's walk over the file (about 1.4 s per GiB, `keel
        // bench mvcc --phase crash`), but it made each durable commit about 5 ms slower (ten a
        // second on the driver thread) and this crate's tests three to fourteen times slower.
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

/// A redb read transaction: the records as committed when it began, for reads on other threads
/// (it pins the pages it sees, so hosts hold one only for the length of a read).
pub struct RedbView {
    txn: redb::ReadTransaction,
}

impl std::fmt::Debug for RedbView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbView")
    }
}

impl RevisionSource for RedbView {
    fn get_revisions(&self, revs: &[Revision]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let table = self.txn.open_table(REVISIONS).map_err(backend_err)?;
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
        let table = self.txn.open_table(REVISIONS).map_err(backend_err)?;
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
}

/// The committed records, through the read transaction kept until the next write.
impl RevisionSource for RedbBackend {
    fn get_revisions(&self, revs: &[Revision]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.read_own(|view| view.get_revisions(revs))
    }

    fn scan_revisions(
        &self,
        from: Revision,
        to: Revision,
        limit: usize,
    ) -> Result<Vec<(Revision, Vec<u8>)>, StorageError> {
        self.read_own(|view| view.scan_revisions(from, to, limit))
    }
}

impl Backend for RedbBackend {
    type View = RedbView;

    fn read_view(&self) -> Result<RedbView, StorageError> {
        Ok(RedbView { txn: self.db()?.begin_read().map_err(backend_err)? })
    }

    /// Two threads: one walks the table and copies each record's header into batches, the
    /// caller's builds from them meanwhile. A restart of a million keys spends about as long
    /// reading redb's pages as building the index, so this halves it on two cores; the values
    /// (most of the bytes) are never copied.
    fn for_each_record_header(&self, from: Revision, visit: &mut RevisionVisitor<'_>) -> Result<(), StorageError> {
        let db = self.db()?;
        std::thread::scope(|scope| {
            let (batches, received) = std::sync::mpsc::sync_channel::<Result<HeaderBatch, StorageError>>(4);
            scope.spawn(move || {
                let read = || -> Result<(), StorageError> {
                    let txn = db.begin_read().map_err(backend_err)?;
                    let table = txn.open_table(REVISIONS).map_err(backend_err)?;
                    let mut batch = HeaderBatch::default();
                    for item in table.range::<&[u8]>(from.to_key().as_slice()..).map_err(backend_err)? {
                        let (k, v) = item.map_err(backend_err)?;
                        let record = v.value();
                        let header = &record[..crate::kv::StoredRecord::header_len(record).min(record.len())];
                        batch.push(k.value(), header);
                        if batch.bytes.len() >= HEADER_BATCH_BYTES {
                            // The caller stopped (an error on its side): nothing more to do.
                            if batches.send(Ok(std::mem::take(&mut batch))).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    let _ = batches.send(Ok(batch));
                    Ok(())
                };
                if let Err(error) = read() {
                    let _ = batches.send(Err(error));
                }
            });
            for batch in received {
                let batch = batch?;
                let mut start = 0;
                for &(key_end, end) in &batch.rows {
                    visit(Revision::from_key(&batch.bytes[start..key_end])?, &batch.bytes[key_end..end])?;
                    start = end;
                }
            }
            Ok(())
        })
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

    fn start_sync(&mut self) -> Result<(), StorageError> {
        let _ = self.join_sync()?;
        let db = Arc::clone(self.db.as_ref().ok_or_else(|| StorageError::Backend("no database to sync".into()))?);
        let running = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || {
                // Nothing to write of its own: a durable commit persists every buffered one before it.
                let started = std::time::Instant::now();
                let txn = db.begin_write().map_err(backend_err)?;
                txn.commit().map_err(backend_err)?;
                Ok(started.elapsed())
            })
            .map_err(|e| StorageError::Backend(format!("start the store's sync thread: {e}")))?;
        self.sync = Some(running);
        Ok(())
    }

    fn sync_finished(&mut self) -> Result<Option<std::time::Duration>, StorageError> {
        if self.sync.as_ref().is_some_and(|running| !running.is_finished()) {
            return Ok(None);
        }
        self.join_sync().map(Some)
    }

    fn replace_all(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.write(batch, true, true)?;
        self.forget_index_checkpoint()
    }

    fn index_checkpoint_path(&self) -> Option<PathBuf> {
        Some(checkpoint_path(&self.path))
    }

    fn load_index_checkpoint(&mut self) -> Option<SavedIndex> {
        match self.checkpoint_read_ahead.take() {
            // A panic while decoding is a damaged checkpoint like any other: the index is rebuilt.
            Some(reading) => reading.join().unwrap_or(None),
            None => crate::index_checkpoint::load(&checkpoint_path(&self.path)),
        }
    }

    fn begin_copy(&self) -> Result<Option<StoreCopy>, StorageError> {
        Ok(Some(StoreCopy { txn: self.db()?.begin_read().map_err(backend_err)? }))
    }

    /// Closes the database, renames `incoming` over its file (atomic: a crash leaves the old
    /// file or the new one) and opens that.
    fn install_file(&mut self, incoming: &Path) -> Result<(), StorageError> {
        // Opening checks the file is a database before the old one is given up.
        drop(Database::builder().set_cache_size(RECEIVE_CACHE_BYTES).open(incoming).map_err(backend_err)?);
        self.forget_own_view();
        // The file is closed only once the sync thread lets go of it. Its outcome no longer
        // matters: the file it was making durable is being replaced.
        let _ = self.join_sync();
        self.db = None;
        let renamed = std::fs::rename(incoming, &self.path)
            .map_err(|e| StorageError::Backend(format!("rename {} over the store: {e}", incoming.display())));
        let synced = renamed.and_then(|()| sync_parent(&self.path));
        // Whatever happened, the file at `path` (old or new) is opened again.
        self.db = Some(Arc::new(open_database(&self.path)?));
        synced?;
        self.forget_index_checkpoint()
    }
}
