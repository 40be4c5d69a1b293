//! The simulator's oracle of what each member has made durable, kept beside the real WAL.
//!
//! Members write through the real `keel-storage` (WAL + snapshot files) onto the byte-level
//! simulated disk. In parallel, this model records the same writes as records: those before the
//! last fsync are *durable*, the rest *pending*. The invariants read it (a vote or an
//! acknowledgement must be covered by durable state), and after every crash the real recovery
//! must give back exactly the durable state plus some prefix of the pending records — nothing
//! acknowledged lost, nothing unwritten invented.

use std::collections::BTreeMap;

use keel_codec::record::Record;
use keel_raft::GroupId;
use keel_storage::{GroupLog, RecoveredGroup};

#[derive(Clone, Debug, Default)]
pub struct DurableModel {
    pub groups: BTreeMap<GroupId, GroupLog>,
    pending: Vec<Record>,
}

/// The comparable content of a group's durable state.
type Shape = (keel_raft::HardState, Option<(u64, u64)>, Vec<(u64, u64, bytes::Bytes)>);

fn shape_of_log(log: &GroupLog) -> Shape {
    (
        log.hard_state,
        log.snapshot.as_ref().map(|s| (s.index, s.term)),
        log.entries.iter().map(|e| (e.index, e.term, e.data.clone())).collect(),
    )
}

fn shape_of_recovered(group: &RecoveredGroup) -> Shape {
    (
        group.hard_state,
        group.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)),
        group.entries.iter().map(|e| (e.index, e.term, e.data.clone())).collect(),
    )
}

fn shapes(groups: &BTreeMap<GroupId, GroupLog>) -> BTreeMap<GroupId, Shape> {
    groups.iter().map(|(g, log)| (*g, shape_of_log(log))).collect()
}

impl DurableModel {
    pub fn write(&mut self, records: Vec<Record>) {
        self.pending.extend(records);
    }

    pub fn fsync(&mut self) {
        for record in std::mem::take(&mut self.pending) {
            self.groups.entry(record.group()).or_default().apply(&record);
        }
    }

    pub fn group(&self, group: GroupId) -> Option<&GroupLog> {
        self.groups.get(&group)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// After a crash and recovery by the real WAL: `recovered` must be the durable state plus a
    /// prefix of the pending records. The model then adopts it as what is durable now.
    pub fn check_recovery(&mut self, recovered: &BTreeMap<GroupId, RecoveredGroup>) -> Result<(), String> {
        let got: BTreeMap<GroupId, Shape> = recovered.iter().map(|(g, r)| (*g, shape_of_recovered(r))).collect();
        let pending = std::mem::take(&mut self.pending);
        let mut candidate = self.groups.clone();
        for count in 0..=pending.len() {
            if count > 0 {
                let record = &pending[count - 1];
                candidate.entry(record.group()).or_default().apply(record);
            }
            if shapes(&candidate) == got {
                self.groups = candidate;
                return Ok(());
            }
        }
        let durable = shapes(&self.groups);
        let mut detail = String::new();
        for (group, shape) in &got {
            let want = durable.get(group);
            if want != Some(shape) {
                detail.push_str(&format!(
                    " g{group}: durable (hs {:?}, snap {:?}, last {:?}) recovered (hs {:?}, snap {:?}, last {:?});",
                    want.map(|w| w.0),
                    want.map(|w| w.1),
                    want.and_then(|w| w.2.last().map(|e| (e.0, e.1))),
                    shape.0,
                    shape.1,
                    shape.2.last().map(|e| (e.0, e.1))
                ));
            }
        }
        Err(format!(
            "recovery does not match the durable state plus any prefix of {} unsynced records:{detail}",
            pending.len()
        ))
    }
}
