//! DNS discovery against a DNS server the test runs and changes: SRV targets become backends
//! named by the target, A records one backend per address, backend host names followed in the
//! background; a failed or empty answer changes nothing.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::dns::TestDns;
use common::*;
use http::StatusCode;

/// Lookups every 200 ms: changes land within a second.
const FAST: Duration = Duration::from_millis(200);
const SERVICE: &str = "_http._tcp.cache.test";

fn pod(i: usize) -> String {
    format!("cache-{i}.cache.test")
}

/// The ring ids of the pool, sorted.
fn ids(proxy: &TestProxy) -> Vec<String> {
    let mut ids = proxy.backend_ids();
    ids.sort();
    ids
}

/// The test backend an id of the ring names: `cache-1.cache.test` is the pod `cache-1`.
fn pod_of(id: &str) -> &str {
    id.split('.').next().unwrap()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("/user/{i}")).collect()
}

/// Owner of each key on the pool's ring now.
fn owners(proxy: &TestProxy, keys: &[String]) -> Vec<String> {
    keys.iter().map(|k| proxy.ring_owner(k)).collect()
}

/// The first pool of `/api/backends`.
async fn api_pool(proxy: &TestProxy) -> serde_json::Value {
    let body = get(&proxy.admin_url("/api/backends")).await.body;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pools"][0].clone()
}

async fn scraped(proxy: &TestProxy, name: &str, pool: &str) -> f64 {
    value(&scrape(proxy).await, name, &[("pool", pool)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_are_backends_named_by_target_that_follow_the_fleet() {
    let dns = TestDns::start().await;
    // As Kubernetes answers: the targets' addresses come with the SRV records.
    dns.additionals(true);
    let mut fleet = Vec::new();
    for i in 0..4 {
        fleet.push(TestBackend::start(&format!("cache-{i}")).await);
        dns.set_a(&pod(i), &[Ipv4Addr::LOCALHOST]);
    }
    let srv = |pods: &[usize]| -> Vec<(String, u16)> {
        pods.iter()
            .map(|&i| (pod(i), fleet[i].addr.port()))
            .collect()
    };
    let set_srv = |pods: &[usize]| {
        let records = srv(pods);
        let records: Vec<(&str, u16)> = records.iter().map(|(t, p)| (t.as_str(), *p)).collect();
        dns.set_srv(SERVICE, &records);
    };
    set_srv(&[0, 1, 2]);
    let listed = TestBackend::start("listed").await;
    let config = ConfigToml::new()
        .resolver(dns.addr, FAST)
        .pool(pool("cache", &[&listed]).discover_srv(SERVICE, FAST));
    let proxy = TestProxy::start(&config.toml()).await;

    // Found before the first request: the listed backend and one per SRV target.
    assert_eq!(ids(&proxy), [&pod(0), &pod(1), &pod(2), "listed"]);
    let sample = keys(300);
    let routed = route_all(&proxy, &sample).await;
    for (key, got) in sample.iter().zip(&routed) {
        assert_eq!(got, pod_of(&proxy.ring_owner(key)), "{key}");
    }
    assert_eq!(
        scraped(&proxy, "shardgate_discovery_errors_total", "cache").await,
        0.0
    );
    let text = scrape(&proxy).await;
    let labels = [("pool", "cache"), ("source", &format!("srv {SERVICE}"))];
    assert_eq!(value(&text, "shardgate_discovery_backends", &labels), 3.0);
    let answered = value(
        &text,
        "shardgate_discovery_last_success_timestamp_seconds",
        &labels,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - answered).abs() < 60.0,
        "last success {answered}, now {now}"
    );

    // A pod joins: only keys that move to it move, as much as the log and the gauge say.
    let many = keys(10_000);
    let before = owners(&proxy, &many);
    let kept = proxy.proxy.shared().snapshot.load().pools[0]
        .backend(&pod(0))
        .unwrap()
        .clone();
    set_srv(&[0, 1, 2, 3]);
    eventually("cache-3 joins", WAIT, || async {
        ids(&proxy).contains(&pod(3))
    })
    .await;
    let after = owners(&proxy, &many);
    let moved: Vec<usize> = (0..many.len()).filter(|&i| before[i] != after[i]).collect();
    assert!(
        moved.iter().all(|&i| after[i] == pod(3)),
        "a key moved elsewhere than to the new pod"
    );
    let measured = moved.len() as f64 / many.len() as f64;
    let gauge = scraped(&proxy, "shardgate_keyspace_moved_ratio", "cache").await;
    assert!(
        (measured - gauge).abs() < 0.02,
        "moved {measured}, gauge says {gauge}"
    );
    assert!(
        (0.12..0.28).contains(&measured),
        "a fifth of the keys should move, {measured}"
    );
    let snapshot = proxy.proxy.shared().snapshot.load();
    assert!(
        Arc::ptr_eq(&kept, snapshot.pools[0].backend(&pod(0)).unwrap()),
        "a backend that stays keeps its state"
    );
    let to_new = proxy.key_owned_by(&pod(3), "/user/");
    assert_eq!(get(&proxy.url(&to_new)).await.backend(), "cache-3");
    // Discovery is not a config reload.
    let reloads = sum(&scrape(&proxy).await, "shardgate_config_reloads_total", &[]);
    assert_eq!(reloads, 0.0);

    // cache-1's pod comes back on another IP (same name): its keys stay, its idle connection
    // to the old pod is not reused, and it keeps its state.
    let key1 = proxy.key_owned_by(&pod(1), "/user/");
    assert_eq!(
        get(&proxy.url(&key1)).await.backend(),
        "cache-1",
        "an idle connection to the old pod now"
    );
    let moved_pod = TestBackend::start_on(
        "cache-1-moved",
        SocketAddr::new([127, 0, 0, 2].into(), fleet[1].addr.port()),
    )
    .await;
    let kept = proxy.proxy.shared().snapshot.load().pools[0]
        .backend(&pod(1))
        .unwrap()
        .clone();
    let owners_before = owners(&proxy, &sample);
    dns.set_a(&pod(1), &[Ipv4Addr::new(127, 0, 0, 2)]);
    eventually("cache-1's keys reach its new address", WAIT, || async {
        get(&proxy.url(&key1)).await.backend() == "cache-1-moved"
    })
    .await;
    assert_eq!(
        owners(&proxy, &sample),
        owners_before,
        "no key moves when a pod changes IP"
    );
    let snapshot = proxy.proxy.shared().snapshot.load();
    assert!(Arc::ptr_eq(
        &kept,
        snapshot.pools[0].backend(&pod(1)).unwrap()
    ));
    assert_eq!(moved_pod.requests(), 1);

    // DNS fails, then answers that the service has no records: both keep the last good set,
    // and are counted and shown.
    let set = ids(&proxy);
    for (breaks, shown) in [
        ("a failed lookup", "SERVFAIL"),
        ("an empty answer", "does not exist (NXDOMAIN)"),
    ] {
        match shown {
            "SERVFAIL" => dns.fail(true),
            _ => {
                dns.fail(false);
                dns.set_srv(SERVICE, &[]);
            }
        }
        let errors = scraped(&proxy, "shardgate_discovery_errors_total", "cache").await;
        metric_reaches(
            &proxy,
            "shardgate_discovery_errors_total",
            &[("pool", "cache")],
            errors + 3.0,
        )
        .await;
        assert_eq!(ids(&proxy), set, "{breaks} empties nothing");
        let source = &api_pool(&proxy).await["discovery"][0];
        let error = source["error"].as_str().unwrap_or_default();
        assert!(error.contains(shown), "{source}");
        assert_eq!(source["backends"], 4, "the last good answer's count stays");
    }
    assert_eq!(get(&proxy.url(&to_new)).await.status, StatusCode::OK);

    // A pod leaves: only its keys move. It had series of its own until then.
    let text = scrape(&proxy).await;
    for name in [
        "shardgate_requests_total",
        "shardgate_health_checks_total",
        "shardgate_upstream_duration_seconds_count",
    ] {
        assert!(
            series(&text, name, &[("backend", &pod(0))])
                .next()
                .is_some(),
            "{name} has no series for {} yet",
            pod(0)
        );
    }
    let before = owners(&proxy, &many);
    set_srv(&[1, 2, 3]);
    eventually("cache-0 leaves", WAIT, || async {
        !ids(&proxy).contains(&pod(0))
    })
    .await;
    let after = owners(&proxy, &many);
    for i in 0..many.len() {
        if before[i] != pod(0) {
            assert_eq!(
                before[i], after[i],
                "{} moved though its owner stayed",
                many[i]
            );
        }
    }
    // It served requests and was health-checked: none of its series stay behind.
    let text = scrape(&proxy).await;
    let left: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("backend=\"{}\"", pod(0))))
        .collect();
    assert!(left.is_empty(), "{left:#?}");
    assert!(text.contains(&format!("backend=\"{}\"", pod(1))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_are_one_backend_each_and_host_names_are_followed_without_a_reload() {
    let dns = TestDns::start().await;
    // Two pods on one port, as A records give it: 127.0.0.2 and 127.0.0.3.
    let first = TestBackend::start_on("pod-a", "127.0.0.2:0".parse().unwrap()).await;
    let port = first.addr.port();
    let second = TestBackend::start_on("pod-b", SocketAddr::new([127, 0, 0, 3].into(), port)).await;
    dns.set_a(
        "pods.test",
        &[Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
    );
    // A listed backend by host name.
    let named = TestBackend::start("named").await;
    dns.set_a("named.test", &[Ipv4Addr::LOCALHOST]);
    let config = ConfigToml::new().resolver(dns.addr, FAST).pool(
        pool("p", &[])
            .backend("named", format!("named.test:{}", named.addr.port()))
            .discover_a("pods.test", port, FAST),
    );
    let proxy = TestProxy::start(&config.toml()).await;
    let a = format!("127.0.0.2:{port}");
    let b = format!("127.0.0.3:{port}");
    assert_eq!(ids(&proxy), [a.clone(), b.clone(), "named".to_owned()]);
    for (id, pod) in [(&a, &first), (&b, &second)] {
        let key = proxy.key_owned_by(id, "/k");
        assert_eq!(get(&proxy.url(&key)).await.backend(), pod.id);
    }
    let key = proxy.key_owned_by("named", "/k");
    assert_eq!(get(&proxy.url(&key)).await.backend(), "named");

    // The host name now points elsewhere: requests follow within an interval, no reload.
    let moved = TestBackend::start_on(
        "named-moved",
        SocketAddr::new([127, 0, 0, 4].into(), named.addr.port()),
    )
    .await;
    dns.set_a("named.test", &[Ipv4Addr::new(127, 0, 0, 4)]);
    eventually("the host name's new address is used", WAIT, || async {
        get(&proxy.url(&key)).await.backend() == "named-moved"
    })
    .await;
    assert!(moved.requests() >= 1);
    let pool_view = api_pool(&proxy).await;
    let sources: Vec<&str> = pool_view["discovery"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        [format!("a pods.test:{port}")],
        "one entry per source"
    );
    let named_view = pool_view["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "named")
        .unwrap()
        .clone();
    assert_eq!(
        named_view["address"],
        format!("named.test:{}", named.addr.port())
    );
    assert_eq!(
        named_view["connects_to"],
        serde_json::json!([format!("127.0.0.4:{}", named.addr.port())])
    );
    let reloads = sum(&scrape(&proxy).await, "shardgate_config_reloads_total", &[]);
    assert_eq!(reloads, 0.0);

    // A pod's IP goes away: with kind = "a" its id goes with it (use SRV to keep keys).
    dns.set_a("pods.test", &[Ipv4Addr::new(127, 0, 0, 3)]);
    eventually("127.0.0.2 leaves", WAIT, || async {
        !ids(&proxy).contains(&a)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_dns_fails_at_startup_starts_unready_and_fills_in_when_dns_answers() {
    let dns = TestDns::start().await;
    let cache = TestBackend::start("cache-0").await;
    dns.set_a(&pod(0), &[Ipv4Addr::LOCALHOST]);
    dns.fail(true);
    let config = ConfigToml::new()
        .resolver(dns.addr, FAST)
        .pool(pool("cache", &[]).discover_srv(SERVICE, FAST));
    let proxy = TestProxy::start(&config.toml()).await;
    assert!(ids(&proxy).is_empty());
    let ready = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    assert_eq!(
        ready.body,
        "not ready: pool cache has no backends yet (no usable DNS answer; see /api/backends)\n"
    );
    get(&proxy.url("/x"))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "no_backend");
    assert!(scraped(&proxy, "shardgate_discovery_errors_total", "cache").await >= 1.0);
    let api = api_pool(&proxy).await["discovery"][0].clone();
    assert_eq!(api["source"], format!("srv {SERVICE}"));
    assert!(api["backends"].is_null(), "{api}");
    let error = api["error"].as_str().unwrap_or_default();
    assert!(error.contains("answered SERVFAIL"), "{api}");

    dns.set_srv(SERVICE, &[(&pod(0), cache.addr.port())]);
    dns.fail(false);
    eventually("the pool fills in", WAIT, || async {
        get(&proxy.admin_url("/readyz")).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(get(&proxy.url("/x")).await.backend(), "cache-0");
    let api = api_pool(&proxy).await["discovery"][0].clone();
    assert_eq!(
        (api["backends"].as_u64(), api["error"].is_null()),
        (Some(1), true),
        "{api}"
    );

    // Stopping the proxy stops its lookups.
    drop(proxy);
    eventually("no more lookups once stopped", WAIT, || async {
        let before = dns.queries();
        tokio::time::sleep(FAST * 3).await;
        dns.queries() == before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_discovered_backends_and_a_removed_source_takes_its_backends_along() {
    let dns = TestDns::start().await;
    let cache = TestBackend::start("cache-0").await;
    dns.set_a(&pod(0), &[Ipv4Addr::LOCALHOST]);
    dns.set_srv(SERVICE, &[(&pod(0), cache.addr.port())]);
    let listed = backends(2).await;
    let with = |bs: &[&TestBackend], discover: bool| {
        let mut p = pool("cache", bs);
        if discover {
            p = p.discover_srv(SERVICE, FAST);
        }
        ConfigToml::new().resolver(dns.addr, FAST).pool(p).toml()
    };
    let proxy = TestProxy::start(&with(&[&listed[0]], true)).await;
    assert_eq!(ids(&proxy), ["b0".to_owned(), pod(0)]);
    let kept = proxy.proxy.shared().snapshot.load().pools[0]
        .backend(&pod(0))
        .unwrap()
        .clone();

    std::fs::write(&proxy.config_path, with(&refs(&listed), true)).unwrap();
    eventually("the edit adds b1", WAIT, || async {
        ids(&proxy).contains(&"b1".to_owned())
    })
    .await;
    assert_eq!(ids(&proxy), ["b0".to_owned(), "b1".into(), pod(0)]);
    let snapshot = proxy.proxy.shared().snapshot.load();
    assert!(Arc::ptr_eq(
        &kept,
        snapshot.pools[0].backend(&pod(0)).unwrap()
    ));

    // An edit that misspells the only source of a serving pool would empty it: refused, and
    // the running config keeps serving. Renaming the pool in the same edit is no way around
    // it: the new pool would be empty while the serving one goes.
    for (n, name) in [(1.0, "cache"), (2.0, "renamed")] {
        let misspelt = ConfigToml::new()
            .resolver(dns.addr, FAST)
            .pool(pool(name, &[]).discover_srv("_http._tcp.cahce.test", FAST));
        std::fs::write(&proxy.config_path, misspelt.toml()).unwrap();
        // The edit is refused.
        metric_reaches(
            &proxy,
            "shardgate_config_reloads_total",
            &[("result", "failure")],
            n,
        )
        .await;
        let message = proxy.proxy.shared().reload.last_message();
        let why = format!(
            "pool `{name}` would have no backends: none is listed and its DNS sources have not \
             answered: srv _http._tcp.cahce.test (_http._tcp.cahce.test does not exist (NXDOMAIN))"
        );
        assert!(message.contains(&why), "{message}");
        assert_eq!(ids(&proxy), ["b0".to_owned(), "b1".into(), pod(0)]);
    }

    // DNS fails, and an edit changes the source's interval: what it found stays.
    dns.fail(true);
    let slower = with(&refs(&listed), true).replace("interval = \"200ms\"", "interval = \"300ms\"");
    assert_ne!(slower, with(&refs(&listed), true));
    std::fs::write(&proxy.config_path, slower).unwrap();
    // The edit is applied.
    metric_reaches(
        &proxy,
        "shardgate_config_reloads_total",
        &[("result", "success")],
        2.0,
    )
    .await;
    assert_eq!(ids(&proxy), ["b0".to_owned(), "b1".into(), pod(0)]);
    let message = proxy.proxy.shared().reload.last_message();
    assert!(
        message.contains(&format!(
            "settings changed: resolver: interval 200ms → 300ms; cache: discover \
             [srv {SERVICE} every 200ms weight 1] → [srv {SERVICE} every 300ms weight 1]"
        )),
        "{message}"
    );
    dns.fail(false);

    std::fs::write(&proxy.config_path, with(&refs(&listed), false)).unwrap();
    eventually(
        "the discovered backend goes with its source",
        WAIT,
        || async { ids(&proxy) == ["b0", "b1"] },
    )
    .await;
    // And its series with it.
    let text = scrape(&proxy).await;
    let left: Vec<&str> = text.lines().filter(|l| l.contains(&pod(0))).collect();
    assert!(left.is_empty(), "{left:#?}");
    assert!(text.contains("backend=\"b0\""));
}
