//! `[pools.health]`: active checks, passive failure detection and the all-down policy.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HealthConfig {
    pub(crate) probe: Probe,
    /// Time between the starts of two probes of one backend.
    pub(crate) interval: Duration,
    /// A probe that takes longer fails.
    pub(crate) timeout: Duration,
    /// Consecutive failures before an up backend is marked down.
    pub(crate) fall: u32,
    /// Consecutive successes before a down backend is marked up.
    pub(crate) rise: u32,
    pub(crate) initial: InitialState,
    /// Consecutive connect failures or timeouts on real traffic that mark a backend down at
    /// once; 0 turns passive detection off. Only active checks bring a backend back, so it is
    /// ignored when `probe` is `None`.
    pub(crate) passive_failures: u32,
    pub(crate) all_down: AllDown,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Probe {
    /// `GET path`; a status in `expect` passes.
    Http { path: String, expect: StatusRanges },
    /// A TCP connect passes.
    Tcp,
    /// No active checks: every backend is always up.
    None,
}

/// State of a backend the proxy has not probed yet (at startup, or added by a reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InitialState {
    /// Optimistic: takes traffic at once; `fall` failed probes take it out.
    Up,
    /// Checked first: takes traffic after its first successful probe.
    Down,
}

impl InitialState {
    /// As the config writes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            InitialState::Up => "up",
            InitialState::Down => "down",
        }
    }
}

/// What a request gets when no backend of its pool is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllDown {
    /// 503 saying that every backend is down.
    Reject,
    /// Fail open: send it to the key's ring owner anyway (drained backends are still avoided).
    Owner,
}

impl AllDown {
    /// As the config writes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AllDown::Reject => "reject",
            AllDown::Owner => "owner",
        }
    }
}

/// Accepted status codes, e.g. `200-399` or `200,204`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    /// What an HTTP check accepts unless told otherwise: any 2xx or 3xx.
    pub(crate) fn default_expect() -> StatusRanges {
        StatusRanges(vec![(200, 399)])
    }

    pub(crate) fn parse(text: &str) -> Result<StatusRanges, String> {
        let bad = || {
            format!(
                "`{text}` is not a list of status codes or ranges, e.g. \"200-399\" or \"200,204\""
            )
        };
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err(bad());
            }
            ranges.push((lo, hi));
        }
        Ok(StatusRanges(ranges))
    }

    pub(crate) fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl HealthConfig {
    /// The settings that differ in `new`, as `health.name old → new` in the config's words.
    pub(crate) fn changed(&self, new: &HealthConfig) -> Vec<String> {
        // Destructured without `..`: a new setting fails to compile here until it is listed.
        let HealthConfig {
            probe,
            interval,
            timeout,
            fall,
            rise,
            initial,
            passive_failures,
            all_down,
        } = self;
        let mut out = Vec::new();
        let mut diff = |name: &str, was: String, now: String| {
            super::changed(&mut out, &format!("health.{name}"), was, now)
        };
        // `-` for the path and statuses of a check that has none (tcp, none).
        let kind = |p: &Probe| match p {
            Probe::Http { path, expect } => ("http", path.clone(), expect.to_string()),
            Probe::Tcp => ("tcp", "-".to_owned(), "-".to_owned()),
            Probe::None => ("none", "-".to_owned(), "-".to_owned()),
        };
        let (was, now) = (kind(probe), kind(&new.probe));
        diff("kind", was.0.into(), now.0.into());
        diff("path", was.1, now.1);
        diff("expect", was.2, now.2);
        diff(
            "interval",
            format!("{interval:?}"),
            format!("{:?}", new.interval),
        );
        diff(
            "timeout",
            format!("{timeout:?}"),
            format!("{:?}", new.timeout),
        );
        diff("fall", fall.to_string(), new.fall.to_string());
        diff("rise", rise.to_string(), new.rise.to_string());
        diff(
            "initial",
            initial.as_str().into(),
            new.initial.as_str().into(),
        );
        diff(
            "passive_failures",
            passive_failures.to_string(),
            new.passive_failures.to_string(),
        );
        diff(
            "all_down",
            all_down.as_str().into(),
            new.all_down.as_str().into(),
        );
        out
    }
}

impl std::fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            // A TCP connect works against any backend; an HTTP check needs a health endpoint,
            // so it is opt-in rather than a default that marks a whole fleet down.
            probe: Probe::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            fall: 3,
            rise: 2,
            initial: InitialState::Up,
            passive_failures: 3,
            all_down: AllDown::Reject,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        let r = StatusRanges::parse("200-299, 304").unwrap();
        assert!(r.contains(200) && r.contains(299) && r.contains(304));
        assert!(!r.contains(300) && !r.contains(500));
        assert_eq!(r.to_string(), "200-299,304");
        for bad in ["", "2xx", "399-200", "99", "200-600", "200,,204"] {
            assert!(StatusRanges::parse(bad).is_err(), "{bad}");
        }
    }
}
