//! Golden vectors: a fixed fleet and fixed keys with their committed backends. If this fails,
//! the key → backend mapping changed, which moves cache keys for every user who upgrades.
//! Change it only on purpose, note it in docs/changelog.md, and regenerate with
//! `SHARDGATE_BLESS=1 cargo test --test golden`.
//!
//! The nginx ring has vectors of its own (`ring-nginx.txt`); that mapping is nginx's, proven
//! against a live nginx by tests/nginx_ring.rs, and must never change.

use shardgate::config::DEFAULT_VNODES;
use shardgate::routing::ring::{Flavor, Node, Ring};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/ring.txt");
const NGINX_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/ring-nginx.txt");

fn fleet() -> Vec<(String, u32)> {
    let mut f: Vec<(String, u32)> = (0..10).map(|i| (format!("cache-{i}"), 1)).collect();
    f[4].1 = 2;
    f[9].1 = 3;
    f.push(("10.0.0.17:11211".into(), 1));
    f
}

fn keys() -> Vec<String> {
    let mut k: Vec<String> = (0..200).map(|i| format!("/users/{i}")).collect();
    k.extend(
        [
            "",
            "/",
            "alice",
            "bob",
            "tenant-42",
            "ünïcødé",
            "/a/b/c?d=e&f=g",
            "127.0.0.1",
        ]
        .map(String::from),
    );
    k
}

/// nginx `server` lines: host:port text and weight.
fn nginx_fleet() -> Vec<(String, u32)> {
    let mut f: Vec<(String, u32)> = (0..6)
        .map(|i| (format!("10.0.0.{}:11211", i + 1), 1))
        .collect();
    f[2].1 = 3;
    f.push(("cache-6.cache.default.svc:8080".into(), 2));
    f.push(("[2001:db8::7]:11211".into(), 1));
    f
}

fn render(flavor: Flavor) -> String {
    let fleet = match flavor {
        Flavor::Xxh3 => fleet(),
        Flavor::Nginx => nginx_fleet(),
    };
    let nodes: Vec<Node<'_>> = fleet
        .iter()
        .map(|(id, w)| Node { id, weight: *w })
        .collect();
    let (ring, what) = match flavor {
        Flavor::Xxh3 => (
            Ring::build(&nodes, DEFAULT_VNODES),
            format!("vnodes {DEFAULT_VNODES}"),
        ),
        Flavor::Nginx => (Ring::build_nginx(&nodes), "ring = \"nginx\"".to_owned()),
    };
    let mut out = format!(
        "# key<TAB>owner<TAB>next two successors — {what}, fleet: {}\n",
        fleet
            .iter()
            .map(|(id, w)| format!("{id}×{w}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for key in keys() {
        let chain: Vec<&str> = ring
            .successors(ring.hash(key.as_bytes()))
            .take(3)
            .map(|i| nodes[i].id)
            .collect();
        out.push_str(&format!("{key:?}\t{}\n", chain.join("\t")));
    }
    out
}

#[test]
fn mapping_matches_committed_golden_vectors() {
    check(FILE, &render(Flavor::Xxh3));
}

#[test]
fn nginx_mapping_matches_committed_golden_vectors() {
    check(NGINX_FILE, &render(Flavor::Nginx));
}

fn check(file: &str, now: &str) {
    if std::env::var_os("SHARDGATE_BLESS").is_some() {
        std::fs::write(file, now).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(file).unwrap_or_else(|_| panic!("{file} is missing"));
    let changed: Vec<(&str, &str)> = committed
        .lines()
        .zip(now.lines())
        .filter(|(a, b)| a != b)
        .take(10)
        .collect();
    assert!(
        changed.is_empty() && committed.lines().count() == now.lines().count(),
        "the key → backend mapping changed (committed vs now, first 10):\n{}",
        changed
            .iter()
            .map(|(a, b)| format!("  {a}\n  {b}\n"))
            .collect::<String>()
    );
}
