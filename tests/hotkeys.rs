//! The hot-key view as an operator uses it: Zipf-shaped traffic through the proxy, then
//! `/api/hotkeys` names the hottest keys, their owners and where they go; key text only with
//! `expose_keys`, otherwise the hash the access log shows.

mod common;

use common::*;
use http::StatusCode;
use serde_json::Value;

/// Key `/item/k` sent `1000 / k` times for k = 1..=300 (exact Zipf counts, all distinct in the
/// top 21), interleaved so every key's requests are spread over the run.
fn zipf_requests() -> (Vec<String>, Vec<(String, usize)>) {
    let counts: Vec<(String, usize)> = (1..=300)
        .map(|k| (format!("/item/{k}"), 1000 / k))
        .collect();
    let mut requests = Vec::new();
    let mut round = 0;
    loop {
        let before = requests.len();
        for (key, n) in &counts {
            if round < *n {
                requests.push(key.clone());
            }
        }
        if requests.len() == before {
            break;
        }
        round += 1;
    }
    (requests, counts)
}

async fn hot_keys(proxy: &TestProxy) -> Value {
    let a = get(&proxy.admin_url("/api/hotkeys")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipf_traffic_names_its_true_top_keys_with_owner_and_target() {
    let bs = [
        TestBackend::start("b0").await,
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    ];
    let refs: Vec<&TestBackend> = bs.iter().collect();
    let proxy = TestProxy::start(&pool("cache", &refs).expose_keys(true).toml()).await;
    let (requests, counts) = zipf_requests();
    route_all(&proxy, &requests).await;

    let total = requests.len() as u64;
    eventually("the view has taken every request in", WAIT, || async {
        let v = hot_keys(&proxy).await;
        v["requests"] == total && v["keys"].as_array().unwrap().len() == 20
    })
    .await;
    let v = hot_keys(&proxy).await;
    assert_eq!(v["pool"], "cache");
    assert_eq!(v["expose_keys"], true);
    let keys = v["keys"].as_array().unwrap();
    let named: Vec<&str> = keys.iter().map(|k| k["key"].as_str().unwrap()).collect();
    let truth: Vec<&str> = counts.iter().take(20).map(|(k, _)| k.as_str()).collect();
    assert_eq!(named[..5], truth[..5], "the top 5, in order");
    let found = truth.iter().filter(|k| named.contains(k)).count();
    assert!(found >= 15, "{found} of the top 20: {named:?}");
    eprintln!("hot keys: {found} of the true top 20 named, top 5 exact, from {total} requests");
    for k in keys {
        let key = k["key"].as_str().unwrap();
        let sent = counts.iter().find(|(c, _)| c == key).unwrap().1 as u64;
        let estimate = k["requests"].as_u64().unwrap();
        assert!(estimate >= sent, "{key}: estimated {estimate}, sent {sent}");
        assert!(k["rate"].as_f64().unwrap() > 0.0);
        // Owner and target as /api/route says, and the hash the access log writes.
        let url = format!(
            "{}?key={}",
            proxy.admin_url("/api/route"),
            key.replace('/', "%2F")
        );
        let route: Value = serde_json::from_str(&get(&url).await.body).unwrap();
        assert_eq!(k["owner"], route["owner"], "{key}");
        assert_eq!(k["target"], route["target"], "{key}");
        assert_eq!(k["hash"], route["hash"], "{key}");
    }
    let top = &keys[0];
    let share = top["share"].as_f64().unwrap();
    assert!((share - 1000.0 / total as f64).abs() < 0.01, "{share}");
}

#[tokio::test]
async fn without_expose_keys_keys_are_shown_as_their_hash() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).toml()).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/secret/alice")).await.status, 200);
    }
    eventually("the key is tracked", WAIT, || async {
        !hot_keys(&proxy).await["keys"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    let v = hot_keys(&proxy).await;
    assert_eq!(v["expose_keys"], false);
    let k = &v["keys"][0];
    assert_eq!(k["key"], Value::Null);
    assert_eq!(k["requests"], 3);
    assert_eq!(
        k["hash"],
        format!(
            "{:016x}",
            shardgate::routing::ring::hash_key(b"/secret/alice")
        )
    );
    let page = get(&proxy.admin_url("/api/hotkeys?pool=cache")).await;
    assert!(!page.body.contains("alice"), "{}", page.body);
}

#[tokio::test]
async fn a_pool_without_the_view_says_so() {
    let b = TestBackend::start("b0").await;
    let proxy = TestProxy::start(&pool("cache", &[&b]).hot_keys(false).toml()).await;
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
    let a = get(&proxy.admin_url("/api/hotkeys")).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.body.contains("hot_keys = false"), "{}", a.body);
    let a = get(&proxy.admin_url("/api/hotkeys?pool=nope")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
}
