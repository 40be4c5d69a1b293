//! `keel` — the command-line entry point (clap: `--help` on every command, `--version`, shell
//! completions).
//!
//! - `keel server [etcd flags]`: one member, from exactly the flags one would give etcd (parsed
//!   by keel-server as etcd parses them: `-flag`, `--flag=value`, `ETCD_`-style variables).
//! - `keel playground`: a local 3-member cluster on etcd's usual ports.
//! - `keel snapshot status|restore`: what a saved snapshot holds; a new cluster's data dir from it.
//! - `keel bench kv`: a closed-loop etcd v3 load generator (for keel and etcd alike).
//! - `keel bench failover`: leader kill -9 (or SIGSTOP) to first write, over many trials.
//! - `keel bench fail-slow`: a leader's disk turns slow; time to flag it and move leadership.
//! - `keel bench heal`: kill -9 of a voter to three voters again, with a spare.
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
mod certs;
mod chaos;
mod local_cluster;
mod playground;
mod snapshot;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Every member allocates per request (frames, entries, records, index keys) on many threads;
/// glibc's malloc spent 7-9 % of a put load's samples in its own bookkeeping.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A fault-tolerant distributed key-value and coordination store that speaks etcd's v3 API.
#[derive(Parser, Debug)]
#[command(name = "keel", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one member, from the flags one would give etcd (`keel server --help` lists them).
    #[command(disable_help_flag = true)]
    Server {
        /// etcd's flags: --name, --data-dir, --listen-client-urls, --initial-cluster, ...
        #[arg(allow_hyphen_values = true, trailing_var_arg = true, num_args = 0..)]
        flags: Vec<String>,
    },
    /// Run a local 3-member cluster on etcd's usual ports (2379, 22379, 32379).
    Playground(playground::Options),
    /// List the members and spares the membership protocol knows, with their liveness.
    Spares(playground::SparesOptions),
    /// Describe a saved snapshot, or restore one into a new cluster's data dir.
    #[command(subcommand)]
    Snapshot(snapshot::Command),
    /// Measure keel (or etcd) on this machine.
    #[command(subcommand)]
    Bench(Bench),
    /// Inject faults into a local cluster of real processes and check the history.
    Chaos(chaos::Options),
    /// Write a throwaway CA with member and client certificates (for TLS tests and trials).
    Certs(certs::Options),
    /// Print a completion script for a shell (e.g. `keel completions bash > /etc/bash_completion.d/keel`).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// A closed-loop etcd v3 load: qps and latency percentiles (keel and etcd alike).
    Kv(bench_kv::Options),
    /// Leader kill -9 (or SIGSTOP/SIGTERM) to the first acknowledged write, over many trials.
    Failover(bench_failover::Options),
    /// kill -9 of a voter to three voters again with a spare, with a writer running.
    Heal(bench_heal::Options),
    /// A leader's disk turns slow: time to flag it and move leadership.
    FailSlow(bench_fail_slow::Options),
    /// This disk and the WAL: raw fsyncs, appends, group commit.
    Wal(bench_wal::Options),
    /// The state machine's load rate, footprint and restart time.
    Mvcc(bench_mvcc::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server { flags } => server(&flags),
        Command::Playground(options) => {
            init_logging();
            playground::run(options)
        }
        Command::Spares(options) => playground::list_spares(options),
        Command::Snapshot(command) => snapshot::run(command),
        Command::Bench(Bench::Kv(options)) => bench_kv::run(options),
        Command::Bench(Bench::Failover(options)) => bench_failover::run(options),
        Command::Bench(Bench::Heal(options)) => bench_heal::run(options),
        Command::Bench(Bench::FailSlow(options)) => bench_fail_slow::run(options),
        Command::Bench(Bench::Wal(options)) => bench_wal::run(options),
        Command::Bench(Bench::Mvcc(options)) => bench_mvcc::run(options),
        Command::Chaos(options) => chaos::run(options),
        Command::Certs(options) => certs::run(options),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "keel", &mut std::io::stdout());
            Ok(())
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_flags_pass_through_untouched() {
        let cli = Cli::try_parse_from(["keel", "server", "-name", "m1", "--data-dir=d", "--help"]).expect("parses");
        let Command::Server { flags } = cli.command else { panic!("not server") };
        assert_eq!(flags, ["-name", "m1", "--data-dir=d", "--help"]);
    }

    #[test]
    fn every_command_has_help_and_errors_name_the_flag() {
        for path in [
            &["keel", "bench", "kv", "--help"][..],
            &["keel", "snapshot", "restore", "--help"],
            &["keel", "chaos", "--help"],
            &["keel", "playground", "--help"],
        ] {
            let error = Cli::try_parse_from(path).expect_err("help exits");
            assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp, "{path:?}");
        }
        let error = Cli::try_parse_from(["keel", "bench", "kv", "--clients", "many"]).expect_err("not a number");
        assert!(error.to_string().contains("--clients"), "{error}");
    }
}
