//! Test fixtures: real hyper backends and a real proxy on 127.0.0.1:0, a client, and
//! `eventually` for convergence without bare sleeps.
#![allow(dead_code)] // each test binary uses a different part of this module
#![allow(unreachable_pub)] // `pub` here is the fixture API the test binaries share

mod config;
pub mod dns;
mod raw;
#[allow(unused_imports)] // not every test binary builds configs
pub use config::{
    AllDown, Check, ConfigToml, HealthToml, MissingKey, PoolToml, TlsToml, health, pool, tls,
};
#[allow(unused_imports)] // only the hostile-peer tests use these
pub use raw::{After, RawBackend, raw_exchange, read_head, read_until_closed, serve_each};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use shardgate::control::proxy::Proxy;
use shardgate::routing::ring::hash_key;
use shardgate::state::backend::State;

/// How long a test waits for what should happen in well under a second: long enough for a
/// loaded 2-core machine, short enough that a real hang fails the run soon.
pub const WAIT: Duration = Duration::from_secs(10);

pub type TestBody = BoxBody<Bytes, std::io::Error>;

/// What a test backend has seen.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// Bytes of the current `/upload` body received so far.
    pub upload_progress: AtomicUsize,
    pub upload_started: Notify,
    /// `/upload` bodies that ended, and of them those that reached their end without an error.
    pub uploads_ended: AtomicUsize,
    pub uploads_complete: AtomicUsize,
    /// `/health` requests answered (not counted in `requests`).
    pub health_checks: AtomicUsize,
    /// Connections accepted.
    pub connections: AtomicUsize,
}

/// A real hyper HTTP/1.1 backend on loopback that answers with its id.
///
/// Paths with special behaviour:
/// - `/slow/MS` waits MS milliseconds before answering;
/// - `/download/N` streams N bytes;
/// - `/gated` sends `first;` then waits for [`TestBackend::open_gate`] before sending `second`;
/// - `/upload` reads the body, counting bytes, and answers `received N`;
/// - `/hop` answers with hop-by-hop headers that must not reach the client;
/// - `/health` answers with the status set by [`TestBackend::set_health`] (200 by default;
///   0 alternates 200 and 503, a flapping backend).
pub struct TestBackend {
    pub id: String,
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    gate: Arc<Notify>,
    health: Arc<AtomicU16>,
    stop: CancellationToken,
}

impl TestBackend {
    pub async fn start(id: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(id, listener)
    }

    /// Start again on a given address (to bring a killed backend back).
    pub async fn start_on(id: &str, addr: SocketAddr) -> TestBackend {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Self::serve(id, l),
                // The old socket may linger a moment; retry with a short backoff.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("cannot rebind {addr}: {e}"),
            }
        }
    }

    fn serve(id: &str, listener: TcpListener) -> TestBackend {
        let backend = TestBackend {
            id: id.to_owned(),
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            gate: Arc::default(),
            health: Arc::new(AtomicU16::new(200)),
            stop: CancellationToken::new(),
        };
        let ctx = Arc::new(Ctx {
            id: id.to_owned(),
            seen: backend.seen.clone(),
            gate: backend.gate.clone(),
            health: backend.health.clone(),
        });
        let stop = backend.stop.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    () = stop.cancelled() => return,
                };
                ctx.seen.connections.fetch_add(1, Ordering::SeqCst);
                let ctx = ctx.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(ctx.answer(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    // Killing the backend drops its connections mid-flight, as a crash would.
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        backend
    }

    /// Stop listening and cut every open connection.
    pub fn kill(&self) {
        self.stop.cancel();
    }

    pub fn open_gate(&self) {
        self.gate.notify_one();
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    pub fn health_checks(&self) -> usize {
        self.seen.health_checks.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.seen.last_headers.lock().unwrap().clone().unwrap()
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Ctx {
    id: String,
    seen: Arc<Seen>,
    gate: Arc<Notify>,
    health: Arc<AtomicU16>,
}

impl Ctx {
    async fn answer(&self, req: Request<Incoming>) -> Response<TestBody> {
        let path = req.uri().path().to_owned();
        if path == "/health" {
            let n = self.seen.health_checks.fetch_add(1, Ordering::SeqCst);
            let status = match self.health.load(Ordering::SeqCst) {
                // Flapping: every other check fails.
                0 if n.is_multiple_of(2) => StatusCode::OK,
                0 => StatusCode::SERVICE_UNAVAILABLE,
                code => StatusCode::from_u16(code).unwrap(),
            };
            return respond(status, &self.id, full("health"));
        }
        self.seen.requests.fetch_add(1, Ordering::SeqCst);
        *self.seen.last_headers.lock().unwrap() = Some(req.headers().clone());
        if let Some(ms) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        if let Some(n) = path.strip_prefix("/download/") {
            let n: usize = n.parse().unwrap();
            let mut resp = respond(StatusCode::OK, &self.id, zeros(n));
            resp.headers_mut().insert("content-length", n.into());
            return resp;
        }
        match path.as_str() {
            "/gated" => {
                let (mut tx, body) =
                    http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
                let gate = self.gate.clone();
                tokio::spawn(async move {
                    let _ = tx.send_data(Bytes::from_static(b"first;")).await;
                    gate.notified().await;
                    let _ = tx.send_data(Bytes::from_static(b"second")).await;
                });
                respond(StatusCode::OK, &self.id, body.boxed())
            }
            "/upload" => {
                self.seen.upload_progress.store(0, Ordering::SeqCst);
                let mut body = req.into_body();
                let mut total = 0usize;
                let mut complete = true;
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else {
                        complete = false;
                        break;
                    };
                    if let Some(data) = frame.data_ref() {
                        total += data.len();
                        self.seen.upload_progress.store(total, Ordering::SeqCst);
                        self.seen.upload_started.notify_one();
                    }
                }
                if complete {
                    self.seen.uploads_complete.fetch_add(1, Ordering::SeqCst);
                }
                self.seen.uploads_ended.fetch_add(1, Ordering::SeqCst);
                respond(StatusCode::OK, &self.id, full(&format!("received {total}")))
            }
            "/hop" => {
                let mut resp = respond(StatusCode::OK, &self.id, full(&self.id));
                let h = resp.headers_mut();
                h.insert("connection", "x-backend-hop".parse().unwrap());
                h.insert("x-backend-hop", "secret".parse().unwrap());
                h.insert("keep-alive", "timeout=5".parse().unwrap());
                h.insert("x-end-to-end", "yes".parse().unwrap());
                resp
            }
            _ => respond(StatusCode::OK, &self.id, full(&self.id)),
        }
    }
}

fn respond(status: StatusCode, id: &str, body: TestBody) -> Response<TestBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert("x-backend", id.parse().unwrap());
    resp
}

pub fn full(s: &str) -> TestBody {
    Full::new(Bytes::from(s.to_owned()))
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of `n` zero bytes, produced 64 KiB at a time (never held whole).
pub fn zeros(n: usize) -> TestBody {
    const CHUNK: usize = 64 * 1024;
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let mut left = n;
    let stream = futures_lite_stream(move || {
        if left == 0 {
            return None;
        }
        let take = left.min(CHUNK);
        left -= take;
        Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..take]))))
    });
    http_body_util::StreamBody::new(stream).boxed()
}

/// A `Stream` from a closure, so the tests need no stream crate.
fn futures_lite_stream<T>(
    next: impl FnMut() -> Option<T> + Send + Unpin + 'static,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    struct FnStream<F>(F);
    impl<T, F: FnMut() -> Option<T> + Unpin> futures_core::Stream for FnStream<F> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready((self.0)())
        }
    }
    FnStream(next)
}

/// The proxy, started in-process from TOML text written to a temp file.
pub struct TestProxy {
    pub proxy: Arc<Proxy>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub stop: CancellationToken,
}

impl TestProxy {
    pub async fn start(toml: &str) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("shardgate.toml");
        std::fs::write(&config_path, toml).unwrap();
        Self::start_at(dir, config_path).await
    }

    /// Start from a config file already in place (e.g. behind symlinks), watching it as
    /// `shardgate run` does.
    pub async fn start_at(dir: tempfile::TempDir, config_path: PathBuf) -> TestProxy {
        let config = shardgate::config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let stop = CancellationToken::new();
        let proxy = Proxy::start(config, prometheus::Registry::new(), stop.clone())
            .await
            .unwrap();
        shardgate::control::reload::spawn(
            config_path.clone(),
            proxy.clone(),
            shardgate::control::signals::hangups(),
            stop.clone(),
        );
        TestProxy {
            proxy,
            dir,
            config_path,
            stop,
        }
    }

    /// URL of `path` on the first (or only) pool.
    pub fn url(&self, path: &str) -> String {
        let snap = self.proxy.shared().snapshot.load();
        let name = snap.pools[0].config.name.clone();
        self.pool_url(&name, path)
    }

    pub fn pool_url(&self, pool: &str, path: &str) -> String {
        format!("http://{}{path}", self.proxy.pool_addr(pool).unwrap())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.admin_addr())
    }
}

/// What the first pool's snapshot says; the proxy routes by the same snapshot.
impl TestProxy {
    /// Ids of the first pool's backends, in config order.
    pub fn backend_ids(&self) -> Vec<String> {
        let snap = self.proxy.shared().snapshot.load();
        snap.pools[0].backends().map(|b| b.id.clone()).collect()
    }

    /// The backend the first pool's ring gives `key`, whatever its health.
    pub fn ring_owner(&self, key: &str) -> String {
        let snap = self.proxy.shared().snapshot.load();
        let mut chain = snap.pools[0].successors(hash_key(key.as_bytes()));
        chain.next().expect("a pool has backends").id.clone()
    }

    /// Where a request with `key` goes now in `pool`: health and drains included.
    pub fn target(&self, pool: &str, key: &str) -> String {
        let snap = self.proxy.shared().snapshot.load();
        let pool = snap.pool(pool).expect("pool exists");
        pool.pick(hash_key(key.as_bytes()))
            .expect("a usable backend")
            .id
            .clone()
    }

    /// The first key `{prefix}{n}` (n = 0, 1, ...) the first pool's ring gives to `id`.
    pub fn key_owned_by(&self, id: &str, prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| self.ring_owner(k) == id)
            .unwrap()
    }

    /// The state of backend `id` in the first pool.
    pub fn state(&self, id: &str) -> State {
        let snap = self.proxy.shared().snapshot.load();
        snap.pools[0].backend(id).expect("backend exists").state()
    }
}

/// Send every key (as the path) to the first pool, 8 clients at a time; the backend that
/// answered each, in `keys` order. Every answer must be 200.
pub async fn route_all(proxy: &TestProxy, keys: &[String]) -> Vec<String> {
    route_all_at(&proxy.url(""), keys).await
}

/// [`route_all`] against any HTTP server at `base` (`http://host:port`) whose backends say who
/// they are in `x-backend`: another proxy in front of the same [`TestBackend`]s.
pub async fn route_all_at(base: &str, keys: &[String]) -> Vec<String> {
    let keys: Arc<Vec<String>> = Arc::new(keys.to_vec());
    let url = Arc::new(base.to_owned());
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (keys, url) = (keys.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut out = Vec::new();
            for i in (w..keys.len()).step_by(8) {
                let req = Request::get(format!("{url}{}", keys[i]))
                    .body(empty())
                    .unwrap();
                let a = send(&client, req).await;
                assert_eq!(a.status, StatusCode::OK, "{}: {}", keys[i], a.body);
                out.push((i, a.backend().to_owned()));
            }
            out
        }));
    }
    let mut routed = vec![String::new(); keys.len()];
    for t in tasks {
        for (i, b) in t.await.unwrap() {
            routed[i] = b;
        }
    }
    routed
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A simple answer: status, headers, body as text.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// Check that this is the proxy's error answer with `status` and `kind`: the client sees
    /// the status, the kind (also in `x-shardgate-error`) and a request id, and nothing about
    /// the fleet behind. Returns the request id.
    pub fn assert_error(&self, status: StatusCode, kind: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.headers["x-shardgate-error"], kind);
        let prefix = format!(
            "{} {} ({kind}), request ",
            status.as_u16(),
            status.canonical_reason().unwrap()
        );
        let id = self
            .body
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("error body {:?} is not {prefix:?}ID", self.body));
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "request id {id:?}"
        );
        id.to_owned()
    }

    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

pub async fn send(client: &Client<HttpConnector, TestBody>, req: Request<TestBody>) -> Answer {
    let resp = client.request(req).await.expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub async fn get(url: &str) -> Answer {
    get_with(url, &[]).await
}

pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(empty()).unwrap()).await
}

/// Poll `check` until it returns true, or panic after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` backends with ids b0, b1, ...
pub async fn backends(n: usize) -> Vec<TestBackend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(TestBackend::start(&format!("b{i}")).await);
    }
    v
}

pub fn refs(bs: &[TestBackend]) -> Vec<&TestBackend> {
    bs.iter().collect()
}

/// A port that was free a moment ago, for processes that must be told their address up front.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Send `sig` ("TERM", "HUP", ...) to a child this test started.
pub fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {}", child.id());
}

/// Wait for a child to exit, killing it (by its own pid) if it doesn't within `within`.
pub fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until `url` answers at all (a process under test has started listening).
pub async fn wait_answering(url: &str, within: Duration) {
    eventually(&format!("{url} answers"), within, || async {
        client()
            .request(Request::get(url).body(empty()).unwrap())
            .await
            .is_ok()
    })
    .await;
}

/// The first of `names` that runs (`NAME --version` or `NAME -v` succeeds), for a test that needs an outside
/// tool. Without one the test skips itself, saying so, on a developer's machine; under
/// `CI=true` it fails instead, since `.ci/run` installs the tools and a check that silently
/// stopped running is worse than a red build.
pub fn tool(names: &[&'static str], package: &str) -> Option<&'static str> {
    // nginx answers only `-v`; the rest `--version`.
    let found = names.iter().copied().find(|name| {
        ["--version", "-v"].iter().any(|arg| {
            std::process::Command::new(name)
                .arg(arg)
                .output()
                .is_ok_and(|o| o.status.success())
        })
    });
    if found.is_none() {
        let missing = format!("none of {names:?} is installed ({package}; .ci/run installs it)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{missing}");
        eprintln!("SKIPPED: {missing}");
    }
    found
}

/// `shardgate demo` on two free ports, answering: (the child, its proxy port, its admin port).
/// Its stdout is piped for tests that read what it printed.
pub async fn start_demo() -> (Running, u16, u16) {
    let (listen, admin) = (free_port(), free_port());
    let child = Running::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["demo", "--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    );
    wait_answering(&format!("http://127.0.0.1:{listen}/"), WAIT).await;
    (child, listen, admin)
}

/// The admin listener's `/metrics` text.
pub async fn scrape(proxy: &TestProxy) -> String {
    let a = get(&proxy.admin_url("/metrics")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    a.body
}

/// Series of metric `name` carrying every label in `labels`: (label text, value).
pub fn series<'a>(
    scrape: &'a str,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(move |(series, v)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (n == name && all).then(|| (rest, v.parse().unwrap()))
        })
}

/// The value of the series `name{labels}` exactly (labels in any order), or 0 if absent.
pub fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(scrape, name, labels)
        .find(|(rest, _)| rest.matches('=').count() == labels.len())
        .map_or(0.0, |(_, v)| v)
}

/// Wait until the series `name{labels}` in the proxy's `/metrics` reaches `at_least`.
pub async fn metric_reaches(proxy: &TestProxy, name: &str, labels: &[(&str, &str)], at_least: f64) {
    eventually(
        &format!("{name}{labels:?} reaches {at_least}"),
        WAIT,
        || async { value(&scrape(proxy).await, name, labels) >= at_least },
    )
    .await;
}

/// The sum over every series of `name` that has the labels in `must`.
pub fn sum(scrape: &str, name: &str, must: &[(&str, &str)]) -> f64 {
    series(scrape, name, must).map(|(_, v)| v).sum()
}

/// Steady GET load: `clients` clients, each sending GETs for `{base}/{prefix}/N` (N spread over
/// 5000 keys) back to back until [`Load::finish`]. A GET counts as ok when it answers 200 and
/// its body arrives whole.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(base: &str, prefix: &str, clients: usize) -> Load {
        let load = Load {
            stop: Arc::default(),
            ok: Arc::default(),
            failed: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for c in 0..clients {
            let url = format!("{base}/{prefix}/");
            let (stop, ok, failed) = (load.stop.clone(), load.ok.clone(), load.failed.clone());
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut i = c * 7919;
                while !stop.load(Ordering::Relaxed) {
                    i = (i * 31 + 17) % 5000;
                    let req = Request::get(format!("{url}{i}")).body(empty()).unwrap();
                    let good = match client.request(req).await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            r.into_body().collect().await.is_ok()
                        }
                        _ => false,
                    };
                    if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Load { tasks, ..load }
    }

    /// Stop the clients and wait for them: (GETs ok, GETs failed).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A process a test started: killed (by its own pid) when dropped, so a test that fails midway
/// leaves nothing running. Derefs to the `Child`.
pub struct Running(Option<std::process::Child>);

impl Running {
    pub fn spawn(command: &mut std::process::Command) -> Running {
        Running(Some(command.spawn().expect("cannot start the process")))
    }

    /// Wait for it to exit on its own and collect what it printed.
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        self.0.take().expect("running").wait_with_output()
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("running")
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A WebSocket echo backend: every text message comes back as `<id> <path>: <message>`.
pub struct WsBackend {
    pub id: String,
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl WsBackend {
    pub async fn start(id: &str) -> WsBackend {
        use futures_util::{SinkExt, StreamExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (name, until) = (id.to_owned(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    () = until.cancelled() => return,
                };
                let (name, until) = (name.clone(), until.clone());
                tokio::spawn(async move {
                    let path = Arc::new(Mutex::new(String::new()));
                    let seen = path.clone();
                    // tungstenite's callback signature, not ours to shrink.
                    #[allow(clippy::result_large_err)]
                    let note_path =
                        move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                              resp| {
                            *seen.lock().unwrap() = req.uri().path().to_owned();
                            Ok(resp)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, note_path).await
                    else {
                        return;
                    };
                    let path = path.lock().unwrap().clone();
                    loop {
                        let msg = tokio::select! {
                            m = ws.next() => m,
                            () = until.cancelled() => return,
                        };
                        match msg {
                            Some(Ok(m)) if m.is_text() => {
                                let echo = format!("{name} {path}: {}", m.to_text().unwrap());
                                if ws.send(echo.into()).await.is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        }
                    }
                });
            }
        });
        WsBackend {
            id: id.to_owned(),
            addr,
            stop,
        }
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Run `command` with `input` on its stdin, to its end: what it printed and how it exited.
pub fn run_with_input(command: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Run the shardgate binary with `args` to its end.
pub fn run_shardgate(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap()
}
