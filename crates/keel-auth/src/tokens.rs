//! etcd's `simple` tokens: opaque strings standing for a user at an auth revision.
//!
//! A token is assigned on every member when the `Authenticate` entry naming it is applied, so
//! whichever member a client talks to next knows it. Each member forgets a token that nobody
//! used for the TTL (etcd's `--auth-token-ttl`, 300 s), and all of a user's tokens when the user
//! is deleted or its password changes. Time enters only through [`SimpleTokens::sweep`], which
//! the server calls every second or so.

use std::collections::BTreeMap;

/// Who a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub user: String,
    /// The auth revision when the token was issued: requests made with it are checked as of
    /// this revision (and refused once the store has moved on, until the client
    /// re-authenticates, as etcd does).
    pub revision: u64,
}

#[derive(Clone, Debug)]
struct Held {
    info: TokenInfo,
    /// Assignment order, to evict the oldest when full.
    seq: u64,
    /// Used since the last sweep.
    used: bool,
    /// When a sweep last saw it used or new (milliseconds on the sweeper's clock).
    seen_ms: Option<u64>,
}

/// At most this many live tokens per member; beyond it the oldest is dropped (its client gets
/// "invalid auth token" and authenticates again). Each token costs its issuer a bcrypt check,
/// so reaching this takes hours of hostile clients; the bound keeps memory finite regardless.
pub const MAX_TOKENS: usize = 100_000;

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TTL_MS: u64 = 300_000;

#[derive(Clone, Debug)]
pub struct SimpleTokens {
    held: BTreeMap<String, Held>,
    by_age: BTreeMap<u64, String>,
    next_seq: u64,
    ttl_ms: u64,
}

impl Default for SimpleTokens {
    fn default() -> SimpleTokens {
        SimpleTokens { held: BTreeMap::new(), by_age: BTreeMap::new(), next_seq: 0, ttl_ms: DEFAULT_TTL_MS }
    }
}

impl SimpleTokens {
    pub fn set_ttl_ms(&mut self, ttl_ms: u64) {
        self.ttl_ms = ttl_ms.max(1);
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub(crate) fn assign(&mut self, token: &str, user: &str, revision: u64) {
        if let Some(old) = self.held.remove(token) {
            self.by_age.remove(&old.seq);
        }
        while self.held.len() >= MAX_TOKENS {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            self.held.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let info = TokenInfo { user: user.to_string(), revision };
        self.held.insert(token.to_string(), Held { info, seq, used: true, seen_ms: None });
        self.by_age.insert(seq, token.to_string());
    }

    pub(crate) fn info(&mut self, token: &str) -> Option<TokenInfo> {
        let held = self.held.get_mut(token)?;
        held.used = true;
        Some(held.info.clone())
    }

    pub(crate) fn invalidate_user(&mut self, user: &str) {
        let by_age = &mut self.by_age;
        self.held.retain(|_, held| {
            let keep = held.info.user != user;
            if !keep {
                by_age.remove(&held.seq);
            }
            keep
        });
    }

    pub(crate) fn clear(&mut self) {
        self.held.clear();
        self.by_age.clear();
    }

    /// Forgets tokens unused for the TTL, as of `now_ms` (any monotonic clock, in ms).
    pub fn sweep(&mut self, now_ms: u64) {
        let ttl = self.ttl_ms;
        let by_age = &mut self.by_age;
        self.held.retain(|_, held| {
            if held.used || held.seen_ms.is_none() {
                held.used = false;
                held.seen_ms = Some(now_ms);
            }
            let fresh = held.seen_ms.is_some_and(|seen| now_ms.saturating_sub(seen) < ttl);
            if !fresh {
                by_age.remove(&held.seq);
            }
            fresh
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_lives_while_used_and_goes_after_a_ttl_of_disuse() {
        let mut tokens = SimpleTokens::default();
        tokens.set_ttl_ms(1_000);
        tokens.assign("t1", "alice", 5);
        tokens.sweep(0);
        tokens.sweep(900);
        assert_eq!(tokens.info("t1"), Some(TokenInfo { user: "alice".into(), revision: 5 }));
        tokens.sweep(1_500);
        assert_eq!(tokens.len(), 1, "used between the sweeps at 900 and 1500");
        tokens.sweep(2_400);
        tokens.sweep(2_600);
        assert_eq!(tokens.info("t1"), None, "unused since 1500");
        assert!(tokens.is_empty());
    }

    #[test]
    fn a_users_tokens_go_with_it_and_the_oldest_go_when_full() {
        let mut tokens = SimpleTokens::default();
        tokens.assign("a1", "alice", 1);
        tokens.assign("b1", "bob", 1);
        tokens.assign("a2", "alice", 1);
        tokens.invalidate_user("alice");
        assert_eq!((tokens.info("a1"), tokens.info("a2")), (None, None));
        assert!(tokens.info("b1").is_some());
        for n in 0..MAX_TOKENS {
            tokens.assign(&format!("x{n}"), "carol", 1);
        }
        assert_eq!(tokens.len(), MAX_TOKENS);
        assert_eq!(tokens.info("b1"), None, "the oldest went first");
        assert!(tokens.info(&format!("x{}", MAX_TOKENS - 1)).is_some());
    }
}
