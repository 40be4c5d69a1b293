//! State-machine snapshot files: written atomically (temp file, fsync, rename, fsync the
//! directory), verified by checksum before use, readable and writable in chunks so they can be
//! streamed to a follower. A restart mid-write leaves only a `.tmp` file, removed at open.
//!
//! Format: `[magic "KEELSNAP"][version u32][group u64][meta length u32][meta][data][crc32c u32]`;
//! the checksum covers everything before it.

use std::sync::Arc;

use bytes::Bytes;
use keel_codec::raft::{get_snapshot_meta, put_snapshot_meta};
use keel_codec::{Reader, Writer};
use keel_raft::{GroupId, Snapshot, SnapshotMeta};
use thiserror::Error;

use crate::disk::{join, Disk, DiskFile};

const MAGIC: &[u8; 8] = b"KEELSNAP";
const VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot {file} is corrupt: {detail}")]
    Corrupt { file: String, detail: String },
    #[error("snapshot {file} is missing")]
    Missing { file: String },
    #[error("snapshot IO error on {file}: {source}")]
    Io { file: String, source: std::io::Error },
}

fn io_error(file: &str, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io { file: file.to_string(), source }
}

pub fn snapshot_file_name(group: GroupId, index: u64, term: u64) -> String {
    format!("{group:016x}-{index:016x}-{term:016x}.snap")
}

/// Writes one snapshot file in chunks; nothing is visible under the final name until `finish`.
pub struct SnapshotWriter {
    disk: Arc<dyn Disk>,
    dir: String,
    name: String,
    file: Box<dyn DiskFile>,
    offset: u64,
    crc: u32,
}

impl SnapshotWriter {
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        let path = join(&self.dir, &format!("{}.tmp", self.name));
        self.file.write_all_at(self.offset, chunk).map_err(|e| io_error(&path, e))?;
        self.offset += chunk.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, chunk);
        Ok(())
    }

    /// Seals the file: checksum, fsync, rename into place, fsync the directory.
    pub fn finish(mut self) -> Result<String, SnapshotError> {
        let tmp = join(&self.dir, &format!("{}.tmp", self.name));
        let crc = self.crc.to_le_bytes();
        self.file.write_all_at(self.offset, &crc).map_err(|e| io_error(&tmp, e))?;
        self.file.sync_data().map_err(|e| io_error(&tmp, e))?;
        let path = join(&self.dir, &self.name);
        self.disk.rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
        self.disk.sync_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        Ok(path)
    }
}

#[derive(Clone)]
pub struct SnapshotStore {
    disk: Arc<dyn Disk>,
    dir: String,
}

impl SnapshotStore {
    /// Opens the snapshot directory and removes leftovers of interrupted writes.
    pub fn open(disk: Arc<dyn Disk>, dir: &str) -> Result<SnapshotStore, SnapshotError> {
        disk.create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        for name in disk.list(dir).map_err(|e| io_error(dir, e))? {
            if name.ends_with(".tmp") {
                let path = join(dir, &name);
                tracing::info!(file = %path, "removing an unfinished snapshot");
                disk.remove(&path).map_err(|e| io_error(&path, e))?;
            }
        }
        Ok(SnapshotStore { disk, dir: dir.to_string() })
    }

    /// Starts writing the snapshot of `group` described by `meta`.
    pub fn writer(&self, group: GroupId, meta: &SnapshotMeta) -> Result<SnapshotWriter, SnapshotError> {
        let name = snapshot_file_name(group, meta.index, meta.term);
        let tmp = join(&self.dir, &format!("{name}.tmp"));
        let _ = self.disk.remove(&tmp);
        let file = self.disk.open(&tmp, true).map_err(|e| io_error(&tmp, e))?;
        let mut writer =
            SnapshotWriter { disk: self.disk.clone(), dir: self.dir.clone(), name, file, offset: 0, crc: 0 };
        let mut header = Writer::new();
        header.buf.extend_from_slice(MAGIC);
        header.u32(VERSION).u64(group);
        let mut meta_bytes = Writer::new();
        put_snapshot_meta(&mut meta_bytes, meta);
        header.bytes(&meta_bytes.into_vec());
        writer.write_chunk(&header.into_vec())?;
        Ok(writer)
    }

    /// Writes a whole snapshot durably.
    pub fn save(&self, group: GroupId, snapshot: &Snapshot) -> Result<String, SnapshotError> {
        let mut writer = self.writer(group, &snapshot.meta)?;
        for chunk in snapshot.data.chunks(1 << 20) {
            writer.write_chunk(chunk)?;
        }
        writer.finish()
    }

    /// Reads and verifies the snapshot of `group` at `meta`.
    pub fn load(&self, group: GroupId, meta: &SnapshotMeta) -> Result<Snapshot, SnapshotError> {
        let path = join(&self.dir, &snapshot_file_name(group, meta.index, meta.term));
        let file = match self.disk.open(&path, false) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::Missing { file: path }),
            Err(e) => return Err(io_error(&path, e)),
        };
        let data = file.read_all().map_err(|e| io_error(&path, e))?;
        let (file_group, file_meta, body) =
            decode_snapshot(&data).map_err(|detail| SnapshotError::Corrupt { file: path.clone(), detail })?;
        if file_group != group || &file_meta != meta {
            return Err(SnapshotError::Corrupt { file: path, detail: "header does not match its name".to_string() });
        }
        Ok(Snapshot { meta: file_meta, data: body })
    }

    /// Removes snapshots of `group` older than `keep_index`.
    pub fn remove_older(&self, group: GroupId, keep_index: u64) -> Result<(), SnapshotError> {
        self.remove_older_keeping(group, keep_index, 0).map(|_| ())
    }

    /// Removes snapshots of `group` older than `keep_index` but the newest `keep_older` of them
    /// (etcd's `--max-snapshots` counts the current one too). Returns how many files went.
    pub fn remove_older_keeping(
        &self,
        group: GroupId,
        keep_index: u64,
        keep_older: usize,
    ) -> Result<usize, SnapshotError> {
        let prefix = format!("{group:016x}-");
        let mut older = Vec::new();
        for name in self.disk.list(&self.dir).map_err(|e| io_error(&self.dir, e))? {
            let Some(rest) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".snap")) else { continue };
            let index = rest.split('-').next().and_then(|h| u64::from_str_radix(h, 16).ok());
            if let Some(index) = index.filter(|&index| index < keep_index) {
                older.push((index, name));
            }
        }
        older.sort();
        let remove = older.len().saturating_sub(keep_older);
        for (_, name) in &older[..remove] {
            let path = join(&self.dir, name);
            self.disk.remove(&path).map_err(|e| io_error(&path, e))?;
        }
        Ok(remove)
    }
}

/// Decodes a whole snapshot file. Total: any input gives an error, never a panic.
pub fn decode_snapshot(data: &[u8]) -> Result<(GroupId, SnapshotMeta, Bytes), String> {
    if data.len() < 4 {
        return Err(format!("{} bytes is too short", data.len()));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }
    if body.len() < MAGIC.len() || &body[..MAGIC.len()] != MAGIC {
        return Err("not a keel snapshot".to_string());
    }
    let mut r = Reader::new(&body[MAGIC.len()..]);
    let version = r.u32("snapshot version").map_err(|e| e.to_string())?;
    if version != VERSION {
        return Err(format!("unsupported snapshot version {version}"));
    }
    let group = r.u64("snapshot group").map_err(|e| e.to_string())?;
    let meta_bytes = r.bytes("snapshot meta").map_err(|e| e.to_string())?;
    let mut meta_reader = Reader::new(&meta_bytes);
    let meta = get_snapshot_meta(&mut meta_reader).map_err(|e| e.to_string())?;
    meta_reader.finish("snapshot meta").map_err(|e| e.to_string())?;
    let start = MAGIC.len() + r.offset();
    Ok((group, meta, Bytes::copy_from_slice(&body[start..])))
}
