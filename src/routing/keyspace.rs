//! What a config change does to the keyspace: per backend, the share of keys before and after,
//! and the exact fraction of keys that change backend. Used by the reload log line and by
//! `shardgate diff`, so the preview and the real reload report the same numbers.
//!
//! Pure: each side is given as its backends and its already built ring (a reload has built the
//! new ring anyway), so nothing here knows about config files or running state.

use std::io::Write;

use crate::routing::ring::{Ring, moved_fraction};

/// A backend as one side of the comparison lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub(crate) id: &'a str,
    pub(crate) address: &'a str,
    pub(crate) weight: u32,
}

/// One pool as one side has it: `backends[i]` is node `i` of `ring`.
#[derive(Debug, Clone)]
pub(crate) struct Layout<'a> {
    pub(crate) name: &'a str,
    pub(crate) backends: Vec<Entry<'a>>,
    pub(crate) ring: &'a Ring,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolDiff {
    pub(crate) pool: String,
    pub(crate) change: PoolChange,
    pub(crate) backends: Vec<BackendDiff>,
    /// Fraction of the keyspace whose backend changes (0 for added or removed pools).
    pub(crate) moved: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolChange {
    Added,
    Removed,
    Kept,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BackendDiff {
    pub(crate) id: String,
    pub(crate) before: Option<Side>,
    pub(crate) after: Option<Side>,
}

/// A backend as one of the two configs has it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Side {
    pub(crate) address: String,
    pub(crate) weight: u32,
    pub(crate) share: f64,
}

/// How one backend differs between the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendChange<'a> {
    Added,
    Removed,
    /// Same id, new address: its keys stay (that is what stable ids are for).
    Readdressed {
        from: &'a str,
        to: &'a str,
    },
    /// Same id and address, new weight.
    Reweighted {
        from: u32,
        to: u32,
    },
    Unchanged,
}

impl BackendDiff {
    pub(crate) fn change(&self) -> BackendChange<'_> {
        match (&self.before, &self.after) {
            (None, _) => BackendChange::Added,
            (Some(_), None) => BackendChange::Removed,
            (Some(a), Some(b)) if a.address != b.address => BackendChange::Readdressed {
                from: &a.address,
                to: &b.address,
            },
            (Some(a), Some(b)) if a.weight != b.weight => BackendChange::Reweighted {
                from: a.weight,
                to: b.weight,
            },
            _ => BackendChange::Unchanged,
        }
    }
}

impl std::fmt::Display for BackendChange<'_> {
    /// The `change` column of `shardgate diff`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendChange::Added => f.write_str("added"),
            BackendChange::Removed => f.write_str("removed"),
            BackendChange::Readdressed { from, to } => write!(f, "changed: address {from} → {to}"),
            BackendChange::Reweighted { from, to } => write!(f, "changed: weight {from} → {to}"),
            BackendChange::Unchanged => Ok(()),
        }
    }
}

/// Backends added, removed and changed (address or weight) in one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) added: usize,
    pub(crate) removed: usize,
    pub(crate) changed: usize,
}

impl PoolDiff {
    pub(crate) fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for b in &self.backends {
            match b.change() {
                BackendChange::Added => c.added += 1,
                BackendChange::Removed => c.removed += 1,
                BackendChange::Readdressed { .. } | BackendChange::Reweighted { .. } => {
                    c.changed += 1
                }
                BackendChange::Unchanged => {}
            }
        }
        c
    }

    /// The backends added and removed, by id (the first 8 of each): "added: a, b; removed:
    /// none".
    pub(crate) fn named_changes(&self) -> String {
        let ids = |wanted: BackendChange<'_>| -> String {
            let ids: Vec<&str> = self
                .backends
                .iter()
                .filter(|b| b.change() == wanted)
                .map(|b| b.id.as_str())
                .collect();
            match ids.len() {
                0 => "none".to_owned(),
                n if n > 8 => format!("{} and {} more", ids[..8].join(", "), n - 8),
                _ => ids.join(", "),
            }
        };
        format!(
            "added: {}; removed: {}",
            ids(BackendChange::Added),
            ids(BackendChange::Removed)
        )
    }

    /// One line: "cache: +1 -0 ~0 backends, 19.80% of keys move".
    pub(crate) fn summary(&self) -> String {
        match self.change {
            PoolChange::Added => {
                let n = self.backends.len();
                let s = if n == 1 { "" } else { "s" };
                format!("{}: new pool, {n} backend{s}", self.pool)
            }
            PoolChange::Removed => format!("{}: pool removed", self.pool),
            PoolChange::Kept => {
                let c = self.counts();
                format!(
                    "{}: +{} -{} ~{} backends, {:.2}% of keys move",
                    self.pool,
                    c.added,
                    c.removed,
                    c.changed,
                    self.moved * 100.0
                )
            }
        }
    }
}

/// Compare two sides' pools, matched by name.
pub(crate) fn pools(old: &[Layout<'_>], new: &[Layout<'_>]) -> Vec<PoolDiff> {
    let mut out = Vec::new();
    for np in new {
        match old.iter().find(|op| op.name == np.name) {
            Some(op) => out.push(pool(op, np)),
            None => out.push(PoolDiff {
                pool: np.name.to_owned(),
                change: PoolChange::Added,
                backends: sides(np)
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
    for op in old {
        if !new.iter().any(|np| np.name == op.name) {
            out.push(PoolDiff {
                pool: op.name.to_owned(),
                change: PoolChange::Removed,
                backends: sides(op)
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

fn sides(p: &Layout<'_>) -> Vec<(String, Side)> {
    p.backends
        .iter()
        .zip(p.ring.shares())
        .map(|(b, share)| {
            (
                b.id.to_owned(),
                Side {
                    address: b.address.to_owned(),
                    weight: b.weight,
                    share,
                },
            )
        })
        .collect()
}

fn pool(op: &Layout<'_>, np: &Layout<'_>) -> PoolDiff {
    let before = sides(op);
    let mut after = sides(np);
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
    let moved = moved_fraction(op.ring, np.ring, |i, j| {
        op.backends[i].id == np.backends[j].id
    });
    PoolDiff {
        pool: np.name.to_owned(),
        change: PoolChange::Kept,
        backends,
        moved,
    }
}

/// The `shardgate diff` report.
pub(crate) fn render(diffs: &[PoolDiff], out: &mut impl Write) -> std::io::Result<()> {
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
            let line = format!(
                "  {:<24} {:>8} {:>8} {:>+7.2}%  {}",
                b.id,
                cell(&b.before),
                cell(&b.after),
                pct(&b.after) - pct(&b.before),
                b.change()
            );
            // No trailing blanks when nothing changed: a diff of two outputs stays clean.
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::ring::Node;

    type Backends<'a> = &'a [(&'a str, &'a str, u32)];

    fn ring(backends: Backends<'_>) -> Ring {
        let nodes: Vec<Node<'_>> = backends
            .iter()
            .map(|&(id, _, weight)| Node { id, weight })
            .collect();
        Ring::build(&nodes, 1024)
    }

    fn layout<'a>(backends: Backends<'a>, ring: &'a Ring) -> Layout<'a> {
        Layout {
            name: "p",
            backends: backends
                .iter()
                .map(|&(id, address, weight)| Entry {
                    id,
                    address,
                    weight,
                })
                .collect(),
            ring,
        }
    }

    fn configs(old: Backends<'_>, new: Backends<'_>) -> Vec<PoolDiff> {
        let (old_ring, new_ring) = (ring(old), ring(new));
        pools(&[layout(old, &old_ring)], &[layout(new, &new_ring)])
    }

    #[test]
    fn moving_an_address_under_a_stable_id_moves_no_key() {
        let old = [("a", "10.0.0.1:1", 1), ("b", "10.0.0.2:1", 1)];
        let new = [("a", "10.0.0.9:1", 1), ("b", "10.0.0.2:1", 1)];
        let d = &configs(&old, &new)[0];
        assert_eq!(d.moved, 0.0);
        assert_eq!(d.counts().changed, 1);
        assert_eq!(
            d.backends[0].change(),
            BackendChange::Readdressed {
                from: "10.0.0.1:1",
                to: "10.0.0.9:1"
            }
        );
        assert_eq!(d.summary(), "p: +0 -0 ~1 backends, 0.00% of keys move");
    }

    #[test]
    fn raising_a_weight_moves_keys_only_to_that_backend() {
        let old = [("a", "h:1", 1), ("b", "h:2", 1), ("c", "h:3", 1)];
        let new = [("a", "h:1", 2), ("b", "h:2", 1), ("c", "h:3", 1)];
        let d = &configs(&old, &new)[0];
        let a = &d.backends[0];
        let gained = a.after.as_ref().unwrap().share - a.before.as_ref().unwrap().share;
        assert!((d.moved - gained).abs() < 1e-9, "{} vs {gained}", d.moved);
        assert!((d.moved - (0.5 - 1.0 / 3.0)).abs() < 0.03, "{}", d.moved);
        let mut out = Vec::new();
        render(&configs(&old, &new), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("changed: weight 1 → 2"), "{text}");
    }
}
