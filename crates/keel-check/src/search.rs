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
    /// Operations of unknown outcome invoked no later than `barrier`, the
    /// earliest return of a required operation not yet linearized: first the
    /// ones that are not blind writes, then (`blind`) the blind writes.
    Unknown { barrier: u64, blind: bool },
}

/// Which list a linearized operation was lifted from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Required,
    Unknown { blind: bool },
}

/// A move on the search stack: the operation linearized (by its node in its
/// list), and what is needed to resume its parent node after undoing it.
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
///
/// Required operations live in a list of call and return events; unknown
/// ones in two lists of call events (their returns would all sit at +∞),
/// blind writes and the rest, so no phase walks over another's entries.
/// Unknown candidates are tried newest first (see where the lists are built).
pub(crate) fn search<M: Model>(
    model: &M,
    ops: &[OpView<'_, M::Input, M::Output>],
    limits: &Limits<'_>,
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
    // Indexed by `blind as usize`.
    // Newest first: an unknown operation that explains an observation was
    // usually invoked shortly before it, while the ones that never took
    // effect pile up at the old end and would be probed first otherwise.
    let mut unknown_lists = [false, true].map(|blind| {
        let ids = (0..unknown_ops.len()).rev().filter(|&id| unknown_blind[id] == blind);
        CallList::new(ids.map(|id| (id, ops[unknown_ops[id]].call)))
    });
    let mut required = Bitset::new(required_ops.len());
    let mut unknown = vec![0u64; unknown_ops.len().div_ceil(64)];
    let mut required_left = required_ops.len();
    let mut unknown_left = unknown_ops.len();
    let mut memo = Memo::default();
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
                Event::Call(id) if entered_by_unknown && required_blind[id] => {
                    entry = required_list.next(entry);
                    continue;
                }
                Event::Call(id) => Some((Kind::Required, id)),
                Event::Return(barrier) => {
                    // The operation returning here is not linearized: nothing
                    // called after this point may go before it. Only unknown
                    // operations called up to here are left to try.
                    if unknown_left > 0 {
                        phase = Phase::Unknown { barrier, blind: false };
                        entry = unknown_lists[0].first();
                        continue;
                    }
                    None
                }
            },
            Phase::Unknown { barrier, blind } => {
                let list = &unknown_lists[usize::from(blind)];
                match list.call(entry) {
                    // Invoked after the barrier: cannot go before it.
                    Some((_, call)) if call > barrier => {
                        entry = list.next(entry);
                        continue;
                    }
                    Some((id, _)) => Some((Kind::Unknown { blind }, id)),
                    // Rule 3: after an unknown move, blind writes are dominated.
                    _ if !blind && !entered_by_unknown => {
                        phase = Phase::Unknown { barrier, blind: true };
                        entry = unknown_lists[1].first();
                        continue;
                    }
                    _ => None,
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
                Kind::Unknown { blind } => {
                    let list = &mut unknown_lists[usize::from(blind)];
                    list.unlift(frame.node);
                    clear_bit(&mut unknown, frame.id);
                    unknown_left += 1;
                    entry = list.next(frame.node);
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
                // A no-op: the result is dominated by the current node (rule 1),
                // no need to ask the memo.
                if *next == state {
                    return false;
                }
                // Rule 3: the sibling reached from the parent dominates this.
                let sibling_covers = entered_by_unknown && {
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
                Kind::Unknown { blind } => unknown_lists[usize::from(blind)].next(entry),
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
            Kind::Unknown { blind } => {
                set_bit(&mut unknown, id);
                unknown_lists[usize::from(blind)].lift(entry);
                unknown_left -= 1;
            }
        }
        stack.push(Frame {
            node: entry,
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

/// `a ⊆ b` for bitsets of equal length.
fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(a, b)| a & !b == 0)
}

/// Visited search nodes: per (required set, state), the minimal sets of
/// linearized unknown operations seen (an antichain under ⊆).
struct Memo<S> {
    seen: HashMap<MemoKey<S>, Vec<Box<[u64]>>, BuildHasherDefault<FxHasher>>,
}

impl<S> Default for Memo<S> {
    fn default() -> Self {
        Memo { seen: HashMap::default() }
    }
}

impl<S: Eq + Hash> Memo<S> {
    /// Records the node; false if it (or a node dominating it) was seen.
    fn visit(&mut self, required: &Bitset, unknown: &[u64], state: S) -> bool {
        let minimal_sets = self.seen.entry(MemoKey::new(required, state)).or_default();
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

/// The call events of unknown-outcome operations, latest call first, as a
/// doubly linked list with the same sentinels as [`EventList`].
struct CallList {
    links: Links,
    /// Per node: the operation id and its call time (`None` for sentinels).
    calls: Vec<Option<(usize, u64)>>,
}

impl CallList {
    /// `calls` yields (operation id, call time) in list order.
    fn new(calls: impl Iterator<Item = (usize, u64)>) -> Self {
        // Sentinels at both ends.
        let calls: Vec<Option<(usize, u64)>> =
            std::iter::once(None).chain(calls.map(Some)).chain(std::iter::once(None)).collect();
        CallList { links: Links::new(calls.len()), calls }
    }

    fn first(&self) -> usize {
        self.links.first()
    }

    fn next(&self, node: usize) -> usize {
        self.links.next[node]
    }

    /// The operation id and call time at `node`; `None` at the end.
    fn call(&self, node: usize) -> Option<(usize, u64)> {
        self.calls[node]
    }

    fn lift(&mut self, node: usize) {
        self.links.unlink(node);
    }

    fn unlift(&mut self, node: usize) {
        self.links.relink(node);
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
        let mut memo = Memo::default();
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
}
