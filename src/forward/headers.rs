//! Header rewriting at the hop: hop-by-hop headers out, forwarding headers in, and the request
//! turned into an HTTP/1.1 origin-form request for the backend.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Hop-by-hop fields (RFC 9110 §7.6.1), by the rule the byte-level path uses too.
#[inline]
fn is_hop_by_hop(name: &HeaderName) -> bool {
    crate::http1::forward::is_hop_by_hop(name.as_str().as_bytes())
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
            // The message's target, and what a trusted proxy says about the client: never a
            // connection's business to remove.
            .filter(|t| !crate::http1::forward::is_protected(t))
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
    /// The pool's `trusted_proxies` when the peer is one of them (a proxy of ours, whose word
    /// about the original client is kept); `None` for anyone else.
    believed: Option<Arc<[IpNet]>>,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub(crate) https: bool,
}

impl Client {
    /// The client's address as `X-Forwarded-For` gets it.
    pub(crate) fn forwarded_for(&self) -> &str {
        self.forwarded_for.to_str().unwrap_or_default()
    }

    pub(crate) fn new(ip: IpAddr, trusted_proxies: &Arc<[IpNet]>) -> Client {
        let ip = ip.to_canonical();
        let forwarded_for =
            HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        let trusted = trusted_proxies.iter().any(|net| net.contains(&ip));
        Client {
            ip,
            forwarded_for,
            believed: trusted.then(|| trusted_proxies.clone()),
            https: false,
        }
    }

    /// A proxy of ours (`trusted_proxies`): what it says about the original client is kept.
    pub(crate) fn trusted(&self) -> bool {
        self.believed.is_some()
    }

    /// The proxies whose `X-Forwarded-For` names this connection's client (`client_ip` keys):
    /// none unless the peer is one of them.
    pub(crate) fn believed(&self) -> &[IpNet] {
        self.believed.as_deref().unwrap_or_default()
    }

    /// The scheme the client used, as `X-Forwarded-Proto` says it.
    fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.https { "https" } else { "http" })
    }
}

/// Settle which host the request is for, or refuse it (RFC 9112 §3.2, RFC 9113 §8.3.1): the
/// authority of an absolute-form target or of HTTP/2's `:authority` wins and becomes the Host
/// header; otherwise exactly one valid Host header is needed (HTTP/1.0 may have none). The key,
/// X-Forwarded-Host and the backend all see the one host that results, never a second one.
pub(crate) fn settle_host<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return Err("userinfo in the request target");
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| "invalid authority")?;
        req.headers_mut().insert(header::HOST, host);
        return Ok(());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("more than one Host header"),
        (Some(host), None) if !crate::http1::is_valid_host(host.as_bytes()) => {
            Err("invalid Host header")
        }
        (Some(_), None) => Ok(()),
        (None, _) if req.version() == Version::HTTP_10 => Ok(()),
        (None, _) => Err("no Host header"),
    }
}

/// Turn a client request into the request the backend receives.
pub(crate) fn prepare_request<B>(req: &mut Request<B>, client: &Client) {
    let version = req.version();
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    // The server side answered the expectation (hyper sends 100 Continue when the body is
    // first read); the byte-level path drops it too.
    headers.remove(header::EXPECT);
    if version == Version::HTTP_2 {
        join_cookies(headers);
    }

    if client.trusted() {
        // A proxy of ours in front: extend its chain, keep what it says about the client.
        append_forwarded_for(headers, client);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), client.proto());
        }
        if !headers.contains_key(&X_FORWARDED_HOST)
            && let Some(host) = headers.get(header::HOST).cloned()
        {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    } else {
        // Anyone else could claim any client address, scheme or host: what they said is
        // dropped and replaced by what this hop knows.
        headers.remove(header::FORWARDED);
        headers.remove(&X_REAL_IP);
        headers.insert(X_FORWARDED_FOR.clone(), client.forwarded_for.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), client.proto());
        match headers.get(header::HOST).cloned() {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }

    // HTTP/1.1 requires a Host: an HTTP/1.0 client's missing one goes up empty (RFC 9112 §3.2).
    // (`settle_host` left every other request exactly one.)
    if version == Version::HTTP_10 && !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, HeaderValue::from_static(""));
    }

    // Only the path and query go upstream: an absolute-form URI naming some other host is
    // never followed, the backend is always the one the ring chose.
    let uri = req.uri();
    let as_received = uri
        .path_and_query()
        .filter(|pq| pq.as_str().starts_with('/'))
        .map(|pq| Uri::from(pq.clone()))
        // An absolute target's path may be stored empty (`http://h`); as a URI on its own
        // that would be no path at all.
        .filter(|origin| origin.path().starts_with('/'));
    let origin = match as_received {
        // Origin-form (nearly every HTTP/1.1 request) and most HTTP/2 targets: passed on.
        Some(origin) => origin,
        // An absolute target without a path (`http://h`, `http://h?q`): "/" and its query.
        _ => {
            let path = Some(uri.path())
                .filter(|p| p.starts_with('/'))
                .unwrap_or("/");
            let text = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            Uri::try_from(text).unwrap_or_else(|_| Uri::from_static("/"))
        }
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

    fn untrusted(ip: &str) -> Client {
        Client::new(ip.parse().unwrap(), &Arc::from([]))
    }

    /// A host settled, then prepared for a backend, as the request path does.
    fn forward(req: &mut Request<()>, client: &Client) {
        settle_host(req).unwrap();
        prepare_request(req, client);
    }

    #[test]
    fn hop_by_hop_headers_are_removed_with_the_ones_connection_names() {
        let mut req = request(
            Version::HTTP_11,
            "/x",
            &[
                ("host", "a.example"),
                ("connection", "keep-alive, x-secret-hop, host"),
                ("keep-alive", "timeout=5"),
                ("x-secret-hop", "1"),
                ("te", "trailers"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-end-to-end", "kept"),
            ],
        );
        forward(&mut req, &untrusted("10.0.0.1"));
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
        assert_eq!(h["host"], "a.example", "Connection can never remove Host");
    }

    #[test]
    fn an_untrusted_client_cannot_claim_another_address_scheme_or_host() {
        let mut req = request(
            Version::HTTP_11,
            "/p?q=1",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "admin.example"),
                ("forwarded", "for=1.1.1.1;proto=https"),
                ("x-real-ip", "1.1.1.1"),
            ],
        );
        forward(&mut req, &untrusted("::ffff:10.0.0.7"));
        let h = req.headers();
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
        assert_eq!(req.version(), Version::HTTP_11);
    }

    #[test]
    fn a_trusted_proxy_s_chain_is_extended_and_its_claims_kept() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut req = request(
            Version::HTTP_11,
            "/p",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=1.1.1.1;proto=https"),
            ],
        );
        forward(
            &mut req,
            &Client::new("10.0.0.7".parse().unwrap(), &Arc::from(nets)),
        );
        let h = req.headers();
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["forwarded"], "for=1.1.1.1;proto=https");
    }

    #[test]
    fn an_absolute_form_target_names_the_host_and_only_its_path_goes_upstream() {
        let mut req = request(
            Version::HTTP_11,
            "http://elsewhere.example/p?q=1",
            &[("host", "shop.example")],
        );
        forward(&mut req, &untrusted("10.0.0.7"));
        assert_eq!(req.headers()["host"], "elsewhere.example");
        assert_eq!(req.headers()["x-forwarded-host"], "elsewhere.example");
        // The other host is never contacted: the backend is the one the ring chose.
        assert_eq!(req.uri(), "/p?q=1");
    }

    #[test]
    fn an_absolute_target_becomes_slash_path_query_whatever_it_lacks() {
        for (target, origin) in [
            ("http://t.example?q=1", "/?q=1"),
            ("http://t.example#frag/x", "/"),
            ("http://t.example", "/"),
            ("http://t.example/a/b?c=d", "/a/b?c=d"),
        ] {
            let mut req = request(Version::HTTP_11, target, &[]);
            forward(&mut req, &untrusted("10.0.0.1"));
            assert_eq!(req.uri(), origin, "{target}");
            assert_eq!(req.uri().path_and_query().unwrap().as_str(), origin);
            assert!(req.uri().path().starts_with('/'), "{target}");
        }
    }

    #[test]
    fn host_rules() {
        let settle = |version, uri, hosts: &[&str]| {
            let headers: Vec<(&str, &str)> = hosts.iter().map(|h| ("host", *h)).collect();
            settle_host(&mut request(version, uri, &headers))
        };
        use Version as V;
        assert_eq!(settle(V::HTTP_11, "/", &[]), Err("no Host header"));
        assert_eq!(settle(V::HTTP_10, "/", &[]), Ok(()));
        assert_eq!(
            settle(V::HTTP_11, "/", &["a.example", "b.example"]),
            Err("more than one Host header")
        );
        for bad in ["a b", "a/b", "user@a", "a:port", ""] {
            assert_eq!(
                settle(V::HTTP_11, "/", &[bad]),
                Err("invalid Host header"),
                "{bad:?}"
            );
        }
        for good in [
            "a.example",
            "a.example:8080",
            "10.0.0.1:80",
            "[::1]:80",
            "localhost",
        ] {
            assert_eq!(settle(V::HTTP_11, "/", &[good]), Ok(()), "{good}");
        }
        // The target's authority wins over any Host header, and there may be none.
        assert_eq!(settle(V::HTTP_11, "http://t.example/", &[]), Ok(()));
        assert_eq!(settle(V::HTTP_11, "http://t.example/", &["a", "b"]), Ok(()));
    }

    #[test]
    fn http2_requests_get_host_and_one_cookie_header() {
        let mut req = request(
            Version::HTTP_2,
            "http://h2.example:8080/a",
            &[
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("host", "other.example"),
            ],
        );
        forward(&mut req, &untrusted("127.0.0.1"));
        let h = req.headers();
        assert_eq!(h["host"], "h2.example:8080", ":authority becomes Host");
        assert_eq!(h["x-forwarded-host"], "h2.example:8080");
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(req.uri(), "/a");
    }

    /// The hyper path (`settle_host` + `prepare_request` on a `HeaderMap`) and the byte-level
    /// path (`http1::forward::write_request`) give a backend the same request: method, target
    /// and fields (names compared case-blind; framing fields aside, which each writes its way).
    mod same_as_the_byte_level_path {
        use super::*;
        use crate::http1::forward::{Hop, write_request};
        use crate::http1::request::{self as h1, MAX_HEADERS};
        use proptest::prelude::*;

        const FIELDS: &[(&str, &str)] = &[
            ("Host", "a.example"),
            ("host", "b.example:8080"),
            ("Connection", "keep-alive"),
            ("Connection", "close"),
            ("Connection", "x-a, host, te"),
            ("connection", "X-Forwarded-For, cookie"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic eA=="),
            ("X-Forwarded-For", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8, 9.9.9.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "orig.example"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("Cookie", "a=1"),
            ("X-A", "1"),
            ("x-a", "2"),
            ("Accept", "*/*"),
        ];
        const TARGETS: &[&str] = &[
            "/",
            "/p?q=1",
            "http://t.example/p?q",
            "http://t.example",
            "http://t.example:81?q",
        ];

        /// Method, target and fields as a backend would read them. Transfer-Encoding aside: the
        /// hyper path strips it and hyper's client writes it when it streams the body.
        type Seen = (String, String, Vec<(String, String)>);

        fn seen(
            method: &str,
            target: &str,
            fields: impl Iterator<Item = (String, String)>,
        ) -> Seen {
            let mut fields: Vec<(String, String)> =
                fields.filter(|(n, _)| n != "transfer-encoding").collect();
            fields.sort();
            (method.to_owned(), target.to_owned(), fields)
        }

        fn via_hyper(sent: &[u8], client: &Client) -> Option<Seen> {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut slots);
            parsed.parse(sent).ok()?;
            let mut req = Request::builder()
                .method(parsed.method?)
                .uri(parsed.path?)
                .version(if parsed.version? == 0 {
                    Version::HTTP_10
                } else {
                    Version::HTTP_11
                });
            for h in parsed.headers.iter() {
                req = req.header(h.name, h.value);
            }
            let mut req = req.body(()).ok()?;
            settle_host(&mut req).ok()?;
            prepare_request(&mut req, client);
            let fields = req.headers().iter().map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            });
            Some(seen(req.method().as_str(), &req.uri().to_string(), fields))
        }

        fn via_bytes(sent: &[u8], trusted: bool) -> Option<Seen> {
            let mut slots = crate::http1::slots::<MAX_HEADERS>();
            let head = h1::parse(sent, &mut slots, 1 << 16).ok()??;
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
            .ok()?;
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut back = httparse::Request::new(&mut slots);
            assert!(
                back.parse(&out).unwrap().is_complete(),
                "{}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(back.version, Some(1));
            let fields = back.headers.iter().map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            });
            Some(seen(back.method?, back.path?, fields))
        }

        thread_local! {
            /// Cases this thread's run compared (both paths accepted the request).
            static COMPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }

        #[test]
        fn most_cases_are_compared_not_skipped() {
            the_backend_gets_the_same_request();
            let compared = COMPARED.with(std::cell::Cell::get);
            assert!(compared > 1000, "only {compared} of 2000 cases compared");
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn the_backend_gets_the_same_request(
                target in 0..TARGETS.len(),
                picks in proptest::collection::vec(0..FIELDS.len(), 0..8),
                with_host in proptest::bool::weighted(0.9),
                body in 0..4u8,
                http10 in proptest::bool::weighted(0.2),
                trusted in proptest::bool::ANY,
            ) {
                let mut sent = format!(
                    "POST {} HTTP/1.{}\r\n",
                    TARGETS[target],
                    if http10 { 0 } else { 1 }
                );
                // Mostly exactly one Host, so most cases get past the Host rules to compare.
                if with_host {
                    sent.push_str("Host: h.example\r\n");
                }
                let host = |i: &&usize| FIELDS[**i].0.eq_ignore_ascii_case("host");
                for &i in picks.iter().filter(|i| !with_host || !host(i)) {
                    sent.push_str(&format!("{}: {}\r\n", FIELDS[i].0, FIELDS[i].1));
                }
                match body {
                    1 => sent.push_str("Content-Length: 3\r\n"),
                    3 => sent.push_str("Content-Length: 0\r\n"),
                    2 if !http10 => sent.push_str("Transfer-Encoding: chunked\r\n"),
                    _ => {}
                }
                sent.push_str("\r\n");
                let ours_net: [IpNet; 1] = ["10.0.0.0/8".parse().unwrap()];
                let client = Client::new("10.0.0.9".parse().unwrap(), &Arc::from(if trusted { &ours_net[..] } else { &[] }));
                let ours = via_bytes(sent.as_bytes(), trusted);
                let theirs = via_hyper(sent.as_bytes(), &client);
                // The byte level is the stricter: what it accepts, the hyper path accepts.
                if let Some(ours) = ours {
                    prop_assert_eq!(Some(ours), theirs, "{}", sent);
                    COMPARED.with(|c| c.set(c.get() + 1));
                }
            }
        }
    }
}
