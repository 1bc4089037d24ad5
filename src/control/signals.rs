//! Process signals: SIGTERM/SIGINT begin a graceful shutdown; a second one exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

pub async fn stop_on_signal(stop: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests, then exiting"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests, then exiting"),
    }
    stop.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting now");
    // Requests are abandoned, but the lines of those already finished are kept.
    crate::observe::access_log::flush();
    std::process::exit(1);
}
