//! Everything that can go wrong while proxying a request, and the one place that turns it into
//! the response the client sees.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use crate::forward::upstream::ConnectError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// `missing_key = "reject"` and none of the key sources is in the request.
    #[error("no shard key in request: expected one of {sources}")]
    MissingKey { sources: String },
    /// Every backend of the pool is down or drained.
    #[error("no healthy backend in pool {pool}: all {backends} backends are down or drained")]
    NoBackend { pool: String, backends: usize },
    /// Protocol upgrades (WebSocket) and CONNECT tunnels are not proxied.
    #[error("{what} is not supported by this proxy")]
    Unsupported { what: &'static str },
    /// The listener's pool was removed by a reload while the connection was open.
    #[error("pool {pool} is no longer configured")]
    PoolGone { pool: String },
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
        source: hyper::Error,
    },
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingKey { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoBackend { .. } | ProxyError::PoolGone { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect {
                source: ConnectError::Timeout(_),
                ..
            }
            | ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Short machine-readable reason, sent as `x-shardgate-error` and used as a metric label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ProxyError::MissingKey { .. } => "missing_key",
            ProxyError::Unsupported { .. } => "unsupported",
            ProxyError::NoBackend { .. } => "no_backend",
            ProxyError::PoolGone { .. } => "pool_gone",
            ProxyError::Connect {
                source: ConnectError::Timeout(_),
                ..
            } => "connect_timeout",
            ProxyError::Connect { .. } => "connect",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::Upstream { .. } => "upstream",
        }
    }

    /// The backend the failure happened on, if one was chosen.
    pub(crate) fn backend(&self) -> Option<&str> {
        match self {
            ProxyError::Connect { backend, .. }
            | ProxyError::Timeout { backend, .. }
            | ProxyError::Upstream { backend, .. } => Some(backend),
            _ => None,
        }
    }

    /// The request itself was at fault (4xx/501), not the fleet.
    pub(crate) fn is_client_error(&self) -> bool {
        matches!(
            self,
            ProxyError::MissingKey { .. } | ProxyError::Unsupported { .. }
        )
    }

    /// Whether this failure says the backend may be down (passive health counts it).
    pub(crate) fn is_backend_down_signal(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::Timeout { .. }
        )
    }

    /// Whether an idempotent, bodiless request may be sent again after this failure.
    pub(crate) fn is_replayable(&self) -> bool {
        matches!(
            self,
            ProxyError::Timeout { .. } | ProxyError::Upstream { .. }
        )
    }

    /// The response the client gets: the status, and one line of text saying why.
    pub(crate) fn to_response(&self) -> Response<ProxyBody> {
        let body = Bytes::from(format!("{self}\n"));
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert("x-shardgate-error", HeaderValue::from_static(self.kind()));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn text(e: ProxyError) -> (StatusCode, String) {
        let resp = e.to_response();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn each_error_maps_to_its_status_and_says_why() {
        let (s, t) = text(ProxyError::NoBackend {
            pool: "cache".into(),
            backends: 4,
        })
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            t,
            "no healthy backend in pool cache: all 4 backends are down or drained\n"
        );

        let (s, t) = text(ProxyError::Unsupported { what: "CONNECT" }).await;
        assert_eq!(s, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(t, "CONNECT is not supported by this proxy\n");

        let refused = io_err(std::io::ErrorKind::ConnectionRefused);
        let (s, t) = text(ProxyError::Connect {
            backend: "c1".into(),
            source: ConnectError::Io(refused),
        })
        .await;
        assert_eq!(s, StatusCode::BAD_GATEWAY);
        assert!(t.starts_with("cannot connect to backend c1: "), "{t}");

        let (s, t) = text(ProxyError::Connect {
            backend: "c1".into(),
            source: ConnectError::Timeout(Duration::from_secs(1)),
        })
        .await;
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
        assert!(t.contains("connect timed out after 1s"), "{t}");

        let (s, t) = text(ProxyError::Timeout {
            backend: "c2".into(),
            after: Duration::from_millis(1500),
        })
        .await;
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(t, "backend c2 did not answer within 1.5s\n");

        let (s, _) = text(ProxyError::MissingKey {
            sources: "header:x-k".into(),
        })
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        let (s, _) = text(ProxyError::PoolGone { pool: "p".into() }).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    }

    fn io_err(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }
}
