//! Header rewriting at the hop: hop-by-hop headers out, forwarding headers in, and the request
//! turned into an HTTP/1.1 origin-form request for the backend.

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// non-standard ones clients still send.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // `as_str` is a table lookup for standard names, and a match on a string compiles to a
    // length switch and one compare: cheaper than comparing `HeaderName`s one by one.
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Remove hop-by-hop headers, including every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none, or only `Connection: keep-alive`: one pass over the names
    // decides, and nothing is hashed or allocated unless something must go.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Names listed in Connection beyond the usual keep-alive/close are rare: only a value that
    // is something else is split, and only a name found there allocates.
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let value = value.as_bytes();
        if value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close") {
            continue;
        }
        let names = value
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t).ok());
        listed.extend(names);
    }
    for name in listed {
        headers.remove(name);
    }
    // At most 9 distinct names match, so this array never needs more room.
    let mut found: [Option<HeaderName>; 9] = Default::default();
    for (slot, name) in found
        .iter_mut()
        .zip(headers.keys().filter(|n| is_hop_by_hop(n)))
    {
        *slot = Some(name.clone());
    }
    for name in found.into_iter().flatten() {
        headers.remove(name);
    }
}

/// The client end of a connection, with its `X-Forwarded-For` text made once per connection
/// rather than once per request.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) ip: IpAddr,
    forwarded_for: HeaderValue,
}

impl Client {
    pub(crate) fn new(ip: IpAddr) -> Client {
        let ip = ip.to_canonical();
        let forwarded_for =
            HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        Client { ip, forwarded_for }
    }
}

/// Turn a client request into the request the backend receives.
pub(crate) fn prepare_request<B>(req: &mut Request<B>, client: &Client) {
    let version = req.version();
    // HTTP/2 carries the host in :authority; HTTP/1.1 backends need a Host header.
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if version == Version::HTTP_2 {
        join_cookies(headers);
    }

    append_forwarded_for(headers, client);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    match headers.get(header::HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };

    // Only the path and query go upstream: an absolute-form URI naming some other host is
    // never followed, the backend is always the one the ring chose.
    let origin = match req.uri().path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq.clone()),
        _ => Uri::from_static("/"),
    };
    *req.uri_mut() = origin;
    *req.version_mut() = Version::HTTP_11;
}

fn append_forwarded_for(headers: &mut HeaderMap, client: &Client) {
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if prior.peek().is_none() {
        headers.insert(X_FORWARDED_FOR.clone(), client.forwarded_for.clone());
        return;
    }
    // Proxies before us may each have added a header line; keep the chain in order.
    let mut buf = BytesMut::with_capacity(64);
    for v in prior {
        buf.extend_from_slice(v.as_bytes());
        buf.extend_from_slice(b", ");
    }
    buf.extend_from_slice(client.forwarded_for.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(buf.freeze()) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// HTTP/2 may split cookies over several header fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = BytesMut::new();
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(joined.freeze()) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn hop_by_hop_headers_are_removed_with_the_ones_connection_names() {
        let mut req = request(
            Version::HTTP_11,
            "/x",
            &[
                ("host", "a.example"),
                ("connection", "keep-alive, x-secret-hop"),
                ("keep-alive", "timeout=5"),
                ("x-secret-hop", "1"),
                ("te", "trailers"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-end-to-end", "kept"),
            ],
        );
        prepare_request(&mut req, &Client::new("10.0.0.1".parse().unwrap()));
        let h = req.headers();
        for gone in [
            "connection",
            "keep-alive",
            "x-secret-hop",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn forwarding_headers() {
        let mut req = request(
            Version::HTTP_11,
            "http://elsewhere.example/p?q=1",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("x-forwarded-proto", "https"),
            ],
        );
        prepare_request(&mut req, &Client::new("::ffff:10.0.0.7".parse().unwrap()));
        let h = req.headers();
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        // Absolute-form is reduced to origin-form: the other host is never contacted.
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
    }

    #[test]
    fn http2_requests_get_host_and_one_cookie_header() {
        let mut req = request(
            Version::HTTP_2,
            "http://h2.example:8080/a",
            &[("cookie", "a=1"), ("cookie", "b=2")],
        );
        prepare_request(&mut req, &Client::new("127.0.0.1".parse().unwrap()));
        let h = req.headers();
        assert_eq!(h["host"], "h2.example:8080");
        assert_eq!(h["x-forwarded-host"], "h2.example:8080");
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(req.uri(), "/a");
    }
}
