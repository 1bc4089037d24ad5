//! `[pools.health]` → [`HealthConfig`].

use super::Validator;
use crate::config::health::{AllDown, HealthConfig, InitialState, Probe, StatusRanges};
use crate::config::raw::RawHealth;

impl Validator<'_> {
    pub(super) fn health(&mut self, path: &str, raw: Option<RawHealth>) -> HealthConfig {
        let mut h = HealthConfig::default();
        let Some(raw) = raw else { return h };
        let path = format!("{path}.health");
        let field = |f: &str| format!("{path}.{f}");

        #[derive(Clone, Copy)]
        enum Kind {
            Http,
            Tcp,
            None,
        }
        let kind_text = raw.kind.as_ref().map_or("tcp", |k| k.get_ref().as_str());
        let kind = self.one_of(
            &field("kind"),
            raw.kind.as_ref(),
            &[
                ("http", Kind::Http, ""),
                ("tcp", Kind::Tcp, ""),
                ("none", Kind::None, ""),
            ],
        );
        h.probe = match kind.unwrap_or(Kind::Tcp) {
            Kind::Http => {
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
                    None => StatusRanges::default_expect(),
                    Some(e) => StatusRanges::parse(e.get_ref()).unwrap_or_else(|msg| {
                        self.problem(field("expect"), Some(e.span()), msg);
                        StatusRanges::default_expect()
                    }),
                };
                Probe::Http {
                    path: probe_path.to_owned(),
                    expect,
                }
            }
            Kind::Tcp => Probe::Tcp,
            Kind::None => Probe::None,
        };
        if !matches!(h.probe, Probe::Http { .. }) {
            for (name, v) in [("path", &raw.path), ("expect", &raw.expect)] {
                if let Some(v) = v {
                    self.problem(
                        field(name),
                        Some(v.span()),
                        format!("only used with kind = \"http\", but kind is \"{kind_text}\""),
                    );
                }
            }
        }
        let interval_span = raw.interval.as_ref().map(|v| v.span());
        let timeout_span = raw.timeout.as_ref().map(|v| v.span());
        if let Some(d) = self.duration(&field("interval"), raw.interval, false) {
            h.interval = d;
        }
        if let Some(d) = self.duration(&field("timeout"), raw.timeout, false) {
            h.timeout = d;
        }
        if h.timeout > h.interval {
            // Reported at whichever of the two was written (the interval if both were), and
            // saying which default the other one kept.
            let default = |span: &Option<std::ops::Range<usize>>| match span {
                Some(_) => "",
                None => ", the default",
            };
            let (interval_default, timeout_default) =
                (default(&interval_span), default(&timeout_span));
            let (at, written) = match (interval_span, timeout_span) {
                (Some(at), _) => ("interval", Some(at)),
                (None, at) => ("timeout", at),
            };
            self.problem(
                field(at),
                written,
                format!(
                    "interval ({:?}{}) must not be shorter than timeout ({:?}{}): lengthen the \
                     interval or shorten the timeout",
                    h.interval, interval_default, h.timeout, timeout_default
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
        let initial = [
            ("up", InitialState::Up, "optimistic"),
            ("down", InitialState::Down, "checked first"),
        ];
        if let Some(v) = self.one_of(&field("initial"), raw.initial.as_ref(), &initial) {
            h.initial = v;
        }
        let all_down = [
            ("reject", AllDown::Reject, "503"),
            ("owner", AllDown::Owner, "fail open"),
        ];
        if let Some(v) = self.one_of(&field("all_down"), raw.all_down.as_ref(), &all_down) {
            h.all_down = v;
        }
        h
    }
}
