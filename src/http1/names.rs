//! What a header field is to the proxy, decided once per field, by name, when its head is
//! parsed: parsing frames the message by it, and writing the head the next hop gets drops or
//! keeps each field by it, without comparing names again.

use httparse::Header;

/// The fields the proxy acts on; every other field is [`Name::Other`] and goes on as sent
/// (unless a `Connection` field names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Name {
    #[default]
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Upgrade,
    /// The other hop-by-hop fields (RFC 9110 §7.6.1, and the non-standard ones clients still
    /// send): keep-alive, te, trailer, proxy-connection, proxy-authenticate,
    /// proxy-authorization.
    HopByHop,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    /// forwarded, x-real-ip
    Forwarding,
}

impl Name {
    /// Classify `name`, a token (as every parsed field name is), in any case: its length picks
    /// at most two candidates to compare.
    pub fn of(name: &[u8]) -> Name {
        let is = |wanted: &[u8]| is_lowercase_of(name, wanted);
        match name.len() {
            2 if is(b"te") => Name::HopByHop,
            4 if is(b"host") => Name::Host,
            6 if is(b"expect") => Name::Expect,
            7 if is(b"upgrade") => Name::Upgrade,
            7 if is(b"trailer") => Name::HopByHop,
            9 if is(b"forwarded") || is(b"x-real-ip") => Name::Forwarding,
            10 if is(b"connection") => Name::Connection,
            10 if is(b"keep-alive") => Name::HopByHop,
            14 if is(b"content-length") => Name::ContentLength,
            15 if is(b"x-forwarded-for") => Name::XForwardedFor,
            16 if is(b"x-forwarded-host") => Name::XForwardedHost,
            16 if is(b"proxy-connection") => Name::HopByHop,
            17 if is(b"transfer-encoding") => Name::TransferEncoding,
            17 if is(b"x-forwarded-proto") => Name::XForwardedProto,
            18 if is(b"proxy-authenticate") => Name::HopByHop,
            19 if is(b"proxy-authorization") => Name::HopByHop,
            _ => Name::Other,
        }
    }

    /// Describes one connection, not the message: never passed on as sent.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::HopByHop | Name::Connection | Name::TransferEncoding | Name::Upgrade
        )
    }
}

/// Whether `name` is `wanted` (lower-case letters and `-`) in any case,
/// compared a word at a time: `| 0x20` turns an upper-case letter into its lower case and keeps
/// `-`, and of the bytes a field name or value may hold (no CR: the parser refuses it) turns no
/// other into either.
pub(crate) fn is_lowercase_of(name: &[u8], wanted: &[u8]) -> bool {
    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([b[i], b[i + 1]])
    }
    fn u32_at(b: &[u8], i: usize) -> u32 {
        let mut w = [0; 4];
        w.copy_from_slice(&b[i..i + 4]);
        u32::from_le_bytes(w)
    }
    fn u64_at(b: &[u8], i: usize) -> u64 {
        let mut w = [0; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    }
    let n = wanted.len();
    if name.len() != n {
        return false;
    }
    // Two words that overlap cover every length in their range.
    match n {
        2..4 => {
            let low = 0x2020;
            (u16_at(name, 0) | low) == u16_at(wanted, 0)
                && (u16_at(name, n - 2) | low) == u16_at(wanted, n - 2)
        }
        4..8 => {
            let low = 0x2020_2020;
            (u32_at(name, 0) | low) == u32_at(wanted, 0)
                && (u32_at(name, n - 4) | low) == u32_at(wanted, n - 4)
        }
        8..=16 => {
            let low = 0x2020_2020_2020_2020;
            (u64_at(name, 0) | low) == u64_at(wanted, 0)
                && (u64_at(name, n - 8) | low) == u64_at(wanted, n - 8)
        }
        _ => name.eq_ignore_ascii_case(wanted),
    }
}

/// Fields whose [`Name`] is kept at parse time; later ones are classified again when asked (a
/// head with more is rare, and the array is copied with the head).
const KEPT: usize = 32;

/// The [`Name`]s of a head's fields, by position.
#[derive(Debug, Clone, Copy, Default)]
pub struct Names([Name; KEPT]);

impl Names {
    pub(crate) fn set(&mut self, i: usize, name: Name) {
        if let Some(slot) = self.0.get_mut(i) {
            *slot = name;
        }
    }

    /// The name of field `h`, the `i`-th of its head.
    pub fn of(&self, i: usize, h: &Header<'_>) -> Name {
        match self.0.get(i) {
            Some(&name) => name,
            None => Name::of(h.name.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified_in_any_case_and_later_fields_are_classified_on_demand() {
        let cases: &[(&str, Name)] = &[
            ("Host", Name::Host),
            ("CONTENT-LENGTH", Name::ContentLength),
            ("transfer-encoding", Name::TransferEncoding),
            ("Connection", Name::Connection),
            ("expect", Name::Expect),
            ("Upgrade", Name::Upgrade),
            ("TE", Name::HopByHop),
            ("trailer", Name::HopByHop),
            ("Keep-Alive", Name::HopByHop),
            ("Proxy-Connection", Name::HopByHop),
            ("proxy-authenticate", Name::HopByHop),
            ("Proxy-Authorization", Name::HopByHop),
            ("X-Forwarded-For", Name::XForwardedFor),
            ("x-forwarded-proto", Name::XForwardedProto),
            ("X-Forwarded-Host", Name::XForwardedHost),
            ("Forwarded", Name::Forwarding),
            ("X-Real-IP", Name::Forwarding),
            ("Hosts", Name::Other),
            ("Content-Type", Name::Other),
            ("te-", Name::Other),
            ("x-forwarded-fox", Name::Other),
        ];
        for &(name, want) in cases {
            assert_eq!(Name::of(name.as_bytes()), want, "{name}");
        }
        // One byte off anywhere, in either case, is another name.
        for &(name, want) in cases.iter().filter(|(_, w)| *w != Name::Other) {
            for i in 0..name.len() {
                for case in [str::to_ascii_lowercase, str::to_ascii_uppercase] {
                    let mut off = case(name).into_bytes();
                    off[i] = if off[i] == b'-' { b'_' } else { b'-' };
                    assert_eq!(Name::of(&off), Name::Other, "{name} at {i}");
                    let same = case(name);
                    assert_eq!(Name::of(same.as_bytes()), want, "{same}");
                }
            }
        }
        assert!(Name::Upgrade.is_hop_by_hop() && !Name::Host.is_hop_by_hop());
        // The word compare agrees with a byte-wise one for every byte a name or value may hold
        // (no CR), anywhere in every name it is used for.
        let wanted: &[&[u8]] = &[
            b"te",
            b"host",
            b"expect",
            b"upgrade",
            b"trailer",
            b"forwarded",
            b"x-real-ip",
            b"connection",
            b"keep-alive",
            b"close",
            b"content-length",
            b"x-forwarded-for",
            b"x-forwarded-host",
            b"proxy-connection",
        ];
        for w in wanted {
            for i in 0..w.len() {
                for b in (0..=255u8).filter(|&b| b != b'\r' && b != b'\n') {
                    let mut v = w.to_vec();
                    v[i] = b;
                    assert_eq!(is_lowercase_of(&v, w), v.eq_ignore_ascii_case(w), "{v:?}");
                }
            }
        }
        let mut names = Names::default();
        names.set(0, Name::Host);
        names.set(KEPT, Name::Host); // beyond what is kept: ignored
        let host = Header {
            name: "Host",
            value: b"a",
        };
        assert_eq!(names.of(0, &host), Name::Host);
        assert_eq!(names.of(KEPT, &host), Name::Host, "classified when asked");
        let other = Header {
            name: "X-A",
            value: b"a",
        };
        assert_eq!(names.of(KEPT + 1, &other), Name::Other);
    }
}
