//! Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2016; HAProxy's
//! `hash-balance-factor`): a backend takes a request only while its requests in flight are
//! below its bound, `ceil(factor × (in flight in the pool + 1) × weight / usable weight)`.
//! With equal weights that is `ceil(factor × (in flight + 1) / usable backends)`.
//!
//! The request goes to the first backend on its key's successor walk (owner first) that is
//! under its bound. While load is even the owner always is, so keys stay put; a hot key's
//! overflow spills to its ring successors, the same ones for every request of that key, so
//! the spill is itself consistent. The bounds add up to at least `factor × (in flight + 1)`,
//! more than is in flight, so some usable backend is always under its bound.

/// The bounds for one routing decision: a pool's factor, the load in flight in the pool, and
/// the total weight of the backends that take traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The factor in hundredths (1.25 → 125), as HAProxy keeps it: integer arithmetic rounds
    /// up exactly where floating point would turn 1.1 × 10 into 11.000000000000002 and 12.
    pub percent: u64,
    pub in_flight: u64,
    pub usable_weight: u64,
}

impl Bounds {
    pub fn new(factor: f64, in_flight: u64, usable_weight: u64) -> Bounds {
        Bounds {
            percent: (factor * 100.0).round() as u64,
            in_flight,
            usable_weight,
        }
    }

    /// Requests in flight a backend of `weight` may have before it stops taking new ones
    /// (at least 1).
    #[inline]
    pub fn limit(&self, weight: u32) -> u64 {
        let num = u128::from(self.percent) * u128::from(self.in_flight + 1) * u128::from(weight);
        let den = 100 * u128::from(self.usable_weight.max(1));
        (num.div_ceil(den) as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_fair_share_times_the_factor_rounded_up() {
        let b = Bounds::new(1.25, 99, 4);
        // 100 requests over 4 equal backends: fair share 25, bound ceil(31.25) = 32.
        assert_eq!(b.limit(1), 32);
        // Weight 2 of 4: fair share 50, bound 63.
        assert_eq!(b.limit(2), 63);
        // Exact products are not rounded up: 1.1 × 10 is 11.
        assert_eq!(Bounds::new(1.1, 9, 1).limit(1), 11);
        assert_eq!(Bounds::new(1.0, 3, 4).limit(1), 1);
        // An idle pool still admits one request everywhere.
        assert_eq!(Bounds::new(1.0, 0, 10).limit(1), 1);
    }
}
