//! The Kubernetes configuration source: `mesh-control --kubernetes` serves
//! what the API server holds exactly as `--config-dir` serves files.
//!
//! ```text
//! watchers (one per kind, kube-runtime, relist on 410)
//!   -> mpsc -> KubeState (filters, locality) -> ConfigStore pseudo-files
//!   -> Publisher (debounce, status, Snapshot) -> watch channel
//! ```
//!
//! Watched: Services, EndpointSlices, Pods, Namespaces, Nodes (locality
//! only), Secrets (gateway `credentialName`; service-account tokens and
//! Helm releases are left out by field selector), the MeshConfig ConfigMap
//! (`istio`, or `istio-<rev>`) in the control plane namespace, and every
//! Istio kind of mesh-api. Each Istio kind is watched at the newest of its
//! versions the cluster serves (found by listing newest first; the API
//! server converts every stored object to every served version, so one
//! watch per kind sees them all). A kind whose CRD is not installed counts
//! as listed and empty, as in Istio, and is looked for again every
//! [`CRD_RECHECK`].
//!
//! Writes to the API (Events on invalid Istio objects, the
//! `istio-ca-root-cert` ConfigMaps) happen only on the replica holding the
//! `istio-leader` Lease ([`leader`]); every replica serves xDS.

pub mod ca;
pub mod leader;
mod state;
pub mod writers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use mesh_api::kinds::IstioKind;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

pub use state::{InvalidObject, KubeState, file_name, mesh_config_name, selector_matches};

use super::publish::{DEBOUNCE_MAX, DEBOUNCE_QUIET, Publisher};
use super::store::ConfigStatus;
use crate::jwks::JwksResolver;
use crate::snapshot::Snapshot;
use leader::{LeaderElector, LeaseTiming};

/// How long the writers get to finish (release the Lease) on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often a kind whose CRD is missing is looked for again.
pub const CRD_RECHECK: Duration = Duration::from_secs(30);

/// Secrets never used as gateway credentials, left out by the API server.
const SECRET_FIELD_SELECTOR: &str =
    "type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1";

/// One kind of watched object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watched {
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Namespace (discoverySelectors; cluster-scoped).
    Namespace,
    /// core/v1 Node (locality; cluster-scoped, not stored).
    Node,
    /// core/v1 Secret (gateway credentials).
    Secret,
    /// The MeshConfig ConfigMap in the control plane namespace.
    MeshConfig,
    /// An Istio kind.
    Istio(IstioKind),
}

// === impl Watched ===

impl Watched {
    /// Every watched kind.
    pub fn all() -> Vec<Watched> {
        let mut all = vec![
            Self::Namespace,
            Self::Node,
            Self::MeshConfig,
            Self::Service,
            Self::EndpointSlice,
            Self::Pod,
            Self::Secret,
        ];
        all.extend(IstioKind::ALL.into_iter().map(Self::Istio));
        all
    }

    /// The `kind` of its objects.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Pod => "Pod",
            Self::Namespace => "Namespace",
            Self::Node => "Node",
            Self::Secret => "Secret",
            Self::MeshConfig => "ConfigMap",
            Self::Istio(k) => k.kind(),
        }
    }

    /// Group, version and plural of its API.
    pub fn api_resource(self) -> ApiResource {
        match self {
            Self::Service => ApiResource::erase::<Service>(&()),
            Self::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
            Self::Pod => ApiResource::erase::<Pod>(&()),
            Self::Namespace => ApiResource::erase::<Namespace>(&()),
            Self::Node => ApiResource::erase::<Node>(&()),
            Self::Secret => ApiResource::erase::<Secret>(&()),
            Self::MeshConfig => ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            Self::Istio(kind) => istio_resource(kind, kind.versions().first().unwrap_or(&"v1")),
        }
    }
}

/// The API of Istio `kind` at `version`.
pub fn istio_resource(kind: IstioKind, version: &str) -> ApiResource {
    ApiResource {
        group: kind.group().to_string(),
        version: version.to_string(),
        api_version: format!("{}/{version}", kind.group()),
        kind: kind.kind().to_string(),
        plural: mesh_api::crd::crd_for(kind).spec.names.plural,
    }
}

/// The newest version of `kind` the cluster serves; `None` when it serves
/// none (the CRD is not installed). Any answer but 404 counts as served:
/// the watcher then reports and retries what went wrong.
async fn served_version(client: &Client, kind: IstioKind) -> Option<ApiResource> {
    for version in kind.versions() {
        let resource = istio_resource(kind, version);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            _ => return Some(resource),
        }
    }
    None
}

/// One item of a watcher's stream.
struct Update {
    watched: Watched,
    event: Result<watcher::Event<DynamicObject>, String>,
}

/// Settings of the Kubernetes source.
#[derive(Clone, Debug)]
pub struct KubeSourceConfig {
    /// The control plane namespace (`POD_NAMESPACE`, `istio-system`).
    pub namespace: String,
    /// The revision (`default`).
    pub revision: String,
    /// This replica's name in Leases and Events (the pod name).
    pub identity: String,
    /// The mesh root (PEM) to publish as `istio-ca-root-cert`, when this
    /// control plane runs the CA.
    pub root_cert: Option<String>,
    /// Quiet period before a change is published.
    pub debounce_quiet: Duration,
    /// Longest a change waits while others keep arriving.
    pub debounce_max: Duration,
    /// The `istio-leader` Lease's timing.
    pub lease: LeaseTiming,
    /// How often the root-cert ConfigMaps are checked even without changes.
    pub resync: Duration,
}

impl KubeSourceConfig {
    /// Istio's defaults.
    pub fn new(namespace: &str, revision: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            revision: revision.to_string(),
            identity: identity.to_string(),
            root_cert: None,
            debounce_quiet: DEBOUNCE_QUIET,
            debounce_max: DEBOUNCE_MAX,
            lease: LeaseTiming::default(),
            resync: Duration::from_secs(300),
        }
    }
}

/// This replica's identity: `POD_NAME`, else `HOSTNAME` (the pod name in a
/// cluster), else `mesh-control`.
pub fn default_identity() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "mesh-control".to_string())
}

/// A running Kubernetes source.
pub struct KubeSource {
    client: Client,
    config: KubeSourceConfig,
    publisher: Publisher,
    state: KubeState,
    updates: mpsc::Receiver<Update>,
    watchers: Vec<JoinHandle<()>>,
    namespaces: watch::Sender<BTreeSet<String>>,
    invalid: mpsc::UnboundedSender<writers::Finding>,
    invalid_rx: Option<mpsc::UnboundedReceiver<writers::Finding>>,
}

impl KubeSource {
    /// Starts every watcher and waits until each has listed its objects
    /// once (as Istio waits for its caches), then builds the first snapshot.
    pub async fn start(client: Client, config: KubeSourceConfig) -> (Self, Snapshot) {
        let (tx, updates) = mpsc::channel(1024);
        let mut pending: BTreeMap<Watched, String> = BTreeMap::new();
        let mut watchers = Vec::new();
        for watched in Watched::all() {
            pending.insert(watched, "not listed yet".to_string());
            watchers.push(spawn_watcher(&client, watched, &config, tx.clone()));
        }
        let mut publisher = Publisher::new(config.debounce_quiet, config.debounce_max);
        publisher.set_mesh_config_name(mesh_config_name(&config.revision));
        let (invalid, invalid_rx) = mpsc::unbounded_channel();
        let mut source = Self {
            state: KubeState::new(&config.namespace, &config.revision),
            namespaces: watch::Sender::new(BTreeSet::new()),
            client,
            config,
            publisher,
            updates,
            watchers,
            invalid,
            invalid_rx: Some(invalid_rx),
        };
        let mut report = tokio::time::interval(Duration::from_secs(10));
        report.tick().await;
        while !pending.is_empty() {
            tokio::select! {
                update = source.updates.recv() => {
                    let Some(update) = update else { break };
                    match &update.event {
                        Ok(watcher::Event::InitDone) => {
                            pending.remove(&update.watched);
                        }
                        Err(e) => {
                            if let Some(why) = pending.get_mut(&update.watched) {
                                why.clone_from(e);
                            }
                        }
                        _ => {}
                    }
                    source.handle(update);
                }
                _ = report.tick() => {
                    tracing::warn!(waiting = ?pending, "still waiting for the Kubernetes API to list these kinds");
                }
            }
        }
        source.flush();
        let snapshot = source.publisher.snapshot();
        (source, snapshot)
    }

    /// See [`Publisher::with_jwks`].
    pub fn with_jwks(&mut self, resolver: JwksResolver) -> Snapshot {
        self.publisher.with_jwks(resolver)
    }

    /// Shared status for `/debug/configz`.
    pub fn status_handle(&self) -> Arc<Mutex<ConfigStatus>> {
        self.publisher.status_handle()
    }

    /// The namespaces whose objects are used, kept current.
    pub fn namespaces(&self) -> watch::Receiver<BTreeSet<String>> {
        self.namespaces.subscribe()
    }

    fn handle(&mut self, update: Update) {
        let watched = update.watched;
        match update.event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                self.state.apply(watched, o)
            }
            Ok(watcher::Event::Delete(o)) => self.state.delete(watched, &o),
            Ok(watcher::Event::Init) => self.state.init(watched),
            Ok(watcher::Event::InitDone) => self.state.init_done(watched),
            Err(e) => tracing::warn!(kind = watched.kind(), "watch failed (retrying): {e}"),
        }
    }

    fn flush(&mut self) {
        let flush = self.state.flush(self.publisher.store_mut());
        self.publisher.stored(flush.changed);
        for object in flush.invalid {
            tracing::warn!(kind = %object.kind, namespace = %object.namespace, name = %object.name, "invalid object skipped: {}", object.errors.join("; "));
            let _ = self.invalid.send(writers::Finding::Invalid(object));
        }
        for file in flush.resolved {
            let _ = self.invalid.send(writers::Finding::Resolved(file));
        }
        let namespaces = self.state.selected_namespaces();
        self.namespaces.send_if_modified(|current| {
            let modified = *current != namespaces;
            *current = namespaces;
            modified
        });
    }

    /// Follows the API server until `shutdown`, publishing a snapshot after
    /// each debounced change; runs leader election and, while leading, the
    /// writers.
    pub async fn run(
        mut self,
        tx: watch::Sender<Arc<Snapshot>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let elector = LeaderElector::new(
            self.client.clone(),
            &self.config.namespace,
            leader::WRITER_LEASE,
            &self.config.identity,
            self.config.lease,
        );
        let (leading_tx, leading) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(elector.run(leading_tx, stopped()))];
        if let Some(findings) = self.invalid_rx.take() {
            let events = writers::EventWriter::new(self.client.clone(), &self.config.identity);
            tasks.push(tokio::spawn(events.run(
                findings,
                leading.clone(),
                stopped(),
            )));
        }
        if let Some(root) = self.config.root_cert.clone() {
            let publisher = writers::RootCertPublisher::new(self.client.clone(), root);
            tasks.push(tokio::spawn(publisher.run(
                self.namespaces(),
                leading.clone(),
                self.config.resync,
                stopped(),
            )));
        }
        let mut jwks_changed = self.publisher.take_jwks_changes();
        let tick = self.publisher.tick();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                update = self.updates.recv() => match update {
                    Some(update) => {
                        self.handle(update);
                        // Take the whole batch before writing the store.
                        while let Ok(update) = self.updates.try_recv() {
                            self.handle(update);
                        }
                        self.flush();
                    }
                    None => break,
                },
                _ = tokio::time::sleep(tick) => {}
                _ = jwks_changed.next() => self.publisher.changed(),
            }
            if !self.publisher.publish_if_due(&tx) {
                break;
            }
        }
        for watcher in &self.watchers {
            watcher.abort();
        }
        let _ = stop_tx.send(true);
        for task in tasks {
            // Releasing the Lease needs the API; an unreachable one must
            // not hold the process up (the Lease then simply expires).
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                tracing::warn!("a Kubernetes writer did not stop within {SHUTDOWN_GRACE:?}");
            }
        }
    }
}

fn spawn_watcher(
    client: &Client,
    watched: Watched,
    config: &KubeSourceConfig,
    tx: mpsc::Sender<Update>,
) -> JoinHandle<()> {
    let client = client.clone();
    let mut watch_config = watcher::Config::default();
    let mut namespace = None;
    match watched {
        Watched::MeshConfig => {
            let name = mesh_config_name(&config.revision);
            watch_config = watch_config.fields(&format!("metadata.name={name}"));
            namespace = Some(config.namespace.clone());
        }
        Watched::Secret => watch_config = watch_config.fields(SECRET_FIELD_SELECTOR),
        _ => {}
    }
    tokio::spawn(async move {
        let resource = match watched {
            Watched::Istio(kind) => loop {
                if let Some(resource) = served_version(&client, kind).await {
                    break resource;
                }
                tracing::warn!(
                    kind = kind.kind(),
                    "CRD not installed; its objects are not watched until it is"
                );
                // Listed and empty: nothing of this kind is in effect.
                for event in [watcher::Event::Init, watcher::Event::InitDone] {
                    let update = Update {
                        watched,
                        event: Ok(event),
                    };
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(CRD_RECHECK).await;
            },
            _ => watched.api_resource(),
        };
        let api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client, ns, &resource),
            None => Api::all_with(client, &resource),
        };
        let stream = watcher(api, watch_config).default_backoff();
        tokio::pin!(stream);
        while let Some(event) = stream.next().await {
            let update = Update {
                watched,
                event: event.map_err(|e| e.to_string()),
            };
            if tx.send(update).await.is_err() {
                return;
            }
        }
    })
}
