//! Forwarding as a follower and as a leader, driven by hand: what goes out, what comes back, and
//! that a proposal whose outcome is unknown is never sent twice (the simulator checks the same
//! code under faults; these pin down each rule).

use bytes::Bytes;
use keel_node::NodeConfig;
use keel_raft::{Config, Index, Message, MessageBody, RecoveredState, Role};

use super::*;

const GROUP: GroupId = 1;

/// Remembers how far it applied.
#[derive(Default)]
struct Counter(Index);

impl StateMachine for Counter {
    type Response = Index;
    type Query = ();
    type QueryResult = Index;

    fn apply(&mut self, index: Index, _: &Bytes) -> Index {
        self.0 = index;
        index
    }
    fn apply_empty(&mut self, index: Index) {
        self.0 = index;
    }
    fn query(&self, _: &()) -> Index {
        self.0
    }
    fn snapshot(&mut self, _: Index) -> Result<Bytes, String> {
        Ok(Bytes::copy_from_slice(&self.0.to_le_bytes()))
    }
    fn restore(&mut self, _: &Bytes) {}
}

type Out = EffectsOf<Counter, &'static str>;

/// Member 1 of a group of `voters`, with everything bootstrapped durable.
fn member(voters: &[NodeId]) -> Node<Counter> {
    let mut node = Node::new(NodeConfig::new(1));
    let (hard_state, entries) = keel_node::bootstrap(voters);
    let state = RecoveredState { hard_state, entries, ..Default::default() };
    node.add_group(Config::new(1, GROUP), state, Counter::default()).expect("group");
    settle(&mut node);
    node
}

/// Polls until quiet, every write durable at once.
fn settle(node: &mut Node<Counter>) {
    for _ in 0..1_000 {
        let Some(write) = node.poll().write else { return };
        node.on_write_durable(write.id);
    }
    panic!("the node never went quiet");
}

/// Member 1 as a follower that has heard from `leader` in `term`.
fn follower_of(leader: NodeId, term: u64) -> Node<Counter> {
    let mut node = member(&[1, 2, 3]);
    hear_from(&mut node, leader, term);
    node
}

fn hear_from(node: &mut Node<Counter>, leader: NodeId, term: u64) {
    let body = MessageBody::Append { prev_index: 0, prev_term: 0, entries: Vec::new(), commit: 0 };
    node.step(Message { group: GROUP, from: leader, to: 1, term, body });
    settle(node);
    assert_eq!(node.status(GROUP).map(|s| s.leader), Some(leader), "member 1 follows {leader}");
}

fn command() -> Proposal {
    Proposal::Command(Bytes::from_static(b"put"))
}

/// The one forward in `out`, with the id the follower gave it.
fn forwarded(out: &Out) -> (NodeId, u64) {
    let forwards: Vec<(NodeId, u64)> = out
        .frames
        .iter()
        .filter_map(|(to, frame)| match frame {
            PeerFrame::Forward { request, .. } => Some((*to, *request)),
            _ => None,
        })
        .collect();
    assert_eq!(forwards.len(), 1, "exactly one forward in {:?}", out.frames);
    forwards[0]
}

#[test]
fn a_follower_forwards_a_proposal_and_then_waits_for_its_own_apply_of_the_slot() {
    let mut node = follower_of(2, 5);
    let mut requests = Requests::new(100, Plants::NONE);
    let mut out = Out::default();
    requests.propose(&mut node, GROUP, command(), "client", &mut out);
    let (to, request) = forwarded(&out);
    assert_eq!(to, 2, "forwarded to the leader");
    assert!(out.answers.is_empty() && out.proposed.is_empty(), "a follower's log took nothing");

    let mut out = Out::default();
    let accepted = ForwardOutcome::Accepted { index: 10, term: 5 };
    requests.on_frame(&mut node, 2, PeerFrame::ForwardReply { request, outcome: accepted }, &mut out);
    assert!(out.answers.is_empty(), "answered only by its own apply of index 10");
    assert_eq!(requests.in_flight(), 1);
}

#[test]
fn a_forward_with_no_answer_fails_as_unknown_at_its_deadline_and_is_never_resent() {
    let mut node = follower_of(2, 5);
    let mut requests = Requests::new(100, Plants::NONE);
    let mut out = Out::default();
    requests.propose(&mut node, GROUP, command(), "client", &mut out);
    forwarded(&out);
    let mut out = Out::default();
    for _ in 0..FORWARD_TIMEOUT_TICKS - 1 {
        requests.tick(&mut node, &mut out);
    }
    assert!(out.answers.is_empty(), "still waiting before the deadline");
    requests.tick(&mut node, &mut out);
    assert!(matches!(out.answers.as_slice(), [("client", Err(RequestError::Timeout))]), "{:?}", out.answers.len());
    assert!(out.frames.is_empty(), "an unknown outcome is never forwarded again");
    assert_eq!(requests.in_flight(), 0);
}

#[test]
fn a_forward_to_a_member_that_stopped_leading_is_unknown_at_once_and_never_resent() {
    let mut node = follower_of(2, 5);
    let mut requests = Requests::new(100, Plants::NONE);
    let mut out = Out::default();
    requests.propose(&mut node, GROUP, command(), "client", &mut out);
    forwarded(&out);
    hear_from(&mut node, 3, 6);
    let mut out = Out::default();
    requests.abandon_forwards_to_former_leaders(&mut node, &mut out);
    assert!(matches!(out.answers.as_slice(), [("client", Err(RequestError::Timeout))]));
    assert!(out.frames.is_empty(), "member 2 may have replicated it: not sent to member 3");
}

#[test]
fn a_forward_refused_as_not_leader_is_retried_a_bounded_number_of_times() {
    let mut node = follower_of(2, 5);
    let mut requests = Requests::new(100, Plants::NONE);
    let mut out = Out::default();
    requests.propose(&mut node, GROUP, command(), "client", &mut out);
    let (_, mut request) = forwarded(&out);
    for hop in 1..=FORWARD_HOPS_MAX {
        let mut out = Out::default();
        let outcome = ForwardOutcome::NotLeader { leader: NO_NODE };
        requests.on_frame(&mut node, 2, PeerFrame::ForwardReply { request, outcome }, &mut out);
        if hop < FORWARD_HOPS_MAX {
            // Member 2 did not take it, so sending it again is safe.
            request = forwarded(&out).1;
            assert!(out.answers.is_empty());
        } else {
            assert!(out.frames.is_empty(), "no forward after {FORWARD_HOPS_MAX} hops");
            assert!(matches!(
                out.answers.as_slice(),
                [("client", Err(RequestError::Refused(RaftError::NotLeader { leader: 2 })))]
            ));
        }
    }
}

#[test]
fn a_late_or_unknown_reply_is_ignored() {
    let mut node = follower_of(2, 5);
    let mut requests: Requests<&'static str> = Requests::new(100, Plants::NONE);
    let mut out = Out::default();
    let outcome = ForwardOutcome::Accepted { index: 10, term: 5 };
    requests.on_frame(&mut node, 2, PeerFrame::ForwardReply { request: 7, outcome }, &mut out);
    assert!(out.is_empty());
}

#[test]
fn a_leader_takes_a_forwarded_proposal_and_answers_with_its_slot() {
    let mut node = member(&[1]);
    for _ in 0..100 {
        node.tick();
        settle(&mut node);
    }
    assert_eq!(node.status(GROUP).map(|s| s.role), Some(Role::Leader));
    let last = node.status(GROUP).map_or(0, |s| s.last_index);
    let term = node.status(GROUP).map_or(0, |s| s.hard_state.term);
    let mut requests: Requests<&'static str> = Requests::new(100, Plants::NONE);
    let mut out = Out::default();
    let frame = PeerFrame::Forward { group: GROUP, request: 42, data: Bytes::from_static(b"put") };
    requests.on_frame(&mut node, 2, frame, &mut out);
    let reply = PeerFrame::ForwardReply { request: 42, outcome: ForwardOutcome::Accepted { index: last + 1, term } };
    assert_eq!(out.frames, vec![(2, reply)]);
    assert_eq!(out.proposed, vec![Bytes::from_static(b"put")], "the lease clock sees what the log took");
    assert_eq!(requests.in_flight(), 0, "the follower waits for the outcome, not the leader");
}

#[test]
fn a_follower_that_knows_no_leader_refuses_at_once() {
    let mut node = member(&[1, 2, 3]);
    let mut requests = Requests::new(100, Plants::NONE);
    let mut out = Out::default();
    requests.propose(&mut node, GROUP, command(), "client", &mut out);
    assert!(out.frames.is_empty());
    assert!(matches!(
        out.answers.as_slice(),
        [("client", Err(RequestError::Refused(RaftError::NotLeader { leader: NO_NODE })))]
    ));
}
