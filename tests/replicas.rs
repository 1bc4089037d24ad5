//! Replicas agree: two shardgate processes with the same config (their listed backends in
//! different orders, the rest discovered through DNS) send every key to the same backend,
//! before and after the fleet changes in DNS.

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::dns::TestDns;
use common::*;
use http::StatusCode;

const SERVICE: &str = "_http._tcp.cache.test";
const KEYS: usize = 10_000;

struct Replica {
    process: Running,
    base: String,
    admin: String,
    log: PathBuf,
}

fn start(dir: &std::path::Path, name: &str, config: ConfigToml) -> Replica {
    let (listen, admin) = (free_port(), free_port());
    let path = dir.join(format!("{name}.toml"));
    let log = dir.join(format!("{name}.log"));
    let text = config
        .admin_listen(format!("127.0.0.1:{admin}"))
        .toml()
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{listen}\""),
        );
    std::fs::write(&path, text).unwrap();
    let process = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["run", "-c", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    Replica {
        process,
        base: format!("http://127.0.0.1:{listen}"),
        admin: format!("http://127.0.0.1:{admin}"),
        log,
    }
}

/// How many of `a` and `b` are the same, place by place.
fn agreeing(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_route_ten_thousand_keys_alike_before_and_after_a_dns_change() {
    let dns = TestDns::start().await;
    let mut fleet = Vec::new();
    for i in 0..4 {
        fleet.push(TestBackend::start(&format!("cache-{i}")).await);
        dns.set_a(&format!("cache-{i}.cache.test"), &[Ipv4Addr::LOCALHOST]);
    }
    let set_srv = |pods: usize| {
        let names: Vec<String> = (0..pods).map(|i| format!("cache-{i}.cache.test")).collect();
        let records: Vec<(&str, u16)> = names
            .iter()
            .zip(&fleet)
            .map(|(n, b)| (n.as_str(), b.addr.port()))
            .collect();
        dns.set_srv(SERVICE, &records);
    };
    set_srv(3);
    let listed = backends(2).await;
    let config = |order: [&TestBackend; 2]| {
        ConfigToml::new()
            .resolver(dns.addr, Duration::from_millis(200))
            .pool(pool("p", &order).discover_srv(SERVICE, Duration::from_millis(200)))
    };
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = [
        start(dir.path(), "one", config([&listed[0], &listed[1]])),
        start(dir.path(), "two", config([&listed[1], &listed[0]])),
    ];
    for r in &replicas {
        wait_answering(&format!("{}/readyz", r.admin), WAIT).await;
        eventually("ready", WAIT, || async {
            get(&format!("{}/readyz", r.admin)).await.status == StatusCode::OK
        })
        .await;
    }

    let keys: Vec<String> = (0..KEYS).map(|i| format!("/user/{i}")).collect();
    let one = route_all_at(&replicas[0].base, &keys).await;
    let two = route_all_at(&replicas[1].base, &keys).await;
    let same = agreeing(&one, &two);
    println!("before the DNS change: {same} of {KEYS} keys go to the same backend");
    assert_eq!(same, KEYS);
    let mut used: Vec<&String> = one.iter().collect();
    used.sort();
    used.dedup();
    assert_eq!(used, ["b0", "b1", "cache-0", "cache-1", "cache-2"]);

    set_srv(4);
    for r in &replicas {
        eventually("cache-3 joins both", WAIT, || async {
            get(&format!("{}/api/backends", r.admin))
                .await
                .body
                .contains("cache-3.cache.test")
        })
        .await;
    }
    let one_after = route_all_at(&replicas[0].base, &keys).await;
    let two_after = route_all_at(&replicas[1].base, &keys).await;
    let same = agreeing(&one_after, &two_after);
    println!("after the DNS change: {same} of {KEYS} keys go to the same backend");
    assert_eq!(same, KEYS);

    // What moved went to the new pod, as much as the log line said would.
    let moved: Vec<usize> = (0..KEYS).filter(|&i| one[i] != one_after[i]).collect();
    assert!(moved.iter().all(|&i| one_after[i] == "cache-3"));
    let measured = moved.len() as f64 / KEYS as f64;
    for r in &replicas {
        let log = std::fs::read_to_string(&r.log).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("discovery changed the backends: p: +1 -0 ~0 backends"))
            .unwrap_or_else(|| panic!("no discovery line in\n{log}"));
        println!("{line}");
        assert!(
            line.contains("(added: cache-3.cache.test; removed: none)"),
            "{line}"
        );
        let percent: f64 = line
            .split(" backends, ")
            .nth(1)
            .and_then(|rest| rest.split('%').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no percentage in {line}"));
        println!("measured over {KEYS} keys: {:.2}% moved", measured * 100.0);
        assert!(
            (percent / 100.0 - measured).abs() < 0.02,
            "{line} vs {measured}"
        );
    }
    for r in &mut replicas {
        signal(&r.process, "TERM");
        assert!(wait_exit(&mut r.process, WAIT).success());
    }
}
