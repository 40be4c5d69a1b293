//! # keel-check — linearizability checking for recorded histories
//!
//! A *history* is a set of [`Operation`]s recorded by clients of a concurrent
//! system: each has an input, an output, the time it was invoked (`call`) and
//! the time its result came back (`ret`). The history is *linearizable* with
//! respect to a sequential specification (a [`Model`]) if there is a total
//! order of its operations that
//!
//! 1. respects real time — if `a.ret < b.call` then `a` comes before `b`
//!    (operations whose windows overlap, `a.ret >= b.call` and
//!    `b.ret >= a.call`, may go either way), and
//! 2. is legal — starting from [`Model::init`], every operation's output is
//!    accepted by [`Model::step`] in the state left by its predecessors.
//!
//! [`check_operations`] decides this. A ready-made etcd-like key/value model
//! is provided as [`KvModel`].
//!
//! ## Algorithm
//!
//! This is the Wing–Gong exhaustive search with Lowe's memoisation, as refined
//! by Porcupine (Anish Athalye), implemented from the published description,
//! plus pruning for operations of unknown outcome:
//!
//! * **P-compositionality.** Linearizability is local: a history is
//!   linearizable iff each sub-history over an independent object is.
//!   [`Model::partition`] splits the history (the KV model splits by key) and
//!   every partition is searched on its own, in parallel on up to
//!   [`std::thread::available_parallelism`] threads. Partitions are handed out
//!   in index order and the first illegal one stops the work on all later
//!   ones, so the reported partition is the lowest-numbered illegal one.
//! * **Event list.** Each operation with a known outcome contributes a call
//!   and a return event. They are sorted by time into a doubly linked list;
//!   at equal times calls sort before returns, so `a.ret == b.call` counts as
//!   *concurrent* (only `a.ret < b.call` orders `a` before `b`).
//! * **Depth-first search.** The search walks the list from the front. At a
//!   call event it tries to linearize that operation now: if the model accepts
//!   the output, the operation's events are unlinked from the list ("lifted"),
//!   it is pushed on a stack with the previous model state, and the walk
//!   restarts at the front. Otherwise it moves on to the next event. Reaching
//!   a *return* event means the operation returning there is not linearized
//!   yet and nothing invoked later may precede it: the only moves left are
//!   unknown-outcome operations (below); once those are tried too, the search
//!   backtracks — pops the stack, restores the state, re-links the popped
//!   operation's events (dancing links make this O(1)) and continues after it.
//! * **Memoisation.** Two search nodes with the same set of linearized
//!   operations and the same model state have identical futures, so every
//!   node is recorded in a hash set keyed by (linearized set, state) and a
//!   node seen before is not explored again. Operations are numbered in call
//!   order, so the linearized set is mostly a dense prefix and its bitset is
//!   stored compactly ("leading all-ones words" plus the rest).
//!
//! ## Unknown outcomes
//!
//! An operation with `ret: None` timed out or its client crashed: it may have
//! taken effect at any moment after its `call`, or never. The checker lets it
//! be linearized anywhere after its invocation (as if it returned at +∞) and
//! makes it *optional*: the search succeeds as soon as every operation with a
//! known return is linearized. Its output is still handed to
//! [`Model::step`], so a model decides what an unknown output matches (for
//! [`KvModel`], [`KvOutput::Unknown`] matches anything).
//!
//! Such operations are what makes checking hard: each stays pending to the
//! end of its partition, so plain memoisation explores every subset of them
//! that could have happened. The search prunes with a dominance argument: a
//! node with the same required operations and state as another but a
//! *superset* of linearized unknown operations can do nothing the other
//! can't. So the memo keeps, per (required set, state), the minimal sets of
//! unknown operations seen and skips dominated nodes; required operations are
//! tried before unknown ones so that smaller sets tend to come first; and
//! right after linearizing an unknown operation, only operations whose effect
//! differs from what they would have done one step earlier are tried — an
//! unknown operation is linearized only right before something that
//! observes it. [`Model::is_blind_write`] lets a model mark writes whose
//! effect never depends on the state (puts, deletes), which makes that last
//! rule free for them, and makes unknown blind writes with the same effect
//! (say, timed-out deletes) interchangeable: of those only the
//! earliest-invoked one not yet linearized is tried, since it may go
//! wherever a later one may. Unknown candidates are tried newest first: the
//! ones that explain an observation are usually recent, the ones that never
//! happened pile up at the old end. Per model state, the search remembers
//! which unknown operations can change it at all, so a dead end does not
//! step through the many that cannot (a compare-and-swap expecting another
//! value, a delete of an absent key).
//!
//! ## Failure reports
//!
//! For an illegal history [`CheckResult::Illegal`] carries the longest
//! partial linearization the search found (where it got stuck) and a shrunk
//! failing sub-history: a small subset of the failing partition that is
//! itself not linearizable. Shrinking first cuts the partition to the
//! operations invoked up to where the search got stuck, then to a short
//! window before that point, then drops chunks and single operations
//! greedily (delta debugging). A drop is kept only if the remainder is still
//! illegal *for the same reason*: its search still gets as far, and no
//! dropped operation could have explained the failure had it happened later
//! (those are kept instead). So a stale read shrinks to the write it saw, the
//! write that overwrote it and the read — not to "a read of a value nobody
//! wrote", which would be illegal too but explain nothing. Shrinking is
//! bounded in search steps (and by the time budget), so on huge partitions
//! the result is minimal-ish.
//!
//! ## Complexity
//!
//! Deciding linearizability is NP-complete, and the search is exponential in
//! the worst case. Its cost is governed by the number of distinct search
//! nodes: with at most `c` operations pending at any instant, a partition of
//! `n` operations with known outcomes has at most about `n · 2^c · |states|`
//! of them, and each search step costs O(1) plus hashing a memo key
//! (O(c/64) words plus the state). Partitioning keeps `n` and `c` small in
//! practice: 100,000 operations over 1,000 keys check in well under a second.
//! Unknown-outcome operations multiply this by a factor that the pruning
//! above keeps polynomial in their number in typical histories (each pending
//! one is probed at every dead end); adversarial ones, e.g. thousands of
//! timed-out writes that could each explain failed compare-and-swaps on one
//! key, can still blow up, which is what the time budget is for. Memory is
//! one memo entry per explored node.
//!
//! ## Time budget
//!
//! `check_operations` takes an optional budget; the search looks at the clock
//! every few thousand steps and returns [`CheckResult::Unknown`] once it is
//! spent (an already proven violation is still reported as `Illegal`).
//!
//! ## Input conventions
//!
//! Times are any monotonic unit. A `ret` earlier than its `call` is treated as
//! equal to `call`. Indices that [`Model::partition`] leaves out of every
//! partition are not checked at all (the KV model uses this to drop reads with
//! unknown results, which constrain nothing).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod kv;
mod search;
mod shrink;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use kv::{Key, KvInput, KvModel, KvOutput, Value};

use search::{Limits, OpView, Outcome};

/// A sequential specification of the object whose history is checked.
///
/// Partitions are checked on several threads, hence the `Sync` bounds; model
/// states never leave the thread that computed them.
pub trait Model: Sync {
    /// A state of the object. Hashed and compared for memoisation, so keep it small.
    type State: Clone + Eq + std::hash::Hash + std::fmt::Debug;
    /// An operation's input (what the client asked for).
    type Input: Clone + std::fmt::Debug + Sync;
    /// An operation's output (what the client observed).
    type Output: Clone + std::fmt::Debug + Sync;

    /// The initial state.
    fn init(&self) -> Self::State;

    /// If `output` is a legal result of applying `input` to `state`, the next state.
    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State>;

    /// Split a history into independent sub-histories (P-compositionality);
    /// default: one partition. Each inner vector lists indices into `ops`;
    /// an index may appear in at most one partition, and indices that appear
    /// in none are not checked.
    fn partition(&self, ops: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..ops.len()).collect()]
    }

    /// Optional performance hint: `true` if an operation with this input and
    /// output is legal in every state and leads to the same next state
    /// whatever the state before it — a *blind write*, such as a put or a
    /// delete. Such an operation of unknown outcome can only matter right
    /// before an operation that observes its effect, which lets the search
    /// skip it in most places. Histories with many unknown-outcome writes in
    /// one partition check much faster with this hint.
    ///
    /// It must be exact: `true` for an operation that is not a blind write can
    /// make the checker report a linearizable history as illegal. Default:
    /// `false`, which is always correct.
    fn is_blind_write(&self, input: &Self::Input, output: &Self::Output) -> bool {
        let _ = (input, output);
        false
    }
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation<I, O> {
    /// The client that issued the operation (informational; the checker does
    /// not assume clients are sequential).
    pub client_id: u64,
    /// What was asked.
    pub input: I,
    /// Invocation time (any monotonic unit).
    pub call: u64,
    /// What was observed. For an operation with `ret: None` this is whatever
    /// the model treats as "unknown" (e.g. [`KvOutput::Unknown`]).
    pub output: O,
    /// Completion time; `None` = outcome unknown (timed out / crashed client):
    /// it may have taken effect at any point after `call`, or never.
    pub ret: Option<u64>,
}

/// The verdict of [`check_operations`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult<I, O> {
    /// The history is linearizable.
    Ok,
    /// Not linearizable. `partition` is the index of the failing partition;
    /// `failing` is a small failing sub-history (shrunk: a minimal-ish subset
    /// of the partition's ops that is itself not linearizable), sorted by call
    /// time; `longest_prefix` the ops of the longest partial linearization
    /// found, in linearization order.
    Illegal {
        /// Index into [`Model::partition`]'s result.
        partition: usize,
        /// A shrunk, still non-linearizable sub-history of that partition.
        failing: Vec<Operation<I, O>>,
        /// The longest partial linearization of the partition the search reached.
        longest_prefix: Vec<Operation<I, O>>,
    },
    /// The time budget ran out before a verdict.
    Unknown,
}

impl<I, O> CheckResult<I, O> {
    /// True for [`CheckResult::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    /// True for [`CheckResult::Illegal`].
    pub fn is_illegal(&self) -> bool {
        matches!(self, CheckResult::Illegal { .. })
    }

    /// True for [`CheckResult::Unknown`].
    pub fn is_unknown(&self) -> bool {
        matches!(self, CheckResult::Unknown)
    }
}

/// Checks whether `ops` is linearizable with respect to `model`.
///
/// `budget` bounds the wall-clock time of the search (shrinking a failure
/// also stops when it is spent); `None` means no limit.
///
/// # Panics
///
/// If [`Model::partition`] returns an index out of range or the same index
/// twice — a bug in the model, not in the history.
pub fn check_operations<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    budget: Option<Duration>,
) -> CheckResult<M::Input, M::Output> {
    // A budget too large to represent as an instant is no budget at all.
    let deadline = budget.and_then(|b| Instant::now().checked_add(b));

    let partitions = model.partition(ops);
    let mut seen = vec![false; ops.len()];
    for &index in partitions.iter().flatten() {
        assert!(index < ops.len(), "Model::partition returned index {index} for a history of {} operations", ops.len());
        assert!(!seen[index], "Model::partition put operation {index} in two partitions");
        seen[index] = true;
    }

    let views: Vec<Vec<OpView<'_, M::Input, M::Output>>> =
        partitions.iter().map(|part| part.iter().map(|&i| OpView::of(&ops[i])).collect()).collect();

    let summary = check_partitions(model, &views, deadline);
    let Some(failure) = summary.first_illegal else {
        return if summary.timed_out { CheckResult::Unknown } else { CheckResult::Ok };
    };

    let part = &partitions[failure.partition];
    let core = shrink::shrink(model, &views[failure.partition], &failure.longest, failure.search_steps, deadline);
    let mut failing: Vec<usize> = core.into_iter().map(|local| part[local]).collect();
    failing.sort_by_key(|&i| (ops[i].call, i));
    CheckResult::Illegal {
        partition: failure.partition,
        failing: failing.into_iter().map(|i| ops[i].clone()).collect(),
        longest_prefix: failure.longest.into_iter().map(|local| ops[part[local]].clone()).collect(),
    }
}

/// The first (lowest-index) illegal partition and its longest linearized
/// prefix, as indices into that partition.
struct Failure {
    partition: usize,
    longest: Vec<usize>,
    /// What the search of that partition cost.
    search_steps: u64,
}

struct Summary {
    first_illegal: Option<Failure>,
    timed_out: bool,
}

/// Searches every partition, in parallel when there is more than one.
fn check_partitions<M: Model>(
    model: &M,
    partitions: &[Vec<OpView<'_, M::Input, M::Output>>],
    deadline: Option<Instant>,
) -> Summary {
    let next_partition = AtomicUsize::new(0);
    // Index of the lowest partition proven illegal so far (usize::MAX: none).
    // Work on higher partitions is pointless once it is set: the answer is
    // already "illegal" and we want the lowest failing index for determinism.
    let lowest_illegal = AtomicUsize::new(usize::MAX);
    let timed_out = AtomicBool::new(false);
    let failure: Mutex<Option<Failure>> = Mutex::new(None);

    let worker = || loop {
        let index = next_partition.fetch_add(1, Ordering::Relaxed);
        if index >= partitions.len()
            || index > lowest_illegal.load(Ordering::Relaxed)
            || timed_out.load(Ordering::Relaxed)
        {
            return;
        }
        let superseded = || lowest_illegal.load(Ordering::Relaxed) < index;
        let limits = Limits { deadline, max_steps: None, cancelled: &superseded };
        let (outcome, steps) = search::search(model, &partitions[index], &limits);
        match outcome {
            Outcome::Linearizable => {}
            Outcome::Illegal { longest } => {
                lowest_illegal.fetch_min(index, Ordering::Relaxed);
                let mut slot = failure.lock().unwrap_or_else(PoisonError::into_inner);
                // Keep the lowest failing partition (another thread may have
                // recorded a higher one first).
                if slot.as_ref().is_none_or(|existing| existing.partition > index) {
                    *slot = Some(Failure { partition: index, longest, search_steps: steps });
                }
            }
            Outcome::Aborted => {
                // Aborted because a lower partition already failed: irrelevant.
                // Otherwise the clock ran out.
                if !superseded() {
                    timed_out.store(true, Ordering::Relaxed);
                }
            }
        }
    };

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(partitions.len());
    if threads <= 1 {
        worker();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(worker);
            }
        });
    }

    Summary {
        first_illegal: failure.into_inner().unwrap_or_else(PoisonError::into_inner),
        timed_out: timed_out.into_inner(),
    }
}
