//! Live reload against real backends: every way a file changes is noticed, nothing is dropped
//! under load, bad files are refused, health state survives, and `diff` predicts the movement.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use shardgate::control::proxy::RestartOnly;
use shardgate::control::reload::{Reloader, Trigger};
use shardgate::state::backend::State;

/// The bound for noticing a change.
const NOTICE: Duration = Duration::from_secs(2);

async fn assert_applied_within(proxy: &TestProxy, bs: &[TestBackend], how: &str) {
    let want: Vec<String> = bs.iter().map(|b| b.id.clone()).collect();
    eventually(&format!("{how} applied"), NOTICE, || async {
        proxy.backend_ids() == want
    })
    .await;
    let newest = &bs[bs.len() - 1];
    let a = get(&proxy.url(&proxy.key_owned_by(&newest.id, "/key/"))).await;
    assert_eq!(
        a.backend(),
        newest.id,
        "{how}: traffic reaches the added backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_is_applied() {
    let bs = backends(3).await;
    let proxy = TestProxy::start(&pool("cache", &refs(&bs[..2])).toml()).await;
    std::fs::write(&proxy.config_path, pool("cache", &refs(&bs)).toml()).unwrap();
    assert_applied_within(&proxy, &bs, "in-place write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_rename_save_is_applied() {
    let bs = backends(3).await;
    let proxy = TestProxy::start(&pool("cache", &refs(&bs[..2])).toml()).await;
    // What vim (backupcopy=no) and most editors do: write a new file, rename it over the old.
    let tmp = proxy.dir.path().join(".shardgate.toml.swp");
    std::fs::write(&tmp, pool("cache", &refs(&bs)).toml()).unwrap();
    std::fs::rename(&tmp, &proxy.config_path).unwrap();
    assert_applied_within(&proxy, &bs, "rename-save").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swap_is_applied() {
    use std::os::unix::fs::symlink;
    let bs = backends(3).await;
    // The layout kubelet mounts: shardgate.toml -> ..data/shardgate.toml, ..data -> ..<timestamp>
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..2026_11_22_09_00_00.1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(
        v1.join("shardgate.toml"),
        pool("cache", &refs(&bs[..2])).toml(),
    )
    .unwrap();
    symlink("..2026_11_22_09_00_00.1", dir.path().join("..data")).unwrap();
    symlink("..data/shardgate.toml", dir.path().join("shardgate.toml")).unwrap();
    let path = dir.path().join("shardgate.toml");
    let proxy = TestProxy::start_at(dir, path).await;

    // An update: new timestamped dir, new ..data_tmp link renamed over ..data, old dir removed.
    let root = proxy.dir.path();
    let v2 = root.join("..2026_11_22_09_05_00.2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("shardgate.toml"), pool("cache", &refs(&bs)).toml()).unwrap();
    symlink("..2026_11_22_09_05_00.2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    assert_applied_within(&proxy, &bs, "ConfigMap symlink swap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let bs = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.toml");
    let port = free_port();
    // Watching off, so only the signal can apply the edit.
    let config = |b: &TestBackend| {
        let p = pool("p", &[b]).listen(format!("127.0.0.1:{port}"));
        ConfigToml::new().watch_config(false).pool(p).toml()
    };
    std::fs::write(&path, config(&bs[0])).unwrap();
    let mut child = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["run", "-c", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let url = format!("http://127.0.0.1:{port}/x");
    let client = client();
    let backend_of = || {
        let client = client.clone();
        let url = url.clone();
        async move {
            let req = Request::get(url).body(empty()).unwrap();
            match client.request(req).await {
                Ok(r) => r
                    .headers()
                    .get("x-backend")
                    .map(|v| v.to_str().unwrap().to_owned()),
                Err(_) => None,
            }
        }
    };
    eventually("proxy serves b0", WAIT, || async {
        backend_of().await.as_deref() == Some("b0")
    })
    .await;

    std::fs::write(&path, config(&bs[1])).unwrap();
    signal(&child, "HUP");
    eventually("SIGHUP applied the edit", NOTICE, || async {
        backend_of().await.as_deref() == Some("b1")
    })
    .await;

    signal(&child, "TERM");
    wait_exit(&mut child, WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_every_100ms_under_load_fails_no_request() {
    let bs = backends(5).await;
    let configs = [
        pool("cache", &refs(&bs[..4])).toml(),
        pool("cache", &refs(&bs)).toml(),
        pool("cache", &refs(&bs[1..])).vnodes(512).toml(),
    ];
    let proxy = TestProxy::start(&configs[0]).await;
    let reloader = Reloader::new(proxy.config_path.clone(), proxy.proxy.clone());

    let load = Load::start(&proxy.url(""), "load", 8);
    let mut applied = 0;
    let started = std::time::Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(10) {
        round += 1;
        // Atomic replace, then reload through the same path the watcher and SIGHUP use.
        let tmp = proxy.dir.path().join("next.toml");
        std::fs::write(&tmp, &configs[round % configs.len()]).unwrap();
        std::fs::rename(&tmp, &proxy.config_path).unwrap();
        if let Ok(Some(_)) = reloader.reload(Trigger::Signal).await {
            applied += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, failed) = load.finish().await;
    eprintln!("{applied} reloads in 10 s under load: {ok} requests ok, {failed} failed");
    assert!(applied >= 50, "only {applied} reloads applied");
    assert!(ok > 1000, "too little load: {ok}");
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_truncated_file_is_refused_and_a_fix_is_applied() {
    let bs = backends(3).await;
    let good = pool("cache", &refs(&bs[..2])).toml();
    let proxy = TestProxy::start(&good).await;
    let before = proxy.proxy.shared().snapshot.load_full();
    let keys: Vec<String> = (0..200).map(|i| format!("/k/{i}")).collect();
    let routed: Vec<String> = keys.iter().map(|k| proxy.target("cache", k)).collect();
    let status = &proxy.proxy.shared().reload;

    // Half-written: cut in the middle of a table.
    let next_pool = pool("cache", &refs(&bs));
    let next = next_pool.toml();
    std::fs::write(&proxy.config_path, &next[..next.len() - 30]).unwrap();
    eventually("truncated file refused", NOTICE, || async {
        status.failed() >= 1
    })
    .await;
    let msg = status.last_message();
    let file = proxy.config_path.display().to_string();
    assert!(msg.starts_with("refused: "), "{msg}");
    assert!(msg.contains(&format!("{file}:")), "file:line:col in {msg}");
    assert!(!status.last_ok());
    assert!(Arc::ptr_eq(
        &before,
        &proxy.proxy.shared().snapshot.load_full()
    ));

    // Valid TOML, invalid config.
    std::fs::write(&proxy.config_path, next_pool.clone().vnodes(0).toml()).unwrap();
    eventually("invalid file refused", NOTICE, || async {
        status.failed() >= 2
    })
    .await;
    let msg = status.last_message();
    assert!(msg.contains("pools[0].vnodes"), "{msg}");
    let still: Vec<String> = keys.iter().map(|k| proxy.target("cache", k)).collect();
    assert_eq!(still, routed, "routing unchanged while the file is bad");
    assert_eq!(get(&proxy.url("/x")).await.status, StatusCode::OK);

    std::fs::write(&proxy.config_path, &next).unwrap();
    assert_applied_within(&proxy, &bs, "fixed file").await;
    assert!(status.last_ok());
}

/// Beyond the keyspace, the reload's message names the settings it changed, old → new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_says_which_settings_it_changed() {
    let bs = backends(2).await;
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).toml()).await;
    let reloader = Reloader::new(proxy.config_path.clone(), proxy.proxy.clone());
    let changed = pool("cache", &refs(&bs))
        .balance_factor(1.25)
        .hot_keys(false)
        .toml();
    std::fs::write(&proxy.config_path, changed).unwrap();
    reloader
        .reload(Trigger::Signal)
        .await
        .unwrap()
        .expect("applied");
    let msg = proxy.proxy.shared().reload.last_message();
    assert!(
        msg.ends_with(
            "0.00% of keys move; settings changed: cache: balance_factor 0 → 1.25, \
             hot_keys true → false"
        ),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_a_reload() {
    let bs = backends(4).await;
    let checks = health(Check::Http)
        .interval(Duration::from_millis(100))
        .timeout(Duration::from_millis(50));
    let with_checks = |bs: &[TestBackend]| pool("cache", &refs(bs)).health(checks.clone()).toml();
    let proxy = TestProxy::start(&with_checks(&bs[..3])).await;
    let reloader = Reloader::new(proxy.config_path.clone(), proxy.proxy.clone());
    bs[1].set_health(503);
    eventually("b1 down", WAIT, || async {
        proxy.proxy.shared().snapshot.load().pools[0]
            .backend("b1")
            .unwrap()
            .state()
            == State::Down
    })
    .await;
    let old_b1 = proxy.proxy.shared().snapshot.load().pools[0]
        .backend("b1")
        .unwrap()
        .clone();

    std::fs::write(&proxy.config_path, with_checks(&bs)).unwrap();
    reloader
        .reload(Trigger::Signal)
        .await
        .unwrap()
        .expect("applied");
    let snap = proxy.proxy.shared().snapshot.load();
    let b1 = snap.pools[0].backend("b1").unwrap();
    assert!(Arc::ptr_eq(b1, &old_b1), "same runtime state carried over");
    assert_eq!(b1.state(), State::Down, "still down right after the reload");
    let a = get(&proxy.url(&proxy.key_owned_by("b1", "/key/"))).await;
    assert_ne!(a.backend(), "b1");
    assert_eq!(a.status, StatusCode::OK);
    // And it still comes back when healthy: its checks kept running.
    bs[1].set_health(200);
    eventually("b1 up again", WAIT, || async { b1.state() == State::Up }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_backend_moves_one_over_n_plus_one_and_diff_says_the_same() {
    let bs = backends(5).await;
    let old_toml = pool("cache", &refs(&bs[..4])).toml();
    let new_toml = pool("cache", &refs(&bs)).toml();
    let proxy = TestProxy::start(&old_toml).await;
    let dir = tempfile::tempdir().unwrap();
    let (old_path, new_path) = (dir.path().join("old.toml"), dir.path().join("new.toml"));
    std::fs::write(&old_path, &old_toml).unwrap();
    std::fs::write(&new_path, &new_toml).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args([
            "diff",
            old_path.to_str().unwrap(),
            new_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    eprintln!("{report}");
    // "pool cache: +1 -0 ~0 backends, 19.93% of keys move"
    let predicted: f64 = report
        .split("backends, ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|p| p.parse().ok())
        .map(|p: f64| p / 100.0)
        .unwrap_or_else(|| panic!("no fraction in {report}"));
    assert!(
        (predicted - 0.2).abs() < 0.03,
        "{predicted} is not about 1/5"
    );
    assert!(
        report.contains("b4") && report.contains("added"),
        "{report}"
    );

    let keys: Vec<String> = (0..10_000).map(|i| format!("/m/{i}")).collect();
    let before = route_all(&proxy, &keys).await;
    std::fs::write(&proxy.config_path, &new_toml).unwrap();
    eventually("b4 added", NOTICE, || async {
        proxy.backend_ids().len() == 5
    })
    .await;
    let after = route_all(&proxy, &keys).await;
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            assert_eq!(a, "b4", "a key moved between old backends");
            moved += 1;
        }
    }
    let real = moved as f64 / keys.len() as f64;
    eprintln!("diff predicted {predicted:.4}, proxy moved {real:.4} of 10k keys");
    // 10k samples: standard error about 0.004.
    assert!(
        (real - predicted).abs() < 0.015,
        "real {real} vs predicted {predicted}"
    );
    let logged = proxy.proxy.shared().reload.moved();
    assert_eq!(logged.len(), 1);
    assert!(
        (logged[0].1 - predicted).abs() < 0.0001,
        "{logged:?} vs {predicted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_come_and_go_and_move_without_dropping_requests() {
    let b = TestBackend::start("b0").await;
    let cache = pool("cache", &[&b]);
    let api_pool = pool("api", &[&b]);
    let proxy = TestProxy::start(&cache.toml()).await;
    let reloader = Reloader::new(proxy.config_path.clone(), proxy.proxy.clone());

    // Add a pool: it listens at once.
    let both = ConfigToml::new().pool(cache.clone()).pool(api_pool.clone());
    std::fs::write(&proxy.config_path, both.toml()).unwrap();
    reloader
        .reload(Trigger::Signal)
        .await
        .unwrap()
        .expect("applied");
    let api = proxy.pool_url("api", "/hello");
    assert_eq!(get(&api).await.status, StatusCode::OK);
    // A request that reached no backend, for a `backend="none"` series of the pool.
    let refused = get_with(&proxy.pool_url("api", "/x"), &[("host", "a b")]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let m = scrape(&proxy).await;
    assert_eq!(
        value(
            &m,
            "shardgate_requests_total",
            &[("pool", "api"), ("backend", "none"), ("code", "400")]
        ),
        1.0,
        "{m}"
    );

    // Move the cache pool to another port while a request is in flight on the old one.
    let old_addr = proxy.proxy.pool_addr("cache").unwrap();
    let in_flight = tokio::spawn({
        let url = proxy.url("/gated");
        async move {
            let resp = client()
                .request(Request::get(url).body(empty()).unwrap())
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    });
    eventually("request reached the backend", WAIT, || async {
        b.requests() >= 2
    })
    .await;
    let port = free_port();
    let moved = cache.listen(format!("127.0.0.1:{port}"));
    let both = ConfigToml::new().pool(moved.clone()).pool(api_pool);
    std::fs::write(&proxy.config_path, both.toml()).unwrap();
    reloader
        .reload(Trigger::Signal)
        .await
        .unwrap()
        .expect("applied");
    assert_eq!(proxy.proxy.pool_addr("cache").unwrap().port(), port);
    let a = get(&format!("http://127.0.0.1:{port}/new")).await;
    assert_eq!(a.status, StatusCode::OK);
    b.open_gate();
    assert_eq!(
        &in_flight.await.unwrap()[..],
        b"first;second",
        "old listener's request finished"
    );
    eventually("old port closed", WAIT, || async {
        tokio::net::TcpStream::connect(old_addr).await.is_err()
    })
    .await;

    // Remove the api pool: its listener closes.
    let api_addr = proxy.proxy.pool_addr("api").unwrap();
    std::fs::write(&proxy.config_path, moved.toml()).unwrap();
    reloader
        .reload(Trigger::Signal)
        .await
        .unwrap()
        .expect("applied");
    assert!(proxy.proxy.pool_addr("api").is_none());
    eventually("api port closed", WAIT, || async {
        tokio::net::TcpStream::connect(api_addr).await.is_err()
    })
    .await;
    // Its series go with it, pool-level ones too.
    let m = scrape(&proxy).await;
    assert!(!m.contains("pool=\"api\""), "{m}");

    // A changed admin address is reported as needing a restart, not silently ignored.
    let admin_moved = ConfigToml::new().admin_listen("127.0.0.1:1").pool(moved);
    std::fs::write(&proxy.config_path, admin_moved.toml()).unwrap();
    let applied = reloader
        .reload(Trigger::Signal)
        .await
        .unwrap()
        .expect("applied");
    assert_eq!(
        applied.needs_restart.len(),
        1,
        "{:?}",
        applied.needs_restart
    );
    assert!(matches!(
        applied.needs_restart[0],
        RestartOnly::AdminListen { .. }
    ));
    assert!(
        applied.needs_restart[0].to_string().starts_with(
            "admin.listen 127.0.0.1:0 → 127.0.0.1:1 (the admin listener stays on 127.0.0.1:"
        ),
        "{}",
        applied.needs_restart[0]
    );
}
