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
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use mesh_api::xds::ResourceType;

use super::resources::Item;
use super::stream::{Closed, StreamSession, Tx};
use super::wire::{Encoded, delta_response};
use super::{Conn, XdsProtocol, nack_message};

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

/// One stream's state, run by [`drive`](super::stream::drive).
pub(super) struct Session {
    conn: Conn,
    tx: Tx<Encoded>,
    watches: BTreeMap<ResourceType, Watch>,
}

// === impl Session ===

impl StreamSession for Session {
    type Request = DeltaDiscoveryRequest;
    type Response = Encoded;

    const PROTOCOL: XdsProtocol = XdsProtocol::Delta;
    const NAME: &'static str = "delta ADS";

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn new(conn: Conn, tx: Tx<Encoded>) -> Self {
        Self {
            conn,
            tx,
            watches: BTreeMap::new(),
        }
    }

    fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    fn tx(&self) -> &Tx<Encoded> {
        &self.tx
    }

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
                self.conn.record_nack(ty, message, rejected);
            } else {
                if let Some(at) = w.pushed_at.take() {
                    self.conn.observe_convergence(at);
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
}

impl Session {
    /// Sends what the proxy lacks of `ty`, if anything (or if owed).
    async fn respond(&mut self, ty: ResourceType) -> Result<(), Closed> {
        let started = Instant::now();
        let Some(resources) = self.conn.refresh().await else {
            return Ok(());
        };
        let Some(w) = self.watches.get_mut(&ty) else {
            return Ok(());
        };
        let set_version = resources.version(ty);
        // Resources the proxy no longer wants are forgotten without a word.
        let wanted: Vec<String> = w.known.keys().filter(|n| !w.wants(n)).cloned().collect();
        for name in wanted {
            w.known.remove(&name);
        }
        let updates: Vec<&Item> = resources
            .items(ty)
            .filter(|i| w.wants(&i.name) && w.known.get(&i.name) != Some(&i.version))
            .collect();
        let mut removed: Vec<String> = w
            .known
            .keys()
            .filter(|n| resources.get(ty, n).is_none())
            .cloned()
            .collect();
        let absent: Vec<String> = w
            .names
            .iter()
            .filter(|n| {
                resources.get(ty, n).is_none()
                    && !w.known.contains_key(*n)
                    && !w.reported_absent.contains(*n)
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
            version = %set_version,
            nonce = %nonce,
            updated = updates.len(),
            removed = removed.len(),
            snapshot = resources.snapshot_version,
            "delta push"
        );
        w.owed = false;
        w.sent_nonce = Some(nonce.clone());
        w.sent_version = Some(set_version.clone());
        w.pushed_at = Some(self.conn.seen_at);
        let (version, known) = (set_version.clone(), w.known.len());
        self.conn.sync.update(ty, |t| {
            t.sent_version = Some(version);
            t.sent_nonce = Some(nonce.clone());
            t.resources = known;
        });
        let response = delta_response(&set_version, &nonce, &ty.type_url(), &updates, removed);
        self.conn.record_push(ty, started);
        self.tx.send(Ok(response)).await.map_err(|_| Closed)
    }
}
