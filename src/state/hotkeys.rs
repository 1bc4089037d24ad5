//! The hot-key view: which keys of a pool take the most requests over the last minute.
//!
//! A count-min sketch (Cormode and Muthukrishnan, 2005) counts every key in fixed memory:
//! [`DEPTH`] rows of [`WIDTH`] counters, a key adding one to a counter in each row and its
//! count being the smallest of the four (never below the true count, above it only by
//! collisions). Two sketches make a sliding window: the current minute and the one before,
//! weighted by how much of it still falls in the last [`WINDOW`] (the approximation Cloudflare
//! describes for its rate limiter; it assumes the previous minute's requests came evenly).
//!
//! Each thread counts into a stripe of its own (allocated on its first request), so a viral
//! key's counters are not cache lines every core writes; reading sums the stripes. A request
//! does four relaxed atomic adds and, only when its key's count is above the smallest tracked
//! one and the key is not tracked yet, offers the key to a bounded lock-free queue (full: the
//! offer is dropped). No lock and, unless key text is exposed and the key is a candidate, no
//! allocation. A tick once a second (`control`) turns the window over and takes the offers into
//! the tracked list; only it and the admin API take that list's lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::util::{lock, splitmix64};

/// Rows of the sketch: the estimate is the minimum over this many counters.
const DEPTH: usize = 4;
/// Counters per row. With 4 × 4096 counters per minute, the overestimate of a key is on average
/// 1/4096 of the minute's requests per row, and the minimum over four rows is far smaller.
const WIDTH: usize = 4096;
/// The window the view covers.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked; more than are shown, so a key ranked 20th is not lost to noise at the cut.
const TRACKED: usize = 64;
/// Slots of the tracked-key set the request path probes (a power of two, ≥ 2 × TRACKED).
const SLOTS: usize = 256;
/// Offers waiting for the tick; further ones are dropped until it runs.
const OFFERS: usize = 1024;
/// Longest key text kept (with `expose_keys`).
const KEY_TEXT: usize = 256;
/// Stripes per pool: threads beyond this many share stripes.
const STRIPES: usize = 16;

/// Which stripe the current thread counts into: threads take the next one as they first count.
fn stripe_of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// One pool's hot keys; kept across reloads with the pool.
#[derive(Debug)]
pub(crate) struct HotKeys {
    /// Windows are counted from here.
    born: Instant,
    /// Per stripe, the sketches of two windows: the current one is `[epoch % 2]`.
    stripes: Box<[OnceLock<Box<[Sketch; 2]>>]>,
    /// The current window's number since the proxy started.
    epoch: AtomicU64,
    /// Hashes of the tracked keys, open addressing; 0 is an empty slot.
    tracked: Box<[AtomicU64]>,
    /// A new key is offered only once its count in the current window and the request's
    /// stripe is above this: the smallest tracked key's once [`TRACKED`] keys are tracked, and
    /// at least twice the average counter (both per stripe in use).
    floor: AtomicU32,
    offers: ArrayQueue<Offer>,
    /// Keep key text (`expose_keys`), else hashes only.
    expose: AtomicBool,
    top: Mutex<Vec<Entry>>,
}

#[derive(Debug)]
struct Sketch {
    counters: Box<[AtomicU32]>,
}

#[derive(Debug)]
struct Offer {
    hash: u64,
    text: Option<Box<str>>,
}

#[derive(Debug, Clone)]
struct Entry {
    hash: u64,
    text: Option<Box<str>>,
}

/// A key as the view reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HotKey {
    /// The ring hash, as in the access log.
    pub(crate) hash: u64,
    /// The key as sent, with `expose_keys`.
    pub(crate) text: Option<String>,
    /// Estimated requests in the window.
    pub(crate) requests: u64,
}

/// The view at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Top {
    /// Requests the window holds (all keys).
    pub(crate) requests: u64,
    /// How much time the window covers so far: [`WINDOW`], or less since startup.
    pub(crate) covers: Duration,
    pub(crate) keys: Vec<HotKey>,
}

impl Sketch {
    fn new() -> Sketch {
        Sketch {
            counters: (0..DEPTH * WIDTH).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Count one more of the key with these cells; its estimate after counting.
    #[inline]
    fn add(&self, cells: &[usize; DEPTH]) -> u32 {
        let mut estimate = u32::MAX;
        for &c in cells {
            estimate = estimate.min(self.counters[c].fetch_add(1, Ordering::Relaxed) + 1);
        }
        estimate
    }

    /// Every key adds one to each row, so a row's sum is the number of requests counted.
    fn total(&self) -> u64 {
        self.counters[..WIDTH]
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum()
    }

    fn clear(&self) {
        for c in self.counters.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// The key's counter in each row: a row takes 12 bits of a remix of the hash (the nginx ring's
/// hashes have 32 bits of entropy, in the high half).
#[inline]
fn cells(hash: u64) -> [usize; DEPTH] {
    let mut state = hash;
    let mixed = splitmix64(&mut state);
    std::array::from_fn(|row| row * WIDTH + ((mixed >> (row * 16)) as usize & (WIDTH - 1)))
}

/// The key's first slot in the tracked set, from mixed bits for the same reason.
#[inline]
fn slot(hash: u64) -> usize {
    ((hash ^ (hash >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize & (SLOTS - 1)
}

impl HotKeys {
    pub(crate) fn new(expose: bool) -> HotKeys {
        HotKeys {
            born: Instant::now(),
            stripes: (0..STRIPES).map(|_| OnceLock::new()).collect(),
            epoch: AtomicU64::new(0),
            tracked: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            floor: AtomicU32::new(0),
            offers: ArrayQueue::new(OFFERS),
            expose: AtomicBool::new(expose),
            top: Mutex::new(Vec::new()),
        }
    }

    /// Show key text from now on (or stop: text already kept is dropped at the next tick).
    pub(crate) fn set_expose(&self, expose: bool) {
        self.expose.store(expose, Ordering::Relaxed);
    }

    /// Count one request for the key `text` with ring hash `hash`. The request path's part.
    #[inline]
    pub(crate) fn record(&self, hash: u64, text: &[u8]) {
        let cells = cells(hash);
        let epoch = self.epoch.load(Ordering::Relaxed);
        let stripe = self.stripes[stripe_of_thread()]
            .get_or_init(|| Box::new([Sketch::new(), Sketch::new()]));
        let estimate = stripe[epoch as usize & 1].add(&cells);
        if estimate <= self.floor.load(Ordering::Relaxed)
            || self.offers.is_full()
            || self.is_tracked(hash)
        {
            return;
        }
        let text = self.expose.load(Ordering::Relaxed).then(|| {
            let cut = text.len().min(KEY_TEXT);
            String::from_utf8_lossy(&text[..cut]).into()
        });
        // Full meanwhile: dropped, as documented.
        let _ = self.offers.push(Offer { hash, text });
    }

    #[inline]
    fn is_tracked(&self, hash: u64) -> bool {
        let key = hash.max(1);
        let mut slot = slot(key);
        loop {
            match self.tracked[slot].load(Ordering::Relaxed) {
                0 => return false,
                h if h == key => return true,
                _ => slot = (slot + 1) & (SLOTS - 1),
            }
        }
    }

    /// Once a second: turn the window over when a new one began, take the offered keys in and
    /// keep the [`TRACKED`] hottest.
    pub(crate) fn tick(&self) {
        self.tick_at(self.born.elapsed());
    }

    /// The `n` hottest keys now, hottest first.
    pub(crate) fn top(&self, n: usize) -> Top {
        self.top_at(n, self.born.elapsed())
    }

    /// [`HotKeys::tick`], `uptime` after this view was created.
    fn tick_at(&self, uptime: Duration) {
        // The lock first: the admin API ticks too, and two window turns at once would clear
        // the sketch requests had begun to count into.
        let mut top = lock(&self.top);
        let now = uptime.as_secs() / WINDOW.as_secs();
        let epoch = self.epoch.load(Ordering::Relaxed);
        if now != epoch {
            // The sketch about to become current holds the window before the previous one;
            // after a pause of two windows or more, the previous is stale too.
            for stripe in self.stripes.iter().filter_map(OnceLock::get) {
                stripe[now as usize & 1].clear();
                if now > epoch + 1 {
                    stripe[(now as usize + 1) & 1].clear();
                }
            }
            self.epoch.store(now, Ordering::Relaxed);
        }
        let expose = self.expose.load(Ordering::Relaxed);
        let mut at: HashMap<u64, usize> =
            top.iter().enumerate().map(|(i, e)| (e.hash, i)).collect();
        while let Some(offer) = self.offers.pop() {
            match at.get(&offer.hash) {
                Some(&i) => top[i].text = top[i].text.take().or(offer.text),
                None => {
                    at.insert(offer.hash, top.len());
                    top.push(Entry {
                        hash: offer.hash,
                        text: offer.text,
                    });
                }
            }
        }
        if !expose {
            top.iter_mut().for_each(|e| e.text = None);
        }
        let weight = self.previous_weight(uptime);
        let mut ranked: Vec<(u64, Entry)> = top
            .drain(..)
            .map(|e| (self.estimate(&cells(e.hash), weight), e))
            .filter(|(n, _)| *n > 0)
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.hash.cmp(&b.1.hash)));
        ranked.truncate(TRACKED);
        // The request path compares its own stripe's count, so the floor is per stripe.
        let stripes = self
            .stripes
            .iter()
            .filter(|s| s.get().is_some())
            .count()
            .max(1) as u64;
        let smallest_tracked = if ranked.len() == TRACKED {
            ranked
                .iter()
                .map(|(_, e)| self.count(&cells(e.hash), now, false))
                .min()
                .unwrap_or(0)
        } else {
            0
        };
        // Twice the average counter: a key below it is collision noise, not hot. Under evenly
        // spread traffic that keeps almost every request from offering its key.
        let noise = 2 * self.total(now, false) / WIDTH as u64;
        let floor = (smallest_tracked.max(noise) / stripes).min(u64::from(u32::MAX)) as u32;
        for slot in self.tracked.iter() {
            slot.store(0, Ordering::Relaxed);
        }
        // A key counted while text was off is left out of the set, so with `expose_keys` turned
        // on its next request offers it again, text included.
        for (_, e) in ranked.iter().filter(|(_, e)| !expose || e.text.is_some()) {
            let key = e.hash.max(1);
            let mut slot = slot(key);
            while self.tracked[slot].load(Ordering::Relaxed) != 0 {
                slot = (slot + 1) & (SLOTS - 1);
            }
            self.tracked[slot].store(key, Ordering::Relaxed);
        }
        self.floor.store(floor, Ordering::Relaxed);
        top.extend(ranked.into_iter().map(|(_, e)| e));
    }

    /// How much of the previous window's count still falls within the last [`WINDOW`].
    fn previous_weight(&self, uptime: Duration) -> f64 {
        let into = uptime.as_secs_f64() % WINDOW.as_secs_f64();
        1.0 - into / WINDOW.as_secs_f64()
    }

    /// Every stripe's sketch of the current window of `epoch`, or of the one before it.
    fn sketches(&self, epoch: u64, previous: bool) -> impl Iterator<Item = &Sketch> + '_ {
        let i = (epoch as usize + usize::from(previous)) & 1;
        self.stripes
            .iter()
            .filter_map(OnceLock::get)
            .map(move |s| &s[i])
    }

    /// A key's count in one window: per row the stripes' sum, then the smallest row.
    fn count(&self, cells: &[usize; DEPTH], epoch: u64, previous: bool) -> u64 {
        if previous && epoch == 0 {
            return 0;
        }
        cells
            .iter()
            .map(|&c| {
                self.sketches(epoch, previous)
                    .map(|s| u64::from(s.counters[c].load(Ordering::Relaxed)))
                    .sum::<u64>()
            })
            .min()
            .unwrap_or(0)
    }

    /// Requests counted in one window.
    fn total(&self, epoch: u64, previous: bool) -> u64 {
        if previous && epoch == 0 {
            return 0;
        }
        self.sketches(epoch, previous).map(Sketch::total).sum()
    }

    /// A key's count over the last [`WINDOW`].
    fn estimate(&self, cells: &[usize; DEPTH], previous_weight: f64) -> u64 {
        let epoch = self.epoch.load(Ordering::Relaxed);
        let previous = self.count(cells, epoch, true);
        self.count(cells, epoch, false) + (previous as f64 * previous_weight).round() as u64
    }

    /// [`HotKeys::top`], `uptime` after this view was created. Takes pending offers in first,
    /// so keys seen since the last tick are there.
    fn top_at(&self, n: usize, uptime: Duration) -> Top {
        self.tick_at(uptime);
        let weight = self.previous_weight(uptime);
        let epoch = self.epoch.load(Ordering::Relaxed);
        let previous = self.total(epoch, true) as f64 * weight;
        let requests = self.total(epoch, false) + previous.round() as u64;
        let mut keys: Vec<HotKey> = lock(&self.top)
            .iter()
            .map(|e| HotKey {
                hash: e.hash,
                text: e.text.as_deref().map(str::to_owned),
                requests: self.estimate(&cells(e.hash), weight),
            })
            .filter(|k| k.requests > 0)
            .collect();
        keys.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.hash.cmp(&b.hash)));
        keys.truncate(n);
        Top {
            requests,
            covers: uptime.min(WINDOW),
            keys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::ring::hash_key;

    /// Keys 0..n with Zipf(s = 1) frequencies, drawn by inverting the cumulative distribution.
    fn zipf(n: usize, samples: usize, seed: u64) -> Vec<usize> {
        let weights: Vec<f64> = (1..=n).map(|r| 1.0 / r as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            cdf.push(acc);
        }
        let mut state = seed;
        (0..samples)
            .map(|_| {
                let u = (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
                cdf.partition_point(|&c| c < u).min(n - 1)
            })
            .collect()
    }

    #[test]
    fn a_zipf_load_names_its_true_top_keys() {
        for seed in 1..=5 {
            zipf_top(seed);
        }
    }

    fn zipf_top(seed: u64) {
        let hot = HotKeys::new(true);
        let draws = zipf(10_000, 300_000, seed);
        let mut counts = vec![0u64; 10_000];
        let name = |k: usize| format!("/item/{k}");
        for &k in &draws {
            counts[k] += 1;
        }
        // Two threads count (two stripes), a tick after every 20,000 requests.
        for (batch, chunk) in draws.chunks(20_000).enumerate() {
            std::thread::scope(|s| {
                for half in chunk.chunks(chunk.len().div_ceil(2)) {
                    let (hot, name) = (&hot, &name);
                    s.spawn(move || {
                        for &k in half {
                            let key = name(k);
                            hot.record(hash_key(key.as_bytes()), key.as_bytes());
                        }
                    });
                }
            });
            hot.tick_at(Duration::from_secs(1 + batch as u64));
        }
        let stripes = hot.stripes.iter().filter(|s| s.get().is_some()).count();
        assert!(stripes >= 2, "{stripes} stripes");
        hot.tick_at(Duration::from_secs(30));
        let top = hot.top_at(20, Duration::from_secs(30));
        assert_eq!(top.requests, draws.len() as u64);
        let mut truth: Vec<usize> = (0..counts.len()).collect();
        truth.sort_by(|&a, &b| counts[b].cmp(&counts[a]));
        let named: Vec<String> = top.keys.iter().map(|k| k.text.clone().unwrap()).collect();
        let true_top: Vec<String> = truth[..20].iter().map(|&k| name(k)).collect();
        assert_eq!(named[..5], true_top[..5], "top 5");
        let found = true_top.iter().filter(|k| named.contains(k)).count();
        eprintln!("seed {seed}: {found} of the true top 20");
        assert!(
            found >= 15,
            "{found} of the true top 20: {named:?} vs {true_top:?}"
        );
        // Estimates never undercount.
        for k in &top.keys {
            let rank: usize = k.text.as_ref().unwrap()[6..].parse().unwrap();
            assert!(k.requests >= counts[rank]);
        }
    }

    #[test]
    fn keys_counted_without_text_get_it_when_exposed() {
        let hot = HotKeys::new(false);
        hot.record(hash_key(b"/a"), b"/a");
        assert_eq!(hot.top_at(5, Duration::from_secs(1)).keys[0].text, None);
        hot.set_expose(true);
        hot.tick_at(Duration::from_secs(2));
        hot.record(hash_key(b"/a"), b"/a");
        let top = hot.top_at(5, Duration::from_secs(3));
        assert_eq!(top.keys[0].text.as_deref(), Some("/a"));
        assert_eq!(top.keys[0].requests, 2);
        hot.set_expose(false);
        assert_eq!(hot.top_at(5, Duration::from_secs(4)).keys[0].text, None);
    }

    #[test]
    fn the_window_slides_and_old_keys_fade() {
        let hot = HotKeys::new(false);
        for _ in 0..1000 {
            hot.record(hash_key(b"old"), b"old");
        }
        hot.tick_at(Duration::from_secs(1));
        let top = hot.top_at(5, Duration::from_secs(1));
        assert_eq!(top.keys[0].requests, 1000);
        assert_eq!(top.keys[0].text, None, "no key text without expose_keys");
        // 15 s into the next window, three quarters of the last one still counts.
        hot.tick_at(Duration::from_secs(75));
        for _ in 0..100 {
            hot.record(hash_key(b"new"), b"new");
        }
        hot.tick_at(Duration::from_secs(75));
        let top = hot.top_at(5, Duration::from_secs(75));
        assert_eq!(top.keys[0].hash, hash_key(b"old"));
        assert_eq!(top.keys[0].requests, 750);
        assert_eq!(top.keys[1].requests, 100);
        assert_eq!(top.covers, WINDOW);
        // Two windows later, nothing of either is left.
        hot.tick_at(Duration::from_secs(200));
        assert!(hot.top_at(5, Duration::from_secs(200)).keys.is_empty());
    }
}
