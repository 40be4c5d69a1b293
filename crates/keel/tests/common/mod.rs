//! Real `keel server` processes on 127.0.0.1 for the integration tests: started from etcd's
//! flags, killed with SIGKILL, restarted on their data.

#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

/// Test timing: 50 ms heartbeats, 500 ms election timeout (etcd's ratio, 2× faster), so
/// failovers in tests take a fraction of a second rather than two.
pub const HEARTBEAT_MS: u64 = 50;
pub const ELECTION_MS: u64 = 500;

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub child: Option<Child>,
    /// Flags for this member only (a zone, --spare).
    pub args: Vec<String>,
    /// Started as a spare: not in --initial-cluster, joins with state existing.
    pub spare: bool,
    /// Mutual TLS on both ports with the certificates `keel certs` wrote here (`ca.pem`,
    /// `member.pem`, `member-key.pem`, `client-root.pem`, ...).
    pub certs: Option<PathBuf>,
}

impl Member {
    pub fn scheme(&self) -> &'static str {
        if self.certs.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }
}

/// `keel certs`: a throwaway CA in `dir`, one member certificate (`member`) for 127.0.0.1 and
/// localhost, and a client certificate per user.
pub fn make_certs(dir: &std::path::Path, users: &[&str]) {
    let made = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["certs", "--dir", &dir.to_string_lossy(), "--members", "member", "--users", &users.join(",")])
        .output()
        .expect("run keel certs");
    assert!(made.status.success(), "keel certs: {}", String::from_utf8_lossy(&made.stderr));
}

pub struct Cluster {
    pub dir: PathBuf,
    pub members: Vec<Member>,
    token: String,
    /// More flags for every member.
    extra: Vec<String>,
}

fn free_port() -> u16 {
    // Bound and released at once: another process could take it in between, which the
    // readiness wait would then report. The kernel may hand the same free port out twice in a
    // row, though, and two members given one port get one member id: each port goes to one
    // member of this process only.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if GIVEN.lock().expect("ports lock").insert(port) {
            return port;
        }
    }
}

impl Cluster {
    pub fn start(name: &str, size: usize) -> Cluster {
        Cluster::start_with(name, size, &[])
    }

    pub fn start_with(name: &str, size: usize, extra: &[&str]) -> Cluster {
        Cluster::start_members(name, vec![Vec::new(); size], extra)
    }

    /// Starts one member per entry of `args`, each with its own flags besides `extra`.
    pub fn start_members(name: &str, args: Vec<Vec<String>>, extra: &[&str]) -> Cluster {
        let size = args.len();
        let mut cluster = Cluster::prepare_members(name, args, extra);
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_ready();
        cluster
    }

    /// Like [`Cluster::start_with`], every member with mutual TLS on both ports (and
    /// `--client-cert-auth`) from the certificates in `certs` (see [`make_certs`]).
    pub fn start_tls(name: &str, size: usize, certs: &std::path::Path, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::prepare_tls(name, size, certs, extra);
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_ready();
        cluster
    }

    /// [`Cluster::start_tls`]'s members chosen and none started (a test may give one of them
    /// other certificates first).
    pub fn prepare_tls(name: &str, size: usize, certs: &std::path::Path, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::prepare_members(name, vec![Vec::new(); size], extra);
        for member in &mut cluster.members {
            member.certs = Some(certs.to_path_buf());
        }
        cluster
    }

    /// A cluster's members chosen (names, ports, data dirs) and none started: to put something
    /// in their data dirs first (a restored snapshot).
    pub fn prepare(name: &str, size: usize) -> Cluster {
        Cluster::prepare_members(name, vec![Vec::new(); size], &[])
    }

    fn prepare_members(name: &str, args: Vec<Vec<String>>, extra: &[&str]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("keel-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let members = args
            .into_iter()
            .enumerate()
            .map(|(i, args)| Member {
                name: format!("m{}", i + 1),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                args,
                spare: false,
                certs: None,
            })
            .collect();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Cluster { dir, members, token: format!("keel-it-{name}"), extra }
    }

    /// The token the members start with (`--initial-cluster-token`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Member `i`'s `--data-dir`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.members[i].name)
    }

    /// `--initial-cluster` as the members start with it.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .filter(|m| !m.spare)
            .map(|m| format!("{}={}://127.0.0.1:{}", m.name, m.scheme(), m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again) with etcd's flags on its data dir.
    pub fn spawn(&mut self, i: usize) {
        self.spawn_with_state(i, "new");
    }

    /// Adds a member slot (not started): for `MemberAdd`, then [`Cluster::spawn_joining`].
    pub fn add_slot(&mut self) -> usize {
        let name = format!("m{}", self.members.len() + 1);
        self.members.push(Member {
            name,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            args: Vec::new(),
            spare: false,
            certs: self.members.first().and_then(|m| m.certs.clone()),
        });
        self.members.len() - 1
    }

    /// Adds and starts a spare (`--spare`, with `args` too): it joins the membership protocol
    /// and holds nothing until the leader makes it replace a dead voter.
    pub fn spawn_spare(&mut self, args: &[&str]) -> usize {
        let i = self.add_slot();
        self.members[i].name = format!("s{}", i + 1);
        self.members[i].spare = true;
        self.members[i].args = std::iter::once("--spare").chain(args.iter().copied()).map(String::from).collect();
        self.spawn_with_state(i, "existing");
        i
    }

    /// Starts member `i` to join the running cluster (`--initial-cluster-state existing`).
    pub fn spawn_joining(&mut self, i: usize) {
        self.spawn_with_state(i, "existing");
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.members[i].scheme(), self.members[i].peer_port)
    }

    /// `keel server` for member `i` with etcd's flags, its data dir and `token` (the cluster's
    /// own, or another to see it refused); not started.
    pub fn server_command(&self, i: usize, token: &str) -> Command {
        let member = &self.members[i];
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .arg("server")
            .args(["--name", &member.name])
            .args(["--data-dir", &self.data_dir(i).to_string_lossy()])
            .args(["--listen-client-urls", &member.endpoint()])
            .args(["--advertise-client-urls", &member.endpoint()])
            .args(["--listen-peer-urls", &self.peer_url(i)])
            .args(["--initial-advertise-peer-urls", &self.peer_url(i)])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-token", token]);
        if let Some(certs) = &member.certs {
            let file = |name: &str| certs.join(name).to_string_lossy().into_owned();
            let (ca, cert, key) = (file("ca.pem"), file("member.pem"), file("member-key.pem"));
            command
                .args(["--cert-file", &cert, "--key-file", &key, "--trusted-ca-file", &ca, "--client-cert-auth"])
                .args(["--peer-cert-file", &cert, "--peer-key-file", &key, "--peer-trusted-ca-file", &ca])
                .arg("--peer-client-cert-auth");
        }
        command
    }

    fn spawn_with_state(&mut self, i: usize, state: &str) {
        let member = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", member.name)))
            .expect("log file");
        let child = self
            .server_command(i, &self.token)
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_MS.to_string()])
            .args(&self.extra)
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start keel server");
        self.members[i].child = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM, as an operator stops a member: it may finish and close its files.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let pid = child.id().to_string();
            let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
            assert!(sent.success(), "kill -TERM {pid}");
            child.wait().expect("reap");
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().filter(|m| m.child.is_some()).map(Member::endpoint).collect()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.members[i].name))).unwrap_or_default()
    }

    /// Waits until every running member reports a leader.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, member) in self.members.iter().enumerate().filter(|(_, m)| m.child.is_some()) {
            while !self.is_healthy(i) {
                assert!(
                    Instant::now() < deadline,
                    "member {} never became healthy; log:\n{}",
                    member.name,
                    self.log(i)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Whether member `i` answers `/health` with a leader (over TLS, as root, when it has certs).
    pub fn is_healthy(&self, i: usize) -> bool {
        let member = &self.members[i];
        let Some(certs) = &member.certs else { return healthy(member.client_port) };
        let file = |name: &str| certs.join(name).to_string_lossy().into_owned();
        let answer = Command::new("curl")
            .args(["-s", "--max-time", "2", "--cacert", &file("ca.pem")])
            .args(["--cert", &file("client-root.pem"), "--key", &file("client-root-key.pem")])
            .arg(format!("{}/health", member.endpoint()))
            .output();
        answer.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\""))
    }

    pub async fn client(&self, i: usize) -> Client {
        Client::connect([self.members[i].endpoint()], None).await.expect("connect")
    }

    /// The index of the member every running member agrees leads.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut leaders = Vec::new();
            for (i, member) in self.members.iter().enumerate().filter(|(_, m)| m.child.is_some()) {
                if let Ok(mut client) = Client::connect([member.endpoint()], None).await {
                    if let Ok(status) = client.status().await {
                        if member.spare && status.leader() == 0 {
                            continue; // a spare not added yet knows no leader
                        }
                        leaders.push((i, status.leader(), status.header().map_or(0, |h| h.member_id())));
                    }
                }
            }
            let ids: Vec<u64> = leaders.iter().map(|l| l.1).collect();
            if !ids.is_empty() && ids[0] != 0 && ids.iter().all(|&id| id == ids[0]) {
                if let Some(&(i, _, _)) = leaders.iter().find(|l| l.2 == ids[0]) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn member_id(&self, i: usize) -> u64 {
        let mut client = self.client(i).await;
        client.status().await.expect("status").header().expect("header").member_id()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A plain HTTP GET on a member's client port: the body, if it answered 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_any(port, path).and_then(|(status, body)| (status == 200).then_some(body))
}

/// A GET's status and body, whatever the status.
pub fn http_get_any(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A metric's value from a member's `/metrics`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let body = http_get(port, "/metrics")?;
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// Retries `op` until it succeeds (clients retry through elections too); panics after 20 s.
pub async fn eventually<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match op().await {
            Ok(value) => return value,
            Err(error) => {
                assert!(Instant::now() < deadline, "{what}: still failing after 20 s: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// `etcdctl` (3.4, API v3) against `endpoint`.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("run etcdctl (scripts/install-deps.sh etcd installs it)")
}

/// A Range of `key` carrying `token` as etcd's clients send it after logging in (over TLS with
/// the `nobody` client certificate of `certs`, whose name is no user, when given): the value.
/// A refusal comes back as `InvalidArgs` with the server's message.
pub async fn range_with_token(
    endpoint: &str,
    certs: Option<&std::path::Path>,
    key: &str,
    token: String,
) -> Result<Vec<u8>, etcd_client::Error> {
    use keel_api::etcdserverpb::{kv_client::KvClient, RangeRequest};
    use keel_api::tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let failed = |e: &dyn std::fmt::Display| etcd_client::Error::InvalidArgs(e.to_string());
    let mut channel = Endpoint::from_shared(endpoint.to_string()).map_err(|e| failed(&e))?;
    if let Some(certs) = certs {
        let read = |name: &str| std::fs::read(certs.join(name)).expect("read a certificate file");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(read("client-nobody.pem"), read("client-nobody-key.pem")));
        channel = channel.tls_config(tls).map_err(|e| failed(&e))?;
    }
    let channel = channel.connect().await.map_err(|e| failed(&e))?;
    let mut request =
        keel_api::tonic::Request::new(RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() });
    request.metadata_mut().insert("token", token.parse().map_err(|e| failed(&e))?);
    let response = KvClient::new(channel).range(request).await.map_err(|status| failed(&status.message()))?;
    let kv = response.into_inner().kvs.into_iter().next();
    kv.map(|kv| kv.value).ok_or_else(|| failed(&"no such key"))
}

/// The server's message in a refusal (a gRPC status's, or what a helper here put in
/// `InvalidArgs`), for comparing with etcd's error texts.
pub fn message(error: etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        etcd_client::Error::InvalidArgs(text) => text,
        other => other.to_string(),
    }
}
