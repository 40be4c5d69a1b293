//! `keel chaos`: faults on real processes, a checked history, and the availability they cost.
//!
//! Starts a local 3-member keel cluster (peer traffic through [`proxy`], so partitions happen on
//! real sockets outside the processes), runs the [`workload`] through the etcd API, and injects
//! [`faults`] on a schedule drawn from `--seed`. At the end it heals everything, reads every key
//! through every member, and checks:
//! - the whole history is linearizable (keel-check, the KV model);
//! - no acknowledged write was lost ([`workload::lost_writes`]);
//! - no lock holder's write with a stale fencing token was accepted ([`fencing`]).
//!
//! It reports, per fault kind, the *detection time* (from the fault to the first member naming a
//! new leader, for faults that hit the leader) and the *time to recover* (to the first write
//! acknowledged that was sent after the fault; a probe writes every 20 ms with a short timeout,
//! so this is not held up by clients stuck in requests sent before), and the availability: measured (the share of
//! one-second windows with an acknowledged write, and of operations that succeeded) beside the
//! model's A = MTTF / (MTTF + MTTR) from the measured time between faults and time to recover.
//! Exits non-zero on a violation, printing the seed that replays the schedule.

mod faults;
mod fencing;
mod proxy;
mod workload;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_api::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use keel_check::{check_operations, CheckResult, KvInput, KvModel, KvOutput};
use keel_raft::SplitMix64;
use serde_json::json;

use crate::local_cluster::{channel, http, http_patiently, leader, LocalCluster, PORTS};
use faults::{FaultKind, Plan, Shape, Target};
use workload::{Op, Recorder};

/// Members listen for peers this far above the port the proxy takes.
const PEER_PROXY_OFFSET: u16 = 5;
/// The fsync delay of a slow disk: tens of times a healthy local disk's.
const SLOW_DISK_DELAY_MS: u64 = 50;
/// A new leader named this long after a fault healed still counts as its detection (a crash of
/// every member elects one only after the restart).
const DETECTION_AFTER_HEAL: Duration = Duration::from_secs(5);
/// The longest wait for the cluster to serve again after a fault healed, before the next.
const RECOVERY_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a member that was just (re)started may take to answer HTTP.
const MEMBER_PATIENCE: Duration = Duration::from_secs(30);
/// Clients of the lock workload.
const LOCK_CLIENTS: u64 = 3;
/// How often the monitor asks every member who leads.
const MONITOR_EVERY: Duration = Duration::from_millis(50);

#[derive(clap::Args, Debug)]
pub struct Options {
    /// How long faults are injected (s, m or ms; a bare number is seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Fault kinds, comma-separated: kill, pause, partition, slow-disk, crash-all.
    #[arg(long = "faults", default_value = "all", value_parser = parse_kinds)]
    kinds: FaultKinds,
    /// Concurrent clients of the key-value workload.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    clients: u64,
    /// Keys the workload touches (fewer keys: more contention, a harder history to check).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// The schedule's seed (default: the clock); a run's seed replays its schedule.
    #[arg(long, default_value_t = clock_seed())]
    seed: u64,
    /// Write the run's figures as JSON here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Where the members keep their data (wiped first).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-chaos"))]
    dir: std::path::PathBuf,
    /// How long the linearizability check may take.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    check_budget: Duration,
    /// Members serve linearizable reads without ReadIndex: a deliberately unsafe cluster the
    /// checker must catch (exit 1).
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// Members in the cluster (only 3 for now).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=3))]
    nodes: u64,
}

/// The fault kinds of a run (a type of its own so clap takes the whole list as one value).
#[derive(Clone, Debug)]
struct FaultKinds(Vec<FaultKind>);

fn parse_kinds(text: &str) -> anyhow::Result<FaultKinds> {
    if text == "all" {
        return Ok(FaultKinds(FaultKind::ALL.to_vec()));
    }
    FaultKind::parse_list(text).map(FaultKinds)
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64)
}

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().with_context(|| format!("duration {text:?}"))?;
    Ok(match unit {
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        "ms" => Duration::from_millis(n),
        _ => bail!("duration {text:?}: use s, m or ms"),
    })
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let extra = vec!["--unsafe-fault-injection".to_string(), "true".to_string()];
    let mut cluster = LocalCluster::new(opts.dir.clone(), LocalCluster::keel_server()?, extra, "keel-chaos")?;
    cluster.peer_listen_offset = PEER_PROXY_OFFSET;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let outcome = runtime.block_on(chaos(&opts, &mut cluster));
    drop(cluster);
    match outcome {
        Ok(Verdict::Pass) => Ok(()),
        Ok(Verdict::Fail) => Err(Violation { seed: opts.seed }.into()),
        Ok(Verdict::Unknown) => bail!(
            "inconclusive: the linearizability check ran out of time (a longer --check-budget, or more --keys); seed {}",
            opts.seed
        ),
        Err(error) => Err(error.context(format!("chaos run with --seed {}", opts.seed))),
    }
}

enum Verdict {
    Pass,
    Fail,
    /// No violation found, but the history could not be checked within the budget.
    Unknown,
}

/// The run found a violation (exit code 1, where an error running it is 2).
#[derive(Debug)]
pub struct Violation {
    pub seed: u64,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "violation found; replay the schedule with --seed {}", self.seed)
    }
}

impl std::error::Error for Violation {}

/// A fault as it happened.
#[derive(Clone, Debug)]
struct Injected {
    kind: FaultKind,
    what: String,
    /// The member hit (`None`: all of them).
    member: Option<usize>,
    /// It hit the leader (or everyone): a new leader must be found.
    hit_leader: bool,
    old_leader_id: u64,
    start_us: u64,
    healed_us: u64,
}

/// Who led, as members said.
#[derive(Clone, Copy, Debug)]
struct Observation {
    at_us: u64,
    member: usize,
    leader_id: u64,
}

/// The member every answering member names as leader right now, if they agree.
async fn current_leader(ids: &[u64; 3]) -> Option<usize> {
    let mut named = Vec::new();
    for i in 0..3 {
        let Ok(channel) = channel(i) else { continue };
        if let Ok(Ok(status)) =
            tokio::time::timeout(Duration::from_millis(250), MaintenanceClient::new(channel).status(StatusRequest {}))
                .await
        {
            named.push(status.into_inner().leader);
        }
    }
    let first = *named.first()?;
    (first != 0 && named.iter().all(|&l| l == first)).then(|| ids.iter().position(|&id| id == first)).flatten()
}

async fn chaos(opts: &Options, cluster: &mut LocalCluster) -> anyhow::Result<Verdict> {
    let net = Arc::new(proxy::Net::default());
    for (i, (_, peer)) in PORTS.iter().enumerate() {
        let listen: SocketAddr = ([127, 0, 0, 1], *peer).into();
        let target: SocketAddr = ([127, 0, 0, 1], peer + PEER_PROXY_OFFSET).into();
        proxy::start(listen, target, i, net.clone())?;
    }
    cluster.spawn_all()?;
    leader(&[0, 1, 2]).await.context("the cluster did not elect a leader")?;
    let mut ids = [0u64; 3];
    for (i, id) in ids.iter_mut().enumerate() {
        let status = MaintenanceClient::new(channel(i)?).status(StatusRequest {}).await?.into_inner();
        *id = status.header.map_or(0, |h| h.member_id);
    }
    net.set_members(ids);
    if opts.unsafe_stale_reads {
        for i in 0..3 {
            let (code, body) = http(i, "POST", "/debug/fault/stale-reads", "true")?;
            if code != 200 {
                bail!("m{} refused stale reads: {body}", i + 1);
            }
        }
        eprintln!("UNSAFE: every member serves linearizable reads without ReadIndex; this run must fail");
    }
    println!(
        "keel chaos: seed {} · {} s · faults {} · {} clients on {} keys · data in {}",
        opts.seed,
        opts.duration.as_secs(),
        opts.kinds.0.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        opts.clients,
        opts.keys,
        opts.dir.display()
    );

    let recorder = Recorder::new(Instant::now());
    let mut clients = Vec::new();
    for client_id in 0..opts.clients {
        clients.push(tokio::spawn(workload::client(recorder.clone(), client_id, opts.seed, opts.keys)));
    }
    // The probe writes its own key, after the workload's.
    clients.push(tokio::spawn(workload::probe(recorder.clone(), opts.keys)));
    let fencing = Arc::new(fencing::Fencing::default());
    for i in 0..LOCK_CLIENTS {
        clients.push(tokio::spawn(fencing::client(recorder.clone(), fencing.clone(), 2_000_000 + i)));
    }
    let observations: Arc<Mutex<Vec<Observation>>> = Arc::default();
    let monitor = tokio::spawn(monitor(recorder.clone(), observations.clone()));

    let injected = inject(opts, cluster, &net, &recorder, ids).await?;

    // Everything healed: the cluster must serve again, and every key is read through every member.
    leader(&[0, 1, 2]).await.context("no leader after the faults healed")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    recorder.stop();
    for client in clients {
        client.await??;
    }
    let mut finals = Vec::new();
    for key in 0..=opts.keys {
        let mut final_value = None;
        for member in 0..3 {
            let mut client = workload::client_to(member)?;
            let input = KvInput::Get { key };
            let call = recorder.now_us();
            let output = workload::execute(&mut client, &input).await;
            if let (Some(KvOutput::Get(value)), None) = (&output, &final_value) {
                final_value = Some(*value);
            }
            workload::record(&recorder, 1_000_000 + member as u64, input, call, output);
        }
        match final_value {
            Some(value) => finals.push((key, value)),
            None => bail!("key {key} could not be read through any member after healing"),
        }
    }
    monitor.abort();
    let end_us = recorder.now_us();
    let ops = recorder.take();
    let observations = std::mem::take(&mut *observations.lock().expect("monitor lock"));

    eprintln!("checking {} operations for linearizability...", ops.len());
    let budget = opts.check_budget;
    let checked = {
        let ops = ops.clone();
        tokio::task::spawn_blocking(move || check_operations(&KvModel, &ops, Some(budget))).await?
    };
    let lost = workload::lost_writes(&ops, &finals);
    let report = Report::new(opts, &ops, &injected, &observations, end_us, &recorder, &checked, &lost, &fencing);
    report.print();
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&report.json)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(report.verdict)
}

/// Asks every member who leads, every [`MONITOR_EVERY`], until aborted; prints progress.
async fn monitor(recorder: Arc<Recorder>, observations: Arc<Mutex<Vec<Observation>>>) {
    let tty = std::io::stderr().is_terminal();
    let mut last_print = Instant::now();
    loop {
        for member in 0..3 {
            let Ok(channel) = channel(member) else { continue };
            let mut client = MaintenanceClient::new(channel);
            let asked = tokio::time::timeout(Duration::from_millis(200), client.status(StatusRequest {}));
            if let Ok(Ok(status)) = asked.await {
                let at_us = recorder.now_us();
                let leader_id = status.into_inner().leader;
                observations.lock().expect("monitor lock").push(Observation { at_us, member, leader_id });
            }
        }
        if last_print.elapsed() >= Duration::from_secs(if tty { 1 } else { 10 }) {
            last_print = Instant::now();
            let line = format!(
                "[{:>4} s] {} ops completed, {} failed",
                recorder.start.elapsed().as_secs(),
                recorder.completed.load(Relaxed),
                recorder.failed.load(Relaxed)
            );
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
        tokio::time::sleep(MONITOR_EVERY).await;
    }
}

/// Runs the fault schedule for the run's duration; every fault is healed before it returns.
async fn inject(
    opts: &Options,
    cluster: &mut LocalCluster,
    net: &proxy::Net,
    recorder: &Recorder,
    ids: [u64; 3],
) -> anyhow::Result<Vec<Injected>> {
    let mut rng = SplitMix64::new(opts.seed);
    let mut injected = Vec::new();
    let mut bag = Vec::new();
    let end = recorder.start + opts.duration;
    loop {
        let plan = faults::next(&mut rng, &opts.kinds.0, &mut bag);
        if Instant::now() + plan.after + plan.hold > end {
            tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
            return Ok(injected);
        }
        tokio::time::sleep(plan.after).await;
        let leader = current_leader(&ids).await;
        let member = match (plan.target, leader) {
            (Target::Leader, Some(l)) => l,
            (Target::Follower, Some(l)) => {
                [0, 1, 2].into_iter().filter(|&m| m != l).nth(rng.range(0, 2) as usize).expect("two")
            }
            _ => rng.range(0, 3) as usize,
        };
        let hit_leader = plan.kind == FaultKind::CrashAll || leader == Some(member);
        let old_leader_id = leader.map_or(0, |l| ids[l]);
        let what = apply(&plan, member, cluster, net)?;
        // The fault is in place once `apply` returns (`kill` has delivered its signal, the last
        // member of a crash of all has died): writes acknowledged before then do not count.
        let start_us = recorder.now_us();
        eprintln!("{}[{:>4} s] {what}", if std::io::stderr().is_terminal() { "\n" } else { "" }, start_us / 1_000_000);
        tokio::time::sleep(plan.hold).await;
        heal(&plan, member, cluster, net, opts.unsafe_stale_reads)?;
        let healed_us = recorder.now_us();
        // One fault at a time: the next one's healthy gap starts once the cluster serves again
        // (a restart after a crash of all members takes seconds), so outages do not overlap and
        // the time between faults is up-time, as the availability model means it.
        let serving_by = Instant::now() + RECOVERY_WAIT_MAX;
        while !recorder.served_since(healed_us) && Instant::now() < serving_by {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let member = (plan.kind != FaultKind::CrashAll).then_some(member);
        injected.push(Injected { kind: plan.kind, what, member, hit_leader, old_leader_id, start_us, healed_us });
    }
}

fn apply(plan: &Plan, m: usize, cluster: &mut LocalCluster, net: &proxy::Net) -> anyhow::Result<String> {
    let name = format!("m{}", m + 1);
    let others: Vec<usize> = (0..3).filter(|&o| o != m).collect();
    Ok(match plan.kind {
        FaultKind::Kill => {
            cluster.signal(m, "-KILL")?;
            cluster.reap(m);
            format!("kill -9 {name}")
        }
        FaultKind::Pause => {
            cluster.signal(m, "-STOP")?;
            format!("SIGSTOP {name}")
        }
        FaultKind::Partition => {
            for &o in &others {
                match plan.shape {
                    Shape::Isolated => {
                        net.block(m, o);
                        net.block(o, m);
                    }
                    Shape::Mute => net.block(m, o),
                    Shape::Deaf => net.block(o, m),
                }
            }
            format!("partition: {name} {:?}", plan.shape).to_lowercase()
        }
        FaultKind::SlowDisk => {
            // The member may still be starting after an earlier kill.
            let delay = SLOW_DISK_DELAY_MS.to_string();
            let (code, body) = http_patiently(m, "POST", "/debug/fault/fsync-delay-ms", &delay, MEMBER_PATIENCE)?;
            if code != 200 {
                bail!("{name} refused the fsync delay: {body}");
            }
            format!("slow disk on {name} (+{SLOW_DISK_DELAY_MS} ms per write)")
        }
        FaultKind::CrashAll => {
            for i in 0..3 {
                cluster.signal(i, "-KILL")?;
            }
            for i in 0..3 {
                cluster.reap(i);
            }
            "kill -9 of every member".to_string()
        }
    })
}

fn heal(plan: &Plan, m: usize, cluster: &mut LocalCluster, net: &proxy::Net, stale_reads: bool) -> anyhow::Result<()> {
    let restarted: Vec<usize> = match plan.kind {
        FaultKind::Kill => vec![m],
        FaultKind::CrashAll => vec![0, 1, 2],
        _ => Vec::new(),
    };
    heal_fault(plan, m, cluster, net)?;
    if stale_reads {
        // A restarted member forgot it: the unsafe run stays unsafe throughout.
        for i in restarted {
            let (code, body) = http_patiently(i, "POST", "/debug/fault/stale-reads", "true", MEMBER_PATIENCE)?;
            if code != 200 {
                bail!("m{} refused stale reads: {body}", i + 1);
            }
        }
    }
    Ok(())
}

fn heal_fault(plan: &Plan, m: usize, cluster: &mut LocalCluster, net: &proxy::Net) -> anyhow::Result<()> {
    match plan.kind {
        FaultKind::Kill => cluster.spawn(m),
        FaultKind::Pause => cluster.signal(m, "-CONT"),
        FaultKind::Partition => {
            net.heal();
            Ok(())
        }
        FaultKind::SlowDisk => {
            let (code, body) = http_patiently(m, "POST", "/debug/fault/fsync-delay-ms", "0", MEMBER_PATIENCE)?;
            if code != 200 {
                bail!("m{} refused to restore its disk: {body}", m + 1);
            }
            Ok(())
        }
        FaultKind::CrashAll => cluster.spawn_all(),
    }
}

/// Milliseconds, for the tables.
fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Report {
    verdict: Verdict,
    json: serde_json::Value,
    text: String,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn new(
        opts: &Options,
        ops: &[Op],
        injected: &[Injected],
        observations: &[Observation],
        end_us: u64,
        recorder: &Recorder,
        checked: &CheckResult<KvInput, KvOutput>,
        lost: &[String],
        fencing: &fencing::Fencing,
    ) -> Report {
        use std::fmt::Write as _;
        let mut text = String::new();
        let is_write = |op: &Op| !matches!(op.input, KvInput::Get { .. });
        // Operations by kind and outcome.
        let mut by_kind: BTreeMap<&str, [u64; 2]> = BTreeMap::new();
        for op in ops {
            let kind = match op.input {
                KvInput::Get { .. } => "get",
                KvInput::Put { .. } => "put",
                KvInput::Delete { .. } => "delete",
                KvInput::Cas { .. } => "cas",
            };
            by_kind.entry(kind).or_default()[usize::from(op.ret.is_none())] += 1;
        }
        let _ = writeln!(text, "\noperations   ok        unknown/failed");
        for (kind, [ok, unknown]) in &by_kind {
            let _ = writeln!(text, "  {kind:<8} {ok:>9} {unknown:>9}");
        }
        let failed_reads = recorder.failed.load(Relaxed) - by_kind.values().map(|v| v[1]).sum::<u64>();
        let _ = writeln!(text, "  (failed reads, left out of the history: {failed_reads})");

        // Per fault: detection and recovery.
        let mut detect: BTreeMap<FaultKind, Vec<u64>> = BTreeMap::new();
        let mut recover: BTreeMap<FaultKind, Vec<u64>> = BTreeMap::new();
        let mut faults_json = Vec::new();
        for fault in injected {
            let detected = fault.hit_leader.then(|| {
                // Within the fault or soon after its heal: a later change is another story.
                let window_end = fault.healed_us + DETECTION_AFTER_HEAL.as_micros() as u64;
                observations
                    .iter()
                    .filter(|o| o.at_us <= window_end)
                    .find(|o| {
                        o.at_us >= fault.start_us
                            && o.leader_id != 0
                            && (o.leader_id != fault.old_leader_id || fault.kind == FaultKind::CrashAll)
                            && Some(o.member) != fault.member
                    })
                    .map(|o| o.at_us - fault.start_us)
            });
            let recovered = ops
                .iter()
                .filter(|op| is_write(op) && op.call >= fault.start_us)
                .filter_map(|op| op.ret)
                .min()
                .map(|ret| ret - fault.start_us);
            if let Some(Some(d)) = detected {
                detect.entry(fault.kind).or_default().push(d);
            }
            if let Some(r) = recovered {
                recover.entry(fault.kind).or_default().push(r);
            }
            faults_json.push(json!({
                "kind": fault.kind.name(),
                "what": fault.what,
                "start_ms": ms(fault.start_us),
                "healed_ms": ms(fault.healed_us),
                "hit_leader": fault.hit_leader,
                "detection_ms": detected.flatten().map(ms),
                "recovery_ms": recovered.map(ms),
            }));
        }
        let _ = writeln!(text, "\nfault        count  detection p50/p99/max (ms)      recovery p50/p99/max (ms)");
        let mut kinds_json = serde_json::Map::new();
        for kind in FaultKind::ALL {
            let count = injected.iter().filter(|f| f.kind == kind).count();
            if count == 0 {
                continue;
            }
            let dist = |values: Option<&Vec<u64>>| -> (String, serde_json::Value) {
                let Some(values) = values.filter(|v| !v.is_empty()) else { return ("-".into(), json!(null)) };
                let mut sorted = values.clone();
                sorted.sort_unstable();
                let (p50, p99, max) =
                    (quantile(&sorted, 0.5), quantile(&sorted, 0.99), *sorted.last().expect("non-empty"));
                (
                    format!("{:.0} / {:.0} / {:.0}", ms(p50), ms(p99), ms(max)),
                    json!({"p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max), "n": sorted.len()}),
                )
            };
            let (d_text, d_json) = dist(detect.get(&kind));
            let (r_text, r_json) = dist(recover.get(&kind));
            let _ = writeln!(text, "  {:<10} {count:>5}  {d_text:<30} {r_text}", kind.name());
            kinds_json.insert(kind.name().into(), json!({"count": count, "detection": d_json, "recovery": r_json}));
        }

        // Availability: measured, and as the model predicts from the measured MTTF and MTTR.
        let windows = (end_us / 1_000_000).max(1);
        let mut served = vec![false; windows as usize];
        for op in ops.iter().filter(|op| is_write(op)) {
            if let Some(ret) = op.ret {
                if let Some(w) = served.get_mut((ret / 1_000_000) as usize) {
                    *w = true;
                }
            }
        }
        let windows_served = served.iter().filter(|&&s| s).count() as f64 / served.len() as f64;
        let completed = recorder.completed.load(Relaxed) as f64;
        let ops_served = completed / (completed + recorder.failed.load(Relaxed) as f64).max(1.0);
        let outages: Vec<u64> = injected
            .iter()
            .map(|f| {
                ops.iter()
                    .filter(|op| is_write(op) && op.call >= f.start_us)
                    .filter_map(|op| op.ret)
                    .min()
                    .map_or(end_us - f.start_us, |ret| ret - f.start_us)
            })
            .collect();
        let (mttf_s, mttr_s, model) = if outages.is_empty() {
            (end_us as f64 / 1e6, 0.0, 1.0)
        } else {
            let n = outages.len() as f64;
            let down: u64 = outages.iter().sum();
            let mttr = down as f64 / n / 1e6;
            let mttf = (end_us.saturating_sub(down)) as f64 / n / 1e6;
            (mttf, mttr, mttf / (mttf + mttr))
        };
        let _ = writeln!(
            text,
            "\navailability  measured: {:.2} % of 1-second windows had an acknowledged write, {:.2} % of operations succeeded\n              model:    A = MTTF / (MTTF + MTTR) = {mttf_s:.2} s / ({mttf_s:.2} s + {:.3} s) = {:.2} %",
            windows_served * 100.0,
            ops_served * 100.0,
            mttr_s,
            model * 100.0
        );

        // Leader changes, as the members saw them.
        let mut changes = 0u64;
        let mut last: BTreeMap<usize, u64> = BTreeMap::new();
        let mut leaders_seen: Vec<u64> = Vec::new();
        for o in observations.iter().filter(|o| o.leader_id != 0) {
            if last.insert(o.member, o.leader_id) != Some(o.leader_id) && leaders_seen.last() != Some(&o.leader_id) {
                leaders_seen.push(o.leader_id);
                changes += 1;
            }
        }
        let leader_changes = changes.saturating_sub(1);
        let _ = writeln!(text, "leader changes seen: {leader_changes}");

        let (linearizable, verdict_text) = match checked {
            CheckResult::Ok => (json!(true), "linearizable".to_string()),
            CheckResult::Unknown => (json!(null), "linearizability unknown (the check ran out of time)".to_string()),
            CheckResult::Illegal { failing, .. } => {
                let mut detail = String::from("NOT linearizable; a failing sub-history:");
                for op in failing.iter().take(20) {
                    let _ = write!(
                        detail,
                        "\n    client {} {:?} -> {:?} [{:.1} ms .. {}]",
                        op.client_id,
                        op.input,
                        op.output,
                        ms(op.call),
                        op.ret.map_or("?".to_string(), |r| format!("{:.1} ms", ms(r)))
                    );
                }
                (json!(false), detail)
            }
        };
        let accepted = fencing.accepted.lock().expect("fencing lock").clone();
        let breaches = fencing::breaches(&accepted);
        let acquisitions = fencing.acquisitions.load(Relaxed);
        let rejected_stale = fencing.rejected_stale.load(Relaxed);
        let _ = writeln!(
            text,
            "locks: {acquisitions} acquisitions, {} fenced writes accepted, {rejected_stale} refused for a stale token, {} breaches",
            accepted.len(),
            breaches.len()
        );
        for breach in &breaches {
            let _ = writeln!(text, "  FENCING BREACH: {breach}");
        }
        let passed = checked.is_ok() && lost.is_empty() && breaches.is_empty();
        let _ = writeln!(text, "history: {verdict_text}");
        if lost.is_empty() {
            let _ = writeln!(text, "acknowledged writes: all present at the end");
        } else {
            let _ = writeln!(text, "acknowledged writes LOST:");
            for line in lost {
                let _ = writeln!(text, "  {line}");
            }
        }
        let _ = writeln!(
            text,
            "verdict: {} (seed {})",
            if passed {
                "PASS"
            } else if checked.is_unknown() && lost.is_empty() && breaches.is_empty() {
                "UNKNOWN"
            } else {
                "FAIL"
            },
            opts.seed
        );
        let json = json!({
            "seed": opts.seed,
            "duration_s": opts.duration.as_secs(),
            "faults_enabled": opts.kinds.0.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "clients": opts.clients,
            "keys": opts.keys,
            "unsafe_stale_reads": opts.unsafe_stale_reads,
            "operations": by_kind.iter().map(|(k, [ok, unknown])| (k.to_string(), json!({"ok": ok, "unknown": unknown}))).collect::<serde_json::Map<_, _>>(),
            "faults": faults_json,
            "by_kind": kinds_json,
            "availability": {
                "windows_with_write": windows_served,
                "operations_succeeded": ops_served,
                "mttf_s": mttf_s,
                "mttr_s": mttr_s,
                "model": model,
            },
            "leader_changes": leader_changes,
            "linearizable": linearizable,
            "lost_writes": lost,
            "locks": {
                "acquisitions": acquisitions,
                "fenced_writes_accepted": accepted.len(),
                "refused_stale_token": rejected_stale,
                "breaches": breaches,
            },
            "passed": passed,
        });
        let verdict = if passed {
            Verdict::Pass
        } else if checked.is_unknown() && lost.is_empty() && breaches.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Fail
        };
        Report { verdict, json, text }
    }

    fn print(&self) {
        println!("{}", self.text);
    }
}
