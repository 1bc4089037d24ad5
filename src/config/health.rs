//! `[pools.health]`: active checks, passive failure detection and the all-down policy.

use std::time::Duration;

use super::raw::RawHealth;
use super::validate::Validator;

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub probe: Probe,
    /// Time between the starts of two probes of one backend.
    pub interval: Duration,
    /// A probe that takes longer fails.
    pub timeout: Duration,
    /// Consecutive failures before an up backend is marked down.
    pub fall: u32,
    /// Consecutive successes before a down backend is marked up.
    pub rise: u32,
    pub initial: InitialState,
    /// Consecutive connect failures or timeouts on real traffic that mark a backend down at
    /// once; 0 turns passive detection off. Only active checks bring a backend back, so it is
    /// ignored when `probe` is `None`.
    pub passive_failures: u32,
    pub all_down: AllDown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// `GET path`; a status in `expect` passes.
    Http { path: String, expect: StatusRanges },
    /// A TCP connect passes.
    Tcp,
    /// No active checks: every backend is always up.
    None,
}

/// State of a backend the proxy has not probed yet (at startup, or added by a reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialState {
    /// Optimistic: takes traffic at once; `fall` failed probes take it out.
    Up,
    /// Checked first: takes traffic after its first successful probe.
    Down,
}

/// What a request gets when no backend of its pool is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllDown {
    /// 503 saying that every backend is down.
    Reject,
    /// Fail open: send it to the key's ring owner anyway (drained backends are still avoided).
    Owner,
}

/// Accepted status codes, e.g. `200-399` or `200,204`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    pub fn parse(text: &str) -> Result<StatusRanges, String> {
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

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
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

impl Validator<'_> {
    pub(super) fn health(&mut self, path: &str, raw: Option<RawHealth>) -> HealthConfig {
        let mut h = HealthConfig::default();
        let Some(raw) = raw else { return h };
        let path = format!("{path}.health");
        let field = |f: &str| format!("{path}.{f}");

        let kind = raw.kind.as_ref().map_or("tcp", |k| k.get_ref().as_str());
        h.probe = match kind {
            "http" => {
                let probe_path = raw
                    .path
                    .as_ref()
                    .map_or("/health", |p| p.get_ref().as_str());
                if !probe_path.starts_with('/') || probe_path.chars().any(|c| c.is_whitespace()) {
                    self.problem(
                        field("path"),
                        raw.path.as_ref().map(|p| p.span()),
                        format!("`{probe_path}` must be a path starting with /, without spaces"),
                    );
                }
                let expect = match &raw.expect {
                    None => StatusRanges(vec![(200, 399)]),
                    Some(e) => StatusRanges::parse(e.get_ref()).unwrap_or_else(|msg| {
                        self.problem(field("expect"), Some(e.span()), msg);
                        StatusRanges(vec![(200, 399)])
                    }),
                };
                Probe::Http {
                    path: probe_path.to_owned(),
                    expect,
                }
            }
            "tcp" => Probe::Tcp,
            "none" => Probe::None,
            other => {
                self.problem(
                    field("kind"),
                    raw.kind.as_ref().map(|k| k.span()),
                    format!("`{other}` is not one of \"http\", \"tcp\", \"none\""),
                );
                Probe::Tcp
            }
        };
        if !matches!(h.probe, Probe::Http { .. }) {
            for (name, v) in [("path", &raw.path), ("expect", &raw.expect)] {
                if let Some(v) = v {
                    self.problem(
                        field(name),
                        Some(v.span()),
                        format!("only used with kind = \"http\", but kind is \"{kind}\""),
                    );
                }
            }
        }
        let interval_span = raw.interval.as_ref().map(|v| v.span());
        if let Some(d) = self.duration(&field("interval"), raw.interval, false) {
            h.interval = d;
        }
        if let Some(d) = self.duration(&field("timeout"), raw.timeout, false) {
            h.timeout = d;
        }
        if h.timeout > h.interval {
            self.problem(
                field("interval"),
                interval_span,
                format!(
                    "interval ({:?}) must not be shorter than timeout ({:?})",
                    h.interval, h.timeout
                ),
            );
        }
        if let Some(n) = self.int(&field("fall"), raw.fall, 1..=100) {
            h.fall = n as u32;
        }
        if let Some(n) = self.int(&field("rise"), raw.rise, 1..=100) {
            h.rise = n as u32;
        }
        if let Some(n) = self.int(&field("passive_failures"), raw.passive_failures, 0..=1000) {
            h.passive_failures = n as u32;
        }
        if let Some(v) = raw.initial {
            match v.get_ref().as_str() {
                "up" => h.initial = InitialState::Up,
                "down" => h.initial = InitialState::Down,
                other => self.problem(
                    field("initial"),
                    Some(v.span()),
                    format!(
                        "`{other}` is not one of \"up\" (optimistic), \"down\" (checked first)"
                    ),
                ),
            }
        }
        if let Some(v) = raw.all_down {
            match v.get_ref().as_str() {
                "reject" => h.all_down = AllDown::Reject,
                "owner" => h.all_down = AllDown::Owner,
                other => self.problem(
                    field("all_down"),
                    Some(v.span()),
                    format!("`{other}` is not one of \"reject\" (503), \"owner\" (fail open)"),
                ),
            }
        }
        h
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
