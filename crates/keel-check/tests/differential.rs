//! Differential test: on small random histories the checker must agree with
//! a brute-force enumeration of all real-time-respecting orders (and all
//! subsets of unknown-outcome operations).

mod support;

use std::collections::BTreeMap;

use keel_check::{check_operations, CheckResult, KvInput, KvModel, KvOutput, Model, Operation};
use proptest::prelude::*;
use proptest::sample::Index;
use support::{assert_well_formed_failure, brute_force_linearizable, Op};

/// One generated operation: what it does, its window, and where inside the
/// window an atomic store would apply it.
#[derive(Clone, Debug)]
struct Spec {
    key: u64,
    kind: u8,
    value: u64,
    expected: Option<u64>,
    call: u64,
    duration: u64,
    /// Where in the window (or after the call, if unknown) it takes effect, 0..=10 tenths.
    effect_tenths: u64,
    /// Outcome unknown (no return recorded).
    unknown: bool,
    /// For an unknown op: whether it took effect at all.
    took_effect: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (0..2u64, 0..4u8, 0..3u64, proptest::option::of(0..3u64)),
        (0..16u64, 0..8u64, 0..=10u64),
        (proptest::bool::weighted(0.25), any::<bool>()),
    )
        .prop_map(|((key, kind, value, expected), (call, duration, effect_tenths), (unknown, took_effect))| Spec {
            key,
            kind,
            value,
            expected,
            call,
            duration,
            effect_tenths,
            unknown,
            took_effect,
        })
}

fn random_output() -> impl Strategy<Value = KvOutput> {
    prop_oneof![
        proptest::option::of(0..3u64).prop_map(KvOutput::Get),
        Just(KvOutput::Put),
        Just(KvOutput::Delete),
        any::<bool>().prop_map(|ok| KvOutput::Cas { ok }),
        Just(KvOutput::Unknown),
    ]
}

/// Builds the history an atomic store would produce for `specs`, so that
/// unmutated histories are linearizable and mutated ones usually are not.
fn build(specs: &[Spec]) -> Vec<Op> {
    let mut ops: Vec<Op> = specs
        .iter()
        .enumerate()
        .map(|(client, s)| {
            let key = s.key;
            let input = match s.kind {
                0 => KvInput::Get { key },
                1 => KvInput::Put { key, value: s.value },
                2 => KvInput::Delete { key },
                _ => KvInput::Cas { key, expected: s.expected, new: s.value },
            };
            Operation {
                client_id: client as u64,
                input,
                call: s.call,
                output: KvOutput::Unknown,
                ret: (!s.unknown).then_some(s.call + s.duration),
            }
        })
        .collect();

    // Effect instants; ties are fine since tied ops overlap.
    let mut order: Vec<(u64, usize)> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.unknown || s.took_effect)
        .map(|(i, s)| {
            let span = if s.unknown { 2 * s.duration + 4 } else { s.duration };
            (s.call + span * s.effect_tenths / 10, i)
        })
        .collect();
    order.sort_unstable();
    let mut store: BTreeMap<u64, u64> = BTreeMap::new();
    for (_, i) in order {
        let key = ops[i].input.key();
        let current = store.get(&key).copied();
        let output = match ops[i].input {
            KvInput::Get { .. } => KvOutput::Get(current),
            KvInput::Put { value, .. } => {
                store.insert(key, value);
                KvOutput::Put
            }
            KvInput::Delete { .. } => {
                store.remove(&key);
                KvOutput::Delete
            }
            KvInput::Cas { expected, new, .. } => {
                let ok = current == expected;
                if ok {
                    store.insert(key, new);
                }
                KvOutput::Cas { ok }
            }
        };
        if ops[i].ret.is_some() {
            ops[i].output = output;
        }
    }
    ops
}

/// `KvModel` without the blind-write hint, to exercise the search's generic
/// path (no `is_blind_write` override) against the same brute force.
struct KvWithoutHints;

impl Model for KvWithoutHints {
    type State = <KvModel as Model>::State;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        KvModel.init()
    }

    fn step(&self, state: &Self::State, input: &KvInput, output: &KvOutput) -> Option<Self::State> {
        KvModel.step(state, input, output)
    }

    fn partition(&self, ops: &[Operation<KvInput, KvOutput>]) -> Vec<Vec<usize>> {
        KvModel.partition(ops)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_brute_force(
        specs in proptest::collection::vec(spec(), 1..=7),
        mutation in proptest::option::weighted(0.6, (any::<Index>(), random_output())),
    ) {
        let mut ops = build(&specs);
        if let Some((index, output)) = mutation {
            let i = index.index(ops.len());
            ops[i].output = output;
        }

        let expected = brute_force_linearizable(&ops);
        let without_hints = check_operations(&KvWithoutHints, &ops, None);
        prop_assert_eq!(without_hints.is_ok(), expected, "without hints: {:?}", without_hints);
        let result = check_operations(&KvModel, &ops, None);
        match &result {
            CheckResult::Ok => prop_assert!(expected, "checker says Ok, brute force says illegal: {ops:#?}"),
            CheckResult::Illegal { .. } => {
                prop_assert!(!expected, "checker says Illegal, brute force says Ok: {ops:#?}");
                assert_well_formed_failure(&ops, &result);
                if let CheckResult::Illegal { failing, .. } = &result {
                    prop_assert!(!brute_force_linearizable(failing), "failing set is linearizable: {failing:#?}");
                }
            }
            CheckResult::Unknown => prop_assert!(false, "no budget was given, yet Unknown"),
        }
    }
}

#[test]
fn generator_produces_both_verdicts() {
    // Guards against a generator that makes the differential test vacuous.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy =
        (proptest::collection::vec(spec(), 1..=7), proptest::option::weighted(0.6, (any::<Index>(), random_output())));
    let (mut legal, mut illegal) = (0, 0);
    for _ in 0..500 {
        let (specs, mutation) = strategy.new_tree(&mut runner).expect("strategy generates").current();
        let mut ops = build(&specs);
        if let Some((index, output)) = mutation {
            let i = index.index(ops.len());
            ops[i].output = output;
        }
        if brute_force_linearizable(&ops) {
            legal += 1;
        } else {
            illegal += 1;
        }
    }
    eprintln!("{legal} linearizable, {illegal} not");
    assert!(legal >= 100 && illegal >= 100, "{legal} linearizable, {illegal} not");
}
