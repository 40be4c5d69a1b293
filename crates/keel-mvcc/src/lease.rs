//! Leases as replicated state. No clock here: the leader decides expiry and proposes
//! `LeaseRevoke`; `LeaseCheckpoint` persists the remaining TTL so a new leader does not
//! restart every lease at its full TTL.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;
use crate::request::LeaseInfo;

const LEASE_RECORD_V1: u8 = 1;

/// One granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) ttl: i64,
    /// Last checkpointed remaining TTL; `None` until the first checkpoint.
    pub(crate) remaining: Option<i64>,
    /// Attached keys. Derived state: rebuilt from the kvs' lease fields on open.
    pub(crate) keys: BTreeSet<Bytes>,
}

impl Lease {
    pub(crate) fn new(ttl: i64) -> Self {
        Lease { ttl, remaining: None, keys: BTreeSet::new() }
    }

    /// The persisted part (the keys are derived).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(LEASE_RECORD_V1);
        w.i64(self.ttl);
        w.bool(self.remaining.is_some());
        w.i64(self.remaining.unwrap_or(0));
        w.finish()
    }

    pub(crate) fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, "lease record");
        let v = r.u8()?;
        if v != LEASE_RECORD_V1 {
            return Err(r.err(format!("unknown lease record version {v}")));
        }
        let ttl = r.i64()?;
        let has_remaining = r.bool()?;
        let remaining = r.i64()?;
        r.expect_end()?;
        Ok(Lease { ttl, remaining: has_remaining.then_some(remaining), keys: BTreeSet::new() })
    }

    pub(crate) fn info(&self, id: i64) -> LeaseInfo {
        LeaseInfo {
            id,
            granted_ttl: self.ttl,
            remaining_ttl: self.remaining.unwrap_or(self.ttl),
            keys: self.keys.iter().cloned().collect(),
        }
    }
}

/// Every granted lease, by id (a `BTreeMap`: revoke and listing order are deterministic).
pub(crate) type Leases = BTreeMap<i64, Lease>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_record_roundtrip() {
        let mut l = Lease::new(10);
        assert_eq!(Lease::decode(&l.encode()), Ok(l.clone()));
        l.remaining = Some(3);
        assert_eq!(Lease::decode(&l.encode()), Ok(l.clone()));
        assert!(Lease::decode(&l.encode()[..5]).is_err());
    }
}
