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

/// The SHA-256 that ends a snapshot, after zeros up to a multiple of this.
const SUM_BYTES: u64 = 32;
const ALIGN: u64 = 512;
const CHUNK: usize = 1 << 20;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// What a snapshot holds: revision, keys, size and the HashKV of its store (checked first).
    Status {
        /// The snapshot file (`etcdctl snapshot save` wrote it).
        file: PathBuf,
        /// Output format.
        #[arg(short = 'w', long = "write-out", value_parser = ["table", "json"], default_value = "table")]
        write_out: String,
    },
    /// A new cluster's member data dir from a snapshot (etcdutl's flags); run once per member,
    /// then start each member with the same --name, --initial-cluster and token.
    Restore(RestoreOptions),
}

#[derive(clap::Args, Debug)]
pub struct RestoreOptions {
    /// The snapshot file (`etcdctl snapshot save` wrote it).
    file: PathBuf,
    /// This member's name in --initial-cluster.
    #[arg(long, default_value = "default")]
    name: String,
    /// The data dir to create (must not exist or be empty; default `<name>.etcd`, as etcd).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The new cluster: name=peer-url,... (as its members will be started).
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    /// The new cluster's token (member and cluster ids derive from it: use a new one).
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs, as in --initial-cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status { file, write_out } => status(&file, write_out == "json"),
        Command::Restore(options) => restore(options),
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

fn status(path: &Path, json: bool) -> anyhow::Result<()> {
    let status = describe(path)?;
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

/// Opens a snapshot file and checks its length: the file, its length, and the bytes of rows
/// before the zeros and the checksum.
fn open_snapshot(path: &Path) -> anyhow::Result<(File, u64, u64)> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("open {shown}"))?;
    let bytes = file.metadata().with_context(|| format!("stat {shown}"))?.len();
    if bytes < SUM_BYTES || !(bytes - SUM_BYTES).is_multiple_of(ALIGN) {
        bail!(
            "{shown}: {bytes} bytes is not a snapshot's length (a multiple of {ALIGN} bytes, then a \
             {SUM_BYTES}-byte SHA-256): the file is truncated or not a snapshot"
        );
    }
    Ok((file, bytes, bytes - SUM_BYTES))
}

/// Checks the snapshot at `path` and describes the store it holds.
pub fn describe(path: &Path) -> anyhow::Result<Status> {
    let (mut file, bytes, rows) = open_snapshot(path)?;
    let store_path = std::env::temp_dir().join(format!("keel-snapshot-status-{}.db", std::process::id()));
    let result =
        rebuild(&mut file, rows, &store_path, &path.display().to_string()).and_then(|()| read_store(&store_path));
    let _ = std::fs::remove_file(&store_path);
    let _ = std::fs::remove_file(store_path.with_extension("tmp"));
    let (hash, revision, compacted, keys) = result?;
    Ok(Status { hash, revision, compacted, keys, bytes })
}

/// `keel snapshot restore`: the member's data dir of a new cluster, holding the snapshot's store
/// (checked as `status` checks it) as the start of the new cluster's log, and the new cluster's
/// member records. Its first start founds the new cluster's log, as a new member's does; a start
/// whose flags name other members is refused (see keel-server's `open_node`).
fn restore(options: RestoreOptions) -> anyhow::Result<()> {
    let data_dir = options.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.etcd", options.name)));
    // The member and cluster ids as `keel server` derives them from the same flags.
    let flags = [
        "--name",
        &options.name,
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--initial-cluster",
        &options.initial_cluster,
        "--initial-cluster-token",
        &options.initial_cluster_token,
        "--initial-advertise-peer-urls",
        &options.initial_advertise_peer_urls,
    ];
    let config = keel_server::ServerConfig::from_args(flags, &Default::default())?;
    let membership = keel_server::server::membership(&config)?;
    let me = &membership.members[&membership.me];
    let advertised: Vec<String> = config.initial_advertise_peer_urls.iter().map(ToString::to_string).collect();
    if me.peer_urls != advertised {
        bail!(
            "--initial-advertise-peer-urls {} is not {}'s entry in --initial-cluster ({})",
            advertised.join(","),
            options.name,
            me.peer_urls.join(",")
        );
    }
    let occupied = match std::fs::read_dir(&data_dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => return Err(error).with_context(|| format!("read {}", data_dir.display())),
    };
    if occupied {
        bail!("--data-dir {} exists and is not empty: restore into a new directory", data_dir.display());
    }
    let member_dir = keel_server::server::member_dir(&data_dir);
    std::fs::create_dir_all(&member_dir).with_context(|| format!("create {}", member_dir.display()))?;
    let restored = (|| {
        let (mut file, _, rows) = open_snapshot(&options.file)?;
        let store = keel_server::server::store_file(&member_dir);
        rebuild(&mut file, rows, &store, &options.file.display().to_string())?;
        let mut backend = keel_mvcc::RedbBackend::open(&store).context("open the restored store")?;
        backend.start_new_log(&[keel_machine::MEMBERS_META_KEY]).context("restart the store's log position")?;
        drop(backend);
        let roster = keel_machine::Roster::new(membership.members.clone());
        let members = keel_server::server::members_file(&member_dir);
        keel_machine::write_members_file(&members, &roster)
            .with_context(|| format!("write the member records {}", members.display()))?;
        read_store(&store)
    })();
    let (hash, revision, _, keys) = match restored {
        Ok(described) => described,
        Err(error) => {
            // Nothing half-restored is left to be started by mistake.
            let _ = std::fs::remove_dir_all(&data_dir);
            return Err(error);
        }
    };
    println!(
        "restored {} into {}: member {:x} ({}) of cluster {:x}, {} members; revision {revision}, {keys} keys, hash {hash}",
        options.file.display(),
        data_dir.display(),
        membership.me,
        options.name,
        membership.cluster_id,
        membership.members.len()
    );
    Ok(())
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
