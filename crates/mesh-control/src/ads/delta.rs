//! Incremental ADS (`DeltaAggregatedResources`), one task per stream.
//!
//! Per type the server tracks what the proxy holds (name -> version, seeded
//! from `initial_resource_versions` on reconnect) and sends only the
//! difference: resources whose version differs, and `removed_resources` for
//! names the proxy holds that no longer exist (or that it subscribed to and
//! that do not exist). Subscription changes apply whatever the nonce, since
//! each request carries only a change; the nonce decides only whether the
//! request ACKs or NACKs our last response. A NACKed response is recorded
//! and not resent: the proxy is taken to hold those versions, so nothing
//! differs until a snapshot changes them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use mesh_api::xds::ResourceType;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::metrics::TypeLabels;
use super::{Conn, Event, Shared, XdsProtocol, nack_message};
use crate::proxy::ProxyInfo;

/// The proxy went away; the task ends.
struct Closed;

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// One type's subscription and delivery state on one stream.
#[derive(Debug, Default)]
struct Watch {
    /// All resources of the type.
    wildcard: bool,
    /// Explicitly subscribed names.
    names: BTreeSet<String>,
    /// What the proxy holds: name -> version.
    known: HashMap<String, String>,
    /// Subscribed names already reported absent in `removed_resources`.
    reported_absent: HashSet<String>,
    /// The first request of a type is always answered, even with nothing.
    owed: bool,
    sent_nonce: Option<String>,
    sent_version: Option<String>,
    pushed_at: Option<Instant>,
}

impl Watch {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

struct Session {
    conn: Conn,
    tx: Tx,
    watches: BTreeMap<ResourceType, Watch>,
}

/// Runs one stream until the proxy or the server ends it.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    tx: Tx,
    peer: Option<SocketAddr>,
) {
    let first = match inbound.message().await {
        Ok(Some(req)) => req,
        Ok(None) => return,
        Err(status) => {
            tracing::debug!(
                ?peer,
                "delta ADS stream failed before its first request: {status}"
            );
            return;
        }
    };
    let proxy = match ProxyInfo::from_node(first.node.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(?peer, "refusing delta ADS stream: {e}");
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return;
        }
    };
    let conn = Conn::new(shared.clone(), proxy, XdsProtocol::Delta);
    let span =
        tracing::info_span!("ads", proxy = %conn.proxy.id, conn = conn.id, protocol = "delta");
    let mut session = Session {
        conn,
        tx,
        watches: BTreeMap::new(),
    };
    async move {
        tracing::info!(?peer, "proxy connected");
        let mut snapshots = Some(shared.snapshots.clone());
        let mut closing = shared.closing.clone();
        let mut next = Event::Request(first);
        loop {
            let step = match next {
                Event::Request(req) => session.on_request(req).await,
                Event::Snapshot => session.push_all().await,
                Event::End => break,
            };
            if step.is_err() {
                break;
            }
            next = session
                .conn
                .next_event(&mut inbound, &mut snapshots, &mut closing)
                .await;
        }
        if *closing.borrow() {
            let _ = session
                .tx
                .send(Err(Status::unavailable("control plane is shutting down")))
                .await;
        }
        tracing::info!("proxy disconnected");
    }
    .instrument(span)
    .await;
}

// === impl Session ===

impl Session {
    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Closed> {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::warn!(type_url = %req.type_url, "delta request for a type the mesh does not serve; ignored");
            return Ok(());
        };
        let first = !self.watches.contains_key(&ty);
        let w = self.watches.entry(ty).or_default();
        if first {
            w.owed = true;
            // Legacy wildcard: a first CDS/LDS request naming nothing.
            w.wildcard = ty.is_full_set() && req.resource_names_subscribe.is_empty();
            w.known = req.initial_resource_versions.clone();
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                w.wildcard = true;
            } else if w.names.insert(name.clone())
                && !req.initial_resource_versions.contains_key(name)
            {
                // A new subscription is answered even if we think the proxy has it.
                w.known.remove(name);
                w.reported_absent.remove(name);
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                w.wildcard = false;
            } else {
                w.names.remove(name);
                w.reported_absent.remove(name);
                if !w.wildcard {
                    w.known.remove(name);
                }
            }
        }
        let nonce = req.response_nonce.as_str();
        if !nonce.is_empty() && w.sent_nonce.as_deref() == Some(nonce) {
            if let Some(err) = &req.error_detail {
                let message = nack_message(err);
                let rejected = w.sent_version.clone();
                tracing::warn!(
                    r#type = ty.short_name(),
                    rejected = rejected.as_deref().unwrap_or(""),
                    "proxy rejected config: {message}"
                );
                w.pushed_at = None;
                self.conn
                    .shared
                    .metrics
                    .xds()
                    .nacks
                    .get_or_create(&TypeLabels {
                        r#type: ty.short_name(),
                    })
                    .inc();
                self.conn.sync.update(ty, |t| {
                    t.last_nack = Some(message);
                    t.last_nack_version = rejected;
                    t.nacks += 1;
                });
            } else {
                if let Some(at) = w.pushed_at.take() {
                    self.conn
                        .shared
                        .metrics
                        .xds()
                        .convergence
                        .observe(at.elapsed().as_secs_f64());
                }
                let version = w.sent_version.clone();
                self.conn.sync.update(ty, |t| {
                    t.acked_version = version;
                    t.acked_nonce = Some(nonce.to_string());
                    t.last_nack = None;
                    t.last_nack_version = None;
                });
            }
        } else if !nonce.is_empty() {
            tracing::debug!(
                r#type = ty.short_name(),
                nonce,
                "stale nonce; subscription changes applied, ACK ignored"
            );
        }
        self.respond(ty).await
    }

    /// After a new snapshot: every subscribed type with changes, CDS, EDS,
    /// LDS, RDS in that order.
    async fn push_all(&mut self) -> Result<(), Closed> {
        for ty in ResourceType::ALL {
            if self.watches.contains_key(&ty) {
                self.respond(ty).await?;
            }
        }
        Ok(())
    }

    /// Sends what the proxy lacks of `ty`, if anything (or if owed).
    async fn respond(&mut self, ty: ResourceType) -> Result<(), Closed> {
        let started = Instant::now();
        let Some(resources) = self.conn.refresh().await else {
            return Ok(());
        };
        let Some(w) = self.watches.get_mut(&ty) else {
            return Ok(());
        };
        let set = resources.get(ty);
        // Resources the proxy no longer wants are forgotten without a word.
        let wanted: Vec<String> = w.known.keys().filter(|n| !w.wants(n)).cloned().collect();
        for name in wanted {
            w.known.remove(&name);
        }
        let updates: Vec<Resource> = set
            .items
            .iter()
            .filter(|i| w.wants(&i.name) && w.known.get(&i.name) != Some(&i.version))
            .map(|i| Resource {
                name: i.name.clone(),
                version: i.version.clone(),
                resource: Some(i.any.clone()),
                ..Default::default()
            })
            .collect();
        let mut removed: Vec<String> = w
            .known
            .keys()
            .filter(|n| set.get(n).is_none())
            .cloned()
            .collect();
        let absent: Vec<String> = w
            .names
            .iter()
            .filter(|n| {
                set.get(n).is_none() && !w.known.contains_key(*n) && !w.reported_absent.contains(*n)
            })
            .cloned()
            .collect();
        removed.extend(absent.iter().cloned());
        removed.sort();
        removed.dedup();
        if updates.is_empty() && removed.is_empty() && !w.owed {
            return Ok(());
        }
        for r in &updates {
            w.known.insert(r.name.clone(), r.version.clone());
            w.reported_absent.remove(&r.name);
        }
        for name in &removed {
            w.known.remove(name);
        }
        w.reported_absent.extend(absent);
        let nonce = self.conn.next_nonce();
        tracing::debug!(
            r#type = ty.short_name(),
            version = %set.version,
            nonce = %nonce,
            updated = updates.len(),
            removed = removed.len(),
            snapshot = resources.snapshot_version,
            "delta push"
        );
        w.owed = false;
        w.sent_nonce = Some(nonce.clone());
        w.sent_version = Some(set.version.clone());
        w.pushed_at = Some(self.conn.seen_at);
        let (version, known) = (set.version.clone(), w.known.len());
        self.conn.sync.update(ty, |t| {
            t.sent_version = Some(version);
            t.sent_nonce = Some(nonce.clone());
            t.resources = known;
        });
        let response = DeltaDiscoveryResponse {
            system_version_info: set.version.clone(),
            resources: updates,
            type_url: ty.type_url(),
            removed_resources: removed,
            nonce,
            control_plane: Some(ControlPlane {
                identifier: "mesh-control".into(),
            }),
            ..Default::default()
        };
        let xds = self.conn.shared.metrics.xds();
        xds.pushes
            .get_or_create(&TypeLabels {
                r#type: ty.short_name(),
            })
            .inc();
        xds.push_duration.observe(started.elapsed().as_secs_f64());
        self.tx.send(Ok(response)).await.map_err(|_| Closed)
    }
}
