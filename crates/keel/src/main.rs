//! `keel` — the command-line entry point.
//!
//! - `keel server [etcd flags]`: one member, from exactly the flags one would give etcd.
//! - `keel playground`: a local 3-member cluster on etcd's usual ports.
//! - `keel bench kv`: a closed-loop etcd v3 load generator (for keel and etcd alike).
//! - `keel bench failover`: leader kill -9 (or SIGSTOP) to first write, over many trials.
//! - `keel bench fail-slow`: a leader's disk turns slow; time to flag it and move leadership.
//! - `keel chaos`: faults on a local cluster of real processes, the history checked, and the
//!   detection, recovery and availability measured.
//! - `keel bench wal` (this disk and the WAL), `keel bench mvcc` (the state machine's footprint
//!   and restart time).

mod bench_fail_slow;
mod bench_failover;
mod bench_heal;
mod bench_kv;
mod bench_mvcc;
mod bench_wal;
mod chaos;
mod local_cluster;
mod playground;
mod snapshot;

use std::io::IsTerminal;
use std::process::ExitCode;

const USAGE: &str = "usage: keel server [etcd flags; see keel server --help]\n       keel playground [--dir DIR] [--spares N]\n       keel spares [--endpoint http://127.0.0.1:2379]\n       keel snapshot status FILE [-w table|json]\n       keel bench kv [--endpoints A,B,C] [--op put|get|get-serializable|txn|mixed|load] [--clients N] [--conns N] [--seconds S] [--keys N] [--value-bytes B]\n       keel bench failover [--trials N] [--sigstop] [--server CMD] [--heartbeat-interval MS] [--election-timeout MS]\n       keel bench heal [--trials N] [--replace-dead-after 2s] [--membership-probe-interval 200ms] [--preload N] [--value-bytes B] [--snapshot-count N]\n       keel chaos [--duration 60s] [--faults kill,pause,partition,slow-disk,crash-all] [--clients N] [--keys N] [--seed S] [--report out.json] [--unsafe-stale-reads]\n       keel bench fail-slow [--trials N] [--clients N] [--warmup-seconds S] [--slowdown X]\n       keel bench wal [--dir DIR] [--seconds S] [--writers N] [--value-bytes B]\n       keel bench mvcc [--dir DIR] [--keys N] [--value-bytes B] [--batch N] [--order sequential|random] [--phase both|load|restart|crash]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => server(&args[1..]),
        Some("playground") => {
            init_logging();
            playground::run(&args[1..])
        }
        Some("chaos") => chaos::run(&args[1..]),
        Some("spares") => playground::list_spares(&args[1..]),
        Some("snapshot") => snapshot::run(&args[1..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("kv") => bench_kv::run(&args[2..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("failover") => bench_failover::run(&args[2..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("heal") => bench_heal::run(&args[2..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("fail-slow") => bench_fail_slow::run(&args[2..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("wal") => bench_wal::run(&args[2..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("mvcc") => bench_mvcc::run(&args[2..]),
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keel: {error:#}");
            // A violation found by `keel chaos` is its verdict, not a failure to run.
            ExitCode::from(if error.downcast_ref::<chaos::Violation>().is_some() { 1 } else { 2 })
        }
    }
}

fn init_logging() {
    let level = match std::env::var("KEEL_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn server(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h" || a == "-help") {
        print!("{}", keel_server::config::help());
        return Ok(());
    }
    let env: std::collections::BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("KEEL_") && k != "KEEL_LOG").collect();
    let config = keel_server::ServerConfig::from_args(args, &env)?;
    init_logging();
    keel_server::server::run(config)?;
    Ok(())
}
