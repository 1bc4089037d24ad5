//! A backend's response head: parsed in place and framed (RFC 9112 §6.3). A response the proxy
//! must not pass on is refused with 502: the client is owed a clean answer, not a guess.

use super::names::{Name, Names};
use super::{ConnectionField, Framing, FramingFields, Refusal};

/// Largest response head the proxy accepts from a backend.
pub const MAX_HEAD: usize = 64 * 1024;

/// A complete response head, borrowing the bytes it was parsed from.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    pub status: u16,
    /// The reason phrase as sent (may be empty).
    pub reason: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: &'h [httparse::Header<'b>],
    /// The head's bytes, blank line included (the fields' slices point into them).
    pub raw: &'b [u8],
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub framing: Framing,
    /// Whether the backend connection may carry another request afterwards.
    pub keep_alive: bool,
    /// `Connection` names fields besides close and keep-alive (they go no further).
    pub lists_fields: bool,
    /// Exactly one Content-Length field (which, with `Framing::Length`, framed the body).
    pub one_length: bool,
    /// What each field is to the proxy.
    pub names: Names,
}

impl Head<'_, '_> {
    /// 1xx: an interim response (100 Continue, 103 Early Hints); the final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parse the response head at the start of `buf`, to a request with method `method`.
/// `Ok(None)`: incomplete, read more (unless `buf` already holds `max_head` bytes: refused).
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
    max_head: usize,
    method: &str,
) -> Result<Option<Head<'h, 'b>>, Refusal> {
    const fn gateway(why: &'static str) -> Refusal {
        Refusal { status: 502, why }
    }
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)
    {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Err(gateway("response head too large"));
        }
        Err(_) => return Err(gateway("response head is not valid HTTP/1")),
    };
    let (Some(minor), Some(status)) = (resp.version, resp.code) else {
        unreachable!("a complete response has its status line");
    };
    if status < 100 {
        // Three digits, but no status: 000-099 mean nothing (RFC 9110 §15).
        return Err(gateway("status code below 100"));
    }
    let headers: &'h [httparse::Header<'b>] = resp.headers;
    // One pass over the fields finds everything framing and reuse depend on.
    let mut connection = ConnectionField::default();
    let mut fields = FramingFields::default();
    let mut names = Names::default();
    for (i, h) in headers.iter().enumerate() {
        let name = Name::of(h.name.as_bytes());
        names.set(i, name);
        match name {
            Name::ContentLength => fields.content_length(h.value.trim_ascii()),
            Name::TransferEncoding => fields.transfer_encoding(h.value.trim_ascii()),
            Name::Connection => connection.add(h.value.trim_ascii()),
            _ => {}
        }
    }
    // An HTTP/1.0 message with Transfer-Encoding has faulty framing: the connection ends after
    // it (RFC 9112 §6.1), whatever it asks.
    let coded_10 = minor == 0 && fields.transfer_encodings > 0;
    let mut keep_alive = !connection.close && !coded_10 && (minor == 1 || connection.keep_alive);
    // Bodiless whatever the fields say: a HEAD's answer, interim, 204 and 304 (§6.3 1-2). A
    // framing field on them is ignored rather than passed on as if it framed something.
    let bodiless =
        method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::Empty
    } else {
        let unframed = fields.lengths == 0 && fields.transfer_encodings == 0;
        match fields.finish().map_err(|r| gateway(r.why))? {
            Framing::Empty if unframed => {
                keep_alive = false;
                Framing::UntilClose
            }
            f => f,
        }
    };
    Ok(Some(Head {
        status,
        reason: resp.reason.unwrap_or(""),
        minor,
        headers,
        raw: &buf[..len],
        len,
        framing,
        keep_alive,
        lists_fields: connection.lists_fields,
        one_length: fields.lengths == 1,
        names,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status, framing and keep-alive of an accepted head; the refusal's status otherwise.
    type Framed = Result<(u16, Framing, bool), u16>;

    fn framed(bytes: &[u8], method: &str) -> Framed {
        let mut slots = crate::http1::slots::<64>();
        parse(bytes, &mut slots, 8192, method)
            .map(|h| {
                let h = h.expect("complete");
                (h.status, h.framing, h.keep_alive)
            })
            .map_err(|r| r.status)
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let cases: &[(&[u8], &str, Framed)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                "GET",
                Ok((200, Framing::Length(5), true)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                "HEAD",
                Ok((200, Framing::Empty, true)),
            ),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                "GET",
                Ok((204, Framing::Empty, true)),
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET",
                Ok((304, Framing::Empty, true)),
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\n",
                "POST",
                Ok((100, Framing::Empty, true)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET",
                Ok((200, Framing::Chunked, true)),
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                "GET",
                Ok((200, Framing::UntilClose, false)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                "GET",
                Ok((200, Framing::Empty, true)),
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
                "GET",
                Ok((200, Framing::Length(2), false)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
                "GET",
                Ok((200, Framing::Length(2), false)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET",
                Err(502),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                "GET",
                Err(502),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "GET",
                Err(502),
            ),
            (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "GET", Err(502)),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "GET", Err(502)),
            (b"HTTP/1.1 000 OK\r\n\r\n", "GET", Err(502)),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n",
                "GET",
                Err(502),
            ),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET",
                Ok((200, Framing::Chunked, false)),
            ),
            (
                b"HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 1\r\n\r\n",
                "GET",
                Ok((200, Framing::Length(1), false)),
            ),
        ];
        for (bytes, method, want) in cases {
            assert_eq!(
                framed(bytes, method),
                *want,
                "{method} {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
