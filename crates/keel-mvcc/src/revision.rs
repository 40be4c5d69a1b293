//! Revisions: a store-wide `main` counter bumped once per write transaction, and a `sub`
//! counter numbering the changes inside it (etcd's `revision{main, sub}`).

use crate::error::DecodeError;

/// Length of a revision encoded as a backend key.
pub const REVISION_KEY_LEN: usize = 16;

/// A point in the store's history. Ordered by `(main, sub)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// Bumped once per write transaction.
    pub main: i64,
    /// Index of the change inside its transaction (0, 1, 2, ...).
    pub sub: i64,
}

impl Revision {
    /// The smallest revision; scans start here.
    pub const ZERO: Revision = Revision { main: 0, sub: 0 };

    /// A revision.
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The first revision of the next main revision: an exclusive upper bound for
    /// "everything at or below `main`".
    pub const fn after_main(main: i64) -> Self {
        Revision { main: main.saturating_add(1), sub: 0 }
    }

    /// Big-endian bytes, so that byte order equals revision order for the non-negative
    /// revisions the store uses (the backend's key order).
    pub fn to_key(self) -> [u8; REVISION_KEY_LEN] {
        let mut out = [0u8; REVISION_KEY_LEN];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Inverse of [`Revision::to_key`].
    pub fn from_key(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != REVISION_KEY_LEN {
            return Err(DecodeError::new("revision key", 0, format!("length {} != {REVISION_KEY_LEN}", bytes.len())));
        }
        let mut main = [0u8; 8];
        let mut sub = [0u8; 8];
        main.copy_from_slice(&bytes[..8]);
        sub.copy_from_slice(&bytes[8..]);
        let rev = Revision { main: i64::from_be_bytes(main), sub: i64::from_be_bytes(sub) };
        if rev.main < 0 || rev.sub < 0 {
            return Err(DecodeError::new("revision key", 0, "negative revision"));
        }
        Ok(rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_matches_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 0),
            Revision::new(256, 300),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_key() < w[1].to_key());
        }
        for r in revs {
            assert_eq!(Revision::from_key(&r.to_key()), Ok(r));
        }
        assert!(Revision::from_key(&[0; 3]).is_err());
    }
}
