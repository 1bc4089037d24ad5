//! A Pingora proxy set up like the others in benches/compare.sh: one worker thread, upstream
//! keep-alive, the backend chosen by Pingora's Ketama consistent hashing over the request's
//! path and query. Listen address and backends come from the environment
//! (`PEER_LISTEN=127.0.0.1:18205 PEER_BACKENDS=127.0.0.1:19101,127.0.0.1:19102`); Pingora's
//! own flags (`-c conf.yaml`) set the thread count and grace periods.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::prelude::*;

struct Ketama(Arc<LoadBalancer<KetamaHashing>>);

#[async_trait]
impl ProxyHttp for Ketama {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let uri = &session.req_header().uri;
        let key = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
        let backend = self
            .0
            .select(key.as_bytes(), 256)
            .ok_or_else(|| Error::new_str("no backend"))?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() {
    let listen = std::env::var("PEER_LISTEN").expect("PEER_LISTEN=host:port");
    let backends = std::env::var("PEER_BACKENDS").expect("PEER_BACKENDS=host:port,...");
    let mut server = Server::new(Some(Opt::parse_args())).expect("server");
    server.bootstrap();
    let upstreams = LoadBalancer::try_from_iter(backends.split(',')).expect("backends");
    let mut proxy = http_proxy_service(&server.configuration, Ketama(Arc::new(upstreams)));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
