//! The SWIM simulator's figures: `cargo run --release -p keel-membership --example swim-sim -- all`.
//!
//! Each scenario runs many seeds in virtual time and prints one summary line. Times are in
//! seconds of virtual time; "periods" are protocol periods.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use keel_membership::sim::{self, Outcome, Scenario};
use keel_membership::SwimConfig;

struct Args {
    scenario: String,
    seeds: u64,
    start: u64,
    threads: usize,
    members: Option<usize>,
    loss: Option<f64>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args { scenario: "all".into(), seeds: 1_000, start: 0, threads: 2, members: None, loss: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--seeds" => args.seeds = value("--seeds")?.parse().map_err(|e| format!("--seeds: {e}"))?,
            "--start" => args.start = value("--start")?.parse().map_err(|e| format!("--start: {e}"))?,
            "--threads" => args.threads = value("--threads")?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--loss" => args.loss = Some(value("--loss")?.parse().map_err(|e| format!("--loss: {e}"))?),
            "--members" => args.members = Some(value("--members")?.parse().map_err(|e| format!("--members: {e}"))?),
            "-h" | "--help" => {
                return Err("usage: swim-sim [all|detect|detect-fast|false-dead|stall|messages|news|partition] \
                            [--seeds N] [--start S] [--threads T] [--members N] [--loss 0.1]"
                    .into())
            }
            other if !other.starts_with('-') => args.scenario = other.to_string(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// Runs `seeds` seeds of `scenario` over `threads` threads; outcomes in seed order.
fn run_seeds(scenario: &Scenario, args: &Args) -> Vec<Outcome> {
    let next = AtomicU64::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.seeds {
                    break;
                }
                let outcome = sim::run(scenario, args.start + i);
                results.lock().expect("no panics while held").push((i, outcome));
            });
        }
    });
    let mut results = results.into_inner().expect("threads done");
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

/// The description every update is counted with in byte figures: a server's name, peer and
/// client URLs and zone.
const DESCRIPTION_BYTES: u64 = 64;

/// Bytes per member per period over all outcomes.
fn bytes_per_member_period(outcomes: &[Outcome]) -> f64 {
    let periods: f64 = outcomes.iter().map(|o| o.member_periods).sum();
    let bytes: f64 = outcomes.iter().map(|o| o.bytes_per_member_period(DESCRIPTION_BYTES) * o.member_periods).sum();
    bytes / periods.max(1.0)
}

fn secs(us: Option<u64>) -> String {
    us.map_or("-".into(), |us| format!("{:.2}", us as f64 / 1e6))
}

fn percentiles(mut values: Vec<u64>) -> String {
    format!(
        "p50={}s p99={}s max={}s",
        secs(sim::quantile(&mut values, 0.5)),
        secs(sim::quantile(&mut values, 0.99)),
        secs(sim::quantile(&mut values, 1.0))
    )
}

fn detect(args: &Args, name: &str, cfg: SwimConfig, members: usize) {
    let mut scenario = Scenario::new(members, cfg);
    scenario.crash = true;
    let outcomes = run_seeds(&scenario, args);
    let undetected = outcomes.iter().filter(|o| o.detection_us.is_none()).count();
    let detection: Vec<u64> = outcomes.iter().filter_map(|o| o.detection_us).collect();
    let first: Vec<u64> = outcomes.iter().filter_map(|o| o.first_suspicion_us).collect();
    let false_dead: u64 = outcomes.iter().map(|o| o.false_dead).sum();
    println!(
        "swim {name} n={members} seeds={} all-dead {} first-suspicion {} undetected={undetected} false_dead={false_dead}",
        args.seeds,
        percentiles(detection),
        percentiles(first)
    );
}

fn false_dead(args: &Args, members: usize, loss: f64) {
    let mut scenario = Scenario::new(members, SwimConfig::lan());
    scenario.loss = loss;
    scenario.run_us = 120 * scenario.swim.probe_interval_us;
    let outcomes = run_seeds(&scenario, args);
    let false_dead: u64 = outcomes.iter().map(|o| o.false_dead).sum();
    let marks: u64 = outcomes.iter().map(|o| o.false_dead_marks).sum();
    let periods: f64 = outcomes.iter().map(|o| o.member_periods).sum();
    let messages: u64 = outcomes.iter().map(|o| o.messages_total()).sum();
    println!(
        "swim false-dead n={members} loss={:.0}% seeds={} member-periods={periods:.0} false_dead={false_dead} marks={marks} msgs/member/period={:.3} bytes/member/period={:.0}",
        loss * 100.0,
        args.seeds,
        messages as f64 / periods.max(1.0),
        bytes_per_member_period(&outcomes)
    );
}

fn stall(args: &Args, members: usize) {
    for local_health in [true, false] {
        let mut cfg = SwimConfig::lan();
        cfg.local_health = local_health;
        let mut scenario = Scenario::new(members, cfg);
        scenario.stall_fraction = 0.1;
        scenario.run_us = 120 * scenario.swim.probe_interval_us;
        let outcomes = run_seeds(&scenario, args);
        let false_dead: u64 = outcomes.iter().map(|o| o.false_dead).sum();
        let never: u64 = outcomes.iter().map(|o| o.false_dead_never_stalled).sum();
        let responsive: u64 = outcomes.iter().map(|o| o.false_dead_responsive).sum();
        let marks: u64 = outcomes.iter().map(|o| o.false_dead_marks).sum();
        let stalls: u64 = outcomes.iter().map(|o| o.stalls).sum();
        println!(
            "swim stall n={members} stalling=10% (0.5-3 s) local_health={local_health} seeds={} stalls={stalls} false_dead={false_dead} of_responsive={responsive} among_never_stalling={never} marks={marks}",
            args.seeds
        );
    }
}

fn messages(args: &Args) {
    for members in [10, 100, 1_000] {
        let mut scenario = Scenario::new(members, SwimConfig::lan());
        scenario.run_us = 60 * scenario.swim.probe_interval_us;
        let seeds = Args { scenario: args.scenario.clone(), seeds: args.seeds.min(20), ..*args };
        let outcomes = run_seeds(&scenario, &seeds);
        let periods: f64 = outcomes.iter().map(|o| o.member_periods).sum();
        let messages: u64 = outcomes.iter().map(|o| o.messages_total()).sum();
        println!(
            "swim messages n={members} loss=0% seeds={} msgs/member/period={:.3} bytes/member/period={:.0}",
            seeds.seeds,
            messages as f64 / periods.max(1.0),
            bytes_per_member_period(&outcomes)
        );
    }
}

fn news(args: &Args, members: usize, loss: f64) {
    let mut scenario = Scenario::new(members, SwimConfig::lan());
    scenario.news = true;
    scenario.loss = loss;
    let period = scenario.swim.probe_interval_us;
    let outcomes = run_seeds(&scenario, args);
    let missing = outcomes.iter().filter(|o| o.news_spread_us.is_none()).count();
    let mut rounds: Vec<u64> = outcomes.iter().filter_map(|o| o.news_spread_us).collect();
    let p99 = sim::quantile(&mut rounds, 0.99).map_or(f64::NAN, |us| us as f64 / period as f64);
    let max = sim::quantile(&mut rounds, 1.0).map_or(f64::NAN, |us| us as f64 / period as f64);
    println!(
        "swim news n={members} loss={:.0}% seeds={} rounds p99={p99:.2} max={max:.2} never={missing} (anti-entropy interval {} rounds) msgs/member/period={:.3} bytes/member/period={:.0}",
        loss * 100.0,
        args.seeds,
        scenario.swim.sync_interval_us / period,
        outcomes.iter().map(|o| o.messages_total()).sum::<u64>() as f64
            / outcomes.iter().map(|o| o.member_periods).sum::<f64>().max(1.0),
        bytes_per_member_period(&outcomes)
    );
}

fn partition(args: &Args, members: usize) {
    let mut scenario = Scenario::new(members, SwimConfig::lan());
    scenario.partition =
        Some(sim::Partition { members: members * 3 / 10, length_us: 30 * scenario.swim.probe_interval_us });
    scenario.run_us = 150 * scenario.swim.probe_interval_us;
    let outcomes = run_seeds(&scenario, args);
    let split: usize = outcomes.iter().filter(|o| o.partition_declared_dead).count();
    let never = outcomes.iter().filter(|o| o.rejoined_us.is_none()).count();
    let rejoined: Vec<u64> = outcomes.iter().filter_map(|o| o.rejoined_us).collect();
    println!(
        "swim partition n={members} cut_off=30% for 30 periods seeds={} declared_dead_across={split} rejoined {} never={never} (reconnect interval {} periods)",
        args.seeds,
        percentiles(rejoined),
        scenario.swim.reconnect_interval_us / scenario.swim.probe_interval_us
    );
}

fn main() {
    let args = match parse() {
        Ok(args) => args,
        Err(why) => {
            eprintln!("{why}");
            std::process::exit(2);
        }
    };
    let all = args.scenario == "all";
    let is = |name: &str| all || args.scenario == name;
    if is("detect") {
        for members in args.members.map_or(vec![100, 1_000], |n| vec![n]) {
            detect(&args, "detect(lan)", SwimConfig::lan(), members);
        }
    }
    if is("detect-fast") {
        detect(&args, "detect(fast)", SwimConfig::fast(), args.members.unwrap_or(100));
    }
    if is("false-dead") {
        false_dead(&args, args.members.unwrap_or(100), args.loss.unwrap_or(0.05));
    }
    if is("stall") {
        stall(&args, args.members.unwrap_or(100));
    }
    if is("messages") {
        messages(&args);
    }
    if is("partition") {
        partition(&args, args.members.unwrap_or(100));
    }
    if is("news") {
        for loss in args.loss.map_or(vec![0.1, 0.3], |loss| vec![loss]) {
            news(&args, args.members.unwrap_or(1_000), loss);
        }
    }
}
