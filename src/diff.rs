//! What a config change does to the keyspace: per backend, the share of keys before and after,
//! and the exact fraction of keys that change backend. Used by the reload log line and by
//! `shardgate diff`, so the preview and the real reload report the same numbers.

use std::io::Write;

use crate::config::{Config, PoolConfig};
use crate::ring::{Ring, moved_fraction};
use crate::snapshot::build_ring;

#[derive(Debug, Clone, PartialEq)]
pub struct PoolDiff {
    pub pool: String,
    pub change: PoolChange,
    pub backends: Vec<BackendDiff>,
    /// Fraction of the keyspace whose backend changes (0 for added or removed pools).
    pub moved: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolChange {
    Added,
    Removed,
    Kept,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendDiff {
    pub id: String,
    pub before: Option<Side>,
    pub after: Option<Side>,
}

/// A backend as one of the two configs has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    pub address: String,
    pub weight: u32,
    pub share: f64,
}

impl BackendDiff {
    /// "added", "removed", "changed" (address or weight) or "" (same).
    pub fn change(&self) -> &'static str {
        match (&self.before, &self.after) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            (Some(a), Some(b)) if a.address != b.address || a.weight != b.weight => "changed",
            _ => "",
        }
    }
}

impl PoolDiff {
    pub fn count(&self, change: &str) -> usize {
        self.backends
            .iter()
            .filter(|b| b.change() == change)
            .count()
    }

    /// One line: "cache: +1 -0 ~0 backends, 19.80% of keys move".
    pub fn summary(&self) -> String {
        match self.change {
            PoolChange::Added => {
                format!("{}: new pool, {} backends", self.pool, self.backends.len())
            }
            PoolChange::Removed => format!("{}: pool removed", self.pool),
            PoolChange::Kept => format!(
                "{}: +{} -{} ~{} backends, {:.2}% of keys move",
                self.pool,
                self.count("added"),
                self.count("removed"),
                self.count("changed"),
                self.moved * 100.0
            ),
        }
    }
}

/// Compare two configs' pools (matched by name).
pub fn configs(old: &Config, new: &Config) -> Vec<PoolDiff> {
    let old_rings: Vec<(&PoolConfig, Ring)> =
        old.pools.iter().map(|p| (p, build_ring(p))).collect();
    let new_rings: Vec<(&PoolConfig, Ring)> =
        new.pools.iter().map(|p| (p, build_ring(p))).collect();
    pools(&as_refs(&old_rings), &as_refs(&new_rings))
}

fn as_refs<'a>(v: &'a [(&'a PoolConfig, Ring)]) -> Vec<(&'a PoolConfig, &'a Ring)> {
    v.iter().map(|(p, r)| (*p, r)).collect()
}

/// Compare pools given with their already built rings.
pub fn pools(old: &[(&PoolConfig, &Ring)], new: &[(&PoolConfig, &Ring)]) -> Vec<PoolDiff> {
    let mut out = Vec::new();
    for &(np, nr) in new {
        match old.iter().find(|(op, _)| op.name == np.name) {
            Some(&(op, or)) => out.push(pool(op, or, np, nr)),
            None => out.push(PoolDiff {
                pool: np.name.clone(),
                change: PoolChange::Added,
                backends: sides(np, nr)
                    .into_iter()
                    .map(|(id, s)| BackendDiff {
                        id,
                        before: None,
                        after: Some(s),
                    })
                    .collect(),
                moved: 0.0,
            }),
        }
    }
    for &(op, or) in old {
        if !new.iter().any(|(np, _)| np.name == op.name) {
            out.push(PoolDiff {
                pool: op.name.clone(),
                change: PoolChange::Removed,
                backends: sides(op, or)
                    .into_iter()
                    .map(|(id, s)| BackendDiff {
                        id,
                        before: Some(s),
                        after: None,
                    })
                    .collect(),
                moved: 0.0,
            });
        }
    }
    out
}

fn sides(p: &PoolConfig, ring: &Ring) -> Vec<(String, Side)> {
    p.backends
        .iter()
        .zip(ring.shares())
        .map(|(b, share)| {
            (
                b.id.clone(),
                Side {
                    address: b.address.clone(),
                    weight: b.weight,
                    share,
                },
            )
        })
        .collect()
}

fn pool(op: &PoolConfig, or: &Ring, np: &PoolConfig, nr: &Ring) -> PoolDiff {
    let before = sides(op, or);
    let mut after = sides(np, nr);
    let mut backends = Vec::with_capacity(before.len().max(after.len()));
    for (id, side) in before {
        let now = after
            .iter()
            .position(|(a, _)| *a == id)
            .map(|i| after.remove(i).1);
        backends.push(BackendDiff {
            id,
            before: Some(side),
            after: now,
        });
    }
    backends.extend(after.into_iter().map(|(id, s)| BackendDiff {
        id,
        before: None,
        after: Some(s),
    }));
    // A key "moves" when it lands on a different backend id; a changed address under the same
    // id keeps the keys (that is what stable ids are for).
    let moved = moved_fraction(or, nr, |i, j| op.backends[i].id == np.backends[j].id);
    PoolDiff {
        pool: np.name.clone(),
        change: PoolChange::Kept,
        backends,
        moved,
    }
}

/// The `shardgate diff` report.
pub fn render(diffs: &[PoolDiff], out: &mut impl Write) -> std::io::Result<()> {
    for d in diffs {
        writeln!(out, "pool {}", d.summary())?;
        writeln!(
            out,
            "  {:<24} {:>8} {:>8} {:>8}  change",
            "backend", "before", "after", "delta"
        )?;
        let pct = |s: &Option<Side>| s.as_ref().map_or(0.0, |s| s.share * 100.0);
        let cell = |s: &Option<Side>| {
            s.as_ref()
                .map_or("-".to_owned(), |s| format!("{:.2}%", s.share * 100.0))
        };
        for b in &d.backends {
            let detail = match (b.change(), &b.before, &b.after) {
                ("changed", Some(x), Some(y)) if x.address != y.address => {
                    format!("changed: address {} -> {}", x.address, y.address)
                }
                ("changed", Some(x), Some(y)) => {
                    format!("changed: weight {} -> {}", x.weight, y.weight)
                }
                (c, _, _) => c.to_owned(),
            };
            writeln!(
                out,
                "  {:<24} {:>8} {:>8} {:>+7.2}%  {}",
                b.id,
                cell(&b.before),
                cell(&b.after),
                pct(&b.after) - pct(&b.before),
                detail
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Config, PoolConfig};

    fn config(backends: &[(&str, &str, u32)]) -> Config {
        let bs = backends
            .iter()
            .map(|(id, address, weight)| BackendConfig {
                id: id.to_string(),
                address: address.to_string(),
                weight: *weight,
            })
            .collect();
        Config {
            admin: Default::default(),
            server: Default::default(),
            pools: vec![PoolConfig::new("p", "127.0.0.1:0".parse().unwrap(), bs)],
        }
    }

    #[test]
    fn moving_an_address_under_a_stable_id_moves_no_key() {
        let old = config(&[("a", "10.0.0.1:1", 1), ("b", "10.0.0.2:1", 1)]);
        let new = config(&[("a", "10.0.0.9:1", 1), ("b", "10.0.0.2:1", 1)]);
        let d = &configs(&old, &new)[0];
        assert_eq!(d.moved, 0.0);
        assert_eq!(d.count("changed"), 1);
        assert_eq!(d.summary(), "p: +0 -0 ~1 backends, 0.00% of keys move");
    }

    #[test]
    fn raising_a_weight_moves_keys_only_to_that_backend() {
        let old = config(&[("a", "h:1", 1), ("b", "h:2", 1), ("c", "h:3", 1)]);
        let new = config(&[("a", "h:1", 2), ("b", "h:2", 1), ("c", "h:3", 1)]);
        let d = &configs(&old, &new)[0];
        let a = &d.backends[0];
        let gained = a.after.as_ref().unwrap().share - a.before.as_ref().unwrap().share;
        assert!((d.moved - gained).abs() < 1e-9, "{} vs {gained}", d.moved);
        assert!((d.moved - (0.5 - 1.0 / 3.0)).abs() < 0.03, "{}", d.moved);
        let mut out = Vec::new();
        render(&configs(&old, &new), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("changed: weight 1 -> 2"), "{text}");
    }
}
