//! The forwarding path over real sockets: affinity, spread, key sources, streaming, headers,
//! error statuses and client limits.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `n` requests with distinct paths, 32 at a time; count answers per backend.
async fn spread(proxy: &TestProxy, n: usize) -> HashMap<String, usize> {
    let client = client();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = proxy.url(&format!("/objects/{i}"));
        let client = client.clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let a = send(&client, Request::get(url).body(empty()).unwrap()).await;
            drop(permit);
            assert_eq!(a.status, StatusCode::OK);
            a.backend().to_owned()
        });
    }
    let mut counts = HashMap::new();
    while let Some(id) = tasks.join_next().await {
        *counts.entry(id.unwrap()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_always_reaches_the_same_backend() {
    let bs = backends(4).await;
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).toml()).await;
    let mut used = std::collections::HashSet::new();
    for i in 0..40 {
        let path = format!("/users/{i}");
        let expected = proxy.target("cache", &path);
        for _ in 0..3 {
            let a = get(&proxy.url(&path)).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.backend(), expected, "{path} moved");
            assert_eq!(a.body, expected);
        }
        used.insert(expected);
    }
    assert_eq!(used.len(), 4, "40 keys should touch all 4 backends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_spread_evenly() {
    let bs = backends(4).await;
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).toml()).await;
    let counts = spread(&proxy, 10_000).await;
    for b in &bs {
        let got = counts.get(&b.id).copied().unwrap_or(0);
        assert!(
            (1750..=3250).contains(&got),
            "{} got {got} of 10000 requests (expected 2500 ± 30%): {counts:?}",
            b.id
        );
        assert_eq!(b.requests(), got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_scale_the_share() {
    let bs = backends(3).await;
    // Give b2 weight 2: it should take half the keys.
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).weight("b2", 2).toml()).await;
    let counts = spread(&proxy, 4000).await;
    let expect = [1000.0, 1000.0, 2000.0];
    for (b, want) in bs.iter().zip(expect) {
        let got = counts.get(&b.id).copied().unwrap_or(0) as f64;
        assert!(
            (got - want).abs() <= want * 0.3,
            "{} got {got}, expected {want} ± 30%: {counts:?}",
            b.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_sources_fall_back_in_order() {
    let bs = backends(4).await;
    let sources = ["header:x-shard-key", "cookie:sid", "query:user", "path"];
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).key(&sources).toml()).await;
    for i in 0..12 {
        let (h, c, q, p) = (
            format!("hdr-{i}"),
            format!("cookie-{i}"),
            format!("query-{i}"),
            format!("/path/{i}"),
        );
        let url = proxy.url(&format!("{p}?user={q}"));
        let plain = proxy.url(&p);
        let cookie = format!("theme=dark; sid={c}");
        let all = get_with(&url, &[("x-shard-key", &h), ("cookie", &cookie)]).await;
        assert_eq!(all.backend(), proxy.target("cache", &h), "header wins");
        let no_header = get_with(&url, &[("cookie", &cookie)]).await;
        assert_eq!(
            no_header.backend(),
            proxy.target("cache", &c),
            "then cookie"
        );
        let query_only = get(&url).await;
        assert_eq!(
            query_only.backend(),
            proxy.target("cache", &q),
            "then query"
        );
        let path_only = get(&plain).await;
        assert_eq!(path_only.backend(), proxy.target("cache", &p), "then path");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_key_sources() {
    let bs = backends(4).await;
    let mut config = ConfigToml::new();
    for (name, key) in [
        ("uri", "uri"),
        ("prefix", "path_prefix:2"),
        ("host", "host"),
        ("ip", "client_ip"),
    ] {
        config = config.pool(pool(name, &refs(&bs)).key(&[key]));
    }
    let proxy = TestProxy::start(&config.toml()).await;
    for i in 0..12 {
        let a = get(&proxy.pool_url("uri", &format!("/u/{i}?v={i}"))).await;
        assert_eq!(a.backend(), proxy.target("uri", &format!("/u/{i}?v={i}")));

        let a = get(&proxy.pool_url("prefix", &format!("/t{i}/albums/x/y/z"))).await;
        assert_eq!(
            a.backend(),
            proxy.target("prefix", &format!("/t{i}/albums"))
        );

        let host = format!("Tenant{i}.Example.com:8080");
        let a = get_with(&proxy.pool_url("host", "/"), &[("host", &host)]).await;
        assert_eq!(
            a.backend(),
            proxy.target("host", &format!("tenant{i}.example.com"))
        );
    }
    let a = get(&proxy.pool_url("ip", "/anything")).await;
    assert_eq!(a.backend(), proxy.target("ip", "127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_load_balancer_client_ip_keys_by_the_address_it_forwards() {
    // Every request arrives from the balancer (127.0.0.1): keyed by the peer, a whole fleet's
    // clients would land on one backend.
    let bs = backends(4).await;
    let config = ConfigToml::new()
        .pool(
            pool("lb", &refs(&bs))
                .key(&["client_ip"])
                .trusted_proxies(&["127.0.0.0/8"]),
        )
        .pool(pool("direct", &refs(&bs)).key(&["client_ip"]));
    let proxy = TestProxy::start(&config.toml()).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let h1 = client();
    let mut reached = std::collections::HashSet::new();
    for (name, c) in [("HTTP/1.1", &h1), ("h2c", &h2)] {
        for i in 1..=12 {
            let client = format!("198.51.100.{i}");
            // What the client itself claims (left) is not believed; the balancer's entry is.
            let forwarded = format!("203.0.113.1, {client}");
            let ask = |pool: &str| {
                Request::get(proxy.pool_url(pool, "/x"))
                    .header("x-forwarded-for", forwarded.as_str())
                    .body(empty())
                    .unwrap()
            };
            let a = c.request(ask("lb")).await.unwrap();
            let backend = a.headers()["x-backend"].to_str().unwrap().to_owned();
            assert_eq!(backend, proxy.target("lb", &client), "{name}: {client}");
            reached.insert(backend);
            // An untrusting pool keys by the peer, whatever the request says.
            let a = c.request(ask("direct")).await.unwrap();
            assert_eq!(
                a.headers()["x-backend"],
                proxy.target("direct", "127.0.0.1").as_str(),
                "{name}"
            );
        }
    }
    assert!(reached.len() > 1, "clients spread: {reached:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_reject_answers_400_and_any_spreads() {
    let bs = backends(3).await;
    let strict = pool("strict", &refs(&bs))
        .key(&["header:x-tenant"])
        .missing_key(MissingKey::Reject);
    let reject = TestProxy::start(&strict.toml()).await;
    let a = get(&reject.url("/x")).await;
    a.assert_error(StatusCode::BAD_REQUEST, "missing_key");
    assert_eq!(a.headers["x-shardgate-error"], "missing_key");
    let a = get_with(&reject.url("/x"), &[("x-tenant", "acme")]).await;
    assert_eq!(a.status, StatusCode::OK);

    let lenient = pool("lenient", &refs(&bs)).key(&["header:x-tenant"]);
    let any = TestProxy::start(&lenient.toml()).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..60 {
        let a = get(&any.url("/x")).await;
        assert_eq!(a.status, StatusCode::OK);
        seen.insert(a.backend().to_owned());
    }
    assert_eq!(seen.len(), 3, "keyless requests should spread: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_streams_before_the_backend_finishes() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let resp = client()
        .request(Request::get(proxy.url("/gated")).body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    // The backend holds back the rest until the gate opens: the first part must arrive now.
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first chunk was held back by the proxy")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first;"));
    b.open_gate();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_before_the_client_finishes() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
    let req = Request::post(proxy.url("/upload"))
        .body(body.boxed())
        .unwrap();
    let pending = tokio::spawn(async move { send(&client(), req).await });
    tx.send_data(Bytes::from(vec![7u8; 1000])).await.unwrap();
    // The upload is not finished, yet the backend must already have the first kilobyte.
    let seen = b.seen.clone();
    eventually("backend sees the first chunk", WAIT, || {
        let seen = seen.clone();
        async move {
            seen.upload_progress
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 1000
        }
    })
    .await;
    tx.send_data(Bytes::from(vec![7u8; 500])).await.unwrap();
    drop(tx);
    let a = pending.await.unwrap();
    assert_eq!(a.body, "received 1500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_pass_in_both_directions() {
    const SIZE: usize = 64 << 20;
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let up = send(
        &client(),
        Request::post(proxy.url("/upload"))
            .body(zeros(SIZE))
            .unwrap(),
    )
    .await;
    assert_eq!(up.body, format!("received {SIZE}"));

    let resp = client()
        .request(
            Request::get(proxy.url(&format!("/download/{SIZE}")))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-length"], SIZE.to_string().as_str());
    let mut body = resp.into_body();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().into_data().map_or(0, |d| d.len());
    }
    assert_eq!(total, SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_here_and_forwarding_headers_are_added() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let a = get_with(
        &proxy.url("/hop"),
        &[
            ("host", "shop.example"),
            ("connection", "x-client-hop"),
            ("x-client-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = b.last_headers();
    for gone in ["x-client-hop", "keep-alive", "te"] {
        assert!(!seen.contains_key(gone), "backend received {gone}");
    }
    // The client is not a trusted proxy: what it claimed about an earlier hop is dropped.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example");
    assert_eq!(seen["host"], "shop.example");
    // What the backend marked as hop-by-hop does not reach the client.
    assert!(!a.headers.contains_key("x-backend-hop"));
    assert!(!a.headers.contains_key("keep-alive"));
    assert_eq!(a.headers["x-end-to-end"], "yes");
}

/// A WebSocket client through the proxy at `base` (`http://host:port`) to `path`.
async fn ws_connect(
    base: &str,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn ws_echo(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    text: &str,
) -> String {
    use futures_util::{SinkExt, StreamExt};
    ws.send(text.into()).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("an echo");
    reply.unwrap().unwrap().into_text().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_reach_their_keys_backend_every_time_and_outlive_a_reload() {
    let ws: Vec<WsBackend> = vec![
        WsBackend::start("w0").await,
        WsBackend::start("w1").await,
        WsBackend::start("w2").await,
    ];
    let mut p = pool("rooms", &[]).idle_timeout(Duration::from_secs(30));
    for b in &ws {
        p = p.backend(&b.id, b.addr);
    }
    let proxy = TestProxy::start(&p.toml()).await;
    let base = proxy.url("");
    for room in ["/rooms/1", "/rooms/2", "/rooms/3", "/rooms/4"] {
        let owner = proxy.ring_owner(room);
        for _ in 0..3 {
            let mut c = ws_connect(&base, room).await;
            assert_eq!(ws_echo(&mut c, "hi").await, format!("{owner} {room}: hi"));
        }
    }

    // One connection open across a reload that changes the fleet, and counted while open.
    let room = "/rooms/kept";
    let owner = proxy.ring_owner(room);
    let mut kept = ws_connect(&base, room).await;
    assert_eq!(
        ws_echo(&mut kept, "before").await,
        format!("{owner} {room}: before")
    );
    let open = |m: &str| {
        value(
            m,
            "shardgate_upgraded_connections_active",
            &[("pool", "rooms"), ("backend", &owner)],
        )
    };
    assert_eq!(open(&scrape(&proxy).await), 1.0);
    let extra = WsBackend::start("w3").await;
    std::fs::write(&proxy.config_path, p.backend(&extra.id, extra.addr).toml()).unwrap();
    eventually("the reload applied", WAIT, || async {
        proxy.backend_ids().len() == 4
    })
    .await;
    assert_eq!(
        ws_echo(&mut kept, "after").await,
        format!("{owner} {room}: after")
    );
    drop(kept);
    eventually("the closed tunnel uncounted", WAIT, || async {
        open(&scrape(&proxy).await) == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_silent_for_idle_timeout_is_closed() {
    let b = WsBackend::start("w0").await;
    let p = pool("rooms", &[])
        .backend(&b.id, b.addr)
        .idle_timeout(Duration::from_millis(300));
    let proxy = TestProxy::start(&p.toml()).await;
    let addr = proxy.url("").trim_start_matches("http://").to_owned();
    let mut c = tokio::net::TcpStream::connect(addr.trim_end_matches('/'))
        .await
        .unwrap();
    c.write_all(
        b"GET /room HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut got))
        .await
        .expect("closed by the proxy, not by the test's patience")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nupgrade: websocket\r\n"),
        "{text}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    eventually("the tunnel uncounted", WAIT, || async {
        value(
            &scrape(&proxy).await,
            "shardgate_upgraded_connections_active",
            &[("pool", "rooms"), ("backend", "w0")],
        ) == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_upgrade_is_an_ordinary_answer_and_the_connection_goes_on() {
    // The test backend is plain HTTP: it answers a WebSocket handshake with 200.
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let addr = proxy
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut c = TcpStream::connect(&addr).await.unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, closed) = read_until_closed(&mut c, WAIT).await;
    assert!(closed, "{got}");
    assert_eq!(got.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{got}");
    // What the backend got with the second request is plain; the first carried the offer
    // without h2c (checked byte for byte in http1::forward's tests).
    assert!(!b.last_headers().contains_key("upgrade"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_to_h2c_is_refused_whatever_was_offered() {
    let bad = RawBackend::start(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
        After::Stall,
    )
    .await;
    let proxy = TestProxy::start(&pool("p", &[]).backend("bad", bad.addr).retries(0).toml()).await;
    let addr = proxy
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let (got, _) = raw_exchange(
        addr.parse().unwrap(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got}");
    assert!(got.contains("x-shardgate-error: upstream"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_uris_never_reach_other_hosts() {
    let b = TestBackend::start("member").await;
    let outsider = TestBackend::start("outsider").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let mut s = TcpStream::connect(proxy.proxy.pool_addr("cache").unwrap())
        .await
        .unwrap();
    let req = format!(
        "GET http://{0}/steal HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        outsider.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("x-backend: member"), "{resp}");
    assert_eq!(outsider.requests(), 0);
    assert_eq!(b.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let resp = h2
        .request(Request::get(proxy.url("/h2")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let host = b.last_headers()["host"].to_str().unwrap().to_owned();
    assert_eq!(host, proxy.proxy.pool_addr("cache").unwrap().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_go_up_over_http1_with_their_bodies_both_ways() {
    use http_body_util::BodyExt;
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let text = |resp: http::Response<hyper::body::Incoming>| async move {
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };

    // A body of known length goes up with its Content-Length.
    let req = Request::post(proxy.url("/upload"))
        .header("content-length", "5")
        .body(full("hello"))
        .unwrap();
    assert_eq!(
        text(h2.request(req).await.unwrap()).await,
        (StatusCode::OK, "received 5".to_owned())
    );
    // One of unknown length goes up chunked.
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
    tokio::spawn(async move {
        for part in ["one ", "two ", "three"] {
            let _ = tx.send_data(Bytes::from_static(part.as_bytes())).await;
        }
    });
    let req = Request::post(proxy.url("/upload"))
        .body(body.boxed())
        .unwrap();
    assert_eq!(
        text(h2.request(req).await.unwrap()).await,
        (StatusCode::OK, "received 13".to_owned())
    );
    // A chunked answer streams as it comes, without its framing: the first part arrives while
    // the backend holds back the second.
    let resp = h2
        .request(Request::get(proxy.url("/gated")).body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first;");
    b.open_gate();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second");
    // A long one arrives whole, and HEAD gets no body.
    let (status, big) = text(
        h2.request(
            Request::get(proxy.url("/download/1000000"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, big.len()), (StatusCode::OK, 1_000_000));
    let head = h2
        .request(Request::head(proxy.url("/x")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(text(head).await, (StatusCode::OK, String::new()));
    // Every answer ended cleanly, so its connection went back to the pool: a burst of
    // sequential requests needs no new connection per request (at most one more per runtime
    // thread: idle connections are kept per thread, and this test's runtime has two).
    let connections = || b.seen.connections.load(std::sync::atomic::Ordering::SeqCst);
    let before = connections();
    for i in 0..20 {
        let req = Request::get(proxy.url(&format!("/seq/{i}")))
            .body(empty())
            .unwrap();
        assert_eq!(text(h2.request(req).await.unwrap()).await.0, StatusCode::OK);
    }
    assert!(
        connections() - before <= 2,
        "{} new connections for 20 sequential requests",
        connections() - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_gives_502() {
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::start(&pool("p", &[]).backend("gone", dead).toml()).await;
    let a = get(&proxy.url("/x")).await;
    a.assert_error(StatusCode::BAD_GATEWAY, "connect");
    assert!(
        !a.body.contains("gone"),
        "the backend's name stays in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gives_504() {
    let b = TestBackend::start("sloth").await;
    let proxy = TestProxy::start(
        &pool("cache", &[&b])
            .request_timeout(Duration::from_millis(300))
            .toml(),
    )
    .await;
    let a = get(&proxy.url("/slow/5000")).await;
    a.assert_error(StatusCode::GATEWAY_TIMEOUT, "timeout");
    // The pool stays healthy for the next request.
    assert_eq!(get(&proxy.url("/fast")).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usable_backend_gives_503() {
    let bs = backends(2).await;
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).toml()).await;
    for b in proxy.proxy.shared().snapshot.load().pools[0].backends() {
        b.set_up(false);
    }
    let a = get(&proxy.url("/x")).await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "no_backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).max_header_bytes(16384).toml()).await;
    let big = "x".repeat(32 * 1024);
    let mut s = TcpStream::connect(proxy.proxy.pool_addr("cache").unwrap())
        .await
        .unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(b.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let b = TestBackend::start("b0").await;
    let slow_cut = pool("cache", &[&b]).header_read_timeout(Duration::from_millis(300));
    let proxy = TestProxy::start(&slow_cut.toml()).await;
    let mut s = TcpStream::connect(proxy.proxy.pool_addr("cache").unwrap())
        .await
        .unwrap();
    // Half a request head, then silence.
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the proxy kept a silent client open");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Either a bare close or a 408; never a forwarded request.
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(b.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_holds_new_clients_back() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).max_connections(1).toml()).await;
    let addr = proxy.proxy.pool_addr("cache").unwrap();
    let req = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(req).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(req).await.unwrap();
    let held = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        held.is_err(),
        "a second client was served over the limit of 1"
    );

    drop(first);
    let n = tokio::time::timeout(WAIT, second.read(&mut buf))
        .await
        .expect("second client never served after the first left")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let addr = proxy.proxy.pool_addr("cache").unwrap();
    let url = proxy.url("/slow/400");
    let in_flight = tokio::spawn(async move { get(&url).await });
    eventually("backend got the slow request", WAIT, || async {
        b.requests() == 1
    })
    .await;
    proxy.proxy.shutdown();
    // While the drain runs, the admin listener answers: alive, not ready, still scraped.
    let a = get(&proxy.admin_url("/healthz")).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body, "not ready: shutting down (draining connections)\n");
    assert_eq!(
        get(&proxy.admin_url("/metrics")).await.status,
        StatusCode::OK
    );
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "in-flight request was cut");
    tokio::time::timeout(WAIT, proxy.proxy.wait())
        .await
        .expect("shutdown did not finish");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    assert!(
        TcpStream::connect(proxy.proxy.admin_addr()).await.is_err(),
        "the admin listener outlived the drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_sends_a_body_to_head_loses_its_connection_not_the_next_answer() {
    use http_body_util::BodyExt;
    // Answers HEAD with a head that says 100 bytes and sends 10 of them; the other 90 come just
    // before its next answer on that connection, where a proxy that kept the connection would
    // read them as the next answer's start. GETs get `hello`.
    let backend = serve_each(|mut s| async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut owed = 0;
        loop {
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = got.starts_with(b"HEAD");
                got.drain(..end + 4);
                let mut reply = vec![b'x'; owed];
                owed = 0;
                if head {
                    reply.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n");
                    reply.extend_from_slice(&[b'x'; 10]);
                    owed = 90;
                } else {
                    reply.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
                }
                if s.write_all(&reply).await.is_err() {
                    return;
                }
            }
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
    })
    .await;
    let proxy = TestProxy::start(
        &pool("p", &[])
            .backend("b", backend)
            .health(health(Check::None))
            .toml(),
    )
    .await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let h1 = client();
    for (name, c) in [("h2c", &h2), ("HTTP/1.1", &h1)] {
        for i in 0..3 {
            let head = c
                .request(
                    Request::head(proxy.url(&format!("/h{i}")))
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(head.status(), StatusCode::OK, "{name}");
            let get = c
                .request(
                    Request::get(proxy.url(&format!("/g{i}")))
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(get.status(), StatusCode::OK, "{name}: the GET after a HEAD");
            let body = get.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello", "{name}");
        }
    }
}
