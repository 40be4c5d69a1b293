//! Clients: each runs one operation at a time against whoever it believes leads, follows
//! redirects, times out, and records invoke/complete times for the linearizability check.

use super::*;
use crate::kv;
use crate::machine::{SimMachine, SKIPPED};
use keel_host::Proposal;

impl Cluster {
    pub(super) fn drive_clients(&mut self) {
        for client in 0..self.clients.len() {
            if let Some((op, request, deadline)) = self.clients[client].waiting {
                if self.now >= deadline {
                    // No answer: the outcome is unknown (ret stays None), and the leader we
                    // believed in may be gone.
                    self.requests.remove(&request);
                    self.finish_unknown(op);
                    self.clients[client].waiting = None;
                    self.clients[client].target = self.random_member();
                    self.clients[client].next_op_at = self.now + 1;
                }
                continue;
            }
            if self.faults_enabled && self.now >= self.clients[client].next_op_at {
                // Now and then a client asks someone else: clients that all stick to one leader
                // would never notice that another member has taken over meanwhile.
                if self.rng.range(0, 100) < self.swarm.retarget_percent {
                    self.clients[client].target = self.random_member();
                }
                let input = self.random_input();
                self.invoke(client, input);
            }
        }
    }

    fn random_input(&mut self) -> KvInput {
        let key = self.rng.range(0, self.swarm.keys);
        let roll = if self.swarm.writes_only { 50 } else { self.rng.range(0, 100) };
        let value = self.next_value;
        self.next_value += 1;
        match roll {
            0..40 => KvInput::Get { key },
            40..70 => KvInput::Put { key, value },
            70..90 => {
                // Expect a value that was written to this key recently, so some CASes succeed.
                let recent = self.history.iter().rev().take(20).find_map(|op| match op.input {
                    KvInput::Put { key: k, value } if k == key => Some(value),
                    _ => None,
                });
                let expected = if self.rng.range(0, 4) == 0 { None } else { recent };
                KvInput::Cas { key, expected, new: value }
            }
            _ => KvInput::Delete { key },
        }
    }

    pub(super) fn random_member(&mut self) -> NodeId {
        let live: Vec<NodeId> =
            self.members.iter().filter(|(_, m)| !m.retired && !m.disk_dead).map(|(id, _)| *id).collect();
        live[self.rng.range(0, live.len() as u64) as usize]
    }

    fn group_of(&self, key: u64) -> GroupId {
        FIRST_GROUP + key % self.swarm.groups
    }

    pub(super) fn invoke(&mut self, client: usize, input: KvInput) {
        let group = self.group_of(match input {
            KvInput::Get { key } | KvInput::Put { key, .. } | KvInput::Delete { key } | KvInput::Cas { key, .. } => key,
        });
        let request = self.next_request;
        self.next_request += 1;
        let op = self.history.len();
        self.history.push(Operation {
            client_id: client as u64,
            input: input.clone(),
            call: self.now,
            output: KvOutput::Unknown,
            ret: None,
        });
        self.requests.insert(request, Request { client, group, input });
        self.clients[client].waiting = Some((op, request, self.now + self.swarm.client_timeout_ms));
        let node = self.clients[client].target;
        let delay = self.rng.range(1, self.swarm.delay_ms_max + 1);
        self.schedule(self.now + delay, Event::ClientRequest { node, request });
    }

    pub(super) fn client_request(&mut self, id: NodeId, request: u64) {
        let Some(req) = self.requests.get(&request) else { return };
        let (group, input) = (req.group, req.input.clone());
        let encoded = SimMachine::encode(self.swarm.etcd_machine, self.swarm.auth_ppm > 0, &input);
        let Some(member) = self.members.get_mut(&id) else { return };
        let Some(node) = member.node.as_mut() else {
            return; // the member is down: the client will time out
        };
        // As the server: a write that reaches a follower is forwarded to the leader.
        let mut effects = SimEffects::default();
        match input {
            KvInput::Get { .. } => member.requests.read(node, group, encoded, request, &mut effects),
            _ => member.requests.propose(node, group, Proposal::Command(encoded), request, &mut effects),
        }
        self.carry_out(id, effects);
    }

    /// The answer to a client's request, from the member it asked.
    pub(super) fn answer(&mut self, request: u64, result: Result<Answer<Bytes, Bytes>, RequestError>) {
        let Some(req) = self.requests.get(&request) else { return };
        let client = req.client;
        let result = match result {
            Ok(Answer::Applied(bytes)) | Ok(Answer::Read(bytes)) => Ok(bytes),
            Ok(Answer::Membership) => Ok(Bytes::new()),
            Err(RequestError::Refused(RaftError::NotLeader { leader })) => Err(ClientError::NotLeader(leader)),
            Err(RequestError::Refused(_)) | Err(RequestError::Dropped) => Err(ClientError::Dropped),
            Err(RequestError::Timeout) => Err(ClientError::Unknown),
        };
        let delay = self.rng.range(1, self.swarm.delay_ms_max + 1);
        self.schedule(self.now + delay, Event::ClientResponse { client, request, result });
    }

    pub(super) fn client_response(&mut self, client: usize, request: u64, result: Result<Bytes, ClientError>) {
        let Some((op, waiting_for, _)) = self.clients[client].waiting else { return };
        if waiting_for != request {
            return; // a late answer to an operation the client already gave up on
        }
        self.requests.remove(&request);
        self.clients[client].waiting = None;
        let think_ms = if self.swarm.writes_only { 0 } else { self.rng.range(0, 5) };
        self.clients[client].next_op_at = self.now + think_ms;
        let input = self.history[op].input.clone();
        match result {
            // The machine already held the entry (a restart or a newer snapshot got there
            // first): it took effect, with an answer nobody knows.
            Ok(bytes) if bytes.as_ref() == SKIPPED => self.finish_unknown(op),
            Ok(bytes) => match kv::decode_output(&input, &bytes) {
                Some(output) => {
                    self.history[op].output = output;
                    self.history[op].ret = Some(self.now);
                    self.log(format_args!("client {client} {:?} -> {:?}", input, self.history[op].output));
                }
                None => self.invariants.violation(format!("undecodable result {bytes:?} for {input:?}")),
            },
            Err(ClientError::NotLeader(leader)) => {
                self.excluded.insert(op);
                self.clients[client].target =
                    if leader != 0 && self.members.contains_key(&leader) { leader } else { self.random_member() };
            }
            Err(ClientError::Dropped) => {
                self.excluded.insert(op);
            }
            Err(ClientError::Unknown) => self.finish_unknown(op),
        }
        self.history[op].call.hash(&mut self.trace);
    }

    /// An operation whose outcome is unknown: a read had no effect and is left out; a write may
    /// or may not have happened, which the checker allows for.
    pub(super) fn finish_unknown(&mut self, op: usize) {
        if matches!(self.history[op].input, KvInput::Get { .. }) {
            self.excluded.insert(op);
        }
        self.history[op].output = KvOutput::Unknown;
        self.history[op].ret = None;
    }
}
