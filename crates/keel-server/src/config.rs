//! `keel server`'s configuration: etcd's flags, with etcd's defaults, each also settable as a
//! `KEEL_*` environment variable (`--initial-cluster` ↔ `KEEL_INITIAL_CLUSTER`).
//!
//! Flags are parsed the way Go's `flag` package (and so etcd) accepts them: `-name x`,
//! `--name x`, `-name=x`, `--name=x`. Setting a flag both on the command line and in the
//! environment is refused, as etcd refuses it, rather than silently picking one. Every error
//! names the flag.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

pub use crate::tls::TlsFlags;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown flag --{0} (see `keel server --help`)")]
    UnknownFlag(String),
    #[error("flag --{0} needs a value")]
    MissingValue(String),
    #[error("flag --{flag} is given more than once")]
    Repeated { flag: String },
    #[error("flag --{flag} is set on the command line and as {env}; remove one")]
    Contradictory { flag: String, env: String },
    #[error("invalid value {value:?} for --{flag}: {reason}")]
    Invalid { flag: &'static str, value: String, reason: String },
    #[error("{0}")]
    Inconsistent(String),
}

/// A URL as etcd's flags take them: `scheme://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerUrl {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for PeerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

impl PeerUrl {
    /// Whether this URL's scheme asks for TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == "https" || self.scheme == "unixs"
    }

    pub fn parse(flag: &'static str, text: &str) -> Result<PeerUrl, ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid { flag, value: text.to_string(), reason: reason.to_string() };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| invalid("expected scheme://host:port"))?;
        if scheme != "http" && scheme != "https" && scheme != "unix" && scheme != "unixs" {
            return Err(invalid("the scheme must be http or https"));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(invalid("a URL here may not have a path"));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| invalid("missing :port"))?;
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        let port: u16 = port.parse().map_err(|_| invalid("the port must be a number from 0 to 65535"))?;
        Ok(PeerUrl { scheme: scheme.to_string(), host: host.to_string(), port })
    }

    fn parse_list(flag: &'static str, text: &str) -> Result<Vec<PeerUrl>, ConfigError> {
        let urls: Vec<PeerUrl> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| PeerUrl::parse(flag, s))
            .collect::<Result<_, _>>()?;
        if urls.is_empty() {
            return Err(ConfigError::Invalid {
                flag,
                value: text.to_string(),
                reason: "at least one URL is needed".into(),
            });
        }
        Ok(urls)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: String,
    pub listen_client_urls: Vec<PeerUrl>,
    pub advertise_client_urls: Vec<PeerUrl>,
    pub listen_peer_urls: Vec<PeerUrl>,
    pub initial_advertise_peer_urls: Vec<PeerUrl>,
    /// Member name -> its peer URLs.
    pub initial_cluster: BTreeMap<String, Vec<PeerUrl>>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    /// `--max-concurrent-streams`: HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// `--auth-token-ttl`: seconds a simple token lives unused.
    pub auth_token_ttl_seconds: u64,
    /// `--auth-token jwt,...`: signed tokens instead of simple ones.
    pub auth_token_jwt: Option<crate::jwt::JwtOptions>,
    pub snapshot_count: u64,
    /// 0 means etcd's default of 2 GiB.
    pub quota_backend_bytes: u64,
    /// WAL segments and snapshot files kept once obsolete (0: keep all), etcd's `--max-wals`
    /// and `--max-snapshots`.
    pub max_wals: u64,
    pub max_snapshots: u64,
    /// Entries kept in the log behind each snapshot for followers that fell a little behind
    /// (etcd's `--experimental-snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    pub auto_compaction: AutoCompaction,
    /// keel's own: free space on the data dir's filesystem below which this member raises the
    /// NOSPACE alarm, so the cluster stops growing its data before the disk is full.
    pub min_free_bytes: u64,
    /// keel's own: φ of a leader's silence at which a follower suspects it and campaigns (phi-accrual
    /// over the leader's heartbeat intervals; see `keel_node::DetectionConfig`); 0 turns the
    /// detector off and leaves it to the election timeout.
    pub leader_suspicion_phi: f64,
    /// keel's own: this member's disk is judged slow when its writes take this many times their
    /// healthy baseline (see `keel_node::HealthConfig`); a slow leader hands leadership over.
    /// 0 turns fail-slow detection off.
    pub fail_slow_factor: f64,
    /// Test and chaos builds only: faults can be injected into this process over HTTP (see
    /// `crate::faults`). Never set in production.
    pub unsafe_fault_injection: bool,
    /// keel's own: this process joins the cluster as a spare — it runs the membership protocol
    /// and holds no replica until the leader makes it replace a dead voter. Needs
    /// `--initial-cluster-state existing` and an `--initial-cluster` of the current members
    /// (itself not among them).
    pub spare: bool,
    /// keel's own: this member's failure domain (a zone, a rack); replacements go to a spare in
    /// a zone the group's surviving voters do not use first. Empty: its host.
    pub zone: String,
    /// keel's own: a voter confirmed dead this long is replaced by a spare (0: never).
    pub replace_dead_after: std::time::Duration,
    /// keel's own: the membership protocol's period (one probe per member per period).
    pub membership_probe_interval: std::time::Duration,
    /// TLS on the client port (`https://` client URLs): `--cert-file`, `--key-file`,
    /// `--trusted-ca-file`, `--client-cert-auth`, `--auto-tls`.
    pub client_tls: TlsFlags,
    /// TLS on the peer port (`https://` peer URLs): the same flags with a `peer-` prefix.
    pub peer_tls: TlsFlags,
    /// `--peer-cert-allowed-cn`: only peers whose certificate names this common name get in.
    pub peer_cert_allowed_cn: String,
    /// `--self-signed-cert-validity`: years the certificates of `--auto-tls` are valid.
    pub self_signed_cert_validity_years: u64,
}

/// `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this much history (by time).
    Periodic(std::time::Duration),
    /// Keep this many revisions.
    Revision(u64),
}

/// Parses a Go duration as etcd's retention takes it ("1h", "30m", "90s", "1h30m", "500ms"); a
/// bare number is hours, as in etcd.
pub fn parse_retention_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    if let Ok(hours) = text.parse::<u64>() {
        return Some(std::time::Duration::from_secs(hours.checked_mul(3600)?));
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += std::time::Duration::try_from_secs_f64(value * seconds).ok()?;
    }
    Some(total)
}

/// Every flag, with etcd's default. `{name}` in a default is replaced by `--name`.
const FLAGS: &[(&str, &str)] = &[
    ("name", "default"),
    ("data-dir", "{name}.etcd"),
    ("listen-client-urls", "http://localhost:2379"),
    ("advertise-client-urls", "http://localhost:2379"),
    ("listen-peer-urls", "http://localhost:2380"),
    ("initial-advertise-peer-urls", "http://localhost:2380"),
    ("initial-cluster", "default=http://localhost:2380"),
    ("initial-cluster-state", "new"),
    ("initial-cluster-token", "etcd-cluster"),
    ("heartbeat-interval", "100"),
    ("election-timeout", "1000"),
    ("max-request-bytes", "1572864"),
    ("max-txn-ops", "128"),
    ("max-concurrent-streams", "4294967295"),
    ("auth-token", "simple"),
    ("auth-token-ttl", "300"),
    ("snapshot-count", "100000"),
    ("quota-backend-bytes", "0"),
    ("max-wals", "5"),
    ("max-snapshots", "5"),
    ("experimental-snapshot-catchup-entries", "5000"),
    ("auto-compaction-mode", "periodic"),
    ("auto-compaction-retention", "0"),
    ("experimental-min-free-bytes", "134217728"),
    ("experimental-leader-suspicion-phi", "8"),
    ("experimental-fail-slow-factor", "5"),
    ("unsafe-fault-injection", "false"),
    ("spare", "false"),
    ("zone", ""),
    ("replace-dead-after", "60s"),
    ("membership-probe-interval", "1s"),
    ("cert-file", ""),
    ("key-file", ""),
    ("trusted-ca-file", ""),
    ("client-cert-auth", "false"),
    ("auto-tls", "false"),
    ("peer-cert-file", ""),
    ("peer-key-file", ""),
    ("peer-trusted-ca-file", ""),
    ("peer-client-cert-auth", "false"),
    ("peer-auto-tls", "false"),
    ("peer-cert-allowed-cn", ""),
    ("client-crl-file", ""),
    ("client-cert-allowed-hostname", ""),
    ("peer-crl-file", ""),
    ("peer-cert-allowed-hostname", ""),
    ("cipher-suites", ""),
    ("self-signed-cert-validity", "1"),
];

/// Flags that need no value: `--spare` means `--spare=true` (as Go's flag package reads them).
const SWITCHES: &[&str] =
    &["spare", "unsafe-fault-injection", "client-cert-auth", "auto-tls", "peer-client-cert-auth", "peer-auto-tls"];

/// etcd's bounds: an election timeout of at most 50 s, and at least five heartbeats.
const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;
const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;

pub fn env_name(flag: &str) -> String {
    format!("KEEL_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// The help text: every flag with its default and environment variable.
pub fn help() -> String {
    let mut out = String::from("keel server takes etcd's flags:\n");
    for (flag, default) in FLAGS {
        out.push_str(&format!("  --{flag:<30} default {default:<32} env {}\n", env_name(flag)));
    }
    out
}

/// A φ threshold: a finite number, 0 or more.
fn phi(flag: &'static str, text: &str) -> Result<f64, ConfigError> {
    match text.trim().parse::<f64>() {
        Ok(phi) if phi.is_finite() && phi >= 0.0 => Ok(phi),
        _ => Err(ConfigError::Invalid { flag, value: text.into(), reason: "expected a number, 0 or more".into() }),
    }
}

/// A factor: 0 (off) or a finite number of at least 1.
fn factor(flag: &'static str, text: &str) -> Result<f64, ConfigError> {
    match text.trim().parse::<f64>() {
        Ok(factor) if factor == 0.0 || (factor.is_finite() && factor >= 1.0) => Ok(factor),
        _ => Err(ConfigError::Invalid {
            flag,
            value: text.into(),
            reason: "expected 0 (off) or a number of at least 1".into(),
        }),
    }
}

/// A Go duration ("60s", "1m30s", "200ms"); a bare number is seconds.
fn duration(flag: &'static str, text: &str) -> Result<std::time::Duration, ConfigError> {
    let text = text.trim();
    let parsed = match text.parse::<u64>() {
        Ok(seconds) => Some(std::time::Duration::from_secs(seconds)),
        Err(_) => parse_retention_duration(text),
    };
    parsed.ok_or_else(|| ConfigError::Invalid {
        flag,
        value: text.into(),
        reason: "expected a duration such as 60s, 5m or 500ms".into(),
    })
}

fn boolean(flag: &'static str, text: &str) -> Result<bool, ConfigError> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ConfigError::Invalid { flag, value: text.into(), reason: "expected true or false".into() }),
    }
}

fn number(flag: &'static str, text: &str) -> Result<u64, ConfigError> {
    text.trim().parse().map_err(|_| ConfigError::Invalid {
        flag,
        value: text.to_string(),
        reason: "not a whole number".into(),
    })
}

fn parse_cluster(text: &str) -> Result<BTreeMap<String, Vec<PeerUrl>>, ConfigError> {
    const FLAG: &str = "initial-cluster";
    let mut members: BTreeMap<String, Vec<PeerUrl>> = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part.split_once('=').ok_or_else(|| ConfigError::Invalid {
            flag: FLAG,
            value: text.to_string(),
            reason: format!("{part:?} is not name=URL"),
        })?;
        members.entry(name.to_string()).or_default().push(PeerUrl::parse(FLAG, url)?);
    }
    if members.is_empty() {
        return Err(ConfigError::Invalid { flag: FLAG, value: text.to_string(), reason: "no members".into() });
    }
    Ok(members)
}

impl ServerConfig {
    /// Parses command-line arguments (after `keel server`) and the environment.
    pub fn from_args<I, S>(args: I, env: &BTreeMap<String, String>) -> Result<ServerConfig, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut given: BTreeMap<&'static str, String> = BTreeMap::new();
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let Some(stripped) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                return Err(ConfigError::UnknownFlag(arg.clone()));
            };
            let (name, inline) = match stripped.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (stripped, None),
            };
            let Some((flag, _)) = FLAGS.iter().find(|(f, _)| *f == name) else {
                return Err(ConfigError::UnknownFlag(name.to_string()));
            };
            let value = match inline {
                Some(value) => value,
                None if SWITCHES.contains(flag)
                    && !matches!(args.get(i + 1).map(String::as_str), Some("true" | "false")) =>
                {
                    "true".to_string()
                }
                None => {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| ConfigError::MissingValue(name.to_string()))?
                }
            };
            if given.insert(flag, value).is_some() {
                return Err(ConfigError::Repeated { flag: name.to_string() });
            }
            i += 1;
        }
        for (flag, _) in FLAGS {
            let variable = env_name(flag);
            if let Some(value) = env.get(&variable) {
                if given.contains_key(flag) {
                    return Err(ConfigError::Contradictory { flag: flag.to_string(), env: variable });
                }
                given.insert(flag, value.clone());
            }
        }
        let name = given.get("name").cloned().unwrap_or_else(|| "default".to_string());
        let get = |flag: &'static str| -> String {
            given.get(flag).cloned().unwrap_or_else(|| {
                let default =
                    FLAGS.iter().find(|(f, _)| *f == flag).map(|(_, d)| *d).expect("every flag has a default");
                default.replace("{name}", &name)
            })
        };
        let initial_cluster_state = match get("initial-cluster-state").as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(ConfigError::Invalid {
                    flag: "initial-cluster-state",
                    value: other.to_string(),
                    reason: "must be new or existing".into(),
                })
            }
        };
        // etcd's `--auth-token simple` (the default) or `jwt,pub-key=...,sign-method=...`.
        let cipher_suites: Vec<String> =
            get("cipher-suites").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        let auth_token = get("auth-token");
        let auth_token_jwt = crate::jwt::parse_auth_token(&auth_token).map_err(|reason| ConfigError::Invalid {
            flag: "auth-token",
            value: auth_token.clone(),
            reason,
        })?;
        let retention = get("auto-compaction-retention");
        let invalid_retention = |reason: &str| ConfigError::Invalid {
            flag: "auto-compaction-retention",
            value: retention.clone(),
            reason: reason.to_string(),
        };
        let auto_compaction = match get("auto-compaction-mode").as_str() {
            "periodic" => match parse_retention_duration(&retention) {
                Some(period) if period.is_zero() => AutoCompaction::Off,
                Some(period) => AutoCompaction::Periodic(period),
                None => return Err(invalid_retention("expected a duration such as 1h, 30m or 90s (or hours)")),
            },
            "revision" => match retention.trim().parse::<u64>() {
                Ok(0) => AutoCompaction::Off,
                Ok(revisions) => AutoCompaction::Revision(revisions),
                Err(_) => return Err(invalid_retention("expected a number of revisions")),
            },
            other => {
                return Err(ConfigError::Invalid {
                    flag: "auto-compaction-mode",
                    value: other.to_string(),
                    reason: "must be periodic or revision".into(),
                })
            }
        };
        let config = ServerConfig {
            max_wals: number("max-wals", &get("max-wals"))?,
            max_snapshots: number("max-snapshots", &get("max-snapshots"))?,
            snapshot_catchup_entries: number(
                "experimental-snapshot-catchup-entries",
                &get("experimental-snapshot-catchup-entries"),
            )?,
            auto_compaction,
            min_free_bytes: number("experimental-min-free-bytes", &get("experimental-min-free-bytes"))?,
            leader_suspicion_phi: phi("experimental-leader-suspicion-phi", &get("experimental-leader-suspicion-phi"))?,
            fail_slow_factor: factor("experimental-fail-slow-factor", &get("experimental-fail-slow-factor"))?,
            unsafe_fault_injection: boolean("unsafe-fault-injection", &get("unsafe-fault-injection"))?,
            spare: boolean("spare", &get("spare"))?,
            zone: get("zone"),
            replace_dead_after: duration("replace-dead-after", &get("replace-dead-after"))?,
            membership_probe_interval: duration("membership-probe-interval", &get("membership-probe-interval"))?,
            client_tls: TlsFlags {
                cert_file: get("cert-file"),
                key_file: get("key-file"),
                trusted_ca_file: get("trusted-ca-file"),
                client_cert_auth: boolean("client-cert-auth", &get("client-cert-auth"))?,
                auto_tls: boolean("auto-tls", &get("auto-tls"))?,
                crl_file: get("client-crl-file"),
                allowed_hostname: get("client-cert-allowed-hostname"),
                cipher_suites: cipher_suites.clone(),
            },
            peer_tls: TlsFlags {
                cert_file: get("peer-cert-file"),
                key_file: get("peer-key-file"),
                trusted_ca_file: get("peer-trusted-ca-file"),
                client_cert_auth: boolean("peer-client-cert-auth", &get("peer-client-cert-auth"))?,
                auto_tls: boolean("peer-auto-tls", &get("peer-auto-tls"))?,
                crl_file: get("peer-crl-file"),
                allowed_hostname: get("peer-cert-allowed-hostname"),
                cipher_suites,
            },
            peer_cert_allowed_cn: get("peer-cert-allowed-cn"),
            self_signed_cert_validity_years: number("self-signed-cert-validity", &get("self-signed-cert-validity"))?,
            data_dir: get("data-dir"),
            listen_client_urls: PeerUrl::parse_list("listen-client-urls", &get("listen-client-urls"))?,
            advertise_client_urls: PeerUrl::parse_list("advertise-client-urls", &get("advertise-client-urls"))?,
            listen_peer_urls: PeerUrl::parse_list("listen-peer-urls", &get("listen-peer-urls"))?,
            initial_advertise_peer_urls: PeerUrl::parse_list(
                "initial-advertise-peer-urls",
                &get("initial-advertise-peer-urls"),
            )?,
            initial_cluster: parse_cluster(&get("initial-cluster"))?,
            initial_cluster_state,
            initial_cluster_token: get("initial-cluster-token"),
            heartbeat_interval_ms: number("heartbeat-interval", &get("heartbeat-interval"))?,
            election_timeout_ms: number("election-timeout", &get("election-timeout"))?,
            max_request_bytes: number("max-request-bytes", &get("max-request-bytes"))?,
            max_txn_ops: number("max-txn-ops", &get("max-txn-ops"))?,
            max_concurrent_streams: match number("max-concurrent-streams", &get("max-concurrent-streams"))? {
                streams @ 1..=0xffff_ffff => streams as u32,
                other => {
                    return Err(ConfigError::Invalid {
                        flag: "max-concurrent-streams",
                        value: other.to_string(),
                        reason: "must be between 1 and 4294967295".into(),
                    })
                }
            },
            auth_token_ttl_seconds: number("auth-token-ttl", &get("auth-token-ttl"))?,
            auth_token_jwt,
            snapshot_count: number("snapshot-count", &get("snapshot-count"))?,
            quota_backend_bytes: number("quota-backend-bytes", &get("quota-backend-bytes"))?,
            name,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::Invalid {
                flag: "name",
                value: String::new(),
                reason: "must not be empty".into(),
            });
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::Invalid {
                flag: "heartbeat-interval",
                value: "0".into(),
                reason: "must be > 0".into(),
            });
        }
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms {
            return Err(ConfigError::Inconsistent(format!(
                "--election-timeout[{}ms] should be at least 5 times --heartbeat-interval[{}ms]",
                self.election_timeout_ms, self.heartbeat_interval_ms
            )));
        }
        if self.election_timeout_ms > ELECTION_TIMEOUT_MS_MAX {
            return Err(ConfigError::Invalid {
                flag: "election-timeout",
                value: self.election_timeout_ms.to_string(),
                reason: format!("must be at most {ELECTION_TIMEOUT_MS_MAX} ms"),
            });
        }
        if self.auth_token_ttl_seconds == 0 {
            return Err(ConfigError::Invalid {
                flag: "auth-token-ttl",
                value: "0".into(),
                reason: "must be > 0".into(),
            });
        }
        if self.max_txn_ops == 0 {
            return Err(ConfigError::Invalid { flag: "max-txn-ops", value: "0".into(), reason: "must be > 0".into() });
        }
        if self.max_request_bytes == 0 {
            return Err(ConfigError::Invalid {
                flag: "max-request-bytes",
                value: "0".into(),
                reason: "must be > 0".into(),
            });
        }
        if self.membership_probe_interval < std::time::Duration::from_millis(10) {
            return Err(ConfigError::Invalid {
                flag: "membership-probe-interval",
                value: format!("{:?}", self.membership_probe_interval),
                reason: "must be at least 10ms".into(),
            });
        }
        self.validate_tls()?;
        if self.spare {
            // A spare is not a member yet: it names the members it joins, not itself.
            if self.initial_cluster_state != ClusterState::Existing {
                return Err(ConfigError::Inconsistent(
                    "--spare joins a running cluster: it needs --initial-cluster-state existing".into(),
                ));
            }
            if self.initial_cluster.contains_key(&self.name) {
                return Err(ConfigError::Inconsistent(format!(
                    "--spare {:?} must not be in --initial-cluster (it lists the current members)",
                    self.name
                )));
            }
            return Ok(());
        }
        // As etcd: this member must be in the initial cluster, with the URLs it advertises.
        match self.initial_cluster.get(&self.name) {
            None => {
                return Err(ConfigError::Inconsistent(format!(
                    "couldn't find local name {:?} in the initial cluster configuration (--initial-cluster)",
                    self.name
                )))
            }
            Some(urls) => {
                let mut listed: Vec<String> = urls.iter().map(ToString::to_string).collect();
                let mut advertised: Vec<String> =
                    self.initial_advertise_peer_urls.iter().map(ToString::to_string).collect();
                listed.sort();
                advertised.sort();
                if listed != advertised {
                    return Err(ConfigError::Inconsistent(format!(
                        "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                        self.name,
                        listed.join(","),
                        advertised.join(",")
                    )));
                }
            }
        }
        Ok(())
    }

    /// TLS flags that go together, and a certificate for every `https://` URL this member
    /// listens on (etcd refuses both mistakes the same way).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        self.client_tls.check("").map_err(ConfigError::Inconsistent)?;
        self.peer_tls.check("peer-").map_err(ConfigError::Inconsistent)?;
        if self.serves_clients_with_tls() && !self.client_tls.has_identity() {
            return Err(ConfigError::Inconsistent(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url with HTTPS scheme (or --auto-tls)"
                    .into(),
            ));
        }
        if self.peers_use_tls() && !self.peer_tls.has_identity() {
            return Err(ConfigError::Inconsistent(
                "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url with HTTPS scheme (or --peer-auto-tls)"
                    .into(),
            ));
        }
        if self.self_signed_cert_validity_years == 0 {
            return Err(ConfigError::Invalid {
                flag: "self-signed-cert-validity",
                value: "0".into(),
                reason: "must be at least 1 (year)".into(),
            });
        }
        Ok(())
    }

    /// Whether any client URL this member listens on is `https://`.
    pub fn serves_clients_with_tls(&self) -> bool {
        self.listen_client_urls.iter().any(PeerUrl::is_tls)
    }

    /// Whether this member's peer port speaks TLS (`https://` in `--listen-peer-urls`): it then
    /// dials its peers with TLS too, so a cluster's members use one scheme.
    pub fn peers_use_tls(&self) -> bool {
        self.listen_peer_urls.iter().any(PeerUrl::is_tls)
    }

    /// The backend quota, with etcd's default for 0.
    pub fn quota_bytes(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            DEFAULT_QUOTA_BACKEND_BYTES
        } else {
            self.quota_backend_bytes
        }
    }

    /// What compaction leaves of the obsolete WAL segments and snapshot files.
    pub fn retention(&self) -> keel_host::Retention {
        let count = |n: u64| if n == 0 { usize::MAX } else { usize::try_from(n).unwrap_or(usize::MAX) };
        keel_host::Retention { wal_segments: count(self.max_wals), snapshots: count(self.max_snapshots) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(args: &[&str]) -> Result<ServerConfig, ConfigError> {
        ServerConfig::from_args(args, &BTreeMap::new())
    }

    /// The flags etcd's documentation uses for a 3-member local cluster.
    fn member(name: &str, client: u16, peer: u16) -> Vec<String> {
        vec![
            format!("--name={name}"),
            format!("--data-dir=/tmp/{name}"),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            "--initial-cluster=infra1=http://127.0.0.1:12380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380".into(),
            "--initial-cluster-token=etcd-cluster-1".into(),
            "--initial-cluster-state=new".into(),
        ]
    }

    #[test]
    fn etcds_defaults_apply_with_no_flags() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, "default.etcd");
        assert_eq!(config.listen_client_urls[0].to_string(), "http://localhost:2379");
        assert_eq!(config.heartbeat_interval_ms, 100);
        assert_eq!(config.election_timeout_ms, 1000);
        assert_eq!(config.max_request_bytes, 1_572_864);
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(config.quota_bytes(), 2 << 30);
    }

    #[test]
    fn retention_and_auto_compaction_take_etcds_forms() {
        let config = parse(&[]).unwrap();
        assert_eq!((config.max_wals, config.max_snapshots, config.snapshot_catchup_entries), (5, 5, 5_000));
        assert_eq!(config.auto_compaction, AutoCompaction::Off);
        let periodic = |retention: &str| {
            parse(&["--auto-compaction-mode", "periodic", "--auto-compaction-retention", retention])
                .map(|c| c.auto_compaction)
        };
        assert_eq!(periodic("1m"), Ok(AutoCompaction::Periodic(Duration::from_secs(60))));
        assert_eq!(periodic("1h30m"), Ok(AutoCompaction::Periodic(Duration::from_secs(5_400))));
        assert_eq!(periodic("2"), Ok(AutoCompaction::Periodic(Duration::from_secs(7_200))), "bare hours");
        assert!(periodic("1 fortnight").is_err());
        let revision = parse(&["--auto-compaction-mode=revision", "--auto-compaction-retention=1000"]).unwrap();
        assert_eq!(revision.auto_compaction, AutoCompaction::Revision(1_000));
        assert!(parse(&["--auto-compaction-mode=sometimes"]).is_err());
        assert_eq!(parse(&["--max-wals=0"]).unwrap().retention().wal_segments, usize::MAX, "0 keeps every file");
    }

    #[test]
    fn a_three_member_cluster_starts_from_etcds_own_flags() {
        let config = ServerConfig::from_args(member("infra2", 22379, 22380), &BTreeMap::new()).unwrap();
        assert_eq!(config.name, "infra2");
        assert_eq!(config.initial_cluster.len(), 3);
        assert_eq!(config.initial_cluster["infra3"][0].port, 32380);
        assert_eq!(config.initial_cluster_token, "etcd-cluster-1");
    }

    #[test]
    fn go_flag_forms_are_all_accepted() {
        for args in [
            vec!["--name", "x", "--initial-cluster", "x=http://a:1", "--initial-advertise-peer-urls", "http://a:1"],
            vec!["-name=x", "-initial-cluster=x=http://a:1", "-initial-advertise-peer-urls=http://a:1"],
        ] {
            assert_eq!(parse(&args).unwrap().name, "x");
        }
    }

    #[test]
    fn the_data_dir_defaults_to_the_name() {
        let config = parse(&["--name", "n1", "--initial-cluster", "n1=http://localhost:2380"]).unwrap();
        assert_eq!(config.data_dir, "n1.etcd");
    }

    #[test]
    fn environment_variables_set_flags() {
        let env: BTreeMap<String, String> = [
            ("KEEL_NAME".to_string(), "e".to_string()),
            ("KEEL_INITIAL_CLUSTER".to_string(), "e=http://localhost:2380".to_string()),
        ]
        .into();
        assert_eq!(ServerConfig::from_args(Vec::<String>::new(), &env).unwrap().name, "e");
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(parse(&["--nmae", "x"]), Err(ConfigError::UnknownFlag("nmae".into())));
        assert_eq!(parse(&["--name"]), Err(ConfigError::MissingValue("name".into())));
        assert!(matches!(
            parse(&["--heartbeat-interval", "soon"]),
            Err(ConfigError::Invalid { flag: "heartbeat-interval", .. })
        ));
        assert!(matches!(
            parse(&["--listen-client-urls", "localhost:2379"]),
            Err(ConfigError::Invalid { flag: "listen-client-urls", .. })
        ));
        assert!(matches!(
            parse(&["--initial-cluster-state", "maybe"]),
            Err(ConfigError::Invalid { flag: "initial-cluster-state", .. })
        ));
        assert_eq!(parse(&["--name", "a", "--name", "b"]), Err(ConfigError::Repeated { flag: "name".into() }));
        let message = parse(&["--nmae", "x"]).unwrap_err().to_string();
        assert!(message.contains("--nmae"), "{message}");
    }

    #[test]
    fn contradictions_are_refused() {
        let env: BTreeMap<String, String> = [("KEEL_NAME".to_string(), "e".to_string())].into();
        assert_eq!(
            ServerConfig::from_args(["--name", "x"], &env),
            Err(ConfigError::Contradictory { flag: "name".into(), env: "KEEL_NAME".into() })
        );
        assert!(matches!(parse(&["--heartbeat-interval", "300"]), Err(ConfigError::Inconsistent(_))));
        assert!(matches!(parse(&["--name", "ghost"]), Err(ConfigError::Inconsistent(m)) if m.contains("ghost")));
        assert!(matches!(
            parse(&["--initial-advertise-peer-urls", "http://localhost:9999"]),
            Err(ConfigError::Inconsistent(m)) if m.contains("9999")
        ));
    }
}
