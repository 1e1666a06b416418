//! State-of-the-world ADS (`StreamAggregatedResources`), one task per
//! stream.
//!
//! The rules that keep a real Envoy happy:
//! - Answer a request only when it opens a subscription (empty nonce),
//!   changes the subscribed names, or when a version is pending. A plain
//!   ACK is never answered: Envoy would ACK the answer, and so on forever.
//! - A request whose nonce is not the last one sent for its type is stale
//!   (Envoy sent it before seeing our newer response) and is ignored whole;
//!   Envoy repeats its subscription when it ACKs the newer response. This is
//!   how "Envoy requests EDS before it ACKs CDS" works out.
//! - A NACK carries the last accepted version and `error_detail`: it is
//!   recorded and counted, and the rejected version is not sent again; the
//!   next snapshot that changes the resources is.
//! - CDS and LDS responses always carry the full set (Envoy deletes what is
//!   missing); EDS and RDS carry the requested names that exist.
//! - On a new snapshot, types go out in the order CDS, EDS, LDS, RDS.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use mesh_api::xds::ResourceType;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::resources::{Item, encoded_len, version_of};
use super::{Conn, Event, Shared, XdsProtocol, nack_message};
use crate::proxy::ProxyInfo;

/// The proxy went away; the task ends.
struct Closed;

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

/// One type's subscription and delivery state on one stream.
#[derive(Debug, Default)]
struct Watch {
    /// All resources of the type (CDS, LDS, or `*` requested).
    wildcard: bool,
    /// Requested names (EDS, RDS).
    names: BTreeSet<String>,
    /// A response is due whatever the version: new subscription or names.
    owed: bool,
    sent_version: Option<String>,
    sent_nonce: Option<String>,
    /// Last version the proxy rejected; not sent again on this stream.
    rejected_version: Option<String>,
    /// When the connection saw the snapshot behind the unacknowledged
    /// response, for the convergence histogram.
    pushed_at: Option<Instant>,
}

struct Session {
    conn: Conn,
    tx: Tx,
    watches: BTreeMap<ResourceType, Watch>,
}

/// Runs one stream until the proxy or the server ends it.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: Tx,
    peer: Option<SocketAddr>,
) {
    let first = match inbound.message().await {
        Ok(Some(req)) => req,
        Ok(None) => return,
        Err(status) => {
            tracing::debug!(
                ?peer,
                "ADS stream failed before its first request: {status}"
            );
            return;
        }
    };
    let proxy = match ProxyInfo::from_node(first.node.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(?peer, "refusing ADS stream: {e}");
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return;
        }
    };
    let conn = Conn::new(shared.clone(), proxy, XdsProtocol::Sotw);
    let span =
        tracing::info_span!("ads", proxy = %conn.proxy.id, conn = conn.id, protocol = "sotw");
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
    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), Closed> {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::warn!(type_url = %req.type_url, "request for a type the mesh does not serve; ignored");
            return Ok(());
        };
        let w = self.watches.entry(ty).or_default();
        let nonce = req.response_nonce.as_str();
        if !nonce.is_empty() && !req.version_info.is_empty() {
            // Every request carries the version the proxy runs, even a
            // stale one or a NACK.
            self.conn
                .sync
                .update(ty, |t| t.acked_version = Some(req.version_info.clone()));
        }
        if !nonce.is_empty() && w.sent_nonce.is_some() && w.sent_nonce.as_deref() != Some(nonce) {
            tracing::debug!(
                r#type = ty.short_name(),
                nonce,
                "stale nonce; request ignored"
            );
            return Ok(());
        }
        // A request that answers nothing we sent opens (or reopens) the subscription.
        if nonce.is_empty() || w.sent_nonce.is_none() {
            w.owed = true;
        }
        let wildcard = ty.is_full_set() || req.resource_names.iter().any(|n| n == "*");
        let names: BTreeSet<String> = if wildcard {
            BTreeSet::new()
        } else {
            req.resource_names.iter().cloned().collect()
        };
        if wildcard != w.wildcard || names != w.names {
            w.owed = true;
            w.wildcard = wildcard;
            w.names = names;
        }
        if let Some(err) = req.error_detail.as_ref().filter(|_| !nonce.is_empty()) {
            let message = nack_message(err);
            let rejected = w.sent_version.clone();
            tracing::warn!(
                r#type = ty.short_name(),
                rejected = rejected.as_deref().unwrap_or(""),
                accepted = %req.version_info,
                "proxy rejected config: {message}"
            );
            w.rejected_version = rejected.clone();
            w.pushed_at = None;
            self.conn
                .shared
                .metrics
                .xds()
                .nacks
                .get_or_create(&super::metrics::TypeLabels {
                    r#type: ty.short_name(),
                })
                .inc();
            self.conn.sync.update(ty, |t| {
                t.last_nack = Some(message);
                t.last_nack_version = rejected;
                t.nacks += 1;
            });
        } else if !nonce.is_empty() {
            if let Some(at) = w.pushed_at.take() {
                self.conn
                    .shared
                    .metrics
                    .xds()
                    .convergence
                    .observe(at.elapsed().as_secs_f64());
            }
            let accepted_current = w.sent_version.as_deref() == Some(req.version_info.as_str());
            self.conn.sync.update(ty, |t| {
                t.acked_version = Some(req.version_info.clone());
                t.acked_nonce = Some(nonce.to_string());
                if accepted_current {
                    t.last_nack = None;
                    t.last_nack_version = None;
                }
            });
        }
        self.respond(ty).await
    }

    /// After a new snapshot: every subscribed type whose version changed,
    /// CDS, EDS, LDS, RDS in that order.
    async fn push_all(&mut self) -> Result<(), Closed> {
        for ty in ResourceType::ALL {
            if self.watches.contains_key(&ty) {
                self.respond(ty).await?;
            }
        }
        Ok(())
    }

    /// Sends `ty` if a response is owed or its version changed (and is not
    /// the one the proxy rejected).
    async fn respond(&mut self, ty: ResourceType) -> Result<(), Closed> {
        let started = Instant::now();
        let Some(resources) = self.conn.refresh().await else {
            // Before the first snapshot: the response stays owed.
            return Ok(());
        };
        let Some(w) = self.watches.get_mut(&ty) else {
            return Ok(());
        };
        let set = resources.get(ty);
        let items: Vec<&Item> = if w.wildcard {
            set.items.iter().collect()
        } else {
            w.names.iter().filter_map(|n| set.get(n)).collect()
        };
        let version = version_of(items.iter().copied());
        let changed = w.sent_version.as_deref() != Some(version.as_str());
        let rejected = w.rejected_version.as_deref() == Some(version.as_str());
        if !w.owed && (!changed || rejected) {
            return Ok(());
        }
        let nonce = self.conn.next_nonce();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: items.iter().map(|i| i.any.clone()).collect(),
            type_url: ty.type_url(),
            nonce: nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: "mesh-control".into(),
            }),
            ..Default::default()
        };
        tracing::debug!(
            r#type = ty.short_name(),
            version = %version,
            nonce = %nonce,
            resources = items.len(),
            bytes = encoded_len(&items),
            snapshot = resources.snapshot_version,
            "push"
        );
        w.owed = false;
        w.sent_version = Some(version.clone());
        w.sent_nonce = Some(nonce.clone());
        w.pushed_at = Some(self.conn.seen_at);
        let count = items.len();
        self.conn.sync.update(ty, |t| {
            t.sent_version = Some(version);
            t.sent_nonce = Some(nonce);
            t.resources = count;
        });
        let xds = self.conn.shared.metrics.xds();
        xds.pushes
            .get_or_create(&super::metrics::TypeLabels {
                r#type: ty.short_name(),
            })
            .inc();
        xds.push_duration.observe(started.elapsed().as_secs_f64());
        self.tx.send(Ok(response)).await.map_err(|_| Closed)
    }
}
