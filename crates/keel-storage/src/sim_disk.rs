//! A simulated disk with a page cache: what a crash keeps is what was synced, plus an arbitrary
//! prefix of the unsynced writes, the last of which may be torn at any byte. Directory entries
//! (creations, renames, removals) survive a crash only if their directory was synced. Bits can be
//! flipped in durable data, and a capacity makes allocations fail with "no space".
//!
//! Deterministic: every random choice is drawn from the seed passed to [`SimDisk::crash`].

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use keel_raft::SplitMix64;

use crate::disk::{Disk, DiskFile};

#[derive(Clone, Debug, Default)]
struct FileState {
    /// What a reader sees now (page cache).
    current: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes) or a size change (offset = len, empty).
    unsynced: Vec<Unsynced>,
}

#[derive(Clone, Debug)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    Extend { len: u64 },
}

#[derive(Debug, Default)]
struct FsState {
    /// Path -> file id, as seen now.
    names: BTreeMap<String, u64>,
    /// Path -> file id, as it survives a crash (per-directory sync).
    durable_names: BTreeMap<String, u64>,
    files: BTreeMap<u64, FileState>,
    next_file: u64,
    /// Most bytes all files may hold; allocations and writes beyond it fail with no space.
    capacity: Option<u64>,
    fsyncs: u64,
}

impl FsState {
    fn used(&self) -> u64 {
        self.names.values().filter_map(|id| self.files.get(id)).map(|f| f.current.len() as u64).sum()
    }

    /// Whether `extra` more bytes fit. Writing within a file's allocated length needs no space
    /// (as on a real file system, whose allocated blocks are the file's): a crash can undo an
    /// unsynced removal and leave the disk holding more than the capacity set before it, and a
    /// write that grows nothing must still succeed then.
    fn check_space(&self, extra: u64) -> io::Result<()> {
        match self.capacity {
            Some(capacity) if extra > 0 && self.used() + extra > capacity => {
                Err(io::Error::new(io::ErrorKind::StorageFull, "simulated disk full"))
            }
            _ => Ok(()),
        }
    }
}

/// A shared handle: clones see the same disk.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<Mutex<FsState>>,
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, FsState> {
        self.state.lock().expect("the simulated disk is never poisoned: nothing panics while holding it")
    }

    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.lock().capacity = capacity;
    }

    /// Bytes all files hold now.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used()
    }

    pub fn fsyncs(&self) -> u64 {
        self.lock().fsyncs
    }

    pub fn unsynced_writes(&self) -> usize {
        self.lock().files.values().map(|f| f.unsynced.len()).sum()
    }

    /// Power loss: every file keeps its durable bytes plus a random prefix of its unsynced writes,
    /// the last of which may be torn; unsynced directory changes are forgotten.
    pub fn crash(&self, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        let mut fs = self.lock();
        fs.names = fs.durable_names.clone();
        let live: Vec<u64> = fs.names.values().copied().collect();
        fs.files.retain(|id, _| live.contains(id));
        for file in fs.files.values_mut() {
            let unsynced = std::mem::take(&mut file.unsynced);
            let keep = rng.range(0, unsynced.len() as u64 + 1) as usize;
            let mut data = std::mem::take(&mut file.durable);
            for (i, op) in unsynced.into_iter().take(keep).enumerate() {
                let torn = i + 1 == keep && rng.range(0, 2) == 0;
                match op {
                    Unsynced::Extend { len } => {
                        if data.len() < len as usize {
                            data.resize(len as usize, 0);
                        }
                    }
                    Unsynced::Write { offset, data: bytes } => {
                        let cut = if torn { rng.range(0, bytes.len() as u64 + 1) as usize } else { bytes.len() };
                        write_into(&mut data, offset, &bytes[..cut]);
                    }
                }
            }
            file.durable = data.clone();
            file.current = data;
        }
    }

    /// Flips one bit of a file's durable (and current) content: bit rot.
    pub fn flip_bit(&self, path: &str, offset: u64, bit: u8) -> bool {
        let mut fs = self.lock();
        let Some(&id) = fs.names.get(path) else { return false };
        let file = fs.files.get_mut(&id).expect("named files exist");
        let at = offset as usize;
        if at >= file.current.len() {
            return false;
        }
        file.current[at] ^= 1 << (bit % 8);
        if at < file.durable.len() {
            file.durable[at] ^= 1 << (bit % 8);
        }
        true
    }

    /// Removes a file as if it went missing (operator error, lost directory entry).
    pub fn lose_file(&self, path: &str) {
        let mut fs = self.lock();
        fs.names.remove(path);
        fs.durable_names.remove(path);
    }

    pub fn file_len(&self, path: &str) -> Option<u64> {
        let fs = self.lock();
        fs.names.get(path).map(|id| fs.files[id].current.len() as u64)
    }
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset as usize..end].copy_from_slice(bytes);
}

struct SimFile {
    disk: SimDisk,
    id: u64,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut FsState, u64) -> io::Result<T>) -> io::Result<T> {
        let mut fs = self.disk.lock();
        if !fs.files.contains_key(&self.id) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "file was lost in a crash"));
        }
        f(&mut fs, self.id)
    }
}

impl DiskFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|fs, id| Ok(fs.files[&id].current.len() as u64))
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(|fs, id| {
            let data = &fs.files[&id].current;
            let end = offset as usize + buf.len();
            if end > data.len() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
            }
            buf.copy_from_slice(&data[offset as usize..end]);
            Ok(())
        })
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|fs, id| {
            let len = fs.files[&id].current.len() as u64;
            let growth = (offset + data.len() as u64).saturating_sub(len);
            fs.check_space(growth)?;
            let file = fs.files.get_mut(&id).expect("checked");
            write_into(&mut file.current, offset, data);
            file.unsynced.push(Unsynced::Write { offset, data: data.to_vec() });
            Ok(())
        })
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.with(|fs, id| {
            let current = fs.files[&id].current.len() as u64;
            if len <= current {
                return Ok(());
            }
            fs.check_space(len - current)?;
            let file = fs.files.get_mut(&id).expect("checked");
            file.current.resize(len as usize, 0);
            file.unsynced.push(Unsynced::Extend { len });
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with(|fs, id| {
            fs.fsyncs += 1;
            let file = fs.files.get_mut(&id).expect("checked");
            file.durable = file.current.clone();
            file.unsynced.clear();
            Ok(())
        })
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, _dir: &str) -> io::Result<()> {
        Ok(()) // directories are implicit in paths
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let fs = self.lock();
        Ok(fs
            .names
            .keys()
            .filter(|path| dir_of(path) == dir)
            .map(|path| path.rsplit_once('/').map_or(path.as_str(), |(_, name)| name).to_string())
            .collect())
    }

    fn open(&self, path: &str, create: bool) -> io::Result<Box<dyn DiskFile>> {
        let mut fs = self.lock();
        let id = match fs.names.get(path) {
            Some(&id) => id,
            None if create => {
                let id = fs.next_file;
                fs.next_file += 1;
                fs.files.insert(id, FileState::default());
                fs.names.insert(path.to_string(), id);
                id
            }
            None => return Err(io::Error::new(io::ErrorKind::NotFound, format!("{path}: no such file"))),
        };
        drop(fs);
        Ok(Box::new(SimFile { disk: self.clone(), id }))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let mut fs = self.lock();
        match fs.names.remove(path) {
            Some(_) => Ok(()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("{path}: no such file"))),
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut fs = self.lock();
        let id = fs
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{from}: no such file")))?;
        fs.names.insert(to.to_string(), id);
        Ok(())
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        let mut fs = self.lock();
        fs.fsyncs += 1;
        let current: Vec<(String, u64)> =
            fs.names.iter().filter(|(p, _)| dir_of(p) == dir).map(|(p, id)| (p.clone(), *id)).collect();
        fs.durable_names.retain(|p, _| dir_of(p) != dir);
        fs.durable_names.extend(current);
        Ok(())
    }
}
