//! SWIM messages as bytes, for hosts that carry them over a real network (the server sends them
//! in peer frames). Every field is length-checked: a message from another process is decoded
//! into a [`Message`] or refused with a [`WireError`], never a panic and never an allocation
//! larger than the bytes that arrived justify.

use bytes::Bytes;

use crate::swim::{Liveness, Message, Update};

/// The encoding's version (the first byte), so a later change is refused, not misread.
const VERSION: u8 = 1;
/// Most updates one message may carry: a whole table at anti-entropy, so room for big groups.
pub const UPDATES_MAX: usize = 65_536;
/// Largest member description (its meta) accepted.
pub const META_BYTES_MAX: usize = 4_096;
/// Bytes of an update besides its meta: member, incarnation, by (8 each), liveness (1), meta length (4).
const UPDATE_FIXED_BYTES: usize = 29;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad membership message at byte {offset}: {problem}")]
pub struct WireError {
    pub offset: usize,
    pub problem: String,
}

const PING: u8 = 1;
const ACK: u8 = 2;
const PING_REQ: u8 = 3;
const NACK: u8 = 4;
const GOSSIP: u8 = 5;
const SYNC: u8 = 6;

pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = vec![VERSION];
    match message {
        Message::Ping { seq, target, updates } => {
            out.push(PING);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&target.to_be_bytes());
            put_updates(&mut out, updates);
        }
        Message::Ack { seq, updates } => {
            out.push(ACK);
            out.extend_from_slice(&seq.to_be_bytes());
            put_updates(&mut out, updates);
        }
        Message::PingReq { seq, target, updates } => {
            out.push(PING_REQ);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&target.to_be_bytes());
            put_updates(&mut out, updates);
        }
        Message::Nack { seq } => {
            out.push(NACK);
            out.extend_from_slice(&seq.to_be_bytes());
        }
        Message::Gossip { updates } => {
            out.push(GOSSIP);
            put_updates(&mut out, updates);
        }
        Message::Sync { updates, reply } => {
            out.push(SYNC);
            out.push(u8::from(*reply));
            put_updates(&mut out, updates);
        }
    }
    out
}

fn put_updates(out: &mut Vec<u8>, updates: &[Update]) {
    // The protocol never builds more (piggybacking is capped far lower; a table is one update
    // per member): truncating here keeps the encoding decodable whatever a caller passes.
    let updates = &updates[..updates.len().min(UPDATES_MAX)];
    out.extend_from_slice(&(updates.len() as u32).to_be_bytes());
    for update in updates {
        out.extend_from_slice(&update.member.to_be_bytes());
        out.extend_from_slice(&update.incarnation.to_be_bytes());
        out.extend_from_slice(&update.by.to_be_bytes());
        out.push(match update.liveness {
            Liveness::Alive => 0,
            Liveness::Suspect => 1,
            Liveness::Dead => 2,
            Liveness::Left => 3,
        });
        let meta = &update.meta[..update.meta.len().min(META_BYTES_MAX)];
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(meta);
    }
}

/// The bytes [`encode`] spends on one update.
pub fn update_bytes(update: &Update) -> usize {
    UPDATE_FIXED_BYTES + update.meta.len().min(META_BYTES_MAX)
}

/// `encode(message).len()`, without encoding (the simulator counts bytes of every message).
pub fn encoded_len(message: &Message) -> usize {
    let listed = 4 + message.updates().iter().take(UPDATES_MAX).map(update_bytes).sum::<usize>();
    2 + match message {
        Message::Ping { .. } | Message::PingReq { .. } => 4 + 8 + listed,
        Message::Ack { .. } => 4 + listed,
        Message::Nack { .. } => 4,
        Message::Gossip { .. } => listed,
        Message::Sync { .. } => 1 + listed,
    }
}

pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(r.error(format!("unsupported version {version}")));
    }
    let message = match r.u8()? {
        PING => Message::Ping { seq: r.u32()?, target: r.u64()?, updates: r.updates()? },
        ACK => Message::Ack { seq: r.u32()?, updates: r.updates()? },
        PING_REQ => Message::PingReq { seq: r.u32()?, target: r.u64()?, updates: r.updates()? },
        NACK => Message::Nack { seq: r.u32()? },
        GOSSIP => Message::Gossip { updates: r.updates()? },
        SYNC => {
            let reply = match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(r.error(format!("reply flag {other}"))),
            };
            Message::Sync { reply, updates: r.updates()? }
        }
        other => return Err(r.error(format!("unknown message kind {other}"))),
    };
    if r.at != bytes.len() {
        return Err(r.error(format!("{} bytes after the message", bytes.len() - r.at)));
    }
    Ok(message)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn error(&self, problem: String) -> WireError {
        WireError { offset: self.at, problem }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.error(format!("needs {n} more bytes, has {}", self.bytes.len() - self.at)));
        };
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn updates(&mut self) -> Result<Vec<Update>, WireError> {
        let count = self.u32()? as usize;
        let left = self.bytes.len() - self.at;
        // Checked against what is left before allocating: a forged count costs nothing.
        if count > UPDATES_MAX || count.saturating_mul(UPDATE_FIXED_BYTES) > left {
            return Err(self.error(format!("{count} updates cannot fit in {left} bytes (or exceed {UPDATES_MAX})")));
        }
        let mut updates = Vec::with_capacity(count);
        for _ in 0..count {
            let member = self.u64()?;
            let incarnation = self.u64()?;
            let by = self.u64()?;
            let liveness = match self.u8()? {
                0 => Liveness::Alive,
                1 => Liveness::Suspect,
                2 => Liveness::Dead,
                3 => Liveness::Left,
                other => return Err(self.error(format!("liveness {other}"))),
            };
            let len = self.u32()? as usize;
            if len > META_BYTES_MAX {
                return Err(self.error(format!("a description of {len} bytes (at most {META_BYTES_MAX})")));
            }
            let meta = Bytes::copy_from_slice(self.take(len)?);
            updates.push(Update { member, incarnation, liveness, by, meta });
        }
        Ok(updates)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn update() -> impl Strategy<Value = Update> + Clone {
        (any::<u64>(), any::<u64>(), 0u8..4, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
            |(member, incarnation, l, by, meta)| Update {
                member,
                incarnation,
                liveness: [Liveness::Alive, Liveness::Suspect, Liveness::Dead, Liveness::Left][l as usize],
                by,
                meta: Bytes::from(meta),
            },
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        let updates = || proptest::collection::vec(update(), 0..6);
        prop_oneof![
            (any::<u32>(), any::<u64>(), updates()).prop_map(|(seq, target, updates)| Message::Ping {
                seq,
                target,
                updates
            }),
            (any::<u32>(), updates()).prop_map(|(seq, updates)| Message::Ack { seq, updates }),
            (any::<u32>(), any::<u64>(), updates()).prop_map(|(seq, target, updates)| Message::PingReq {
                seq,
                target,
                updates
            }),
            any::<u32>().prop_map(|seq| Message::Nack { seq }),
            updates().prop_map(|updates| Message::Gossip { updates }),
            (updates(), any::<bool>()).prop_map(|(updates, reply)| Message::Sync { updates, reply }),
        ]
    }

    proptest! {
        #[test]
        fn encoded_len_is_the_encodings_length(message in message()) {
            prop_assert_eq!(encoded_len(&message), encode(&message).len());
        }

        #[test]
        fn every_message_survives_the_round_trip(message in message()) {
            prop_assert_eq!(decode(&encode(&message)), Ok(message));
        }

        /// Cut short, flipped or random: refused or decoded, never a panic.
        #[test]
        fn damaged_bytes_never_panic(message in message(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), noise in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = encode(&message);
            let _ = decode(&bytes[..cut.index(bytes.len() + 1)]);
            let mut flipped = bytes.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 0x5a;
            let _ = decode(&flipped);
            let _ = decode(&noise);
            prop_assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "a truncated message is refused");
        }
    }

    #[test]
    fn a_forged_count_is_refused_before_allocating() {
        let mut bytes = vec![VERSION, GOSSIP];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let error = decode(&bytes).expect_err("four billion updates in zero bytes");
        assert!(error.problem.contains("cannot fit"), "{error}");
    }
}
