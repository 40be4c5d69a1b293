//! Certificates keel makes itself: the self-signed ones of `--auto-tls` and `--peer-auto-tls`
//! (as etcd makes them, under `{data-dir}/fixtures/`), and a throwaway CA with server and client
//! certificates for `keel certs` and `keel playground --tls`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use super::TlsError;

/// A certificate and its private key, both PEM, and its serial number (to revoke it by).
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: Vec<u8>,
}

impl Pair {
    /// Writes `{stem}.pem` and `{stem}-key.pem` into `dir` (the key readable by its owner only).
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), TlsError> {
        write_file(&dir.join(format!("{stem}.pem")), &self.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{stem}-key.pem")), &self.key_pem, 0o600)
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| TlsError::File { path: path.display().to_string(), reason: e.to_string() };
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)
}

fn generated(error: rcgen::Error) -> TlsError {
    TlsError::Generate(error.to_string())
}

/// Valid from an hour ago (clocks of a cluster's hosts differ a little) for `validity`.
fn params_for(names: &[String], common_name: &str, validity: Duration) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(generated)?;
    params.distinguished_name.push(DnType::OrganizationName, "keel");
    params.distinguished_name.push(DnType::CommonName, common_name);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let at = |seconds: i64| {
        time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| TlsError::Generate(e.to_string()))
    };
    params.not_before = at(now - 3600)?;
    params.not_after = at(now.saturating_add(validity.as_secs().min(i64::MAX as u64 / 2) as i64))?;
    Ok(params)
}

/// A self-signed certificate for `hosts` (names or IP addresses), usable by a server and as a
/// client: what `--auto-tls` and `--peer-auto-tls` serve.
pub fn self_signed(hosts: &[String], validity: Duration) -> Result<Pair, TlsError> {
    let key = KeyPair::generate().map_err(generated)?;
    let mut params = params_for(hosts, "keel", validity)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).map_err(generated)?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem(), serial: Vec::new() })
}

/// A random serial number: unique per certificate, as RFC 5280 asks (and revocation needs).
fn random_serial() -> Result<Vec<u8>, TlsError> {
    let mut serial = vec![0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| TlsError::Generate(e.to_string()))?;
    serial[0] &= 0x7f; // a positive INTEGER
    serial[0] |= 0x01; // with no leading zero byte to strip
    Ok(serial)
}

/// A certificate authority that lives as long as this value: it signs and is forgotten.
pub struct ThrowawayCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    validity: Duration,
}

impl ThrowawayCa {
    pub fn new(name: &str, validity: Duration) -> Result<ThrowawayCa, TlsError> {
        let key = KeyPair::generate().map_err(generated)?;
        let mut params = params_for(&[], name, validity)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(generated)?;
        Ok(ThrowawayCa { cert_pem: cert.pem(), issuer: Issuer::new(params, key), validity })
    }

    /// A certificate for a member: serves clients and peers at `hosts`, and dials peers.
    pub fn member(&self, name: &str, hosts: &[String]) -> Result<Pair, TlsError> {
        self.issue(name, hosts, &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A client certificate whose common name is `user` (the user name when auth is on).
    pub fn client(&self, user: &str) -> Result<Pair, TlsError> {
        self.issue(user, &[], &[ExtendedKeyUsagePurpose::ClientAuth])
    }

    fn issue(&self, common_name: &str, hosts: &[String], usages: &[ExtendedKeyUsagePurpose]) -> Result<Pair, TlsError> {
        let key = KeyPair::generate().map_err(generated)?;
        let mut params = params_for(hosts, common_name, self.validity)?;
        let serial = random_serial()?;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.extended_key_usages = usages.to_vec();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let cert = params.signed_by(&key, &self.issuer).map_err(generated)?;
        Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem(), serial })
    }

    /// A revocation list (PEM) of the certificates with these serial numbers.
    pub fn revocation_list(&self, serials: &[&[u8]]) -> Result<String, TlsError> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        let at = |s: i64| time::OffsetDateTime::from_unix_timestamp(s).map_err(|e| TlsError::Generate(e.to_string()));
        let params = rcgen::CertificateRevocationListParams {
            this_update: at(now - 60)?,
            next_update: at(now + 86_400)?,
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| {
                    Ok(rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from_slice(serial),
                        revocation_time: at(now - 60)?,
                        reason_code: None,
                        invalidity_date: None,
                    })
                })
                .collect::<Result<_, TlsError>>()?,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).map_err(generated)?.pem().map_err(generated)
    }
}
