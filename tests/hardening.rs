//! Hostile clients, hostile backends and local exhaustion, over real sockets. Each test says
//! what the user sees; the hostile peers speak raw bytes (tests/common/raw.rs).

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Allowance for scheduling on a loaded 2-core machine on top of a timeout under test.
const SLACK: Duration = Duration::from_millis(1500);

/// The earliest a timeout may fire as a test measures it: the proxy's clock starts a moment
/// before the test's (it sees the last byte first).
fn not_before(timeout: Duration) -> Duration {
    timeout * 3 / 4
}

async fn proxy_for(p: PoolToml) -> TestProxy {
    TestProxy::start(&p.toml()).await
}

// ---- client side ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_header_read_timeout_and_free_their_slots() {
    let b = TestBackend::start("b0").await;
    let read_timeout = Duration::from_millis(400);
    let proxy = proxy_for(
        pool("cache", &[&b])
            .max_connections(2)
            .header_read_timeout(read_timeout),
    )
    .await;
    let addr = proxy.proxy.pool_addr("cache").unwrap();
    // Two sockets take both slots: one says nothing, one sends half an HTTP/2 preface.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half_h2 = TcpStream::connect(addr).await.unwrap();
    half_h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, read_timeout + SLACK).await;
    assert!(closed, "a silent connection is closed");
    let (_, closed) = read_until_closed(&mut half_h2, read_timeout + SLACK).await;
    assert!(closed, "half a preface is closed");
    let took = started.elapsed();
    assert!(
        took >= not_before(read_timeout),
        "closed after {took:?}: too early"
    );
    // The slots are free again: a real client is served.
    let a = tokio::time::timeout(WAIT, get(&proxy.url("/after")))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_must_send_its_next_head_within_header_read_timeout() {
    let b = TestBackend::start("b0").await;
    let read_timeout = Duration::from_millis(400);
    let proxy = proxy_for(pool("cache", &[&b]).header_read_timeout(read_timeout)).await;
    let mut s = TcpStream::connect(proxy.proxy.pool_addr("cache").unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    let (_, closed) = read_until_closed(&mut s, read_timeout + SLACK).await;
    assert!(closed, "the idle keep-alive connection is closed");
    assert!(
        answered.elapsed() >= not_before(read_timeout),
        "{:?}",
        answered.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_is_disconnected_after_idle_timeout() {
    let b = TestBackend::start("b0").await;
    let idle = Duration::from_millis(400);
    let proxy = proxy_for(pool("cache", &[&b]).idle_timeout(idle)).await;
    let addr = proxy.proxy.pool_addr("cache").unwrap();
    let started = Instant::now();
    // Promises 100 bytes, sends 3, then nothing.
    let (_, closed) = raw_exchange(
        addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc",
        idle + SLACK,
    )
    .await;
    assert!(closed, "the stalled upload is cut off");
    assert!(
        started.elapsed() >= not_before(idle),
        "{:?}",
        started.elapsed()
    );
}

/// A chunked upload the proxy cuts off (here: the client stalls past `idle_timeout`) must not
/// reach the backend as a complete body: hyper ends the body quietly when its connection goes,
/// and forwarding that end would hand the backend a truncated upload as a whole one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_proxy_cuts_off_never_looks_complete_to_the_backend() {
    let b = TestBackend::start("b0").await;
    let idle = Duration::from_millis(400);
    let proxy = proxy_for(pool("cache", &[&b]).idle_timeout(idle)).await;
    let addr = proxy.proxy.pool_addr("cache").unwrap();
    let (_, closed) = raw_exchange(
        addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        idle + SLACK,
    )
    .await;
    assert!(closed, "the stalled upload is cut off");
    eventually("the backend's upload ended", WAIT, || async {
        b.seen
            .uploads_ended
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
    assert_eq!(
        b.seen
            .uploads_complete
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the backend took a truncated upload for a whole one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_streams_is_closed_after_idle_timeout() {
    let b = TestBackend::start("b0").await;
    let idle = Duration::from_millis(500);
    let proxy = proxy_for(pool("cache", &[&b]).idle_timeout(idle)).await;
    let stream = TcpStream::connect(proxy.proxy.pool_addr("cache").unwrap())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://a/h2").body(empty()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    let finished = tokio::time::timeout(idle + SLACK, conn).await;
    assert!(
        finished.is_ok(),
        "the proxy ends an HTTP/2 connection with no stream for idle_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_reading_is_cut_off_even_while_it_answers_pings() {
    let b = TestBackend::start("b0").await;
    let idle = Duration::from_millis(500);
    let proxy = proxy_for(pool("cache", &[&b]).idle_timeout(idle)).await;
    let stream = TcpStream::connect(proxy.proxy.pool_addr("cache").unwrap())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            // A small window: the proxy's sends stop soon after we stop reading.
            .initial_stream_window_size(65_535)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    // The connection task keeps running (and answering pings); only the body goes unread.
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://a/download/50000000")
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let started = Instant::now();
    let ended = tokio::time::timeout(idle * 4 + SLACK, conn).await;
    assert!(ended.is_ok(), "the stalled reader's connection is closed");
    assert!(started.elapsed() >= not_before(idle));
    drop(resp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_head_is_request_timeout_s_business_not_idle_timeout_s() {
    let b = TestBackend::start("b0").await;
    let proxy = proxy_for(
        pool("cache", &[&b])
            .idle_timeout(Duration::from_millis(300))
            .request_timeout(Duration::from_secs(5)),
    )
    .await;
    // The backend thinks for 1.2 s, four times idle_timeout, well within request_timeout.
    let a = get(&proxy.url("/slow/1200")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body, "b0");
}

// ---- hostile backends -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stalls_mid_body_is_cut_off_after_idle_timeout_and_counted() {
    let stall = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc",
        After::Stall,
    )
    .await;
    let idle = Duration::from_millis(400);
    let proxy = proxy_for(
        pool("p", &[])
            .backend("stall", stall.addr)
            .idle_timeout(idle),
    )
    .await;
    let started = Instant::now();
    let (got, closed) = raw_exchange(
        proxy.proxy.pool_addr("p").unwrap(),
        b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        idle + SLACK,
    )
    .await;
    // The client saw the head and the 3 bytes, then the connection closed: a short body it can
    // tell from a complete one, instead of a hang until it gives up.
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("abc"), "{got}");
    assert!(closed, "the client connection is closed");
    assert!(started.elapsed() >= not_before(idle));
    eventually("the upstream connection is closed too", WAIT, || async {
        stall
            .closed_by_proxy
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
    let s = scrape(&proxy).await;
    let stalled = [
        ("pool", "p"),
        ("backend", "stall"),
        ("kind", "idle_timeout"),
    ];
    assert_eq!(value(&s, "shardgate_upstream_errors_total", &stalled), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_response_framing_is_refused_with_502() {
    for (reply, what) in [
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
            "both Transfer-Encoding and Content-Length",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello"[..],
            "two different Content-Lengths",
        ),
        (
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"[..],
            "a 101 nobody asked for",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
            "a transfer coding the client would get unannounced",
        ),
    ] {
        let bad = RawBackend::start(reply, After::Stall).await;
        let proxy = proxy_for(pool("p", &[]).backend("bad", bad.addr).retries(0)).await;
        let a = get(&proxy.url("/x")).await;
        a.assert_error(StatusCode::BAD_GATEWAY, "upstream");
        assert!(!a.body.contains("hello"), "{what}: {}", a.body);
        eventually(&format!("{what}: upstream connection closed"), WAIT, || async {
            bad.closed_by_proxy.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_its_connection_cap_gets_503_backend_busy_not_a_health_failure() {
    let b = TestBackend::start("b0").await;
    let proxy = proxy_for(
        pool("cache", &[&b])
            .upstream_max_connections(1)
            .connect_timeout(Duration::from_millis(300))
            .health(health(Check::Tcp).passive_failures(1)),
    )
    .await;
    let slow = tokio::spawn({
        let url = proxy.url("/slow/1500");
        async move { get(&url).await }
    });
    eventually(
        "the slow request holds the one connection",
        WAIT,
        || async { b.requests() == 1 },
    )
    .await;
    let started = Instant::now();
    let a = get(&proxy.url("/second")).await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "backend_busy");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited connect_timeout"
    );
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        proxy.state("b0"),
        shardgate::state::backend::State::Up,
        "a busy backend is not a down one"
    );
    // Once the connection is free again, requests go through.
    assert_eq!(get(&proxy.url("/third")).await.status, StatusCode::OK);
    let s = scrape(&proxy).await;
    let busy = [
        ("pool", "cache"),
        ("backend", "b0"),
        ("kind", "backend_busy"),
    ];
    assert_eq!(value(&s, "shardgate_upstream_errors_total", &busy), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_error_series_starts_at_zero() {
    let bs = backends(2).await;
    let proxy = proxy_for(pool("cache", &refs(&bs))).await;
    let s = scrape(&proxy).await;
    for b in ["b0", "b1"] {
        for kind in [
            "connect",
            "connect_timeout",
            "timeout",
            "upstream",
            "idle_timeout",
            "backend_busy",
        ] {
            let labels = [("pool", "cache"), ("backend", b), ("kind", kind)];
            assert_eq!(
                series(&s, "shardgate_upstream_errors_total", &labels).count(),
                1,
                "{b} {kind} is exported before any error"
            );
        }
    }
}

// ---- HTTP semantics ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_leave_one_host_or_refuse_the_request() {
    let b = TestBackend::start("b0").await;
    let proxy = proxy_for(pool("cache", &[&b])).await;
    let addr = proxy.proxy.pool_addr("cache").unwrap();
    let ask = |req: &'static [u8]| async move { raw_exchange(addr, req, WAIT).await.0 };

    // Each is followed by a second request on the same connection: the answer is 400 and the
    // connection closes, so the second is never served.
    for (req, what) in [
        (
            &b"GET / HTTP/1.1\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            "no Host",
        ),
        (
            &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"
                [..],
            "two Hosts",
        ),
        (
            &b"GET / HTTP/1.1\r\nHost: a:port\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            "an invalid Host",
        ),
        (
            &b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            "a Host with a path",
        ),
        (
            &b"GET / HTTP/1.1\r\nHost:\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            "an empty Host",
        ),
    ] {
        let (got, closed) = raw_exchange(addr, req, WAIT).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{what}: {got}");
        assert!(
            got.contains("x-shardgate-error: bad_request"),
            "{what}: {got}"
        );
        assert!(closed, "{what}: the connection stays open: {got}");
        assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{what}: {got}");
    }
    assert_eq!(b.requests(), 0, "no ambiguous request reached the backend");

    // An absolute-form target names the host; Connection cannot remove Host.
    let got = ask(
        b"GET http://target.example/p HTTP/1.1\r\nHost: other.example\r\nConnection: host, close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let seen = b.last_headers();
    assert_eq!(seen["host"], "target.example");
    assert_eq!(seen["x-forwarded-host"], "target.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_gets_501() {
    let b = TestBackend::start("b0").await;
    let proxy = proxy_for(pool("cache", &[&b])).await;
    let (got, _) = raw_exchange(
        proxy.proxy.pool_addr("cache").unwrap(),
        b"POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 501"), "{got}");
    assert!(got.contains("x-shardgate-error: unsupported"), "{got}");
    assert_eq!(b.requests(), 0);
}

/// A malformed chunked body, or a client that leaves mid-upload, breaks the upstream exchange:
/// the client's doing. It is answered 400 (or recorded as 499) and never counted against the
/// backend, so a hostile client cannot raise a backend's error rate at will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_request_body_is_the_client_s_fault_not_the_backend_s() {
    let b = TestBackend::start("b0").await;
    let proxy = proxy_for(pool("cache", &[&b])).await;
    let addr = proxy.proxy.pool_addr("cache").unwrap();
    let (got, _) = raw_exchange(
        addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nhello\r\n0\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("x-shardgate-error: client_body"), "{got}");
    // Half an upload, then the client is gone.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    eventually("the upload reached the backend", WAIT, || async {
        b.requests() == 1
    })
    .await;
    drop(s);
    eventually("both are counted as the client's", WAIT, || async {
        let m = scrape(&proxy).await;
        value(
            &m,
            "shardgate_requests_total",
            &[("pool", "cache"), ("backend", "none"), ("code", "400")],
        ) == 1.0
            && value(
                &m,
                "shardgate_requests_total",
                &[("pool", "cache"), ("backend", "none"), ("code", "499")],
            ) == 1.0
    })
    .await;
    let m = scrape(&proxy).await;
    assert_eq!(
        sum(&m, "shardgate_upstream_errors_total", &[("backend", "b0")]),
        0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_goes_to_the_backend_whatever_the_method() {
    let b = TestBackend::start("b0").await;
    let proxy = proxy_for(pool("cache", &[&b])).await;
    let req = http::Request::get(proxy.url("/upload"))
        .header("content-length", "5")
        .body(full("hello"))
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.body, "received 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let b = TestBackend::start("b0").await;
    let claims = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=203.0.113.9"),
        ("x-real-ip", "203.0.113.9"),
    ];
    let untrusting = proxy_for(pool("cache", &[&b])).await;
    get_with(&untrusting.url("/x"), &claims).await;
    let seen = b.last_headers();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_ne!(seen["x-forwarded-host"], "evil.example");
    assert!(!seen.contains_key("forwarded") && !seen.contains_key("x-real-ip"));

    let trusting = proxy_for(pool("cache", &[&b]).trusted_proxies(&["127.0.0.0/8"])).await;
    get_with(&trusting.url("/x"), &claims).await;
    let seen = b.last_headers();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-real-ip"], "203.0.113.9");
}

// ---- connections, files and limits ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_listener_s_connections_are_closed_when_the_grace_period_ends() {
    let b = TestBackend::start("b0").await;
    let grace = Duration::from_millis(500);
    let config = |listen: &str| {
        ConfigToml::new()
            .shutdown_grace(grace)
            .pool(pool("cache", &[&b]).listen(listen))
    };
    let proxy = TestProxy::start(&config("127.0.0.1:0").toml()).await;
    let slow = tokio::spawn({
        let url = proxy.url("/slow/8000");
        async move {
            client()
                .request(http::Request::get(url).body(empty()).unwrap())
                .await
        }
    });
    eventually("the slow request reached the backend", WAIT, || async {
        b.requests() == 1
    })
    .await;
    // A reload moves the pool: the old listener retires with the slow request still open.
    let port = free_port();
    std::fs::write(
        &proxy.config_path,
        config(&format!("127.0.0.1:{port}")).toml(),
    )
    .unwrap();
    let retired = Instant::now();
    shardgate::control::reload::Reloader::new(proxy.config_path.clone(), proxy.proxy.clone())
        .reload(shardgate::control::reload::Trigger::Signal)
        .await
        .unwrap()
        .expect("applied");
    let outcome = tokio::time::timeout(grace + SLACK, slow).await;
    let outcome = outcome.expect("cut off when the grace period ended, not after 8 s");
    assert!(
        outcome.unwrap().is_err(),
        "the client sees its connection closed"
    );
    assert!(retired.elapsed() >= not_before(grace));
    // Recorded under the backend it was waiting for, as a client that left would be.
    eventually("the cut request is counted", WAIT, || async {
        value(
            &scrape(&proxy).await,
            "shardgate_requests_total",
            &[("pool", "cache"), ("backend", "b0"), ("code", "499")],
        ) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_sending_a_request_body_is_not_handed_to_the_next_request() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    // Answers as soon as it has a head, then reads whatever else comes.
    let early = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Stall,
    )
    .await;
    let proxy = proxy_for(
        pool("p", &[])
            .backend("early", early.addr)
            .connect_timeout(Duration::from_secs(3)),
    )
    .await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
    let uploading = tokio::spawn(async move {
        for _ in 0..30 {
            if tx.send_data(Bytes::from_static(b"slowly ")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let req = http::Request::post(proxy.url("/upload"))
        .header("content-length", "210")
        .body(body.boxed())
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.body, "ok", "the answer came before the upload ended");
    // The first connection is still carrying the upload: the next request gets its own
    // connection at once instead of waiting up to connect_timeout for that one.
    let started = Instant::now();
    let b = get(&proxy.url("/next")).await;
    assert_eq!(b.body, "ok");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "waited {:?} for a busy connection",
        started.elapsed()
    );
    assert!(!uploading.is_finished(), "the upload was still going");
    uploading.abort();
}

/// `shardgate run` under a shell that set the open-file limits first.
fn run_with_limits(ulimit: &str, config: &std::path::Path) -> Running {
    Running::spawn(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit {ulimit} && exec {} run -c {}",
                env!("CARGO_BIN_EXE_shardgate"),
                config.display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_proxy_answers_503_local_resource_and_blames_no_backend() {
    let b = TestBackend::start("b0").await;
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tight.toml");
    let checks = health(Check::Tcp)
        .interval(Duration::from_millis(200))
        .timeout(Duration::from_millis(100))
        .fall(1)
        .passive_failures(1);
    let config = ConfigToml::new()
        .admin_listen(format!("127.0.0.1:{admin}"))
        .pool(
            pool("cache", &[&b])
                .listen(format!("127.0.0.1:{port}"))
                // Every request opens its own upstream connection, so it needs a descriptor.
                .upstream_max_idle(0)
                .health(checks),
        );
    std::fs::write(&path, config.toml()).unwrap();
    let mut child = run_with_limits("-n 64", &path);
    // Read its log as it comes, so a full pipe never blocks the proxy.
    let log = {
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut err, &mut text).unwrap();
            text
        })
    };
    let url = format!("http://127.0.0.1:{port}");
    wait_answering(&format!("{url}/up"), WAIT).await;

    // One client connection of ours, then enough others to use up every descriptor.
    let mut mine = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let ask = async |s: &mut TcpStream| {
        s.write_all(b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut mine).await.starts_with("HTTP/1.1 200"));
    let mut hogs = Vec::new();
    for _ in 0..80 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET").await.unwrap();
        hogs.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = ask(&mut mine).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("x-shardgate-error: local_resource"), "{got}");
    // Health checks keep failing the same way meanwhile: none may count against b0.
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(hogs);
    let mut served = false;
    for _ in 0..50 {
        if ask(&mut mine).await.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "with descriptors back, requests are served again");
    let s = get(&format!("http://127.0.0.1:{admin}/metrics")).await.body;
    let b0 = [("pool", "cache"), ("backend", "b0")];
    assert_eq!(
        value(&s, "shardgate_backend_up", &b0),
        1.0,
        "b0 never went down"
    );
    let failed_checks = [("pool", "cache"), ("backend", "b0"), ("result", "fail")];
    assert_eq!(
        value(&s, "shardgate_health_checks_total", &failed_checks),
        0.0
    );
    let connect = [("pool", "cache"), ("backend", "b0"), ("kind", "connect")];
    assert_eq!(value(&s, "shardgate_upstream_errors_total", &connect), 0.0);

    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, WAIT))
        .await
        .unwrap();
    assert!(status.success());
    let log = log.join().unwrap();
    assert!(
        log.contains("exceed the open file limit"),
        "the startup warning says the caps cannot fit: {log}"
    );
    assert!(log.contains("local_resource"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_soft_limit_is_raised_to_the_hard_limit_at_startup() {
    let b = TestBackend::start("b0").await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let config = pool("cache", &[&b]).listen(format!("127.0.0.1:{port}"));
    std::fs::write(&path, config.toml()).unwrap();
    let mut child = run_with_limits("-S -n 100", &path);
    wait_answering(&format!("http://127.0.0.1:{port}/up"), WAIT).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields[3], fields[4],
        "soft limit raised to the hard one: {line}"
    );
    assert_ne!(fields[3], "100", "{line}");
    signal(&child, "TERM");
    tokio::task::spawn_blocking(move || wait_exit(&mut child, WAIT))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_lines_before_a_request_are_skipped_and_never_spin_the_connection() {
    let b = TestBackend::start("b0").await;
    let proxy =
        proxy_for(pool("cache", &[&b]).header_read_timeout(Duration::from_millis(500))).await;
    let addr = proxy.proxy.pool_addr("cache").unwrap();
    // Only blank lines: nothing to answer, and the connection is closed on the head's clock
    // (a proxy that looped on them would never close it, and would starve its thread).
    let started = Instant::now();
    let (got, closed) = raw_exchange(addr, b"\r\n\r\n\n\r\n", WAIT).await;
    assert!(closed && got.is_empty(), "{got:?}");
    assert!(started.elapsed() >= not_before(Duration::from_millis(500)));
    // Blank lines before a request are ignored (RFC 9112 §2.2).
    let (got, _) = raw_exchange(
        addr,
        b"\r\n\r\nGET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_to_head_has_no_body_and_keeps_the_connection_in_step() {
    let b = TestBackend::start("b0").await;
    let proxy = proxy_for(
        pool("cache", &[&b])
            .key(&["header:x-k"])
            .missing_key(MissingKey::Reject),
    )
    .await;
    let addr = proxy.proxy.pool_addr("cache").unwrap();
    let (got, closed) = raw_exchange(
        addr,
        b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(closed, "{got}");
    assert_eq!(
        got.matches("HTTP/1.1 400 Bad Request\r\n").count(),
        2,
        "{got}"
    );
    assert_eq!(
        got.matches("(missing_key)").count(),
        1,
        "only the GET's answer has a body: {got}"
    );
    let head_answer = &got[..got.find("\r\n\r\n").unwrap()];
    assert!(head_answer.contains("content-length: "), "{head_answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_s_own_100_continue_mid_upload_does_not_stop_the_upload() {
    // A backend that says 100 Continue as soon as it has the head (as nginx, Go and Node do),
    // then reads the whole body and answers with its length.
    let backend = serve_each(|mut s| async move {
        let Some(got) = read_head(&mut s).await else {
            return;
        };
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut buf = [0u8; 4096];
        let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        if s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
            return;
        }
        let mut body = got.len() - head_end;
        while body < length {
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => body += n,
                _ => return,
            }
        }
        let answer = format!("got {body}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
    })
    .await;
    let proxy = proxy_for(
        pool("p", &[])
            .backend("b", backend)
            .health(health(Check::None)),
    )
    .await;
    let addr = proxy.proxy.pool_addr("p").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 30000\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // The proxy's own go-ahead, then the body in pieces.
    let mut go = [0u8; 25];
    tokio::time::timeout(WAIT, s.read_exact(&mut go))
        .await
        .expect("a 100 Continue in time")
        .unwrap();
    assert_eq!(&go, b"HTTP/1.1 100 Continue\r\n\r\n");
    for _ in 0..3 {
        s.write_all(&[b'x'; 10_000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (got, _) = read_until_closed(&mut s, WAIT).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("got 30000"), "{got}");
    assert_eq!(
        got.matches("100 Continue").count(),
        0,
        "the backend's 100 stays with us"
    );
}
