//! TLS termination with real handshakes: a CA and leaf certificates made in the test (rcgen),
//! a rustls client over HTTP/1.1 and h2, SNI, certificates renewed on disk while requests
//! flow, a broken key refused, plain HTTP on the TLS port.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test CA that issues leaf certificates, and a client config that trusts it.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL takes a leaf whose issuer reads as its subject (rcgen's
        // default name on both) for self-signed.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "shardgate test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    /// A leaf for `names`, written as `<stem>.crt` and `<stem>.key` in `dir`.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A test CA, and a pair it issued for `names` in a temp dir (returned last: it must live as
/// long as the files are used).
fn site(names: &[&str]) -> (Pki, PathBuf, PathBuf, tempfile::TempDir) {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(dir.path(), "site", names);
    (pki, cert, key, dir)
}

fn leaf_der(cert_file: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(cert_file).unwrap()
}

/// What one HTTPS request saw.
struct Seen {
    status: StatusCode,
    backend: String,
    alpn: Option<Vec<u8>>,
    leaf: CertificateDer<'static>,
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// GET `path` over a new TLS connection to `addr`, with SNI `name`, HTTP/2 if ALPN says so.
async fn https_get(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<Seen, String> {
    let tls = handshake(addr, name, config)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().unwrap()[0].clone();
    let io = TokioIo::new(tls);
    let req = Request::get(format!("https://{name}{path}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        parts.uri = path.parse().unwrap();
        parts.headers.insert("host", name.parse().unwrap());
        send.send_request(Request::from_parts(parts, body)).await
    }
    .map_err(|e| e.to_string())?;
    let status = resp.status();
    let backend = resp
        .headers()
        .get("x-backend")
        .map_or("", |v| v.to_str().unwrap())
        .to_owned();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Seen {
        status,
        backend,
        alpn,
        leaf,
    })
}

fn tls_addr(proxy: &TestProxy) -> SocketAddr {
    proxy
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[tokio::test]
async fn https_over_http1_and_h2_routes_by_key_and_says_https_upstream() {
    let (pki, cert, key, _dir) = site(&["shop.example"]);
    let bs = backends(3).await;
    let cfg = ConfigToml::new().pool(pool("shop", &refs(&bs)).tls(tls(&cert, &key)));
    let proxy = TestProxy::start(&cfg.toml()).await;
    let addr = tls_addr(&proxy);
    for alpn in [&b"http/1.1"[..], b"h2"] {
        for path in ["/users/42", "/users/7", "/carts/9"] {
            let seen = https_get(addr, "shop.example", pki.client(&[alpn]), path)
                .await
                .unwrap();
            assert_eq!(seen.status, StatusCode::OK);
            assert_eq!(seen.alpn.as_deref(), Some(alpn), "ALPN offered and chosen");
            assert_eq!(
                seen.backend,
                proxy.ring_owner(path),
                "{path} over {alpn:?}: the key's backend"
            );
            assert_eq!(seen.leaf, leaf_der(&cert));
            let owner = bs.iter().find(|b| b.id == seen.backend).unwrap();
            assert_eq!(owner.last_headers()["x-forwarded-proto"], "https");
        }
    }
    // Without ALPN the client speaks HTTP/1.1.
    let seen = https_get(addr, "shop.example", pki.client(&[]), "/users/42")
        .await
        .unwrap();
    assert_eq!((seen.status, seen.alpn), (StatusCode::OK, None));
}

#[tokio::test]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (fleet, fleet_key) = pki.issue(d, "fleet", &["fleet.example", "other.example"]);
    let (api, api_key) = pki.issue(d, "api", &["api.example.com", "*.api.example.com"]);
    let (www, www_key) = pki.issue(d, "www", &["www.example.com"]);
    let bs = backends(1).await;
    let t = tls(&fleet, &fleet_key)
        .sni(&["api.example.com", "*.api.example.com"], &api, &api_key)
        .sni(&["WWW.example.com"], &www, &www_key);
    let proxy =
        TestProxy::start(&ConfigToml::new().pool(pool("p", &refs(&bs)).tls(t)).toml()).await;
    let addr = tls_addr(&proxy);
    for (name, want) in [
        ("api.example.com", &api),
        ("eu.api.example.com", &api),
        ("www.example.com", &www),
        ("fleet.example", &fleet),
        ("other.example", &fleet),
    ] {
        let seen = https_get(addr, name, pki.client(&[b"http/1.1"]), "/")
            .await
            .unwrap();
        assert_eq!(seen.leaf, leaf_der(want), "SNI {name}");
        assert_eq!(seen.status, StatusCode::OK);
    }
    let metrics = scrape(&proxy).await;
    let expiry: Vec<_> = series(
        &metrics,
        "shardgate_tls_certificate_expiry_timestamp_seconds",
        &[("pool", "p")],
    )
    .collect();
    assert_eq!(expiry.len(), 3, "{expiry:?}");
    for name in ["default", "api.example.com", "www.example.com"] {
        let label = format!("name=\"{name}\"");
        let (_, at) = expiry
            .iter()
            .find(|(l, _)| l.contains(&label))
            .unwrap_or_else(|| panic!("{name}: {expiry:?}"));
        // rcgen's default validity ends in 4096.
        assert!(*at > 4_000_000_000.0, "{name} expires at {at}");
    }
    // The status page's data: each pair with its days to expiry.
    let fleet: serde_json::Value =
        serde_json::from_str(&get(&proxy.admin_url("/api/backends")).await.body).unwrap();
    let certs = fleet["pools"][0]["tls"].as_array().unwrap();
    let shown: Vec<(&str, &str)> = certs
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shown,
        [
            ("default", "fleet.example"),
            ("api.example.com", "api.example.com"),
            ("www.example.com", "www.example.com")
        ]
    );
    assert!(
        certs
            .iter()
            .all(|c| c["days_left"].as_i64().unwrap() > 365 * 100),
        "{certs:?}"
    );
}

/// Rewrites `cert`/`key` with a new pair the way certbot does (write a new file, rename it
/// over the old one) and waits until new handshakes see `want`.
async fn rotate_and_wait(
    proxy: &TestProxy,
    name: &str,
    pki: &Pki,
    from: (&Path, &Path),
    want: &Path,
) {
    for (src, dst) in [(from.0, "site.crt"), (from.1, "site.key")] {
        let tmp = proxy.dir.path().join(format!(".{dst}.tmp"));
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, proxy.dir.path().join(dst)).unwrap();
    }
    let addr = tls_addr(proxy);
    let want = leaf_der(want);
    eventually("new handshakes get the new certificate", WAIT, || async {
        https_get(addr, name, pki.client(&[b"http/1.1"]), "/")
            .await
            .is_ok_and(|s| s.leaf == want)
    })
    .await;
}

#[tokio::test]
async fn renewed_files_switch_new_handshakes_with_no_failed_request_and_a_broken_key_is_refused() {
    let pki = Pki::new();
    let bs = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = (d.join("site.crt"), d.join("site.key"));
    let (first, first_key) = pki.issue(d, "first", &["site.example"]);
    std::fs::copy(&first, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let cfg = ConfigToml::new().pool(pool("site", &refs(&bs)).tls(tls(&cert, &key)));
    let config_path = d.join("shardgate.toml");
    std::fs::write(&config_path, cfg.toml()).unwrap();
    let proxy = TestProxy::start_at(dir, config_path).await;
    let addr = tls_addr(&proxy);

    // An established connection, kept across every change below.
    let kept = handshake(addr, "site.example", pki.client(&[b"http/1.1"]))
        .await
        .unwrap();
    let (mut kept_send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(kept))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Requests on new connections, back to back, all through the renewals.
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let load = {
        let (stop, ok, failed, client) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            pki.client(&[b"h2", b"http/1.1"]),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match https_get(addr, "site.example", client.clone(), "/k").await {
                    Ok(s) if s.status == StatusCode::OK => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        eprintln!("failed: {:?}", other.map(|s| s.status));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        })
    };

    let (second, second_key) = pki.issue(proxy.dir.path(), "second", &["site.example"]);
    rotate_and_wait(
        &proxy,
        "site.example",
        &pki,
        (&second, &second_key),
        &second,
    )
    .await;
    let (third, third_key) = pki.issue(proxy.dir.path(), "third", &["site.example"]);
    rotate_and_wait(&proxy, "site.example", &pki, (&third, &third_key), &third).await;

    // A key that is not the certificate's: refused, the third pair keeps serving.
    let refused_before = series(
        &scrape(&proxy).await,
        "shardgate_config_reloads_total",
        &[("result", "failure")],
    )
    .map(|(_, v)| v)
    .sum::<f64>();
    let (_, stray_key) = pki.issue(proxy.dir.path(), "stray", &["site.example"]);
    std::fs::copy(&stray_key, proxy.dir.path().join("site.key")).unwrap();
    eventually("the mismatched key is refused", WAIT, || async {
        series(
            &scrape(&proxy).await,
            "shardgate_config_reloads_total",
            &[("result", "failure")],
        )
        .map(|(_, v)| v)
        .sum::<f64>()
            > refused_before
    })
    .await;
    let seen = https_get(addr, "site.example", pki.client(&[b"http/1.1"]), "/")
        .await
        .unwrap();
    assert_eq!(
        seen.leaf,
        leaf_der(&third),
        "the last good pair still serves"
    );

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed through the renewals"
    );
    assert!(
        ok.load(Ordering::SeqCst) > 10,
        "requests kept flowing: {}",
        ok.load(Ordering::SeqCst)
    );

    let req = Request::get("/still-here")
        .header("host", "site.example")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = kept_send
        .send_request(req)
        .await
        .expect("the connection made before the renewals still serves");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn plain_http_and_failed_handshakes_are_answered_and_counted() {
    let (_pki, cert, key, _dir) = site(&["site.example"]);
    let bs = backends(1).await;
    let cfg = ConfigToml::new().pool(pool("site", &refs(&bs)).tls(tls(&cert, &key)));
    let proxy = TestProxy::start(&cfg.toml()).await;
    let addr = tls_addr(&proxy);

    // What curl http:// to the HTTPS port shows the user.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: site.example\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("This port speaks HTTPS: use https:// to reach it.\n"),
        "{answer}"
    );

    // A client that does not trust our certificate refuses it with an alert.
    let stranger = Pki::new();
    let err = https_get(addr, "site.example", stranger.client(&[b"http/1.1"]), "/")
        .await
        .err()
        .unwrap();
    assert!(err.contains("invalid peer certificate"), "{err}");

    let count = |metrics: &str, reason: &str| {
        series(
            metrics,
            "shardgate_tls_handshake_errors_total",
            &[("pool", "site"), ("reason", reason)],
        )
        .map(|(_, v)| v)
        .sum::<f64>()
    };
    eventually("both failures counted", WAIT, || async {
        let m = scrape(&proxy).await;
        count(&m, "plain_http") == 1.0 && count(&m, "alert") == 1.0
    })
    .await;
    let m = scrape(&proxy).await;
    assert_eq!(
        count(&m, "timeout"),
        0.0,
        "every reason is listed from the first scrape"
    );
}

#[tokio::test]
async fn websockets_over_tls_reach_their_keys_backend() {
    use futures_util::{SinkExt, StreamExt};
    let (pki, cert, key, _dir) = site(&["chat.example"]);
    let ws = [WsBackend::start("w0").await, WsBackend::start("w1").await];
    let mut p = pool("chat", &[]).tls(tls(&cert, &key));
    for b in &ws {
        p = p.backend(&b.id, b.addr);
    }
    let proxy = TestProxy::start(&ConfigToml::new().pool(p).toml()).await;
    for room in ["/rooms/a", "/rooms/b", "/rooms/c"] {
        let tls = handshake(tls_addr(&proxy), "chat.example", pki.client(&[b"http/1.1"]))
            .await
            .unwrap();
        let (mut c, resp) =
            tokio_tungstenite::client_async(format!("wss://chat.example{room}"), tls)
                .await
                .expect("a WebSocket handshake over TLS");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        c.send("hello".into()).await.unwrap();
        let echo = c.next().await.unwrap().unwrap().into_text().unwrap();
        assert_eq!(
            echo.as_str(),
            format!("{} {room}: hello", proxy.ring_owner(room))
        );
    }
}

#[tokio::test]
async fn large_answers_arrive_whole_over_tls_also_when_the_connection_closes_after_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (pki, cert, key, _dir) = site(&["site.example"]);
    let bs = backends(1).await;
    let cfg = ConfigToml::new().pool(pool("site", &refs(&bs)).tls(tls(&cert, &key)));
    let proxy = TestProxy::start(&cfg.toml()).await;
    const SIZE: usize = 3_000_000;
    // Keep-alive, then `Connection: close` on the same connection: both answers whole, and the
    // connection closed cleanly after the second (close_notify, then EOF).
    let mut tls = handshake(tls_addr(&proxy), "site.example", pki.client(&[b"http/1.1"]))
        .await
        .unwrap();
    let req = format!(
        "GET /download/{SIZE} HTTP/1.1\r\nHost: site.example\r\n\r\n\
         GET /download/{SIZE} HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut got))
        .await
        .expect("the connection closes after the second answer")
        .expect("a clean TLS close, not a truncation");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2);
    let first_head = text.find("\r\n\r\n").unwrap() + 4;
    let second_head = text[first_head + SIZE..].find("\r\n\r\n").unwrap() + 4;
    assert_eq!(
        got.len(),
        first_head + SIZE + second_head + SIZE,
        "both bodies whole"
    );
}

#[tokio::test]
async fn a_handshake_that_does_not_finish_in_header_read_timeout_is_cut_off_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_pki, cert, key, _dir) = site(&["site.example"]);
    let bs = backends(1).await;
    let p = pool("site", &refs(&bs))
        .tls(tls(&cert, &key))
        .header_read_timeout(std::time::Duration::from_millis(300));
    let proxy = TestProxy::start(&ConfigToml::new().pool(p).toml()).await;
    // Silent, and a handshake record that never completes.
    for sent in [&b""[..], b"\x16\x03\x01\x02\x00\x01"] {
        let mut c = TcpStream::connect(tls_addr(&proxy)).await.unwrap();
        c.write_all(sent).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
            .await
            .expect("closed by the proxy")
            .ok();
    }
    eventually("both counted as timeouts", WAIT, || async {
        value(
            &scrape(&proxy).await,
            "shardgate_tls_handshake_errors_total",
            &[("pool", "site"), ("reason", "timeout")],
        ) == 2.0
    })
    .await;
}

#[tokio::test]
async fn a_kubernetes_secret_symlink_swap_switches_the_certificate() {
    // A Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/; an update writes a
    // new timestamped directory and renames a new ..data link over the old one.
    let pki = Pki::new();
    let bs = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let version = |name: &str| {
        let d = secret.join(name);
        std::fs::create_dir(&d).unwrap();
        let (c, k) = pki.issue(&d, "issued", &["site.example"]);
        std::fs::rename(&c, d.join("tls.crt")).unwrap();
        std::fs::rename(&k, d.join("tls.key")).unwrap();
        d.join("tls.crt")
    };
    let first = version("..2026_11_26_1");
    std::os::unix::fs::symlink("..2026_11_26_1", secret.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), secret.join(f)).unwrap();
    }
    let cfg = ConfigToml::new()
        .pool(pool("site", &refs(&bs)).tls(tls(&secret.join("tls.crt"), &secret.join("tls.key"))));
    let config_path = dir.path().join("shardgate.toml");
    std::fs::write(&config_path, cfg.toml()).unwrap();
    let proxy = TestProxy::start_at(dir, config_path).await;
    let addr = tls_addr(&proxy);
    let seen = https_get(addr, "site.example", pki.client(&[b"http/1.1"]), "/")
        .await
        .unwrap();
    assert_eq!(seen.leaf, leaf_der(&first));

    let second = version("..2026_11_26_2");
    std::os::unix::fs::symlink("..2026_11_26_2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    let want = leaf_der(&second);
    eventually(
        "new handshakes get the swapped-in certificate",
        WAIT,
        || async {
            https_get(addr, "site.example", pki.client(&[b"http/1.1"]), "/")
                .await
                .is_ok_and(|s| s.leaf == want)
        },
    )
    .await;
}

/// A backend that speaks HTTP/1.1 over TLS only, with a certificate from `pki` for `names`;
/// with `client_ca`, it requires a client certificate issued by that CA. Answers with its id
/// in `x-backend`, and says in `x-client-cert` whether the client showed a certificate.
struct TlsBackend {
    id: String,
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    health_checks: Arc<AtomicUsize>,
    /// Connections that carried a request other than a health check.
    request_connections: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TlsBackend {
    async fn start(id: &str, pki: &Pki, names: &[&str], client_ca: Option<&Pki>) -> TlsBackend {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pki.issue(dir.path(), "backend", names);
        let chain: Vec<CertificateDer<'static>> = vec![leaf_der(&c)];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&k).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.ca.der().clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, health_checks, request_connections) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let (name, reqs, checks, conns, until) = (
            id.to_owned(),
            requests.clone(),
            health_checks.clone(),
            request_connections.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    () = until.cancelled() => return,
                };
                let (acceptor, name, reqs, checks, conns) = (
                    acceptor.clone(),
                    name.clone(),
                    reqs.clone(),
                    checks.clone(),
                    conns.clone(),
                );
                let first = Arc::new(AtomicBool::new(true));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let counter = if req.uri().path() == "/health" {
                                &checks
                            } else {
                                if first.swap(false, Ordering::SeqCst) {
                                    conns.fetch_add(1, Ordering::SeqCst);
                                }
                                &reqs
                            };
                            counter.fetch_add(1, Ordering::SeqCst);
                            let resp = http::Response::builder()
                                .header("x-backend", name.as_str())
                                .header("x-client-cert", if client_cert { "yes" } else { "no" })
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
                                .unwrap();
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsBackend {
            id: id.to_owned(),
            addr,
            requests,
            health_checks,
            request_connections,
            stop,
        }
    }
}

/// A pool in front of `backends` with `[pools.upstream_tls]` set from `extra` (TOML lines).
async fn proxy_to_tls(backends: &[&TlsBackend], extra: &str) -> TestProxy {
    proxy_to_tls_checked_by("http", backends, extra).await
}

/// [`proxy_to_tls`] with health checks of `kind`.
async fn proxy_to_tls_checked_by(kind: &str, backends: &[&TlsBackend], extra: &str) -> TestProxy {
    let mut text = String::from(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[pools]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nretries = 0\n",
    );
    text.push_str(&format!("[pools.health]\nkind = \"{kind}\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\ninitial = \"up\"\n"));
    text.push_str(&format!("[pools.upstream_tls]\n{extra}\n"));
    for b in backends {
        text.push_str(&format!(
            "[[pools.backends]]\nid = \"{}\"\naddress = \"{}\"\n",
            b.id, b.addr
        ));
    }
    TestProxy::start(&text).await
}

fn ca_file(pki: &Pki, dir: &Path) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, pki.ca.pem()).unwrap();
    path
}

#[tokio::test]
async fn tls_backends_get_requests_and_health_checks_over_tls_by_key() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&pki, dir.path());
    // Checked against the address's host (an IP here), or against `server_name`.
    let by_ip = [
        TlsBackend::start("t0", &pki, &["127.0.0.1"], None).await,
        TlsBackend::start("t1", &pki, &["127.0.0.1"], None).await,
    ];
    let proxy = proxy_to_tls(
        &[&by_ip[0], &by_ip[1]],
        &format!("ca = \"{}\"", ca.display()),
    )
    .await;
    for path in ["/a", "/b", "/c", "/d"] {
        let a = get(&proxy.url(path)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.backend(), proxy.ring_owner(path));
        assert_eq!(a.headers["x-client-cert"], "no");
    }
    eventually("health checks over TLS", WAIT, || async {
        by_ip
            .iter()
            .all(|b| b.health_checks.load(Ordering::SeqCst) >= 2)
    })
    .await;
    // Requests go on pooled TLS connections: many requests, few handshakes.
    for i in 0..20 {
        assert_eq!(
            get(&proxy.url(&format!("/k/{i}"))).await.status,
            StatusCode::OK
        );
    }
    let total = |count: fn(&TlsBackend) -> usize| by_ip.iter().map(count).sum::<usize>();
    assert_eq!(total(|b| b.requests.load(Ordering::SeqCst)), 24);
    assert_eq!(
        total(|b| b.request_connections.load(Ordering::SeqCst)),
        2,
        "one TLS connection per backend, reused"
    );

    // HTTP/2 clients' requests take the same TLS connections (h2c here, for brevity).
    let h2: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    for path in ["/h2/a", "/h2/b"] {
        let resp = h2
            .request(
                Request::get(proxy.url(path))
                    .body(Default::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-backend"], proxy.ring_owner(path).as_str());
    }

    let named = TlsBackend::start("n0", &pki, &["cache.internal"], None).await;
    let extra = format!(
        "ca = \"{}\"\nserver_name = \"cache.internal\"",
        ca.display()
    );
    let proxy = proxy_to_tls(&[&named], &extra).await;
    assert_eq!(get(&proxy.url("/x")).await.backend(), "n0");
}

#[tokio::test]
async fn a_backend_whose_certificate_is_not_trusted_gets_no_request() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let b = TlsBackend::start("t0", &stranger, &["127.0.0.1"], None).await;
    let proxy = proxy_to_tls(
        &[&b],
        &format!("ca = \"{}\"", ca_file(&pki, dir.path()).display()),
    )
    .await;
    get(&proxy.url("/x"))
        .await
        .assert_error(StatusCode::BAD_GATEWAY, "connect");
    assert_eq!(b.requests.load(Ordering::SeqCst), 0);
    eventually("marked down by its health checks", WAIT, || async {
        proxy.state("t0") == shardgate::state::backend::State::Down
    })
    .await;
}

#[tokio::test]
async fn a_backend_that_wants_a_client_certificate_gets_the_configured_one() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(&pki, dir.path());
    let b = TlsBackend::start("m0", &pki, &["127.0.0.1"], Some(&pki)).await;
    let without = proxy_to_tls(&[&b], &format!("ca = \"{}\"", ca.display())).await;
    // In TLS 1.3 the client's side of the handshake is done before the backend checks the
    // client certificate: its refusal (an alert) is what the request's answer reads.
    get(&without.url("/x"))
        .await
        .assert_error(StatusCode::BAD_GATEWAY, "upstream");
    assert_eq!(b.requests.load(Ordering::SeqCst), 0);
    // Health checks see the refusal too, a TCP check as well as an HTTP one, so the
    // backend leaves the ring instead of answering 502 for its keys forever.
    let tcp_checked =
        proxy_to_tls_checked_by("tcp", &[&b], &format!("ca = \"{}\"", ca.display())).await;
    for proxy in [&without, &tcp_checked] {
        eventually("marked down by its health checks", WAIT, || async {
            proxy.state("m0") == shardgate::state::backend::State::Down
        })
        .await;
    }
    let (cert, key) = pki.issue(dir.path(), "client", &["shardgate.internal"]);
    let extra = format!(
        "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
        ca.display(),
        cert.display(),
        key.display()
    );
    let with = proxy_to_tls(&[&b], &extra).await;
    let a = get(&with.url("/x")).await;
    assert_eq!(
        (a.status, a.headers["x-client-cert"].to_str().unwrap()),
        (StatusCode::OK, "yes"),
        "{}",
        a.body
    );
    // With the certificate, TCP checks pass and the backend stays up through many of them.
    let tcp_checked = proxy_to_tls_checked_by("tcp", &[&b], &extra).await;
    eventually("four passed TCP checks over TLS", WAIT, || async {
        let m = scrape(&tcp_checked).await;
        let failed = sum(
            &m,
            "shardgate_health_checks_total",
            &[("backend", "m0"), ("result", "fail")],
        );
        assert_eq!(failed, 0.0, "{m}");
        sum(
            &m,
            "shardgate_health_checks_total",
            &[("backend", "m0"), ("result", "pass")],
        ) >= 4.0
    })
    .await;
    assert_eq!(
        tcp_checked.state("m0"),
        shardgate::state::backend::State::Up
    );
}

#[tokio::test]
async fn curl_gets_http2_and_http1_over_tls_with_the_right_certificate() {
    let Some(curl) = tool(&["curl"], "Debian package `curl`") else {
        return;
    };
    let (pki, cert, key, dir) = site(&["site.example"]);
    let ca = ca_file(&pki, dir.path());
    let bs = backends(2).await;
    let cfg = ConfigToml::new().pool(pool("site", &refs(&bs)).tls(tls(&cert, &key)));
    let proxy = TestProxy::start(&cfg.toml()).await;
    let port = tls_addr(&proxy).port();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::process::Command::new(curl)
            .args(["-sS", flag, "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("site.example:{port}:127.0.0.1")])
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
            .arg(format!("https://site.example:{port}/users/42"))
            .output()
            .await
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said,
            format!("200 {version}"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
