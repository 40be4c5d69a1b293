//! Large generated histories of an atomic store: they must check Ok, and a
//! single corrupted read must be caught. Run with `--release` (or the
//! optimised test profile); elapsed times are printed, not asserted.

mod support;

use std::time::Instant;

use keel_check::{check_operations, CheckResult, KvInput, KvModel, KvOutput, Model};
use support::{assert_well_formed_failure, atomic_history, Op, Rng, Workload};

const MANY_KEYS: Workload =
    Workload { clients: 10, ops_per_client: 10_000, keys: 1_000, hot_percent: 10, hot_keys: 10, unknown_percent: 1 };

fn timed_check(label: &str, ops: &[Op]) -> CheckResult<KvInput, KvOutput> {
    let started = Instant::now();
    let result = check_operations(&KvModel, ops, None);
    eprintln!(
        "{label}: {} ops checked in {:?} -> {}",
        ops.len(),
        started.elapsed(),
        match &result {
            CheckResult::Ok => "Ok".to_string(),
            CheckResult::Illegal { failing, .. } => format!("Illegal ({} failing ops)", failing.len()),
            CheckResult::Unknown => "Unknown".to_string(),
        }
    );
    result
}

/// Index of the partition `KvModel` gives to the key of `ops[index]`.
fn partition_of(ops: &[Op], index: usize) -> usize {
    KvModel.partition(ops).iter().position(|part| part.contains(&index)).expect("every definite op is in a partition")
}

fn assert_caught(ops: &[Op], corrupted: usize, result: &CheckResult<KvInput, KvOutput>) {
    assert_well_formed_failure(ops, result);
    let CheckResult::Illegal { partition, failing, .. } = result else { unreachable!("checked above") };
    assert_eq!(*partition, partition_of(ops, corrupted));
    assert!(failing.contains(&ops[corrupted]), "the corrupted read is not in the failing sub-history: {failing:#?}");
}

#[test]
fn hundred_thousand_ops_over_many_keys_are_linearizable() {
    let ops = atomic_history(1, &MANY_KEYS);
    assert_eq!(ops.len(), 100_000);
    let unknown = ops.iter().filter(|op| op.ret.is_none()).count();
    assert!(unknown > 0, "the workload should contain timed-out ops");
    let result = timed_check("atomic history", &ops);
    assert!(result.is_ok(), "{result:#?}");
}

#[test]
fn corrupted_read_in_large_history_is_caught() {
    let mut ops = atomic_history(2, &MANY_KEYS);
    // Values are unique, so a read of a value nobody wrote is a violation
    // whatever the timing.
    let mut rng = Rng::new(99);
    let corrupted = loop {
        let i = rng.below(ops.len() as u64) as usize;
        if matches!(ops[i].output, KvOutput::Get(_)) {
            break i;
        }
    };
    ops[corrupted].output = KvOutput::Get(Some(u64::MAX));
    let result = timed_check("never-written read", &ops);
    assert_caught(&ops, corrupted, &result);
}

/// Finds a read `g` and puts `p1`, `p2` of its key, all with known outcomes,
/// such that p1 returned before p2 was called and p2 returned before g was
/// called: `g` reading p1's (unique) value is then a stale read. Takes the
/// latest such p2 and p1, so the read is stale by one recent overwrite.
fn find_stale_read_setup(ops: &[Op]) -> Option<(usize, u64)> {
    let definite_put = |i: usize| match ops[i].input {
        KvInput::Put { value, .. } if ops[i].ret.is_some() => Some(value),
        _ => None,
    };
    // The latest-returning definite put that returned before `time`.
    let latest_put_before = |part: &[usize], time: u64| {
        part.iter()
            .copied()
            .filter(|&i| definite_put(i).is_some() && ops[i].ret.is_some_and(|r| r < time))
            .max_by_key(|&i| ops[i].ret)
    };
    for part in KvModel.partition(ops) {
        for &g in &part {
            if !matches!(ops[g].output, KvOutput::Get(_)) {
                continue;
            }
            let Some(p2) = latest_put_before(&part, ops[g].call) else {
                continue;
            };
            if let Some(p1) = latest_put_before(&part, ops[p2].call) {
                return definite_put(p1).map(|value| (g, value));
            }
        }
    }
    None
}

#[test]
fn stale_read_in_large_history_is_caught() {
    let mut ops = atomic_history(3, &MANY_KEYS);
    let (corrupted, stale_value) =
        find_stale_read_setup(&ops).expect("the workload has sequential put, put, get chains");
    ops[corrupted].output = KvOutput::Get(Some(stale_value));
    let result = timed_check("stale read", &ops);
    assert_caught(&ops, corrupted, &result);
}

/// Corrupts one read in the second half of a single-key history into a
/// stale read, and checks it is caught and shrunk to a small core around it.
fn single_key_stale_read(label: &str, workload: &Workload, seed: u64) {
    let mut ops = atomic_history(seed, workload);
    assert!(timed_check(label, &ops).is_ok());

    let half = ops.len() / 2;
    let (corrupted, stale_value) = find_stale_read_setup(&ops[half..])
        .map(|(g, value)| (g + half, value))
        .expect("the workload has sequential put, put, get chains");
    ops[corrupted].output = KvOutput::Get(Some(stale_value));
    let result = timed_check(&format!("{label} with a stale read"), &ops);
    assert_caught(&ops, corrupted, &result);
    let CheckResult::Illegal { failing, .. } = &result else { unreachable!("checked above") };
    // Typically the stale write, the write that overwrote it and the read.
    assert!(failing.len() <= 8, "shrinking left {} of {} ops: {failing:#?}", failing.len(), ops.len());
}

#[test]
fn stale_read_in_long_single_key_history_is_caught_and_shrunk() {
    // One partition of 20,000 ops: the shrinker has to find the window
    // around the failure before delta debugging.
    let workload =
        Workload { clients: 5, ops_per_client: 4_000, keys: 1, hot_percent: 0, hot_keys: 1, unknown_percent: 0 };
    single_key_stale_read("single-key history", &workload, 4);
}

#[test]
fn stale_read_in_single_key_history_with_timeouts_is_caught_and_shrunk() {
    // Unknown-outcome ops stay pending to the end of the partition, which
    // is what makes long single-key histories with timeouts expensive.
    let workload =
        Workload { clients: 5, ops_per_client: 800, keys: 1, hot_percent: 0, hot_keys: 1, unknown_percent: 1 };
    single_key_stale_read("single-key history with timeouts", &workload, 5);
}
