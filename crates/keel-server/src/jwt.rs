//! etcd's JWT tokens (`--auth-token jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256,ttl=5m`):
//! a login returns a token signed with this member's private key whose claims are etcd's own —
//! `username`, `revision` (the auth revision the password was checked at) and `exp` — and every
//! member holding the public key honours it without any state: nothing is replicated or
//! remembered per token. A member given only `pub-key` verifies tokens and cannot issue them
//! (etcd's verify-only members). A permission change bumps the auth revision, so tokens from
//! before it are refused as "auth revision is old" and clients log in again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// etcd's default `ttl` for JWT tokens.
const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

/// The options after `jwt,` in `--auth-token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtOptions {
    pub pub_key: Option<PathBuf>,
    pub priv_key: Option<PathBuf>,
    pub sign_method: Algorithm,
    pub ttl: Duration,
}

/// `--auth-token`: `None` for simple tokens, the JWT options for `jwt,...`.
pub fn parse_auth_token(spec: &str) -> Result<Option<JwtOptions>, String> {
    let mut parts = spec.split(',').map(str::trim);
    match parts.next() {
        Some("simple") => return Ok(None),
        Some("jwt") => {}
        other => return Err(format!("unknown token type {:?}: expected simple or jwt", other.unwrap_or(""))),
    }
    let (mut pub_key, mut priv_key, mut sign_method, mut ttl) = (None, None, None, DEFAULT_TTL);
    for option in parts.filter(|p| !p.is_empty()) {
        let (name, value) = option.split_once('=').ok_or_else(|| format!("{option:?} is not name=value"))?;
        match name {
            "pub-key" => pub_key = Some(PathBuf::from(value)),
            "priv-key" => priv_key = Some(PathBuf::from(value)),
            "sign-method" => {
                sign_method = Some(value.parse::<Algorithm>().map_err(|_| format!("unknown sign-method {value:?}"))?)
            }
            "ttl" => {
                ttl = crate::config::parse_retention_duration(value)
                    .filter(|ttl| !ttl.is_zero())
                    .ok_or_else(|| format!("ttl {value:?} is not a duration such as 5m"))?
            }
            other => return Err(format!("unknown jwt option {other:?}")),
        }
    }
    let sign_method = sign_method.ok_or("jwt needs sign-method (RS256, ES256, EdDSA, HS256, ...)")?;
    let symmetric = matches!(sign_method, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    if symmetric && priv_key.is_none() {
        return Err(format!("{sign_method:?} signs and verifies with priv-key: give priv-key"));
    }
    if !symmetric && pub_key.is_none() {
        return Err("jwt needs pub-key to verify tokens (priv-key to issue them too)".into());
    }
    Ok(Some(JwtOptions { pub_key, priv_key, sign_method, ttl }))
}

/// etcd's claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// This member's JWT keys.
pub struct JwtTokens {
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    header: Header,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens").field("alg", &self.header.alg).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl JwtTokens {
    pub fn load(options: &JwtOptions) -> Result<JwtTokens, String> {
        let alg = options.sign_method;
        let (signing, verifying) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = read(options.priv_key.as_deref().ok_or("HS needs priv-key")?)?;
                (Some(EncodingKey::from_secret(&secret)), DecodingKey::from_secret(&secret))
            }
            _ => {
                let public = options.pub_key.as_deref().ok_or("jwt needs pub-key")?;
                let pem = read(public)?;
                let verifying = match alg {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                }
                .map_err(|e| format!("{}: {e}", public.display()))?;
                let signing = match &options.priv_key {
                    None => None,
                    Some(private) => {
                        let pem = read(private)?;
                        Some(
                            match alg {
                                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                                _ => EncodingKey::from_rsa_pem(&pem),
                            }
                            .map_err(|e| format!("{}: {e}", private.display()))?,
                        )
                    }
                };
                (signing, verifying)
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let tokens = JwtTokens { signing, verifying, header: Header::new(alg), validation, ttl: options.ttl };
        // A key pair that does not match would issue tokens no member honours: find out now.
        if tokens.signing.is_some() {
            let probe = tokens.sign("keel-key-check", 0)?;
            if tokens.verify(&probe).is_none() {
                return Err("priv-key and pub-key are not a pair: a signed token does not verify".into());
            }
        }
        Ok(tokens)
    }

    /// Whether this member can issue tokens (it has the private key).
    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    /// A token for `user` at auth revision `revision`, valid for the configured ttl.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let signing = self.signing.as_ref().ok_or("this member has no priv-key: it verifies tokens only")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims { username: user.to_string(), revision, exp: (now + self.ttl).as_secs() };
        jsonwebtoken::encode(&self.header, &claims, signing).map_err(|e| e.to_string())
    }

    /// The user and revision a token names, if it was signed with this cluster's key, for this
    /// method, and has not expired.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.verifying, &self.validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-jwt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    /// An ES256 pair (PKCS#8 private key, SPKI public key) written to `dir`.
    fn es256_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let (private, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
        std::fs::write(&private, key.serialize_pem()).expect("write");
        std::fs::write(&public, key.public_key_pem()).expect("write");
        (private, public)
    }

    fn options(private: Option<&Path>, public: &Path) -> JwtOptions {
        let spec = match private {
            Some(private) => {
                format!("jwt,pub-key={},priv-key={},sign-method=ES256", public.display(), private.display())
            }
            None => format!("jwt,pub-key={},sign-method=ES256", public.display()),
        };
        parse_auth_token(&spec).expect("parse").expect("jwt")
    }

    #[test]
    fn a_token_signed_by_one_member_is_honoured_by_a_verify_only_member_and_no_other_cluster() {
        let dir = dir("pair");
        let (private, public) = es256_pair(&dir, "cluster");
        let issuer = JwtTokens::load(&options(Some(&private), &public)).expect("issuer");
        let verifier = JwtTokens::load(&options(None, &public)).expect("verifier");
        assert!(issuer.can_sign() && !verifier.can_sign());
        let token = issuer.sign("alice", 7).expect("sign");
        assert_eq!(verifier.verify(&token), Some(("alice".to_string(), 7)));
        assert!(verifier.sign("alice", 7).is_err(), "a verify-only member issues nothing");

        let (other_private, other_public) = es256_pair(&dir, "other");
        let stranger = JwtTokens::load(&options(Some(&other_private), &other_public)).expect("other");
        assert_eq!(verifier.verify(&stranger.sign("alice", 7).expect("sign")), None, "another key's token");
        let mut forged = token.clone();
        forged.insert_str(forged.rfind('.').expect("three parts") + 1, "AAAA");
        assert_eq!(verifier.verify(&forged), None, "a tampered signature");
        assert_eq!(verifier.verify("not.a.token"), None);
        assert_eq!(verifier.verify(""), None);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let dir = dir("expired");
        let (private, public) = es256_pair(&dir, "cluster");
        let tokens = JwtTokens::load(&options(Some(&private), &public)).expect("tokens");
        let past = Claims { username: "alice".into(), revision: 1, exp: 1_000 };
        let token = jsonwebtoken::encode(&tokens.header, &past, tokens.signing.as_ref().expect("key")).expect("encode");
        assert_eq!(tokens.verify(&token), None);
    }

    #[test]
    fn keys_that_are_not_a_pair_are_refused_at_start() {
        let dir = dir("mismatch");
        let (private, _) = es256_pair(&dir, "one");
        let (_, public) = es256_pair(&dir, "two");
        let error = JwtTokens::load(&options(Some(&private), &public)).expect_err("refused");
        assert!(error.contains("not a pair"), "{error}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// A token is whatever a client sends: any string is refused or honoured, never a panic,
        /// and a real token with any one character changed is refused.
        #[test]
        fn any_string_or_altered_token_is_refused_without_a_panic(text in ".{0,300}", at in 0usize..400, with in proptest::char::any()) {
            let tokens = shared_tokens();
            proptest::prop_assert_eq!(tokens.verify(&text), None);
            let token = tokens.sign("alice", 3).expect("sign");
            let mut altered: Vec<char> = token.chars().collect();
            let at = at % altered.len();
            proptest::prop_assume!(altered[at] != with);
            altered[at] = with;
            let altered: String = altered.into_iter().collect();
            // Base64url's last character may carry unused bits: the same bytes, still valid.
            if let Some((user, revision)) = tokens.verify(&altered) {
                proptest::prop_assert_eq!((user.as_str(), revision), ("alice", 3));
            }
        }
    }

    fn shared_tokens() -> &'static JwtTokens {
        static TOKENS: std::sync::OnceLock<JwtTokens> = std::sync::OnceLock::new();
        TOKENS.get_or_init(|| {
            let dir = dir("proptest");
            let (private, public) = es256_pair(&dir, "cluster");
            JwtTokens::load(&options(Some(&private), &public)).expect("tokens")
        })
    }

    #[test]
    fn the_flag_is_parsed_as_etcd_writes_it() {
        assert_eq!(parse_auth_token("simple"), Ok(None));
        let parsed =
            parse_auth_token("jwt,pub-key=a.pub,priv-key=a,sign-method=RS512,ttl=10m").expect("ok").expect("jwt");
        assert_eq!(parsed.sign_method, Algorithm::RS512);
        assert_eq!(parsed.ttl, Duration::from_secs(600));
        assert_eq!(parsed.priv_key.as_deref(), Some(Path::new("a")));
        for bad in [
            "jwt",
            "jwt,sign-method=RS256",
            "jwt,pub-key=a,sign-method=XX1",
            "jwt,pub-key=a,sign-method=RS256,ttl=0",
            "jwt,sign-method=HS256,pub-key=a",
            "jwt,pub-key=a,sign-method=RS256,color=blue",
            "opaque",
        ] {
            assert!(parse_auth_token(bad).is_err(), "{bad} accepted");
        }
    }
}
