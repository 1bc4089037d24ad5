//! `[pools.tls]` → the pool's [`Acceptor`]: the certificate files are read and checked here,
//! so `shardgate check` and a reload refuse a missing file or a key that does not match, with
//! the line of the setting that names it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::Validator;
use crate::config::raw::{RawTls, RawUpstreamTls, S};
use crate::tls::{Acceptor, Certificate, CertificateError, UpstreamTls, certs};

impl Validator<'_> {
    pub(super) fn tls(&mut self, path: &str, raw: Option<RawTls>) -> Option<Arc<Acceptor>> {
        let raw = raw?;
        let path = format!("{path}.tls");
        let default = self.certificate(&path, &raw.cert, &raw.key);
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut sni = Vec::new();
        for (i, entry) in raw.sni.into_iter().enumerate() {
            let epath = format!("{path}.sni[{i}]");
            if entry.names.get_ref().is_empty() {
                self.problem(
                    format!("{epath}.names"),
                    Some(entry.names.span()),
                    "needs at least one server name, e.g. [\"api.example.com\"]".into(),
                );
            }
            let mut names = Vec::new();
            for n in entry.names.get_ref() {
                let name = n.get_ref().trim_end_matches('.').to_ascii_lowercase();
                if !is_server_name(&name) {
                    self.problem(
                        format!("{epath}.names"),
                        Some(n.span()),
                        format!("`{}` is not a host name, or `*.` and a domain", n.get_ref()),
                    );
                } else if let Some(first) = seen.insert(name.clone(), i) {
                    self.problem(
                        format!("{epath}.names"),
                        Some(n.span()),
                        format!("`{name}` is already listed in {path}.sni[{first}]"),
                    );
                } else {
                    names.push(name);
                }
            }
            let cert = self.certificate(&epath, &entry.cert, &entry.key);
            if let Some(cert) = &cert {
                // Served to clients that asked for a name it does not carry, it fails their
                // verification: worth saying, though a test setup may mean it.
                let uncovered: Vec<&str> = names
                    .iter()
                    .map(String::as_str)
                    .filter(|n| !cert.covers(n))
                    .collect();
                if !uncovered.is_empty() {
                    tracing::warn!(
                        "{epath}: the certificate in {} is not valid for {} (it names {}): \
                         clients that check it will refuse the connection",
                        entry.cert.get_ref(),
                        uncovered.join(", "),
                        match cert.names.is_empty() {
                            true => "no DNS name".to_owned(),
                            false => cert.names.join(", "),
                        }
                    );
                }
            }
            if let (Some(cert), false) = (cert, names.is_empty()) {
                sni.push((names, cert));
            }
        }
        Some(Arc::new(Acceptor::new(default?, sni)))
    }

    fn certificate(
        &mut self,
        path: &str,
        cert: &S<String>,
        key: &S<String>,
    ) -> Option<Certificate> {
        let mut empty = false;
        for (field, value) in [("cert", cert), ("key", key)] {
            if value.get_ref().trim().is_empty() {
                self.problem(
                    format!("{path}.{field}"),
                    Some(value.span()),
                    "needs the path of a PEM file".into(),
                );
                empty = true;
            }
        }
        if empty {
            return None;
        }
        if self.files == super::Files::Skip {
            return None;
        }
        let (cert_file, key_file) = (Path::new(cert.get_ref()), Path::new(key.get_ref()));
        // Both files read before either is parsed, so both read errors are reported at once,
        // as every other problem is.
        let mut read = |field: &str, value: &S<String>, file: &Path| match certs::read_pem(file) {
            Ok(pem) => Some(pem),
            Err(e) => {
                self.problem(format!("{path}.{field}"), Some(value.span()), e.to_string());
                None
            }
        };
        let (cert_pem, key_pem) = (read("cert", cert, cert_file), read("key", key, key_file));
        match certs::from_pem(cert_file, &cert_pem?, key_file, &key_pem?) {
            Ok(c) => {
                if c.seconds_left() <= 0 {
                    tracing::warn!(file = %cert.get_ref(), "TLS certificate has expired: {}", c.summary());
                }
                Some(c)
            }
            Err(e) => {
                let about_key = match &e {
                    CertificateError::NoKey { .. }
                    | CertificateError::Unusable { .. }
                    | CertificateError::Mismatch { .. } => true,
                    CertificateError::Read { file, .. } | CertificateError::TooLarge { file } => {
                        file == key_file
                    }
                    CertificateError::NoCertificate { .. }
                    | CertificateError::NotX509 { .. }
                    | CertificateError::NoSystemRoots => false,
                };
                let (field, at) = if about_key {
                    ("key", key)
                } else {
                    ("cert", cert)
                };
                self.problem(format!("{path}.{field}"), Some(at.span()), e.to_string());
                None
            }
        }
    }
}

impl Validator<'_> {
    pub(super) fn upstream_tls(
        &mut self,
        path: &str,
        raw: Option<RawUpstreamTls>,
    ) -> Option<Arc<UpstreamTls>> {
        let raw = raw?;
        let path = format!("{path}.upstream_tls");
        let mut ok = true;
        if let Some(name) = &raw.server_name
            && rustls::pki_types::ServerName::try_from(name.get_ref().as_str()).is_err()
        {
            self.problem(
                format!("{path}.server_name"),
                Some(name.span()),
                format!("`{}` is not a host name or an IP address", name.get_ref()),
            );
            ok = false;
        }
        let client = match (&raw.cert, &raw.key) {
            (Some(cert), Some(key)) => {
                let loaded = self.certificate(&path, cert, key);
                ok &= loaded.is_some() || self.files == super::Files::Skip;
                loaded
            }
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => {
                self.problem(
                    path.clone(),
                    Some(one.span()),
                    "a client certificate needs both `cert` and `key`".into(),
                );
                ok = false;
                None
            }
        };
        if let Some(ca) = &raw.ca
            && ca.get_ref().trim().is_empty()
        {
            self.problem(
                format!("{path}.ca"),
                Some(ca.span()),
                "needs the path of a PEM CA bundle (leave it out for the system's)".into(),
            );
            return None;
        }
        if !ok || self.files == super::Files::Skip {
            return None;
        }
        let ca = raw.ca.as_ref().map(|c| Path::new(c.get_ref().as_str()));
        let name = raw.server_name.map(|n| n.into_inner().to_ascii_lowercase());
        match UpstreamTls::load(ca, name, client) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(e) => {
                // A client key rustls will not sign with is the key's problem; the rest, the CAs'.
                let (field, at) = match &e {
                    CertificateError::Unusable { .. } => ("key", raw.key.as_ref()),
                    _ => ("ca", raw.ca.as_ref()),
                };
                self.problem(
                    format!("{path}.{field}"),
                    at.map(|v| v.span()),
                    e.to_string(),
                );
                None
            }
        }
    }
}

/// A DNS name (letters, digits, hyphens; labels of 1–63, 253 in all), or `*.` and one.
fn is_server_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use crate::config::Problem;
    use crate::tls::certs::testing::self_signed;

    fn problems(text: &str) -> Vec<Problem> {
        super::super::parse(text, super::super::Files::Read).unwrap_err()
    }

    /// Each problem as (line, setting, message).
    fn shown(problems: &[Problem]) -> Vec<(usize, &str, &str)> {
        problems
            .iter()
            .map(|p| {
                let line = p.location.unwrap().line;
                (line, p.path.as_str(), p.message.as_str())
            })
            .collect()
    }

    #[test]
    fn certificate_problems_name_the_file_and_the_line_of_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (cert, key) = self_signed(&["a.example"]);
        let (_, other_key) = self_signed(&["b.example"]);
        let (cert, key, other_key) = (
            file("a.crt", &cert),
            file("a.key", &key),
            file("b.key", &other_key),
        );
        let missing = dir.path().join("missing.crt").display().to_string();
        let text = format!(
            "[[pools]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\n[pools.tls]\ncert = \"{cert}\"\nkey = \"{other_key}\"\n\
             [[pools.tls.sni]]\nnames = [\"api.example.com\", \"bad name\", \"API.example.com\"]\ncert = \"{missing}\"\nkey = \"{key}\"\n\
             [[pools.backends]]\naddress = \"127.0.0.1:1\"\n"
        );
        let p = problems(&text);
        let shown = shown(&p);
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert_eq!(
            (shown[0].0, shown[0].1),
            (6, "pools[0].tls.key"),
            "the key that does not match: {shown:#?}"
        );
        assert_eq!(
            shown[0].2,
            format!("the key in {other_key} does not match the certificate in {cert}")
        );
        assert_eq!(
            (shown[1].0, shown[1].1, shown[1].2),
            (
                8,
                "pools[0].tls.sni[0].names",
                "`bad name` is not a host name, or `*.` and a domain"
            )
        );
        assert_eq!(
            (shown[2].0, shown[2].1, shown[2].2),
            (
                8,
                "pools[0].tls.sni[0].names",
                "`api.example.com` is already listed in pools[0].tls.sni[0]"
            )
        );
        assert_eq!((shown[3].0, shown[3].1), (9, "pools[0].tls.sni[0].cert"));
        assert!(
            shown[3].2.starts_with(&format!("cannot read {missing}: ")),
            "{}",
            shown[3].2
        );
    }

    #[test]
    fn upstream_tls_problems_point_at_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.crt");
        std::fs::write(&cert, self_signed(&["proxy.internal"]).0).unwrap();
        let text = format!(
            "[[pools]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\n[pools.upstream_tls]\nca = \"\"\n\
             server_name = \"not a name\"\ncert = \"{}\"\n[[pools.backends]]\naddress = \"127.0.0.1:1\"\n",
            cert.display()
        );
        let p = problems(&text);
        let shown = shown(&p);
        assert_eq!(
            shown,
            [
                (
                    5,
                    "pools[0].upstream_tls.ca",
                    "needs the path of a PEM CA bundle (leave it out for the system's)"
                ),
                (
                    6,
                    "pools[0].upstream_tls.server_name",
                    "`not a name` is not a host name or an IP address"
                ),
                (
                    7,
                    "pools[0].upstream_tls",
                    "a client certificate needs both `cert` and `key`"
                ),
            ]
        );
    }
}
