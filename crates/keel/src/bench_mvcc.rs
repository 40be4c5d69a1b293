//! `keel bench mvcc`: load N keys into the MVCC store on redb the way a node applies them
//! (batches of raft entries, one backend commit per batch), then report bytes on disk per key
//! and how long a restart (reopen + rebuilding the in-memory key index) takes.

use std::time::Instant;

use bytes::Bytes;
use keel_mvcc::{Command, RedbBackend, Store, StoreOptions};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Where the store file goes.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-bench-mvcc"))]
    dir: std::path::PathBuf,
    /// Keys to load.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Bytes of each value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Puts per commit.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Keys written in name order (`sequential`) or scattered (`random`, as many clients write:
    /// the index is then rebuilt in no particular key order).
    #[arg(long, value_enum, default_value_t = Order::Sequential)]
    order: Order,
    /// `both` (load, restart, remove), `load` (keep the store), `restart` (reopen a kept one),
    /// `crash` (load, then exit without closing the store, as kill -9 leaves it).
    #[arg(long, value_parser = ["both", "load", "restart", "crash"], default_value = "both")]
    phase: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Order {
    Sequential,
    Random,
}

fn put(key: u64, value: &Bytes) -> Command {
    Command::Put(keel_mvcc::PutRequest {
        key: Bytes::from(format!("/bench/key/{key:012}")),
        value: value.clone(),
        ..Default::default()
    })
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let path = opts.dir.join("db.redb");
    if opts.phase != "restart" {
        load(&opts, &path)?;
    }
    if opts.phase == "both" || opts.phase == "restart" {
        restart(&path)?;
    }
    if opts.phase == "both" {
        let _ = std::fs::remove_dir_all(&opts.dir);
    }
    Ok(())
}

fn load(opts: &Options, path: &std::path::Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&opts.dir);
    std::fs::create_dir_all(&opts.dir)?;
    let value = Bytes::from(vec![0x5au8; opts.value_bytes]);
    println!(
        "keel bench mvcc: {} keys, {} B values, {} commands per commit, {}",
        opts.keys,
        opts.value_bytes,
        opts.batch,
        path.display()
    );

    let started = Instant::now();
    {
        let backend = RedbBackend::open(path)?;
        let options = StoreOptions { record_events: false, ..StoreOptions::default() };
        let mut store = Store::open(backend, options)?;
        let mut index = 0u64;
        let mut key = 0u64;
        while key < opts.keys {
            let end = (key + opts.batch).min(opts.keys);
            let batch: Vec<(u64, Command)> = (key..end)
                .map(|k| {
                    index += 1;
                    // 7,919 is a prime: k -> k * 7,919 mod N is a permutation unless N is a multiple.
                    let name = if opts.order == Order::Random { k.wrapping_mul(7_919) % opts.keys } else { k };
                    (index, put(name, &value))
                })
                .collect();
            store.apply_batch(&batch)?;
            key = end;
            // As a member does in the background: the last key index checkpoint before a crash is
            // at most this many revisions old.
            let checkpoint_at = opts.keys.saturating_sub(keel_machine::INDEX_CHECKPOINT_EVERY_REVISIONS as u64);
            if opts.phase == "crash" && key >= checkpoint_at && key.saturating_sub(opts.batch) < checkpoint_at {
                if let Some(checkpoint) = store.begin_index_checkpoint() {
                    let started = Instant::now();
                    checkpoint.write()?;
                    println!(
                        "checkpoint  {:>10.2} s  (the key index as of revision {})",
                        started.elapsed().as_secs_f64(),
                        store.current_revision()
                    );
                }
            }
        }
        if opts.phase == "crash" {
            // Every batch was committed durably; the database is never closed, as after kill -9.
            println!("load        {:>10.2} s, then exit without closing the store", started.elapsed().as_secs_f64());
            std::process::exit(0);
        }
    }
    let load = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(path)?.len();
    println!("load        {:>10.2} s  ({:.0} puts/s)", load, opts.keys as f64 / load);
    println!(
        "on disk     {:>10} bytes  = {:.1} bytes per key ({:.2}x the {} B of key+value)",
        bytes,
        bytes as f64 / opts.keys as f64,
        bytes as f64 / opts.keys as f64 / (opts.value_bytes as f64 + 23.0),
        opts.value_bytes + 23
    );
    Ok(())
}

/// Reopens the store and rebuilds its key index, as a member's start does.
fn restart(path: &std::path::Path) -> anyhow::Result<()> {
    // After `--phase crash`: redb's repair, then the key index from the checkpoint taken near the
    // end of the load and the records after it.
    drop(reopen(path, "first open")?);
    {
        // The backend's share of a restart: one pass over every stored revision.
        let started = Instant::now();
        let backend = RedbBackend::open(path)?;
        let opened = started.elapsed().as_secs_f64();
        let mut revisions = 0u64;
        keel_mvcc::Backend::for_each_record_header(&backend, keel_mvcc::Revision::ZERO, &mut |_, _| {
            revisions += 1;
            Ok(())
        })?;
        println!(
            "scan        {:>10.2} s  (open {opened:.2} s, a repair after a crash; {revisions} revisions read, nothing built)",
            started.elapsed().as_secs_f64()
        );
    }
    // After kill -9 (or the load above, which never closes cleanly) the index is rebuilt from
    // every record; after a clean close (SIGTERM) it is loaded from where the close saved it.
    let mut store = reopen(path, "restart")?;
    let started = Instant::now();
    store.save_index()?;
    println!("save index  {:>10.2} s  (as a clean close does)", started.elapsed().as_secs_f64());
    drop(store);
    reopen(path, "restart, index saved")?;
    Ok(())
}

fn reopen(path: &std::path::Path, what: &str) -> anyhow::Result<Store<RedbBackend>> {
    let started = Instant::now();
    let backend = RedbBackend::open(path)?;
    let opened = started.elapsed().as_secs_f64();
    let store = Store::open(backend, StoreOptions::default())?;
    println!(
        "{what:<11} {:>10.2} s  (reopen {:.2} s + key index of {} keys; applied index {})",
        started.elapsed().as_secs_f64(),
        opened,
        store.indexed_keys(),
        store.applied_index()
    );
    Ok(store)
}
