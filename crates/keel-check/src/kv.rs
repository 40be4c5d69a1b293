//! An etcd-like key/value model: get, put, delete and compare-and-swap on
//! independent keys.

use std::collections::BTreeMap;

use crate::{Model, Operation};

/// A key of [`KvModel`].
pub type Key = u64;
/// A value of [`KvModel`].
pub type Value = u64;

/// A request to the key/value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read a key.
    Get {
        /// The key read.
        key: Key,
    },
    /// Write a key unconditionally.
    Put {
        /// The key written.
        key: Key,
        /// The value written.
        value: Value,
    },
    /// Remove a key.
    Delete {
        /// The key removed.
        key: Key,
    },
    /// Compare-and-swap: write `new` if the key currently holds `expected`
    /// (`None`: the key must be absent).
    Cas {
        /// The key.
        key: Key,
        /// The value the key must hold for the swap to happen.
        expected: Option<Value>,
        /// The value written on success.
        new: Value,
    },
}

impl KvInput {
    /// The key this request is about.
    pub fn key(&self) -> Key {
        match *self {
            KvInput::Get { key } | KvInput::Put { key, .. } | KvInput::Delete { key } | KvInput::Cas { key, .. } => key,
        }
    }
}

/// A response of the key/value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The value read (`None`: key absent).
    Get(Option<Value>),
    /// The put was applied.
    Put,
    /// The delete was applied (deleting an absent key is fine).
    Delete,
    /// Whether the compare-and-swap found the expected value and wrote.
    Cas {
        /// `true` if the swap happened.
        ok: bool,
    },
    /// Outcome unknown: matches anything.
    Unknown,
}

/// A linearizable key/value store with independent keys.
///
/// [`Model::partition`] splits a history by key, so a state is the value of
/// one key (`None`: absent) and [`Model::step`] ignores the key in the input.
/// Reads with an [`KvOutput::Unknown`] result constrain nothing and are left
/// out of every partition. Any other output of the wrong kind for its input
/// (say a put answered with `Get(..)`) is never legal.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<Value>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Option<Value>, input: &KvInput, output: &KvOutput) -> Option<Option<Value>> {
        match (input, output) {
            (KvInput::Get { .. }, KvOutput::Get(read)) => (read == state).then_some(*state),
            (KvInput::Get { .. }, KvOutput::Unknown) => Some(*state),

            (KvInput::Put { value, .. }, KvOutput::Put | KvOutput::Unknown) => Some(Some(*value)),

            (KvInput::Delete { .. }, KvOutput::Delete | KvOutput::Unknown) => Some(None),

            (KvInput::Cas { expected, new, .. }, KvOutput::Cas { ok: true }) => {
                (state == expected).then_some(Some(*new))
            }
            (KvInput::Cas { expected, .. }, KvOutput::Cas { ok: false }) => (state != expected).then_some(*state),
            // If it took effect at all, the comparison decided what it did;
            // "never took effect" is covered by the operation being optional.
            (KvInput::Cas { expected, new, .. }, KvOutput::Unknown) => {
                Some(if state == expected { Some(*new) } else { *state })
            }

            _ => None,
        }
    }

    fn is_blind_write(&self, input: &KvInput, output: &KvOutput) -> bool {
        // Exactly the cases where `step` ignores the state and never fails.
        matches!(
            (input, output),
            (KvInput::Put { .. }, KvOutput::Put | KvOutput::Unknown)
                | (KvInput::Delete { .. }, KvOutput::Delete | KvOutput::Unknown)
        )
    }

    fn partition(&self, ops: &[Operation<KvInput, KvOutput>]) -> Vec<Vec<usize>> {
        let mut by_key: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
        for (index, op) in ops.iter().enumerate() {
            if matches!((&op.input, &op.output), (KvInput::Get { .. }, KvOutput::Unknown)) {
                continue;
            }
            by_key.entry(op.input.key()).or_default().push(index);
        }
        by_key.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(state: Option<Value>, input: KvInput, output: KvOutput) -> Option<Option<Value>> {
        KvModel.step(&state, &input, &output)
    }

    #[test]
    fn get_must_match_the_state() {
        assert_eq!(step(None, KvInput::Get { key: 0 }, KvOutput::Get(None)), Some(None));
        assert_eq!(step(Some(1), KvInput::Get { key: 0 }, KvOutput::Get(Some(1))), Some(Some(1)));
        assert_eq!(step(Some(1), KvInput::Get { key: 0 }, KvOutput::Get(Some(2))), None);
        assert_eq!(step(Some(1), KvInput::Get { key: 0 }, KvOutput::Get(None)), None);
        assert_eq!(step(Some(1), KvInput::Get { key: 0 }, KvOutput::Unknown), Some(Some(1)));
    }

    #[test]
    fn writes_set_the_state() {
        let put = KvInput::Put { key: 0, value: 5 };
        assert_eq!(step(Some(1), put.clone(), KvOutput::Put), Some(Some(5)));
        assert_eq!(step(None, put.clone(), KvOutput::Unknown), Some(Some(5)));
        assert_eq!(step(None, put, KvOutput::Delete), None);
        assert_eq!(step(Some(1), KvInput::Delete { key: 0 }, KvOutput::Delete), Some(None));
        assert_eq!(step(Some(1), KvInput::Delete { key: 0 }, KvOutput::Unknown), Some(None));
    }

    #[test]
    fn cas_compares_including_absence() {
        let cas = |expected| KvInput::Cas { key: 0, expected, new: 9 };
        let ok = KvOutput::Cas { ok: true };
        let failed = KvOutput::Cas { ok: false };
        assert_eq!(step(Some(1), cas(Some(1)), ok.clone()), Some(Some(9)));
        assert_eq!(step(Some(2), cas(Some(1)), ok.clone()), None);
        assert_eq!(step(None, cas(None), ok.clone()), Some(Some(9)));
        assert_eq!(step(Some(1), cas(None), ok), None);
        assert_eq!(step(Some(2), cas(Some(1)), failed.clone()), Some(Some(2)));
        assert_eq!(step(Some(1), cas(Some(1)), failed.clone()), None);
        assert_eq!(step(None, cas(None), failed), None);
        assert_eq!(step(Some(1), cas(Some(1)), KvOutput::Unknown), Some(Some(9)));
        assert_eq!(step(Some(2), cas(Some(1)), KvOutput::Unknown), Some(Some(2)));
    }

    #[test]
    fn partition_groups_by_key_and_drops_unknown_reads() {
        let op = |input: KvInput, output| Operation { client_id: 0, input, call: 0, output, ret: None };
        let ops = [
            op(KvInput::Put { key: 7, value: 1 }, KvOutput::Unknown),
            op(KvInput::Get { key: 3 }, KvOutput::Get(None)),
            op(KvInput::Get { key: 7 }, KvOutput::Unknown),
            op(KvInput::Delete { key: 7 }, KvOutput::Delete),
            op(KvInput::Get { key: 5 }, KvOutput::Unknown),
        ];
        assert_eq!(KvModel.partition(&ops), vec![vec![1], vec![0, 3]]);
    }
}
