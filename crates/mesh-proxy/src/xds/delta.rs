//! Incremental ADS (`DeltaAggregatedResources`), the client side.
//!
//! The first request of each type on a stream states the whole
//! subscription and, after a reconnect, `initial_resource_versions` (every
//! resource held, by name and version) so the server sends only what
//! changed while the proxy was away. Later requests carry only changes
//! (`resource_names_subscribe` / `_unsubscribe`). Responses carry changed
//! resources and `removed_resources`; each is ACKed or NACKed once by its
//! nonce.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use mesh_api::xds::ResourceType;

use super::sotw::INVALID_ARGUMENT;
use super::state::{Item, Subscription, Update, XdsState, nack_message};

/// One stream's client state.
#[derive(Debug)]
pub struct Session {
    /// Sent on the first request only.
    node: Option<Node>,
    /// What the server was last asked for, per type.
    sent: BTreeMap<ResourceType, Subscription>,
}

// === impl Session ===

impl Session {
    /// A new stream introducing itself as `node`.
    pub fn new(node: Node) -> Self {
        Self {
            node: Some(node),
            sent: BTreeMap::new(),
        }
    }

    /// The requests that open the stream.
    pub fn initial(&mut self, state: &mut XdsState) -> Vec<DeltaDiscoveryRequest> {
        self.sync(state, |_| true)
    }

    /// Applies a response; returns the requests to send, in order.
    pub fn on_response(
        &mut self,
        state: &mut XdsState,
        response: DeltaDiscoveryResponse,
    ) -> Vec<DeltaDiscoveryRequest> {
        let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "delta response for a type the proxy does not use; ignored");
            return Vec::new();
        };
        tracing::debug!(
            r#type = ty.short_name(),
            version = %response.system_version_info,
            nonce = %response.nonce,
            updated = response.resources.len(),
            removed = response.removed_resources.len(),
            "delta response"
        );
        let update = Update {
            ty,
            version: response.system_version_info,
            nonce: response.nonce.clone(),
            items: response
                .resources
                .into_iter()
                .map(|r| Item {
                    name: r.name,
                    version: r.version,
                    any: r.resource,
                })
                .collect(),
            removed: response.removed_resources,
            full_set: false,
        };
        let refused = state.apply(update);
        let mut requests = self.sync(state, |t| t != ty && !t.is_full_set());
        requests.push(DeltaDiscoveryRequest {
            node: self.node.take(),
            type_url: ty.type_url(),
            response_nonce: response.nonce,
            error_detail: (!refused.is_empty()).then(|| Status {
                code: INVALID_ARGUMENT,
                message: nack_message(refused.iter()),
                details: Vec::new(),
            }),
            ..Default::default()
        });
        requests.extend(self.sync(state, |t| t != ty && t.is_full_set()));
        state.settle();
        requests
    }

    /// Subscription changes for the types `filter` lets through.
    fn sync(
        &mut self,
        state: &mut XdsState,
        filter: impl Fn(ResourceType) -> bool,
    ) -> Vec<DeltaDiscoveryRequest> {
        let mut requests = Vec::new();
        for ty in ResourceType::ALL.into_iter().filter(|t| filter(*t)) {
            let want = state.desired(ty);
            let had = self.sent.get(&ty);
            if want.as_ref() == had {
                continue;
            }
            let widened = want.as_ref().is_some_and(|w| w.widens(had));
            let request = match (had, &want) {
                // First request of the type on this stream: the whole
                // subscription and what is already held (a wildcard is an
                // empty list, the legacy form every server understands).
                (None, Some(w)) => DeltaDiscoveryRequest {
                    resource_names_subscribe: w.names(),
                    initial_resource_versions: state.known_versions(ty),
                    ..Default::default()
                },
                (Some(h), w) => {
                    let before = set_of(h);
                    let after = w.as_ref().map(set_of).unwrap_or_default();
                    DeltaDiscoveryRequest {
                        resource_names_subscribe: after.difference(&before).cloned().collect(),
                        resource_names_unsubscribe: before.difference(&after).cloned().collect(),
                        ..Default::default()
                    }
                }
                (None, None) => continue,
            };
            requests.push(DeltaDiscoveryRequest {
                node: self.node.take(),
                type_url: ty.type_url(),
                ..request
            });
            state.requested(ty, want.as_ref(), widened);
            match want {
                Some(w) => self.sent.insert(ty, w),
                None => self.sent.remove(&ty),
            };
        }
        requests
    }
}

/// A subscription as names, `*` standing for every name.
fn set_of(sub: &Subscription) -> BTreeSet<String> {
    match sub {
        Subscription::Wildcard => ["*".to_string()].into(),
        Subscription::Names(n) => n.clone(),
    }
}
