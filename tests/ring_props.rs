//! Ring invariants as properties: minimal disruption on removal and addition, and independence
//! from the order backends are listed in.

use proptest::prelude::*;
use shardgate::config::DEFAULT_VNODES;
use shardgate::routing::ring::{Node, Ring, hash_key};

fn keys(n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| hash_key(format!("key-{i}").as_bytes()))
        .collect()
}

fn ring_of<'a>(ids: &'a [String], weights: &[u32]) -> (Vec<Node<'a>>, Ring) {
    let nodes: Vec<Node<'a>> = ids
        .iter()
        .zip(weights)
        .map(|(id, &weight)| Node { id, weight })
        .collect();
    let ring = Ring::build(&nodes, DEFAULT_VNODES);
    (nodes, ring)
}

fn id_strategy() -> impl Strategy<Value = Vec<String>> {
    prop::collection::hash_set("[a-z0-9.:-]{1,20}", 3..24).prop_map(|s| s.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Removing backend k moves exactly k's keys, each to the backend that the ring walk
    /// skipping k would pick, and spreads them over more than one other backend.
    #[test]
    fn removing_a_backend_moves_exactly_its_keys(ids in id_strategy(), pick in any::<prop::sample::Index>()) {
        let weights = vec![1; ids.len()];
        let (nodes, full) = ring_of(&ids, &weights);
        let k = pick.index(ids.len());
        let rest_ids: Vec<String> = ids.iter().enumerate().filter(|(i, _)| *i != k).map(|(_, s)| s.clone()).collect();
        let (rest_nodes, without) = ring_of(&rest_ids, &weights[1..]);
        let mut receivers = std::collections::HashSet::new();
        let mut moved = 0;
        for h in keys(4000) {
            let before = nodes[full.owner(h).unwrap()].id;
            let after = rest_nodes[without.owner(h).unwrap()].id;
            let skip_walk = nodes[full.first_usable(h, |i| i != k).unwrap()].id;
            prop_assert_eq!(after, skip_walk, "ring without k differs from walking past k");
            if before == ids[k] {
                moved += 1;
                receivers.insert(after);
            } else {
                prop_assert_eq!(before, after, "a key not owned by the removed backend moved");
            }
        }
        if moved >= 40 {
            prop_assert!(receivers.len() > 1, "{} moved keys all went to one backend", moved);
        }
    }

    /// Adding a backend to N moves only keys that the newcomer takes, about 1/(N+1) of them.
    #[test]
    fn adding_a_backend_moves_about_one_over_n_plus_one(ids in id_strategy()) {
        let n = ids.len() - 1;
        let weights = vec![1; ids.len()];
        let (old_nodes, old) = ring_of(&ids[..n], &weights[..n]);
        let (new_nodes, new) = ring_of(&ids, &weights);
        let newcomer = &ids[n];
        let exact = new.shares()[n];
        let expected = 1.0 / (n as f64 + 1.0);
        prop_assert!((exact - expected).abs() < expected * 0.2,
            "newcomer owns {exact:.4} of the keyspace, expected about {expected:.4}");
        let sample = keys(20_000);
        let mut moved = 0;
        for &h in &sample {
            let before = old_nodes[old.owner(h).unwrap()].id;
            let after = new_nodes[new.owner(h).unwrap()].id;
            if before != after {
                prop_assert_eq!(after, newcomer.as_str(), "a key moved to an old backend");
                moved += 1;
            }
        }
        let fraction = moved as f64 / sample.len() as f64;
        prop_assert!((fraction - exact).abs() < 0.01 + exact * 0.2,
            "sampled move fraction {fraction:.4} far from exact {exact:.4}");
    }

    /// The mapping depends on ids and weights, never on the order backends are listed.
    #[test]
    fn order_of_backends_does_not_matter(ids in id_strategy(), seed in any::<u64>()) {
        let weights: Vec<u32> = (0..ids.len()).map(|i| 1 + (i as u32 % 3)).collect();
        let (nodes, a) = ring_of(&ids, &weights);
        let mut order: Vec<usize> = (0..ids.len()).collect();
        // Deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..order.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            order.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let ids2: Vec<String> = order.iter().map(|&i| ids[i].clone()).collect();
        let w2: Vec<u32> = order.iter().map(|&i| weights[i]).collect();
        let (nodes2, b) = ring_of(&ids2, &w2);
        for h in keys(2000) {
            prop_assert_eq!(nodes[a.owner(h).unwrap()].id, nodes2[b.owner(h).unwrap()].id);
            let chain_a: Vec<&str> = a.successors(h).take(3).map(|i| nodes[i].id).collect();
            let chain_b: Vec<&str> = b.successors(h).take(3).map(|i| nodes2[i].id).collect();
            prop_assert_eq!(chain_a, chain_b);
        }
    }
}
