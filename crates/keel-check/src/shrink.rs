//! Shrinking an illegal partition to a small illegal sub-history.
//!
//! Illegality is not monotone under removing operations: dropping the write
//! that a stale read observed turns the report into "read of a value never
//! written", which is illegal too but no longer explains the bug. So a set
//! `C` of operations is dropped from the current core only if
//!
//! * (a) the core stays illegal with `C` *weakened* — each operation in `C`
//!   allowed to take effect at any time after its call, or never. The dropped
//!   history is one of the weakened history's possibilities, so it is
//!   illegal too; and the failure did not depend on *when* `C` happened.
//! * (b) the search on the remainder still gets about as deep before getting
//!   stuck (`depth(rest) + |C| >= depth(core)`): the failure did not move
//!   earlier, e.g. because a dropped write left an earlier read unexplained.
//!
//! Every re-check has a step cap; an inconclusive re-check keeps the ops.

use std::time::Instant;

use crate::search::{search, Limits, OpView, Outcome};
use crate::Model;

/// Cores at most this long go straight to delta debugging; longer ones are
/// first cut to a window in time around the failure.
const WINDOW_THRESHOLD: usize = 64;
/// At most this many re-checks in total.
const MAX_CHECKS: usize = 3_000;
/// At most this many search steps over all re-checks.
const MAX_TOTAL_STEPS: u64 = 30_000_000;
/// At most this many search steps for one re-check.
const MAX_CHECK_STEPS: u64 = 2_000_000;

/// Returns a small subset of `part` (as indices into it) that is not
/// linearizable. `part` must be illegal and the search on it must have
/// reached depth `depth`.
pub(crate) fn shrink<M: Model>(
    model: &M,
    part: &[OpView<'_, M::Input, M::Output>],
    depth: usize,
    deadline: Option<Instant>,
) -> Vec<usize> {
    let mut shrinker = Shrinker {
        model,
        part,
        deadline,
        checks_left: MAX_CHECKS,
        steps_left: MAX_TOTAL_STEPS,
    };
    let mut core: Vec<usize> = (0..part.len()).collect();
    core.sort_by_key(|&i| (part[i].call, i));
    let mut depth = depth;

    if core.len() > WINDOW_THRESHOLD {
        core = shrinker.cut_tail(core);
        match shrinker.verdict(&core, &[]) {
            Verdict::Illegal { depth: d } => depth = d,
            // Illegal by construction, but the re-check hit a limit: we have
            // no depth to compare against, so stop here.
            _ => return core,
        }
    }
    if core.len() > WINDOW_THRESHOLD {
        (core, depth) = shrinker.cut_head(core, depth);
    }
    shrinker.delta_debug(core, depth)
}

enum Verdict {
    Legal,
    Illegal { depth: usize },
    Inconclusive,
}

struct Shrinker<'m, 'p, 'a, M: Model> {
    model: &'m M,
    part: &'p [OpView<'a, M::Input, M::Output>],
    deadline: Option<Instant>,
    checks_left: usize,
    steps_left: u64,
}

impl<M: Model> Shrinker<'_, '_, '_, M> {
    fn out_of_effort(&self) -> bool {
        self.checks_left == 0
            || self.steps_left == 0
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Checks the history made of `kept` as recorded plus `weakened` with
    /// their outcomes forgotten.
    fn verdict(&mut self, kept: &[usize], weakened: &[usize]) -> Verdict {
        if self.out_of_effort() {
            return Verdict::Inconclusive;
        }
        self.checks_left -= 1;
        let ops: Vec<_> = kept
            .iter()
            .map(|&i| self.part[i])
            .chain(weakened.iter().map(|&i| self.part[i].weakened()))
            .collect();
        let never = || false;
        let limits = Limits {
            deadline: self.deadline,
            max_steps: Some(self.steps_left.min(MAX_CHECK_STEPS)),
            cancelled: &never,
        };
        let (outcome, steps) = search(self.model, &ops, &limits);
        self.steps_left = self.steps_left.saturating_sub(steps);
        match outcome {
            Outcome::Linearizable => Verdict::Legal,
            Outcome::Illegal { longest } => Verdict::Illegal {
                depth: longest.len(),
            },
            Outcome::Aborted => Verdict::Inconclusive,
        }
    }

    /// If `core` minus `drop` passes criteria (a) and (b), the search depth of
    /// the remainder.
    fn try_drop(&mut self, rest: &[usize], drop: &[usize], depth: usize) -> Option<usize> {
        let Verdict::Illegal { depth: rest_depth } = self.verdict(rest, &[]) else {
            return None;
        };
        if rest_depth + drop.len() < depth {
            return None;
        }
        // Operations already of unknown outcome are unchanged by weakening;
        // if nothing else is dropped, (a) is the check we just did.
        let to_weaken: Vec<usize> = drop
            .iter()
            .copied()
            .filter(|&i| self.part[i].ret.is_some())
            .collect();
        if to_weaken.is_empty() {
            return Some(rest_depth);
        }
        match self.verdict(rest, &to_weaken) {
            Verdict::Illegal { .. } => Some(rest_depth),
            _ => None,
        }
    }

    /// Cuts `core` (sorted by call) to its shortest-found illegal prefix in
    /// call order, by binary search. A prefix counts as illegal only if it is
    /// illegal with every later operation that overlaps it weakened, so the
    /// cut does not remove a write that a kept read may have observed.
    fn cut_tail(&mut self, core: Vec<usize>) -> Vec<usize> {
        // Invariant: prefix `hi` is illegal (the whole core is), prefix `lo`
        // is not known to be.
        let (mut lo, mut hi) = (0, core.len());
        while hi - lo > 1 && !self.out_of_effort() {
            let mid = lo + (hi - lo) / 2;
            let (prefix, suffix) = core.split_at(mid);
            // Later operations called after every known-outcome prefix op
            // returned must be linearized after all of them, so they cannot
            // matter: only the overlapping ones need weakening.
            let horizon = prefix.iter().filter_map(|&i| self.part[i].ret).max();
            let overlapping: Vec<usize> = suffix
                .iter()
                .copied()
                .filter(|&i| horizon.is_some_and(|h| self.part[i].call <= h))
                .collect();
            match self.verdict(prefix, &overlapping) {
                Verdict::Illegal { .. } => hi = mid,
                Verdict::Legal | Verdict::Inconclusive => lo = mid,
            }
        }
        let mut core = core;
        core.truncate(hi);
        core
    }

    /// Drops the longest-found prefix (in call order) of `core` that passes
    /// the drop criteria, by binary search.
    fn cut_head(&mut self, core: Vec<usize>, depth: usize) -> (Vec<usize>, usize) {
        // Invariant: dropping `lo` leading ops is fine (zero trivially),
        // dropping `hi` is not known to be (all of them leaves a legal,
        // empty history).
        let (mut lo, mut hi) = (0, core.len());
        let mut lo_depth = depth;
        while hi - lo > 1 && !self.out_of_effort() {
            let mid = lo + (hi - lo) / 2;
            let (dropped, rest) = core.split_at(mid);
            match self.try_drop(rest, dropped, depth) {
                Some(rest_depth) => {
                    lo = mid;
                    lo_depth = rest_depth;
                }
                None => hi = mid,
            }
        }
        (core[lo..].to_vec(), lo_depth)
    }

    /// Greedy delta debugging: try dropping chunks of halving size, then
    /// single operations, until nothing more can be dropped or the effort
    /// bound is reached.
    fn delta_debug(&mut self, mut core: Vec<usize>, mut depth: usize) -> Vec<usize> {
        let mut chunk = (core.len() / 2).max(1);
        loop {
            let mut dropped_any = false;
            let mut start = 0;
            while start < core.len() {
                if self.out_of_effort() {
                    return core;
                }
                let end = (start + chunk).min(core.len());
                if end - start == core.len() {
                    // Dropping everything leaves the empty, legal history.
                    break;
                }
                let rest: Vec<usize> = core[..start]
                    .iter()
                    .chain(&core[end..])
                    .copied()
                    .collect();
                match self.try_drop(&rest, &core[start..end], depth) {
                    Some(rest_depth) => {
                        core = rest;
                        depth = rest_depth;
                        dropped_any = true;
                    }
                    None => start = end,
                }
            }
            if chunk == 1 && !dropped_any {
                return core;
            }
            if !dropped_any || chunk > core.len() / 2 {
                chunk = (chunk / 2).max(1);
            }
        }
    }
}
