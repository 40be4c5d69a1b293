//! `keel-sim`: run simulation seeds, replay one with a trace, or run with a planted bug.
//!
//! ```text
//! keel-sim --seeds N [--start S] [--plant NAME] [--threads T]
//! keel-sim --seed S [--plant NAME]          # replay one seed with a readable trace
//! keel-sim --list-plants                    # (built with --features planted-bugs)
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use keel_raft::Plant;
use keel_sim::{run_seed, RunReport};

struct Args {
    seeds: u64,
    start: u64,
    replay: Option<u64>,
    plant: Option<Plant>,
    list_plants: bool,
    threads: usize,
    /// Throughput benchmark: simulated seconds of fault-free write load.
    bench_seconds: Option<u64>,
    bench_clients: u64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seeds: 100,
        start: 0,
        replay: None,
        plant: None,
        list_plants: false,
        bench_seconds: None,
        bench_clients: 64,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number =
            |text: String, name: &str| text.parse::<u64>().map_err(|_| format!("{name}: not a number: {text}"));
        match flag.as_str() {
            "--seeds" => args.seeds = number(value("--seeds")?, "--seeds")?,
            "--start" => args.start = number(value("--start")?, "--start")?,
            "--seed" => args.replay = Some(number(value("--seed")?, "--seed")?),
            "--threads" => args.threads = number(value("--threads")?, "--threads")?.max(1) as usize,
            "--plant" => {
                let name = value("--plant")?;
                if !cfg!(feature = "planted-bugs") {
                    return Err("--plant needs a build with --features planted-bugs".into());
                }
                args.plant =
                    Some(Plant::from_name(&name).ok_or_else(|| format!("unknown plant {name}; see --list-plants"))?);
            }
            "--list-plants" => args.list_plants = true,
            "--bench" => args.bench_seconds = Some(number(value("--bench")?, "--bench")?),
            "--clients" => args.bench_clients = number(value("--clients")?, "--clients")?.max(1),
            "--help" | "-h" => {
                return Err(
                    "usage: keel-sim --seeds N [--start S] [--threads T] [--plant NAME] | --seed S | --list-plants"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(text) => {
            eprintln!("keel-sim: {text}");
            return ExitCode::from(2);
        }
    };
    if args.list_plants {
        if !cfg!(feature = "planted-bugs") {
            eprintln!("keel-sim: built without --features planted-bugs: no plants");
            return ExitCode::from(2);
        }
        for plant in Plant::ALL {
            println!("{}", plant.name());
        }
        return ExitCode::SUCCESS;
    }
    if let Some(seconds) = args.bench_seconds {
        return bench(seconds, args.bench_clients);
    }
    if let Some(seed) = args.replay {
        let report = run_seed(seed, args.plant, true);
        print_violations(&report);
        println!(
            "seed={} steps={} faults={} ops={} committed={} suspicions={} slow_hand_offs={} kills={} healing_steps={} trace_hash={:016x} violations={}",
            seed,
            report.steps,
            report.faults,
            report.ops,
            report.committed,
            report.suspicions,
            report.slow_hand_offs,
            report.kills,
            report.healing_steps,
            report.trace_hash,
            report.violations.len()
        );
        return if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    run_many(&args)
}

/// How fast the core commits: one group of 3 members, closed-loop writers, no faults, every
/// invariant still checked. Reports entries committed per wall-clock second of simulation.
fn bench(seconds: u64, clients: u64) -> ExitCode {
    let swarm = keel_sim::Swarm::benchmark(clients, seconds * 1_000);
    let started = Instant::now();
    let report =
        keel_sim::Cluster::new(keel_sim::RunOptions { seed: 1, plant: None, trace: false, swarm: Some(swarm) }).run();
    let wall = started.elapsed().as_secs_f64();
    print_violations(&report);
    println!(
        "bench: clients={clients} simulated={seconds}s committed={} ops={} wall={wall:.2}s committed_per_wall_second={:.0} committed_per_simulated_second={:.0} violations={}",
        report.committed,
        report.ops,
        report.committed as f64 / wall,
        report.committed as f64 / seconds as f64,
        report.violations.len()
    );
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_violations(report: &RunReport) {
    for violation in &report.violations {
        println!("VIOLATION seed={}: {violation}", report.seed);
    }
}

fn run_many(args: &Args) -> ExitCode {
    let started = Instant::now();
    let next = AtomicU64::new(args.start);
    let end = args.start + args.seeds;
    #[derive(Default)]
    struct Totals {
        steps: u64,
        faults: u64,
        ops: u64,
        violations: u64,
        committed: u64,
        suspicions: u64,
        slow_hand_offs: u64,
        kills: u64,
        healing_steps: u64,
        failed: Vec<u64>,
    }
    let totals = Mutex::new(Totals::default());
    std::thread::scope(|scope| {
        for _ in 0..args.threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let report = run_seed(seed, args.plant, false);
                let mut t = totals.lock().expect("no panics while holding the lock");
                t.steps += report.steps;
                t.faults += report.faults;
                t.ops += report.ops;
                t.violations += report.violations.len() as u64;
                t.committed += report.committed;
                t.suspicions += report.suspicions;
                t.slow_hand_offs += report.slow_hand_offs;
                t.kills += report.kills;
                t.healing_steps += report.healing_steps;
                if !report.violations.is_empty() {
                    t.failed.push(seed);
                    print_violations(&report);
                    println!("  replay: cargo run --release -p keel-sim -- --seed {seed}");
                }
            });
        }
    });
    let Totals { steps, faults, ops, violations, committed, suspicions, slow_hand_offs, kills, healing_steps, failed } =
        totals.into_inner().expect("threads joined");
    let elapsed = started.elapsed().as_secs_f64();
    if !failed.is_empty() {
        let mut failed = failed;
        failed.sort_unstable();
        println!("failing seeds: {failed:?}");
    }
    println!(
        "seeds={} steps={steps} faults={faults} ops={ops} committed={committed} suspicions={suspicions} slow_hand_offs={slow_hand_offs} kills={kills} healing_steps={healing_steps} violations={violations} elapsed={elapsed:.1}s",
        args.seeds
    );
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
