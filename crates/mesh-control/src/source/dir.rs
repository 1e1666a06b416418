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
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::publish::{DEBOUNCE_MAX, DEBOUNCE_QUIET, Publisher};
use super::store::ConfigStatus;
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
            debounce_quiet: DEBOUNCE_QUIET,
            debounce_max: DEBOUNCE_MAX,
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
    publisher: Publisher,
    seen: Fingerprint,
}

impl DirSource {
    /// Reads the directory once. Fails only when the directory itself is
    /// unreadable; broken files are reported in the status and skipped.
    pub fn load(config: DirSourceConfig) -> std::io::Result<(Self, Snapshot)> {
        let publisher = Publisher::new(config.debounce_quiet, config.debounce_max);
        let mut source = Self {
            config,
            publisher,
            seen: Fingerprint::new(),
        };
        source.rescan()?;
        let snapshot = source.publisher.snapshot();
        Ok((source, snapshot))
    }

    /// Takes `jwksUri` key sets from `resolver` (telling it which URIs the
    /// policies name) and builds a new snapshot whenever they change.
    /// Returns the current snapshot with the keys it has.
    pub fn with_jwks(&mut self, resolver: JwksResolver) -> Snapshot {
        self.publisher.with_jwks(resolver)
    }

    /// Shared status for `/debug/configz`.
    pub fn status_handle(&self) -> Arc<Mutex<ConfigStatus>> {
        self.publisher.status_handle()
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
        let store = self.publisher.store_mut();
        let mut changed = false;
        for (file, stamp) in &fp {
            if self.seen.get(file) == Some(stamp) {
                continue;
            }
            let name = file.display().to_string();
            match std::fs::read_to_string(file) {
                Ok(text) => changed |= store.update_file_in_layer(&name, stamp.2, &text),
                // Vanished between listing and reading: the next tick sees it.
                Err(e) => tracing::warn!(file = %name, "cannot read: {e}"),
            }
        }
        for file in self.seen.keys().filter(|f| !fp.contains_key(*f)) {
            changed |= store.remove_file(&file.display().to_string());
        }
        self.seen = fp;
        self.publisher.stored(changed);
        Ok(changed)
    }

    /// Watches the directory until `shutdown` resolves, publishing a new
    /// snapshot after each debounced change.
    pub async fn run(
        mut self,
        tx: watch::Sender<Arc<Snapshot>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut jwks_changed = self.publisher.take_jwks_changes();
        let tick = self.config.poll_interval.min(self.publisher.tick());
        loop {
            let keys_changed = tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(tick) => false,
                _ = jwks_changed.next() => true,
            };
            if keys_changed {
                // Fetched keys are config too: publish them like a file change.
                self.publisher.changed();
            }
            if let Err(e) = self.rescan() {
                tracing::warn!(dirs = ?self.config.dirs, "cannot list config directory: {e}")
            }
            if !self.publisher.publish_if_due(&tx) {
                return;
            }
        }
    }
}
