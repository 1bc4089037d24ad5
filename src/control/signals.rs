//! Process signals: SIGTERM/SIGINT begin a graceful shutdown, a second one exits at once;
//! SIGHUP asks for a reload.
//!
//! Handlers are registered when these functions return, not when a task first runs: once the
//! proxy answers, a signal must find its handler rather than the default action (which for
//! SIGHUP and SIGTERM is to die on the spot).

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::observe::access_log;

/// Cancel `stop` on the first SIGTERM or SIGINT; exit the process on the second.
pub(crate) fn stop_on_signal(stop: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return;
    };
    tokio::spawn(async move {
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
        access_log::flush();
        std::process::exit(1);
    });
}

/// SIGHUPs from now on, for the reloader. `None` (logged) if the handler cannot be installed.
pub fn hangups() -> Option<Signal> {
    signal(SignalKind::hangup())
        .inspect_err(|e| {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload by editing the file");
        })
        .ok()
}
