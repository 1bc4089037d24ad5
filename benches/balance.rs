//! Balance report: how much more than the mean share the busiest backend owns, at 100 equal
//! backends, over many id naming schemes. Prints a table; `cargo bench --bench balance`.
//! (Not a timing benchmark: the ring's shares are exact arc lengths, so this is deterministic.)

use shardgate::config::DEFAULT_VNODES;
use shardgate::routing::ring::{Node, Ring};

fn schemes(n: usize) -> Vec<(String, Vec<String>)> {
    let mut s: Vec<(String, Vec<String>)> = vec![
        (
            "cache-N".into(),
            (0..n).map(|i| format!("cache-{i}")).collect(),
        ),
        (
            "10.0.x.y:11211".into(),
            (0..n)
                .map(|i| format!("10.0.{}.{}:11211", i / 250, i % 250 + 1))
                .collect(),
        ),
        ("N".into(), (0..n).map(|i| i.to_string()).collect()),
        (
            "pod-N.svc".into(),
            (0..n)
                .map(|i| format!("redis-{i}.redis.default.svc.cluster.local:6379"))
                .collect(),
        ),
    ];
    for seed in 0..56u64 {
        // Pseudo-random ids, as hostnames of autoscaled instances look.
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let ids = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("ip-{:x}", x & 0xffff_ffff)
            })
            .collect();
        s.push((format!("random#{seed}"), ids));
    }
    s
}

fn worst_over_mean(ids: &[String], vnodes: u32) -> f64 {
    let nodes: Vec<Node<'_>> = ids.iter().map(|id| Node { id, weight: 1 }).collect();
    let ring = Ring::build(&nodes, vnodes);
    let shares = ring.shares();
    let max = shares.iter().cloned().fold(0.0, f64::max);
    max * ids.len() as f64
}

fn main() {
    // `cargo bench` passes flags like --bench; this report takes none.
    let n = 100;
    println!("busiest backend's share / mean share, {n} equal backends, 60 id schemes");
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>8}",
        "vnodes", "median", "p90", "max", ">1.10"
    );
    for (name, ids) in schemes(n).iter().take(4) {
        println!(
            "  {name:<16} default vnodes: {:.3}",
            worst_over_mean(ids, DEFAULT_VNODES)
        );
    }
    for vnodes in [160, 512, DEFAULT_VNODES, 2048] {
        let mut r: Vec<f64> = schemes(n)
            .iter()
            .map(|(_, ids)| worst_over_mean(ids, vnodes))
            .collect();
        r.sort_by(f64::total_cmp);
        let over = r.iter().filter(|&&x| x > 1.10).count();
        println!(
            "{:>7} {:>8.3} {:>8.3} {:>8.3} {:>5}/{}{}",
            vnodes,
            r[r.len() / 2],
            r[r.len() * 9 / 10],
            r[r.len() - 1],
            over,
            r.len(),
            if vnodes == DEFAULT_VNODES {
                "  (default)"
            } else {
                ""
            }
        );
    }
}
