//! The end of a run: heal every fault, require the cluster to converge and to serve a fresh
//! write and read, then check the whole client history for linearizability.

use super::*;
use crate::machine::SimMachine;

impl Cluster {
    pub(super) fn liveness_phase(&mut self) {
        self.faults_enabled = false;
        self.log(format_args!("LIVENESS: healing every fault"));
        self.blocked.clear();
        self.partitioned = false;
        self.swarm.drop_percent = 0;
        self.swarm.duplicate_percent = 0;
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for &id in &ids {
            self.members[&id].disk.set_capacity(None);
            self.members.get_mut(&id).expect("listed").slow_until = 0;
            let incarnation = self.members[&id].incarnation;
            if self.members[&id].stalled.is_some() {
                self.retry_write(id, incarnation);
            }
            self.unpause(id);
            if self.members[&id].node.is_none() {
                self.start(id);
            }
        }
        let deadline = self.now + LIVENESS_BUDGET_MS;
        // Let outstanding client operations finish or time out first.
        while self.now < deadline
            && self.clients.iter().any(|c| c.waiting.is_some())
            && self.invariants.violations.is_empty()
        {
            self.step();
        }
        for group in self.group_ids() {
            if !self.converge(group, deadline) {
                return;
            }
            if !self.probe(group, deadline) {
                return;
            }
        }
        self.check_healed(deadline);
    }

    /// Runs until `group` has one leader that every member of its configuration follows, and
    /// every member has applied the same state up to the leader's last index.
    fn converge(&mut self, group: GroupId, deadline: Time) -> bool {
        while self.now < deadline {
            if !self.invariants.violations.is_empty() {
                return false;
            }
            if self.converged(group) {
                self.log(format_args!("g{group} converged"));
                return true;
            }
            self.step();
        }
        let report = self.describe(group);
        self.invariants.violation(format!(
            "liveness: g{group} did not converge within {LIVENESS_BUDGET_MS} ms after healing: {report}"
        ));
        false
    }

    fn converged(&self, group: GroupId) -> bool {
        let Some(leader) = self.leader_of(group) else { return false };
        let Some(node) = self.members[&leader].node.as_ref() else { return false };
        let Some(status) = node.status(group) else { return false };
        let leader_state = node.machine(group).map(SimMachine::state);
        if status.hard_state.commit != status.last_index || status.applied != status.last_index {
            return false;
        }
        // A member whose disk died stays down (its operator replaces it): the rest must agree.
        let members: Vec<NodeId> =
            status.conf.members().filter(|id| self.members.get(id).is_none_or(|m| !m.disk_dead)).collect();
        members.into_iter().all(|id| {
            let Some(other) = self.members.get(&id).and_then(|m| m.node.as_ref()) else { return false };
            let Some(s) = other.status(group) else { return false };
            s.leader == leader
                && s.applied == status.last_index
                && s.hard_state.term == status.hard_state.term
                && other.machine(group).map(SimMachine::state) == leader_state
        })
    }

    fn describe(&self, group: GroupId) -> String {
        let mut out = String::new();
        for (id, member) in &self.members {
            match member.node.as_ref().and_then(|n| n.status(group)) {
                Some(s) => out.push_str(&format!(
                    "[n{id} {:?} term={} leader={} commit={} applied={} last={} voters={:?} learners={:?}] ",
                    s.role,
                    s.hard_state.term,
                    s.leader,
                    s.hard_state.commit,
                    s.applied,
                    s.last_index,
                    s.conf.voters,
                    s.conf.learners
                )),
                None => out.push_str(&format!("[n{id} not in group] ")),
            }
        }
        out
    }

    /// A fresh write and a linearizable read through the leader must succeed.
    fn probe(&mut self, group: GroupId, deadline: Time) -> bool {
        let key = PROBE_KEY + group - FIRST_GROUP;
        debug_assert_eq!(FIRST_GROUP + key % self.swarm.groups, group, "probe key maps to its group");
        let value = self.next_value;
        self.next_value += 1;
        for input in [KvInput::Put { key, value }, KvInput::Get { key }] {
            let mut done = false;
            while self.now < deadline && !done {
                let leader = self.leader_of(group).unwrap_or_else(|| self.random_member());
                self.clients[0].target = leader;
                let op = self.history.len();
                self.invoke(0, input.clone());
                while self.now < deadline && self.clients[0].waiting.is_some() && self.invariants.violations.is_empty()
                {
                    self.step();
                }
                if !self.invariants.violations.is_empty() {
                    return false;
                }
                done = self.history[op].ret.is_some() && !self.excluded.contains(&op);
                if done {
                    if let KvInput::Get { .. } = input {
                        if self.history[op].output != KvOutput::Get(Some(value)) {
                            self.invariants.violation(format!(
                                "probe read of g{group} returned {:?}, wrote {value}",
                                self.history[op].output
                            ));
                            return false;
                        }
                    }
                }
            }
            if !done {
                self.invariants
                    .violation(format!("liveness: probe {input:?} on g{group} did not succeed after healing"));
                return false;
            }
        }
        true
    }

    /// Every operation on the failing keys around the failing ones: the shrunk sub-history alone
    /// can leave out the write a read saw, so the reader needs the surrounding history.
    fn history_context(&self, failing: &[Operation<KvInput, KvOutput>]) -> String {
        let keys: BTreeSet<u64> = failing.iter().map(|op| key_of(&op.input)).collect();
        let Some(first) = failing.iter().map(|op| op.call).min() else { return String::new() };
        let last = failing.iter().map(|op| op.ret.unwrap_or(op.call)).max().unwrap_or(first);
        let (from, to) = (first.saturating_sub(300), last + 50);
        let mut lines: Vec<(u64, String)> = self
            .history
            .iter()
            .enumerate()
            .filter(|(i, op)| {
                !self.excluded.contains(i)
                    && keys.contains(&key_of(&op.input))
                    && op.call <= to
                    && op.ret.is_none_or(|ret| ret >= from)
            })
            .map(|(_, op)| (op.call, describe_op(op)))
            .collect();
        lines.sort();
        let shown = lines.len().min(40);
        let mut text =
            format!("\n  operations on keys {keys:?} between {from} and {to} ms ({shown} of {}):", lines.len());
        for (_, line) in lines.into_iter().take(shown) {
            text.push_str(&format!("\n    {line}"));
        }
        text
    }

    pub(super) fn check_history(&mut self) {
        let ops: Vec<Operation<KvInput, KvOutput>> = self
            .history
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.excluded.contains(i))
            .map(|(_, op)| op.clone())
            .collect();
        if let Some(path) = std::env::var_os("KEEL_SIM_HISTORY") {
            write_history(std::path::Path::new(&path), &ops);
        }
        match keel_check::check_operations(&keel_check::KvModel, &ops, Some(std::time::Duration::from_secs(30))) {
            keel_check::CheckResult::Ok => {}
            keel_check::CheckResult::Illegal { partition, failing, .. } => {
                let mut text = format!("history not linearizable (partition {partition}); shrunk failing sub-history:");
                for op in &failing {
                    text.push_str(&format!("\n    {}", describe_op(op)));
                }
                text.push_str(&self.history_context(&failing));
                self.invariants.violation(text);
            }
            keel_check::CheckResult::Unknown => {
                self.invariants.violation("linearizability check ran out of time".to_string());
            }
        }
    }
}

/// Writes the checked history, one operation per line (`client call ret|- input output`, Debug
/// forms), for studying the checker on a real history: set `KEEL_SIM_HISTORY=path` when
/// replaying one seed.
fn write_history(path: &std::path::Path, ops: &[Operation<KvInput, KvOutput>]) {
    let mut text = String::new();
    for op in ops {
        let ret = op.ret.map_or("-".to_string(), |ret| ret.to_string());
        text.push_str(&format!("{} {} {} {:?} {:?}\n", op.client_id, op.call, ret, op.input, op.output));
    }
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("keel-sim: cannot write the history to {}: {e}", path.display());
    }
}

fn key_of(input: &KvInput) -> u64 {
    match *input {
        KvInput::Get { key } | KvInput::Put { key, .. } | KvInput::Delete { key } | KvInput::Cas { key, .. } => key,
    }
}

fn describe_op(op: &Operation<KvInput, KvOutput>) -> String {
    let ret = op.ret.map_or("unknown".to_string(), |ret| format!("{ret}"));
    format!("[{:>5} .. {:>7}] client {} {:?} -> {:?}", op.call, ret, op.client_id, op.input, op.output)
}
