//! State-of-the-world ADS (`StreamAggregatedResources`), the client side.
//!
//! Every request for a type carries the whole subscription, the last
//! accepted version and the nonce of the last response of that type, so a
//! request the server sees as stale is repaired by the next one. Each
//! response is answered exactly once (ACK, or NACK with the previous
//! version and `error_detail`); subscription changes it causes for
//! other types go out as their own requests: EDS and RDS names before the
//! ACK (as Envoy does), a newly opened LDS after it.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use mesh_api::xds::ResourceType;

use super::state::{Item, Subscription, Update, XdsState, nack_message};

/// gRPC code `INVALID_ARGUMENT`, what a NACK's `error_detail` carries.
pub const INVALID_ARGUMENT: i32 = 3;

/// One stream's client state.
#[derive(Debug)]
pub struct Session {
    /// Sent on the first request only.
    node: Option<Node>,
    /// What the server was last asked for, per type.
    sent: BTreeMap<ResourceType, Subscription>,
    /// The last nonce received, per type.
    nonces: BTreeMap<ResourceType, String>,
}

// === impl Session ===

impl Session {
    /// A new stream introducing itself as `node`.
    pub fn new(node: Node) -> Self {
        Self {
            node: Some(node),
            sent: BTreeMap::new(),
            nonces: BTreeMap::new(),
        }
    }

    /// The requests that open the stream: everything wanted now, with the
    /// versions held (so a reconnect after an outage resumes, not restarts).
    pub fn initial(&mut self, state: &mut XdsState) -> Vec<DiscoveryRequest> {
        self.sync(state, |_| true)
    }

    /// Applies a response; returns the requests to send, in order.
    pub fn on_response(
        &mut self,
        state: &mut XdsState,
        response: DiscoveryResponse,
    ) -> Vec<DiscoveryRequest> {
        let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "response for a type the proxy does not use; ignored");
            return Vec::new();
        };
        tracing::debug!(
            r#type = ty.short_name(),
            version = %response.version_info,
            nonce = %response.nonce,
            resources = response.resources.len(),
            "response"
        );
        self.nonces.insert(ty, response.nonce.clone());
        let update = Update {
            ty,
            version: response.version_info.clone(),
            nonce: response.nonce.clone(),
            items: response
                .resources
                .into_iter()
                .map(|any| Item {
                    name: String::new(),
                    version: response.version_info.clone(),
                    any: Some(any),
                })
                .collect(),
            removed: Vec::new(),
            full_set: ty.is_full_set(),
        };
        let refused = state.apply(update);
        let mut requests = self.sync(state, |t| t != ty && !t.is_full_set());
        let error_detail = (!refused.is_empty()).then(|| Status {
            code: INVALID_ARGUMENT,
            message: nack_message(refused.iter()),
            details: Vec::new(),
        });
        let names = self
            .sent
            .get(&ty)
            .map(Subscription::names)
            .unwrap_or_default();
        requests.push(DiscoveryRequest {
            version_info: state.accepted_version(ty),
            node: self.node.take(),
            resource_names: names,
            type_url: ty.type_url(),
            response_nonce: response.nonce,
            error_detail,
            ..Default::default()
        });
        requests.extend(self.sync(state, |t| t != ty && t.is_full_set()));
        state.settle();
        requests
    }

    /// Requests for the types (among those `filter` lets through) whose
    /// wanted subscription differs from what the server was asked.
    fn sync(
        &mut self,
        state: &mut XdsState,
        filter: impl Fn(ResourceType) -> bool,
    ) -> Vec<DiscoveryRequest> {
        let mut requests = Vec::new();
        for ty in ResourceType::ALL.into_iter().filter(|t| filter(*t)) {
            let want = state.desired(ty);
            let had = self.sent.get(&ty);
            if want.as_ref() == had {
                continue;
            }
            let widened = want.as_ref().is_some_and(|w| w.widens(had));
            // Unsubscribing from every name is an empty list, which a
            // server must not read as a wildcard once names were sent.
            let names = want.as_ref().map(Subscription::names).unwrap_or_default();
            requests.push(DiscoveryRequest {
                version_info: state.accepted_version(ty),
                node: self.node.take(),
                resource_names: names,
                type_url: ty.type_url(),
                response_nonce: self.nonces.get(&ty).cloned().unwrap_or_default(),
                ..Default::default()
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
