//! TLS for the client port and the peer port, with etcd's flags: certificates and keys from
//! files (`--cert-file`/`--key-file`, `--peer-cert-file`/`--peer-key-file`), client
//! certificates verified against a CA (`--trusted-ca-file`, `--client-cert-auth` and their
//! `--peer-` twins), self-signed certificates made at start (`--auto-tls`, `--peer-auto-tls`).
//!
//! rustls on ring: no OpenSSL, no C++ build. A member's own certificate and key are read again
//! when their files change (checked at most once a second, at a handshake), so certificates are
//! rotated without a restart — which etcd cannot do. A pair that fails to load leaves the old
//! one serving, with a warning.

pub mod certs;
pub mod listener;
pub mod peer;
pub mod subject;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("generating a certificate: {0}")]
    Generate(String),
}

/// One side's TLS flags, as etcd names them (the peer side's carry a `peer-` prefix).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFlags {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    /// `--client-crl-file` / `--peer-crl-file`: certificates revoked by the CA are refused.
    pub crl_file: String,
    /// `--client-cert-allowed-hostname` / `--peer-cert-allowed-hostname`: the other end's
    /// certificate must be valid for this name.
    pub allowed_hostname: String,
    /// `--cipher-suites` (both sides share it): the TLS 1.2 suites allowed, by Go's names.
    pub cipher_suites: Vec<String>,
}

impl TlsFlags {
    /// Whether these flags give a certificate to serve (from files, or made at start).
    pub fn has_identity(&self) -> bool {
        !self.cert_file.is_empty() || self.auto_tls
    }

    /// Whether the other end must present a certificate this side verifies. As in etcd 3.4, a
    /// trusted CA alone demands one too.
    pub fn verifies_clients(&self) -> bool {
        self.client_cert_auth || !self.trusted_ca_file.is_empty()
    }

    /// The mistakes etcd refuses, or would misbehave on, with `prefix` naming the side's flags.
    pub fn check(&self, prefix: &str) -> Result<(), String> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err(format!("--{prefix}cert-file and --{prefix}key-file go together"));
        }
        if self.client_cert_auth && self.trusted_ca_file.is_empty() {
            return Err(format!(
                "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file to verify certificates with"
            ));
        }
        let crl_flag = if prefix.is_empty() { "client-crl-file" } else { "peer-crl-file" };
        if !self.crl_file.is_empty() && self.trusted_ca_file.is_empty() {
            return Err(format!("--{crl_flag} needs --{prefix}trusted-ca-file (revocations are the CA's)"));
        }
        Ok(())
    }
}

/// The crypto keel's TLS uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Go's names for the suites it knows that rustls does not offer (no forward secrecy, CBC, RC4,
/// 3DES): an etcd configuration may list them; they are skipped with a warning.
const SUITES_KEEL_DOES_NOT_OFFER: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The crypto with `--cipher-suites` applied: TLS 1.3's suites stay (Go does not let them be
/// chosen either), TLS 1.2's are the ones named. A name nobody knows is refused.
pub fn provider_with_suites(names: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if names.is_empty() {
        return Ok(Arc::new(provider));
    }
    let mut chosen = Vec::new();
    for wanted in names.iter().map(|name| name.trim()).filter(|name| !name.is_empty()) {
        // Go names the ChaCha20 suites without their hash.
        let found = provider.cipher_suites.iter().find(|suite| {
            let name = format!("{:?}", suite.suite());
            name == wanted || name.strip_suffix("_SHA256") == Some(wanted)
        });
        match found {
            Some(suite) if suite.tls13().is_none() => chosen.push(*suite),
            Some(_) => {}
            None if SUITES_KEEL_DOES_NOT_OFFER.contains(&wanted) => {
                tracing::warn!(suite = wanted, "--cipher-suites names a suite keel does not offer; skipped")
            }
            None => return Err(TlsError::Invalid(format!("--cipher-suites: unknown cipher suite {wanted:?}"))),
        }
    }
    if chosen.is_empty() {
        tracing::warn!("--cipher-suites leaves no TLS 1.2 suite: only TLS 1.3 is spoken");
    }
    let tls13: Vec<_> = provider.cipher_suites.iter().filter(|suite| suite.tls13().is_some()).copied().collect();
    provider.cipher_suites = tls13.into_iter().chain(chosen).collect();
    Ok(Arc::new(provider))
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.display().to_string(), reason: reason.to_string() }
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in it"));
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// Every revocation list in the PEM file at `path`.
fn read_crls(path: &Path) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, TlsError> {
    rustls::pki_types::CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// Modification time and length of each file: a change to either means a new pair to load.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[&Path]) -> Stamp {
    paths.iter().map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// How often a handshake may look at the files again.
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

/// This member's certificate and key, from their files, read again when they change.
#[derive(Debug)]
pub struct Identity {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

impl Identity {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Identity>, TlsError> {
        let provider = provider();
        let stamp = stamp(&[cert_file, key_file]);
        let key = Self::read(cert_file, key_file, &provider)?;
        Ok(Arc::new(Identity {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: Mutex::new(Loaded { key, stamp, checked: Instant::now() }),
        }))
    }

    fn read(cert_file: &Path, key_file: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
        let certs = read_certificates(cert_file)?;
        let key = read_key(key_file)?;
        let certified = CertifiedKey::from_der(certs, key, provider).map_err(|e| file_error(key_file, e))?;
        Ok(Arc::new(certified))
    }

    /// The pair to present now, after reloading it if its files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.current.lock().expect("identity lock");
        if loaded.checked.elapsed() >= RELOAD_CHECK_EVERY {
            loaded.checked = Instant::now();
            let now = stamp(&[&self.cert_file, &self.key_file]);
            if now != loaded.stamp {
                match Self::read(&self.cert_file, &self.key_file, &self.provider) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert_file.display(), "certificate files changed; serving the new pair");
                        loaded.key = key;
                        loaded.stamp = now;
                    }
                    // Half-written files are usual while a tool rotates them: keep the old pair
                    // and try again at a later handshake.
                    Err(error) => {
                        tracing::warn!(%error, "certificate files changed but do not load; keeping the old pair")
                    }
                }
            }
        }
        loaded.key.clone()
    }
}

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// One side's TLS (clients or peers), resolved from its flags.
#[derive(Debug, Clone)]
pub struct Side {
    identity: Arc<Identity>,
    /// The CA the other end's certificates must chain to (`--trusted-ca-file`).
    roots: Option<Arc<RootCertStore>>,
    verify_clients: bool,
    crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    /// What the other end's certificate must name: `--peer-cert-allowed-cn`,
    /// `--*-cert-allowed-hostname` (checked after the handshake, see [`Side::admits`]).
    allowed_cn: Option<String>,
    allowed_hostname: Option<String>,
    /// The crypto, with `--cipher-suites` applied.
    provider: Arc<CryptoProvider>,
    /// `--auto-tls`: certificates are self-signed, so dialing peers cannot verify them (etcd
    /// skips verification the same way); the connection is encrypted, not authenticated.
    self_signed: bool,
}

impl Side {
    /// The side `flags` describe. With `--auto-tls` (and no files given, which win, as in etcd),
    /// a self-signed pair for `hosts` is made in `fixtures_dir` once and reused after.
    pub fn from_flags(
        flags: &TlsFlags,
        fixtures_dir: &Path,
        hosts: &[String],
        validity: Duration,
    ) -> Result<Side, TlsError> {
        let self_signed = flags.cert_file.is_empty() && flags.auto_tls;
        let (cert_file, key_file) = if self_signed {
            let (cert, key) = (fixtures_dir.join("cert.pem"), fixtures_dir.join("key.pem"));
            if !cert.exists() || !key.exists() {
                std::fs::create_dir_all(fixtures_dir).map_err(|e| file_error(fixtures_dir, e))?;
                let pair = certs::self_signed(hosts, validity)?;
                pair.write(fixtures_dir, "cert")?;
                std::fs::rename(fixtures_dir.join("cert-key.pem"), &key).map_err(|e| file_error(&key, e))?;
            }
            (cert, key)
        } else if !flags.cert_file.is_empty() {
            (PathBuf::from(&flags.cert_file), PathBuf::from(&flags.key_file))
        } else {
            return Err(TlsError::Invalid("no certificate: give a cert and key file, or auto TLS".into()));
        };
        if self_signed && flags.verifies_clients() {
            return Err(TlsError::Invalid(
                "auto TLS makes self-signed certificates, which a trusted CA cannot verify".into(),
            ));
        }
        let roots = match flags.trusted_ca_file.as_str() {
            "" => None,
            path => Some(read_roots(Path::new(path))?),
        };
        let crls = match flags.crl_file.as_str() {
            "" => Vec::new(),
            path => read_crls(Path::new(path))?,
        };
        if let Some(name) = Some(flags.allowed_hostname.as_str()).filter(|n| !n.is_empty()) {
            server_name(name)?;
        }
        Ok(Side {
            identity: Identity::load(&cert_file, &key_file)?,
            roots,
            verify_clients: flags.verifies_clients(),
            crls,
            allowed_cn: None,
            allowed_hostname: Some(flags.allowed_hostname.clone()).filter(|n| !n.is_empty()),
            provider: provider_with_suites(&flags.cipher_suites)?,
            self_signed,
        })
    }

    /// Admits only certificates naming `common_name` (`--peer-cert-allowed-cn`).
    pub fn with_allowed_cn(mut self, common_name: &str) -> Side {
        self.allowed_cn = Some(common_name.to_string()).filter(|n| !n.is_empty());
        self
    }

    /// Whether the certificate the other end presented (its chain, leaf first, verified by the
    /// handshake) names what this side demands of it.
    pub fn admits(&self, chain: Option<&[CertificateDer<'_>]>) -> Result<(), String> {
        if let Some(allowed) = &self.allowed_cn {
            let common_name = peer_common_name(chain);
            if common_name.as_deref() != Some(allowed.as_str()) {
                return Err(format!("the certificate names {common_name:?}, not the allowed common name {allowed:?}"));
            }
        }
        if let Some(allowed) = &self.allowed_hostname {
            let leaf = chain.and_then(|chain| chain.first()).ok_or("no certificate")?;
            let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
            let name = server_name(allowed).map_err(|e| e.to_string())?;
            rustls::client::verify_server_name(&parsed, &name)
                .map_err(|_| format!("the certificate is not valid for the allowed hostname {allowed:?}"))?;
        }
        Ok(())
    }

    /// The server's configuration: offers `alpn` and, when clients must present a certificate,
    /// verifies it against the trusted CA.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let provider = self.provider.clone();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let builder = match (&self.roots, self.verify_clients) {
            (Some(roots), true) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                    .with_crls(self.crls.iter().cloned())
                    // A revocation list covers the certificates the CA issued, not its own.
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status()
                    .build()
                    .map_err(|e| TlsError::Invalid(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.identity.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// The configuration a member dials its peers with: presents this member's certificate and
    /// verifies the peer's against the trusted CA (or not at all, for self-signed peers).
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = self.provider.clone();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let builder = match (&self.roots, self.self_signed) {
            (_, true) => builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate { provider })),
            (Some(roots), false) => builder.with_root_certificates(roots.clone()),
            (None, false) => {
                return Err(TlsError::Invalid(
                    "--peer-trusted-ca-file is needed to verify peers' certificates (or --peer-auto-tls)".into(),
                ))
            }
        };
        Ok(builder.with_client_cert_resolver(self.identity.clone()))
    }
}

/// The name to check a peer's certificate against: a host name, or an IP address (possibly in
/// URL brackets).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|e| TlsError::Invalid(format!("{host}: {e}")))
}

/// Accepts any certificate (the handshake's signatures are still checked, so the channel is
/// encrypted to whoever holds the key): for peers with self-signed certificates, as etcd's
/// `--peer-auto-tls` does.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The common name of the certificate the other end presented (verified by the handshake).
pub fn peer_common_name(certificates: Option<&[CertificateDer<'_>]>) -> Option<String> {
    certificates?.first().and_then(|leaf| subject::common_name(leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 86_400);

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    fn leaf(identity: &Identity) -> Vec<u8> {
        identity.current().cert[0].to_vec()
    }

    #[test]
    fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
        let dir = tempdir("reload");
        let ca = certs::ThrowawayCa::new("CA", YEAR).expect("ca");
        ca.member("first", &[]).expect("issue").write(&dir, "member").expect("write");
        let identity = Identity::load(&dir.join("member.pem"), &dir.join("member-key.pem")).expect("load");
        let first = leaf(&identity);
        assert_eq!(subject::common_name(&first).as_deref(), Some("first"));

        ca.member("second", &[]).expect("issue").write(&dir, "member").expect("write");
        identity.current.lock().expect("lock").checked = Instant::now() - RELOAD_CHECK_EVERY;
        assert_eq!(subject::common_name(&leaf(&identity)).as_deref(), Some("second"));

        // A half-written pair: the last good one keeps serving.
        std::fs::write(dir.join("member.pem"), "-----BEGIN CERTIFICATE-----\nAAAA").expect("write");
        identity.current.lock().expect("lock").checked = Instant::now() - RELOAD_CHECK_EVERY;
        assert_eq!(subject::common_name(&leaf(&identity)).as_deref(), Some("second"));
    }

    #[test]
    fn auto_tls_makes_a_self_signed_pair_once_and_reuses_it() {
        let dir = tempdir("auto");
        let flags = TlsFlags { auto_tls: true, ..TlsFlags::default() };
        let hosts = ["127.0.0.1".to_string()];
        Side::from_flags(&flags, &dir.join("client"), &hosts, YEAR).expect("first start");
        let made = std::fs::read(dir.join("client/cert.pem")).expect("cert.pem");
        assert!(dir.join("client/key.pem").exists());
        Side::from_flags(&flags, &dir.join("client"), &hosts, YEAR).expect("second start");
        assert_eq!(std::fs::read(dir.join("client/cert.pem")).expect("cert.pem"), made, "reused");
    }

    #[test]
    fn auto_tls_cannot_verify_clients_against_a_ca() {
        let dir = tempdir("auto-ca");
        let ca = certs::ThrowawayCa::new("CA", YEAR).expect("ca");
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem).expect("write");
        let flags = TlsFlags {
            auto_tls: true,
            trusted_ca_file: dir.join("ca.pem").to_string_lossy().into_owned(),
            ..TlsFlags::default()
        };
        let error = Side::from_flags(&flags, &dir.join("client"), &[], YEAR).expect_err("refused");
        assert!(error.to_string().contains("self-signed"), "{error}");
    }

    #[test]
    fn files_that_are_missing_or_not_pem_are_named_in_the_error() {
        let dir = tempdir("missing");
        std::fs::write(dir.join("garbage.pem"), "not a certificate").expect("write");
        for cert in [dir.join("absent.pem"), dir.join("garbage.pem")] {
            let flags = TlsFlags {
                cert_file: cert.to_string_lossy().into_owned(),
                key_file: cert.to_string_lossy().into_owned(),
                ..TlsFlags::default()
            };
            let error = Side::from_flags(&flags, &dir, &[], YEAR).expect_err("refused");
            assert!(error.to_string().contains(&*cert.to_string_lossy()), "{error}");
        }
    }

    #[test]
    fn cipher_suites_keep_tls13_take_the_named_tls12_ones_and_refuse_unknown_names() {
        let suites = |names: &[&str]| -> Vec<String> {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let provider = provider_with_suites(&names).expect("suites");
            provider.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect()
        };
        let chosen = suites(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"]);
        let tls12: Vec<&String> = chosen.iter().filter(|s| !s.starts_with("TLS13_")).collect();
        assert_eq!(tls12, ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"]);
        assert!(chosen.iter().any(|s| s.starts_with("TLS13_")), "TLS 1.3 stays: {chosen:?}");
        // Go's CBC suites are skipped (warned), leaving TLS 1.3 only.
        assert!(suites(&["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"]).iter().all(|s| s.starts_with("TLS13_")));
        let unknown = provider_with_suites(&["TLS_NOT_A_SUITE".to_string()]).map(drop).expect_err("refused");
        assert!(unknown.to_string().contains("TLS_NOT_A_SUITE"), "{unknown}");
        assert_eq!(suites(&[]).len(), rustls::crypto::ring::default_provider().cipher_suites.len());
    }

    #[test]
    fn flags_that_go_together_are_checked() {
        let cert_only = TlsFlags { cert_file: "a.pem".into(), ..TlsFlags::default() };
        assert!(cert_only.check("peer-").unwrap_err().contains("--peer-key-file"));
        let auth_without_ca = TlsFlags { client_cert_auth: true, ..TlsFlags::default() };
        assert!(auth_without_ca.check("").unwrap_err().contains("--trusted-ca-file"));
        let ca_alone = TlsFlags { trusted_ca_file: "ca.pem".into(), ..TlsFlags::default() };
        assert!(ca_alone.verifies_clients(), "as etcd 3.4: a trusted CA alone demands client certificates");
    }
}
