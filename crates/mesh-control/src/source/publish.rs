//! What every configuration source shares once objects are in its
//! [`ConfigStore`]: the `/debug/configz` status, the debounce (Istio's
//! 100 ms quiet period, at most 1 s delay), `jwksUri` key sets, and building
//! and sending the versioned [`Snapshot`]. A source only decides *what* goes
//! into the store (files from a directory, objects from the Kubernetes API)
//! and tells the publisher when something in effect changed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::store::{ConfigStatus, ConfigStore};
use crate::jwks::JwksResolver;
use crate::snapshot::Snapshot;

/// Istio's debounce: publish after this long without a change...
pub const DEBOUNCE_QUIET: Duration = Duration::from_millis(100);
/// ...or after this long since the first unpublished change, whichever is first.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// The store of a source and everything between it and the snapshot channel.
pub struct Publisher {
    store: ConfigStore,
    status: Arc<Mutex<ConfigStatus>>,
    version: u64,
    /// Name of the ConfigMap holding MeshConfig (`istio`, or `istio-<rev>`).
    mesh_config_name: String,
    jwks: Option<JwksResolver>,
    /// Its change notifications, subscribed when it was given so that no
    /// fetch finishing before the source runs is missed.
    jwks_changed: Option<watch::Receiver<u64>>,
    quiet: Duration,
    max: Duration,
    /// When the oldest unpublished change happened, if any.
    pending_since: Option<Instant>,
    last_change: Instant,
}

/// Resolves each time fetched `jwksUri` keys change; never when the source
/// does not fetch them.
pub struct JwksChanges(Option<watch::Receiver<u64>>);

// === impl Publisher ===

impl Publisher {
    /// An empty store publishing with the given debounce.
    pub fn new(quiet: Duration, max: Duration) -> Self {
        Self {
            store: ConfigStore::default(),
            status: Arc::new(Mutex::new(ConfigStatus::default())),
            version: 0,
            mesh_config_name: "istio".to_string(),
            jwks: None,
            jwks_changed: None,
            quiet,
            max,
            pending_since: None,
            last_change: Instant::now(),
        }
    }

    /// Reads MeshConfig from the ConfigMap `name` instead of `istio`.
    pub fn set_mesh_config_name(&mut self, name: impl Into<String>) {
        self.mesh_config_name = name.into();
    }

    /// The store.
    pub fn store(&self) -> &ConfigStore {
        &self.store
    }

    /// The store, to change it; call [`Self::stored`] afterwards.
    pub fn store_mut(&mut self) -> &mut ConfigStore {
        &mut self.store
    }

    /// Shared status for `/debug/configz`.
    pub fn status_handle(&self) -> Arc<Mutex<ConfigStatus>> {
        self.status.clone()
    }

    /// How often a source should call [`Self::publish_if_due`] while
    /// changes are pending.
    pub fn tick(&self) -> Duration {
        self.quiet
    }

    /// Records that the store was written (`changed`: whether config in
    /// effect changed): refreshes the status and starts or extends the
    /// debounce.
    pub fn stored(&mut self, changed: bool) {
        if changed {
            self.changed();
        }
        if let Ok(mut status) = self.status.lock() {
            let published = status.snapshot_version;
            let pending = status.pending || changed;
            *status = self.store.status();
            status.snapshot_version = published;
            status.pending = pending;
        }
    }

    /// Records a change outside the store (fetched keys are config too).
    pub fn changed(&mut self) {
        self.last_change = Instant::now();
        self.pending_since.get_or_insert(self.last_change);
    }

    /// Takes `jwksUri` key sets from `resolver` (telling it which URIs the
    /// policies name) and builds a new snapshot whenever they change.
    /// Returns the current snapshot with the keys it has.
    pub fn with_jwks(&mut self, resolver: JwksResolver) -> Snapshot {
        self.jwks_changed = Some(resolver.changed());
        self.jwks = Some(resolver);
        self.snapshot()
    }

    /// The key-set notifications, for the source's loop.
    pub fn take_jwks_changes(&mut self) -> JwksChanges {
        JwksChanges(self.jwks_changed.take())
    }

    /// Builds the next snapshot from the store (and marks it published).
    pub fn snapshot(&mut self) -> Snapshot {
        self.version += 1;
        self.pending_since = None;
        if let Ok(mut status) = self.status.lock() {
            status.snapshot_version = self.version;
            status.pending = false;
        }
        let objects = self.store.objects();
        let mut snapshot = Snapshot::build(
            self.version,
            objects.iter().copied(),
            self.store.mesh_config_named(&self.mesh_config_name),
        );
        snapshot.mesh_networks = Arc::new(self.store.mesh_networks_named(&self.mesh_config_name));
        if let Some(jwks) = &self.jwks {
            jwks.want(snapshot.jwks_uris());
            snapshot.jwks = jwks.keys();
        }
        snapshot
    }

    /// Sends a new snapshot when pending changes have been quiet long
    /// enough or waited too long. Returns false when nobody listens any
    /// more (the source should stop).
    pub fn publish_if_due(&mut self, tx: &watch::Sender<Arc<Snapshot>>) -> bool {
        let Some(first) = self.pending_since else {
            return true;
        };
        let quiet = self.last_change.elapsed() >= self.quiet;
        let overdue = first.elapsed() >= self.max;
        if !(quiet || overdue) {
            return true;
        }
        let snapshot = self.snapshot();
        tracing::info!(
            version = snapshot.version,
            objects = self.store.objects().len(),
            "config changed; new snapshot"
        );
        tx.send(Arc::new(snapshot)).is_ok()
    }
}

// === impl JwksChanges ===

impl JwksChanges {
    /// Waits for the next change of fetched keys.
    pub async fn next(&mut self) {
        match &mut self.0 {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The resolver is gone: nothing will change again.
                    self.0 = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// The configuration's health on `/metrics`, read from the
/// `/debug/configz` status at each scrape: `mesh_config_rejected{kind}`,
/// the documents whose last read failed (their last good version, if any,
/// still in effect), and Istio's `pilot_virt_services`, the
/// VirtualServices in effect. Alert on `mesh_config_rejected > 0`.
#[derive(Debug)]
pub struct ConfigMetrics(pub Arc<Mutex<ConfigStatus>>);

impl prometheus_client::collector::Collector for ConfigMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;

        let rejected: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
        let mut virtual_services = 0i64;
        if let Ok(status) = self.0.lock() {
            for o in &status.objects {
                if o.status.starts_with("error") {
                    let kind = if o.kind.is_empty() {
                        "unknown"
                    } else {
                        &o.kind
                    };
                    rejected
                        .get_or_create(&vec![("kind", kind.to_string())])
                        .inc();
                } else if o.kind == "VirtualService" {
                    virtual_services += 1;
                }
            }
        }
        rejected.encode(encoder.encode_descriptor(
            "mesh_config_rejected",
            "Configuration documents whose last version failed to parse or validate, by kind",
            None,
            MetricType::Gauge,
        )?)?;
        let vs = Gauge::<i64>::default();
        vs.set(virtual_services);
        vs.encode(encoder.encode_descriptor(
            "pilot_virt_services",
            "Total virtual services known to the control plane",
            None,
            MetricType::Gauge,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::store::ConfigStore;

    #[test]
    fn rejected_documents_and_virtual_services_are_on_metrics() {
        let mut store = ConfigStore::default();
        store.update_file(
            "good.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a, namespace: default}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n",
        );
        store.update_file(
            "bad.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b, namespace: default}\nspec: {host: b, trafficPolicy: {loadBalancer: {simple: NOPE}}}\n---\n: [\n",
        );
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ConfigMetrics(Arc::new(Mutex::new(
            store.status(),
        )))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "mesh_config_rejected{kind=\"DestinationRule\"} 1",
            "mesh_config_rejected{kind=\"unknown\"} 1",
            "pilot_virt_services 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
    }
}
