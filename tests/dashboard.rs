//! The Grafana dashboard in deploy/grafana/ against a real scrape: every metric a panel queries
//! exists (a renamed metric would leave a panel silently empty), and every query is PromQL that
//! promtool accepts.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/shardgate.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the dashboard is JSON")
}

/// Every `expr` in the dashboard (panel targets and annotations).
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `shardgate_…` names a query reads.
fn metric_names(query: &str) -> BTreeSet<String> {
    query
        .match_indices("shardgate_")
        .map(|(i, _)| {
            query[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_panel_reads_the_datasource_variable_and_the_pool_filter_is_defined() {
    let d = dashboard();
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "pool"]);
    for panel in d["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} queries nothing");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_in_a_real_scrape() {
    // A proxy that has done a bit of everything the panels show: traffic over plain and TLS
    // pools, health checks, an applied reload, a backend host name to look up, a pool that
    // discovers its backends.
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["site.example".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("site.crt"), dir.path().join("site.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let bs = backends(3).await;
    let ms = std::time::Duration::from_millis(100);
    // A DNS server for a pool that discovers its backends.
    let dns = common::dns::TestDns::start().await;
    dns.set_srv(
        "_http._tcp.found.test",
        &[("b2.found.test", bs[2].addr.port())],
    );
    dns.set_a("b2.found.test", &[std::net::Ipv4Addr::LOCALHOST]);
    let checks = health(Check::Http).interval(ms).timeout(ms);
    let config = |weight: i64| {
        ConfigToml::new()
            .resolver(dns.addr, ms * 2)
            .pool(pool("web", &refs(&bs)).health(checks.clone()))
            .pool(pool("found", &[]).discover_srv("_http._tcp.found.test", ms * 2))
            .pool(
                pool("secure", &refs(&bs))
                    .tls(tls(&cert, &key))
                    .weight("b0", weight)
                    // A host name: the DNS lookup panel has its series.
                    .backend("named", format!("localhost:{}", bs[0].addr.port())),
            )
    };
    let proxy = TestProxy::start(&config(1).toml()).await;
    for i in 0..20 {
        get(&proxy.pool_url("web", &format!("/k/{i}"))).await;
    }
    std::fs::write(&proxy.config_path, config(2).toml()).unwrap();
    // A reload applied.
    metric_reaches(
        &proxy,
        "shardgate_config_reloads_total",
        &[("result", "success")],
        1.0,
    )
    .await;
    eventually("health checks ran", WAIT, || async {
        scrape(&proxy)
            .await
            .contains("shardgate_health_check_duration_seconds_bucket{")
    })
    .await;
    let text = scrape(&proxy).await;
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let has_series = |name: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
    };

    let mut all = Vec::new();
    queries(&dashboard(), &mut all);
    assert!(all.len() > 20, "{} queries", all.len());
    let mut missing = Vec::new();
    for query in &all {
        for name in metric_names(query) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| families.contains(base))
                .unwrap_or(&name);
            if !families.contains(family) || !has_series(&name) {
                missing.push(format!("{name} (in `{query}`)"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in the scrape:\n{}",
        missing.join("\n")
    );

    // And the queries are PromQL: promtool checks them as recording rules, with Grafana's
    // variables filled in as Grafana would.
    let Some(promtool) = tool(&["promtool"], "Debian package `prometheus`") else {
        return;
    };
    let rules: String = all
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let q = q.replace("$__rate_interval", "1m").replace("$pool", ".*");
            format!(
                "      - record: dashboard:q{i}\n        expr: {}\n",
                serde_json::to_string(&q).unwrap()
            )
        })
        .collect();
    let file = dir.path().join("rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
