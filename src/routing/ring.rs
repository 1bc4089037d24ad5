//! The consistent-hash ring: pure data, no I/O, no async.
//!
//! Every backend owns `vnodes × weight` points on a 64-bit circle. Point `i` of a backend is
//! `xxh3_64_with_seed(i as u64 little-endian, seed = xxh3_64(id))`, so a backend's points depend
//! only on its id (never on its position in the config), and raising a weight only *adds* points. A key is hashed with xxh3_64 and owned
//! by the first point at or after its hash, wrapping around at the top.
//!
//! Lookups never binary-search the whole ring: `index` maps the top bits of a hash to a bucket,
//! and there are at least twice as many buckets as points. Most buckets (over 60%) hold no point:
//! their entry names the owner directly, so the lookup is one memory access. Otherwise the entry
//! is the bucket's first point and the lookup scans about one point. That keeps lookups flat
//! even with the large point counts that good balance needs.
//!
//! A pool may instead use nginx's ring ([`Flavor::Nginx`], see [`Ring::build_nginx`]), so a fleet
//! that moves from nginx's `hash … consistent` keeps every key on the node it was on.
//!
//! Health is not the ring's business. A failed backend keeps its points; callers walk
//! [`Ring::successors`] past it. That makes "only the failed backend's keys move, and exactly they
//! come back" true by construction, and a health flip costs no rebuild.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A backend as the ring sees it: an identity and a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node<'a> {
    pub id: &'a str,
    pub weight: u32,
}

/// Hash a shard key the way the default ([`Flavor::Xxh3`]) ring does.
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Which ring a pool builds: where points go and how keys are hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// shardgate's own: `vnodes × weight` xxh3 points per backend, seeded by its id.
    #[default]
    Xxh3,
    /// nginx's `hash <key> consistent`: 160 CRC32 points per unit of weight, derived from the
    /// server's `host:port` text, and keys hashed with CRC32.
    Nginx,
}

/// Points per unit of weight on nginx's ring (fixed in nginx's source).
pub const NGINX_POINTS_PER_WEIGHT: u32 = 160;

impl Flavor {
    /// The key's position on this flavor's circle.
    #[inline]
    pub fn hash(self, key: &[u8]) -> u64 {
        match self {
            Flavor::Xxh3 => xxh3_64(key),
            // nginx compares 32-bit CRCs. In the high half of a u64 they keep their order, so
            // "first point at or after the key" means the same on both circles.
            Flavor::Nginx => u64::from(crc32fast::hash(key)) << 32,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Xxh3 => "xxh3",
            Flavor::Nginx => "nginx",
        }
    }
}

/// One point on the circle. Hash and owner sit together so a lookup touches one cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    hash: u64,
    owner: u32,
}

/// Marks an index entry that names an owner rather than a position. Positions stay below it
/// because the config layer caps a ring at 2^24 points.
const DIRECT: u32 = 1 << 31;

/// While building: an empty bucket above the last point, which wraps around to the lowest.
/// Never a final entry: owners stay below `!DIRECT` (the ring asserts fewer nodes).
const WRAPS: u32 = u32::MAX;

/// An immutable ring over `len()` backends, identified by their index in the slice given to
/// [`Ring::build`].
#[derive(Debug, Clone)]
pub struct Ring {
    /// Points in ascending hash order.
    points: Vec<Point>,
    /// One entry per bucket (hashes sharing their top bits). A bucket holding points has the
    /// position of its first point; an empty one has `DIRECT | owner`, the owner of the first
    /// point after it (wrapping), which owns every hash in the bucket.
    index: Vec<u32>,
    shift: u32,
    nodes: usize,
    /// Nodes that own at least one point: a successor walk has seen them all after this many.
    placed: usize,
    flavor: Flavor,
}

impl Ring {
    /// Build a ring. Nodes with weight 0 get no points. Ids must be unique (the config layer
    /// guarantees it); equal hashes are ordered by id so the result never depends on node order.
    ///
    /// Building is a counting sort on the bucket bits followed by an insertion sort inside each
    /// bucket (about one point each), so it is linear in the number of points; see
    /// `place_points`.
    pub fn build(nodes: &[Node<'_>], vnodes: u32) -> Ring {
        let total: usize = nodes
            .iter()
            .map(|n| n.weight as usize * vnodes as usize)
            .sum();
        assert!(
            total < DIRECT as usize && nodes.len() < DIRECT as usize,
            "ring too large: {total} points (the config layer caps this)"
        );
        // At least two buckets per point (2^bits >= 2 * total), so most buckets are empty and
        // resolve in one access.
        let bits = (total.max(1) * 2)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, 32);
        let shift = 64 - bits;
        let (points, index) = place_points(nodes, vnodes, total, bits);
        Ring {
            points,
            index,
            shift,
            nodes: nodes.len(),
            placed: if vnodes == 0 {
                0
            } else {
                nodes.iter().filter(|n| n.weight > 0).count()
            },
            flavor: Flavor::Xxh3,
        }
    }

    /// nginx's ring for `upstream { hash $key consistent; server <id> weight=<weight>; … }`,
    /// node `i` being the i-th `server` line: `Node::id` is the server's text as nginx sees it
    /// (`10.0.0.7:8080`, `cache-0.cache:11211`).
    ///
    /// As nginx builds it: each server gets `160 × weight` points; point `j` is
    /// `crc32(host, "\0", port, point j-1 as 4 little-endian bytes)` (0 before the first),
    /// with host and port split at the last `:`. Points are sorted
    /// by hash and of equal hashes only the first is kept. nginx sorts with the C library's
    /// `qsort`, which does not promise which of two equal hashes comes first; this keeps the
    /// earlier server's, so on a 32-bit collision (about one ring in a thousand at 2,400 points)
    /// one point may differ from a given nginx build.
    pub fn build_nginx(nodes: &[Node<'_>]) -> Ring {
        let mut points: Vec<Point> = Vec::new();
        for (owner, node) in nodes.iter().enumerate() {
            let count = node.weight as usize * NGINX_POINTS_PER_WEIGHT as usize;
            points.extend(nginx_points(node.id).take(count).map(|hash| Point {
                hash: u64::from(hash) << 32,
                owner: owner as u32,
            }));
        }
        assert!(
            points.len() < DIRECT as usize && nodes.len() < DIRECT as usize,
            "ring too large: {} points (the config layer caps this)",
            points.len()
        );
        // Stable: equal hashes stay in server order, and the first is the one kept.
        points.sort_by_key(|p| p.hash);
        points.dedup_by_key(|p| p.hash);
        let bits = (points.len().max(1) * 2)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, 32);
        let index = index_sorted(&points, bits);
        let mut owners = Seen::new(nodes.len());
        let placed = points
            .iter()
            .filter(|p| owners.insert(p.owner as usize))
            .count();
        Ring {
            points,
            index,
            shift: 64 - bits,
            nodes: nodes.len(),
            placed,
            flavor: Flavor::Nginx,
        }
    }

    /// Which ring this is.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// A key's position on this ring (its flavor's hash).
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.flavor.hash(key)
    }

    /// Number of points on the ring.
    pub(crate) fn points(&self) -> usize {
        self.points.len()
    }

    /// Position of the first point at or after `hash`, wrapping to 0. `None` on an empty ring.
    #[inline]
    fn position(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let mut b = (hash >> self.shift) as usize;
        // An empty bucket's answer is the first point of the next bucket that has any.
        while self.index[b] & DIRECT != 0 {
            b += 1;
            if b == self.index.len() {
                return Some(0);
            }
        }
        Some(self.scan(self.index[b] as usize, hash))
    }

    /// From a bucket's first point, the first point at or after `hash`. Points are sorted, so
    /// the scan needs no bucket end: it stops within the bucket or at the next bucket's first.
    #[inline]
    fn scan(&self, mut pos: usize, hash: u64) -> usize {
        while pos < self.points.len() && self.points[pos].hash < hash {
            pos += 1;
        }
        if pos == self.points.len() { 0 } else { pos }
    }

    /// The backend owning `hash`, or `None` on an empty ring.
    #[inline]
    pub fn owner(&self, hash: u64) -> Option<usize> {
        let entry = *self.index.get((hash >> self.shift) as usize)?;
        if self.points.is_empty() {
            return None;
        }
        if entry & DIRECT != 0 {
            return Some((entry & !DIRECT) as usize);
        }
        Some(self.points[self.scan(entry as usize, hash)].owner as usize)
    }

    /// Distinct backends in clockwise order from `hash`: the owner first, then the backends that
    /// take over if the ones before them are unavailable. Yields each backend with points once.
    #[inline]
    pub fn successors(&self, hash: u64) -> Successors<'_> {
        let start = self.position(hash).unwrap_or(0);
        Successors {
            ring: self,
            start,
            step: 0,
            left: self.placed,
            seen: Seen::new(self.nodes),
        }
    }

    /// The first backend clockwise from `hash` for which `usable` says yes.
    #[inline]
    pub fn first_usable(&self, hash: u64, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        // The common case, a usable owner, needs no successor bookkeeping (which allocates on
        // rings of more than 128 backends).
        let owner = self.owner(hash)?;
        if usable(owner) {
            return Some(owner);
        }
        self.successors(hash).find(|&i| usable(i))
    }

    /// Exact fraction of the keyspace each backend owns (sums to 1 on a non-empty ring).
    pub fn shares(&self) -> Vec<f64> {
        self.shares_with(|_| true)
    }

    /// Exact fraction of the keyspace each backend serves when only backends for which `usable`
    /// is true take traffic: an unusable backend's arcs go to the next usable one clockwise.
    /// All zero when nothing is usable.
    pub(crate) fn shares_with(&self, usable: impl Fn(usize) -> bool) -> Vec<f64> {
        let mut arcs = vec![0u128; self.nodes];
        let n = self.points.len();
        if n == 0 {
            return vec![0.0; self.nodes];
        }
        // Resolve each point's effective server by walking backwards from the end: the server of
        // point i is its owner if usable, else the server of point i+1 (wrapping).
        let mut server = vec![u32::MAX; n];
        // Find any usable point to seed the wrap-around.
        let Some(seed) = (0..n)
            .rev()
            .find(|&i| usable(self.points[i].owner as usize))
        else {
            return vec![0.0; self.nodes];
        };
        let mut next = self.points[seed].owner;
        for k in 0..n {
            let i = (seed + n - k) % n;
            let owner = self.points[i].owner;
            if usable(owner as usize) {
                next = owner;
            }
            server[i] = next;
        }
        for i in 0..n {
            let prev = self.points[if i == 0 { n - 1 } else { i - 1 }].hash;
            // Arc (prev, points[i]] belongs to point i; for i == 0 it wraps past u64::MAX.
            let arc = self.points[i].hash.wrapping_sub(prev) as u128;
            let arc = if n == 1 { 1u128 << 64 } else { arc };
            arcs[server[i] as usize] += arc;
        }
        let full = (1u128 << 64) as f64;
        arcs.into_iter().map(|a| a as f64 / full).collect()
    }
}

/// Point i of a node is xxh3(i, seed = xxh3(id)). Seeding by the id's full hash (rather than
/// hashing the id with seed i) keeps ids that differ in a few bits, such as short ones, from
/// producing overlapping point sets.
fn point_hashes(node: &Node<'_>, vnodes: u32) -> impl Iterator<Item = u64> {
    let seed = xxh3_64(node.id.as_bytes());
    (0..u64::from(node.weight) * u64::from(vnodes))
        .map(move |i| xxh3_64_with_seed(&i.to_le_bytes(), seed))
}

/// nginx's point hashes for one server, in the order nginx generates them (see
/// [`Ring::build_nginx`]): each CRC32 continues from the server's `host \0 port` prefix and ends
/// with the previous point's four bytes.
fn nginx_points(server: &str) -> impl Iterator<Item = u32> {
    let text = server.as_bytes();
    // (nginx also takes `unix:` socket paths whole as the host; backends here are host:port.)
    let (host, port) = match text.iter().rposition(|&b| b == b':') {
        Some(colon) => (&text[..colon], &text[colon + 1..]),
        None => (text, &b""[..]),
    };
    let mut base = crc32fast::Hasher::new();
    base.update(host);
    base.update(b"\0");
    base.update(port);
    let mut prev = 0u32;
    std::iter::repeat_with(move || {
        let mut h = base.clone();
        h.update(&prev.to_le_bytes());
        prev = h.finalize();
        prev
    })
}

/// The bucket index (see `Ring::index`) over points already in ring order.
fn index_sorted(points: &[Point], bits: u32) -> Vec<u32> {
    let shift = 64 - bits;
    let mut index = Vec::with_capacity(1 << bits);
    let mut pos = 0;
    for bucket in 0..1usize << bits {
        let start = pos;
        while pos < points.len() && (points[pos].hash >> shift) as usize == bucket {
            pos += 1;
        }
        index.push(if pos > start {
            start as u32
        } else {
            // Empty: owned by the first point above it, wrapping to the lowest.
            let above = points.get(pos).or(points.first());
            above.map_or(DIRECT, |p| DIRECT | p.owner)
        });
    }
    index
}

/// Every node's points in ring order, and the bucket index over their top `bits` bits (see
/// `Ring::index`). Equal hashes are ordered by id, so node order never matters.
///
/// Building is dominated by touching memory (a fresh page costs microseconds here), so this
/// keeps no second copy of the points: they are hashed twice (cheaper than 16 more bytes each)
/// and sorted by counting in two passes, first into slices by the top 8 bits, then each slice
/// (a few hundred points) through a small reused buffer, finishing each slice's buckets while
/// they are in cache. Each pass writes to few enough places at once to stay in cache.
fn place_points(
    nodes: &[Node<'_>],
    vnodes: u32,
    total: usize,
    bits: u32,
) -> (Vec<Point>, Vec<u32>) {
    let high = bits.min(8);
    let low = bits - high;
    let coarse = |h: u64| (h >> (64 - high)) as usize;
    // Ids are looked at only on a tie, which xxh3 makes rare.
    let before = |x: &Point, y: &Point| {
        x.hash < y.hash
            || (x.hash == y.hash && nodes[x.owner as usize].id < nodes[y.owner as usize].id)
    };
    let mut slice_end = vec![0u32; 1 << high];
    for node in nodes {
        for hash in point_hashes(node, vnodes) {
            slice_end[coarse(hash)] += 1;
        }
    }
    let mut sum = 0;
    for c in &mut slice_end {
        let n = *c;
        *c = sum;
        sum += n;
    }
    let mut points = crate::routing::hugepage::filled_vec(total, Point { hash: 0, owner: 0 });
    for (owner, node) in nodes.iter().enumerate() {
        for hash in point_hashes(node, vnodes) {
            let c = &mut slice_end[coarse(hash)];
            points[*c as usize] = Point {
                hash,
                owner: owner as u32,
            };
            *c += 1;
        }
    }

    let fine_mask = (1u64 << low) - 1;
    let fine = |p: &Point| ((p.hash >> (64 - bits)) & fine_mask) as usize;
    let mut index = crate::routing::hugepage::filled_vec(1 << bits, 0u32);
    let mut scratch = Vec::new();
    for (s, entries) in index.chunks_mut(1 << low).enumerate().rev() {
        let end = slice_end[s];
        let start = if s == 0 { 0 } else { slice_end[s - 1] };
        scratch.clear();
        scratch.extend_from_slice(&points[start as usize..end as usize]);
        for p in &scratch {
            entries[fine(p)] += 1;
        }
        let mut sum = start;
        for e in entries.iter_mut() {
            sum += *e;
            *e = sum;
        }
        // Back to front: each bucket's cursor runs down from its end to its start.
        for p in scratch.iter().rev() {
            let c = &mut entries[fine(p)];
            *c -= 1;
            points[*c as usize] = *p;
        }
        // The slice is now in bucket order; within a bucket (about one point) an insertion sort
        // finishes the job, at one comparison per point when the bucket is already in order.
        let slice = &mut points[start as usize..end as usize];
        for i in 1..slice.len() {
            let mut j = i;
            while j > 0 && before(&slice[j], &slice[j - 1]) {
                slice.swap(j, j - 1);
                j -= 1;
            }
        }
        // `entries` holds bucket starts; a bucket ends where the next one starts. An empty
        // bucket starts at the first point above it, whose owner owns the bucket (the slices
        // above are finished: this runs top down). Branch-free, as whether a bucket is empty
        // is a coin toss.
        let mut bucket_end = end;
        for entry in entries.iter_mut().rev() {
            let bucket_start = *entry;
            let above = points
                .get(bucket_start as usize)
                .map_or(WRAPS, |p| DIRECT | p.owner);
            *entry = if bucket_start == bucket_end {
                above
            } else {
                bucket_start
            };
            bucket_end = bucket_start;
        }
    }
    // The empty buckets above the last point belong to the lowest point, known only now.
    if let Some(lowest) = points.first() {
        for entry in index.iter_mut().rev().take_while(|e| **e == WRAPS) {
            *entry = DIRECT | lowest.owner;
        }
    }
    (points, index)
}

/// Exact fraction of the keyspace whose owner differs between ring `a` and ring `b`, from the
/// two rings' arcs (no sampling). `same(i, j)` says whether node `i` of `a` and node `j` of `b`
/// are the same backend. Linear in the number of points of both rings.
///
/// Rings of different flavors hash a key to unrelated places, so their arcs cannot be lined
/// up: a key stays only if both hashes happen to pick the same backend, which for independent
/// hashes has probability `Σ share_a(x) × share_b(x)`. That expectation is what is returned.
pub(crate) fn moved_fraction(a: &Ring, b: &Ring, same: impl Fn(usize, usize) -> bool) -> f64 {
    if a.flavor != b.flavor {
        let (sa, sb) = (a.shares(), b.shares());
        let stay: f64 = (0..a.nodes)
            .flat_map(|i| (0..b.nodes).map(move |j| (i, j)))
            .filter(|&(i, j)| same(i, j))
            .map(|(i, j)| sa[i] * sb[j])
            .sum();
        return (1.0 - stay).clamp(0.0, 1.0);
    }
    let (pa, pb) = (&a.points, &b.points);
    if pa.is_empty() || pb.is_empty() {
        return if pa.is_empty() && pb.is_empty() {
            0.0
        } else {
            1.0
        };
    }
    // Between two consecutive boundaries of the merged point lists both owners are constant:
    // the arc (prev, q] belongs, in each ring, to its first point at or after q.
    let last = pa[pa.len() - 1].hash.max(pb[pb.len() - 1].hash);
    let (mut i, mut j) = (0, 0);
    let mut prev = last;
    let mut first = true;
    let mut moved: u128 = 0;
    while i < pa.len() || j < pb.len() {
        let q = match (pa.get(i), pb.get(j)) {
            (Some(x), Some(y)) => x.hash.min(y.hash),
            (Some(x), None) => x.hash,
            (None, Some(y)) => y.hash,
            (None, None) => unreachable!(),
        };
        let oa = pa.get(i).unwrap_or(&pa[0]).owner as usize;
        let ob = pb.get(j).unwrap_or(&pb[0]).owner as usize;
        // The first arc wraps past the top of the circle; if every point sits on one hash it is
        // the whole circle.
        let arc: u128 = if first && q == last {
            1 << 64
        } else {
            u128::from(q.wrapping_sub(prev))
        };
        if !same(oa, ob) {
            moved += arc;
        }
        first = false;
        prev = q;
        while i < pa.len() && pa[i].hash == q {
            i += 1;
        }
        while j < pb.len() && pb[j].hash == q {
            j += 1;
        }
    }
    moved as f64 / (1u128 << 64) as f64
}

/// Iterator over distinct successors; see [`Ring::successors`].
pub struct Successors<'a> {
    ring: &'a Ring,
    start: usize,
    step: usize,
    /// Distinct nodes not yet yielded. At 0 the walk ends instead of scanning the rest of the
    /// ring (up to 16.7M points) for nodes it has already yielded: every request of a pool whose
    /// backends are all down walks until it has seen them all, no further.
    left: usize,
    seen: Seen,
}

impl Iterator for Successors<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        let n = self.ring.points.len();
        while self.left > 0 && self.step < n {
            let mut pos = self.start + self.step;
            if pos >= n {
                pos -= n;
            }
            self.step += 1;
            let owner = self.ring.points[pos].owner as usize;
            if self.seen.insert(owner) {
                self.left -= 1;
                return Some(owner);
            }
        }
        None
    }
}

/// Set of backend indexes already yielded. Most pools have at most 128 backends, which fit in
/// two words on the stack; larger pools fall back to a heap bitmap on first use.
enum Seen {
    Small(u128),
    Large(Vec<u64>),
}

impl Seen {
    fn new(nodes: usize) -> Seen {
        if nodes <= 128 {
            Seen::Small(0)
        } else {
            Seen::Large(vec![0; nodes.div_ceil(64)])
        }
    }

    /// Returns true if `i` was not in the set.
    #[inline]
    fn insert(&mut self, i: usize) -> bool {
        match self {
            Seen::Small(bits) => {
                let mask = 1u128 << i;
                let fresh = *bits & mask == 0;
                *bits |= mask;
                fresh
            }
            Seen::Large(words) => {
                let (w, mask) = (i / 64, 1u64 << (i % 64));
                let fresh = words[w] & mask == 0;
                words[w] |= mask;
                fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn nodes(ids: &[String]) -> Vec<Node<'_>> {
        ids.iter().map(|id| Node { id, weight: 1 }).collect()
    }

    #[test]
    fn short_ids_get_fair_shares() {
        // Regression: with points at xxh3(id, seed = i), ids of one to three bytes differ in a
        // few input bits and their point sets overlapped; one id got 0.66x its share.
        let ids: Vec<String> = ('a'..='z')
            .chain('0'..='9')
            .map(String::from)
            .chain(["-", "v-", "--d", "bb3"].map(String::from))
            .collect();
        let ring = Ring::build(&nodes(&ids), 1024);
        let mean = 1.0 / ids.len() as f64;
        for (id, share) in ids.iter().zip(ring.shares()) {
            assert!(
                (share / mean - 1.0).abs() < 0.2,
                "{id} owns {:.3}x the mean",
                share / mean
            );
        }
    }

    #[test]
    fn moved_fraction_is_exact() {
        let all = ids(10);
        let full = Ring::build(&nodes(&all), 64);
        assert_eq!(moved_fraction(&full, &full, |i, j| all[i] == all[j]), 0.0);
        // Removing one backend moves exactly its share.
        let rest: Vec<String> = all[1..].to_vec();
        let without = Ring::build(&nodes(&rest), 64);
        let moved = moved_fraction(&full, &without, |i, j| all[i] == rest[j]);
        assert!((moved - full.shares()[0]).abs() < 1e-12, "{moved}");
        // And it agrees with sampling.
        let sample = 200_000;
        let differ = (0..sample)
            .map(|k| hash_key(format!("k{k}").as_bytes()))
            .filter(|&h| all[full.owner(h).unwrap()] != rest[without.owner(h).unwrap()])
            .count();
        assert!((differ as f64 / sample as f64 - moved).abs() < 0.005);
        // Nothing in common: everything moves.
        let other = ids(3).iter().map(|s| format!("x{s}")).collect::<Vec<_>>();
        let disjoint = Ring::build(&nodes(&other), 64);
        assert_eq!(moved_fraction(&full, &disjoint, |_, _| false), 1.0);
    }

    #[test]
    fn empty_ring_has_no_owner() {
        let ring = Ring::build(&[], 160);
        assert_eq!(ring.owner(42), None);
        assert_eq!(ring.successors(42).count(), 0);
        assert!(ring.shares().is_empty());
    }

    #[test]
    fn single_node_owns_everything() {
        let ids = ids(1);
        let ring = Ring::build(&nodes(&ids), 1);
        for h in [0, 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(ring.owner(h), Some(0));
        }
        assert_eq!(ring.shares(), vec![1.0]);
    }

    #[test]
    fn lookup_matches_bisection() {
        let ids = ids(37);
        let ring = Ring::build(&nodes(&ids), 50);
        for k in 0..20_000u64 {
            let h = hash_key(&k.to_le_bytes());
            let pos = ring.points.partition_point(|p| p.hash < h);
            let pos = if pos == ring.points.len() { 0 } else { pos };
            assert_eq!(ring.owner(h), Some(ring.points[pos].owner as usize));
        }
        // Edges: exactly on a point, just past the last point, zero.
        for p in ring.points.iter().take(50) {
            let pos = ring.points.partition_point(|x| x.hash < p.hash);
            assert_eq!(ring.owner(p.hash), Some(ring.points[pos].owner as usize));
        }
        let first = Some(ring.points[0].owner as usize);
        assert_eq!(ring.owner(u64::MAX), first);
        assert_eq!(ring.owner(0), first);
    }

    #[test]
    fn every_ring_size_agrees_with_bisection() {
        // Tiny rings have fewer buckets than the first sort pass has slices; big ones split
        // into many. Owner, first successor and bisection must agree everywhere, edges included.
        for (n, vnodes) in [(1, 1), (2, 1), (3, 2), (5, 7), (37, 50), (300, 20)] {
            let ids = ids(n);
            let ring = Ring::build(&nodes(&ids), vnodes);
            assert!(ring.points.windows(2).all(|w| w[0].hash <= w[1].hash));
            let edges = ring
                .points
                .iter()
                .flat_map(|p| [p.hash, p.hash.wrapping_add(1)]);
            let probes = (0..5_000u64).map(|k| hash_key(&k.to_le_bytes()));
            for h in edges.chain(probes).chain([0, u64::MAX]) {
                let pos = ring.points.partition_point(|p| p.hash < h);
                let want = ring.points[if pos == ring.points.len() { 0 } else { pos }].owner;
                assert_eq!(
                    ring.owner(h),
                    Some(want as usize),
                    "n={n} vnodes={vnodes} h={h:#x}"
                );
                assert_eq!(ring.successors(h).next(), Some(want as usize));
            }
        }
    }

    #[test]
    fn a_walk_ends_once_every_node_was_seen() {
        // 8 nodes × 2048 points: seeing all 8 takes a few dozen steps, not 16384.
        let ids = ids(8);
        let ring = Ring::build(&nodes(&ids), 2048);
        for h in [0, 1 << 40, u64::MAX / 3, u64::MAX] {
            let mut walk = ring.successors(h);
            let all: Vec<usize> = walk.by_ref().collect();
            assert_eq!(all.len(), 8);
            assert!(
                walk.step < 1000,
                "walked {} of {} points",
                walk.step,
                ring.points()
            );
        }
    }

    #[test]
    fn successors_are_distinct_and_complete() {
        for n in [1, 5, 130, 300] {
            let ids = ids(n);
            let ring = Ring::build(&nodes(&ids), 20);
            let succ: Vec<usize> = ring.successors(hash_key(b"k")).collect();
            assert_eq!(succ.len(), n);
            let mut sorted = succ.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), n, "duplicates among successors for n={n}");
            assert_eq!(succ[0], ring.owner(hash_key(b"k")).unwrap());
        }
    }

    #[test]
    fn order_of_nodes_does_not_change_mapping() {
        let ids = ids(20);
        let forward = nodes(&ids);
        let mut reversed = forward.clone();
        reversed.reverse();
        let a = Ring::build(&forward, 40);
        let b = Ring::build(&reversed, 40);
        for k in 0..5_000u32 {
            let h = hash_key(format!("key-{k}").as_bytes());
            let ia = a.owner(h).unwrap();
            let ib = b.owner(h).unwrap();
            assert_eq!(forward[ia].id, reversed[ib].id);
        }
    }

    #[test]
    fn shares_sum_to_one_and_follow_health() {
        let ids = ids(10);
        let ring = Ring::build(&nodes(&ids), 100);
        let all: f64 = ring.shares().iter().sum();
        assert!((all - 1.0).abs() < 1e-9);
        let without_3 = ring.shares_with(|i| i != 3);
        assert_eq!(without_3[3], 0.0);
        assert!((without_3.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(ring.shares_with(|_| false).iter().all(|&s| s == 0.0));
    }

    #[test]
    fn nginx_ring_chains_crc32_points_and_looks_up_like_nginx() {
        let servers: Vec<String> = (0..5).map(|i| format!("127.0.0.1:{}", 8080 + i)).collect();
        let mut ns = nodes(&servers);
        ns[1].weight = 2;
        let ring = Ring::build_nginx(&ns);
        assert_eq!(ring.flavor(), Flavor::Nginx);
        assert_eq!(ring.points(), 6 * NGINX_POINTS_PER_WEIGHT as usize);
        // Point 0 of a server is crc32(host \0 port, 4 zero bytes), point 1 chains on point 0.
        let p0 = crc32fast::hash(b"127.0.0.1\x008080\0\0\0\0");
        let mut second = b"127.0.0.1\x008080".to_vec();
        second.extend_from_slice(&p0.to_le_bytes());
        let p1 = crc32fast::hash(&second);
        let mine: Vec<u64> = ring
            .points
            .iter()
            .filter(|p| p.owner == 0)
            .map(|p| p.hash)
            .collect();
        assert!(mine.contains(&(u64::from(p0) << 32)) && mine.contains(&(u64::from(p1) << 32)));
        // Lookup: the first point whose 32-bit hash is at or above crc32(key), wrapping.
        let hashes: Vec<u32> = ring.points.iter().map(|p| (p.hash >> 32) as u32).collect();
        for k in 0..5_000u32 {
            let key = format!("/k/{k}");
            let h = crc32fast::hash(key.as_bytes());
            let pos = hashes.partition_point(|&p| p < h) % hashes.len();
            let want = ring.points[pos].owner as usize;
            assert_eq!(ring.owner(ring.hash(key.as_bytes())), Some(want), "{key}");
            assert_eq!(
                ring.successors(ring.hash(key.as_bytes())).next(),
                Some(want)
            );
        }
        assert_eq!(ring.shares().iter().sum::<f64>().round(), 1.0);
    }

    #[test]
    fn moving_between_flavors_is_estimated_from_shares() {
        let servers: Vec<String> = (0..4).map(|i| format!("10.0.0.{i}:80")).collect();
        let xxh3 = Ring::build(&nodes(&servers), 256);
        let nginx = Ring::build_nginx(&nodes(&servers));
        let moved = moved_fraction(&xxh3, &nginx, |i, j| i == j);
        let sample = 100_000;
        let differ = (0..sample)
            .map(|k| format!("/k/{k}"))
            .filter(|k| {
                xxh3.owner(xxh3.hash(k.as_bytes())) != nginx.owner(nginx.hash(k.as_bytes()))
            })
            .count();
        // About 3/4 of the keys move between unrelated 4-backend rings.
        assert!(
            (differ as f64 / sample as f64 - moved).abs() < 0.01,
            "{moved}"
        );
    }

    #[test]
    fn nginx_ring_keeps_the_first_of_equal_points() {
        // The same server text twice gives identical points; nginx keeps one of each.
        let servers = ["10.0.0.1:80".to_owned(), "10.0.0.1:80".to_owned()];
        let ring = Ring::build_nginx(&nodes(&servers));
        assert_eq!(ring.points(), NGINX_POINTS_PER_WEIGHT as usize);
        assert!(ring.points.iter().all(|p| p.owner == 0));
        assert_eq!(ring.successors(0).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn weight_adds_points_and_share() {
        let ids = ids(4);
        let mut ns = nodes(&ids);
        ns[0].weight = 3;
        let ring = Ring::build(&ns, 200);
        assert_eq!(ring.points(), 6 * 200);
        let shares = ring.shares();
        assert!(
            (shares[0] - 0.5).abs() < 0.08,
            "weight-3 share {}",
            shares[0]
        );
    }
}
