//! Group commit for many writer threads: each waits until its records are durable, and one
//! fdatasync covers every record that arrived while the previous one ran.
//!
//! The first writer to find no sync in progress becomes the *leader*: it takes everything queued,
//! appends it as one batch, syncs, and wakes everyone whose records it covered. Writers that
//! arrive meanwhile queue up for the next round. Nobody is told "durable" before its record is.

use std::sync::{Condvar, Mutex};

use keel_codec::record::Record;

use crate::wal::{Wal, WalError};

/// Most records taken into one round (a bound on batch size and latency).
const ROUND_RECORDS_MAX: usize = 65_536;
/// Failed rounds remembered for their waiters.
const FAILED_ROUNDS_REMEMBERED: usize = 1_024;

struct State {
    queue: Vec<Record>,
    /// Ticket of the last record queued, and of the last one made durable.
    queued_ticket: u64,
    durable_ticket: u64,
    leader_active: bool,
    /// Rounds that failed: (first ticket, last ticket, error). Checked before `durable_ticket`,
    /// which a later successful round moves past them. Bounded: old entries are dropped once no
    /// waiter can still ask (waiters ask within one round of their own).
    failed: std::collections::VecDeque<(u64, u64, String)>,
    /// Tickets handed to rounds so far.
    taken_ticket: u64,
    rounds: u64,
}

pub struct GroupCommitter {
    wal: Mutex<Wal>,
    state: Mutex<State>,
    durable: Condvar,
}

impl GroupCommitter {
    pub fn new(wal: Wal) -> GroupCommitter {
        GroupCommitter {
            wal: Mutex::new(wal),
            state: Mutex::new(State {
                queue: Vec::new(),
                queued_ticket: 0,
                durable_ticket: 0,
                leader_active: false,
                failed: std::collections::VecDeque::new(),
                taken_ticket: 0,
                rounds: 0,
            }),
            durable: Condvar::new(),
        }
    }

    /// Fsync rounds so far (each covered one or more writers).
    pub fn rounds(&self) -> u64 {
        self.state.lock().expect("group commit state").rounds
    }

    /// Appends `record` and returns once it is durable.
    pub fn commit(&self, record: Record) -> Result<(), WalError> {
        let mut state = self.state.lock().expect("group commit state");
        state.queue.push(record);
        state.queued_ticket += 1;
        let ticket = state.queued_ticket;
        loop {
            if let Some((_, _, error)) = state.failed.iter().find(|(first, last, _)| (*first..=*last).contains(&ticket))
            {
                return Err(WalError::Io { file: "wal".into(), source: std::io::Error::other(error.clone()) });
            }
            if state.durable_ticket >= ticket {
                return Ok(());
            }
            if !state.leader_active {
                state.leader_active = true;
                let take = state.queue.len().min(ROUND_RECORDS_MAX);
                let round: Vec<Record> = state.queue.drain(..take).collect();
                // Tickets are handed out in queue order, so this round covers exactly these.
                let first = state.taken_ticket + 1;
                let last = state.taken_ticket + round.len() as u64;
                state.taken_ticket = last;
                drop(state);
                let result = {
                    let mut wal = self.wal.lock().expect("wal");
                    wal.append(&round).and_then(|()| wal.sync())
                };
                state = self.state.lock().expect("group commit state");
                state.leader_active = false;
                state.rounds += 1;
                match result {
                    Ok(()) => state.durable_ticket = last,
                    Err(error) => {
                        state.failed.push_back((first, last, error.to_string()));
                        while state.failed.len() > FAILED_ROUNDS_REMEMBERED {
                            state.failed.pop_front();
                        }
                    }
                }
                self.durable.notify_all();
                continue;
            }
            state = self.durable.wait(state).expect("group commit state");
        }
    }
}
