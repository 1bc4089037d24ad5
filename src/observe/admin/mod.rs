//! The admin listener: Prometheus metrics, Kubernetes probes, the JSON API and the status page.

mod api;
mod guard;
mod scrape;

pub(crate) use guard::Policy;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::shared::Shared;
use crate::util::accept;
use api::AdminError;

pub(crate) struct Admin {
    pub(crate) shared: Arc<Shared>,
    pub(crate) registry: Registry,
    pub(crate) scrape: scrape::ScrapeLock,
    /// Who may use this listener; replaced by reloads.
    pub(crate) policy: arc_swap::ArcSwap<Policy>,
    /// The proxy's shutdown: once it begins, `/readyz` says 503 while the drain runs (the
    /// admin listener itself stays up until the drain ends, for probes and scrapes).
    pub(crate) shutting_down: CancellationToken,
}

/// Serve the admin API until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    while let Some((stream, _)) = accept(&listener, &stop, "admin").await {
        let admin = admin.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn route(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Err(refusal) = admin.policy.load().check(path, req.headers()) {
        return refused(refusal);
    }
    // HEAD is GET without the body (RFC 9110 §9.3.2), which hyper leaves out: monitors that
    // probe with HEAD get what GET would say.
    let method = match req.method() {
        &Method::HEAD => &Method::GET,
        other => other,
    };
    let shared = &admin.shared;
    match (method, path) {
        (&Method::GET, "/") => html(STATUS_PAGE),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") if admin.shutting_down.is_cancelled() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down (draining connections)\n".into(),
        ),
        (&Method::GET, "/readyz") => match api::ready(shared) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        (&Method::GET, "/metrics") => metrics(admin),
        (&Method::GET, "/api/backends") => json(StatusCode::OK, &api::fleet(shared)),
        (&Method::GET, "/api/route") => answer(route_query(shared, req.uri().query())),
        (&Method::GET, "/api/hotkeys") => answer(hot_keys_query(shared, req.uri().query())),
        (_, p) if p.starts_with("/api/backends/") => answer(drain(shared, method, p)),
        (_, "/api/backends" | "/api/route" | "/api/hotkeys") => {
            answer::<()>(Err(AdminError::UseGet))
        }
        (_, "/" | "/healthz" | "/readyz" | "/metrics") => allowing(
            "GET, HEAD",
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; see / for the status page, /metrics, /api/backends, /api/route?key=K, \
             /api/hotkeys\n"
                .into(),
        ),
    }
}

/// `GET /api/route?pool=P&key=K`.
fn route_query(shared: &Shared, query: Option<&str>) -> Result<api::RouteView, AdminError> {
    let mut pool = None;
    let mut key = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "pool" => pool = Some(v.into_owned()),
            "key" => key = Some(v.into_owned()),
            _ => {}
        }
    }
    let key = key.ok_or(AdminError::MissingKey)?;
    api::route(shared, pool.as_deref(), &key)
}

/// `GET /api/hotkeys?pool=P`.
fn hot_keys_query(shared: &Shared, query: Option<&str>) -> Result<api::HotKeysView, AdminError> {
    let pool = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "pool")
        .map(|(_, v)| v.into_owned());
    api::hot_keys(shared, pool.as_deref())
}

/// `POST /api/backends/{pool}/{id}/drain` or `/undrain`; ids may hold '/' only percent-encoded.
fn drain(shared: &Shared, method: &Method, path: &str) -> Result<api::BackendView, AdminError> {
    let rest = &path["/api/backends/".len()..];
    let parts: Vec<&str> = rest.split('/').collect();
    let [pool, id, action] = parts.as_slice() else {
        return Err(AdminError::NotFound);
    };
    let drained = match *action {
        "drain" => true,
        "undrain" => false,
        _ => return Err(AdminError::UnknownAction((*action).to_owned())),
    };
    if method != Method::POST {
        return Err(AdminError::UsePost);
    }
    api::set_drained(shared, pool, &percent_decode(id), drained)
}

fn refused(refusal: guard::Refusal) -> Response<Full<Bytes>> {
    let status = match refusal {
        guard::Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
        guard::Refusal::ForeignHost | guard::Refusal::CrossSite => StatusCode::FORBIDDEN,
    };
    let mut resp = text(status, format!("{refusal}\n"));
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"shardgate admin\""),
        );
    }
    resp
}

/// A JSON API answer: the value, or `{"error": "..."}` with the error's status.
fn answer<T: serde::Serialize>(result: Result<T, AdminError>) -> Response<Full<Bytes>> {
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err(e) => {
            let resp = json(e.status(), &serde_json::json!({ "error": e.to_string() }));
            match e {
                AdminError::UsePost => allowing("POST", resp),
                AdminError::UseGet => allowing("GET, HEAD", resp),
                _ => resp,
            }
        }
    }
}

/// A 405 says which method would do (RFC 9110 §15.5.6).
fn allowing(method: &'static str, mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(method));
    resp
}

const STATUS_PAGE: &str = include_str!("status.html");

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn html(body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    // Ends with a newline, as text on a terminal should (`curl` leaves the prompt after it).
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn metrics(admin: &Admin) -> Response<Full<Bytes>> {
    let buf = match scrape::render(&admin.shared, &admin.registry, &admin.scrape) {
        Ok(buf) => buf,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let mut resp = Response::new(Full::new(Bytes::from(buf)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub(crate) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
