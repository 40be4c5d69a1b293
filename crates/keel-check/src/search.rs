//! The depth-first linearization search over one partition.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Instant;

use crate::{Model, Operation};

/// How often (in search steps) the search looks at the clock and at its
/// cancellation flag. `Instant::now` is cheap but not free.
const CHECK_INTERVAL: u64 = 4096;

/// One operation as the search sees it: borrowed input and output, plus the
/// timing (which shrinking rewrites to weaken an operation without cloning it).
pub(crate) struct OpView<'a, I, O> {
    pub input: &'a I,
    pub output: &'a O,
    pub call: u64,
    /// `None`: outcome unknown, so the operation is optional and may take
    /// effect at any point after `call`.
    pub ret: Option<u64>,
}

// Manual impls: a derive would needlessly require `I: Copy, O: Copy`.
impl<I, O> Clone for OpView<'_, I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for OpView<'_, I, O> {}

impl<'a, I, O> OpView<'a, I, O> {
    pub fn of(op: &'a Operation<I, O>) -> Self {
        OpView {
            input: &op.input,
            output: &op.output,
            call: op.call,
            // A return before the call is a recording glitch; the most
            // conservative reading is an instantaneous operation.
            ret: op.ret.map(|ret| ret.max(op.call)),
        }
    }

    /// The same operation with its outcome forgotten: it may now take effect
    /// at any point after its call, or never.
    pub fn weakened(self) -> Self {
        OpView { ret: None, ..self }
    }
}

/// When to give up on a search.
pub(crate) struct Limits<'a> {
    pub deadline: Option<Instant>,
    pub max_steps: Option<u64>,
    /// Polled every [`CHECK_INTERVAL`] steps; `true` abandons the search.
    pub cancelled: &'a dyn Fn() -> bool,
}

impl Limits<'_> {
    fn exhausted(&self, steps: u64) -> bool {
        if self.max_steps.is_some_and(|max| steps > max) {
            return true;
        }
        // Look at the clock on the first step too, so that a zero budget
        // yields "unknown" even for tiny histories.
        if steps % CHECK_INTERVAL == 1 {
            return self.deadline.is_some_and(|d| Instant::now() >= d) || (self.cancelled)();
        }
        false
    }
}

/// The result of searching one partition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Linearizable,
    /// No linearization exists. `longest` is the deepest partial
    /// linearization reached, as indices into the searched ops, in order.
    Illegal {
        longest: Vec<usize>,
    },
    /// A limit was hit before a verdict.
    Aborted,
}

/// Which candidates a search node is currently trying. A node goes through
/// the phases in this order, then backtracks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Operations with a known outcome (tried first: see [`search`]).
    Required,
    /// Operations of unknown outcome invoked no later than the earliest
    /// return of a required operation not yet linearized — the first
    /// `callable` ones — and able to change the state (`moves` indexes
    /// [`UnknownMoves`]): first the ones that are not blind writes, then
    /// (`blind`) the blind writes.
    Unknown { callable: usize, blind: bool, moves: usize },
}

/// Which kind of operation a move linearized.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Required,
    Unknown { blind: bool },
}

/// A move on the search stack: the operation linearized (by its node in the
/// required list; for an unknown one its id), and what is needed to resume
/// its parent node after undoing it.
struct Frame<S> {
    node: usize,
    kind: Kind,
    id: usize,
    parent_state: S,
    parent_phase: Phase,
    parent_entered_by_unknown: bool,
}

/// Searches for a linearization of `ops`. Returns the outcome and the number
/// of steps taken.
///
/// A search node is a configuration (required ops linearized `R`, unknown ops
/// linearized `U`, model state). Unknown-outcome operations never block
/// anything (their return is at +∞) and need not be linearized, so a node
/// *dominates* every node with the same `R` and state and a larger `U`:
/// whatever completes the larger one completes the smaller one. Three rules
/// exploit this so that, in typical histories, the search does not explore
/// every subset of the pending unknown operations:
///
/// 1. The memo records, per (`R`, state), the minimal `U` sets seen, and a
///    node dominated by one of them is not explored.
/// 2. At each node, required operations are tried before unknown ones, so
///    the node with the smaller `U` tends to be visited first.
/// 3. Right after linearizing an unknown operation `u` from parent `P`, an
///    operation `v` is skipped if it leads to the same state as `v` applied
///    to `P` directly: that sibling has a smaller `U`, so it dominates, and
///    `P` explores it. The check is made for unknown `v` (for required ones
///    the memo catches it); for a blind write ([`Model::is_blind_write`]),
///    required or not, it always holds, so blind writes are not even tried
///    there. In effect an unknown operation is only linearized right before
///    an operation that observes its effect.
/// 4. Unknown blind writes with the same effect (say, timed-out deletes) are
///    interchangeable, except that the earlier-called one may go wherever
///    the later one may: so of each such class only the earliest-called one
///    not yet linearized is tried. Any linearization can be rewritten to use
///    them in that order (the `k`-th used goes to the `k`-th earliest call,
///    which is no later than the call of the one it replaces), so nothing is
///    lost, and `U` is always a prefix of each class, so rule 1 compares
///    the classes by how many of their members are used.
///
/// Required operations live in a list of call and return events. Unknown
/// ones are bitsets (their returns would all sit at +∞): per model state
/// the ones that can change it ([`UnknownMoves`]), as most cannot — a
/// compare-and-swap expecting another value, a delete of an absent key —
/// and a dead end would otherwise step through all of them. Unknown
/// candidates are tried newest first (see where `moves` is built).
pub(crate) fn search<M: Model>(
    model: &M,
    ops: &[OpView<'_, M::Input, M::Output>],
    limits: &Limits<'_>,
) -> (Outcome, u64) {
    search_with(model, ops, limits, Pruning::ALL)
}

/// Which of the pruning rules for unknown-outcome operations [`search`]
/// applies; without them it is the plain search with exact memoisation,
/// which the tests use as the reference.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pruning {
    /// Rules 1–3: dominance by fewer linearized unknown operations.
    pub dominance: bool,
    /// Rule 4: interchangeable unknown blind writes in call order.
    pub twins: bool,
}

impl Pruning {
    pub const ALL: Pruning = Pruning { dominance: true, twins: true };
    #[cfg(test)]
    pub const NONE: Pruning = Pruning { dominance: false, twins: false };
}

pub(crate) fn search_with<M: Model>(
    model: &M,
    ops: &[OpView<'_, M::Input, M::Output>],
    limits: &Limits<'_>,
    pruning: Pruning,
) -> (Outcome, u64) {
    // Number each kind by call time: the set of linearized operations is
    // then mostly a dense prefix of the numbering, which keeps memo keys small.
    let mut by_call: Vec<usize> = (0..ops.len()).collect();
    by_call.sort_by_key(|&i| (ops[i].call, i));
    let (required_ops, unknown_ops): (Vec<usize>, Vec<usize>) =
        by_call.into_iter().partition(|&i| ops[i].ret.is_some());
    if required_ops.is_empty() {
        // Only unknown-outcome operations: "none of them happened" is valid.
        return (Outcome::Linearizable, 0);
    }

    let mut required_list = EventList::new(ops, &required_ops);
    let blind = |indices: &[usize]| -> Vec<bool> {
        indices.iter().map(|&i| model.is_blind_write(ops[i].input, ops[i].output)).collect()
    };
    let required_blind = blind(&required_ops);
    let unknown_blind = blind(&unknown_ops);
    // Rule 4: per unknown blind write, the previous one (in call order) with
    // the same effect. A blind write's effect does not depend on the state,
    // so its step from the initial state is its effect.
    let mut twin_before: Vec<Option<usize>> = vec![None; unknown_ops.len()];
    if pruning.twins {
        let init = model.init();
        let mut latest_with_effect: HashMap<M::State, usize> = HashMap::new();
        for (id, &index) in unknown_ops.iter().enumerate() {
            if let Some(effect) = unknown_blind[id].then(|| model.step(&init, ops[index].input, ops[index].output)) {
                let effect = effect.expect("a blind write is legal in every state");
                twin_before[id] = latest_with_effect.insert(effect, id);
            }
        }
    }
    let unknown_calls: Vec<u64> = unknown_ops.iter().map(|&i| ops[i].call).collect();
    // Indexed by `blind as usize`: the unknown operations of each kind.
    let unknown_kinds = [false, true].map(|blind| {
        let mut words = vec![0u64; unknown_ops.len().div_ceil(64)];
        (0..unknown_ops.len()).filter(|&id| unknown_blind[id] == blind).for_each(|id| set_bit(&mut words, id));
        words
    });
    let mut moves = UnknownMoves::default();
    let mut required = Bitset::new(required_ops.len());
    let mut unknown = vec![0u64; unknown_ops.len().div_ceil(64)];
    let mut required_left = required_ops.len();
    let mut unknown_left = unknown_ops.len();
    let mut memo = Memo::new(pruning.dominance);
    let mut state = model.init();
    memo.visit(&required, &unknown, state.clone());

    let mut stack: Vec<Frame<M::State>> = Vec::new();
    // The operations on the stack, in order (kept separately for
    // `LongestPrefix`), as indices into `ops`.
    let mut path: Vec<usize> = Vec::new();
    let mut longest = LongestPrefix::default();

    // The current node's progress: its phase, whether it was reached by
    // linearizing an unknown operation (rule 3), and the entry to look at
    // next in the current phase's list.
    let mut phase = Phase::Required;
    let mut entered_by_unknown = false;
    let mut entry = required_list.first();
    let mut steps: u64 = 0;
    loop {
        steps += 1;
        if limits.exhausted(steps) {
            return (Outcome::Aborted, steps);
        }

        // Find the next candidate move of this node, or learn there is none.
        let candidate = match phase {
            Phase::Required => match required_list.event(entry) {
                // Rule 3 for required blind writes (see `search`).
                Event::Call(id) if entered_by_unknown && required_blind[id] && pruning.dominance => {
                    entry = required_list.next(entry);
                    continue;
                }
                Event::Call(id) => Some((Kind::Required, id)),
                Event::Return(barrier) => {
                    // The operation returning here is not linearized: nothing
                    // called after this point may go before it. Only unknown
                    // operations called up to here are left to try.
                    if unknown_left > 0 {
                        let callable = unknown_calls.partition_point(|&call| call <= barrier);
                        let moves = moves.of(&state, callable, |id| {
                            let op = &ops[unknown_ops[id]];
                            // A no-op leads to a node dominated by this one (rule 1).
                            model
                                .step(&state, op.input, op.output)
                                .is_some_and(|next| next != state || !pruning.dominance)
                        });
                        phase = Phase::Unknown { callable, blind: false, moves };
                        // Newest first: an unknown operation that explains an
                        // observation was usually invoked shortly before it,
                        // while the ones that never took effect pile up at the
                        // old end and would be probed first otherwise.
                        entry = callable;
                        continue;
                    }
                    None
                }
            },
            Phase::Unknown { callable, blind, moves: index } => {
                let kind = &unknown_kinds[usize::from(blind)];
                let able = moves.get(index);
                // `entry` is the bound below which the candidates lie.
                match highest_bit_below(entry, |word| kind[word] & able(word) & !unknown[word]) {
                    // Rule 4: an earlier twin is still unused.
                    Some(id) if twin_before[id].is_some_and(|twin| !has_bit(&unknown, twin)) => {
                        entry = id;
                        continue;
                    }
                    Some(id) => Some((Kind::Unknown { blind }, id)),
                    // Rule 3: after an unknown move, blind writes are dominated.
                    None if !(blind || (entered_by_unknown && pruning.dominance)) => {
                        phase = Phase::Unknown { callable, blind: true, moves: index };
                        entry = callable;
                        continue;
                    }
                    None => None,
                }
            }
        };
        let Some((kind, id)) = candidate else {
            // This node is exhausted: backtrack.
            let Some(frame) = stack.pop() else {
                return (Outcome::Illegal { longest: longest.best }, steps);
            };
            path.pop();
            longest.after_pop(path.len());
            match frame.kind {
                Kind::Required => {
                    required_list.unlift(frame.node);
                    required.clear(frame.id);
                    required_left += 1;
                    entry = required_list.next(frame.node);
                }
                Kind::Unknown { .. } => {
                    clear_bit(&mut unknown, frame.id);
                    unknown_left += 1;
                    entry = frame.id;
                }
            }
            state = frame.parent_state;
            phase = frame.parent_phase;
            entered_by_unknown = frame.parent_entered_by_unknown;
            continue;
        };

        let index = match kind {
            Kind::Required => required_ops[id],
            Kind::Unknown { .. } => unknown_ops[id],
        };
        let op = &ops[index];
        let next_state = model.step(&state, op.input, op.output).filter(|next| {
            if kind == Kind::Required {
                required.set(id);
                let new = memo.visit(&required, &unknown, next.clone());
                required.clear(id);
                new
            } else {
                // (No-ops are not candidates: see `moves`.)
                // Rule 3: the sibling reached from the parent dominates this.
                let sibling_covers = entered_by_unknown && pruning.dominance && {
                    let parent = &stack.last().expect("entered by a move").parent_state;
                    model.step(parent, op.input, op.output).as_ref() == Some(next)
                };
                if sibling_covers {
                    return false;
                }
                set_bit(&mut unknown, id);
                let new = memo.visit(&required, &unknown, next.clone());
                clear_bit(&mut unknown, id);
                new
            }
        });
        let Some(next_state) = next_state else {
            entry = match kind {
                Kind::Required => required_list.next(entry),
                Kind::Unknown { .. } => id,
            };
            continue;
        };

        match kind {
            Kind::Required => {
                required.set(id);
                required_list.lift(entry);
                required_left -= 1;
                if required_left == 0 {
                    // Unknown operations not linearized simply never happened.
                    return (Outcome::Linearizable, steps);
                }
            }
            Kind::Unknown { .. } => {
                set_bit(&mut unknown, id);
                unknown_left -= 1;
            }
        }
        stack.push(Frame {
            node: if kind == Kind::Required { entry } else { id },
            kind,
            id,
            parent_state: std::mem::replace(&mut state, next_state),
            parent_phase: phase,
            parent_entered_by_unknown: entered_by_unknown,
        });
        path.push(index);
        longest.after_push(&path);
        phase = Phase::Required;
        entered_by_unknown = kind != Kind::Required;
        entry = required_list.first();
    }
}

fn set_bit(words: &mut [u64], bit: usize) {
    words[bit / 64] |= 1 << (bit % 64);
}

fn clear_bit(words: &mut [u64], bit: usize) {
    words[bit / 64] &= !(1 << (bit % 64));
}

fn has_bit(words: &[u64], bit: usize) -> bool {
    words[bit / 64] & (1 << (bit % 64)) != 0
}

/// The highest bit below `end` set in the bitset whose `i`-th word is `word(i)`.
fn highest_bit_below(end: usize, word: impl Fn(usize) -> u64) -> Option<usize> {
    let mut end = end;
    while end > 0 {
        let index = (end - 1) / 64;
        let bits_below = end - 64 * index;
        let mask = if bits_below == 64 { u64::MAX } else { (1 << bits_below) - 1 };
        let bits = word(index) & mask;
        if bits != 0 {
            return Some(64 * index + 63 - bits.leading_zeros() as usize);
        }
        end = 64 * index;
    }
    None
}

/// `a ⊆ b` for bitsets of equal length.
fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(a, b)| a & !b == 0)
}

/// Visited search nodes: per (required set, state), the minimal sets of
/// linearized unknown operations seen (an antichain under ⊆).
struct Memo<S> {
    seen: HashMap<MemoKey<S>, Vec<Box<[u64]>>, BuildHasherDefault<FxHasher>>,
    /// Rule 1; without it only the exact same node counts as seen.
    dominance: bool,
}

impl<S: Eq + Hash> Memo<S> {
    fn new(dominance: bool) -> Self {
        Memo { seen: HashMap::default(), dominance }
    }

    /// Records the node; false if it (or a node dominating it) was seen.
    fn visit(&mut self, required: &Bitset, unknown: &[u64], state: S) -> bool {
        let minimal_sets = self.seen.entry(MemoKey::new(required, state)).or_default();
        if !self.dominance {
            if minimal_sets.iter().any(|seen| **seen == *unknown) {
                return false;
            }
            minimal_sets.push(unknown.into());
            return true;
        }
        if minimal_sets.iter().any(|seen| is_subset(seen, unknown)) {
            return false;
        }
        minimal_sets.retain(|seen| !is_subset(unknown, seen));
        minimal_sets.push(unknown.into());
        true
    }
}

/// The multiply-rotate hash of rustc's `FxHasher`: much faster than SipHash
/// on the short word sequences of memo keys, and HashDoS is no concern for
/// a checker fed its own test histories.
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        for &byte in chunks.remainder() {
            self.add(u64::from(byte));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Per model state, which unknown operations it makes sense to try there:
/// the ones the model accepts and that change the state. Computed lazily,
/// and only for as many operations (in call order) as have been callable.
struct UnknownMoves<S> {
    index: HashMap<S, usize, BuildHasherDefault<FxHasher>>,
    /// Per entry: the bitset, and how many operations it covers.
    masks: Vec<(Vec<u64>, usize)>,
}

impl<S> Default for UnknownMoves<S> {
    fn default() -> Self {
        UnknownMoves { index: HashMap::default(), masks: Vec::new() }
    }
}

impl<S: Clone + Eq + Hash> UnknownMoves<S> {
    /// The entry of `state`, covering at least the first `callable`
    /// operations; `able(id)` decides one operation.
    fn of(&mut self, state: &S, callable: usize, able: impl Fn(usize) -> bool) -> usize {
        let index = match self.index.get(state) {
            Some(&index) => index,
            None => {
                self.masks.push((Vec::new(), 0));
                self.index.insert(state.clone(), self.masks.len() - 1);
                self.masks.len() - 1
            }
        };
        let (words, covered) = &mut self.masks[index];
        if *covered < callable {
            words.resize(callable.div_ceil(64), 0);
            (*covered..callable).filter(|&id| able(id)).for_each(|id| set_bit(words, id));
            *covered = callable;
        }
        index
    }

    /// The bitset of entry `index`; bits beyond what it covers read as 0
    /// (callers only look below what they asked [`Self::of`] for).
    fn get(&self, index: usize) -> impl Fn(usize) -> u64 + '_ {
        let words = &self.masks[index].0;
        move |word| words.get(word).copied().unwrap_or(0)
    }
}

/// What a node of an [`EventList`] stands for.
enum Event {
    /// The call of required operation `id`.
    Call(usize),
    /// A return at this time (or the end of the list, at `u64::MAX`).
    Return(u64),
}

/// The call and return events of the required operations, sorted by time,
/// as a doubly linked list over node indices. Node 0 is the head sentinel
/// and the last node the tail sentinel, so unlinking needs no special cases.
struct EventList {
    links: Links,
    /// Per node: `Some(id)` for a call event, `None` for returns and sentinels.
    call_id: Vec<Option<usize>>,
    /// Per node: the time of a return event.
    time: Vec<u64>,
    /// Per node: for a call event, the node of the matching return event.
    return_node: Vec<usize>,
}

impl EventList {
    /// `ids[id]` is the index into `ops` of required operation `id`.
    fn new<I, O>(ops: &[OpView<'_, I, O>], ids: &[usize]) -> Self {
        // Sort key: time, then calls before returns so that `ret == call`
        // counts as concurrent; ties keep id order (the sort is stable).
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ids.len());
        for (id, &index) in ids.iter().enumerate() {
            let op = &ops[index];
            let ret = op.ret.expect("only required operations have return events");
            events.push((op.call, false, id));
            events.push((ret, true, id));
        }
        events.sort_by_key(|&(time, is_return, _)| (time, is_return));

        let nodes = events.len() + 2;
        let mut list = EventList {
            links: Links::new(nodes),
            call_id: vec![None; nodes],
            time: vec![u64::MAX; nodes],
            return_node: vec![usize::MAX; nodes],
        };
        let mut call_node = vec![usize::MAX; ids.len()];
        for (position, &(time, is_return, id)) in events.iter().enumerate() {
            let node = position + 1;
            if is_return {
                assert!(call_node[id] != usize::MAX, "return sorted before call");
                list.return_node[call_node[id]] = node;
                list.time[node] = time;
            } else {
                call_node[id] = node;
                list.call_id[node] = Some(id);
            }
        }
        list
    }

    fn first(&self) -> usize {
        self.links.first()
    }

    fn next(&self, node: usize) -> usize {
        self.links.next[node]
    }

    fn event(&self, node: usize) -> Event {
        match self.call_id[node] {
            Some(id) => Event::Call(id),
            None => Event::Return(self.time[node]),
        }
    }

    /// Removes a linearized operation's call and return events.
    fn lift(&mut self, call: usize) {
        self.links.unlink(call);
        self.links.unlink(self.return_node[call]);
    }

    /// Undoes [`Self::lift`]; lifts must be undone in reverse order.
    fn unlift(&mut self, call: usize) {
        // Reverse order of `lift`: the unlinked nodes still remember their
        // neighbours, which are exactly the nodes around them at lift time.
        self.links.relink(self.return_node[call]);
        self.links.relink(call);
    }
}

/// Dancing links over nodes `0..len`, with node 0 the head sentinel and node
/// `len - 1` the tail sentinel (which links to itself).
struct Links {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Links {
    const HEAD: usize = 0;

    fn new(len: usize) -> Self {
        assert!(len >= 2, "a list has two sentinels");
        let mut next: Vec<usize> = (1..=len).collect();
        let mut prev: Vec<usize> = (0..len).map(|i| i.saturating_sub(1)).collect();
        next[len - 1] = len - 1;
        prev[Self::HEAD] = Self::HEAD;
        Links { next, prev }
    }

    fn first(&self) -> usize {
        self.next[Self::HEAD]
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }
}

/// The set of linearized operation ids. Tracks the number of leading
/// all-ones words and the end of the last non-zero word, so a memo key can
/// store only the part in between.
struct Bitset {
    words: Vec<u64>,
    full_prefix: usize,
    used_end: usize,
}

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset { words: vec![0; bits.div_ceil(64)], full_prefix: 0, used_end: 0 }
    }

    fn set(&mut self, bit: usize) {
        let word = bit / 64;
        self.words[word] |= 1 << (bit % 64);
        self.used_end = self.used_end.max(word + 1);
        while self.full_prefix < self.words.len() && self.words[self.full_prefix] == u64::MAX {
            self.full_prefix += 1;
        }
    }

    fn clear(&mut self, bit: usize) {
        let word = bit / 64;
        self.words[word] &= !(1 << (bit % 64));
        self.full_prefix = self.full_prefix.min(word);
        while self.used_end > 0 && self.words[self.used_end - 1] == 0 {
            self.used_end -= 1;
        }
    }
}

/// A memo key: a canonical encoding of (linearized required set, state).
#[derive(PartialEq, Eq, Hash)]
struct MemoKey<S> {
    full_prefix: usize,
    rest: Box<[u64]>,
    state: S,
}

impl<S> MemoKey<S> {
    fn new(set: &Bitset, state: S) -> Self {
        // Full words are non-zero, so used_end >= full_prefix.
        MemoKey { full_prefix: set.full_prefix, rest: set.words[set.full_prefix..set.used_end].into(), state }
    }
}

/// The deepest stack seen, maintained in amortised O(1) per push/pop:
/// `agree` is how many leading entries of the current path are known to
/// equal `best`, so a new record only copies the part that differs.
#[derive(Default)]
struct LongestPrefix {
    best: Vec<usize>,
    agree: usize,
}

impl LongestPrefix {
    fn after_push(&mut self, path: &[usize]) {
        if path.len() > self.best.len() {
            self.best.truncate(self.agree);
            self.best.extend_from_slice(&path[self.agree..]);
            self.agree = path.len();
        }
    }

    fn after_pop(&mut self, depth: usize) {
        self.agree = self.agree.min(depth);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitset_tracks_full_prefix_and_used_end() {
        let mut set = Bitset::new(200);
        for bit in 0..64 {
            set.set(bit);
        }
        set.set(130);
        assert_eq!((set.full_prefix, set.used_end), (1, 3));
        let key = MemoKey::new(&set, ());
        assert_eq!(&*key.rest, &[0, 1 << 2]);

        set.clear(5);
        assert_eq!((set.full_prefix, set.used_end), (0, 3));
        set.clear(130);
        assert_eq!((set.full_prefix, set.used_end), (0, 1));
        set.set(5);
        assert_eq!((set.full_prefix, set.used_end), (1, 1));
        assert!(MemoKey::new(&set, ()).rest.is_empty());
    }

    #[test]
    fn equal_sets_reached_differently_make_equal_keys() {
        let mut a = Bitset::new(130);
        let mut b = Bitset::new(130);
        for bit in 0..64 {
            a.set(bit);
        }
        a.set(100);
        b.set(100);
        b.set(129);
        for bit in (0..64).rev() {
            b.set(bit);
        }
        b.clear(129);
        assert!(MemoKey::new(&a, 7u8) == MemoKey::new(&b, 7u8));
        assert!(MemoKey::new(&a, 7u8) != MemoKey::new(&b, 8u8));
    }

    fn required(call: u64, ret: u64) -> Operation<(), ()> {
        Operation { client_id: 0, input: (), call, output: (), ret: Some(ret) }
    }

    #[test]
    fn event_list_orders_calls_first_at_equal_times_and_lifts_reversibly() {
        let ops = [required(0, 10), required(5, 5), required(10, 12)];
        let views: Vec<_> = ops.iter().map(OpView::of).collect();
        let mut list = EventList::new(&views, &[0, 1, 2]);
        let walk = |list: &EventList| {
            let mut out = Vec::new();
            let mut node = list.first();
            while node != list.next(node) {
                out.push(match list.event(node) {
                    Event::Call(id) => format!("call{id}"),
                    Event::Return(time) => format!("ret@{time}"),
                });
                node = list.next(node);
            }
            out
        };
        let original = walk(&list);
        assert_eq!(original, ["call0", "call1", "ret@5", "call2", "ret@10", "ret@12"]);

        let (call0, call1) = (list.first(), list.next(list.first()));
        list.lift(call1);
        list.lift(call0);
        assert_eq!(walk(&list), ["call2", "ret@12"]);
        list.unlift(call0);
        list.unlift(call1);
        assert_eq!(walk(&list), original);
    }

    #[test]
    fn memo_prunes_nodes_dominated_by_fewer_unknown_ops() {
        let required = Bitset::new(3);
        let mut memo = Memo::new(true);
        assert!(memo.visit(&required, &[0b010], 'a'));
        assert!(!memo.visit(&required, &[0b010], 'a'), "same node");
        assert!(!memo.visit(&required, &[0b110], 'a'), "superset of a seen set");
        assert!(memo.visit(&required, &[0b010], 'b'), "other state");
        assert!(memo.visit(&required, &[0b100], 'a'), "incomparable set");
        assert!(memo.visit(&required, &[0b000], 'a'), "subset of seen sets");
        assert!(!memo.visit(&required, &[0b001], 'a'));
        let mut other = Bitset::new(3);
        other.set(0);
        assert!(memo.visit(&other, &[0b010], 'a'), "other required set");
    }

    #[test]
    fn longest_prefix_copies_the_deepest_path() {
        let mut longest = LongestPrefix::default();
        let mut path = vec![];
        for id in [3, 1, 4] {
            path.push(id);
            longest.after_push(&path);
        }
        path.truncate(1);
        longest.after_pop(1);
        for id in [5, 9, 2] {
            path.push(id);
            longest.after_push(&path);
        }
        assert_eq!(longest.best, [3, 5, 9, 2]);
        path.truncate(0);
        longest.after_pop(0);
        path.push(7);
        longest.after_push(&path);
        assert_eq!(longest.best, [3, 5, 9, 2]);
    }

    #[test]
    fn highest_bit_below_scans_down_across_words() {
        let words = [1u64 << 3 | 1 << 63, 1 << 0 | 1 << 10];
        let find = |end| highest_bit_below(end, |word| words[word]);
        assert_eq!(find(128), Some(74));
        assert_eq!(find(74), Some(64));
        assert_eq!(find(64), Some(63));
        assert_eq!(find(63), Some(3));
        assert_eq!(find(3), None);
        assert_eq!(find(0), None);
    }

    #[test]
    fn unknown_moves_are_computed_per_state_and_extended_lazily() {
        let mut moves = UnknownMoves::default();
        let even = moves.of(&'a', 3, |id| id % 2 == 0);
        assert_eq!(moves.get(even)(0), 0b101);
        // Already covered: the predicate is not asked again.
        assert_eq!(moves.of(&'a', 2, |_| unreachable!()), even);
        assert_eq!(moves.of(&'a', 70, |id| id % 2 == 0), even);
        assert_eq!(moves.get(even)(1), 0b1_0101);
        let other = moves.of(&'b', 1, |_| true);
        assert_ne!(other, even);
        assert_eq!(moves.get(other)(0), 1);
    }

    // ---- the pruning rules against the plain search -------------------------

    use crate::{KvInput, KvModel, KvOutput};
    use proptest::prelude::*;

    type KvOp = Operation<KvInput, KvOutput>;

    fn verdict(ops: &[KvOp], pruning: Pruning) -> bool {
        let views: Vec<_> = ops.iter().map(OpView::of).collect();
        let limits = Limits { deadline: None, max_steps: None, cancelled: &|| false };
        match search_with(&KvModel, &views, &limits, pruning).0 {
            Outcome::Linearizable => true,
            Outcome::Illegal { .. } => false,
            Outcome::Aborted => unreachable!("no limits"),
        }
    }

    fn kv(input: KvInput, output: KvOutput, call: u64, ret: Option<u64>) -> KvOp {
        Operation { client_id: 0, input, call, output, ret }
    }

    #[test]
    fn twin_unknown_deletes_are_used_in_call_order() {
        let delete = |call| kv(KvInput::Delete { key: 0 }, KvOutput::Unknown, call, None);
        let put = |value, call| kv(KvInput::Put { key: 0, value }, KvOutput::Put, call, Some(call + 1));
        let get = |read, call| kv(KvInput::Get { key: 0 }, KvOutput::Get(read), call, Some(call + 1));
        // Two reads of an absent key after two puts need both deletes: the
        // first read the earlier one (the later is invoked after it returns),
        // the second the later one.
        let ops = [put(1, 0), delete(2), get(None, 3), put(2, 5), delete(7), get(None, 8)];
        assert!(verdict(&ops, Pruning::ALL));
        assert!(verdict(&ops, Pruning::NONE));
        // A read of an absent key before the later delete's call: only the
        // earlier one can explain it, and it is used up by the first read.
        let ops = [put(1, 0), delete(2), get(None, 3), put(2, 5), get(None, 7), delete(9)];
        assert!(!verdict(&ops, Pruning::ALL));
        assert!(!verdict(&ops, Pruning::NONE));
    }

    /// A history on one key from small pieces: few values, so writes of the
    /// same value (twins) are common, and many unknown outcomes. Outputs are
    /// those of an atomic store applying each operation at some instant of its
    /// window (unknown ones at some instant after their call, or never),
    /// then one is possibly overwritten at random, so both verdicts occur.
    fn history() -> impl Strategy<Value = Vec<KvOp>> {
        let fate = prop_oneof![5 => Just(0u8), 4 => Just(1), 1 => Just(2)];
        let op = (0..4u8, 0..3u64, proptest::option::of(0..3u64), 0..40u64, 0..6u64, 0..=10u64, fate);
        let output = prop_oneof![
            proptest::option::of(0..3u64).prop_map(KvOutput::Get),
            any::<bool>().prop_map(|ok| KvOutput::Cas { ok }),
            Just(KvOutput::Unknown),
        ];
        (proptest::collection::vec(op, 1..=12), proptest::option::weighted(0.8, (any::<prop::sample::Index>(), output)))
            .prop_map(|(specs, mutation)| {
                let mut ops = Vec::new();
                let mut effects = Vec::new();
                for (kind, value, expected, call, duration, tenths, fate) in specs {
                    let input = match kind {
                        0 => KvInput::Get { key: 0 },
                        1 => KvInput::Put { key: 0, value },
                        2 => KvInput::Delete { key: 0 },
                        _ => KvInput::Cas { key: 0, expected, new: value },
                    };
                    // fate: 0 completed, 1 unknown and applied, 2 unknown and lost.
                    let ret = (fate == 0).then_some(call + duration);
                    if fate != 2 {
                        let span = if fate == 0 { duration } else { 3 * duration + 5 };
                        effects.push((call + span * tenths / 10, ops.len()));
                    }
                    ops.push(kv(input, KvOutput::Unknown, call, ret));
                }
                effects.sort_unstable();
                let mut state = None;
                for (_, i) in effects {
                    let op: &mut KvOp = &mut ops[i];
                    let output = match op.input {
                        KvInput::Get { .. } => KvOutput::Get(state),
                        KvInput::Put { .. } => KvOutput::Put,
                        KvInput::Delete { .. } => KvOutput::Delete,
                        KvInput::Cas { expected, .. } => KvOutput::Cas { ok: state == expected },
                    };
                    state = KvModel.step(&state, &op.input, &output).expect("the store's own output");
                    if op.ret.is_some() {
                        op.output = output;
                    }
                }
                if let Some((index, output)) = mutation {
                    let i = index.index(ops.len());
                    ops[i].output = output;
                }
                ops
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

        #[test]
        fn pruned_search_agrees_with_plain_search(ops in history()) {
            prop_assert_eq!(verdict(&ops, Pruning::ALL), verdict(&ops, Pruning::NONE), "{:#?}", ops);
        }
    }

    #[test]
    fn history_generator_produces_both_verdicts_and_twins() {
        // Guards against a generator that makes the property above vacuous.
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;

        let mut runner = TestRunner::deterministic();
        let (mut legal, mut illegal, mut with_twins) = (0, 0, 0);
        for _ in 0..1_000 {
            let ops = history().new_tree(&mut runner).expect("strategy generates").current();
            if verdict(&ops, Pruning::NONE) {
                legal += 1;
            } else {
                illegal += 1;
            }
            let unknown_writes: Vec<_> = ops
                .iter()
                .filter(|op| op.ret.is_none() && KvModel.is_blind_write(&op.input, &op.output))
                .map(|op| KvModel.step(&None, &op.input, &op.output))
                .collect();
            if unknown_writes.iter().enumerate().any(|(i, a)| unknown_writes[..i].contains(a)) {
                with_twins += 1;
            }
        }
        assert!(legal >= 150 && illegal >= 150, "legal {legal}, illegal {illegal}");
        assert!(with_twins >= 100, "only {with_twins} histories with twin unknown writes");
    }
}
