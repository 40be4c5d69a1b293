//! `keel snapshot status FILE [-w table|json]`: what a snapshot saved from keel holds
//! (`etcdctl snapshot save` against keel writes one: the store's rows, zeros up to a multiple of
//! 512 bytes, and the SHA-256 of all that, as etcd ends its own). The file is checked before
//! anything is said of it: a truncated or corrupt one is refused with what is wrong and where.
//! The rows are rebuilt into a store file in the temp directory (streamed, never all in memory),
//! read, and removed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use keel_mvcc::redb_backend::RowReceiver;
use sha2::{Digest, Sha256};

const USAGE: &str = "usage: keel snapshot status FILE [-w table|json]";
/// The SHA-256 that ends a snapshot, after zeros up to a multiple of this.
const SUM_BYTES: u64 = 32;
const ALIGN: u64 = 512;
const CHUNK: usize = 1 << 20;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("status") => status(&args[1..]),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown snapshot command {other:?}\n{USAGE}"),
    }
}

/// What `keel snapshot status` reports.
#[derive(Debug)]
pub struct Status {
    /// etcd's HashKV of the store at its revision (what `etcdctl endpoint hashkv` says of the
    /// cluster it came from, at that revision).
    pub hash: u32,
    pub revision: i64,
    pub compacted: i64,
    /// Keys live at the revision.
    pub keys: i64,
    pub bytes: u64,
}

fn status(args: &[String]) -> anyhow::Result<()> {
    let mut path = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-w" | "--write-out" => match it.next().map(String::as_str) {
                Some("json") => json = true,
                Some("table") => json = false,
                other => bail!("-w: expected table or json, got {other:?}"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other if other.starts_with('-') => bail!("unknown flag {other}\n{USAGE}"),
            other => path = Some(PathBuf::from(other)),
        }
    }
    let Some(path) = path else { bail!("{USAGE}") };
    let status = describe(&path)?;
    if json {
        println!(
            "{{\"hash\":{},\"revision\":{},\"compactRevision\":{},\"totalKey\":{},\"totalSize\":{}}}",
            status.hash, status.revision, status.compacted, status.keys, status.bytes
        );
    } else {
        println!("{:>10} | {:>10} | {:>10} | {:>10}", "HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE");
        println!("{:>10x} | {:>10} | {:>10} | {:>10}", status.hash, status.revision, status.keys, status.bytes);
    }
    Ok(())
}

/// Checks the snapshot at `path` and describes the store it holds.
pub fn describe(path: &Path) -> anyhow::Result<Status> {
    let shown = path.display();
    let mut file = File::open(path).with_context(|| format!("open {shown}"))?;
    let bytes = file.metadata().with_context(|| format!("stat {shown}"))?.len();
    if bytes < SUM_BYTES || !(bytes - SUM_BYTES).is_multiple_of(ALIGN) {
        bail!(
            "{shown}: {bytes} bytes is not a snapshot's length (a multiple of {ALIGN} bytes, then a \
             {SUM_BYTES}-byte SHA-256): the file is truncated or not a snapshot"
        );
    }
    let rows = bytes - SUM_BYTES;
    let store_path = std::env::temp_dir().join(format!("keel-snapshot-status-{}.db", std::process::id()));
    let result = rebuild(&mut file, rows, &store_path, &shown.to_string()).and_then(|()| read_store(&store_path));
    let _ = std::fs::remove_file(&store_path);
    let _ = std::fs::remove_file(store_path.with_extension("tmp"));
    let (hash, revision, compacted, keys) = result?;
    Ok(Status { hash, revision, compacted, keys, bytes })
}

/// Streams the rows into a store file at `store_path`, checking the SHA-256 that ends them.
fn rebuild(file: &mut File, rows: u64, store_path: &Path, shown: &str) -> anyhow::Result<()> {
    let mut receiver = RowReceiver::create(store_path).context("create a scratch store")?;
    let mut digest = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    let mut row_error = None;
    while at < rows {
        let want = usize::try_from((rows - at).min(CHUNK as u64)).expect("at most a chunk");
        file.read_exact(&mut buf[..want]).with_context(|| format!("{shown}: read at byte {at}"))?;
        digest.update(&buf[..want]);
        if row_error.is_none() {
            if let Err(error) = receiver.push(&buf[..want]) {
                row_error = Some((at + want as u64, error));
            }
        }
        at += want as u64;
    }
    let mut sum = [0u8; SUM_BYTES as usize];
    file.seek(SeekFrom::Start(rows))?;
    file.read_exact(&mut sum).with_context(|| format!("{shown}: read the SHA-256 at byte {rows}"))?;
    // The checksum first: a damaged file is damaged, whatever its rows look like.
    if digest.finalize().as_slice() != sum {
        bail!("{shown}: the SHA-256 at byte {rows} does not match the {rows} bytes before it: the file is corrupt");
    }
    if let Some((within, error)) = row_error {
        bail!("{shown}: the rows within the first {within} bytes do not make a store: {error}");
    }
    receiver.finish(store_path).with_context(|| format!("{shown}: the rows end before the store does"))?;
    Ok(())
}

fn read_store(path: &Path) -> anyhow::Result<(u32, i64, i64, i64)> {
    let backend = keel_mvcc::RedbBackend::open(path).context("open the rebuilt store")?;
    let store = keel_mvcc::Store::open(backend, Default::default()).context("read the rebuilt store")?;
    let hash = store.hash_kv(0).map_err(|error| anyhow::anyhow!("hash the store: {error}"))?;
    let all = keel_mvcc::RangeRequest {
        key: vec![0u8].into(),
        range_end: vec![0u8].into(),
        count_only: true,
        ..Default::default()
    };
    let keys = store.range(&all).map_err(|error| anyhow::anyhow!("count the keys: {error}"))?.count;
    Ok((hash.hash, store.current_revision(), store.compacted_revision(), keys))
}
