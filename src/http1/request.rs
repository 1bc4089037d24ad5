//! A client's request head: parsed in place, checked, and framed (RFC 9112 §3, §6, §9).

use super::names::{Name, Names};
use super::{ConnectionField, Framing, FramingFields, Refusal};

/// Header fields a head may have at most: more is refused with 431, like a head too large.
pub const MAX_HEADERS: usize = 128;

/// The form of the request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/path?query`
    Origin,
    /// `http://host/path`
    Absolute,
    /// `*`, OPTIONS only
    Asterisk,
    /// `host:port`, CONNECT only
    Authority,
}

/// A complete, checked request head, borrowing the bytes it was parsed from.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    pub method: &'b str,
    pub target: &'b str,
    pub form: Target,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: &'h [httparse::Header<'b>],
    /// The head's bytes, blank line included (the fields' slices point into them).
    pub raw: &'b [u8],
    /// Bytes of the head, blank line included: the body (or the next request) starts here.
    pub len: usize,
    pub framing: Framing,
    /// Whether the connection may carry another request after this one's response.
    pub keep_alive: bool,
    /// `Connection` names fields besides close and keep-alive (they go no further).
    pub lists_fields: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before sending its body.
    pub expect_continue: bool,
    /// The Host field's value (absent: `None`; HTTP/1.1 requires one).
    pub host: Option<&'b [u8]>,
    /// The request asks for a protocol upgrade (`Upgrade` field present).
    pub upgrade: bool,
    /// What each field is to the proxy.
    pub names: Names,
}

/// Parse the request head at the start of `buf`. `Ok(None)`: incomplete, read more (unless
/// `buf` already holds `max_head` bytes, which is refused with 431). The header slots come from
/// the caller, so parsing allocates nothing.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
    max_head: usize,
) -> Result<Option<Head<'h, 'b>>, Refusal> {
    const TOO_LARGE: Refusal = Refusal {
        status: 431,
        why: "request head too large",
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(TOO_LARGE),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Err(e) => return Err(Refusal::bad(parse_error(e))),
    };
    if len > max_head {
        return Err(TOO_LARGE);
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        unreachable!("a complete request has its request line");
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let form = target_form(method, target)?;
    let mut host = None;
    let mut hosts = 0;
    let mut connection = ConnectionField::default();
    let mut framing = FramingFields::default();
    let mut expect_continue = false;
    let mut upgrade = false;
    let mut names = Names::default();
    // One pass over the fields finds everything the proxy decides on.
    for (i, h) in headers.iter().enumerate() {
        let name = Name::of(h.name.as_bytes());
        names.set(i, name);
        let value = || h.value.trim_ascii();
        match name {
            Name::Host => {
                hosts += 1;
                host = Some(value());
            }
            Name::ContentLength => framing.content_length(value()),
            Name::TransferEncoding => framing.transfer_encoding(value()),
            Name::Connection => connection.add(value()),
            Name::Expect if value().eq_ignore_ascii_case(b"100-continue") => {
                // HTTP/1.0 clients do not know 100 (RFC 9110 §10.1.1): ignored for them.
                expect_continue = minor == 1;
            }
            Name::Expect => {
                return Err(Refusal {
                    status: 417,
                    why: "an expectation other than 100-continue",
                });
            }
            Name::Upgrade => upgrade = true,
            _ => {}
        }
    }
    let coded = framing.transfer_encodings > 0;
    if hosts > 1 {
        return Err(Refusal::bad("more than one Host"));
    }
    if hosts == 0 && minor == 1 {
        return Err(Refusal::bad("HTTP/1.1 request without Host"));
    }
    if coded && minor == 0 {
        // An HTTP/1.0 recipient would not know chunked: the framing is not to be trusted.
        return Err(Refusal::bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    let framing = framing.finish()?;
    Ok(Some(Head {
        method,
        target,
        form,
        minor,
        headers,
        raw: &buf[..len],
        len,
        framing,
        // `close` wins wherever it stands in the list.
        keep_alive: !connection.close && (minor == 1 || connection.keep_alive),
        lists_fields: connection.lists_fields,
        expect_continue: expect_continue && framing != Framing::Empty,
        host,
        upgrade,
        names,
    }))
}

fn target_form(method: &str, target: &str) -> Result<Target, Refusal> {
    let b = target.as_bytes();
    if b.contains(&b'#') {
        // No form allows a fragment, and parsers differ on it (hyper's `Uri` drops it
        // silently): the backend would see another target than the one keyed on.
        return Err(Refusal::bad("fragment in request target"));
    }
    if b.first() == Some(&b'/') {
        return Ok(Target::Origin);
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(Target::Asterisk)
        } else {
            Err(Refusal::bad(
                "asterisk-form target with a method other than OPTIONS",
            ))
        };
    }
    if method == "CONNECT" {
        // host:port and nothing else (RFC 9112 §3.2.3).
        let port = target.rsplit_once(':').map(|(_, p)| p);
        let numeric = port.is_some_and(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
        return if super::is_valid_host(b) && numeric {
            Ok(Target::Authority)
        } else {
            Err(Refusal::bad("CONNECT target is not host:port"))
        };
    }
    let scheme = target.split_once("://").map(|(s, _)| s.as_bytes());
    match scheme {
        Some(s)
            if s.first().is_some_and(u8::is_ascii_alphabetic)
                && s.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || b"+-.".contains(&c)) =>
        {
            Ok(Target::Absolute)
        }
        _ => Err(Refusal::bad(
            "request target is not origin-, absolute- or asterisk-form",
        )),
    }
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value (control character or obs-fold)",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "unsupported HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<(Framing, bool, bool, usize)>, Refusal> {
        let mut slots = crate::http1::slots::<MAX_HEADERS>();
        parse(bytes, &mut slots, 8192)
            .map(|h| h.map(|h| (h.framing, h.keep_alive, h.expect_continue, h.len)))
    }

    #[test]
    fn partial_heads_ask_for_more_until_the_limit() {
        assert_eq!(head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.resize(8192, b'a');
        assert_eq!(head(&big).unwrap_err().status, 431);
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut slots = crate::http1::slots::<MAX_HEADERS>();
        assert_eq!(parse(&many, &mut slots, 1 << 20).unwrap_err().status, 431);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |b: &[u8]| head(b).unwrap().unwrap().1;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: KEEP-ALIVE\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\nConnection: keep_alive\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\nConnection: keep-alive2\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n"
        ));
        assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: clos\r\n\r\n"));
        assert!(ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: c-ose\r\n\r\n"
        ));
    }

    #[test]
    fn expect_continue_only_matters_with_a_body() {
        let e = |b: &[u8]| head(b).unwrap().unwrap().2;
        assert!(e(
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!e(
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n"
        ));
        assert_eq!(
            head(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: tea\r\n\r\n")
                .unwrap_err()
                .status,
            417
        );
    }
}
