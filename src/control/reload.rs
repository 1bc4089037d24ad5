//! Live reload: notice config file changes (watcher, SIGHUP), run the same load → validate →
//! build path as startup, and apply the result — or refuse it and keep serving the old config.
//!
//! The file is watched through its parent directory, not by itself: editors that save by
//! writing a temporary file and renaming it over the original replace the inode a file watch
//! would be attached to, and Kubernetes updates a mounted ConfigMap by swapping the `..data`
//! symlink next to the file. Both show up as events in the directory.
//!
//! The certificate and key files the config names are watched the same way (cert-manager
//! swaps a Secret's `..data` symlink, certbot rewrites or re-links its files): a renewed
//! certificate is loaded, checked and applied like an edit, and a broken one refused.

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
    /// Hash of the bytes last tried (the config file's and its certificate files'), so a burst
    /// of events for one save reloads once.
    last_seen: Mutex<Option<u64>>,
    /// The certificate files the config file named when last read (the watcher follows them).
    files: Mutex<Vec<PathBuf>>,
}

/// What one reading of the config file found.
struct Read {
    bytes: Vec<u8>,
    /// Of the config's bytes and of the bytes of the certificate files it names.
    hash: u64,
    files: Vec<PathBuf>,
}

/// Read the config file and the certificate files it names (`known` if it is not TOML).
fn read(path: &Path, known: Vec<PathBuf>) -> Result<Read, ConfigError> {
    let bytes = config::read(path)?;
    let files = config::named_files(&String::from_utf8_lossy(&bytes)).unwrap_or(known);
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    hash.update(&bytes);
    for file in &files {
        // Unreadable now: the reload's validation says why, with the file's name.
        let pem = crate::util::read_capped(file, crate::tls::certs::MAX_PEM_BYTES);
        hash.update(&pem.ok().flatten().unwrap_or_default());
        hash.update(&[0xff]);
    }
    Ok(Read {
        bytes,
        hash: hash.digest(),
        files,
    })
}

impl Reloader {
    pub fn new(path: PathBuf, proxy: Arc<Proxy>) -> Reloader {
        let seen = read(&path, Vec::new()).ok();
        Reloader {
            path,
            proxy,
            last_seen: Mutex::new(seen.as_ref().map(|r| r.hash)),
            files: Mutex::new(seen.map(|r| r.files).unwrap_or_default()),
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

    /// The certificate and key files the config file named when last read.
    fn files(&self) -> Vec<PathBuf> {
        lock(&self.files).clone()
    }

    async fn try_reload(&self, trigger: Trigger) -> Result<Option<Applied>, ReloadError> {
        // A file on a slow or hung mount must not stall a runtime thread that serves requests.
        let path = self.path.clone();
        let known = self.files();
        let gone = |_| ReloadError::Apply(StartError::ShuttingDown);
        let Read { bytes, hash, files } = tokio::task::spawn_blocking(move || read(&path, known))
            .await
            .map_err(gone)??;
        *lock(&self.files) = files;
        {
            let mut last = lock(&self.last_seen);
            if trigger == Trigger::File && *last == Some(hash) {
                return Ok(None);
            }
            *last = Some(hash);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let file = self.path.display().to_string();
        // The same bad bytes are not parsed again on every event (one error per edit)...
        // Parsing reads the certificate files: off the runtime threads too.
        let config = tokio::task::spawn_blocking(move || config::parse(&text, &file))
            .await
            .map_err(gone)??;
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
    let reloader = Reloader::new(path.clone(), proxy.clone());
    // Read once at startup: switching watching on or off takes a restart.
    let watching = if proxy.shared().snapshot.load().config.server.watch_config {
        let mut w = Watching {
            config: path.clone(),
            files: Vec::new(),
            watcher: None,
            tx: tx.clone(),
        };
        w.follow(&reloader.files());
        Some(w)
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
    tokio::spawn(run(reloader, rx, watching, stop))
}

/// What is being watched: the config file and the certificate files its last applied version
/// names.
struct Watching {
    config: PathBuf,
    files: Vec<PathBuf>,
    /// Dropping it stops watching.
    watcher: Option<Watcher>,
    tx: mpsc::UnboundedSender<Trigger>,
}

impl Watching {
    /// Watch the config file and `tls_files`, if that is not what is watched already.
    fn follow(&mut self, tls_files: &[PathBuf]) {
        if self.watcher.is_some() && self.files == tls_files {
            return;
        }
        self.files = tls_files.to_vec();
        let mut all = vec![self.config.clone()];
        all.extend_from_slice(tls_files);
        self.watcher = watch(&all, self.tx.clone())
            .inspect_err(|e| {
                tracing::warn!(file = %self.config.display(), error = %e, "cannot watch the config file or its certificate files; reload with SIGHUP");
            })
            .ok();
    }
}

async fn run(
    reloader: Reloader,
    mut rx: mpsc::UnboundedReceiver<Trigger>,
    mut watching: Option<Watching>,
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
        // Also after a refused reload: fixing a file it could not use is a change to see.
        if let Some(w) = &mut watching {
            w.follow(&reloader.files());
        }
    }
}

/// Events that touch a watched file's name, or a `..`-prefixed entry (Kubernetes' `..data`
/// swap), in the file's directory — and in the directory of its resolved target if it is a
/// symlink.
type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

fn watch(paths: &[PathBuf], tx: mpsc::UnboundedSender<Trigger>) -> Result<Watcher, notify::Error> {
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
    for path in paths {
        add(path);
        if let Ok(real) = std::fs::canonicalize(path) {
            add(&real);
        }
    }
    let names: Vec<OsString> = dirs.iter().map(|(_, n)| n.clone()).collect();
    let mut debouncer = new_debouncer(
        Duration::from_millis(150),
        None,
        move |result: DebounceEventResult| {
            let Ok(events) = result else { return };
            // Reading the files (each reload does) is an access event, not a change: counted,
            // it would make every reload trigger the next one.
            let changes = events
                .iter()
                .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)));
            let relevant = changes.flat_map(|e| e.paths.iter()).any(|p| {
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
