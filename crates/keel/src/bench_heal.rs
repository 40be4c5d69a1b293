//! `keel bench heal`: how long a cluster takes to repair itself after a voter dies for good, and
//! what the repair costs the writes that go on meanwhile.
//!
//! Each trial starts a fresh cluster of real `keel server` processes — three voters and one
//! spare — preloads keys, runs a steady writer against the voters, kills one voter with SIGKILL
//! and times until the cluster has three voters again, the dead one gone from MemberList (the
//! spare added as a learner, caught up, promoted; the dead member removed). The writer's
//! latencies are recorded before the kill and during the repair, so the two can be compared in
//! one run. The wait before replacing (`--replace-dead-after`) is policy, not work: it is printed
//! apart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_api::etcdserverpb::{cluster_client::ClusterClient, kv_client::KvClient, MemberListRequest, PutRequest};
use keel_api::tonic::transport::{Channel, Endpoint};

/// Loopback ports: process `i` (voters 0..3, the spare 3) listens for clients on `BASE + 10 i`
/// and for peers one above. Clear of the ranges the other benches and `keel chaos` use.
const BASE_PORT: u16 = 64_100;
const VOTERS: usize = 3;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Voters to kill and replace, one per trial.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    trials: u64,
    /// Where the members keep their data (wiped first).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-bench-heal"))]
    dir: PathBuf,
    /// The members' --replace-dead-after.
    #[arg(long, default_value = "2s")]
    replace_dead_after: String,
    /// The members' --membership-probe-interval.
    #[arg(long = "membership-probe-interval", default_value = "200ms")]
    period: String,
    /// Keys written before the first kill.
    #[arg(long, default_value_t = 10_000)]
    preload: usize,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// `--snapshot-count` for every member: small, the spare catches up from a streamed store.
    #[arg(long)]
    snapshot_count: Option<u64>,
}

fn ports(i: usize) -> (u16, u16) {
    let client = BASE_PORT + 10 * i as u16;
    (client, client + 1)
}

fn channel(i: usize) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://127.0.0.1:{}", ports(i).0))?
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(2))
        .connect_lazy())
}

/// One trial's processes; killed when dropped.
struct Processes(Vec<Option<Child>>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start(opts: &Options, dir: &std::path::Path) -> anyhow::Result<Processes> {
    let exe = std::env::current_exe().context("find the keel binary")?;
    let cluster =
        (0..VOTERS).map(|i| format!("m{}=http://127.0.0.1:{}", i + 1, ports(i).1)).collect::<Vec<_>>().join(",");
    let mut children = Vec::new();
    for i in 0..=VOTERS {
        let spare = i == VOTERS;
        let name = if spare { "spare".to_string() } else { format!("m{}", i + 1) };
        let (client, peer) = ports(i);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log")))?;
        let mut command = Command::new(&exe);
        command
            .arg("server")
            .args(["--name", &name])
            .args(["--data-dir", &dir.join(&name).to_string_lossy()])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", "keel-bench-heal"])
            .args(["--initial-cluster-state", if spare { "existing" } else { "new" }])
            .args(["--replace-dead-after", &opts.replace_dead_after])
            .args(["--membership-probe-interval", &opts.period]);
        if spare {
            command.arg("--spare");
        }
        if let Some(count) = opts.snapshot_count {
            command.args(["--snapshot-count", &count.to_string()]);
        }
        let child = command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
        children.push(Some(child));
    }
    Ok(Processes(children))
}

/// The voters' ids in member `i`'s MemberList, and whether any learner is listed.
async fn voters(i: usize) -> Option<(Vec<u64>, bool)> {
    let mut client = ClusterClient::new(channel(i).ok()?);
    let list = client.member_list(MemberListRequest { linearizable: false }).await.ok()?.into_inner();
    let voters = list.members.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
    Some((voters, list.members.iter().any(|m| m.is_learner)))
}

async fn put(clients: &mut [KvClient<Channel>], turn: &mut usize, key: String, value: Vec<u8>) -> Option<Duration> {
    let count = clients.len();
    let client = &mut clients[*turn % count];
    *turn += 1;
    let began = Instant::now();
    let request = PutRequest { key: key.into_bytes(), value, ..Default::default() };
    client.put(request).await.ok().map(|_| began.elapsed())
}

/// Write latencies before the kill and during the repair, and writes that failed during it.
#[derive(Default)]
struct Samples {
    before: Vec<Duration>,
    during: Vec<Duration>,
    failed_during: usize,
}

struct Trial {
    /// Kill to three voters again, the dead one removed.
    healed: Duration,
    before: Vec<Duration>,
    during: Vec<Duration>,
    failed_during: usize,
}

async fn trial(opts: &Options, n: usize) -> anyhow::Result<Trial> {
    let dir = opts.dir.join(format!("trial-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut processes = start(opts, &dir)?;
    // Wait for a leader and the spare.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((ids, _)) = voters(0).await {
            if ids.len() == VOTERS && member_id(0).await.is_ok() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("trial {n}: the cluster did not form; see {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut clients: Vec<KvClient<Channel>> =
        (0..VOTERS).map(|i| channel(i).map(KvClient::new)).collect::<Result<_, _>>()?;
    let mut turn = 0;
    let value = vec![b'v'; opts.value_bytes];
    for k in 0..opts.preload {
        while put(&mut clients, &mut turn, format!("preload/{k:08}"), value.clone()).await.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The victim: m2, whichever leads (a leader's death adds an election to the repair).
    let victim = 1;
    let survivors: Vec<usize> = (0..VOTERS).filter(|&i| i != victim).collect();
    let mut writer_clients: Vec<KvClient<Channel>> =
        survivors.iter().map(|&i| channel(i).map(KvClient::new)).collect::<Result<_, _>>()?;
    // The writer: one put after another for the whole trial, latencies kept by phase.
    let healing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let writer = {
        let (healing, stop, samples, value) = (healing.clone(), stop.clone(), samples.clone(), value.clone());
        tokio::spawn(async move {
            let mut turn = 0;
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let took = put(&mut writer_clients, &mut turn, format!("writer/{k}"), value.clone()).await;
                let mut s = samples.lock().expect("samples lock");
                match (took, healing.load(Ordering::Relaxed)) {
                    (Some(took), false) => s.before.push(took),
                    (Some(took), true) => s.during.push(took),
                    (None, true) => s.failed_during += 1,
                    (None, false) => {}
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim_id = member_id(victim).await?;
    healing.store(true, Ordering::Relaxed);
    let killed_at = Instant::now();
    if let Some(mut child) = processes.0[victim].take() {
        child.kill()?;
        child.wait()?;
    }
    let healed = loop {
        if let Some((ids, learners)) = voters(survivors[0]).await {
            if ids.len() == VOTERS && !learners && !ids.contains(&victim_id) {
                break killed_at.elapsed();
            }
        }
        if killed_at.elapsed() > Duration::from_secs(120) {
            bail!("trial {n}: not repaired within 120 s; see {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    drop(processes);
    let Samples { before, during, failed_during } = std::mem::take(&mut *samples.lock().expect("samples lock"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Trial { healed, before, during, failed_during })
}

async fn member_id(i: usize) -> anyhow::Result<u64> {
    use keel_api::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
    let mut client = MaintenanceClient::new(channel(i)?);
    let status = client.status(StatusRequest {}).await.context("status")?.into_inner();
    Ok(status.header.map_or(0, |h| h.member_id))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut healed = Vec::new();
    let (mut before, mut during, mut failed) = (Vec::new(), Vec::new(), 0);
    for n in 0..opts.trials {
        let t = runtime.block_on(trial(&opts, n as usize))?;
        let mut b = t.before.clone();
        let mut d = t.during.clone();
        b.sort();
        d.sort();
        println!(
            "trial {n:>2}: kill -9 -> three voters again in {:>7.0} ms; writes p99 before {:>6.1} ms, during {:>6.1} ms ({} writes, {} failed)",
            ms(t.healed),
            ms(quantile(&b, 0.99)),
            ms(quantile(&d, 0.99)),
            d.len(),
            t.failed_during
        );
        healed.push(t.healed);
        before.extend(t.before);
        during.extend(t.during);
        failed += t.failed_during;
    }
    healed.sort();
    before.sort();
    during.sort();
    println!(
        "healed trials={} replace-dead-after={} period={} preload={}x{}B: min={:.0}ms p50={:.0}ms p90={:.0}ms max={:.0}ms",
        healed.len(),
        opts.replace_dead_after,
        opts.period,
        opts.preload,
        opts.value_bytes,
        ms(healed[0]),
        ms(quantile(&healed, 0.5)),
        ms(quantile(&healed, 0.9)),
        ms(*healed.last().expect("a trial"))
    );
    println!(
        "writes before: n={} p50={:.2}ms p99={:.2}ms | during repair: n={} p50={:.2}ms p99={:.2}ms max={:.0}ms failed={failed}",
        before.len(),
        ms(quantile(&before, 0.5)),
        ms(quantile(&before, 0.99)),
        during.len(),
        ms(quantile(&during, 0.5)),
        ms(quantile(&during, 0.99)),
        ms(during.last().copied().unwrap_or_default())
    );
    Ok(())
}
