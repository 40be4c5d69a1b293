//! `keel bench kv`: a closed-loop load generator for any etcd v3 endpoint (keel or etcd), so
//! both are measured by the same client with the same settings in the same run.
//!
//! Like etcd's `benchmark` tool: `--clients` concurrent requesters share `--conns` gRPC
//! connections spread over the endpoints; each requester sends its next request when the last
//! one is answered. Keys are drawn uniformly from `--keys`; values are `--value-bytes` long.
//! Prints one line: operations, qps, and latency percentiles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use keel_api::etcdserverpb::{self as pb, auth_client::AuthClient, kv_client::KvClient};
use keel_api::tonic::metadata::{Ascii, MetadataValue};
use keel_api::tonic::transport::{Channel, Endpoint};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Op {
    Put,
    /// Linearizable range of one key.
    Get,
    /// Serializable range of one key.
    GetSerializable,
    /// Compare-and-set on one key: compare its value, put on success.
    Txn,
    /// 80 % linearizable get, 20 % put.
    Mixed,
    /// Every key once (client `c` puts keys `c`, `c + clients`, ...), then stop: how a store is
    /// filled before a restart is timed. `--seconds` is ignored.
    Load,
    /// A new connection per request (TCP, the TLS handshake with `--cacert`, HTTP/2), one
    /// serializable range on it, then close: what connecting costs, in connections/s.
    Connect,
}

#[derive(clap::Args, Debug)]
pub struct Options {
    /// The members to load, comma-separated (host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// What each request does.
    #[arg(long, value_enum, default_value_t = Op::Put)]
    op: Op,
    /// Concurrent requesters, each waiting for its answer before the next request.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    clients: u64,
    /// gRPC connections shared by the clients (0: one per endpoint, as many as clients at most).
    #[arg(long, default_value_t = 0)]
    conns: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keys drawn from, uniformly.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// `name:password`: log in first (etcd's Authenticate) and send the token with every
    /// request, as `etcdctl --user` does — to measure a cluster with auth on.
    #[arg(long)]
    user: Option<String>,
    /// Dial with TLS, verifying the members' certificates against this CA (as etcdctl's
    /// `--cacert`); endpoints without a scheme become https://.
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// The client certificate to present (with `--key`), for members that demand one.
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// The server processes (pids, comma-separated) whose CPU time (user + system, from
    /// /proc) during the timed part is reported per 1,000 operations: on two cores the
    /// ceiling is CPU per operation.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
}

/// User + system CPU seconds the processes `pids` have used so far (those gone count 0).
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ: fixed at 100 on Linux for /proc's clock ticks
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces), from the last ')'.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_second)
        })
        .sum()
}

impl Options {
    fn checked(mut self) -> Options {
        if self.conns == 0 {
            // etcd's benchmark default is one connection; several spread load over the endpoints.
            self.conns = self.endpoints.len().min(self.clients as usize);
        }
        self
    }
}

/// xorshift64*: the key sequence needs no quality, only speed and no shared state.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `message` with the login token, if there is one.
fn with_token<T>(message: T, token: Option<&MetadataValue<Ascii>>) -> keel_api::tonic::Request<T> {
    let mut request = keel_api::tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("token", token.clone());
    }
    request
}

/// How to dial: in the clear, or with TLS as `--cacert/--cert/--key` say.
#[derive(Clone)]
struct Dial {
    tls: Option<keel_api::tonic::transport::ClientTlsConfig>,
}

impl Dial {
    fn new(opts: &Options) -> anyhow::Result<Dial> {
        use keel_api::tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let Some(ca) = &opts.cacert else { return Ok(Dial { tls: None }) };
        let read = |path: &std::path::Path| std::fs::read(path).with_context(|| format!("read {}", path.display()));
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&opts.cert, &opts.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Dial { tls: Some(tls) })
    }

    async fn connect(&self, endpoint: &str) -> anyhow::Result<Channel> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = if endpoint.contains("://") { endpoint.to_string() } else { format!("{scheme}://{endpoint}") };
        let mut endpoint = Endpoint::from_shared(uri.clone())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        endpoint.connect().await.with_context(|| format!("connect to {uri}"))
    }
}

fn key(n: u64) -> Vec<u8> {
    format!("bench/{n:08}").into_bytes()
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let opts = opts.checked();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(bench(opts))
}

async fn bench(opts: Options) -> anyhow::Result<()> {
    let dial = Dial::new(&opts)?;
    let mut channels = Vec::new();
    for i in 0..opts.conns {
        channels.push(dial.connect(&opts.endpoints[i % opts.endpoints.len()]).await?);
    }
    let token = match &opts.user {
        None => None,
        Some(user) => {
            let (name, password) = user.split_once(':').context("--user takes name:password")?;
            let request = pb::AuthenticateRequest { name: name.into(), password: password.into() };
            let login = AuthClient::new(channels[0].clone()).authenticate(request).await.context("log in")?;
            Some(login.into_inner().token.parse::<MetadataValue<Ascii>>().context("the token")?)
        }
    };
    let value = vec![b'v'; opts.value_bytes];
    // Reads need something to read: fill every key once (not timed).
    if matches!(opts.op, Op::Get | Op::GetSerializable | Op::Txn | Op::Mixed | Op::Connect) {
        let mut client = KvClient::new(channels[0].clone());
        for n in 0..opts.keys {
            let put = pb::PutRequest { key: key(n), value: value.clone(), ..Default::default() };
            client.put(with_token(put, token.as_ref())).await?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_seconds(&opts.server_pids);
    let own_cpu_before = cpu_seconds(&[std::process::id()]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.clients {
        let channel: Channel = channels[c as usize % channels.len()].clone();
        let (stop, value, op, keys, clients) = (stop.clone(), value.clone(), opts.op, opts.keys, opts.clients);
        let token = token.clone();
        let (dial, endpoint) = (dial.clone(), opts.endpoints[c as usize % opts.endpoints.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut client = KvClient::new(channel);
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            let mut next_load = c;
            while !stop.load(Ordering::Relaxed) {
                let k = match op {
                    Op::Load if next_load >= keys => break,
                    Op::Load => {
                        next_load += clients;
                        key(next_load - clients)
                    }
                    _ => key(rng.next() % keys),
                };
                let op = match op {
                    Op::Load => Op::Put,
                    Op::Mixed if rng.next().is_multiple_of(5) => Op::Put,
                    Op::Mixed => Op::Get,
                    other => other,
                };
                let sent = Instant::now();
                let result = match op {
                    Op::Put | Op::Load => client
                        .put(with_token(
                            pb::PutRequest { key: k, value: value.clone(), ..Default::default() },
                            token.as_ref(),
                        ))
                        .await
                        .map(drop),
                    Op::Connect => match dial.connect(&endpoint).await {
                        Ok(fresh) => KvClient::new(fresh)
                            .range(with_token(
                                pb::RangeRequest { key: k, serializable: true, ..Default::default() },
                                token.as_ref(),
                            ))
                            .await
                            .map(drop),
                        Err(error) => Err(keel_api::tonic::Status::unavailable(error.to_string())),
                    },
                    Op::Get | Op::GetSerializable => client
                        .range(with_token(
                            pb::RangeRequest { key: k, serializable: op == Op::GetSerializable, ..Default::default() },
                            token.as_ref(),
                        ))
                        .await
                        .map(drop),
                    Op::Txn | Op::Mixed => {
                        let compare = pb::Compare {
                            key: k.clone(),
                            target: pb::compare::CompareTarget::Value as i32,
                            result: pb::compare::CompareResult::Equal as i32,
                            target_union: Some(pb::compare::TargetUnion::Value(value.clone())),
                            ..Default::default()
                        };
                        let put = pb::RequestOp {
                            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                                key: k,
                                value: value.clone(),
                                ..Default::default()
                            })),
                        };
                        client
                            .txn(with_token(
                                pb::TxnRequest { compare: vec![compare], success: vec![put], failure: Vec::new() },
                                token.as_ref(),
                            ))
                            .await
                            .map(drop)
                    }
                };
                match result {
                    Ok(()) => histogram.saturating_record(sent.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (histogram, errors)
        }));
    }
    if opts.op != Op::Load {
        tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for task in tasks {
        let (histogram, task_errors) = task.await?;
        total.add(&histogram)?;
        errors += task_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = if opts.server_pids.is_empty() {
        String::new()
    } else {
        let seconds = cpu_seconds(&opts.server_pids) - cpu_before;
        // The load generator shares the two cores: its own cost per operation bounds how far
        // the servers' difference can show in qps.
        let own = cpu_seconds(&[std::process::id()]) - own_cpu_before;
        let per_kop = |s: f64| s * 1e6 / total.len().max(1) as f64;
        format!(
            " server_cpu_s={seconds:.1} cpu_ms_per_kop={:.0} client_cpu_ms_per_kop={:.0}",
            per_kop(seconds),
            per_kop(own)
        )
    };
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "op={:?} clients={} conns={} ops={} errors={} qps={:.0} p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms{cpu}",
        opts.op,
        opts.clients,
        opts.conns,
        total.len(),
        errors,
        total.len() as f64 / elapsed,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        total.max() as f64 / 1000.0
    );
    Ok(())
}
