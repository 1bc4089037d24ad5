//! The up/down decision: rise/fall hysteresis over consecutive probe results. Pure, no I/O.

/// Where a backend stands between probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hysteresis {
    up: bool,
    /// Consecutive results that disagree with `up` (failures while up, successes while down).
    streak: u32,
}

impl Hysteresis {
    /// A backend known to be in state `up`, with no evidence against it yet.
    pub(crate) fn new(up: bool) -> Hysteresis {
        Hysteresis { up, streak: 0 }
    }

    /// A backend that has never been probed and starts down (`initial = "down"`): one success
    /// is enough, since there is no history to smooth over.
    pub(crate) fn unchecked(rise: u32) -> Hysteresis {
        Hysteresis {
            up: false,
            streak: rise.saturating_sub(1),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// Feed one probe result. Returns the new state when this result flips it: up after
    /// `rise` consecutive successes while down, down after `fall` consecutive failures while up.
    pub(crate) fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak >= needed.max(1) {
            self.up = !self.up;
            self.streak = 0;
            Some(self.up)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(h: &mut Hysteresis, results: &str) -> Vec<Option<bool>> {
        results.chars().map(|c| h.observe(c == '+', 2, 3)).collect()
    }

    #[test]
    fn falls_after_fall_consecutive_failures() {
        let mut h = Hysteresis::new(true);
        assert_eq!(feed(&mut h, "--"), [None, None]);
        assert!(h.is_up());
        assert_eq!(feed(&mut h, "-"), [Some(false)]);
        assert!(!h.is_up());
    }

    #[test]
    fn rises_after_rise_consecutive_successes() {
        let mut h = Hysteresis::new(false);
        assert_eq!(feed(&mut h, "+"), [None]);
        assert_eq!(feed(&mut h, "+"), [Some(true)]);
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut h = Hysteresis::new(true);
        assert_eq!(feed(&mut h, "--+--+--+"), [None; 9]);
        assert!(h.is_up());
    }

    #[test]
    fn flapping_never_flips_faster_than_rise_and_fall_allow() {
        // Alternating results never build a streak of 2 or 3.
        let mut h = Hysteresis::new(true);
        assert!(feed(&mut h, &"+-".repeat(50)).iter().all(Option::is_none));
        let mut h = Hysteresis::new(false);
        assert!(feed(&mut h, &"-+".repeat(50)).iter().all(Option::is_none));
        // Bursts just long enough flip it, each after exactly fall / rise results.
        let mut h = Hysteresis::new(true);
        let flips = feed(&mut h, "---++---++");
        assert_eq!(
            flips,
            [
                None,
                None,
                Some(false),
                None,
                Some(true),
                None,
                None,
                Some(false),
                None,
                Some(true)
            ]
        );
    }

    #[test]
    fn unchecked_backend_comes_up_on_first_success() {
        let mut h = Hysteresis::unchecked(2);
        assert!(!h.is_up());
        assert_eq!(feed(&mut h, "+"), [Some(true)]);
        let mut h = Hysteresis::unchecked(2);
        assert_eq!(feed(&mut h, "-+"), [None, None]);
        assert!(!h.is_up(), "after a failure it needs the full rise");
        assert_eq!(feed(&mut h, "+"), [Some(true)]);
    }
}
