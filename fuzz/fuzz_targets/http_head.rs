//! Shared by the request targets: raw bytes → a request head, as hyper would hand it over.

use std::net::IpAddr;

/// The head of a request as a client could send it, and the client's address: the first 16
/// bytes choose the address (IPv6, often IPv4-mapped), the rest is parsed with httparse.
pub fn request(data: &[u8]) -> Option<(http::Request<()>, IpAddr)> {
    if data.len() < 17 {
        return None;
    }
    let (addr, head) = data.split_at(16);
    let mut octets = [0u8; 16];
    octets.copy_from_slice(addr);
    let peer = IpAddr::from(octets);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(head).ok()?;
    let mut req = http::Request::builder()
        .method(parsed.method?)
        .uri(parsed.path?)
        .version(match parsed.version? {
            0 => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for h in parsed.headers.iter() {
        req = req.header(h.name, h.value);
    }
    Some((req.body(()).ok()?, peer))
}
