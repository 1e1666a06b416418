//! The config-directory source: every `.yaml`, `.yml` and `.json` file under
//! one or more directories (the local mesh adds a directory of the pods it
//! started, with their addresses, beside the user's; an object in a later
//! directory overrides the same kind/namespace/name in an earlier one),
//! polled for changes (mtime and size) every 200 ms. Changes
//! are debounced as Istio does (a 100 ms quiet period, at most 1 s delay)
//! before a new [`Snapshot`] is published on a `watch` channel.
//!
//! Polling instead of inotify keeps this portable (bind mounts, editors that
//! replace files) and the cost is a `stat` per file per tick.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::store::{ConfigStatus, ConfigStore};
use crate::jwks::JwksResolver;
use crate::snapshot::Snapshot;

/// Settings of the directory source.
#[derive(Clone, Debug)]
pub struct DirSourceConfig {
    /// The directories, read as one.
    pub dirs: Vec<PathBuf>,
    /// How often files are checked.
    pub poll_interval: Duration,
    /// Quiet period before a change is published.
    pub debounce_quiet: Duration,
    /// Longest a change waits while others keep arriving.
    pub debounce_max: Duration,
}

impl DirSourceConfig {
    /// Istio's defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dirs: vec![dir.into()],
            poll_interval: Duration::from_millis(200),
            debounce_quiet: Duration::from_millis(100),
            debounce_max: Duration::from_secs(1),
        }
    }

    /// Adds another directory to read.
    pub fn with_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dirs.push(dir.into());
        self
    }
}

/// Per file: modification time, size, and the index of its directory (a
/// later directory's objects override an earlier one's).
type Fingerprint = BTreeMap<PathBuf, (SystemTime, u64, usize)>;

/// A running directory source.
pub struct DirSource {
    config: DirSourceConfig,
    store: ConfigStore,
    seen: Fingerprint,
    version: u64,
    status: Arc<Mutex<ConfigStatus>>,
    /// Where `jwksUri` key sets come from, when the control plane fetches
    /// them.
    jwks: Option<JwksResolver>,
    /// Its change notifications, subscribed when it was given so that no
    /// fetch finishing before [`Self::run`] starts is missed.
    jwks_changed: Option<watch::Receiver<u64>>,
}

impl DirSource {
    /// Reads the directory once. Fails only when the directory itself is
    /// unreadable; broken files are reported in the status and skipped.
    pub fn load(config: DirSourceConfig) -> std::io::Result<(Self, Snapshot)> {
        let mut source = Self {
            config,
            store: ConfigStore::default(),
            seen: Fingerprint::new(),
            version: 0,
            status: Arc::new(Mutex::new(ConfigStatus::default())),
            jwks: None,
            jwks_changed: None,
        };
        source.rescan()?;
        let snapshot = source.snapshot();
        Ok((source, snapshot))
    }

    /// Takes `jwksUri` key sets from `resolver` (telling it which URIs the
    /// policies name) and builds a new snapshot whenever they change.
    /// Returns the current snapshot with the keys it has.
    pub fn with_jwks(&mut self, resolver: JwksResolver) -> Snapshot {
        self.jwks_changed = Some(resolver.changed());
        self.jwks = Some(resolver);
        self.snapshot()
    }

    /// Shared status for `/debug/configz`.
    pub fn status_handle(&self) -> Arc<Mutex<ConfigStatus>> {
        self.status.clone()
    }

    fn fingerprint(&self) -> std::io::Result<Fingerprint> {
        let mut fp = Fingerprint::new();
        let mut files = Vec::new();
        for (layer, dir) in self.config.dirs.iter().enumerate() {
            files.extend(
                mesh_api::object::config_files(dir)?
                    .into_iter()
                    .map(|f| (f, layer)),
            );
        }
        for (file, layer) in files {
            if let Ok(meta) = std::fs::metadata(&file) {
                fp.insert(
                    file,
                    (
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        meta.len(),
                        layer,
                    ),
                );
            }
        }
        Ok(fp)
    }

    /// Re-reads changed files into the store. Returns whether config in
    /// effect changed.
    fn rescan(&mut self) -> std::io::Result<bool> {
        let fp = self.fingerprint()?;
        let mut changed = false;
        for (file, stamp) in &fp {
            if self.seen.get(file) == Some(stamp) {
                continue;
            }
            let name = file.display().to_string();
            match std::fs::read_to_string(file) {
                Ok(text) => changed |= self.store.update_file_in_layer(&name, stamp.2, &text),
                // Vanished between listing and reading: the next tick sees it.
                Err(e) => tracing::warn!(file = %name, "cannot read: {e}"),
            }
        }
        for file in self.seen.keys().filter(|f| !fp.contains_key(*f)) {
            changed |= self.store.remove_file(&file.display().to_string());
        }
        self.seen = fp;
        if let Ok(mut status) = self.status.lock() {
            let published = status.snapshot_version;
            let pending = status.pending || changed;
            *status = self.store.status();
            status.snapshot_version = published;
            status.pending = pending;
        }
        Ok(changed)
    }

    fn snapshot(&mut self) -> Snapshot {
        self.version += 1;
        if let Ok(mut status) = self.status.lock() {
            status.snapshot_version = self.version;
            status.pending = false;
        }
        let objects = self.store.objects();
        let mut snapshot = Snapshot::build(
            self.version,
            objects.iter().copied(),
            self.store.mesh_config(),
        );
        if let Some(jwks) = &self.jwks {
            jwks.want(snapshot.jwks_uris());
            snapshot.jwks = jwks.keys();
        }
        snapshot
    }

    /// Watches the directory until `shutdown` resolves, publishing a new
    /// snapshot after each debounced change.
    pub async fn run(
        mut self,
        tx: watch::Sender<Arc<Snapshot>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut pending_since: Option<Instant> = None;
        let mut last_change = Instant::now();
        let mut jwks_changed = self.jwks_changed.take();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.config.poll_interval.min(self.config.debounce_quiet)) => {}
                Some(Ok(())) = async {
                    match &mut jwks_changed {
                        Some(rx) => Some(rx.changed().await),
                        None => None,
                    }
                } => {
                    // Fetched keys are config too: publish them like a file change.
                    last_change = Instant::now();
                    pending_since.get_or_insert(last_change);
                }
            }
            match self.rescan() {
                Ok(true) => {
                    last_change = Instant::now();
                    pending_since.get_or_insert(last_change);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(dirs = ?self.config.dirs, "cannot list config directory: {e}")
                }
            }
            if let Some(first) = pending_since {
                let quiet = last_change.elapsed() >= self.config.debounce_quiet;
                let overdue = first.elapsed() >= self.config.debounce_max;
                if quiet || overdue {
                    pending_since = None;
                    let snapshot = self.snapshot();
                    tracing::info!(
                        version = snapshot.version,
                        objects = self.store.objects().len(),
                        "config changed; new snapshot"
                    );
                    if tx.send(Arc::new(snapshot)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}
