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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use mesh_api::xds::ResourceType;

use super::resources::{Item, View, version_of};
use super::stream::{Closed, StreamSession, Tx};
use super::wire::{Encoded, items_len, sotw_response};
use super::{Conn, XdsProtocol, nack_message};

/// One type's subscription and delivery state on one stream.
#[derive(Debug, Default)]
struct Watch {
    /// All resources of the type (CDS, LDS, or `*` requested).
    wildcard: bool,
    /// Requested names (EDS, RDS), shared with every stream that asks for
    /// the same set (all proxies of a shape do).
    names: Arc<BTreeSet<String>>,
    /// A response is due whatever the version: new subscription or names.
    owed: bool,
    sent_version: Option<String>,
    sent_nonce: Option<String>,
    /// Last version the proxy rejected; not sent again on this stream.
    rejected_version: Option<String>,
    /// What the last response was computed from: for EDS and RDS a push
    /// then carries only the resources that changed since (the protocol
    /// allows it for types that are not full sets; Envoy keeps the rest).
    sent_view: Option<View>,
    /// When the connection saw the snapshot behind the unacknowledged
    /// response, for the convergence histogram.
    pushed_at: Option<Instant>,
}

/// Subscribed name sets, one copy per distinct set: with thousands of
/// proxies each asking for thousands of EDS names, per-stream copies were
/// most of the server's memory.
#[derive(Default)]
pub(super) struct NameSets(Mutex<HashMap<u64, Vec<Weak<BTreeSet<String>>>>>);

impl NameSets {
    /// The shared copy of `names`.
    pub fn intern(&self, names: BTreeSet<String>) -> Arc<BTreeSet<String>> {
        let mut h = std::hash::DefaultHasher::new();
        names.hash(&mut h);
        let key = h.finish();
        let mut sets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = sets.entry(key).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        if let Some(found) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| **s == names)
        {
            return found;
        }
        let shared = Arc::new(names);
        bucket.push(Arc::downgrade(&shared));
        shared
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
    type Request = DiscoveryRequest;
    type Response = Encoded;

    const PROTOCOL: XdsProtocol = XdsProtocol::Sotw;
    const NAME: &'static str = "ADS";

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
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
        if wildcard != w.wildcard || names != *w.names {
            w.owed = true;
            w.wildcard = wildcard;
            w.names = self.conn.shared.name_sets.intern(names);
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
            self.conn.record_nack(ty, message, rejected);
        } else if !nonce.is_empty() {
            if let Some(at) = w.pushed_at.take() {
                self.conn.observe_convergence(at);
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
}

impl Session {
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
        let subscribed: Vec<&Item> = if w.wildcard {
            resources.items(ty).collect()
        } else {
            w.names
                .iter()
                .filter_map(|n| resources.get(ty, n))
                .collect()
        };
        let version = version_of(subscribed.iter().copied());
        let changed = w.sent_version.as_deref() != Some(version.as_str());
        let rejected = w.rejected_version.as_deref() == Some(version.as_str());
        if !w.owed && (!changed || rejected) {
            return Ok(());
        }
        let partial = match (&w.sent_view, ty.is_full_set() || w.owed) {
            (Some(old), false) => resources.changed_since(old, ty).map(|items| {
                items
                    .into_iter()
                    .filter(|i| w.wildcard || w.names.contains(&i.name))
                    .collect::<Vec<&Item>>()
            }),
            _ => None,
        };
        let items = match partial {
            // Only removals: Envoy drops those with the clusters or
            // listeners that referenced them.
            Some(items) if items.is_empty() => return Ok(()),
            Some(items) => items,
            None => subscribed,
        };
        let nonce = self.conn.next_nonce();
        let response = sotw_response(&version, &nonce, &ty.type_url(), &items);
        tracing::debug!(
            r#type = ty.short_name(),
            version = %version,
            nonce = %nonce,
            resources = items.len(),
            bytes = items_len(&items),
            snapshot = resources.snapshot_version,
            "push"
        );
        w.owed = false;
        w.sent_view = Some(resources.clone());
        w.sent_version = Some(version.clone());
        w.sent_nonce = Some(nonce.clone());
        w.pushed_at = Some(self.conn.seen_at);
        let count = items.len();
        self.conn.sync.update(ty, |t| {
            t.sent_version = Some(version);
            t.sent_nonce = Some(nonce);
            t.resources = count;
        });
        self.conn.record_push(ty, started);
        self.tx.send(Ok(response)).await.map_err(|_| Closed)
    }
}
