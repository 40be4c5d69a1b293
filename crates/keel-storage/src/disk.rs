//! All file IO of keel goes through [`Disk`], so the simulator can run the real WAL and snapshot
//! code over a disk that loses unsynced writes, tears the last one and flips bits.
//!
//! Paths are relative to the disk's root and use `/`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

pub trait DiskFile: Send {
    fn len(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset` (an error if the file is shorter).
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Reserves space up to `len` bytes so later writes below it cannot fail for lack of space.
    fn allocate(&mut self, len: u64) -> io::Result<()>;
    /// Makes every write to this file durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;

    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()?).map_err(|_| io::Error::other("file too large"))?;
        let mut buf = vec![0u8; len];
        self.read_exact_at(0, &mut buf)?;
        Ok(buf)
    }
}

pub trait Disk: Send + Sync {
    fn create_dir_all(&self, dir: &str) -> io::Result<()>;
    /// File names (not paths) in `dir`, sorted.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing, creating it if `create`.
    fn open(&self, path: &str, create: bool) -> io::Result<Box<dyn DiskFile>>;
    fn remove(&self, path: &str) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, removals and renames in `dir` durable.
    fn sync_dir(&self, dir: &str) -> io::Result<()>;
}

/// The real file system under a root directory.
#[derive(Clone, Debug)]
pub struct RealDisk {
    root: PathBuf,
}

impl RealDisk {
    pub fn new(root: impl Into<PathBuf>) -> RealDisk {
        RealDisk { root: root.into() }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

struct RealFile {
    file: File,
}

impl DiskFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("allocation too large"))?;
        // SAFETY: the descriptor is owned by `self.file` and open for writing; posix_fallocate
        // only reserves blocks and extends the file size.
        let result = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, len) };
        if result != 0 {
            return Err(io::Error::from_raw_os_error(result));
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Disk for RealDisk {
    fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.path(dir))
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.path(dir))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&self, path: &str, create: bool) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(self.path(path))?;
        Ok(Box::new(RealFile { file }))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(path))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        File::open(self.path(dir))?.sync_all()
    }
}

/// Joins a directory and a file name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `path` (statvfs): what
/// a member watches to raise its NOSPACE alarm before the disk is full.
pub fn available_bytes(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is written by statvfs
    // before it is read (only on success).
    let result = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u64 on Linux x86-64).
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}

#[cfg(test)]
mod tests {
    #[test]
    fn available_bytes_reads_the_filesystem_and_names_a_missing_path_as_an_error() {
        let free = super::available_bytes(&std::env::temp_dir()).expect("statvfs on the temp dir");
        assert!(free > 0, "a writable temp dir has some room");
        assert!(super::available_bytes(std::path::Path::new("/no/such/keel/dir")).is_err());
    }
}
