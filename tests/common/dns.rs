//! A DNS server on 127.0.0.1 (UDP) whose records a test changes while the proxy runs: pods
//! added, removed, given new IPs, or every answer a SERVFAIL.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Zone {
    /// Name → (target, port) per SRV record.
    srv: HashMap<String, Vec<(String, u16)>>,
    a: HashMap<String, Vec<Ipv4Addr>>,
}

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    failing: Arc<AtomicBool>,
    /// Put the targets' A records in SRV answers' additional section, as Kubernetes does.
    additionals: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    stop: CancellationToken,
}

/// Every answer lives one second: the proxy's own interval decides how soon it asks again.
const TTL: u32 = 1;

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dns = TestDns {
            addr: socket.local_addr().unwrap(),
            zone: Arc::default(),
            failing: Arc::default(),
            additionals: Arc::default(),
            queries: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (zone, failing, additionals, queries, stop) = (
            dns.zone.clone(),
            dns.failing.clone(),
            dns.additionals.clone(),
            dns.queries.clone(),
            dns.stop.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    r = socket.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
                    () = stop.cancelled() => return,
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                queries.fetch_add(1, Ordering::SeqCst);
                let answer = answer(
                    &query,
                    &zone.lock().unwrap(),
                    failing.load(Ordering::SeqCst),
                    additionals.load(Ordering::SeqCst),
                );
                let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
            }
        });
        dns
    }

    /// `name`'s SRV records become `targets` (empty: the name is gone).
    pub fn set_srv(&self, name: &str, targets: &[(&str, u16)]) {
        let targets = targets.iter().map(|(t, p)| (key(t), *p)).collect();
        self.zone.lock().unwrap().srv.insert(key(name), targets);
    }

    /// `name`'s A records become `ips` (empty: the name is gone).
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        self.zone.lock().unwrap().a.insert(key(name), ips.to_vec());
    }

    /// Answer every query with SERVFAIL (true) or from the zone again (false).
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// SRV answers carry their targets' A records too (true), or not (false, the default).
    pub fn additionals(&self, on: bool) {
        self.additionals.store(on, Ordering::SeqCst);
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn answer(query: &Message, zone: &Zone, failing: bool, additionals: bool) -> Message {
    let mut out = Message::response(query.metadata.id, query.metadata.op_code);
    out.metadata.recursion_desired = query.metadata.recursion_desired;
    out.metadata.recursion_available = true;
    out.metadata.authoritative = true;
    out.add_queries(query.queries.clone());
    if failing {
        out.metadata.response_code = ResponseCode::ServFail;
        return out;
    }
    let mut known = false;
    for q in &query.queries {
        let name = key(&q.name().to_ascii());
        let record = |data: RData| Record::from_rdata(q.name().clone(), TTL, data);
        match q.query_type() {
            RecordType::SRV => {
                for (target, port) in zone.srv.get(&name).into_iter().flatten() {
                    let target_name = Name::from_ascii(format!("{target}.")).unwrap();
                    if additionals {
                        for ip in zone.a.get(target).into_iter().flatten() {
                            let a = RData::A(A(*ip));
                            out.add_additional(Record::from_rdata(target_name.clone(), TTL, a));
                        }
                    }
                    out.add_answer(record(RData::SRV(SRV::new(0, 0, *port, target_name))));
                }
            }
            RecordType::A => {
                for ip in zone.a.get(&name).into_iter().flatten() {
                    out.add_answer(record(RData::A(A(*ip))));
                }
            }
            _ => {}
        }
        known |= zone.srv.get(&name).is_some_and(|t| !t.is_empty())
            || zone.a.get(&name).is_some_and(|a| !a.is_empty());
    }
    if !known {
        out.metadata.response_code = ResponseCode::NXDomain;
    }
    out
}
