//! The answer's way back: the client's head, then the body as the backend sends it, framing
//! checked on the way.

use std::ops::Range;
use std::sync::Arc;

use bytes::BufMut;
use tokio::io::AsyncReadExt;

use super::body::Progress;
use super::exchange::{Answer, Record};
use super::{BODY_CHUNK, Session, write_two};
use crate::http1::Framing;
use crate::state::backend::Backend;
use crate::state::conns::RawConn;
use crate::state::metrics::UpstreamErrorKind;
use crate::state::snapshot::Pool;

impl<S: super::ClientIo> Session<'_, S> {
    /// Send the answer whose head is in `down_head` and whose first bytes are in `resp`, and
    /// stream the rest of its body. `Ok(true)`: the backend connection ended cleanly and may
    /// carry another request. `Err`: the exchange broke off (the client went away, or the
    /// backend stalled or broke its framing); the client connection must close at once.
    pub(super) async fn relay(
        &mut self,
        pool: &Pool,
        backend: &Arc<Backend>,
        conn: &mut RawConn,
        answer: &Answer,
        rec: &mut Record,
    ) -> Result<bool, ()> {
        let stall = pool.config.idle_timeout;
        let mut body = Progress::new(answer.framing);
        let after_head = answer.head_len..self.resp.len();
        let (part, clean) = match self.frame(&mut body, after_head, answer.dechunk) {
            Some(found) => found,
            None => {
                self.broken(pool, backend, "broken chunked framing");
                return Err(());
            }
        };
        if write_two(
            &mut self.stream,
            &self.down_head,
            &self.resp[part.clone()],
            self.limits.idle,
        )
        .await
        .is_err()
        {
            return Err(());
        }
        rec.done.bytes += part.len() as u64;
        let mut clean = clean;
        while !body.is_done() {
            self.resp.clear();
            self.resp.reserve(BODY_CHUNK);
            let want = body.want(BODY_CHUNK);
            let mut room = (&mut self.resp).limit(want);
            self.clock.start(stall);
            let read = tokio::select! {
                biased;
                r = conn.stream.read_buf(&mut room) => Ok(r),
                () = self.clock.expired() => Err(()),
            };
            let n = match read {
                // The end of a body that runs until close.
                Ok(Ok(0)) if matches!(body, Progress::UntilClose) => break,
                Ok(Ok(n)) if n > 0 => n,
                Ok(_) => {
                    self.broken(pool, backend, "the backend closed the connection mid-body");
                    return Err(());
                }
                Err(_) => {
                    backend
                        .metrics
                        .upstream_error(UpstreamErrorKind::IdleTimeout);
                    tracing::warn!(pool = %pool.config.name, backend = %backend.id, "the backend sent nothing for {stall:?} mid-response: aborting the response");
                    return Err(());
                }
            };
            let Some((part, tail_clean)) = self.frame(&mut body, 0..n, answer.dechunk) else {
                self.broken(pool, backend, "broken chunked framing");
                return Err(());
            };
            clean &= tail_clean;
            if write_two(
                &mut self.stream,
                &self.resp[part.clone()],
                &[],
                self.limits.idle,
            )
            .await
            .is_err()
            {
                return Err(());
            }
            rec.done.bytes += part.len() as u64;
        }
        rec.done.complete = true;
        Ok(clean && answer.keep_alive && !answer.early && answer.framing != Framing::UntilClose)
    }

    /// Of `resp[bytes]`, the part that goes to the client (moved to the front of `bytes` when
    /// chunked framing is taken off for an HTTP/1.0 client), and whether nothing followed the
    /// body's end. `None`: the framing is broken.
    fn frame(
        &mut self,
        body: &mut Progress,
        bytes: Range<usize>,
        dechunk: bool,
    ) -> Option<(Range<usize>, bool)> {
        let start = bytes.start;
        let input = &self.resp[bytes.clone()];
        if !dechunk {
            let taken = body.take(input).ok()?;
            return Some((start..start + taken, taken == input.len()));
        }
        let mut runs: Vec<Range<usize>> = Vec::new();
        let taken = body.take_with(input, |r| runs.push(r)).ok()?;
        let mut end = start;
        for r in runs {
            let len = r.len();
            self.resp.copy_within(start + r.start..start + r.end, end);
            end += len;
        }
        Some((start..end, taken == bytes.len()))
    }

    fn broken(&self, pool: &Pool, backend: &Backend, why: &str) {
        backend.metrics.upstream_error(UpstreamErrorKind::Upstream);
        tracing::warn!(pool = %pool.config.name, backend = %backend.id, "{why}: aborting the response");
    }
}
