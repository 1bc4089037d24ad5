//! HTTP/1.1 messages as the proxy reads them off the wire, strict by construction: heads parsed
//! in place with `httparse` (no `HeaderMap`, no allocation), bodies framed exactly as RFC 9112
//! §6 says, and what a front end and a backend could frame two ways refused rather than guessed
//! at. (A bare LF ending a head's line is accepted, as RFC 9112 §2.2 allows: the head the
//! backend gets is written anew with CRLF, so it cannot read it another way.) Pure: bytes in,
//! decisions out; no I/O, no tokio, no hyper.
//!
//! This is the base of the proxy's own HTTP/1 data path (one task per connection, heads
//! forwarded as bytes). `tests/http1_corpus.rs` holds the message corpus every decision here is
//! checked against, and `fuzz/` fuzzes the parsers, alone and against hyper's.

pub mod chunked;
pub mod forward;
pub mod names;
pub mod request;
pub mod response;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes (more than 0).
    Length(u64),
    /// The chunked transfer coding, ended by its zero-size chunk and trailers.
    Chunked,
    /// Responses only: everything until the backend closes the connection.
    UntilClose,
}

/// Why a message is refused, and the status that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: &'static str,
}

impl Refusal {
    pub(crate) const fn bad(why: &'static str) -> Refusal {
        Refusal { status: 400, why }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.why, self.status)
    }
}

impl std::error::Error for Refusal {}

/// Whether sending a request with `method` twice has the effect of sending it once (RFC 9110
/// §9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Header slots for [`request::parse`] and [`response::parse`], left uninitialised: making
/// 128 initialised slots would cost more than parsing a typical head.
pub fn slots<'b, const N: usize>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; N] {
    [const { std::mem::MaybeUninit::uninit() }; N]
}

/// A Content-Length value: digits only (no sign, no spaces, no list), overflow-checked.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))?
    })
}

/// The bytes of a reg-name (RFC 3986 §3.2.2: unreserved, sub-delims, and `%` of
/// pct-encoded), as a table: every request's host is checked against it.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// `host[:port]` as RFC 9110 §7.2 allows it: a reg-name, IPv4 or bracketed IPv6 literal, and
/// an optional numeric port; no userinfo, path or spaces.
pub fn is_valid_host(host: &[u8]) -> bool {
    let (name, port) = if host.first() == Some(&b'[') {
        let Some(end) = host.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &host[1..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.');
        if !ok {
            return false;
        }
        (&host[..=end], &host[end + 1..])
    } else {
        // One pass: every byte a reg-name byte up to the first colon (`@` is not one).
        let name_len = host
            .iter()
            .position(|&b| !REG_NAME[usize::from(b)])
            .unwrap_or(host.len());
        (&host[..name_len], &host[name_len..])
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    !name.is_empty() && port_ok
}

/// The comma-separated elements of a field value, trimmed of optional whitespace; empty
/// elements (`a, , b`) are skipped, as RFC 9110 §5.6.1 lets recipients do.
pub(crate) fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

/// Body framing from a message's Transfer-Encoding and Content-Length fields, the part of RFC
/// 9112 §6 that requests and responses share, taken in as one pass over the fields meets them
/// and decided by [`FramingFields::finish`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FramingFields {
    chunked: usize,
    coded: usize,
    last_chunked: bool,
    /// Transfer-Encoding fields seen.
    pub(crate) transfer_encodings: usize,
    /// Content-Length fields seen.
    pub(crate) lengths: usize,
    length: Option<u64>,
    /// The first refusal met; Transfer-Encoding's come before Content-Length's.
    te_error: Option<&'static str>,
    cl_error: Option<&'static str>,
}

impl FramingFields {
    pub(crate) fn transfer_encoding(&mut self, value: &[u8]) {
        self.transfer_encodings += 1;
        let before = self.coded;
        for c in elements(value) {
            self.coded += 1;
            self.last_chunked = c.eq_ignore_ascii_case(b"chunked");
            self.chunked += usize::from(self.last_chunked);
        }
        if self.coded == before {
            // A Transfer-Encoding with no coding: some parsers see no field, others a broken one.
            self.te_error.get_or_insert("empty Transfer-Encoding");
        }
    }

    pub(crate) fn content_length(&mut self, value: &[u8]) {
        self.lengths += 1;
        match content_length(value) {
            None => {
                self.cl_error.get_or_insert("invalid Content-Length");
            }
            Some(n) if self.length.is_some_and(|l| l != n) => {
                self.cl_error
                    .get_or_insert("conflicting Content-Length values");
            }
            Some(n) => self.length = Some(n),
        }
    }

    pub(crate) fn finish(self) -> Result<Framing, Refusal> {
        if let Some(why) = self.te_error.or(self.cl_error) {
            return Err(Refusal::bad(why));
        }
        if self.coded > 0 {
            if self.length.is_some() {
                // RFC 9112 §6.1 lets a server go by Transfer-Encoding and close afterwards;
                // this refuses instead: such a message is a smuggling attempt or a broken client.
                return Err(Refusal::bad("both Transfer-Encoding and Content-Length"));
            }
            if self.chunked > 1 || (self.chunked == 1 && !self.last_chunked) {
                return Err(Refusal::bad(
                    "chunked is not the last, only transfer coding",
                ));
            }
            if self.chunked == 0 || self.coded > 1 {
                // Framed, but with a coding (gzip, chunked) the proxy would have to keep
                // applying.
                return Err(Refusal {
                    status: 501,
                    why: "a transfer coding other than chunked",
                });
            }
            return Ok(Framing::Chunked);
        }
        Ok(match self.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }
}

/// What a `Connection` field says: close, keep-alive, or the names of other fields that belong
/// to this connection only (rare: only then must each field be checked against the list).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ConnectionField {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) lists_fields: bool,
}

impl ConnectionField {
    pub(crate) fn add(&mut self, value: &[u8]) {
        // The usual values, decided without splitting.
        if names::is_lowercase_of(value, b"keep-alive") {
            self.keep_alive = true;
            return;
        }
        if names::is_lowercase_of(value, b"close") {
            self.close = true;
            return;
        }
        for token in elements(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.lists_fields = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only_and_overflow_checked() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"0042"), Some(42));
        assert_eq!(content_length(b"18446744073709551615"), None, "20 digits");
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-5",
            b" 5",
            b"5 ",
            b"5,5",
            b"0x10",
            b"1e3",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
