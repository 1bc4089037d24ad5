//! Health checks and failover over real sockets: real backends are stopped and restarted, and
//! the tests watch what clients see.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use shardgate::config::DEFAULT_VNODES;
use shardgate::routing::ring::{Node, Ring, hash_key};
use shardgate::state::backend::State;

/// Fast checks so the tests run in seconds: detection ≤ fall × interval + timeout = 500 ms.
fn fast() -> HealthToml {
    health(Check::Http)
        .interval(Duration::from_millis(150))
        .timeout(Duration::from_millis(50))
        .fall(3)
        .rise(2)
}

/// A pool "cache" in front of `bs` with fast checks.
fn cache(bs: &[TestBackend]) -> PoolToml {
    pool("cache", &refs(bs)).health(fast())
}

async fn wait_state(proxy: &TestProxy, id: &str, want: State, within: Duration) -> Duration {
    let start = Instant::now();
    eventually(&format!("{id} is {want}"), within, || async {
        proxy.state(id) == want
    })
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_backend_is_detected_in_time_and_comes_back() {
    let bs = backends(3).await;
    let proxy = TestProxy::start(&cache(&bs).toml()).await;
    let (interval, timeout) = (Duration::from_millis(150), Duration::from_millis(50));
    // Allowance for scheduling on a loaded 2-core machine; the bound itself is the contract.
    let slack = Duration::from_millis(250);
    eventually("first checks ran", WAIT, || async {
        bs[1].health_checks() > 0
    })
    .await;

    let addr = bs[1].addr;
    bs[1].kill();
    let down = wait_state(&proxy, "b1", State::Down, interval * 3 + timeout + slack).await;
    eprintln!(
        "killed backend detected down after {down:?} (bound {:?})",
        interval * 3 + timeout
    );

    let back = TestBackend::start_on("b1", addr).await;
    let up = wait_state(&proxy, "b1", State::Up, interval * 2 + timeout + slack).await;
    eprintln!(
        "restarted backend back up after {up:?} (bound {:?})",
        interval * 2 + timeout
    );
    let a = get(&proxy.url(&proxy.key_owned_by("b1", "/probe/"))).await;
    assert_eq!(a.backend(), "b1", "its keys are back");
    drop(back);

    // An HTTP check that answers an unexpected status counts as a failure too.
    bs[2].set_health(500);
    wait_state(&proxy, "b2", State::Down, interval * 3 + timeout + slack).await;
    bs[2].set_health(204);
    wait_state(&proxy, "b2", State::Up, interval * 2 + timeout + slack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_down_the_mapping_equals_a_ring_without_it_and_exactly_its_keys_return() {
    let bs = backends(5).await;
    let proxy = TestProxy::start(&cache(&bs).toml()).await;
    let keys: Vec<String> = (0..10_000).map(|i| format!("/k/{i}")).collect();
    let before = route_all(&proxy, &keys).await;

    let addr = bs[3].addr;
    bs[3].kill();
    wait_state(&proxy, "b3", State::Down, WAIT).await;
    let during = route_all(&proxy, &keys).await;

    // The ring the operator would get by deleting b3 from the config.
    let ids: Vec<String> = ["b0", "b1", "b2", "b4"].map(String::from).to_vec();
    let nodes: Vec<Node<'_>> = ids.iter().map(|id| Node { id, weight: 1 }).collect();
    let without = Ring::build(&nodes, DEFAULT_VNODES);
    let mut receivers = HashMap::new();
    let mut moved = 0;
    for (i, key) in keys.iter().enumerate() {
        let expected = &ids[without.owner(hash_key(key.as_bytes())).unwrap()];
        assert_eq!(
            &during[i], expected,
            "{key}: differs from a ring without b3"
        );
        if before[i] == "b3" {
            moved += 1;
            *receivers.entry(during[i].clone()).or_insert(0) += 1;
        } else {
            assert_eq!(during[i], before[i], "{key} moved but b3 never owned it");
        }
    }
    eprintln!(
        "b3 down: {moved} of {} keys moved, to {receivers:?}",
        keys.len()
    );
    assert!(moved > 1000, "b3 owned only {moved} keys");
    assert_eq!(
        receivers.len(),
        4,
        "b3's keys spread over every other backend"
    );

    let _back = TestBackend::start_on("b3", addr).await;
    wait_state(&proxy, "b3", State::Up, WAIT).await;
    let after = route_all(&proxy, &keys).await;
    assert!(after == before, "after recovery every key is where it was");
}

/// Steady GET load from 8 clients with random keys; kill `bs[victim]` after a while.
/// Returns (successes, failures as (status, x-shardgate-error, key owner before the kill)).
async fn kill_under_load(
    proxy: &TestProxy,
    bs: &[TestBackend],
    victim: usize,
) -> (usize, Vec<(StatusCode, String, String)>) {
    let url = Arc::new(proxy.url(""));
    let stop = Arc::new(AtomicBool::new(false));
    let owners: Arc<HashMap<String, String>> = Arc::new(
        (0..2000)
            .map(|i| {
                let k = format!("/load/{i}");
                let o = proxy.ring_owner(&k);
                (k, o)
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (url, stop, owners) = (url.clone(), stop.clone(), owners.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let (mut ok, mut failed) = (0, Vec::new());
            let mut i = w * 7919;
            while !stop.load(Ordering::Relaxed) {
                i = (i * 31 + 17) % 2000;
                let key = format!("/load/{i}");
                let req = http::Request::get(format!("{url}{key}"))
                    .body(empty())
                    .unwrap();
                let resp = client.request(req).await.expect("proxy answers");
                let status = resp.status();
                let kind = resp
                    .headers()
                    .get("x-shardgate-error")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                if status.is_success() && body.is_ok() {
                    ok += 1;
                } else {
                    failed.push((status, kind, owners[&key].clone()));
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await; // steady state before the kill
    bs[victim].kill();
    wait_state(proxy, &bs[victim].id, State::Down, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // and steady state after it
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_idempotent_retries_a_kill_under_load_costs_no_request() {
    let bs = backends(4).await;
    let proxy = TestProxy::start(&cache(&bs).retries(1).retry_idempotent(true).toml()).await;
    let (ok, failed) = kill_under_load(&proxy, &bs, 2).await;
    eprintln!(
        "retries=1 retry_idempotent=true: {ok} ok, {} failed",
        failed.len()
    );
    assert!(ok > 100, "too little load to say anything: {ok}");
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_connect_retries_only_requests_in_flight_on_the_killed_backend_fail() {
    let bs = backends(4).await;
    let proxy = TestProxy::start(&cache(&bs).retries(1).toml()).await;
    let (ok, failed) = kill_under_load(&proxy, &bs, 2).await;
    eprintln!("retries=1: {ok} ok, {} failed: {failed:?}", failed.len());
    assert!(ok > 100, "too little load to say anything: {ok}");
    // At most one request per client was on the wire to b2 when it died.
    assert!(failed.len() <= 8, "{failed:?}");
    for (status, kind, owner) in &failed {
        assert_eq!(owner, "b2", "a key of a healthy backend failed");
        assert_eq!(*status, StatusCode::BAD_GATEWAY);
        assert_eq!(kind, "upstream", "connect failures must have been retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_failures_stay_on_the_killed_backends_keys() {
    let bs = backends(4).await;
    let proxy = TestProxy::start(&cache(&bs).retries(0).toml()).await;
    let (ok, failed) = kill_under_load(&proxy, &bs, 2).await;
    eprintln!("retries=0: {ok} ok, {} failed", failed.len());
    assert!(ok > 100, "too little load to say anything: {ok}");
    assert!(
        !failed.is_empty(),
        "a kill without retries must cost some requests"
    );
    for (status, _, owner) in &failed {
        assert_eq!(owner, "b2", "a key of a healthy backend failed");
        assert_eq!(*status, StatusCode::BAD_GATEWAY);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_failures_take_a_backend_out_before_the_next_check() {
    let bs = backends(3).await;
    // Active checks far apart: only live traffic can notice the kill in time.
    let checks = health(Check::Tcp)
        .interval(Duration::from_secs(3600))
        .passive_failures(2);
    let proxy = TestProxy::start(&pool("cache", &refs(&bs)).retries(1).health(checks).toml()).await;
    let key = proxy.key_owned_by("b0", "/probe/");
    bs[0].kill();
    for attempt in 1..=2 {
        let a = get(&proxy.url(&key)).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "attempt {attempt} was retried elsewhere"
        );
        assert_ne!(a.backend(), "b0");
    }
    assert_eq!(
        proxy.state("b0"),
        State::Down,
        "2 connect failures mark it down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_gives_503_saying_so() {
    let bs = backends(2).await;
    let proxy = TestProxy::start(&cache(&bs).toml()).await;
    for b in &bs {
        b.set_health(503);
    }
    for b in &bs {
        wait_state(&proxy, &b.id, State::Down, WAIT).await;
    }
    let a = get(&proxy.url("/x")).await;
    a.assert_error(StatusCode::SERVICE_UNAVAILABLE, "no_backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_routes_to_the_ring_owner_when_all_are_down() {
    let bs = backends(3).await;
    let fail_open = pool("cache", &refs(&bs)).health(fast().all_down(AllDown::Owner));
    let proxy = TestProxy::start(&fail_open.toml()).await;
    for b in &bs {
        b.set_health(503); // failing checks, but still serving requests
    }
    for b in &bs {
        wait_state(&proxy, &b.id, State::Down, WAIT).await;
    }
    for id in ["b0", "b1", "b2"] {
        let key = proxy.key_owned_by(id, "/probe/");
        let a = get(&proxy.url(&key)).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.backend(), id, "{key} goes to its owner");
    }
    // As soon as one is healthy again, fail-open ends and it takes every key.
    bs[1].set_health(200);
    wait_state(&proxy, "b1", State::Up, WAIT).await;
    let a = get(&proxy.url(&proxy.key_owned_by("b0", "/probe/"))).await;
    assert_eq!(a.backend(), "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_backend_does_not_flap_the_routing() {
    let bs = backends(2).await;
    let proxy = TestProxy::start(&cache(&bs).toml()).await;
    bs[0].set_health(0); // every other check fails: never `fall` failures in a row
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2000) {
        assert_eq!(
            proxy.state("b0"),
            State::Up,
            "flipped down by a flapping check"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(bs[0].health_checks() >= 10, "checks kept running");

    // Once down, the same flapping never brings it back: never `rise` successes in a row.
    bs[0].set_health(500);
    wait_state(&proxy, "b0", State::Down, WAIT).await;
    bs[0].set_health(0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            proxy.state("b0"),
            State::Down,
            "flipped up by a flapping check"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_backend_is_skipped_like_a_down_one_but_still_checked() {
    let bs = backends(3).await;
    let proxy = TestProxy::start(&cache(&bs).toml()).await;
    let keys: Vec<String> = (0..600).map(|i| format!("/d/{i}")).collect();
    let before = route_all(&proxy, &keys).await;
    let snap = proxy.proxy.shared().snapshot.load();
    snap.pools[0].backend("b1").unwrap().set_drained(true);
    let during = route_all(&proxy, &keys).await;
    let mut receivers = HashSet::new();
    for i in 0..keys.len() {
        if before[i] == "b1" {
            assert_ne!(during[i], "b1");
            receivers.insert(during[i].clone());
        } else {
            assert_eq!(during[i], before[i]);
        }
    }
    assert_eq!(receivers.len(), 2);
    let checks = bs[1].health_checks();
    eventually("drained backend still checked", WAIT, || async {
        bs[1].health_checks() > checks
    })
    .await;
    snap.pools[0].backend("b1").unwrap().set_drained(false);
    assert!(route_all(&proxy, &keys).await == before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_upload_does_not_mark_the_backend_down() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    let bs = backends(2).await;
    let checks = health(Check::Tcp)
        .interval(Duration::from_secs(3600))
        .passive_failures(1);
    let config = pool("cache", &refs(&bs))
        .request_timeout(Duration::from_millis(200))
        .health(checks);
    let proxy = TestProxy::start(&config.toml()).await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
    tokio::spawn(async move {
        for _ in 0..6 {
            if tx.send_data(Bytes::from_static(b"slowly ")).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let req = http::Request::post(proxy.url("/upload"))
        .header("content-length", "42")
        .body(body.boxed())
        .unwrap();
    let a = send(&client(), req).await;
    // `request_timeout` starts once the request is sent: a 600 ms upload under a 200 ms
    // timeout goes through.
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    for b in &bs {
        assert_eq!(
            proxy.state(&b.id),
            State::Up,
            "a slow upload blamed {}",
            b.id
        );
    }
}
