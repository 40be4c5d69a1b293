//! `keel bench wal`: what this disk can do and what the WAL makes of it, in one run.
//!
//! 1. raw: 256 B `pwrite` + `fdatasync` in a loop — the disk's fsyncs per second;
//! 2. WAL, one fsync per write: one writer, every append synced on its own;
//! 3. WAL, group commit: N writer threads, each waiting for its own record to be durable, one
//!    fsync covering everything that arrived meanwhile.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use keel_codec::record::Record;
use keel_raft::{Entry, EntryKind};
use keel_storage::group_commit::GroupCommitter;
use keel_storage::wal::{Wal, WalOptions};
use keel_storage::{Disk, RealDisk};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// A directory on the disk to measure (wiped first and after).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-bench-wal"))]
    dir: std::path::PathBuf,
    /// How long each measurement runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent appenders in the group-commit measurement.
    #[arg(long, default_value_t = 64)]
    writers: u64,
    /// Bytes of each appended record's value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&opts.dir);
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
    let window = Duration::from_secs(opts.seconds);
    println!(
        "keel bench wal: dir={} seconds={} writers={} value_bytes={}",
        opts.dir.display(),
        opts.seconds,
        opts.writers,
        opts.value_bytes
    );

    let raw = raw_fsyncs(&opts, window)?;
    println!("raw pwrite+fdatasync          {:>10.0} /s", raw);

    let single = wal_one_fsync_per_write(&opts, window)?;
    println!("WAL append+sync, 1 writer     {:>10.0} appends/s", single);

    let (grouped, rounds) = wal_group_commit(&opts, window)?;
    println!(
        "WAL group commit, {} writers {:>10.0} appends/s ({:.1} appends per fsync)",
        opts.writers,
        grouped,
        grouped * opts.seconds as f64 / rounds.max(1) as f64
    );
    println!("group commit / one fsync per write = {:.1}x", grouped / single.max(1.0));
    let _ = std::fs::remove_dir_all(&opts.dir);
    Ok(())
}

fn raw_fsyncs(opts: &Options, window: Duration) -> anyhow::Result<f64> {
    let path = opts.dir.join("raw");
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    file.set_len(64 << 20)?;
    file.sync_all()?;
    let block = vec![0xabu8; opts.value_bytes];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < window {
        file.write_all_at(&block, (count * opts.value_bytes as u64) % (60 << 20))?;
        file.sync_data()?;
        count += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn record(group: u64, index: u64, value_bytes: usize) -> Record {
    let entry = Entry { term: 1, index, kind: EntryKind::Normal, data: Bytes::from(vec![7u8; value_bytes]) };
    Record::Entries { group, entries: vec![entry] }
}

fn open_wal(opts: &Options, name: &str) -> anyhow::Result<Wal> {
    let dir = opts.dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new(&dir));
    let (wal, _) = Wal::open(disk, WalOptions::default())?;
    Ok(wal)
}

fn wal_one_fsync_per_write(opts: &Options, window: Duration) -> anyhow::Result<f64> {
    let mut wal = open_wal(opts, "single")?;
    let started = Instant::now();
    let mut index = 0u64;
    while started.elapsed() < window {
        index += 1;
        wal.append(&[record(1, index, opts.value_bytes)])?;
        wal.sync()?;
    }
    Ok(index as f64 / started.elapsed().as_secs_f64())
}

fn wal_group_commit(opts: &Options, window: Duration) -> anyhow::Result<(f64, u64)> {
    let committer = Arc::new(GroupCommitter::new(open_wal(opts, "grouped")?));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for writer in 0..opts.writers {
        let (committer, stop, total) = (committer.clone(), stop.clone(), total.clone());
        let value_bytes = opts.value_bytes;
        handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut index = 0;
            while !stop.load(Ordering::Relaxed) {
                index += 1;
                // One group per writer keeps each group's entries contiguous.
                committer.commit(record(writer + 1, index, value_bytes))?;
                total.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((total.load(Ordering::Relaxed) as f64 / elapsed, committer.rounds()))
}
