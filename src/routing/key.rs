//! Shard keys: where a request's key comes from, and getting it out without allocating.
//!
//! A pool lists key sources in order; the first one present in a request (and non-empty) is the
//! key. Values are used as sent, byte for byte (no percent-decoding), except `host`, which is
//! lower-cased and loses its port because `Example.com:80` and `example.com` are the same site,
//! and a cookie value, which loses the double quotes RFC 6265 allows around it.

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;

use http::header::{COOKIE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Where to find a request's shard key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The path, without the query: `/a/b`.
    Path,
    /// Path and query: `/a/b?x=1`.
    Uri,
    /// The first N segments of the path: `path_prefix:2` turns `/a/b/c` into `/a/b`.
    PathPrefix(usize),
    /// The Host header (or HTTP/2 `:authority`), lower-cased, port removed.
    Host,
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter's raw value.
    Query(String),
    /// The client's IP address in text form (`10.0.0.7`, `2001:db8::1`).
    ClientIp,
}

impl KeySource {
    /// Parse the config spelling (`path`, `header:x-user`, `path_prefix:2`, ...).
    pub fn parse(text: &str) -> Result<KeySource, String> {
        let (kind, arg) = match text.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (text, None),
        };
        let need_arg = |what: &str, example: &str| -> Result<&str, String> {
            match arg {
                Some(a) if !a.is_empty() => Ok(a),
                _ => Err(format!("`{kind}` needs a {what}, e.g. `{kind}:{example}`")),
            }
        };
        let no_arg = |source: KeySource| -> Result<KeySource, String> {
            match arg {
                None => Ok(source),
                Some(_) => Err(format!("`{kind}` takes no argument")),
            }
        };
        match kind {
            "path" => no_arg(KeySource::Path),
            "uri" => no_arg(KeySource::Uri),
            "host" => no_arg(KeySource::Host),
            "client_ip" => no_arg(KeySource::ClientIp),
            "path_prefix" => {
                let n = need_arg("segment count", "2")?;
                match n.parse::<usize>() {
                    Ok(n) if (1..=64).contains(&n) => Ok(KeySource::PathPrefix(n)),
                    _ => Err(format!(
                        "`path_prefix` needs a segment count from 1 to 64, got `{n}`"
                    )),
                }
            }
            "header" => {
                let name = need_arg("header name", "x-shard-key")?;
                HeaderName::from_bytes(name.as_bytes())
                    .map(KeySource::Header)
                    .map_err(|_| format!("`{name}` is not a valid header name"))
            }
            "cookie" => {
                let name = need_arg("cookie name", "session")?;
                if name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,\"".contains(&b))
                {
                    Ok(KeySource::Cookie(name.to_owned()))
                } else {
                    Err(format!("`{name}` is not a valid cookie name"))
                }
            }
            "query" => {
                let name = need_arg("parameter name", "user")?;
                if name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"&=#".contains(&b))
                {
                    Ok(KeySource::Query(name.to_owned()))
                } else {
                    Err(format!("`{name}` is not a valid query parameter name"))
                }
            }
            _ => Err(format!(
                "unknown key source `{text}`; expected one of path, uri, path_prefix:N, host, \
                 header:NAME, cookie:NAME, query:NAME, client_ip"
            )),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Path => f.write_str("path"),
            KeySource::Uri => f.write_str("uri"),
            KeySource::PathPrefix(n) => write!(f, "path_prefix:{n}"),
            KeySource::Host => f.write_str("host"),
            KeySource::Header(h) => write!(f, "header:{h}"),
            KeySource::Cookie(c) => write!(f, "cookie:{c}"),
            KeySource::Query(q) => write!(f, "query:{q}"),
            KeySource::ClientIp => f.write_str("client_ip"),
        }
    }
}

/// What key extraction looks at: a request as hyper parsed it (HTTP/2).
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The proxies whose `X-Forwarded-For` is believed: the pool's `trusted_proxies` when the
    /// peer (`client_ip`) is one of them, else none.
    pub believed: &'a [IpNet],
}

/// What key extraction looks at: an HTTP/1 head as the proxy's own parser left it, fields as
/// sent (no `HeaderMap`).
#[derive(Clone, Copy)]
pub struct RawView<'a> {
    /// Path and query, as the backend will receive them (origin-form).
    pub path_and_query: &'a str,
    /// The request's one host (the absolute-form target's authority, else the Host field).
    pub host: Option<&'a [u8]>,
    pub headers: &'a [httparse::Header<'a>],
    pub client_ip: IpAddr,
    /// As [`RequestView::believed`].
    pub believed: &'a [IpNet],
}

/// A request, whichever parser read it: the parts a key can come from.
pub trait View<'a>: Copy {
    fn path(self) -> &'a str;
    /// Path and query (`/a/b?x=1`).
    fn path_and_query(self) -> &'a str;
    fn query(self) -> Option<&'a str>;
    fn host(self) -> Option<&'a [u8]>;
    /// The first field named `name`.
    fn header(self, name: &HeaderName) -> Option<&'a [u8]>;
    /// Every field named `name`, in order.
    fn headers_named(self, name: &HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]>;
    /// The connection's peer.
    fn client_ip(self) -> IpAddr;
    /// As [`RequestView::believed`].
    fn believed(self) -> &'a [IpNet];
}

impl<'a> View<'a> for RequestView<'a> {
    fn path(self) -> &'a str {
        self.uri.path()
    }
    fn path_and_query(self) -> &'a str {
        self.uri
            .path_and_query()
            .map_or(self.uri.path(), |pq| pq.as_str())
    }
    fn query(self) -> Option<&'a str> {
        self.uri.query()
    }
    fn host(self) -> Option<&'a [u8]> {
        match self.headers.get(HOST) {
            Some(v) => Some(v.as_bytes()),
            None => Some(self.uri.authority()?.as_str().as_bytes()),
        }
    }
    fn header(self, name: &HeaderName) -> Option<&'a [u8]> {
        self.headers.get(name).map(HeaderValue::as_bytes)
    }
    fn headers_named(self, name: &HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        self.headers
            .get_all(name)
            .into_iter()
            .map(HeaderValue::as_bytes)
    }
    fn client_ip(self) -> IpAddr {
        self.client_ip
    }
    fn believed(self) -> &'a [IpNet] {
        self.believed
    }
}

impl<'a> View<'a> for RawView<'a> {
    fn path(self) -> &'a str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }
    fn path_and_query(self) -> &'a str {
        self.path_and_query
    }
    fn query(self) -> Option<&'a str> {
        self.path_and_query.split_once('?').map(|(_, q)| q)
    }
    fn host(self) -> Option<&'a [u8]> {
        self.host
    }
    fn header(self, name: &HeaderName) -> Option<&'a [u8]> {
        self.headers_named(name).next()
    }
    fn headers_named(self, name: &HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        let headers: &'a [httparse::Header<'a>] = self.headers;
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    }
    fn client_ip(self) -> IpAddr {
        self.client_ip
    }
    fn believed(self) -> &'a [IpNet] {
        self.believed
    }
}

/// A shard key: borrowed from the request where possible, otherwise held inline on the stack.
/// The inline variant is large on purpose: it lives on the stack for one hash and saves a heap
/// allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Key<'a> {
    Borrowed(&'a [u8]),
    Inline { buf: [u8; INLINE], len: usize },
}

const INLINE: usize = 256;

impl Key<'_> {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Borrowed(b) => b,
            Key::Inline { buf, len } => &buf[..*len],
        }
    }
}

/// `f` of the key of the first source present in the request. The data path's way in: the key
/// is not moved (a `Key` is large, for its inline buffer, and a returned one can be copied
/// whole on every request).
#[inline]
pub(crate) fn with_key<'a, R>(
    sources: &'a [KeySource],
    req: impl View<'a>,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    for source in sources {
        if let Some(key) = from_source(source, req) {
            return Some(f(key.as_bytes()));
        }
    }
    None
}

/// The key of the first source present in the request, with the source that supplied it.
pub(crate) fn extract<'a>(
    sources: &'a [KeySource],
    req: impl View<'a>,
) -> Option<(&'a KeySource, Key<'a>)> {
    sources
        .iter()
        .find_map(|s| from_source(s, req).map(|k| (s, k)))
}

/// The ring hash (by `flavor`) of the request's key, or `None` if no source supplied one.
#[inline]
pub fn hash<'a>(
    sources: &'a [KeySource],
    req: impl View<'a>,
    flavor: crate::routing::ring::Flavor,
) -> Option<u64> {
    extract(sources, req).map(|(_, k)| flavor.hash(k.as_bytes()))
}

fn non_empty(b: &[u8]) -> Option<Key<'_>> {
    (!b.is_empty()).then_some(Key::Borrowed(b))
}

fn from_source<'a>(source: &'a KeySource, req: impl View<'a>) -> Option<Key<'a>> {
    match source {
        KeySource::Path => non_empty(req.path().as_bytes()),
        KeySource::Uri => non_empty(req.path_and_query().as_bytes()),
        KeySource::PathPrefix(n) => non_empty(path_prefix(req.path(), *n).as_bytes()),
        KeySource::Host => host(req.host()?),
        KeySource::Header(name) => req.header(name).and_then(non_empty),
        KeySource::Cookie(name) => cookie(req.headers_named(&COOKIE), name.as_bytes()),
        KeySource::Query(name) => req
            .query()
            .and_then(|q| query_param(q, name.as_bytes()))
            .and_then(non_empty),
        KeySource::ClientIp => {
            let mut buf = [0u8; INLINE];
            let mut cursor = &mut buf[..];
            write!(cursor, "{}", client_address(req)).ok()?;
            let len = INLINE - cursor.len();
            Some(Key::Inline { buf, len })
        }
    }
}

/// The client a `client_ip` key stands for. The peer, unless the peer is a proxy of ours: then
/// the nearest address in `X-Forwarded-For` that is not one of ours, read from the right, as
/// nginx's `real_ip_recursive` reads it (everything further left is the client's own claim, so
/// a client cannot choose its key, and is never looked at: a long chain costs nothing). An
/// entry that is not an address ends the walk at the proxy of ours nearest to it; when every
/// entry is ours, the leftmost one is the client. Entries are split at commas and blanks.
fn client_address<'a>(req: impl View<'a>) -> IpAddr {
    let mut client = req.client_ip().to_canonical();
    let ours = req.believed();
    if ours.is_empty() {
        return client;
    }
    for field in req.headers_named(&X_FORWARDED_FOR).rev() {
        for entry in field.rsplit(|&b| b == b',' || b == b' ' || b == b'\t') {
            if entry.is_empty() {
                continue;
            }
            match forwarded_address(entry) {
                Some(ip) if ours.iter().any(|net| net.contains(&ip)) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry's address: bare, bracketed, or with a port as some proxies
/// write it (`192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`).
fn forwarded_address(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let ip = match bare.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => text.parse::<std::net::SocketAddr>().ok()?.ip(),
    };
    Some(ip.to_canonical())
}

/// The first `n` segments of `path`, with their slashes: (`/a/b/c`, 2) → `/a/b`.
fn path_prefix(path: &str, n: usize) -> &str {
    let mut seen = 0;
    for (i, b) in path.bytes().enumerate() {
        if b == b'/' && i > 0 {
            seen += 1;
            if seen == n {
                return &path[..i];
            }
        }
    }
    path
}

fn host(raw: &[u8]) -> Option<Key<'_>> {
    let without_port = strip_port(raw);
    if without_port.is_empty() {
        return None;
    }
    if !without_port.iter().any(u8::is_ascii_uppercase) {
        return Some(Key::Borrowed(without_port));
    }
    if without_port.len() > INLINE {
        // Longer than any DNS name; hash it as sent rather than allocate.
        return Some(Key::Borrowed(without_port));
    }
    let mut buf = [0u8; INLINE];
    buf[..without_port.len()].copy_from_slice(without_port);
    buf[..without_port.len()].make_ascii_lowercase();
    Some(Key::Inline {
        buf,
        len: without_port.len(),
    })
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`.
fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

fn cookie<'a>(values: impl Iterator<Item = &'a [u8]>, name: &[u8]) -> Option<Key<'a>> {
    // HTTP/2 clients may send one Cookie header per cookie, so look at all of them.
    for value in values {
        for pair in value.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if let Some(rest) = pair.strip_prefix(name)
                && let Some(v) = rest.strip_prefix(b"=")
            {
                let v = v
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v);
                return non_empty(v);
            }
        }
    }
    None
}

fn query_param<'a>(query: &'a str, name: &[u8]) -> Option<&'a [u8]> {
    query.as_bytes().split(|&b| b == b'&').find_map(|pair| {
        let rest = pair.strip_prefix(name)?;
        if rest.is_empty() {
            Some(rest)
        } else {
            rest.strip_prefix(b"=")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn key_of(source: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let sources = [KeySource::parse(source).unwrap()];
        let view = RequestView {
            uri: &uri,
            headers: &map,
            client_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            believed: &[],
        };
        extract(&sources, view).map(|(_, k)| String::from_utf8(k.as_bytes().to_vec()).unwrap())
    }

    #[test]
    fn each_source() {
        assert_eq!(key_of("path", "/a/b?x=1", &[]).as_deref(), Some("/a/b"));
        assert_eq!(key_of("uri", "/a/b?x=1", &[]).as_deref(), Some("/a/b?x=1"));
        assert_eq!(
            key_of("path_prefix:2", "/a/b/c", &[]).as_deref(),
            Some("/a/b")
        );
        assert_eq!(
            key_of("path_prefix:1", "/a/b/c", &[]).as_deref(),
            Some("/a")
        );
        assert_eq!(
            key_of("path_prefix:5", "/a/b", &[]).as_deref(),
            Some("/a/b")
        );
        assert_eq!(
            key_of("host", "/", &[("host", "Example.COM:8080")]).as_deref(),
            Some("example.com")
        );
        assert_eq!(
            key_of("host", "/", &[("host", "[::1]:80")]).as_deref(),
            Some("[::1]")
        );
        assert_eq!(
            key_of("host", "http://h2.example/x", &[]).as_deref(),
            Some("h2.example")
        );
        assert_eq!(
            key_of("header:x-user", "/", &[("x-user", "alice")]).as_deref(),
            Some("alice")
        );
        assert_eq!(key_of("header:x-user", "/", &[("x-user", "")]), None);
        assert_eq!(
            key_of("cookie:sid", "/", &[("cookie", "a=1; sid=\"xyz\"; b=2")]).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            key_of("cookie:sid", "/", &[("cookie", "a=1"), ("cookie", "sid=2")]).as_deref(),
            Some("2")
        );
        assert_eq!(key_of("cookie:sid", "/", &[("cookie", "sidx=1")]), None);
        assert_eq!(
            key_of("query:u", "/p?a=1&u=bob&c", &[]).as_deref(),
            Some("bob")
        );
        assert_eq!(key_of("query:u", "/p?uu=1", &[]), None);
        assert_eq!(key_of("query:u", "/p?u=", &[]), None);
        assert_eq!(key_of("client_ip", "/", &[]).as_deref(), Some("10.1.2.3"));
    }

    #[test]
    fn first_present_source_wins() {
        let uri: Uri = "/obj/1".parse().unwrap();
        let without = HeaderMap::new();
        let mut with = HeaderMap::new();
        with.insert("x-shard-key", HeaderValue::from_static("k1"));
        let sources = [
            KeySource::parse("header:x-shard-key").unwrap(),
            KeySource::Path,
        ];
        let view = |h| RequestView {
            uri: &uri,
            headers: h,
            client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            believed: &[],
        };
        let (src, key) = extract(&sources, view(&without)).unwrap();
        assert_eq!((src, key.as_bytes()), (&KeySource::Path, &b"/obj/1"[..]));
        let (src, key) = extract(&sources, view(&with)).unwrap();
        assert_eq!(src, &sources[0]);
        assert_eq!(key.as_bytes(), b"k1");
    }

    #[test]
    fn ipv4_mapped_clients_key_as_ipv4() {
        let uri: Uri = "/".parse().unwrap();
        let headers = HeaderMap::new();
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        let view = RequestView {
            uri: &uri,
            headers: &headers,
            client_ip: mapped,
            believed: &[],
        };
        let (_, key) = extract(&[KeySource::ClientIp], view).unwrap();
        assert_eq!(key.as_bytes(), b"10.0.0.9");
    }

    /// The `client_ip` key of a request from `peer` carrying `forwarded` (one
    /// `X-Forwarded-For` field each), with `ours` as the pool's trusted proxies.
    fn client_key(peer: &str, ours: &[&str], forwarded: &[&str]) -> String {
        let uri: Uri = "/".parse().unwrap();
        let mut headers = HeaderMap::new();
        for f in forwarded {
            headers.append("x-forwarded-for", HeaderValue::from_str(f).unwrap());
        }
        let peer: IpAddr = peer.parse().unwrap();
        let nets: Vec<IpNet> = ours.iter().map(|n| n.parse().unwrap()).collect();
        let believed = match nets.iter().any(|n| n.contains(&peer)) {
            true => &nets[..],
            false => &[],
        };
        let view = RequestView {
            uri: &uri,
            headers: &headers,
            client_ip: peer,
            believed,
        };
        let (_, key) = extract(&[KeySource::ClientIp], view).unwrap();
        String::from_utf8(key.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn behind_proxies_of_ours_the_client_is_the_nearest_address_not_ours() {
        let lb = ["10.0.0.0/8"];
        // From anyone else, what the request claims is ignored.
        assert_eq!(client_key("192.0.2.7", &lb, &["1.1.1.1"]), "192.0.2.7");
        assert_eq!(client_key("10.0.0.2", &[], &["1.1.1.1"]), "10.0.0.2");
        // From a load balancer of ours: the address it saw.
        assert_eq!(client_key("10.0.0.2", &lb, &["1.1.1.1"]), "1.1.1.1");
        // A client's own claim to the left of that is not believed, however it is split.
        assert_eq!(
            client_key("10.0.0.2", &lb, &["6.6.6.6, 1.1.1.1"]),
            "1.1.1.1"
        );
        assert_eq!(
            client_key("10.0.0.2", &lb, &["6.6.6.6", "1.1.1.1"]),
            "1.1.1.1"
        );
        // Proxies of ours in a chain are skipped, ports and brackets and spacing tolerated.
        assert_eq!(
            client_key("10.0.0.2", &lb, &["6.6.6.6,1.1.1.1:4711 , 10.9.9.9"]),
            "1.1.1.1"
        );
        assert_eq!(
            client_key("10.0.0.2", &lb, &["[2001:db8::1]:80, ::ffff:10.1.1.1"]),
            "2001:db8::1"
        );
        assert_eq!(
            client_key("10.0.0.2", &lb, &["[2001:db8::2]"]),
            "2001:db8::2"
        );
        assert_eq!(client_key("10.0.0.2", &lb, &["6.6.6.6 1.1.1.1"]), "1.1.1.1");
        // A long claimed chain to the left is never read: its garbage changes nothing.
        let long = format!("{}1.1.1.1", "junk, ".repeat(10_000));
        assert_eq!(client_key("10.0.0.2", &lb, &[&long]), "1.1.1.1");
        // Only ours: the leftmost; nothing: the peer.
        assert_eq!(
            client_key("10.0.0.2", &lb, &["10.3.3.3, 10.4.4.4"]),
            "10.3.3.3"
        );
        assert_eq!(client_key("10.0.0.2", &lb, &[]), "10.0.0.2");
        // Something unreadable stops the walk at the proxy of ours next to it.
        assert_eq!(
            client_key("10.0.0.2", &lb, &["1.1.1.1, unknown"]),
            "10.0.0.2"
        );
        assert_eq!(
            client_key("10.0.0.2", &lb, &["1.1.1.1, unknown, 10.5.5.5"]),
            "10.5.5.5"
        );
        assert_eq!(
            client_key("10.0.0.2", &lb, &["unknown, 2.2.2.2, 10.5.5.5"]),
            "2.2.2.2"
        );
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert!(
            KeySource::parse("header")
                .unwrap_err()
                .contains("needs a header name")
        );
        assert!(
            KeySource::parse("path:3")
                .unwrap_err()
                .contains("takes no argument")
        );
        assert!(
            KeySource::parse("path_prefix:0")
                .unwrap_err()
                .contains("1 to 64")
        );
        assert!(
            KeySource::parse("bogus")
                .unwrap_err()
                .contains("unknown key source")
        );
        assert!(KeySource::parse("header:bad header").is_err());
        for s in [
            "path",
            "uri",
            "path_prefix:3",
            "host",
            "header:x-a",
            "cookie:s",
            "query:q",
            "client_ip",
        ] {
            assert_eq!(KeySource::parse(s).unwrap().to_string(), s);
        }
    }
}
