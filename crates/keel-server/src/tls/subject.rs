//! The subject common name of an X.509 certificate, read from its DER bytes.
//!
//! etcd takes the CN of a verified client certificate as the user name when auth is on. The
//! certificate has passed chain verification before this runs, but its bytes still came from
//! outside the process: the reader is total (every length is checked, nothing indexes past the
//! end) and answers `None` for anything it does not understand.

/// The OID 2.5.4.3 (commonName), as its DER contents.
const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT` — the version, present in v2 and v3 certificates.
const CONTEXT_0: u8 = 0xa0;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const T61_STRING: u8 = 0x14;
const IA5_STRING: u8 = 0x16;

/// DER elements one after another in a byte slice.
struct Elements<'a> {
    rest: &'a [u8],
}

impl<'a> Elements<'a> {
    /// The next element's tag and contents; `None` at the end or on a malformed header.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            // Long form: the low bits say how many length bytes follow (at most 4 here: no
            // certificate field is 4 GiB).
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (digits, after) = rest.split_at(count);
            rest = after;
            digits.iter().fold(0usize, |len, &d| (len << 8) | usize::from(d))
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.rest = after;
        Some((tag, contents))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (found, contents) if found == tag => Some(contents),
            _ => None,
        }
    }
}

/// The subject's common name of the DER certificate `der`. When the subject names several, the
/// last one wins, as in Go's `pkix.Name` (which etcd reads).
pub fn common_name(der: &[u8]) -> Option<String> {
    let certificate = Elements { rest: der }.expect(SEQUENCE)?;
    let mut tbs = Elements { rest: Elements { rest: certificate }.expect(SEQUENCE)? };
    let (mut tag, _) = tbs.next()?;
    if tag == CONTEXT_0 {
        tag = tbs.next()?.0; // the serial number follows the version
    }
    if tag != INTEGER {
        return None;
    }
    let _signature_algorithm = tbs.expect(SEQUENCE)?;
    let _issuer = tbs.expect(SEQUENCE)?;
    let _validity = tbs.expect(SEQUENCE)?;
    let mut subject = Elements { rest: tbs.expect(SEQUENCE)? };
    let mut found = None;
    while let Some(set) = subject.expect(SET) {
        let mut attributes = Elements { rest: set };
        while let Some(attribute) = attributes.expect(SEQUENCE) {
            let mut parts = Elements { rest: attribute };
            if parts.expect(OID) != Some(COMMON_NAME_OID) {
                continue;
            }
            found = match parts.next()? {
                (UTF8_STRING | PRINTABLE_STRING | IA5_STRING | T61_STRING, value) => {
                    Some(std::str::from_utf8(value).ok()?.to_string())
                }
                _ => None,
            };
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn certificate_for(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "keel");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn the_common_name_of_a_generated_certificate_is_read_back() {
        for cn in ["root", "alice", "a user with spaces", "ünïcode"] {
            assert_eq!(common_name(&certificate_for(cn)).as_deref(), Some(cn));
        }
    }

    #[test]
    fn a_certificate_without_a_common_name_has_none() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "keel");
        let der = params.self_signed(&key).expect("sign").der().to_vec();
        assert_eq!(common_name(&der), None);
    }

    proptest! {
        #[test]
        fn any_truncation_or_corruption_is_answered_without_a_panic(
            cut in 0usize..2048, flip in 0usize..2048, bit in 0u8..8,
        ) {
            let der = certificate_for("alice");
            let _ = common_name(&der[..cut.min(der.len())]);
            let mut corrupt = der.clone();
            let at = flip % corrupt.len();
            corrupt[at] ^= 1 << bit;
            let _ = common_name(&corrupt);
        }

        #[test]
        fn arbitrary_bytes_are_answered_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = common_name(&bytes);
        }
    }
}
