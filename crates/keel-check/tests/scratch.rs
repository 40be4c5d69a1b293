mod support;
use std::time::{Duration, Instant};
use keel_check::{check_operations, KvModel, KvOutput};
use support::*;

#[test]
fn scratch() {
    let n: u64 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let unk: u64 = std::env::var("UNK").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let w = Workload { clients: 5, ops_per_client: n / 5, keys: 1, hot_percent: 0, hot_keys: 1, unknown_percent: unk };
    let mut ops = atomic_history(4, &w);
    let t = Instant::now();
    let r = check_operations(&KvModel, &ops, Some(Duration::from_secs(100)));
    eprintln!("ok-check {:?} {:?}", t.elapsed(), r.is_ok());
    let half = ops.len() / 2;
    // stale read: find g, p1, p2 in second half
    let mut found = None;
    'outer: for g in half..ops.len() {
        if !matches!(ops[g].output, KvOutput::Get(_)) { continue; }
        for p2 in half..g {
            let Some(r2) = ops[p2].ret else { continue };
            if r2 >= ops[g].call || !matches!(ops[p2].output, KvOutput::Put) { continue; }
            for p1 in half..p2 {
                if let (Some(r1), keel_check::KvInput::Put { value, .. }) = (ops[p1].ret, &ops[p1].input) {
                    if r1 < ops[p2].call && matches!(ops[p1].output, KvOutput::Put) { found = Some((g, *value)); break 'outer; }
                }
            }
        }
    }
    let (g, v) = found.unwrap();
    ops[g].output = KvOutput::Get(Some(v));
    let t = Instant::now();
    let r = check_operations(&KvModel, &ops, Some(Duration::from_secs(100)));
    eprintln!("bad-check {:?} illegal={:?} unknown={}", t.elapsed(), r.is_illegal(), r.is_unknown());
}
