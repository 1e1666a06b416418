//! What the leader writes to the API server: a Warning Event on every Istio
//! object the store rejected (naming the field), and the mesh root as
//! ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in every watched
//! namespace, kept current. Followers keep their findings so that a replica
//! that becomes leader reports what is still wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::api::{Api, PostParams};
use mesh_api::wellknown::ROOT_CERT_CONFIGMAP;
use tokio::sync::{mpsc, watch};

use super::leader::micro_now;
use super::state::InvalidObject;

/// Key of the root certificate in `istio-ca-root-cert`.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// `reportingComponent` and `source.component` of our Events.
pub const COMPONENT: &str = "mesh-control";
/// `reason` of the Event on an invalid object.
pub const REASON_INVALID: &str = "InvalidConfig";
/// Longest Event message kept (the API server refuses larger ones).
const MAX_MESSAGE: usize = 1024;
/// How soon a failed root-cert write is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// What the source found about one object.
#[derive(Clone, Debug)]
pub enum Finding {
    /// It is invalid (a new version of it).
    Invalid(InvalidObject),
    /// The object of this pseudo-file is no longer invalid.
    Resolved(String),
}

/// Writes Events on invalid objects while this replica leads.
pub struct EventWriter {
    client: Client,
    identity: String,
}

// === impl EventWriter ===

impl EventWriter {
    /// A writer reporting as `identity`.
    pub fn new(client: Client, identity: &str) -> Self {
        Self {
            client,
            identity: identity.to_string(),
        }
    }

    /// The Event for `object`.
    pub fn event(&self, object: &InvalidObject) -> Event {
        let now = Time(micro_now().0);
        let mut message = format!(
            "{} {}/{} is invalid and is not used: {}",
            object.kind,
            object.namespace,
            object.name,
            object.errors.join("; ")
        );
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE - 3;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    object.name,
                    now.0.as_nanosecond() as u64
                )),
                namespace: Some(object.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(object.api_version.clone()),
                kind: Some(object.kind.clone()),
                name: Some(object.name.clone()),
                namespace: Some(object.namespace.clone()),
                uid: Some(object.uid.clone()).filter(|u| !u.is_empty()),
                resource_version: Some(object.resource_version.clone()).filter(|v| !v.is_empty()),
                ..ObjectReference::default()
            },
            reason: Some(REASON_INVALID.to_string()),
            message: Some(message),
            type_: Some("Warning".to_string()),
            action: Some("Validate".to_string()),
            source: Some(EventSource {
                component: Some(COMPONENT.to_string()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.to_string()),
            reporting_instance: Some(self.identity.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Event::default()
        }
    }

    async fn write(&self, object: &InvalidObject) -> Result<(), kube::Error> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &object.namespace);
        events
            .create(&PostParams::default(), &self.event(object))
            .await
            .map(|_| ())
    }

    /// Writes an Event for each finding while `leading`, until `shutdown`.
    pub async fn run(
        self,
        mut findings: mpsc::UnboundedReceiver<Finding>,
        mut leading: watch::Receiver<bool>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut pending: BTreeMap<String, InvalidObject> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                finding = findings.recv() => match finding {
                    Some(Finding::Invalid(object)) => {
                        pending.insert(object.file.clone(), object);
                    }
                    Some(Finding::Resolved(file)) => {
                        pending.remove(&file);
                    }
                    None => return,
                },
                changed = leading.changed() => if changed.is_err() { return },
            }
            if !*leading.borrow_and_update() {
                continue;
            }
            for (_, object) in std::mem::take(&mut pending) {
                if let Err(e) = self.write(&object).await {
                    // Not retried: the next invalid version gets its own.
                    tracing::warn!(kind = %object.kind, namespace = %object.namespace, name = %object.name, "cannot write Event: {e}");
                }
            }
        }
    }
}

/// Keeps `istio-ca-root-cert` current in every watched namespace while
/// this replica leads.
pub struct RootCertPublisher {
    client: Client,
    root: String,
}

// === impl RootCertPublisher ===

impl RootCertPublisher {
    /// A publisher of `root` (PEM).
    pub fn new(client: Client, root: String) -> Self {
        Self { client, root }
    }

    /// Creates or updates the ConfigMap in `namespace` when it differs.
    pub async fn ensure(&self, namespace: &str) -> Result<(), kube::Error> {
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        match maps.get_opt(ROOT_CERT_CONFIGMAP).await? {
            None => {
                let map = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CERT_CONFIGMAP.to_string()),
                        namespace: Some(namespace.to_string()),
                        labels: Some(BTreeMap::from([(
                            "istio.io/config".to_string(),
                            "true".to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(
                        ROOT_CERT_KEY.to_string(),
                        self.root.clone(),
                    )])),
                    ..ConfigMap::default()
                };
                maps.create(&PostParams::default(), &map).await.map(|_| ())
            }
            Some(map)
                if map.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)) == Some(&self.root) =>
            {
                Ok(())
            }
            Some(mut map) => {
                map.data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ROOT_CERT_KEY.to_string(), self.root.clone());
                map.metadata.managed_fields = None;
                // Carries the resourceVersion read: a concurrent change
                // makes this a 409, retried on the next round.
                maps.replace(ROOT_CERT_CONFIGMAP, &PostParams::default(), &map)
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Follows `namespaces` until `shutdown`; every namespace is checked
    /// again when leadership is gained and every `resync`.
    pub async fn run(
        self,
        mut namespaces: watch::Receiver<BTreeSet<String>>,
        mut leading: watch::Receiver<bool>,
        resync: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut in_sync: BTreeSet<String> = BTreeSet::new();
        let mut next_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                changed = namespaces.changed() => if changed.is_err() { return },
                changed = leading.changed() => {
                    if changed.is_err() { return }
                    in_sync.clear();
                }
                _ = tokio::time::sleep_until(next_check) => in_sync.clear(),
            }
            next_check = tokio::time::Instant::now() + resync;
            if !*leading.borrow_and_update() {
                continue;
            }
            let wanted = namespaces.borrow_and_update().clone();
            in_sync.retain(|ns| wanted.contains(ns));
            for ns in wanted.difference(&in_sync.clone()) {
                match self.ensure(ns).await {
                    Ok(()) => {
                        in_sync.insert(ns.clone());
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %ns, "cannot write ConfigMap {ROOT_CERT_CONFIGMAP}: {e}");
                        next_check = tokio::time::Instant::now() + RETRY;
                    }
                }
            }
        }
    }
}
