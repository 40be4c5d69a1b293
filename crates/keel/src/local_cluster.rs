//! A local 3-member cluster of real server processes on loopback, for the benchmarks and
//! `keel chaos`: start, signal and restart members, find the leader, read a member's metrics.
//!
//! The server is any etcd-compatible binary (`keel server` by default; `etcd` to measure etcd
//! the same way).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_api::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use keel_api::tonic::transport::{Channel, Endpoint};

/// (client, peer) ports of members m1..m3.
pub const PORTS: [(u16, u16); 3] = [(61379, 61380), (62379, 62380), (63379, 63380)];
/// A request to one member gives up after this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);

pub struct LocalCluster {
    pub dir: PathBuf,
    /// The server command (program and leading arguments).
    pub server: Vec<String>,
    /// Flags every member gets after the cluster's own.
    pub extra_args: Vec<String>,
    pub token: String,
    /// Members listen for peers this far above their advertised peer port, where a proxy (see
    /// `keel chaos`) stands in front of them; 0: they listen where they advertise.
    pub peer_listen_offset: u16,
    children: Vec<Option<Child>>,
}

impl LocalCluster {
    /// A cluster in a fresh `dir` (removed first); nothing runs until [`LocalCluster::spawn`].
    pub fn new(dir: PathBuf, server: Vec<String>, extra_args: Vec<String>, token: &str) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(LocalCluster {
            dir,
            server,
            extra_args,
            token: token.to_string(),
            peer_listen_offset: 0,
            children: vec![None, None, None],
        })
    }

    /// `keel server` from this very binary.
    pub fn keel_server() -> anyhow::Result<Vec<String>> {
        let exe = std::env::current_exe().context("find the keel binary")?;
        Ok(vec![exe.to_string_lossy().into_owned(), "server".into()])
    }

    pub fn spawn_all(&mut self) -> anyhow::Result<()> {
        (0..3).try_for_each(|i| self.spawn(i))
    }

    /// Starts member `i` (again): same name, data dir and ports; its output goes to `m{i+1}.log`.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let cluster = PORTS
            .iter()
            .enumerate()
            .map(|(n, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", n + 1))
            .collect::<Vec<_>>()
            .join(",");
        let (client, peer) = PORTS[i];
        let name = format!("m{}", i + 1);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(&self.server[0])
            .args(&self.server[1..])
            .args(["--name", &name])
            .args(["--data-dir", &self.dir.join(&name).to_string_lossy()])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", peer + self.peer_listen_offset)])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start server")?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Sends `signal` (`-KILL`, `-STOP`, `-CONT`, `-TERM`) to member `i`.
    pub fn signal(&mut self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.children[i].as_ref().context("member not running")?.id();
        let status = Command::new("kill").args([signal, &pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    /// Waits for member `i`'s process to end (after a kill) and forgets it.
    pub fn reap(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.wait();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A lazily connecting gRPC channel to member `i`.
pub fn channel(i: usize) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://127.0.0.1:{}", PORTS[i].0))?
        .connect_timeout(Duration::from_millis(200))
        .timeout(ATTEMPT_TIMEOUT)
        .connect_lazy())
}

/// The member every one of `members` names as leader, once they agree (30 s at most).
pub async fn leader(members: &[usize]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for &i in members {
            let mut client = MaintenanceClient::new(channel(i)?);
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

/// One plain HTTP/1.1 request to member `i`'s client port; returns the status code and body.
/// Blocking and short (for `/metrics`, `/health` and the fault-injection routes).
pub fn http(i: usize, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", PORTS[i].0))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP status in {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    // Chunked bodies are not decoded: the metrics lines a caller looks for survive the chunk
    // markers, which stand on lines of their own.
    Ok((status, body.to_string()))
}

/// [`http`], tried again for up to `patience` while the member does not accept connections
/// (it is starting, or restarting after a kill).
pub fn http_patiently(
    i: usize,
    method: &str,
    path: &str,
    body: &str,
    patience: Duration,
) -> anyhow::Result<(u16, String)> {
    let deadline = Instant::now() + patience;
    loop {
        match http(i, method, path, body) {
            Ok(answer) => return Ok(answer),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The value of metric `name` (a line `name value`) in member `i`'s `/metrics`.
pub fn metric(i: usize, name: &str) -> anyhow::Result<f64> {
    let (_, text) = http(i, "GET", "/metrics", "")?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("member m{} has no metric {name}", i + 1))
}
