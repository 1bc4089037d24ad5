//! Ring and request-path micro-benchmarks.
//!
//! Keys cycle through a set far larger than the ring's bucket count so lookups hit memory the
//! way real traffic does, rather than one hot cache line.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Uri};
use shardgate::config::{BackendConfig, Config, DEFAULT_VNODES, PoolConfig};
use shardgate::routing::key::{self, KeySource, RequestView};
use shardgate::routing::ring::{Flavor, Node, Ring, hash_key};
use shardgate::state::shared::Shared;
use shardgate::state::snapshot::Snapshot;

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:11211", i / 250, i % 250))
        .collect()
}

fn keys() -> Vec<String> {
    (0..65_536)
        .map(|i| format!("/objects/{i}/thumbnail.jpg"))
        .collect()
}

/// The keys laid out back to back in one buffer, as key bytes sit in a request head the proxy
/// has just parsed: hot in cache, unlike 65k separately allocated `String`s.
fn key_arena(keys: &[String]) -> (Vec<u8>, Vec<(u32, u32)>) {
    let mut arena = Vec::new();
    let mut spans = Vec::with_capacity(keys.len());
    for k in keys {
        spans.push((arena.len() as u32, k.len() as u32));
        arena.extend_from_slice(k.as_bytes());
    }
    (arena, spans)
}

fn ring_lookup(c: &mut Criterion) {
    let keys = keys();
    let (arena, spans) = key_arena(&keys);
    let mut g = c.benchmark_group("ring/hash+lookup");
    g.throughput(Throughput::Elements(1));
    for n in [10, 100, 1000] {
        let ids = ids(n);
        let nodes: Vec<Node<'_>> = ids.iter().map(|id| Node { id, weight: 1 }).collect();
        let ring = Ring::build(&nodes, DEFAULT_VNODES);
        let hashes: Vec<u64> = keys.iter().map(|k| hash_key(k.as_bytes())).collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 65_535;
                let (start, len) = spans[i];
                let key = &arena[start as usize..(start + len) as usize];
                ring.owner(hash_key(black_box(key)))
            })
        });
        g.bench_with_input(BenchmarkId::new("lookup-only", n), &ring, |b, ring| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 65_535;
                ring.owner(black_box(hashes[i]))
            })
        });
        g.bench_with_input(BenchmarkId::new("3-successors", n), &ring, |b, ring| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 65_535;
                ring.successors(black_box(hashes[i]))
                    .take(3)
                    .fold(0, |a, x| a ^ x)
            })
        });
    }
    g.finish();
}

fn ring_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring/build");
    g.sample_size(20);
    for n in [10, 100, 1000] {
        let ids = ids(n);
        let nodes: Vec<Node<'_>> = ids.iter().map(|id| Node { id, weight: 1 }).collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &nodes, |b, nodes| {
            b.iter(|| Ring::build(black_box(nodes), DEFAULT_VNODES))
        });
    }
    g.finish();
}

fn key_extraction(c: &mut Criterion) {
    let uri: Uri = "/users/42/avatar.png?size=large&user=alice"
        .parse()
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("Shop.Example.com:8080"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    headers.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; lang=en; session=abcdef0123456789"),
    );
    headers.insert("x-shard-key", HeaderValue::from_static("tenant-42"));
    let view = RequestView {
        uri: &uri,
        headers: &headers,
        client_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        believed: &[],
    };
    let mut g = c.benchmark_group("key/extract+hash");
    for source in [
        "path",
        "uri",
        "path_prefix:2",
        "host",
        "header:x-shard-key",
        "cookie:session",
        "query:user",
        "client_ip",
    ] {
        let sources = [KeySource::parse(source).unwrap()];
        g.bench_function(source, |b| {
            b.iter(|| key::hash(black_box(&sources), black_box(view), Flavor::Xxh3))
        });
    }
    let chain = [
        KeySource::parse("header:x-missing").unwrap(),
        KeySource::parse("cookie:missing").unwrap(),
        KeySource::Path,
    ];
    g.bench_function("fallback-chain-3", |b| {
        b.iter(|| key::hash(black_box(&chain), black_box(view), Flavor::Xxh3))
    });
    g.finish();
}

fn snapshot_pick(c: &mut Criterion) {
    let ids = ids(100);
    let backends = ids
        .iter()
        .map(|id| BackendConfig {
            id: id.clone(),
            address: id.clone(),
            weight: 1,
        })
        .collect();
    let config = Config {
        admin: Default::default(),
        server: Default::default(),
        resolver: Default::default(),
        pools: vec![PoolConfig::new(
            "cache",
            "127.0.0.1:0".parse().unwrap(),
            backends,
        )],
    };
    let metrics = std::sync::Arc::new(shardgate::state::metrics::Metrics::unregistered());
    let shared = Shared::new(Snapshot::build(config, None, &metrics), metrics);
    let hashes: Vec<u64> = keys().iter().map(|k| hash_key(k.as_bytes())).collect();
    c.bench_function("snapshot/load+pool+pick (100 backends)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 65_535;
            let snap = shared.snapshot.load();
            let pool = snap.pool(black_box("cache")).unwrap();
            pool.pick(black_box(hashes[i])).map(|b| b.id.len())
        })
    });
}

criterion_group!(
    benches,
    ring_lookup,
    ring_build,
    key_extraction,
    snapshot_pick
);
criterion_main!(benches);
