//! `keel bench fail-slow`: how fast a leader whose disk turns slow is flagged and replaced.
//!
//! Starts a local 3-member keel cluster with `--unsafe-fault-injection true` under a steady
//! write load, lets fail-slow detection learn each disk's baseline, then per trial: finds the
//! leader, makes its WAL writes `--slowdown` times slower (an added delay of `slowdown - 1`
//! times its learned baseline), and times from then to the leader's `/health` turning to
//! SLOW DISK (flagged) and to another member leading (moved). The disk is then restored and the
//! member given time to clear the flag. Prints every trial, the distributions, the writes' p99
//! before and while the disk was slow, and the flags raised while no disk was slowed (false
//! flags).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use keel_api::etcdserverpb::{kv_client::KvClient, PutRequest};

use crate::local_cluster::{channel, http, leader, metric, LocalCluster};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Slow-disk episodes to time.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Where the members keep their data (wiped first).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-bench-fail-slow"))]
    dir: std::path::PathBuf,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Load before each slowdown, seconds (the detector learns the disk's normal latency).
    #[arg(long = "warmup-seconds", default_value = "20", value_parser = seconds)]
    warmup: Duration,
    /// How many times slower the leader's disk becomes (at least 1).
    #[arg(long, default_value_t = 10.0, value_parser = at_least_one)]
    slowdown: f64,
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse().map(Duration::from_secs).map_err(|error| format!("{text:?}: {error}"))
}

fn at_least_one(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x >= 1.0 => Ok(x),
        Ok(_) => Err("must be at least 1".into()),
        Err(error) => Err(format!("{text:?}: {error}")),
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let extra = vec!["--unsafe-fault-injection".to_string(), "true".to_string()];
    let mut cluster = LocalCluster::new(opts.dir.clone(), LocalCluster::keel_server()?, extra, "keel-bench-fail-slow")?;
    cluster.spawn_all()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(trials(&opts))
}

/// Write latencies of the load, by phase.
struct Load {
    latencies: Mutex<Histogram<u64>>,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Load {
    /// The latencies since the last call, and a fresh histogram for the next phase.
    fn take(&self) -> Histogram<u64> {
        let fresh = Histogram::new(3).expect("valid sigfig");
        std::mem::replace(&mut *self.latencies.lock().expect("load lock"), fresh)
    }
}

async fn run_load(opts: &Options) -> anyhow::Result<Arc<Load>> {
    let load = Arc::new(Load {
        latencies: Mutex::new(Histogram::new(3)?),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    for c in 0..opts.clients {
        let mut client = KvClient::new(channel(c % 3)?);
        let load = load.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !load.stop.load(Relaxed) {
                let put = PutRequest {
                    key: format!("fail-slow/{c}/{}", n % 100).into_bytes(),
                    value: vec![b'x'; 256],
                    ..Default::default()
                };
                n += 1;
                let started = Instant::now();
                match client.put(put).await {
                    Ok(_) => {
                        let us = started.elapsed().as_micros() as u64;
                        let _ = load.latencies.lock().expect("load lock").record(us.max(1));
                    }
                    Err(_) => {
                        load.errors.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    Ok(load)
}

/// Blocking HTTP off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

async fn set_delay(member: usize, delay: Duration) -> anyhow::Result<()> {
    let body = delay.as_millis().to_string();
    let (status, text) = blocking(move || http(member, "POST", "/debug/fault/fsync-delay-ms", &body)).await?;
    if status != 200 {
        bail!("member m{} refused the fsync delay ({status}): {text}", member + 1);
    }
    Ok(())
}

async fn metric_of(member: usize, name: &'static str) -> anyhow::Result<f64> {
    blocking(move || metric(member, name)).await
}

async fn flags_total() -> anyhow::Result<f64> {
    let mut total = 0.0;
    for i in 0..3 {
        total += metric_of(i, "keel_disk_slow_flags_total").await?;
    }
    Ok(total)
}

async fn trials(opts: &Options) -> anyhow::Result<()> {
    let all = [0, 1, 2];
    leader(&all).await?;
    let load = run_load(opts).await?;
    println!("warming up for {} s under {} writers", opts.warmup.as_secs(), opts.clients);
    tokio::time::sleep(opts.warmup).await;
    let false_flags = flags_total().await?;
    let healthy = load.take();
    println!(
        "healthy: {} writes, p50 {:.1} ms, p99 {:.1} ms; flags raised so far (false): {false_flags}",
        healthy.len(),
        healthy.value_at_quantile(0.5) as f64 / 1e3,
        healthy.value_at_quantile(0.99) as f64 / 1e3
    );
    let mut flagged = Vec::new();
    let mut moved = Vec::new();
    for trial in 0..opts.trials {
        let old = leader(&all).await?;
        let baseline = metric_of(old, "keel_disk_write_baseline_seconds").await?;
        if baseline <= 0.0 {
            bail!("m{} has learned no baseline yet", old + 1);
        }
        let delay = Duration::from_secs_f64(baseline * (opts.slowdown - 1.0)).max(Duration::from_millis(1));
        let flags_before = metric_of(old, "keel_disk_slow_flags_total").await?;
        let _ = load.take();
        set_delay(old, delay).await?;
        let slowed_at = Instant::now();
        let (mut flagged_after, mut moved_after) = (None, None);
        while flagged_after.is_none() || moved_after.is_none() {
            if slowed_at.elapsed() > Duration::from_secs(60) {
                set_delay(old, Duration::ZERO).await?;
                bail!("trial {trial}: m{} not flagged and replaced within 60 s", old + 1);
            }
            if flagged_after.is_none() && metric_of(old, "keel_disk_slow_flags_total").await? > flags_before {
                flagged_after = Some(slowed_at.elapsed());
            }
            if moved_after.is_none() && leader(&all).await? != old {
                moved_after = Some(slowed_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let slow_phase = load.take();
        let (flagged_after, moved_after) = (flagged_after.expect("set"), moved_after.expect("set"));
        println!(
            "trial {trial}: m{} baseline {:.2} ms, +{:.1} ms per write -> flagged after {:.1} s, leadership moved after {:.1} s; writes meanwhile p99 {:.1} ms",
            old + 1,
            baseline * 1e3,
            delay.as_secs_f64() * 1e3,
            flagged_after.as_secs_f64(),
            moved_after.as_secs_f64(),
            slow_phase.value_at_quantile(0.99) as f64 / 1e3
        );
        flagged.push(flagged_after);
        moved.push(moved_after);
        set_delay(old, Duration::ZERO).await?;
        let restored = Instant::now();
        while metric_of(old, "keel_disk_slow").await? != 0.0 {
            if restored.elapsed() > Duration::from_secs(60) {
                bail!("trial {trial}: m{} still flagged 60 s after its disk recovered", old + 1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("         cleared {:.1} s after the disk recovered", restored.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    load.stop.store(true, Relaxed);
    let summary = |name: &str, mut took: Vec<Duration>| {
        took.sort();
        println!(
            "{name}: trials={} min={:.1}s p50={:.1}s max={:.1}s",
            took.len(),
            took[0].as_secs_f64(),
            took[took.len() / 2].as_secs_f64(),
            took[took.len() - 1].as_secs_f64()
        );
    };
    summary("flagged", flagged);
    summary("moved", moved);
    println!("write errors during the run: {}", load.errors.load(Relaxed));
    Ok(())
}
