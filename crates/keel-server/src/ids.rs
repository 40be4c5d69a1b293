//! Member and cluster ids, derived from what the operator configured (the cluster token and each
//! member's peer URLs), so every member computes the same ids with no coordination: a member
//! added later (`MemberAdd` names only its peer URLs) gets the id it will compute for itself when
//! it starts. Two clusters with different tokens never take each other's messages.

use crate::config::PeerUrl;

/// FNV-1a, 64 bit: stable across versions and platforms (unlike std's hasher).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A member's id: never 0 (raft's "nobody").
pub fn member_id(token: &str, peer_urls: &[PeerUrl]) -> u64 {
    let mut urls: Vec<String> = peer_urls.iter().map(ToString::to_string).collect();
    urls.sort();
    let joined = urls.join(",");
    fnv1a(&[b"keel-member", token.as_bytes(), joined.as_bytes()]).max(1)
}

/// The cluster's id, from its token (so a member that joins later computes the same one; give
/// every cluster its own `--initial-cluster-token`, as etcd asks).
pub fn cluster_id(token: &str) -> u64 {
    fnv1a(&[b"keel-cluster", token.as_bytes()]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(port: u16) -> Vec<PeerUrl> {
        vec![PeerUrl { scheme: "http".into(), host: "127.0.0.1".into(), port }]
    }

    #[test]
    fn ids_depend_on_token_and_urls() {
        let a = member_id("t", &url(2380));
        assert_eq!(a, member_id("t", &url(2380)), "stable");
        assert_ne!(a, member_id("u", &url(2380)));
        assert_ne!(a, member_id("t", &url(2381)));
        assert_ne!(cluster_id("t"), cluster_id("u"));
    }
}
