//! Bounded loads (`balance_factor`) as a user sees them: a flood of one hot key next to normal
//! traffic. The key's owner never holds more than its bound, the overflow lands on the key's
//! own ring successors in order, the spills are counted, and `/api/route` shows the bound and
//! the load per candidate while it happens.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const HOT: usize = 24;
const BACKGROUND: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_flood_stays_under_the_owners_bound_and_spills_to_its_successors() {
    let bs = [
        TestBackend::start("b0").await,
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        TestBackend::start("b3").await,
    ];
    let refs: Vec<&TestBackend> = bs.iter().collect();
    let proxy = TestProxy::start(
        &pool("cache", &refs)
            .key(&["uri"])
            .balance_factor(1.25)
            .toml(),
    )
    .await;
    // Each request holds its backend for a while, so they are all in flight together.
    let hot = "/slow/600";
    let route_url = format!(
        "{}?key={}",
        proxy.admin_url("/api/route"),
        hot.replace('/', "%2F")
    );
    let route: serde_json::Value = serde_json::from_str(&get(&route_url).await.body).unwrap();
    let walk: Vec<String> = route["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    let owner = walk[0].clone();
    assert_eq!(route["balance"]["factor"], 1.25);

    let mut tasks = Vec::new();
    for i in 0..HOT + BACKGROUND {
        let url = if i % 4 == 3 {
            proxy.url(&format!("{hot}?other={i}"))
        } else {
            proxy.url(hot)
        };
        tasks.push(tokio::spawn(async move {
            let a = get(&url).await;
            assert_eq!(a.status, 200, "{url}: {}", a.body);
            (url.contains("other"), a.backend().to_owned())
        }));
    }
    // While they are in flight: the owner is at or under its bound every time we look.
    let mut peak = (0, 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r: serde_json::Value = serde_json::from_str(&get(&route_url).await.body).unwrap();
        let c = &r["chain"][0];
        let (load, bound) = (
            c["in_flight"].as_u64().unwrap(),
            c["bound"].as_u64().unwrap(),
        );
        assert!(
            load <= bound,
            "owner {owner}: {load} in flight, bound {bound}"
        );
        peak = peak.max((load, bound));
        if r["balance"]["in_flight"] == (HOT + BACKGROUND) as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood never was all in flight: {r}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut hot_by: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let (background, backend) = t.await.unwrap();
        if !background {
            *hot_by.entry(backend).or_default() += 1;
        }
    }
    // With 32 in flight over 4 backends the bound is ceil(1.25 × 33 / 4) = 11 at most.
    let on_owner = hot_by.get(&owner).copied().unwrap_or(0);
    assert!(
        (1..=11).contains(&on_owner),
        "{on_owner} hot requests on the owner"
    );
    // The spill went down the key's own walk: the backends used are the first ones of it.
    let used = walk.iter().take_while(|b| hot_by.contains_key(*b)).count();
    assert_eq!(
        used,
        hot_by.len(),
        "hot key went to {hot_by:?}, walk {walk:?}"
    );
    assert!(used > 1, "nothing spilled: {hot_by:?}");
    let spilled = HOT - on_owner;
    let scrape = scrape(&proxy).await;
    assert!(
        value(
            &scrape,
            "shardgate_balance_spills_total",
            &[("pool", "cache"), ("backend", &owner)]
        ) >= spilled as f64
    );
    eprintln!(
        "hot key: {HOT} requests with {BACKGROUND} others in flight; owner took {on_owner} \
         (peak {} in flight, bound {}), {spilled} spilled ({:.0}%) to {:?}",
        peak.0,
        peak.1,
        100.0 * spilled as f64 / HOT as f64,
        &walk[1..used]
    );

    // Load gone: the key is back on its owner alone.
    eventually("nothing in flight", WAIT, || async {
        let r: serde_json::Value = serde_json::from_str(&get(&route_url).await.body).unwrap();
        r["balance"]["in_flight"] == 0
    })
    .await;
    let a = get(&proxy.url(hot)).await;
    assert_eq!((a.status.as_u16(), a.backend()), (200, owner.as_str()));
}

/// Every way a request can end gives its place back: answered, failed over from a dead
/// backend, timed out, or abandoned by its client mid-wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_come_back_to_zero_whatever_ends_a_request() {
    let bs = [
        TestBackend::start("b0").await,
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    ];
    let refs: Vec<&TestBackend> = bs.iter().collect();
    let proxy = TestProxy::start(
        &pool("cache", &refs)
            .balance_factor(1.25)
            .retries(1)
            .request_timeout(Duration::from_millis(300))
            .toml(),
    )
    .await;
    let in_flight = || async {
        let r: serde_json::Value =
            serde_json::from_str(&get(&proxy.admin_url("/api/route?key=x")).await.body).unwrap();
        let per_backend: u64 = r["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["in_flight"].as_u64().unwrap())
            .sum();
        (r["balance"]["in_flight"].as_u64().unwrap(), per_backend)
    };
    // Answered.
    assert_eq!(get(&proxy.url("/a")).await.status, 200);
    // Timed out: 504 after request_timeout.
    assert_eq!(get(&proxy.url("/slow/2000")).await.status, 504);
    // Abandoned: the client gives up while the backend still works on it.
    let url = proxy.url("/slow/3000");
    let abandoned = tokio::spawn(async move { get(&url).await });
    eventually("the slow request is in flight", WAIT, || async {
        in_flight().await.0 == 1
    })
    .await;
    abandoned.abort();
    // Failed over: b0 is dead, its keys' first attempts fail to connect and go to the next.
    bs[0].kill();
    for i in 0..5 {
        let key = proxy.key_owned_by("b0", &format!("/dead-{i}-"));
        let a = get(&proxy.url(&key)).await;
        assert_eq!(a.status, 200, "{key}: {}", a.body);
        assert_ne!(a.backend(), "b0");
    }
    eventually("every count is back to zero", WAIT, || async {
        in_flight().await == (0, 0)
    })
    .await;
}

#[tokio::test]
async fn without_a_factor_route_shows_no_loads_and_nothing_is_counted() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
    let r: serde_json::Value =
        serde_json::from_str(&get(&proxy.admin_url("/api/route?key=x")).await.body).unwrap();
    assert!(r.get("balance").is_none(), "{r}");
    assert!(r["chain"][0].get("in_flight").is_none(), "{r}");
}
