//! Shrinking an illegal partition to a small illegal sub-history.
//!
//! Illegality is not monotone under removing operations, and a careless
//! shrink changes *which* failure is reported: dropping the write that a
//! stale read observed turns the report into "read of a value never
//! written"; dropping the initial put of a lost update turns it into "CAS
//! succeeded on an absent key". Both are illegal, neither explains the bug.
//! So a set `C` of operations is dropped from the current core (whose search
//! got stuck after the partial linearization `L`) only if
//!
//! * (b) the remainder is illegal and its search still linearizes at least
//!   as many operations as `L` has outside `C`: `L` minus `C` stays valid, so
//!   `C` fed nothing that the linearization up to the failure relied on and
//!   the failure did not move earlier; and
//! * (a) the remainder stays illegal with `C` *weakened* — each operation in
//!   `C` allowed to take effect at any time after its call, or never — so no
//!   operation of `C` could have explained the failure had it happened later.
//!
//! The remainder being illegal is all the result's correctness rests on;
//! (a) and (b) only keep it telling, so (a) is checked cheaply (see
//! [`Shrinker::try_drop`]). Every re-check has a step cap, and an
//! inconclusive check keeps the operations.

use std::time::Instant;

use crate::search::{search, Limits, OpView, Outcome};
use crate::Model;

/// Cores at most this long go straight to delta debugging; longer ones are
/// first cut to a window in time around the failure.
const WINDOW_THRESHOLD: usize = 64;
/// Criterion (a) looks for explaining operations among at most this many of
/// the dropped ones, the latest called. A failure explained only by an
/// older one (a read of a value overwritten thousands of operations ago)
/// is reported without it: still illegal, as a read of a value the failing
/// sub-history never wrote.
const MAX_EXPLAINER_CANDIDATES: usize = 256;
/// At most this many search steps for one check of criterion (a).
const WEAKENED_CHECK_STEPS: u64 = 20_000;
/// At most this many re-checks in total (criterion (a) makes one per
/// dropped operation; most are tiny).
const MAX_CHECKS: usize = 100_000;
/// At most this many search steps over all small re-checks.
const MAX_TOTAL_STEPS: u64 = 20_000_000;
/// At most this many search steps for one small re-check.
const MAX_CHECK_STEPS: u64 = 1_000_000;

/// Returns a small subset of `part` (as indices into it) that is not
/// linearizable. `part` must be illegal; `longest` is the deepest partial
/// linearization its search reached and `search_steps` what that search
/// cost, which sizes the budget of re-checks on big parts of it.
pub(crate) fn shrink<M: Model>(
    model: &M,
    part: &[OpView<'_, M::Input, M::Output>],
    longest: &[usize],
    search_steps: u64,
    deadline: Option<Instant>,
) -> Vec<usize> {
    // A re-check of a large part of the history may cost a few times what
    // the original search did (its weakened operations add branching).
    let big_check_steps = MAX_CHECK_STEPS + 4 * search_steps;
    let mut shrinker = Shrinker {
        model,
        part,
        context: Vec::new(),
        deadline,
        checks_left: MAX_CHECKS,
        steps_left: MAX_TOTAL_STEPS + 2 * big_check_steps,
    };
    let mut core: Vec<usize> = (0..part.len()).collect();
    core.sort_by_key(|&i| (part[i].call, i));
    let mut linearized = longest.to_vec();

    if core.len() > WINDOW_THRESHOLD {
        core = shrinker.cut_tail(core, longest, big_check_steps);
        match shrinker.verdict_within(&core, &[], big_check_steps) {
            Verdict::Illegal { linearized: l } => linearized = l,
            // Illegal by construction, but the re-check hit a limit: without
            // its partial linearization, criterion (b) cannot be judged.
            _ => return core,
        }
    }
    let mut core = Core::new(core, &linearized, part.len());
    if core.ops.len() > WINDOW_THRESHOLD {
        shrinker.cut_head(&mut core);
    }
    shrinker.delta_debug(&mut core);
    core.ops
}

enum Verdict {
    Legal,
    /// `linearized`: the ops (indices into the part) of the deepest partial
    /// linearization among the ones checked as recorded.
    Illegal {
        linearized: Vec<usize>,
    },
    Inconclusive,
}

/// The current failing sub-history and what its search linearized.
struct Core {
    /// Indices into the part, sorted by call.
    ops: Vec<usize>,
    /// Per part index: in the deepest partial linearization of `ops`.
    linearized: Vec<bool>,
}

impl Core {
    fn new(ops: Vec<usize>, linearized: &[usize], part_len: usize) -> Self {
        let mut core = Core { ops, linearized: vec![false; part_len] };
        core.set_linearized(linearized);
        core
    }

    fn set_linearized(&mut self, linearized: &[usize]) {
        self.linearized.fill(false);
        for &i in linearized {
            self.linearized[i] = true;
        }
    }

    /// Replaces the core by `rest`, which passed the drop criteria.
    fn replace(&mut self, rest: Vec<usize>, linearized: &[usize]) {
        self.ops = rest;
        self.set_linearized(linearized);
    }
}

struct Shrinker<'m, 'p, 'a, M: Model> {
    model: &'m M,
    part: &'p [OpView<'a, M::Input, M::Output>],
    /// Operations cut off after the core that overlap it in time. They stay
    /// in every re-check, weakened, so that a kept read of a value written a
    /// little later does not become a second, unrelated failure. (The core
    /// alone is illegal too: weakened context allows everything that no
    /// context at all does.)
    context: Vec<usize>,
    deadline: Option<Instant>,
    checks_left: usize,
    steps_left: u64,
}

impl<M: Model> Shrinker<'_, '_, '_, M> {
    fn out_of_effort(&self) -> bool {
        self.checks_left == 0 || self.steps_left == 0 || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Checks the history made of `kept` as recorded plus `weakened` and the
    /// context with their outcomes forgotten.
    fn verdict(&mut self, kept: &[usize], weakened: &[usize]) -> Verdict {
        self.verdict_within(kept, weakened, MAX_CHECK_STEPS)
    }

    /// [`Self::verdict`] with at most `max_steps` search steps.
    fn verdict_within(&mut self, kept: &[usize], weakened: &[usize], max_steps: u64) -> Verdict {
        if self.out_of_effort() {
            return Verdict::Inconclusive;
        }
        self.checks_left -= 1;
        let ops: Vec<_> = kept
            .iter()
            .map(|&i| self.part[i])
            .chain(weakened.iter().chain(&self.context).map(|&i| self.part[i].weakened()))
            .collect();
        let never = || false;
        let limits =
            Limits { deadline: self.deadline, max_steps: Some(self.steps_left.min(max_steps)), cancelled: &never };
        let (outcome, steps) = search(self.model, &ops, &limits);
        self.steps_left = self.steps_left.saturating_sub(steps);
        match outcome {
            Outcome::Linearizable => Verdict::Legal,
            Outcome::Illegal { longest } => Verdict::Illegal {
                // Positions below kept.len() are the kept ops.
                linearized: longest
                    .into_iter()
                    .filter(|&position| position < kept.len())
                    .map(|position| kept[position])
                    .collect(),
            },
            Outcome::Aborted => Verdict::Inconclusive,
        }
    }

    /// Tries to drop `drop` from the core (leaving `rest`). Dropped
    /// operations that fail criterion (a) — each alone, weakened, makes the
    /// remainder linearizable: they explain the failure — are kept after
    /// all. Returns the new core (sorted by call) and its deepest partial
    /// linearization if the remainder passes (b) and is smaller than the core.
    ///
    /// Criterion (a) only decides how telling the result is, not whether it
    /// is illegal, so it is checked cheaply: the latest called
    /// [`MAX_EXPLAINER_CANDIDATES`] dropped operations are weakened one at a
    /// time, latest first, each search capped at [`WEAKENED_CHECK_STEPS`]. Weakening thousands of operations at once
    /// makes a search far costlier than the one that typically explains a
    /// failure (the write a stale read saw), while a lone optional operation
    /// barely adds to the cost of re-checking the remainder; a search that
    /// runs out of steps counts as "no explanation". (An explanation that
    /// needs two dropped operations together is missed.)
    fn try_drop(&mut self, core: &Core, rest: &[usize], drop: &[usize]) -> Option<(Vec<usize>, Vec<usize>)> {
        let mut rest = rest.to_vec();
        let mut linearized = self.passes_b(core, &rest)?;
        // Operations already of unknown outcome are unchanged by weakening,
        // and the check without them is the one just done.
        let mut explainers = Vec::new();
        for &op in drop.iter().rev().take(MAX_EXPLAINER_CANDIDATES) {
            if self.part[op].ret.is_none() {
                continue;
            }
            // Out of effort, every check is inconclusive: that is no evidence.
            if self.out_of_effort() {
                return None;
            }
            if let Verdict::Legal = self.verdict_within(&rest, &[op], WEAKENED_CHECK_STEPS) {
                explainers.push(op);
                rest.push(op);
                rest.sort_by_key(|&i| (self.part[i].call, i));
            }
        }
        if !explainers.is_empty() {
            if rest.len() >= core.ops.len() {
                return None;
            }
            linearized = self.passes_b(core, &rest)?;
        }
        Some((rest, linearized))
    }

    /// Criterion (b): if `rest` is illegal and its search linearizes at
    /// least as many operations as the core's did among `rest`, the deepest
    /// partial linearization of `rest`.
    fn passes_b(&mut self, core: &Core, rest: &[usize]) -> Option<Vec<usize>> {
        let Verdict::Illegal { linearized } = self.verdict(rest, &[]) else {
            return None;
        };
        let still_needed = rest.iter().filter(|&&i| core.linearized[i]).count();
        (linearized.len() >= still_needed).then_some(linearized)
    }

    /// Cuts `core` (sorted by call) to an illegal prefix in call order. A
    /// prefix counts as illegal only if it is illegal with every later
    /// operation that overlaps it weakened, so the cut does not turn a kept
    /// read of a value written a little later into a second failure; those
    /// overlapping operations become the context.
    ///
    /// The first candidate is where the search got stuck: everything called
    /// up to the earliest return of a required operation missing from the
    /// deepest partial linearization. If that prefix is not (provably)
    /// illegal, binary search for one.
    fn cut_tail(&mut self, core: Vec<usize>, longest: &[usize], big_check_steps: u64) -> Vec<usize> {
        let overlapping = |part: &[OpView<'_, M::Input, M::Output>], k: usize| {
            let (prefix, suffix) = core.split_at(k);
            // Later operations called after every known-outcome prefix op
            // returned must be linearized after all of them, so they cannot
            // matter: only the overlapping ones need weakening.
            let horizon = prefix.iter().filter_map(|&i| part[i].ret).max();
            suffix.iter().copied().filter(|&i| horizon.is_some_and(|h| part[i].call <= h)).collect::<Vec<usize>>()
        };

        let mut in_longest = vec![false; self.part.len()];
        for &i in longest {
            in_longest[i] = true;
        }
        let stuck_at = (0..self.part.len()).filter(|&i| !in_longest[i]).filter_map(|i| self.part[i].ret).min();
        let mut hi = core.len();
        if let Some(stuck_at) = stuck_at {
            let k = core.partition_point(|&i| self.part[i].call <= stuck_at);
            if k < hi {
                let weakened = overlapping(self.part, k);
                if let Verdict::Illegal { .. } = self.verdict_within(&core[..k], &weakened, big_check_steps) {
                    hi = k;
                }
            }
        }

        if hi == core.len() {
            // Invariant: prefix `hi` is illegal (the whole core is), prefix
            // `lo` is not known to be.
            let mut lo = 0;
            while hi - lo > 1 && !self.out_of_effort() {
                let mid = lo + (hi - lo) / 2;
                let weakened = overlapping(self.part, mid);
                match self.verdict(&core[..mid], &weakened) {
                    Verdict::Illegal { .. } => hi = mid,
                    Verdict::Legal | Verdict::Inconclusive => lo = mid,
                }
            }
        }
        self.context = overlapping(self.part, hi);
        let mut core = core;
        core.truncate(hi);
        core
    }

    /// Cuts the core (sorted by call, ending where the failure was found) to
    /// the shortest suffix found that passes the drop criteria. A suffix
    /// usually only passes (b) when it starts at a "clean" point, such as a
    /// write that everything after it builds on, so lengths are scanned one
    /// by one while small and then in steps of about 6%. Short suffixes come
    /// first: their checks are cheap.
    fn cut_head(&mut self, core: &mut Core) {
        let mut window = 1;
        while window < core.ops.len() && !self.out_of_effort() {
            let (dropped, rest) = core.ops.split_at(core.ops.len() - window);
            if let Some((rest, linearized)) = self.try_drop(core, rest, dropped) {
                core.replace(rest, &linearized);
                return;
            }
            window += (window / 16).max(1);
        }
    }

    /// Greedy delta debugging: try dropping chunks of halving size, then
    /// single operations, until nothing more can be dropped or the effort
    /// bound is reached.
    fn delta_debug(&mut self, core: &mut Core) {
        let mut chunk = (core.ops.len() / 2).max(1);
        loop {
            let mut dropped_any = false;
            let mut start = 0;
            while start < core.ops.len() {
                if self.out_of_effort() {
                    return;
                }
                let end = (start + chunk).min(core.ops.len());
                if end - start == core.ops.len() {
                    // Dropping everything leaves the empty, legal history.
                    break;
                }
                let rest: Vec<usize> = core.ops[..start].iter().chain(&core.ops[end..]).copied().collect();
                match self.try_drop(core, &rest, &core.ops[start..end]) {
                    Some((rest, linearized)) => {
                        // Explainers kept from the chunk now sit where it
                        // was (the core is in call order); move past them.
                        let explainers = rest.len() + (end - start) - core.ops.len();
                        core.replace(rest, &linearized);
                        dropped_any = true;
                        start += explainers;
                    }
                    None => start = end,
                }
            }
            if chunk == 1 && !dropped_any {
                return;
            }
            if !dropped_any || chunk > core.ops.len() / 2 {
                chunk = (chunk / 2).max(1);
            }
        }
    }
}
