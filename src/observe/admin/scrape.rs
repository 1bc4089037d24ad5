//! `GET /metrics`: bring the state gauges in line with the live snapshot, then render the
//! registry in the Prometheus text format.
//!
//! Gauges that describe current state (backend up, keyspace share, certificate expiry) are computed here, at scrape
//! time, from the snapshot requests use, so they can never disagree with routing and a removed
//! backend disappears from them at once. Counters are bumped by the data path as it goes.

use std::sync::Mutex;

use prometheus::{Encoder, Registry, TextEncoder};

use crate::state::shared::Shared;
use crate::util::lock;

/// Serialises scrapes: one scrape's reset of the state gauges must not empty them while another
/// is gathering.
#[derive(Debug, Default)]
pub(crate) struct ScrapeLock(Mutex<()>);

/// The metrics text, state gauges refreshed.
pub(crate) fn render(
    shared: &Shared,
    registry: &Registry,
    one_at_a_time: &ScrapeLock,
) -> prometheus::Result<Vec<u8>> {
    let _scrape = lock(&one_at_a_time.0);
    refresh(shared);
    let mut buf = Vec::with_capacity(16 * 1024);
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    Ok(buf)
}

fn refresh(shared: &Shared) {
    let metrics = &shared.metrics;
    metrics.backend_up.reset();
    metrics.keyspace_share.reset();
    metrics.tls_certificate_expiry.reset();
    metrics.discovery_backends.reset();
    metrics.discovery_last_success.reset();
    for s in shared.discovery.all() {
        let labels = [s.pool.as_str(), s.source.as_str()];
        let found = s.backends.unwrap_or(0) as i64;
        metrics
            .discovery_backends
            .with_label_values(&labels)
            .set(found);
        metrics
            .discovery_last_success
            .with_label_values(&labels)
            .set(s.ok_ms as f64 / 1000.0);
    }
    for pool in &shared.snapshot.load().pools {
        let name = pool.config.name.as_str();
        if pool.config.tls.is_some() {
            // At zero from the first scrape, so rate() and alerts see every reason.
            for why in crate::tls::HandshakeFailure::ALL {
                metrics
                    .tls_handshake_errors
                    .with_label_values(&[name, why.as_str()]);
            }
        }
        for (cert_name, cert) in pool.config.tls.iter().flat_map(|t| t.certificates()) {
            metrics
                .tls_certificate_expiry
                .with_label_values(&[name, cert_name])
                .set(cert.not_after);
        }
        let shares = pool.live_shares();
        for (b, share) in pool.backends().zip(shares.iter().copied()) {
            metrics
                .backend_up
                .with_label_values(&[name, &b.id])
                .set(i64::from(b.is_usable()));
            metrics
                .keyspace_share
                .with_label_values(&[name, &b.id])
                .set(share);
        }
    }
}
