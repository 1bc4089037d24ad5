//! The request head a proxy sends upstream, written as bytes straight from the client's parsed
//! head: the client's fields in their order, less what describes only the client's connection,
//! plus what this hop knows. No `HeaderMap` in between, one buffer out.
//!
//! The same rules as the hyper path's `forward::headers` (checked against it by a property
//! test there): hop-by-hop fields and those `Connection` names go (except the ones naming the
//! message's host and forwarding facts); the authority of an absolute-form target becomes the
//! Host; framing is written anew for HTTP/1.1; forwarding fields are replaced when the client
//! is anyone, and extended when it is a proxy of ours (`trusted_proxies`).

use super::names::Name;
use super::request::{Head, Target};
use super::response;
use super::{Framing, Refusal, elements, is_valid_host};

/// Who this hop's client is, as the forwarding fields say it.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The client's address as text, for X-Forwarded-For.
    pub client: &'a str,
    /// A proxy of ours: what it says about the original client is kept and extended.
    pub trusted: bool,
    /// The client connection is TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
}

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1), and the
/// non-standard ones clients still send; `name`, a token, in any case.
#[inline]
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    Name::of(name).is_hop_by_hop()
}

/// Fields a `Connection` list may not remove: the message's host and what a trusted proxy
/// says about the client are never a connection's business.
pub fn is_protected(name: &[u8]) -> bool {
    [
        &b"host"[..],
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-real-ip",
    ]
    .iter()
    .any(|p| name.eq_ignore_ascii_case(p))
}

/// The host the request is for (RFC 9112 §3.2): an absolute-form target's authority, else the
/// one Host field (HTTP/1.0 may have none). `Ok(None)`: no host at all.
pub fn host<'b>(head: &Head<'_, 'b>) -> Result<Option<&'b [u8]>, Refusal> {
    if head.form == Target::Absolute {
        let authority = authority_and_rest(head.target).0;
        if authority.contains('@') {
            return Err(Refusal::bad("userinfo in the request target"));
        }
        if authority.is_empty() || !is_valid_host(authority.as_bytes()) {
            return Err(Refusal::bad("invalid authority"));
        }
        return Ok(Some(authority.as_bytes()));
    }
    match head.host {
        Some(h) if !is_valid_host(h) => Err(Refusal::bad("invalid Host header")),
        h => Ok(h),
    }
}

/// An absolute-form target split after `scheme://` into its authority and the rest.
pub fn authority_and_rest(target: &str) -> (&str, &str) {
    let after = target.split_once("://").map_or(target, |(_, a)| a);
    let end = after.find(['/', '?']).unwrap_or(after.len());
    after.split_at(end)
}

/// Whether a `Connection` field among `headers` names field `name` (which then goes no
/// further); the fields [`is_protected`] keeps never count as named.
pub fn is_listed(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| elements(h.value))
        .any(|t| t.eq_ignore_ascii_case(name) && !is_protected(t))
}

const CONNECT: Refusal = Refusal {
    status: 501,
    why: "CONNECT is not proxied",
};

/// Fields kept as they came are copied from the head's bytes in runs: consecutive kept fields
/// are one stretch of the head, so a typical head goes out in two or three copies, not four
/// per field.
struct Runs<'r> {
    raw: &'r [u8],
    run: Option<(usize, usize)>,
}

impl<'r> Runs<'r> {
    fn new(raw: &'r [u8]) -> Runs<'r> {
        Runs { raw, run: None }
    }

    /// Field `h` goes on. Inlined: most kept fields only extend the run in progress.
    #[inline]
    fn keep(&mut self, h: &httparse::Header<'_>, out: &mut Vec<u8>) {
        if let (Some((start, end)), Some((_, run_end))) = (line_span(self.raw, h), &mut self.run)
            && *run_end == start
        {
            *run_end = end;
            return;
        }
        self.keep_apart(h, out);
    }

    /// [`Runs::keep`] for a field that does not extend the run: it starts the next one, or is
    /// written out on its own.
    #[inline(never)]
    fn keep_apart(&mut self, h: &httparse::Header<'_>, out: &mut Vec<u8>) {
        self.flush(out);
        match line_span(self.raw, h) {
            Some(span) => self.run = Some(span),
            None => field(out, h.name.as_bytes(), h.value),
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some((start, end)) = self.run.take() {
            out.extend_from_slice(&self.raw[start..end]);
        }
    }
}

/// Where field `h`'s line lies in `raw`, CRLF included; `None` if it is not a CRLF-ended line
/// of `raw` (it is then written out field by field).
#[inline]
fn line_span(raw: &[u8], h: &httparse::Header<'_>) -> Option<(usize, usize)> {
    let start = offset_in(raw, h.name.as_bytes())?;
    let from = if h.value.is_empty() {
        start + h.name.len()
    } else {
        offset_in(raw, h.value)? + h.value.len()
    };
    if raw.get(from..from + 2) == Some(b"\r\n") {
        // The usual line: the value ends right before its CRLF.
        return Some((start, from + 2));
    }
    let newline = from + raw.get(from..)?.iter().position(|&b| b == b'\n')?;
    (newline > from && raw[newline - 1] == b'\r').then_some((start, newline + 1))
}

/// Where `part`, a slice of `raw`'s bytes, starts in `raw`; `None` if it is not in `raw`.
#[inline]
fn offset_in(raw: &[u8], part: &[u8]) -> Option<usize> {
    let at = (part.as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
    (at < raw.len()).then_some(at)
}

/// Write the head the backend receives for the client's `head` into `out`.
pub fn write_request(head: &Head<'_, '_>, hop: Hop<'_>, out: &mut Vec<u8>) -> Result<(), Refusal> {
    if head.form == Target::Authority {
        return Err(CONNECT);
    }
    let host = host(head)?;
    write_request_to(head, host, hop, out)
}

/// [`write_request`] for a request whose host ([`host`]) is known already.
pub fn write_request_to(
    head: &Head<'_, '_>,
    host: Option<&[u8]>,
    hop: Hop<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Refusal> {
    if head.form == Target::Authority {
        return Err(CONNECT);
    }
    let mut runs = Runs::new(head.raw);
    match request_line(head) {
        // Copied with the fields after it, in one run where they are kept.
        Some(end) => runs.run = Some((0, end)),
        None => write_request_line(head, out),
    }
    // Host goes first. A client's own first field, when it is the Host of an origin-form
    // request (and the host this request goes to), goes on as sent (most clients put it
    // there).
    let host_first = head.form == Target::Origin
        && same_slice(host, head.host)
        && head
            .headers
            .first()
            .is_some_and(|h| head.names.of(0, h) == Name::Host);
    if !host_first {
        runs.flush(out);
        // HTTP/1.1 requires a Host; an HTTP/1.0 client may have sent none, and then the field
        // goes up empty, as for a target without authority (RFC 9112 §3.2).
        field(out, b"host", host.unwrap_or_default());
    }
    let named = head.lists_fields;
    let mut proto_given = false;
    let mut host_given = false;
    for (i, h) in head.headers.iter().enumerate() {
        let goes = match head.names.of(i, h) {
            Name::Other => named && is_listed(head.headers, h.name.as_bytes()),
            Name::Host => !(i == 0 && host_first),
            // Written anew below: the client's chain, extended.
            Name::XForwardedFor => true,
            // What a proxy of ours says goes on; what anyone else says does not.
            Name::XForwardedProto => {
                proto_given |= hop.trusted;
                !hop.trusted
            }
            Name::XForwardedHost => {
                host_given |= hop.trusted;
                !hop.trusted
            }
            Name::Forwarding => !hop.trusted,
            // Hop-by-hop fields and framing, written anew; and Expect: this hop answers the
            // expectation itself (100 Continue once the request is on its way), and passed on
            // it would make the backend's own 100 look like an early answer.
            Name::ContentLength
            | Name::Expect
            | Name::TransferEncoding
            | Name::Connection
            | Name::Upgrade
            | Name::HopByHop => true,
        };
        if goes {
            runs.flush(out);
        } else {
            runs.keep(h, out);
        }
    }
    runs.flush(out);
    match head.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A client's `Content-Length: 0` says "a body, empty" (a POST some backends would
        // answer 411 without it); kept.
        Framing::Empty
            if head
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-length")) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Empty | Framing::UntilClose => {}
    }
    // X-Forwarded-For: a trusted proxy's chain, in order, then this hop's client.
    out.extend_from_slice(b"x-forwarded-for: ");
    if hop.trusted {
        for h in head
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(hop.client.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !proto_given {
        // Fixed-length pieces: each is a few stores, where one of two lengths is a memcpy.
        out.extend_from_slice(b"x-forwarded-proto: http");
        if hop.https {
            out.push(b's');
        }
        out.extend_from_slice(b"\r\n");
    }
    if let (Some(host), false) = (host, host_given) {
        field(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Whether `a` and `b` are the same bytes in memory (a pointer compare, not a content one).
fn same_slice(a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
    let at = |s: Option<&[u8]>| s.map(|s| (s.as_ptr(), s.len()));
    at(a) == at(b)
}

/// Where the client's request line ends in its head, when it is the line this hop would write
/// (origin-form, `HTTP/1.1`, CRLF, nothing before it): then it goes on as sent.
fn request_line(head: &Head<'_, '_>) -> Option<usize> {
    if head.minor != 1 || head.form != Target::Origin {
        return None;
    }
    let target_at = offset_in(head.raw, head.target.as_bytes())?;
    let end = target_at + head.target.len();
    let first = std::ptr::eq(head.method.as_ptr(), head.raw.as_ptr());
    (first
        && target_at == head.method.len() + 1
        && head.raw.get(end..end + 11)? == b" HTTP/1.1\r\n")
        .then_some(end + 11)
}

fn write_request_line(head: &Head<'_, '_>, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    match head.form {
        Target::Absolute => {
            // Only the path and query go upstream: the backend is the one the ring chose.
            let rest = authority_and_rest(head.target).1;
            if rest.is_empty() && head.method == "OPTIONS" {
                // The server itself, not a resource (RFC 9112 §3.2.4).
                out.push(b'*');
            } else if !rest.starts_with('/') {
                out.push(b'/');
            }
            out.extend_from_slice(rest.as_bytes());
        }
        _ => out.extend_from_slice(head.target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// How the proxy passes a response on to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down {
    /// The client speaks HTTP/1.0: no chunked coding, keep-alive only when asked.
    pub client_minor: u8,
    /// The client connection closes after this response.
    pub close: bool,
}

/// Write the head the client receives for the backend's response `head` into `out`: status
/// line in HTTP/1.1, fields as sent minus the hop-by-hop ones and those its `Connection` names,
/// framing fields regenerated (a chunked body goes on chunked to an HTTP/1.1 client and
/// unframed, closing the connection, to an HTTP/1.0 one), and this hop's `Connection`.
pub fn write_response(head: &response::Head<'_, '_>, down: Down, out: &mut Vec<u8>) {
    let mut runs = Runs::new(head.raw);
    match status_line(head) {
        // Copied with the fields after it, in one run where they are kept.
        Some(end) => runs.run = Some((0, end)),
        None => {
            out.extend_from_slice(b"HTTP/1.1 ");
            decimal(out, u64::from(head.status));
            out.push(b' ');
            out.extend_from_slice(head.reason.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    let mut length_kept = false;
    for (keep, name, h) in passed_on(head) {
        if keep {
            length_kept |= name == Name::ContentLength;
            runs.keep(h, out);
        } else {
            runs.flush(out);
        }
    }
    runs.flush(out);
    match head.framing {
        Framing::Length(n) if !length_kept => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked if down.client_minor == 1 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        _ => {}
    }
    if down.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if down.client_minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response's fields, each with whether it goes on to the client and what it is. Hop-by-hop
/// fields and those its `Connection` names do not. Of its Content-Length fields, one goes on as
/// sent where it describes the body a bodiless answer stands for (a HEAD's GET, a 304's cached
/// copy; not on 1xx and 204, where it must not appear), or where it is the one, plainly
/// written, that framed the body; the others do not (the framing is written anew).
pub fn passed_on<'h, 'b>(
    head: &'h response::Head<'h, 'b>,
) -> impl Iterator<Item = (bool, Name, &'h httparse::Header<'b>)> {
    let framed_by_length = matches!(head.framing, Framing::Length(_)) && head.one_length;
    let keep_length = framed_by_length
        || (head.framing == Framing::Empty && head.status != 204 && !head.is_interim());
    let mut length_kept = false;
    head.headers.iter().enumerate().map(move |(i, h)| {
        let name = head.names.of(i, h);
        let listed = || head.lists_fields && is_listed(head.headers, h.name.as_bytes());
        let keep = match name {
            Name::ContentLength => {
                let keep = keep_length
                    && !length_kept
                    && if framed_by_length {
                        // Leading zeros: written anew, plainly.
                        h.value.first() != Some(&b'0')
                    } else {
                        super::content_length(h.value.trim_ascii()).is_some()
                    }
                    && !listed();
                length_kept |= keep;
                keep
            }
            name => !name.is_hop_by_hop() && !listed(),
        };
        (keep, name, h)
    })
}

/// Where the backend's status line ends in its head, when it is the line this hop would write
/// (`HTTP/1.1`, a reason, CRLF, nothing before it): then it goes on as sent.
fn status_line(head: &response::Head<'_, '_>) -> Option<usize> {
    const BEFORE_REASON: usize = "HTTP/1.1 200 ".len();
    if head.minor != 1 || head.reason.is_empty() {
        return None;
    }
    let reason_at = offset_in(head.raw, head.reason.as_bytes())?;
    let end = reason_at + head.reason.len();
    (reason_at == BEFORE_REASON && head.raw.get(end..end + 2)? == b"\r\n").then_some(end + 2)
}

/// The protocols the `Upgrade` fields of `headers` offer (or a 101 switches to).
fn upgrade_tokens<'h>(headers: &'h [httparse::Header<'_>]) -> impl Iterator<Item = &'h [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .flat_map(|h| elements(h.value))
}

/// A switch to HTTP/2 would take the connection out of HTTP/1 routing, every later stream
/// going to one backend unseen: h2c offers are dropped, and a 101 to h2c refused.
fn is_h2c(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"h2c")
}

/// Whether `headers` offer a protocol switch this proxy passes on (any protocol but h2c).
pub fn offers_upgrade(headers: &[httparse::Header<'_>]) -> bool {
    upgrade_tokens(headers).any(|t| !is_h2c(t))
}

/// Whether a 101's `headers` switch to h2c.
pub fn switches_to_h2c(headers: &[httparse::Header<'_>]) -> bool {
    upgrade_tokens(headers).any(is_h2c)
}

/// Carry a protocol switch on: `Connection: upgrade` and the protocols the `Upgrade` fields of
/// `headers` name but h2c (the client's offer, or the backend's 101), added to a head just
/// written into `out` by [`write_request_to`] or [`write_response`], which drop them as
/// hop-by-hop.
pub fn add_upgrade(headers: &[httparse::Header<'_>], out: &mut Vec<u8>) {
    debug_assert!(out.ends_with(b"\r\n\r\n"), "a whole head");
    out.truncate(out.len() - 2);
    out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
    for (i, token) in upgrade_tokens(headers).filter(|t| !is_h2c(t)).enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(token);
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// `n` in decimal, without allocating.
fn decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::request::{self, MAX_HEADERS};

    fn forwarded(sent: &[u8], trusted: bool) -> Result<String, u16> {
        let mut slots = crate::http1::slots::<MAX_HEADERS>();
        let head = request::parse(sent, &mut slots, 8192).unwrap().unwrap();
        let mut out = Vec::new();
        write_request(
            &head,
            Hop {
                client: "10.0.0.9",
                trusted,
                https: false,
            },
            &mut out,
        )
        .map_err(|r| r.status)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn an_upgrade_goes_on_with_connection_upgrade_and_the_offer_but_h2c() {
        let sent = b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket, h2c\r\nUpgrade: x/1\r\nSec-WebSocket-Key: k\r\n\r\n";
        let mut slots = crate::http1::slots::<MAX_HEADERS>();
        let head = request::parse(sent, &mut slots, 8192).unwrap().unwrap();
        let mut out = Vec::new();
        let hop = Hop {
            client: "10.0.0.9",
            trusted: false,
            https: true,
        };
        write_request_to(&head, head.host, hop, &mut out).unwrap();
        add_upgrade(head.headers, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /chat HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: k\r\nx-forwarded-for: 10.0.0.9\r\n\
             x-forwarded-proto: https\r\nx-forwarded-host: h\r\nconnection: upgrade\r\nupgrade: websocket, x/1\r\n\r\n"
        );
    }

    #[test]
    fn the_backend_gets_an_origin_form_head_with_this_hop_s_facts() {
        let sent = b"POST http://Shop.example:8080?q=1 HTTP/1.1\r\nHost: other\r\nConnection: x-hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nTransfer-Encoding: chunked\r\nX-End: kept\r\n\r\n";
        assert_eq!(
            forwarded(sent, false).unwrap(),
            "POST /?q=1 HTTP/1.1\r\nhost: Shop.example:8080\r\nX-End: kept\r\ntransfer-encoding: chunked\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: Shop.example:8080\r\n\r\n"
        );
        let via_proxy = b"GET /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Proto: https\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            forwarded(via_proxy, true).unwrap(),
            "GET /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\ncontent-length: 0\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nx-forwarded-host: h\r\n\r\n"
        );
        // The request line and a first Host go on as sent; otherwise they are written anew,
        // Host first.
        let tail =
            "x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: h\r\n\r\n";
        for (sent, head) in [
            (
                &b"GET /b HTTP/1.1\r\nX-A: 1\r\nHost: h\r\n\r\n"[..],
                "GET /b HTTP/1.1\r\nhost: h\r\nX-A: 1\r\n",
            ),
            (
                b"GET /c HTTP/1.0\r\nHost: h\r\n\r\n",
                "GET /c HTTP/1.1\r\nHost: h\r\n",
            ),
            (
                b"GET /d HTTP/1.1\nHost: h\r\nX-A: 1\r\n\r\n",
                "GET /d HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n",
            ),
            (
                b"\r\nGET /e HTTP/1.1\r\nHost: h\r\n\r\n",
                "GET /e HTTP/1.1\r\nHost: h\r\n",
            ),
        ] {
            assert_eq!(forwarded(sent, false).unwrap(), format!("{head}{tail}"));
        }
        // Past the 32 fields whose names are kept at parse time, the same rules.
        let mut many = past_kept_names(b"POST /f HTTP/1.1\r\nHost: h\r\n");
        many.extend_from_slice(
            b"Keep-Alive: 5\r\nX-Forwarded-For: 6.6.6.6\r\nHost: h\r\nContent-Length: 3\r\n\r\n",
        );
        let mut slots = crate::http1::slots::<MAX_HEADERS>();
        let refused = request::parse(&many, &mut slots, 8192).unwrap_err();
        assert_eq!(
            refused.status, 400,
            "two Hosts, the second beyond the kept names"
        );
        let at = many.len() - b"Host: h\r\nContent-Length: 3\r\n\r\n".len();
        many.drain(at..at + b"Host: h\r\n".len());
        let out = forwarded(&many, false).unwrap();
        assert!(
            out.contains("X-39: v\r\ncontent-length: 3\r\nx-forwarded-for: 10.0.0.9\r\n"),
            "{out}"
        );
        assert!(
            !out.contains("Keep-Alive") && !out.contains("6.6.6.6"),
            "{out}"
        );
    }

    /// `start` and 40 fields: what follows is past the names kept at parse time.
    fn past_kept_names(start: &[u8]) -> Vec<u8> {
        let mut head = start.to_vec();
        for i in 0..40 {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head
    }

    fn answered(sent: &[u8], method: &str, down: Down) -> String {
        let mut slots = crate::http1::slots::<MAX_HEADERS>();
        let head = response::parse(sent, &mut slots, 8192, method)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_response(&head, down, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_client_gets_the_response_head_with_this_hop_s_framing() {
        let keep = Down {
            client_minor: 1,
            close: false,
        };
        let sent = b"HTTP/1.0 200 Fine\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 007\r\nX-End: kept\r\n\r\n";
        assert_eq!(
            answered(sent, "GET", keep),
            "HTTP/1.1 200 Fine\r\nX-End: kept\r\ncontent-length: 7\r\n\r\n"
        );
        // An HTTP/1.1 status line and a body's one plain Content-Length go on as sent (one
        // copy with the fields around them); anything else is written anew.
        let nginx = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nConnection: keep-alive\r\nX-After: 1\r\n\r\n";
        assert_eq!(
            answered(nginx, "GET", keep),
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nX-After: 1\r\n\r\n"
        );
        for (odd, written) in [
            (
                &b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"[..],
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            ),
            (
                b"HTTP/1.1 200 OK\nContent-Length: 3\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            ),
            (b"HTTP/1.1 204\r\n\r\n", "HTTP/1.1 204 \r\n\r\n"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n",
            ),
        ] {
            assert_eq!(answered(odd, "GET", keep), written);
        }
        // A body's Content-Length that Connection names is written anew, not passed on.
        assert_eq!(
            answered(
                b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\n",
                "GET",
                keep
            ),
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"
        );
        // Fields past the 32 whose names are kept at parse time follow the same rules.
        let mut many = past_kept_names(b"HTTP/1.1 200 OK\r\n");
        many.extend_from_slice(b"Connection: keep-alive\r\nKeep-Alive: 5\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n");
        let out = answered(&many, "GET", keep);
        assert!(
            out.ends_with("X-39: v\r\ncontent-length: 2\r\n\r\n"),
            "{out}"
        );
        assert!(
            !out.contains("Keep-Alive") && !out.contains("Connection"),
            "{out}"
        );
        let chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n";
        assert_eq!(
            answered(chunked, "POST", keep),
            "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let old_client = Down {
            client_minor: 0,
            close: true,
        };
        assert_eq!(
            answered(chunked, "POST", old_client),
            "HTTP/1.1 201 Created\r\nconnection: close\r\n\r\n"
        );
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
        assert_eq!(
            answered(
                head,
                "HEAD",
                Down {
                    client_minor: 0,
                    close: false
                }
            ),
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nconnection: keep-alive\r\n\r\n"
        );
        let no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            answered(no_content, "GET", keep),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
    }

    #[test]
    fn fields_go_on_with_crlf_line_ends_whatever_ended_them() {
        let sent = b"GET /a HTTP/1.1\nHost: h\nX-A: b \r\nX-B: c\n\n";
        let out = forwarded(sent, false).unwrap();
        assert!(
            out.starts_with("GET /a HTTP/1.1\r\nHost: h\r\nX-A: b \r\nX-B: c\r\nx-forwarded-for"),
            "{out:?}"
        );
        assert!(!out.replace("\r\n", "").contains('\n'), "{out:?}");
    }

    #[test]
    fn decimal_writes_every_width() {
        for n in [0, 7, 10, 99, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn host_rules_refuse_what_they_must() {
        for (sent, status) in [
            (&b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n"[..], 400),
            (b"GET / HTTP/1.1\r\nHost: h h\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: h:99999x\r\n\r\n", 400),
        ] {
            assert_eq!(
                forwarded(sent, false),
                Err(status),
                "{}",
                String::from_utf8_lossy(sent)
            );
        }
        assert!(
            forwarded(b"GET / HTTP/1.0\r\n\r\n", false)
                .unwrap()
                .starts_with("GET / HTTP/1.1\r\nhost: \r\nx-forwarded-for")
        );
    }
}
