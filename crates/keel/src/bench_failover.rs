//! `keel bench failover`: how long writes stop when the leader dies, over many trials.
//!
//! Starts a local 3-member cluster of real `keel server` processes (or any etcd-compatible
//! server binary, so etcd can be measured the same way), then per trial: finds the leader,
//! kills it with SIGKILL (or freezes it with SIGSTOP, or stops it with SIGTERM), and times from the signal to the first
//! write acknowledged through the survivors; then restarts (or resumes) it and waits until the
//! cluster is whole again. Prints every trial and the distribution.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use keel_api::etcdserverpb::{kv_client::KvClient, PutRequest};

use crate::local_cluster::{channel, leader, LocalCluster};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Leader failures to time.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Where the members keep their data (wiped first).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-bench-failover"))]
    dir: PathBuf,
    /// The server command (e.g. `--server etcd` measures etcd with the very same procedure;
    /// default: this keel binary's `keel server`).
    #[arg(long)]
    server: Option<String>,
    /// SIGSTOP the leader instead of kill -9 (a hung process, not a dead one).
    #[arg(long = "sigstop", conflicts_with = "term")]
    stop: bool,
    /// SIGTERM the leader (a graceful stop: a keel or etcd leader hands leadership over first).
    #[arg(long = "sigterm")]
    term: bool,
    /// --heartbeat-interval for every member, ms (the server's default if not given).
    #[arg(long = "heartbeat-interval")]
    heartbeat_ms: Option<u64>,
    /// --election-timeout for every member, ms.
    #[arg(long = "election-timeout")]
    election_ms: Option<u64>,
}

fn server_command(opts: &Options) -> anyhow::Result<Vec<String>> {
    match &opts.server {
        Some(command) => Ok(command.split_whitespace().map(str::to_string).collect()),
        None => LocalCluster::keel_server(),
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let mut extra = Vec::new();
    if let Some(ms) = opts.heartbeat_ms {
        extra.extend(["--heartbeat-interval".to_string(), ms.to_string()]);
    }
    if let Some(ms) = opts.election_ms {
        extra.extend(["--election-timeout".to_string(), ms.to_string()]);
    }
    let mut cluster = LocalCluster::new(opts.dir.clone(), server_command(&opts)?, extra, "keel-bench-failover")?;
    cluster.spawn_all()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(trials(&opts, &mut cluster))
}

async fn trials(opts: &Options, cluster: &mut LocalCluster) -> anyhow::Result<()> {
    let all = [0, 1, 2];
    let mut took = Vec::new();
    for trial in 0..opts.trials {
        let old = leader(&all).await?;
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
        let mut clients = Vec::new();
        for &i in &survivors {
            clients.push(KvClient::new(channel(i)?));
        }
        // Connections to the survivors are warm before the clock starts.
        for client in &mut clients {
            let _ = client.put(PutRequest { key: b"failover/warm".to_vec(), ..Default::default() }).await;
        }
        let signal = match (opts.stop, opts.term) {
            (true, _) => "-STOP",
            (false, true) => "-TERM",
            (false, false) => "-KILL",
        };
        cluster.signal(old, signal)?;
        let killed_at = Instant::now();
        let mut attempt = 0usize;
        loop {
            let count = clients.len();
            let client = &mut clients[attempt % count];
            attempt += 1;
            let put = PutRequest {
                key: format!("failover/{trial}").into_bytes(),
                value: b"x".to_vec(),
                ..Default::default()
            };
            if client.put(put).await.is_ok() {
                break;
            }
            if killed_at.elapsed() > Duration::from_secs(60) {
                bail!("trial {trial}: no write succeeded within 60 s of the leader's {signal}");
            }
        }
        let elapsed = killed_at.elapsed();
        println!(
            "trial {trial:>2}: leader m{} {signal} -> first write after {:>7.1} ms",
            old + 1,
            elapsed.as_secs_f64() * 1e3
        );
        took.push(elapsed);
        if opts.stop {
            cluster.signal(old, "-CONT")?;
        } else {
            cluster.reap(old);
            cluster.spawn(old)?;
        }
        leader(&all).await?;
        // Let the returning member catch up before the next trial.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    println!(
        "trials={} min={:.0}ms p50={:.0}ms p90={:.0}ms p99={:.0}ms max={:.0}ms",
        took.len(),
        ms(took[0]),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(*took.last().expect("at least one trial"))
    );
    Ok(())
}
