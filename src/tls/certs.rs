//! A certificate chain and its private key, loaded from PEM files, checked to belong together,
//! and described (expiry, name, fingerprint) for metrics, the status page and reload logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Larger than any certificate chain or key: a path pointing at something else (a device, a
/// log) is refused before it is read whole.
pub(crate) const MAX_PEM_BYTES: u64 = 1 << 20;

/// A loaded certificate chain with its key.
#[derive(Debug, Clone)]
pub(crate) struct Certificate {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) key: Arc<CertifiedKey>,
    /// The private key as read, for a client certificate (rustls takes it in that form).
    pub(crate) private_key: Arc<PrivateKeyDer<'static>>,
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub(crate) not_after: i64,
    /// The leaf's first DNS name (or its subject's common name): what the status page calls it.
    pub(crate) subject: String,
    /// The leaf's DNS names (subjectAltName), lower-cased: the server names clients accept it
    /// for (they ignore the common name).
    pub(crate) names: Vec<String>,
    /// Hash of the chain's and the key's bytes: tells a renewed pair from the one loaded.
    pub(crate) fingerprint: u64,
    /// The leaf's SHA-256 fingerprint, its first 8 bytes as `openssl x509 -fingerprint
    /// -sha256` prints them (`1A:2B:…`): how logs and `check` name the certificate.
    pub(crate) sha256: String,
}

/// A PEM parse error in words (the parser's own show the expected marker as a byte list).
pub(crate) fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM block has no `-----END {}-----` line: the file is cut short",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => {
            format!(
                "a malformed PEM `-----BEGIN` line: {}",
                String::from_utf8_lossy(line)
            )
        }
        Error::Base64Decode(why) => format!("a PEM block is not valid base64 ({why})"),
        Error::NoItemsFound => "no PEM block of the kind expected".to_owned(),
        other => other.to_string(),
    }
}

/// Why a certificate pair cannot be used; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertificateError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is larger than {} KiB; not a PEM file", file.display(), MAX_PEM_BYTES >> 10)]
    TooLarge { file: PathBuf },
    #[error("{} holds no PEM certificate ({why})", file.display())]
    NoCertificate { file: PathBuf, why: String },
    #[error("{}: the certificate is not valid X.509 ({why})", file.display())]
    NotX509 { file: PathBuf, why: String },
    #[error("{} holds no PEM private key (PKCS#8, RSA or SEC1) ({why})", file.display())]
    NoKey { file: PathBuf, why: String },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: the key cannot be used ({why})", file.display())]
    Unusable { file: PathBuf, why: String },
    #[error("no CA certificates found on this system; name a bundle with `ca`")]
    NoSystemRoots,
}

pub(crate) fn read_pem(file: &Path) -> Result<Vec<u8>, CertificateError> {
    crate::util::read_capped(file, MAX_PEM_BYTES)
        .map_err(|source| CertificateError::Read {
            file: file.to_owned(),
            source,
        })?
        .ok_or_else(|| CertificateError::TooLarge {
            file: file.to_owned(),
        })
}

/// Read and parse the pair, as config validation does (tests; validation reads the two files
/// itself, to report both read errors at once).
#[cfg(test)]
pub(crate) fn load(cert_file: &Path, key_file: &Path) -> Result<Certificate, CertificateError> {
    from_pem(
        cert_file,
        &read_pem(cert_file)?,
        key_file,
        &read_pem(key_file)?,
    )
}

/// The chain in `cert_pem` (leaf first, read from `cert_file`) and the key in `key_pem` (from
/// `key_file`), checked that the key is the leaf's.
pub(crate) fn from_pem(
    cert_file: &Path,
    cert_pem: &[u8],
    key_file: &Path,
    key_pem: &[u8],
) -> Result<Certificate, CertificateError> {
    let no_cert = |why: String| CertificateError::NoCertificate {
        file: cert_file.to_owned(),
        why,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_cert(pem_problem(&e)))?;
    let Some(leaf) = chain.first() else {
        return Err(no_cert("no CERTIFICATE block".into()));
    };
    let (not_after, subject, names) = describe(leaf).map_err(|why| CertificateError::NotX509 {
        file: cert_file.to_owned(),
        why,
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertificateError::NoKey {
        file: key_file.to_owned(),
        why: pem_problem(&e),
    })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
    let sha256 = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let private_key = Arc::new(key.clone_key());
    let certified =
        CertifiedKey::from_der(chain, key, &super::provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => CertificateError::Mismatch {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
            },
            other => CertificateError::Unusable {
                file: key_file.to_owned(),
                why: other.to_string(),
            },
        })?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(cert_pem);
    hasher.update(key_pem);
    Ok(Certificate {
        cert_file: cert_file.to_owned(),
        key_file: key_file.to_owned(),
        key: Arc::new(certified),
        private_key,
        not_after,
        subject,
        names,
        fingerprint: hasher.digest(),
        sha256,
    })
}

/// The leaf's expiry, the name it is shown by, and its DNS names.
fn describe(leaf: &CertificateDer<'_>) -> Result<(i64, String, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let not_after = cert.validity().not_after.timestamp();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => {
                        Some(name.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let subject = names
        .first()
        .cloned()
        .or_else(|| {
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_owned))
        })
        .unwrap_or_else(|| "(no name)".to_owned());
    Ok((not_after, subject, names))
}

impl Certificate {
    /// Whether a client asking for `server_name` (lower-case; `*.example.com` for every name
    /// one label under it) accepts this certificate: a DNS name the same, or a wildcard
    /// standing for exactly one leftmost label (RFC 6125 §6.4.3).
    pub(crate) fn covers(&self, server_name: &str) -> bool {
        self.names.iter().any(|name| {
            name == server_name
                || name.strip_prefix("*.").is_some_and(|domain| {
                    server_name.split_once('.').is_some_and(|(label, rest)| {
                        !label.is_empty() && label != "*" && rest == domain
                    })
                })
        })
    }

    /// Seconds from now until the leaf expires (negative once it has).
    pub(crate) fn seconds_left(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.not_after - now
    }

    /// How a reload log line names this pair: its name, expiry and fingerprint.
    pub(crate) fn summary(&self) -> String {
        let expires =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.not_after.max(0) as u64);
        let expired = if self.seconds_left() <= 0 {
            ", EXPIRED"
        } else {
            ""
        };
        format!(
            "{} (expires {}{expired}, sha256 {})",
            self.subject,
            humantime::format_rfc3339_seconds(expires),
            self.sha256
        )
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Certificates made on the spot, for tests.

    /// A self-signed certificate for `names`, as PEM (certificate, key).
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let made = rcgen::generate_simple_self_signed(names).expect("a certificate");
        (made.cert.pem(), made.signing_key.serialize_pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_certificate_covers_its_names_and_one_label_under_its_wildcards() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = testing::self_signed(&["Shop.Example", "*.api.example"]);
        let c = load(
            &write(dir.path(), "c.pem", &cert),
            &write(dir.path(), "k.pem", &key),
        )
        .unwrap();
        assert_eq!(c.names, ["shop.example", "*.api.example"]);
        for (name, covered) in [
            ("shop.example", true),
            ("www.shop.example", false),
            ("eu.api.example", true),
            ("a.eu.api.example", false),
            ("api.example", false),
            ("*.api.example", true),
            ("other.example", false),
        ] {
            assert_eq!(c.covers(name), covered, "{name}");
        }
    }

    #[test]
    fn a_matching_pair_loads_and_says_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = testing::self_signed(&["shop.example", "www.shop.example"]);
        let c = load(
            &write(dir.path(), "c.pem", &cert),
            &write(dir.path(), "k.pem", &key),
        )
        .unwrap();
        assert_eq!(c.subject, "shop.example");
        assert!(
            c.seconds_left() > 0,
            "rcgen's default validity runs to 4096"
        );
        assert!(
            c.summary().starts_with("shop.example (expires "),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn each_broken_pair_names_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cert, key) = testing::self_signed(&["a.example"]);
        let (_, other_key) = testing::self_signed(&["b.example"]);
        let (c, k) = (write(d, "c.pem", &cert), write(d, "k.pem", &key));
        let err = |cert: &Path, key: &Path| load(cert, key).unwrap_err().to_string();

        let missing = d.join("missing.pem");
        assert!(err(&missing, &k).starts_with(&format!("cannot read {}: ", missing.display())));
        let wrong = write(d, "other.key", &other_key);
        assert_eq!(
            err(&c, &wrong),
            format!(
                "the key in {} does not match the certificate in {}",
                wrong.display(),
                c.display()
            )
        );
        // The files swapped: no certificate where one is expected, no key in the other.
        let e = err(&k, &c);
        assert!(
            e.starts_with(&format!("{} holds no PEM certificate", k.display())),
            "{e}"
        );
        let e = err(&c, &c);
        assert!(
            e.starts_with(&format!("{} holds no PEM private key", c.display())),
            "{e}"
        );
        let cut = write(d, "cut.pem", &cert[..cert.len() / 2]);
        let e = err(&cut, &k);
        assert!(
            e.ends_with(
                "(a PEM block has no `-----END CERTIFICATE-----` line: the file is cut short)"
            ),
            "{e}"
        );
        let junk = write(
            d,
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = err(&junk, &k);
        assert!(
            e.starts_with(&format!(
                "{}: the certificate is not valid X.509",
                junk.display()
            )),
            "{e}"
        );
    }
}
