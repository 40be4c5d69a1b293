//! Hand-written histories with known verdicts.

mod support;

use std::time::{Duration, Instant};

use keel_check::{check_operations, CheckResult, KvInput, KvModel, KvOutput, Model, Operation};
use support::{assert_well_formed_failure, brute_force_linearizable, cas, delete, get, put, put_unknown, Op};

/// Checks a history expected to be linearizable, cross-checking the verdict
/// with the brute-force checker.
fn assert_linearizable(ops: &[Op]) {
    assert!(brute_force_linearizable(ops), "test history is wrong");
    let result = check_operations(&KvModel, ops, None);
    assert!(result.is_ok(), "expected Ok, got {result:#?}");
}

/// Checks a history expected not to be linearizable and returns the
/// failing sub-history.
fn assert_illegal(ops: &[Op]) -> Vec<Op> {
    assert!(!brute_force_linearizable(ops), "test history is wrong");
    let result = check_operations(&KvModel, ops, None);
    assert_well_formed_failure(ops, &result);
    match result {
        CheckResult::Illegal { failing, .. } => failing,
        _ => unreachable!("checked above"),
    }
}

// ---- linearizable ----------------------------------------------------------

#[test]
fn empty_history_is_linearizable() {
    assert!(check_operations(&KvModel, &[], None).is_ok());
}

#[test]
fn sequential_puts_and_gets() {
    assert_linearizable(&[
        get(0, 1, None, 0, 1),
        put(0, 1, 10, 2, 3),
        get(1, 1, Some(10), 4, 5),
        put(1, 1, 20, 6, 7),
        get(0, 1, Some(20), 8, 9),
    ]);
}

#[test]
fn read_concurrent_with_a_put_may_see_either_value() {
    for read in [None, Some(1)] {
        assert_linearizable(&[put(0, 0, 1, 0, 10), get(1, 0, read, 2, 3)]);
    }
}

#[test]
fn touching_windows_are_concurrent() {
    // The get is invoked at the instant the put returns: they overlap, so
    // the get may be ordered first and see nothing.
    assert_linearizable(&[put(0, 0, 1, 0, 5), get(1, 0, None, 5, 6)]);
}

#[test]
fn overlapping_writes_may_land_in_either_order() {
    for last in [1, 2] {
        assert_linearizable(&[
            put(0, 0, 1, 0, 10),
            put(1, 0, 2, 1, 9),
            get(2, 0, Some(last), 11, 12),
            get(0, 0, Some(last), 13, 14),
        ]);
    }
}

#[test]
fn cas_success_and_failure() {
    assert_linearizable(&[
        cas(0, 0, None, 1, true, 0, 1),
        cas(1, 0, None, 2, false, 2, 3),
        cas(0, 0, Some(1), 3, true, 4, 5),
        cas(1, 0, Some(1), 4, false, 6, 7),
        get(2, 0, Some(3), 8, 9),
    ]);
}

#[test]
fn concurrent_cas_from_the_same_value_one_wins() {
    assert_linearizable(&[
        put(0, 0, 1, 0, 1),
        cas(1, 0, Some(1), 2, true, 2, 10),
        cas(2, 0, Some(1), 3, false, 3, 9),
        get(0, 0, Some(2), 11, 12),
    ]);
}

#[test]
fn delete_then_get_sees_nothing() {
    assert_linearizable(&[
        put(0, 0, 1, 0, 1),
        delete(1, 0, 2, 3),
        get(0, 0, None, 4, 5),
        cas(1, 0, None, 7, true, 6, 7),
        get(0, 0, Some(7), 8, 9),
    ]);
}

#[test]
fn unknown_put_later_observed() {
    assert_linearizable(&[
        put(0, 0, 1, 0, 1),
        put_unknown(1, 0, 2, 2),
        get(2, 0, Some(1), 3, 4),
        // Took effect long after its client gave up.
        get(2, 0, Some(2), 50, 51),
        get(0, 0, Some(2), 52, 53),
    ]);
}

#[test]
fn unknown_put_never_observed() {
    assert_linearizable(&[
        put(0, 0, 1, 0, 1),
        put_unknown(1, 0, 2, 2),
        get(2, 0, Some(1), 3, 4),
        get(2, 0, Some(1), 50, 51),
    ]);
}

#[test]
fn unknown_put_observed_before_its_invocation_is_illegal() {
    // The counterpart of the two tests above: "may happen at any point
    // after its call" must not stretch to before the call.
    assert_illegal(&[put(0, 0, 1, 0, 1), get(1, 0, Some(2), 2, 3), put_unknown(1, 0, 2, 4)]);
}

#[test]
fn independent_keys_do_not_interfere() {
    assert_linearizable(&[
        put(0, 1, 1, 0, 1),
        put(1, 2, 2, 0, 1),
        get(0, 2, Some(2), 2, 3),
        get(1, 1, Some(1), 2, 3),
        get(2, 3, None, 2, 3),
    ]);
}

// ---- not linearizable ------------------------------------------------------

#[test]
fn stale_read() {
    let failing = assert_illegal(&[put(0, 0, 1, 0, 1), put(0, 0, 2, 2, 3), get(1, 0, Some(1), 4, 5)]);
    // All three are needed to explain the violation: the shrinker must not
    // drop the first put and report "value never written" instead.
    assert_eq!(failing.len(), 3, "{failing:#?}");
}

#[test]
fn lost_update() {
    let failing =
        assert_illegal(&[put(0, 0, 0, 0, 1), cas(1, 0, Some(0), 1, true, 2, 3), cas(2, 0, Some(0), 2, true, 4, 5)]);
    assert_eq!(failing.len(), 3, "{failing:#?}");
}

#[test]
fn read_of_a_value_never_written() {
    let ops = [put(0, 0, 1, 0, 1), get(1, 0, Some(1), 2, 3), get(1, 0, Some(7), 4, 5), put(0, 0, 2, 6, 7)];
    let failing = assert_illegal(&ops);
    assert_eq!(failing, [ops[2].clone()]);
}

#[test]
fn timed_out_write_observed_then_unobserved() {
    // The unknown put of 2 was seen by one read, so it happened; a strictly
    // later read cannot see the older value 1 again.
    let failing = assert_illegal(&[
        put(0, 0, 1, 0, 1),
        put_unknown(1, 0, 2, 2),
        get(2, 0, Some(2), 3, 4),
        get(3, 0, Some(1), 5, 6),
    ]);
    assert_eq!(failing.len(), 4, "{failing:#?}");
}

#[test]
fn non_monotonic_reads_across_clients() {
    let failing =
        assert_illegal(&[put(0, 0, 1, 0, 1), put(0, 0, 2, 2, 10), get(1, 0, Some(2), 3, 4), get(2, 0, Some(1), 5, 6)]);
    assert_eq!(failing.len(), 4, "{failing:#?}");
}

#[test]
fn overlapping_writes_cannot_be_read_in_both_orders() {
    assert_illegal(&[put(0, 0, 1, 0, 10), put(1, 0, 2, 1, 9), get(2, 0, Some(1), 11, 12), get(0, 0, Some(2), 13, 14)]);
}

#[test]
fn read_of_deleted_key() {
    assert_illegal(&[put(0, 0, 1, 0, 1), delete(1, 0, 2, 3), get(0, 0, Some(1), 4, 5)]);
}

#[test]
fn cas_failure_when_value_matched() {
    assert_illegal(&[put(0, 0, 1, 0, 1), cas(1, 0, Some(1), 2, false, 2, 3)]);
}

#[test]
fn reports_the_failing_partition_and_its_prefix() {
    // Keys 3 < 5 < 9 become partitions 0, 1, 2; only key 5 is broken.
    let ops = [
        put(0, 9, 1, 0, 1),
        put(0, 3, 1, 0, 1),
        put(0, 5, 1, 0, 1),
        get(1, 9, Some(1), 2, 3),
        get(1, 3, Some(1), 2, 3),
        put(1, 5, 2, 2, 3),
        get(1, 5, Some(1), 4, 5),
    ];
    let result = check_operations(&KvModel, &ops, None);
    assert_well_formed_failure(&ops, &result);
    let CheckResult::Illegal { partition, failing, longest_prefix } = result else { unreachable!("checked above") };
    assert_eq!(partition, 1);
    assert_eq!(failing, [ops[2].clone(), ops[5].clone(), ops[6].clone()]);
    assert_eq!(longest_prefix, [ops[2].clone(), ops[5].clone()]);
}

#[test]
fn zero_budget_gives_unknown() {
    let ops = [put(0, 0, 1, 0, 1), get(1, 0, Some(1), 2, 3)];
    assert!(check_operations(&KvModel, &ops, Some(Duration::ZERO)).is_unknown());
    assert!(check_operations(&KvModel, &ops, Some(Duration::from_secs(60))).is_ok());
}

#[test]
fn return_before_call_is_read_as_instantaneous() {
    // ret < call is a recording glitch; treating it as ret == call keeps the
    // put strictly before the read that starts later.
    let mut broken_put = put(0, 0, 1, 5, 5);
    broken_put.ret = Some(2);
    let result = check_operations(&KvModel, &[broken_put.clone(), get(1, 0, Some(1), 6, 7)], None);
    assert!(result.is_ok());
    let result = check_operations(&KvModel, &[broken_put, get(1, 0, None, 6, 7)], None);
    assert!(result.is_illegal());
}

// ---- a model with the default (single) partition ---------------------------

/// A FIFO queue: exercises a non-KV state, the default partition and
/// unknown-outcome operations whose output a model can reject.
struct Queue;

#[derive(Clone, Debug)]
enum QueueOp {
    Enqueue(u8),
    Dequeue,
}

impl Model for Queue {
    type State = Vec<u8>;
    type Input = QueueOp;
    type Output = Option<u8>;

    fn init(&self) -> Vec<u8> {
        Vec::new()
    }

    fn step(&self, state: &Vec<u8>, input: &QueueOp, output: &Option<u8>) -> Option<Vec<u8>> {
        match input {
            QueueOp::Enqueue(item) => {
                let mut next = state.clone();
                next.push(*item);
                Some(next)
            }
            QueueOp::Dequeue => {
                if state.first() == output.as_ref() {
                    Some(state.get(1..).unwrap_or_default().to_vec())
                } else {
                    None
                }
            }
        }
    }
}

fn queue_op(input: QueueOp, output: Option<u8>, call: u64, ret: Option<u64>) -> Operation<QueueOp, Option<u8>> {
    Operation { client_id: 0, input, call, output, ret }
}

#[test]
fn queue_history_with_default_partition() {
    use QueueOp::{Dequeue, Enqueue};
    let fifo = [
        queue_op(Enqueue(1), None, 0, Some(10)),
        queue_op(Enqueue(2), None, 1, Some(9)),
        queue_op(Dequeue, Some(2), 11, Some(12)),
        queue_op(Dequeue, Some(1), 13, Some(14)),
    ];
    assert!(check_operations(&Queue, &fifo, None).is_ok());

    let mut wrong = fifo.clone();
    wrong[0].ret = Some(0); // enqueue(1) now strictly precedes enqueue(2)
    wrong[1].call = 1;
    let result = check_operations(&Queue, &wrong, None);
    let CheckResult::Illegal { partition, failing, .. } = result else {
        panic!("expected Illegal, got {result:?}");
    };
    assert_eq!(partition, 0);
    assert!(check_operations(&Queue, &failing, None).is_illegal());
}

#[test]
fn unknown_operation_that_fits_nowhere_never_happened() {
    use QueueOp::{Dequeue, Enqueue};
    // The dequeue timed out with a claimed result no state allows; being of
    // unknown outcome it may simply not have happened.
    let ops = [
        queue_op(Enqueue(1), None, 0, Some(1)),
        queue_op(Dequeue, Some(9), 2, None),
        queue_op(Dequeue, Some(1), 3, Some(4)),
    ];
    assert!(check_operations(&Queue, &ops, None).is_ok());
    let mut known = ops.clone();
    known[1].ret = Some(5);
    assert!(check_operations(&Queue, &known, None).is_illegal());
}

// ---- recorded histories ----------------------------------------------------

/// Parses a history saved by the simulator (`KEEL_SIM_HISTORY`): one
/// operation a line, `client call ret input output`, with `ret` `-` for an
/// unknown outcome and input/output in their `Debug` forms.
fn parse_history(text: &str) -> Vec<Op> {
    text.lines().filter(|line| !line.trim().is_empty()).map(parse_line).collect()
}

fn parse_line(line: &str) -> Op {
    let mut fields = line.splitn(4, ' ');
    let mut number = || fields.next().unwrap_or_else(|| panic!("short line: {line}"));
    let client_id = number().parse().unwrap_or_else(|e| panic!("client in {line}: {e}"));
    let call = number().parse().unwrap_or_else(|e| panic!("call in {line}: {e}"));
    let ret = match number() {
        "-" => None,
        ret => Some(ret.parse().unwrap_or_else(|e| panic!("ret in {line}: {e}"))),
    };
    let rest = number();
    // Every input's Debug form ends with the first " }".
    let end = rest.find(" }").unwrap_or_else(|| panic!("no input in {line}")) + 2;
    let (input, output) = (&rest[..end], rest[end..].trim());
    Operation { client_id, input: parse_input(input), call, output: parse_output(output), ret }
}

/// The value of `name: ...` in a `Debug` struct body.
fn field<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text.find(&format!("{name}: ")).unwrap_or_else(|| panic!("no {name} in {text}")) + name.len() + 2;
    let rest = &text[start..];
    rest[..rest.find([',', ' ']).unwrap_or(rest.len())].trim_end_matches('}')
}

fn parse_option(text: &str) -> Option<u64> {
    match text {
        "None" => None,
        _ => Some(
            text.strip_prefix("Some(")
                .and_then(|t| t.strip_suffix(')'))
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("not an Option<u64>: {text}")),
        ),
    }
}

fn parse_input(text: &str) -> KvInput {
    let key = field(text, "key").parse().expect("key");
    match text.split(' ').next() {
        Some("Get") => KvInput::Get { key },
        Some("Put") => KvInput::Put { key, value: field(text, "value").parse().expect("value") },
        Some("Delete") => KvInput::Delete { key },
        Some("Cas") => KvInput::Cas {
            key,
            expected: parse_option(field(text, "expected")),
            new: field(text, "new").parse().expect("new"),
        },
        _ => panic!("unknown input {text}"),
    }
}

fn parse_output(text: &str) -> KvOutput {
    match text {
        "Put" => KvOutput::Put,
        "Delete" => KvOutput::Delete,
        "Unknown" => KvOutput::Unknown,
        "Cas { ok: true }" => KvOutput::Cas { ok: true },
        "Cas { ok: false }" => KvOutput::Cas { ok: false },
        _ => KvOutput::Get(parse_option(
            text.strip_prefix("Get(")
                .and_then(|t| t.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unknown output {text}")),
        )),
    }
}

/// Generous: only there so that a regression hangs no test run. The
/// verdict must not depend on the clock, so it is far above what the check
/// takes even on a slow machine without optimisation.
const RECORDED_BUDGET: Duration = Duration::from_secs(120);

fn check_recorded(label: &str, ops: &[Op]) -> CheckResult<KvInput, KvOutput> {
    let started = Instant::now();
    let result = check_operations(&KvModel, ops, Some(RECORDED_BUDGET));
    let verdict = match &result {
        CheckResult::Ok => "Ok",
        CheckResult::Illegal { .. } => "Illegal",
        CheckResult::Unknown => "Unknown",
    };
    eprintln!("{label}: {} ops checked in {:?} -> {verdict}", ops.len(), started.elapsed());
    result
}

/// Simulator seed 6008082: 228 operations on one key, 42 of them of unknown
/// outcome. Linearizable, but it took the search minutes.
const SIM_6008082: &str = include_str!("histories/sim-6008082.txt");

#[test]
fn recorded_hot_key_history_with_many_timeouts_is_linearizable() {
    let ops = parse_history(SIM_6008082);
    assert_eq!(ops.len(), 230);
    assert_eq!(ops.iter().filter(|op| op.ret.is_none()).count(), 42);
    let result = check_recorded("sim-6008082", &ops);
    assert!(result.is_ok(), "expected Ok, got {result:?}");
}

/// A completed write that always changes the key: afterwards it does not
/// hold any value written before.
fn overwrites(op: &Op) -> bool {
    op.ret.is_some()
        && matches!(
            (&op.input, &op.output),
            (KvInput::Put { .. }, KvOutput::Put) | (KvInput::Cas { .. }, KvOutput::Cas { ok: true })
        )
}

fn written_value(op: &Op) -> Option<u64> {
    match op.input {
        KvInput::Put { value, .. } => Some(value),
        KvInput::Cas { new, .. } => Some(new),
        _ => None,
    }
}

#[test]
fn recorded_history_with_a_planted_stale_read_is_illegal() {
    let mut ops = parse_history(SIM_6008082);
    // Plant a stale read at the latest completed get for which one exists:
    // it now reads the value of a completed put that was overwritten — by a
    // write invoked after that put returned and returned before the get was
    // invoked — and that nobody else writes (the simulator's values are
    // unique). Real time then orders put < overwrite < get, so no
    // linearization lets the get see that value.
    let writes_of = |value: u64| ops.iter().filter(|op| written_value(op) == Some(value)).count();
    let (get, stale) = (0..ops.len())
        .rev()
        .filter(|&g| ops[g].ret.is_some() && matches!(ops[g].output, KvOutput::Get(_)))
        .find_map(|g| {
            let put = ops.iter().filter(|p| p.ret.is_some() && matches!(p.output, KvOutput::Put)).find(|p| {
                let value = written_value(p).expect("a put writes");
                KvOutput::Get(Some(value)) != ops[g].output
                    && writes_of(value) == 1
                    && ops.iter().any(|w| overwrites(w) && w.call > p.ret.unwrap() && w.ret.unwrap() < ops[g].call)
            })?;
            Some((g, written_value(put)?))
        })
        .expect("the history has a stale read to plant");
    ops[get].output = KvOutput::Get(Some(stale));
    let result = check_recorded("sim-6008082 with a stale read", &ops);
    assert_well_formed_failure(&ops, &result);
    let CheckResult::Illegal { failing, .. } = &result else { unreachable!("checked above") };
    assert!(failing.contains(&ops[get]), "the planted read is not in the failing sub-history: {failing:#?}");
}

#[test]
fn recorded_history_with_a_flipped_cas_is_illegal() {
    let mut ops = parse_history(SIM_6008082);
    // The latest successful compare-and-swap whose value a completed get
    // read: reported as failed, it writes nothing, and nobody else writes
    // that value, so the read is of a value never written.
    let flipped = (0..ops.len())
        .rev()
        .find(|&c| {
            ops[c].ret.is_some()
                && ops[c].output == KvOutput::Cas { ok: true }
                && written_value(&ops[c]).is_some_and(|value| {
                    ops.iter().filter(|op| written_value(op) == Some(value)).count() == 1
                        && ops.iter().any(|op| op.ret.is_some() && op.output == KvOutput::Get(Some(value)))
                })
        })
        .expect("the history has an observed successful compare-and-swap");
    ops[flipped].output = KvOutput::Cas { ok: false };
    let result = check_recorded("sim-6008082 with a flipped cas", &ops);
    assert_well_formed_failure(&ops, &result);
}
