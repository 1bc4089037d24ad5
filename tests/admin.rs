//! The admin listener as an operator and Prometheus use it: metrics that move exactly, a scrape
//! promtool accepts, the JSON API, drain/undrain, probes, the status page in a real browser,
//! and the access log.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use shardgate::state::backend::State;

/// A pool "cache" in front of `bs` with checks every 100 ms.
fn checked(bs: &[TestBackend]) -> PoolToml {
    let fast = health(Check::Http)
        .interval(Duration::from_millis(100))
        .timeout(Duration::from_millis(50));
    pool("cache", &refs(bs)).health(fast)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_requests_move_the_counters_by_exactly_n() {
    let bs = backends(3).await;
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).toml()).await;
    let before = scrape(&proxy).await;
    let client = client();
    let mut per_backend: HashMap<String, f64> = HashMap::new();
    for i in 0..137 {
        let a = send(
            &client,
            Request::get(proxy.url(&format!("/n/{i}")))
                .body(empty())
                .unwrap(),
        )
        .await;
        *per_backend.entry(a.backend().to_owned()).or_default() += 1.0;
    }
    let after = scrape(&proxy).await;
    for (id, n) in &per_backend {
        let l = [("pool", "cache"), ("backend", id.as_str()), ("code", "200")];
        assert_eq!(
            value(&after, "shardgate_requests_total", &l)
                - value(&before, "shardgate_requests_total", &l),
            *n,
            "{id}"
        );
        let h = [("pool", "cache"), ("backend", id.as_str())];
        assert_eq!(
            value(&after, "shardgate_upstream_duration_seconds_count", &h)
                - value(&before, "shardgate_upstream_duration_seconds_count", &h),
            *n
        );
    }
    // Client-seen durations are recorded when each response is finished with.
    eventually("137 durations recorded", WAIT, || async {
        value(
            &scrape(&proxy).await,
            "shardgate_request_duration_seconds_count",
            &[("pool", "cache")],
        ) >= 137.0
    })
    .await;
    assert_eq!(
        value(
            &after,
            "shardgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "shardgate_config_last_reload_successful", &[]),
        1.0
    );
    assert!(value(&after, "shardgate_connections_active", &[("pool", "cache")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_shows_down_and_the_others_share_the_whole_keyspace() {
    let bs = backends(4).await;
    let proxy = TestProxy::start(&checked(&bs).retries(1).toml()).await;
    let s = scrape(&proxy).await;
    assert_eq!(sum(&s, "shardgate_backend_up", &[("pool", "cache")]), 4.0);
    let total = sum(&s, "shardgate_backend_keyspace_share", &[("pool", "cache")]);
    assert!((total - 1.0).abs() < 1e-9, "{total}");

    bs[2].kill();
    eventually("b2 down", WAIT, || async {
        value(
            &scrape(&proxy).await,
            "shardgate_backend_up",
            &[("pool", "cache"), ("backend", "b2")],
        ) == 0.0
            && proxy.proxy.shared().snapshot.load().pools[0]
                .backend("b2")
                .unwrap()
                .state()
                == State::Down
    })
    .await;
    let s = scrape(&proxy).await;
    assert_eq!(sum(&s, "shardgate_backend_up", &[("pool", "cache")]), 3.0);
    assert_eq!(
        value(
            &s,
            "shardgate_backend_keyspace_share",
            &[("pool", "cache"), ("backend", "b2")]
        ),
        0.0
    );
    let total = sum(&s, "shardgate_backend_keyspace_share", &[("pool", "cache")]);
    assert!(
        (total - 1.0).abs() < 1e-9,
        "shares of the other three sum to {total}"
    );
    let checks_failed = value(
        &s,
        "shardgate_health_checks_total",
        &[("pool", "cache"), ("backend", "b2"), ("result", "fail")],
    );
    assert!(checks_failed >= 3.0, "{checks_failed}");

    // All down: readiness says why.
    for b in &bs {
        b.set_health(503);
    }
    eventually("not ready", WAIT, || async {
        get(&proxy.admin_url("/readyz")).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let r = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(r.body, "not ready: pool cache has no healthy backend\n");
    assert_eq!(
        get(&proxy.admin_url("/healthz")).await.status,
        StatusCode::OK,
        "alive all the same"
    );
    let a = get(&proxy.url("/any")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let s = scrape(&proxy).await;
    assert_eq!(
        value(&s, "shardgate_no_backend_total", &[("pool", "cache")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "shardgate_requests_total",
            &[("pool", "cache"), ("backend", "none"), ("code", "503")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_count_as_upstream_errors_and_retries() {
    let bs = backends(2).await;
    // Checks far apart and passive detection off: only the retry path reacts to the kill.
    let checks = health(Check::Tcp)
        .interval(Duration::from_secs(3600))
        .passive_failures(0);
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).retries(1).health(checks).toml()).await;
    let key = proxy.key_owned_by("b0", "/r/");
    bs[0].kill();
    for _ in 0..3 {
        assert_eq!(get(&proxy.url(&key)).await.backend(), "b1");
    }
    let s = scrape(&proxy).await;
    assert_eq!(
        value(
            &s,
            "shardgate_upstream_errors_total",
            &[("pool", "cache"), ("backend", "b0"), ("kind", "connect")]
        ),
        3.0
    );
    assert_eq!(
        value(&s, "shardgate_retries_total", &[("pool", "cache")]),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "shardgate_requests_total",
            &[("pool", "cache"), ("backend", "b1"), ("code", "200")]
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_live_scrape() {
    let Some(promtool) = tool(&["promtool"], "Debian package `prometheus`") else {
        return;
    };
    let bs = backends(2).await;
    let proxy = TestProxy::start(&checked(&bs).toml()).await;
    for i in 0..20 {
        get(&proxy.url(&format!("/p/{i}"))).await;
    }
    get_with(&proxy.url("/ws"), &[("upgrade", "websocket")]).await;
    std::fs::write(&proxy.config_path, "not toml [").unwrap();
    eventually("refused reload counted", WAIT, || async {
        value(
            &scrape(&proxy).await,
            "shardgate_config_reloads_total",
            &[("result", "failure")],
        ) == 1.0
    })
    .await;
    let text = scrape(&proxy).await;
    let out = run_with_input(
        Command::new(promtool).args(["check", "metrics"]),
        text.as_bytes(),
    );
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n---\n{text}"
    );
    assert_eq!(
        value(&text, "shardgate_config_last_reload_successful", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_exactly_the_drained_backends_keys_and_undrain_brings_them_back() {
    let bs = backends(4).await;
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).toml()).await;
    let keys: Vec<String> = (0..2000).map(|i| format!("/d/{i}")).collect();
    let before = route_all(&proxy, &keys).await;
    let post = |path: &str| {
        let url = proxy.admin_url(path);
        async move { send(&common::client(), Request::post(url).body(empty()).unwrap()).await }
    };
    let r = post("/api/backends/cache/b1/drain").await;
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["state"], "drained");
    assert_eq!(v["keyspace_share"], 0.0);

    let during = route_all(&proxy, &keys).await;
    let mut receivers = std::collections::HashSet::new();
    for i in 0..keys.len() {
        if before[i] == "b1" {
            assert_ne!(during[i], "b1");
            receivers.insert(during[i].clone());
        } else {
            assert_eq!(during[i], before[i], "{} moved but was not b1's", keys[i]);
        }
    }
    assert!(receivers.len() > 1, "b1's keys spread: {receivers:?}");

    let r = post("/api/backends/cache/b1/undrain").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["state"], "up");
    assert!(
        route_all(&proxy, &keys).await == before,
        "undrain brings exactly b1's keys back"
    );

    // Mistakes get a clear answer.
    assert_eq!(
        post("/api/backends/cache/nope/drain").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post("/api/backends/cache/b1/explode").await.status,
        StatusCode::NOT_FOUND
    );
    let r = get(&proxy.admin_url("/api/backends/cache/b1/drain")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST");
    let r = post("/metrics").await;
    assert_eq!(
        (r.status, r.headers["allow"].to_str().unwrap()),
        (StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD")
    );
    let r = post("/api/route").await;
    assert_eq!(r.headers["allow"], "GET, HEAD");
    // HEAD answers as GET does, without the body (monitors probe that way).
    for path in ["/healthz", "/readyz", "/metrics", "/api/backends"] {
        let head = client()
            .request(Request::head(proxy.admin_url(path)).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK, "{path}");
        let body = http_body_util::BodyExt::collect(head.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(body.is_empty(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_describes_the_fleet_and_routes_like_the_proxy() {
    let bs = backends(3).await;
    let proxy = TestProxy::start(&checked(&bs).toml()).await;
    for i in 0..30 {
        get(&proxy.url(&format!("/f/{i}"))).await;
    }
    let a = get(&proxy.admin_url("/api/backends")).await;
    assert_eq!(a.headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let pool = &v["pools"][0];
    assert_eq!(pool["name"], "cache");
    let backends = pool["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3);
    let total: u64 = backends
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 30);
    for (b, tb) in backends.iter().zip(&bs) {
        assert_eq!(b["id"], tb.id.as_str());
        assert_eq!(b["address"], tb.addr.to_string().as_str());
        assert_eq!(b["weight"], 1);
        assert_eq!(b["state"], "up");
        assert!(b["since_unix"].as_f64().unwrap() > 1.7e9);
    }
    eventually("checks reported", WAIT, || async {
        let v: serde_json::Value =
            serde_json::from_str(&get(&proxy.admin_url("/api/backends")).await.body).unwrap();
        v["pools"][0]["backends"][0]["last_check"]["ok"] == true
    })
    .await;
    assert_eq!(v["reload"]["ok"], true);

    for key in ["/f/1", "/f/2", "/users/42"] {
        let url = format!(
            "{}?pool=cache&key={}",
            proxy.admin_url("/api/route"),
            key.replace('/', "%2F")
        );
        let r: serde_json::Value = serde_json::from_str(&get(&url).await.body).unwrap();
        let served = get(&proxy.url(key)).await;
        assert_eq!(r["target"], served.backend(), "{key}");
        assert_eq!(r["owner"], r["chain"][0]["id"]);
        assert_eq!(r["chain"].as_array().unwrap().len(), 3);
        assert_eq!(
            r["hash"],
            format!(
                "{:016x}",
                shardgate::routing::ring::hash_key(key.as_bytes())
            )
        );
    }
    assert_eq!(
        get(&proxy.admin_url("/api/route")).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(&proxy.admin_url("/api/route?pool=zzz&key=a"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() {
    let browsers = ["chromium", "chromium-browser", "google-chrome"];
    let Some(chromium) = tool(&browsers, "Debian package `chromium`") else {
        return;
    };
    let bs = backends(3).await;
    let proxy = TestProxy::start(&checked(&bs).toml()).await;
    proxy.proxy.shared().snapshot.load().pools[0]
        .backend("b2")
        .unwrap()
        .set_drained(true);
    // A keyed request, so the hot-key table has a row.
    assert_eq!(get(&proxy.url("/users/42")).await.status, StatusCode::OK);
    eventually("the hot-key view has the key", WAIT, || async {
        get(&proxy.admin_url("/api/hotkeys"))
            .await
            .body
            .contains("\"owner\"")
    })
    .await;
    let page = get(&proxy.admin_url("/")).await;
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no external assets"
    );

    let profile = tempfile::tempdir().unwrap();
    let url = proxy.admin_url("/");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--virtual-time-budget=3000", "--dump-dom", &url])
            .stderr(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    // What a person sees: the pool, each backend with its state, shares, and no error banner.
    assert!(dom.contains("pool cache"), "{dom}");
    assert!(dom.contains("2 of 3 backends up"), "{dom}");
    for id in ["b0", "b1", "b2"] {
        assert!(
            dom.contains(&format!("data-backend=\"{id}\"")),
            "{id} row missing: {dom}"
        );
    }
    assert!(
        dom.contains(r#"<span class="state drained">drained</span>"#),
        "{dom}"
    );
    assert_eq!(
        dom.matches(r#"<span class="state up">up</span>"#).count(),
        2,
        "{dom}"
    );
    assert!(
        dom.contains(r#"<span class="share">0.0%</span>"#),
        "drained share shown as 0: {dom}"
    );
    // The hot keys, as hashes (expose_keys is off), with owner and target.
    let hash = format!("{:016x}", shardgate::routing::ring::hash_key(b"/users/42"));
    assert!(
        dom.contains(&format!("data-hotkey=\"{hash}\"")),
        "hot key row missing: {dom}"
    );
    assert!(dom.contains("keys shown as hashes"), "{dom}");
    assert!(dom.contains("config ok"), "{dom}");
    assert!(
        dom.contains(r#"<div id="problem" style="display: none;"></div>"#),
        "error banner shown: {dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request_when_enabled() {
    let b = TestBackend::start("b0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.toml");
    let port = free_port();
    std::fs::write(
        &path,
        ConfigToml::new()
            .access_log(true)
            .pool(pool("p", &[&b]).listen(format!("127.0.0.1:{port}")))
            .toml(),
    )
    .unwrap();
    let child = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["--log-format", "json", "run", "-c", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let url = format!("http://127.0.0.1:{port}/download/1234");
    wait_answering(&url, WAIT).await;
    assert_eq!(get(&url).await.status, StatusCode::OK);
    signal(&child, "TERM");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v: &serde_json::Value| v["target"] == "access")
        .collect();
    assert_eq!(lines.len(), 2, "one per request: {stderr}");
    let last = &lines[1];
    assert_eq!(last["pool"], "p");
    assert_eq!(last["backend"], "b0");
    assert_eq!(last["status"], 200);
    assert_eq!(last["bytes"], 1234);
    assert_eq!(last["complete"], true);
    assert_eq!(
        last["key_hash"],
        format!(
            "{:016x}",
            shardgate::routing::ring::hash_key(b"/download/1234")
        )
    );
    assert!(last["duration_us"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_is_counted_as_499_of_the_backend_it_waited_for() {
    // Booked to the backend (as nginx logs its upstream with a 499), not to `none`: a slow
    // backend's abandoned requests show on its own series.
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let h1 = client();
    for (n, (name, c)) in [("HTTP/1.1", &h1), ("h2c", &h2)].into_iter().enumerate() {
        let ask = Request::get(proxy.url("/slow/3000")).body(empty()).unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(200), c.request(ask)).await;
        assert!(gave_up.is_err(), "{name}: the client gives up first");
        eventually(&format!("{name}: 499 counted"), WAIT, || async {
            value(
                &scrape(&proxy).await,
                "shardgate_requests_total",
                &[("pool", "cache"), ("backend", "b0"), ("code", "499")],
            ) == (n + 1) as f64
        })
        .await;
    }
    let m = scrape(&proxy).await;
    assert_eq!(
        sum(&m, "shardgate_upstream_errors_total", &[("backend", "b0")]),
        0.0,
        "not the backend's error: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_offer_is_ignored_not_refused() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    // What `curl --http2 http://...` sends.
    let a = get_with(
        &proxy.url("/x"),
        &[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.backend(), "b0");
    assert!(!b.last_headers().contains_key("upgrade"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_other_sites_foreign_hosts_and_missing_tokens() {
    let bs = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-1\n").unwrap();
    let config = |file: &std::path::Path| {
        ConfigToml::new()
            .admin_token_file(file)
            .admin_allowed_hosts(&["admin.internal"])
            .pool(pool("cache", &refs(&bs)))
            .toml()
    };
    let proxy = TestProxy::start(&config(&token_file)).await;
    let bearer = |t: &str| format!("Bearer {t}");
    let admin = |path: &str| proxy.admin_url(path);

    // Probes and the page shell need no token; the data does.
    assert_eq!(get(&admin("/healthz")).await.status, StatusCode::OK);
    assert_eq!(get(&admin("/")).await.status, StatusCode::OK);
    let a = get(&admin("/metrics")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.headers["www-authenticate"],
        "Bearer realm=\"shardgate admin\""
    );
    let wrong = bearer("guess");
    assert_eq!(
        get_with(&admin("/api/backends"), &[("authorization", &wrong)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let good = bearer("s3cret-1");
    let auth = ("authorization", good.as_str());
    assert_eq!(
        get_with(&admin("/metrics"), &[auth]).await.status,
        StatusCode::OK
    );

    // A page on another site cannot drain a backend, with or without the token.
    let post = |headers: Vec<(&'static str, String)>| {
        let url = admin("/api/backends/cache/b0/drain");
        async move {
            let mut req = http::Request::post(url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            send(&client(), req.body(empty()).unwrap()).await.status
        }
    };
    let with_token = |extra: Vec<(&'static str, String)>| {
        let mut h = vec![("authorization", good.clone())];
        h.extend(extra);
        h
    };
    assert_eq!(
        post(with_token(vec![("origin", "http://evil.example".into())])).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(with_token(vec![("sec-fetch-site", "cross-site".into())])).await,
        StatusCode::FORBIDDEN
    );
    // DNS rebinding: the attacker's name resolves here, and the browser sends it as Host.
    assert_eq!(
        post(with_token(vec![(
            "host",
            "rebind.evil.example:9901".into()
        )]))
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(proxy.state("b0"), State::Up, "nothing was drained");
    // Names the operator allowed, and same-origin requests, go through.
    let own = format!("http://{}", proxy.proxy.admin_addr());
    assert_eq!(
        post(with_token(vec![
            ("host", "admin.internal".into()),
            ("sec-fetch-site", "same-origin".into())
        ]))
        .await,
        StatusCode::OK
    );
    assert_eq!(
        post(with_token(vec![("origin", own)])).await,
        StatusCode::OK
    );
    assert_eq!(proxy.state("b0"), State::Drained);

    // A rotated token is in force after a reload; the old one is not.
    std::fs::write(&token_file, "s3cret-2").unwrap();
    let reloader =
        shardgate::control::reload::Reloader::new(proxy.config_path.clone(), proxy.proxy.clone());
    reloader
        .reload(shardgate::control::reload::Trigger::Signal)
        .await
        .unwrap();
    assert_eq!(
        get_with(&admin("/metrics"), &[auth]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let rotated = bearer("s3cret-2");
    assert_eq!(
        get_with(&admin("/metrics"), &[("authorization", &rotated)])
            .await
            .status,
        StatusCode::OK
    );
}
