//! Live reload: notice config file changes (watcher, SIGHUP), run the same load → validate →
//! build path as startup, and apply the result — or refuse it and keep serving the old config.
//!
//! The file is watched through its parent directory, not by itself: editors that save by
//! writing a temporary file and renaming it over the original replace the inode a file watch
//! would be attached to, and Kubernetes updates a mounted ConfigMap by swapping the `..data`
//! symlink next to the file. Both show up as events in the directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};
use crate::control::proxy::{Applied, Proxy, StartError};
use crate::util::lock;

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The watcher saw the file (or its directory) change.
    File,
    /// SIGHUP, or another explicit request: reload even if the bytes look the same.
    Signal,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Apply(#[from] StartError),
}

/// Reloads one proxy from one file.
pub struct Reloader {
    path: PathBuf,
    proxy: Arc<Proxy>,
    /// Hash of the bytes last tried, so a burst of events for one save reloads once.
    last_seen: Mutex<Option<u64>>,
}

impl Reloader {
    pub fn new(path: PathBuf, proxy: Arc<Proxy>) -> Reloader {
        let last_seen = std::fs::read(&path)
            .ok()
            .map(|b| xxhash_rust::xxh3::xxh3_64(&b));
        Reloader {
            path,
            proxy,
            last_seen: Mutex::new(last_seen),
        }
    }

    /// Reload now. `Ok(None)`: the file did not change since the last attempt (file events only).
    pub async fn reload(&self, trigger: Trigger) -> Result<Option<Applied>, ReloadError> {
        let shared = self.proxy.shared();
        let result = self.try_reload(trigger).await;
        match &result {
            Ok(None) => {}
            Ok(Some(applied)) => {
                let summary: Vec<String> = applied.pools.iter().map(|p| p.summary()).collect();
                let mut summary = summary.join("; ");
                if !applied.settings.is_empty() {
                    summary.push_str("; settings changed: ");
                    summary.push_str(&applied.settings.join("; "));
                }
                // Counters first: whoever reacts to the log line finds them up to date.
                shared
                    .reload
                    .applied(&shared.metrics, &applied.pools, &summary);
                tracing::info!(file = %self.path.display(), ?trigger, "config reloaded: {summary}");
                for change in &applied.needs_restart {
                    tracing::warn!("config change needs a restart to take effect: {change}");
                }
            }
            Err(e) => {
                shared.reload.refused(&shared.metrics, e);
                tracing::warn!(
                    ?trigger,
                    "config reload refused, still serving the previous config: {e}"
                );
            }
        }
        result
    }

    async fn try_reload(&self, trigger: Trigger) -> Result<Option<Applied>, ReloadError> {
        // A file on a slow or hung mount must not stall a runtime thread that serves requests.
        let path = self.path.clone();
        let bytes = tokio::task::spawn_blocking(move || config::read(&path))
            .await
            .map_err(|_| ReloadError::Apply(StartError::ShuttingDown))??;
        let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        {
            let mut last = lock(&self.last_seen);
            if trigger == Trigger::File && *last == Some(hash) {
                return Ok(None);
            }
            *last = Some(hash);
        }
        let text = String::from_utf8_lossy(&bytes);
        // The same bad bytes are not parsed again on every event (one error per edit)...
        let config = config::parse(&text, &self.path.display().to_string())?;
        match self.proxy.apply(config).await {
            Ok(applied) => Ok(Some(applied)),
            Err(e) => {
                // ...but a valid file refused for the moment (a port in use) is tried again on
                // the next event, even if the bytes are the same.
                *lock(&self.last_seen) = None;
                Err(e.into())
            }
        }
    }
}

/// Watch `path` and reload on changes and on `hangups` (from [`signals::hangups`](super::signals::hangups)) until `stop`. Watching has begun when this
/// returns; if the directory cannot be watched that is logged and SIGHUP still works.
pub fn spawn(
    path: PathBuf,
    proxy: Arc<Proxy>,
    hangups: Option<Signal>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    // Read once at startup: switching watching on or off takes a restart.
    let watcher = if proxy.shared().snapshot.load().config.server.watch_config {
        watch(&path, tx.clone())
            .inspect_err(|e| {
                tracing::warn!(file = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            })
            .ok()
    } else {
        tracing::info!(file = %path.display(), "not watching the config file (server.watch_config = false); reload with SIGHUP");
        None
    };
    let hup_stop = stop.clone();
    tokio::spawn(async move {
        let Some(mut hup) = hangups else { return };
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                () = hup_stop.cancelled() => return,
            }
            tracing::info!("SIGHUP: reloading the config");
            if tx.send(Trigger::Signal).is_err() {
                return;
            }
        }
    });
    let reloader = Reloader::new(path, proxy);
    tokio::spawn(run(reloader, rx, watcher, stop))
}

async fn run(
    reloader: Reloader,
    mut rx: mpsc::UnboundedReceiver<Trigger>,
    _watcher: Option<Watcher>, // kept alive: dropping it stops watching
    stop: CancellationToken,
) {
    loop {
        let mut trigger = tokio::select! {
            t = rx.recv() => match t { Some(t) => t, None => return },
            () = stop.cancelled() => return,
        };
        // Coalesce whatever else queued up meanwhile; an explicit request wins.
        while let Ok(t) = rx.try_recv() {
            if t == Trigger::Signal {
                trigger = t;
            }
        }
        let _ = reloader.reload(trigger).await;
    }
}

/// Events that touch the file's name, or a `..`-prefixed entry (Kubernetes' `..data` swap),
/// in the file's directory — and in the directory of its resolved target if it is a symlink.
type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

fn watch(path: &Path, tx: mpsc::UnboundedSender<Trigger>) -> Result<Watcher, notify::Error> {
    let mut dirs: Vec<(PathBuf, OsString)> = Vec::new();
    let mut add = |p: &Path| {
        if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if !dirs.iter().any(|(d, n)| d == dir && n == name) {
                dirs.push((dir.to_owned(), name.to_owned()));
            }
        }
    };
    add(path);
    if let Ok(real) = std::fs::canonicalize(path) {
        add(&real);
    }
    let names: Vec<OsString> = dirs.iter().map(|(_, n)| n.clone()).collect();
    let mut debouncer = new_debouncer(
        Duration::from_millis(150),
        None,
        move |result: DebounceEventResult| {
            let Ok(events) = result else { return };
            let relevant = events.iter().flat_map(|e| e.paths.iter()).any(|p| {
                p.file_name().is_some_and(|n| {
                    names.iter().any(|want| want == n) || n.to_string_lossy().starts_with("..")
                })
            });
            if relevant {
                let _ = tx.send(Trigger::File);
            }
        },
    )?;
    let mut watched: Vec<&PathBuf> = Vec::new();
    for (dir, _) in &dirs {
        if !watched.contains(&dir) {
            debouncer.watch(dir, RecursiveMode::NonRecursive)?;
            watched.push(dir);
        }
    }
    Ok(debouncer)
}
