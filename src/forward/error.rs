//! Everything that can go wrong while proxying a request, and the one place that turns it into
//! the response the client sees.
//!
//! The client gets the status, the error's kind and a request id; the details (backend names,
//! addresses, OS error text) go to the log line that carries the same id. A front door must not
//! tell any client on the internet how the fleet behind it is laid out.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use crate::forward::upstream::ConnectError;
use crate::state::metrics::UpstreamErrorKind;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// `missing_key = "reject"` and none of the key sources is in the request.
    #[error("no shard key in request: expected one of {sources}")]
    MissingKey { sources: String },
    /// The request itself is malformed in a way the proxy must not guess about (Host rules).
    #[error("bad request: {why}")]
    BadRequest { why: &'static str },
    /// Protocol upgrades (WebSocket), CONNECT tunnels and transfer codings other than chunked
    /// are not proxied.
    #[error("{what} is not supported by this proxy")]
    Unsupported { what: &'static str },
    /// Every backend of the pool is down or drained, or it has none (yet: no usable answer
    /// from its DNS sources).
    #[error("{}", match backends {
        0 => format!("no backend in pool {pool}: it has none yet (no usable DNS answer; see /api/backends)"),
        n => format!("no healthy backend in pool {pool}: all {n} backends are down or drained"),
    })]
    NoBackend { pool: String, backends: usize },
    /// The listener's pool was removed by a reload while the connection was open.
    #[error("pool {pool} is no longer configured")]
    PoolGone { pool: String },
    /// Every connection the backend may have (`upstream_max_connections`) stayed busy.
    #[error("backend {backend} has no free connection after {waited:?}")]
    BackendBusy { backend: String, waited: Duration },
    /// This process ran out of something (file descriptors, ephemeral ports, memory): the
    /// proxy's own problem, never held against a backend.
    #[error("out of local resources connecting to backend {backend}: {source}")]
    LocalResource {
        backend: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to backend {backend}: {source}")]
    Connect {
        backend: String,
        #[source]
        source: ConnectError,
    },
    /// The backend did not send response headers in time.
    #[error("backend {backend} did not answer within {after:?}")]
    Timeout { backend: String, after: Duration },
    /// The backend broke the exchange: reset, closed early, or sent something that isn't HTTP.
    #[error("backend {backend} failed: {source}")]
    Upstream {
        backend: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request head broke a rule of HTTP/1 the proxy's parser enforces (RFC 9112): refused
    /// with the status the rule names (400, 417, 431, 501).
    #[error("request refused: {why}")]
    Refused { status: u16, why: &'static str },
    /// The client's request body broke off or was malformed while it went upstream: the
    /// client's doing, so never counted against the backend (400, or 499 when the client left).
    #[error("the client's request body {}", if *.incomplete { "ended early: the client went away" } else { "is malformed (bad chunked framing)" })]
    ClientBody { incomplete: bool },
    /// The backend's response head is one the proxy must not forward (RFC 9112 §6.3 framing,
    /// or a 101 nobody asked for).
    #[error("backend {backend} sent a bad response: {why}")]
    BadResponse { backend: String, why: &'static str },
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingKey { .. }
            | ProxyError::BadRequest { .. }
            | ProxyError::ClientBody {
                incomplete: false, ..
            } => StatusCode::BAD_REQUEST,
            // nginx's "client closed request": logged and counted, seen by nobody.
            ProxyError::ClientBody { incomplete: true } => {
                StatusCode::from_u16(499).expect("499 is a valid status code")
            }
            ProxyError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Refused { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ProxyError::NoBackend { .. }
            | ProxyError::PoolGone { .. }
            | ProxyError::BackendBusy { .. }
            | ProxyError::LocalResource { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect {
                source: ConnectError::Timeout(_),
                ..
            }
            | ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BadResponse { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Short machine-readable reason, sent as `x-shardgate-error`; for failures of a backend
    /// also the metric label ([`ProxyError::upstream_kind`]).
    pub(crate) fn kind(&self) -> &'static str {
        if let Some(kind) = self.upstream_kind() {
            return kind.as_str();
        }
        match self {
            ProxyError::MissingKey { .. } => "missing_key",
            ProxyError::BadRequest { .. } => "bad_request",
            ProxyError::ClientBody { .. } => "client_body",
            ProxyError::Unsupported { .. } => "unsupported",
            ProxyError::Refused { status: 431, .. } => "head_too_large",
            ProxyError::Refused { status: 417, .. } => "expectation_failed",
            ProxyError::Refused { status: 501, .. } => "unsupported",
            ProxyError::Refused { .. } => "bad_request",
            ProxyError::NoBackend { .. } => "no_backend",
            ProxyError::PoolGone { .. } => "pool_gone",
            ProxyError::LocalResource { .. } => "local_resource",
            _ => unreachable!("backend failures have an upstream kind"),
        }
    }

    /// How a failed exchange counts in `shardgate_upstream_errors_total`; `None` for errors
    /// that are not the backend's (the request's, the pool's, or this process's).
    pub(crate) fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        Some(match self {
            ProxyError::Connect {
                source: ConnectError::Timeout(_),
                ..
            } => UpstreamErrorKind::ConnectTimeout,
            ProxyError::Connect { .. } => UpstreamErrorKind::Connect,
            ProxyError::Timeout { .. } => UpstreamErrorKind::Timeout,
            ProxyError::Upstream { .. } | ProxyError::BadResponse { .. } => {
                UpstreamErrorKind::Upstream
            }
            ProxyError::BackendBusy { .. } => UpstreamErrorKind::BackendBusy,
            _ => return None,
        })
    }

    /// The backend the failure happened on, if one was chosen and is to blame.
    pub(crate) fn backend(&self) -> Option<&str> {
        match self {
            ProxyError::Connect { backend, .. }
            | ProxyError::Timeout { backend, .. }
            | ProxyError::Upstream { backend, .. }
            | ProxyError::BadResponse { backend, .. }
            | ProxyError::BackendBusy { backend, .. } => Some(backend),
            _ => None,
        }
    }

    /// The request itself was at fault (4xx/501), not the fleet.
    pub(crate) fn is_client_error(&self) -> bool {
        matches!(
            self,
            ProxyError::MissingKey { .. }
                | ProxyError::BadRequest { .. }
                | ProxyError::ClientBody { .. }
                | ProxyError::Unsupported { .. }
                | ProxyError::Refused { .. }
        )
    }

    /// Whether this failure says the backend may be down (passive health counts it).
    pub(crate) fn is_backend_down_signal(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::Timeout { .. }
        )
    }

    /// Whether a request that never left may go to the next backend after this failure. A busy
    /// backend answers 503 rather than pushing its overflow onto its neighbours. A local
    /// shortage may go on: ephemeral ports run out per destination, so another backend may
    /// still be reachable.
    pub(crate) fn allows_retry(&self) -> bool {
        !matches!(self, ProxyError::BackendBusy { .. })
    }

    /// Whether an idempotent, bodiless request may be sent again after this failure.
    pub(crate) fn is_replayable(&self) -> bool {
        matches!(
            self,
            ProxyError::Timeout { .. } | ProxyError::Upstream { .. }
        )
    }

    /// The response the client gets: the status, the kind and the request id — the id that
    /// the log line with the details carries.
    pub(crate) fn to_response(&self, request_id: RequestId) -> Response<ProxyBody> {
        let status = self.status();
        let body = format!(
            "{} {} ({}), request {request_id}\n",
            status.as_u16(),
            reason(status),
            self.kind()
        );
        let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert("x-shardgate-error", HeaderValue::from_static(self.kind()));
        resp
    }
}

impl ProxyError {
    /// The error for a connection to `backend` that could not be had: a busy backend and a
    /// local shortage are errors of their own (not the backend's failure).
    pub(crate) fn connecting(backend: &str, source: ConnectError) -> ProxyError {
        let backend = backend.to_owned();
        match source {
            ConnectError::Busy(waited) => ProxyError::BackendBusy { backend, waited },
            ConnectError::Local(source) => ProxyError::LocalResource { backend, source },
            source => ProxyError::Connect { backend, source },
        }
    }

    /// The same answer as [`ProxyError::to_response`], as HTTP/1.1 bytes, for the proxy's own
    /// HTTP/1 path, to a client speaking HTTP/1.`minor`. `close` adds `Connection: close`.
    /// Returns the body's length (the last bytes written).
    pub(crate) fn write_response(
        &self,
        request_id: RequestId,
        close: bool,
        minor: u8,
        out: &mut Vec<u8>,
    ) -> usize {
        use std::io::Write as _;
        let status = self.status();
        let reason = reason(status);
        let body = format!(
            "{} {reason} ({}), request {request_id}\n",
            status.as_u16(),
            self.kind()
        );
        let _ = write!(
            out,
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             x-shardgate-error: {}\r\ncontent-length: {}\r\n{}\r\n{body}",
            status.as_u16(),
            self.kind(),
            body.len(),
            match (close, minor) {
                (true, _) => "connection: close\r\n",
                (false, 0) => "connection: keep-alive\r\n",
                (false, _) => "",
            },
        );
        body.len()
    }
}

/// The status's reason phrase, nginx's for 499.
fn reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        499 => "Client Closed Request",
        _ => status.canonical_reason().unwrap_or(""),
    }
}

/// Names one request in the client's error body and in the log line with the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestId(pub(crate) u64);

impl RequestId {
    /// A fresh id: unique enough to find a log line, cheap, and no lock or shared counter.
    pub(crate) fn new() -> RequestId {
        RequestId(crate::util::thread_random())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer(e: &ProxyError) -> (StatusCode, String, String) {
        let resp = e.to_response(RequestId(0xab));
        let status = resp.status();
        let kind = resp.headers()["x-shardgate-error"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, kind, String::from_utf8(body.to_vec()).unwrap())
    }

    fn io_err(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    #[tokio::test]
    async fn each_error_maps_to_its_status_and_kind() {
        let b = || "c1".to_owned();
        let cases = [
            (
                ProxyError::MissingKey {
                    sources: "header:x-k".into(),
                },
                400,
                "missing_key",
            ),
            (
                ProxyError::BadRequest { why: "no Host" },
                400,
                "bad_request",
            ),
            (
                ProxyError::Unsupported { what: "CONNECT" },
                501,
                "unsupported",
            ),
            (
                ProxyError::ClientBody { incomplete: false },
                400,
                "client_body",
            ),
            (
                ProxyError::ClientBody { incomplete: true },
                499,
                "client_body",
            ),
            (
                ProxyError::NoBackend {
                    pool: "cache".into(),
                    backends: 4,
                },
                503,
                "no_backend",
            ),
            (ProxyError::PoolGone { pool: "p".into() }, 503, "pool_gone"),
            (
                ProxyError::BackendBusy {
                    backend: b(),
                    waited: Duration::from_secs(1),
                },
                503,
                "backend_busy",
            ),
            (
                ProxyError::LocalResource {
                    backend: b(),
                    source: std::io::Error::from_raw_os_error(libc::EMFILE),
                },
                503,
                "local_resource",
            ),
            (
                ProxyError::Connect {
                    backend: b(),
                    source: ConnectError::Io(io_err(std::io::ErrorKind::ConnectionRefused)),
                },
                502,
                "connect",
            ),
            (
                ProxyError::Connect {
                    backend: b(),
                    source: ConnectError::Timeout(Duration::from_secs(1)),
                },
                504,
                "connect_timeout",
            ),
            (
                ProxyError::Timeout {
                    backend: b(),
                    after: Duration::from_millis(1500),
                },
                504,
                "timeout",
            ),
            (
                ProxyError::BadResponse {
                    backend: b(),
                    why: "both Transfer-Encoding and Content-Length",
                },
                502,
                "upstream",
            ),
        ];
        for (e, status, kind) in &cases {
            let (s, k, body) = answer(e).await;
            assert_eq!(s.as_u16(), *status, "{e}");
            assert_eq!(k, *kind, "{e}");
            let reason = reason(s);
            assert!(!reason.is_empty());
            assert_eq!(
                body,
                format!("{status} {reason} ({kind}), request 00000000000000ab\n")
            );
        }
    }

    #[tokio::test]
    async fn the_client_never_sees_backend_names_addresses_or_os_errors() {
        let e = ProxyError::Connect {
            backend: "cache-7".into(),
            source: ConnectError::Io(std::io::Error::other("10.0.0.7:11211: refused")),
        };
        let (_, _, body) = answer(&e).await;
        assert!(
            !body.contains("cache-7") && !body.contains("10.0.0.7"),
            "{body}"
        );
        assert!(
            e.to_string().contains("cache-7"),
            "the log line keeps the details"
        );
    }
}
