//! `keel bench failover`: how long writes stop when the leader dies, over many trials.
//!
//! Starts a local 3-member cluster of real `keel server` processes (or any etcd-compatible
//! server binary, so etcd can be measured the same way), then per trial: finds the leader,
//! kills it with SIGKILL (or freezes it with SIGSTOP, or stops it with SIGTERM), and times from the signal to the first
//! write acknowledged through the survivors; then restarts (or resumes) it and waits until the
//! cluster is whole again. Prints every trial and the distribution.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_api::etcdserverpb::{kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, StatusRequest};
use keel_api::tonic::transport::{Channel, Endpoint};

const PORTS: [(u16, u16); 3] = [(61379, 61380), (62379, 62380), (63379, 63380)];
/// Each write attempt gives up after this long and tries the next survivor.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);

struct Options {
    trials: usize,
    dir: PathBuf,
    server: Vec<String>,
    stop: bool,
    /// SIGTERM (a graceful stop: a keel or etcd leader hands leadership over first).
    term: bool,
    heartbeat_ms: Option<u64>,
    election_ms: Option<u64>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let exe = std::env::current_exe().context("find the keel binary")?;
    let mut opts = Options {
        trials: 20,
        dir: std::env::temp_dir().join("keel-bench-failover"),
        server: vec![exe.to_string_lossy().into_owned(), "server".into()],
        stop: false,
        term: false,
        heartbeat_ms: None,
        election_ms: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--sigstop" {
            opts.stop = true;
            continue;
        }
        if flag == "--sigterm" {
            opts.term = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--trials" => opts.trials = value.parse().context("--trials")?,
            "--dir" => opts.dir = value.into(),
            // e.g. --server etcd: measure etcd with the very same procedure.
            "--server" => opts.server = value.split_whitespace().map(str::to_string).collect(),
            "--heartbeat-interval" => opts.heartbeat_ms = Some(value.parse().context("--heartbeat-interval")?),
            "--election-timeout" => opts.election_ms = Some(value.parse().context("--election-timeout")?),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(opts)
}

struct Cluster {
    opts: Options,
    children: Vec<Option<Child>>,
}

impl Cluster {
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let cluster = PORTS
            .iter()
            .enumerate()
            .map(|(n, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", n + 1))
            .collect::<Vec<_>>()
            .join(",");
        let (client, peer) = PORTS[i];
        let name = format!("m{}", i + 1);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.opts.dir.join(format!("{name}.log")))?;
        let mut command = Command::new(&self.opts.server[0]);
        command
            .args(&self.opts.server[1..])
            .args(["--name", &name])
            .args(["--data-dir", &self.opts.dir.join(&name).to_string_lossy()])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", "keel-bench-failover"])
            .args(["--initial-cluster-state", "new"]);
        if let Some(ms) = self.opts.heartbeat_ms {
            command.args(["--heartbeat-interval", &ms.to_string()]);
        }
        if let Some(ms) = self.opts.election_ms {
            command.args(["--election-timeout", &ms.to_string()]);
        }
        let child =
            command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn().context("start server")?;
        self.children[i] = Some(child);
        Ok(())
    }

    fn signal(&mut self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.children[i].as_ref().context("member not running")?.id();
        let status = Command::new("kill").args([signal, &pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn channel(port: u16) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_millis(200))
        .timeout(ATTEMPT_TIMEOUT)
        .connect_lazy())
}

/// The member every reachable member names as leader, once they agree.
async fn leader(members: &[usize]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for &i in members {
            let mut client = MaintenanceClient::new(channel(PORTS[i].0).await?);
            if let Ok(status) = client.status(StatusRequest {}).await {
                let status = status.into_inner();
                seen.push((i, status.leader, status.header.map_or(0, |h| h.member_id)));
            }
        }
        if seen.len() == members.len() && seen[0].1 != 0 && seen.iter().all(|s| s.1 == seen[0].1) {
            if let Some(&(i, _, _)) = seen.iter().find(|s| s.2 == seen[0].1) {
                return Ok(i);
            }
        }
        if Instant::now() > deadline {
            bail!("the members did not agree on a leader: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let _ = std::fs::remove_dir_all(&opts.dir);
    std::fs::create_dir_all(&opts.dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut cluster = Cluster { opts, children: vec![None, None, None] };
    for i in 0..3 {
        cluster.spawn(i)?;
    }
    runtime.block_on(trials(&mut cluster))
}

async fn trials(cluster: &mut Cluster) -> anyhow::Result<()> {
    let all = [0, 1, 2];
    let mut took = Vec::new();
    for trial in 0..cluster.opts.trials {
        let old = leader(&all).await?;
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
        let mut clients = Vec::new();
        for &i in &survivors {
            clients.push(KvClient::new(channel(PORTS[i].0).await?));
        }
        // Connections to the survivors are warm before the clock starts.
        for client in &mut clients {
            let _ = client.put(PutRequest { key: b"failover/warm".to_vec(), ..Default::default() }).await;
        }
        let signal = match (cluster.opts.stop, cluster.opts.term) {
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
        if cluster.opts.stop {
            cluster.signal(old, "-CONT")?;
        } else {
            if let Some(mut child) = cluster.children[old].take() {
                let _ = child.wait();
            }
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
