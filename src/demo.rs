//! `shardgate demo`: four in-process backends, the proxy in front of them, and the admin API,
//! all on loopback, so a new user can see sharding work with nothing but curl.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::control::proxy::Proxy;
use crate::util::accept;

pub(crate) const BACKENDS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    #[error("cannot start demo backend: {0}")]
    Backend(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Start(#[from] crate::control::proxy::StartError),
}

/// The demo's config, as TOML, for backends at `backends`.
pub(crate) fn config_text(
    listen: SocketAddr,
    admin: SocketAddr,
    backends: &[SocketAddr],
) -> String {
    let mut text = format!(
        r#"# shardgate demo config (generated)
[admin]
listen = "{admin}"

[[pools]]
name = "demo"
listen = "{listen}"
key = ["header:x-shard-key", "cookie:user", "query:user", "path"]

[pools.health]
kind = "http"
path = "/health"
interval = "1s"
timeout = "500ms"
"#
    );
    for (i, addr) in backends.iter().enumerate() {
        text.push_str(&format!(
            "\n[[pools.backends]]\nid = \"cache-{i}\"\naddress = \"{addr}\"\n"
        ));
    }
    text
}

/// Run the demo until `stop` is cancelled.
pub(crate) async fn run(
    listen: SocketAddr,
    admin: SocketAddr,
    stop: CancellationToken,
    workers: crate::forward::listener::Workers,
) -> Result<(), DemoError> {
    let mut addrs = Vec::with_capacity(BACKENDS);
    for i in 0..BACKENDS {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(DemoError::Backend)?;
        addrs.push(listener.local_addr().map_err(DemoError::Backend)?);
        tokio::spawn(serve_backend(listener, format!("cache-{i}"), stop.clone()));
    }
    let text = config_text(listen, admin, &addrs);
    let config = config::parse(&text, "<demo config>")?;
    let proxy = Proxy::start_on(config, Registry::new(), stop, workers).await?;
    let p = proxy.pool_addr("demo").expect("demo pool is listening");
    let a = proxy.admin_addr();
    println!(
        "\nshardgate demo: {BACKENDS} backends (cache-0 … cache-3) behind http://{p}, admin on http://{a}\n\n\
         Try:\n\
         \x20 curl -s http://{p}/users/42                    # a key always lands on the same backend\n\
         \x20 for i in $(seq 1 8); do curl -s http://{p}/users/$i; done   # different keys spread out\n\
         \x20 curl -s -H 'x-shard-key: alice' http://{p}/any/path   # the header key wins over the path\n\
         \x20 curl -s 'http://{p}/cart?user=bob'            # or a query parameter\n\
         \x20 curl -s 'http://{a}/api/route?key=/users/42'  # owner and backups of a key\n\
         \x20 curl -s -X POST http://{a}/api/backends/demo/cache-1/drain   # take one out: only its keys move\n\
         \x20 curl -s http://{a}/metrics | grep shardgate_  # Prometheus metrics\n\
         \x20 open http://{a}/ in a browser                 # status page\n\n\
         Ctrl-C stops.\n"
    );
    proxy.wait().await;
    Ok(())
}

/// A demo backend: answers every request with its id, and `/health` with 200.
pub(crate) async fn serve_backend(listener: TcpListener, id: String, stop: CancellationToken) {
    let id: std::sync::Arc<str> = id.into();
    while let Some((stream, _)) = accept(&listener, &stop, "demo backend").await {
        let id = id.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let id = id.clone();
                async move {
                    let body = if req.uri().path() == "/health" {
                        "ok\n".to_owned()
                    } else {
                        format!("{id}: {} {}\n", req.method(), req.uri())
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = StatusCode::OK;
                    if let Ok(v) = http::HeaderValue::from_str(&id) {
                        resp.headers_mut().insert("x-backend", v);
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
