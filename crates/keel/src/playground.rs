//! `keel playground`: a local 3-member cluster on etcd's usual loopback ports, for trying keel.
//!
//! Member 1 listens on 127.0.0.1:2379, so a bare `etcdctl` talks to it. Each member is a real
//! `keel server` process started from exactly the flags one would give etcd; data lives under
//! `./keel-data` (so a second run resumes with it), logs in `./keel-data/<name>.log`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const MEMBERS: [(&str, u16, u16); 3] = [("m1", 2379, 2380), ("m2", 22379, 22380), ("m3", 32379, 32380)];
const READY_WAIT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Where the members keep their data and logs (kept: run again to resume).
    #[arg(long, alias = "data-dir", default_value = "keel-data")]
    dir: PathBuf,
    /// Spares started beside the three members: each replaces a member dead for 60 s.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=SPARES_MAX))]
    spares: u64,
    /// Mutual TLS on the client and peer ports, with a throwaway CA made in DIR/tls (kept:
    /// a second run resumes with it); prints the etcdctl flags to use.
    #[arg(long)]
    tls: bool,
}

/// The playground's TLS: where its certificates are, and how it checks its members' health.
struct Tls {
    dir: PathBuf,
    client: std::sync::Arc<rustls::ClientConfig>,
}

impl Tls {
    /// Makes the throwaway CA and certificates on the first run, and reuses them after.
    fn prepare(data: &std::path::Path) -> anyhow::Result<Tls> {
        let dir = data.join("tls");
        if !dir.join("ca.pem").exists() {
            let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
            crate::certs::write(&dir, &hosts, &["member".to_string()], &["root".to_string()], 1)?;
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in keel_server::tls::read_certificates(&dir.join("ca.pem"))? {
            roots.add(cert)?;
        }
        let chain = keel_server::tls::read_certificates(&dir.join("client-root.pem"))?;
        let key = keel_server::tls::read_key(&dir.join("client-root-key.pem"))?;
        let client = rustls::ClientConfig::builder_with_provider(keel_server::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Tls { dir, client: std::sync::Arc::new(client) })
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

/// Spare `k`'s client and peer ports (from 1): 2579/2580, 2679/2680, ...
fn spare_ports(k: u64) -> (u16, u16) {
    let base = 2479 + 100 * k as u16;
    (base, base + 1)
}

/// Most spares the playground starts (their ports stay below the members').
const SPARES_MAX: u64 = 50;

#[derive(clap::Args, Debug)]
pub struct SparesOptions {
    /// A member's client URL.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.dir).with_context(|| format!("create {}", options.dir.display()))?;
    let exe = std::env::current_exe().context("find the keel binary")?;
    let tls = if options.tls { Some(Tls::prepare(&options.dir)?) } else { None };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let cluster = MEMBERS
        .iter()
        .map(|(name, _, peer)| format!("{name}={scheme}://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let resuming = options.dir.join("m1").exists();
    let mut children: Vec<Child> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (name, client, peer) in MEMBERS {
        children.push(spawn(&exe, &options.dir, &cluster, name, (client, peer), false, tls.as_ref())?);
        names.push(name.to_string());
    }
    // Spares: members-in-waiting that replace a member dead for --replace-dead-after (60 s).
    for k in 1..=options.spares {
        let name = format!("spare{k}");
        children.push(spawn(&exe, &options.dir, &cluster, &name, spare_ports(k), true, tls.as_ref())?);
        names.push(name);
    }
    let result = wait_ready(&mut children[..MEMBERS.len()], tls.as_ref());
    if let Err(error) = result {
        stop(&mut children);
        return Err(error);
    }
    let endpoints = MEMBERS.iter().map(|(_, c, _)| format!("127.0.0.1:{c}")).collect::<Vec<_>>().join(",");
    println!(
        "keel playground: 3 members {} (data in {}, logs in {}/m*.log)",
        if resuming { "resumed" } else { "started" },
        options.dir.display(),
        options.dir.display()
    );
    for (name, client, peer) in MEMBERS {
        println!("  {name}: client {scheme}://127.0.0.1:{client}  peer {scheme}://127.0.0.1:{peer}");
    }
    for k in 1..=options.spares {
        let (client, peer) = spare_ports(k);
        println!("  spare{k}: client {scheme}://127.0.0.1:{client}  peer {scheme}://127.0.0.1:{peer}  (replaces a member dead for 60 s)");
    }
    if options.spares > 0 {
        println!("  keel spares --endpoint http://127.0.0.1:2379   lists them");
    }
    println!();
    println!("try, in another terminal:");
    match &tls {
        None => {
            println!("  etcdctl --endpoints={endpoints} put greeting hello");
            println!("  etcdctl --endpoints={endpoints} get greeting");
            println!("  etcdctl --endpoints={endpoints} endpoint status -w table");
            println!("  curl -s http://127.0.0.1:2379/metrics | grep etcd_server_has_leader");
        }
        Some(tls) => {
            let (ca, cert, key) = (tls.file("ca.pem"), tls.file("client-root.pem"), tls.file("client-root-key.pem"));
            let flags = format!("--endpoints={endpoints} --cacert={ca} --cert={cert} --key={key}");
            println!("  etcdctl {flags} put greeting hello");
            println!("  etcdctl {flags} get greeting");
            println!("  etcdctl {flags} endpoint status -w table");
            println!("  curl -s --cacert {ca} --cert {cert} --key {key} https://127.0.0.1:2379/metrics | grep etcd_server_has_leader");
            println!("  (a client without a certificate from {ca} is refused at the handshake)");
        }
    }
    println!();
    println!("Ctrl-C stops the cluster; run `keel playground` again to resume with the same data.");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let spares = options.spares;
    let mut reported = vec![false; children.len()];
    let exited = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok::<_, std::io::Error>(None),
                _ = term.recv() => return Ok(None),
                _ = poll.tick() => {
                    for (i, child) in children.iter_mut().enumerate() {
                        if reported[i] {
                            continue;
                        }
                        if let Some(status) = child.try_wait()? {
                            if spares == 0 {
                                return Ok(Some((names[i].clone(), status)));
                            }
                            // With spares, a member that dies is what the cluster heals from:
                            // watch it happen (`keel spares`, `etcdctl member list`).
                            reported[i] = true;
                            println!(
                                "{} exited ({status}); if it stays down 60 s a spare replaces it \
                                 (`keel spares`, `etcdctl member list` show it)",
                                names[i]
                            );
                        }
                    }
                }
            }
        }
    })?;
    stop(&mut children);
    match exited {
        None => {
            println!("keel playground stopped; data kept in {}", options.dir.display());
            Ok(())
        }
        Some((name, status)) => {
            bail!("member {name} exited ({status}); see {}/{name}.log", options.dir.display())
        }
    }
}

/// Starts one `keel server` from etcd's flags: a founding member, or a spare that joins the
/// running cluster (`--spare`, state existing). Its output goes to `DIR/NAME.log`.
fn spawn(
    exe: &std::path::Path,
    dir: &std::path::Path,
    cluster: &str,
    name: &str,
    (client, peer): (u16, u16),
    spare: bool,
    tls: Option<&Tls>,
) -> anyhow::Result<Child> {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let mut command = Command::new(exe);
    command.arg("server");
    if spare {
        command.arg("--spare");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(tls) = tls {
        let (ca, cert, key) = (tls.file("ca.pem"), tls.file("member.pem"), tls.file("member-key.pem"));
        command
            .args(["--cert-file", &cert, "--key-file", &key, "--trusted-ca-file", &ca, "--client-cert-auth"])
            .args(["--peer-cert-file", &cert, "--peer-key-file", &key, "--peer-trusted-ca-file", &ca])
            .arg("--peer-client-cert-auth");
    }
    command
        .args(["--name", name])
        .args(["--data-dir", &dir.join(name).to_string_lossy()])
        .args(["--listen-client-urls", &format!("{scheme}://127.0.0.1:{client}")])
        .args(["--advertise-client-urls", &format!("{scheme}://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("{scheme}://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("{scheme}://127.0.0.1:{peer}")])
        .args(["--initial-cluster", cluster])
        .args(["--initial-cluster-token", "keel-playground"])
        .args(["--initial-cluster-state", if spare { "existing" } else { "new" }])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {name}"))
}

/// Waits until every member answers `/health` with a leader.
fn wait_ready(children: &mut [Child], tls: Option<&Tls>) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WAIT;
    let mut ready = [false; MEMBERS.len()];
    while !ready.iter().all(|r| *r) {
        for (i, (name, client, _)) in MEMBERS.iter().enumerate() {
            if let Some(status) = children[i].try_wait()? {
                bail!("member {name} exited during startup ({status}); see its log");
            }
            ready[i] = ready[i] || healthy(*client, tls.map(|tls| &tls.client));
        }
        if Instant::now() > deadline {
            bail!("the members did not elect a leader within {READY_WAIT:?}; see their logs");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A plain HTTP/1.1 GET of /health (over TLS with `tls`): no client library needed.
pub fn healthy(port: u16, tls: Option<&std::sync::Arc<rustls::ClientConfig>>) -> bool {
    use std::io::{Read, Write};
    let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            let Ok(conn) = rustls::ClientConnection::new(config.clone(), name) else { return false };
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let request = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") && response.contains("\"health\":\"true\"")
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

fn stop(children: &mut [Child]) {
    // Everything a member acknowledged is already durable; stopping it needs no ceremony.
    for child in children.iter_mut() {
        let _ = child.kill();
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}

/// `keel spares`: what a member's membership protocol knows — every member and spare with its
/// liveness (spares are not raft members, so `etcdctl member list` cannot show them).
pub fn list_spares(options: SparesOptions) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let endpoint = options.endpoint;
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut stream = std::net::TcpStream::connect(&address).with_context(|| format!("connect to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /membership HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).context("no HTTP body")?;
    let view: serde_json::Value = serde_json::from_str(body).context("not the membership JSON")?;
    println!("{:<18} {:<12} {:<8} {:<8} {:<10} PEER URL", "ID", "NAME", "ROLE", "STATE", "ZONE");
    for member in view["members"].as_array().into_iter().flatten() {
        println!(
            "{:<18} {:<12} {:<8} {:<8} {:<10} {}",
            member["id"].as_str().unwrap_or(""),
            member["name"].as_str().unwrap_or(""),
            member["role"].as_str().unwrap_or(""),
            member["liveness"].as_str().unwrap_or(""),
            member["zone"].as_str().unwrap_or(""),
            member["peer_url"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}
