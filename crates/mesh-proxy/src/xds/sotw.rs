//! State-of-the-world ADS (`StreamAggregatedResources`), the client side.
//!
//! Every request for a type carries the whole subscription, the last
//! accepted version and the nonce of the last response of that type, so a
//! request the server sees as stale is repaired by the next one. A NACK
//! carries the previous version. The order of requests is
//! [`super::session::Session`]'s.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use mesh_api::xds::ResourceType;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::session::{AdsClient, Wire};
use super::state::{Item, Subscription, Update, XdsState};

/// The protocol's own state on one stream.
#[derive(Debug, Default)]
pub struct Sotw {
    /// The last nonce received, per type.
    nonces: BTreeMap<ResourceType, String>,
}

// === impl Sotw ===

impl Wire for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "state of the world";

    async fn open(
        client: &mut AdsClient,
        requests: UnboundedReceiverStream<DiscoveryRequest>,
    ) -> Result<tonic::Response<tonic::Streaming<DiscoveryResponse>>, tonic::Status> {
        client.stream_aggregated_resources(requests).await
    }

    fn update(&mut self, response: DiscoveryResponse) -> Option<Update> {
        let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "response for a type the proxy does not use; ignored");
            return None;
        };
        tracing::debug!(
            r#type = ty.short_name(),
            version = %response.version_info,
            nonce = %response.nonce,
            resources = response.resources.len(),
            "response"
        );
        self.nonces.insert(ty, response.nonce.clone());
        Some(Update {
            ty,
            version: response.version_info.clone(),
            nonce: response.nonce,
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
        })
    }

    fn subscribe(
        &self,
        state: &XdsState,
        ty: ResourceType,
        _had: Option<&Subscription>,
        want: Option<&Subscription>,
        node: Option<Node>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: state.accepted_version(ty),
            node,
            // Unsubscribing from every name is an empty list, which a
            // server must not read as a wildcard once names were sent.
            resource_names: want.map(Subscription::names).unwrap_or_default(),
            type_url: ty.type_url(),
            response_nonce: self.nonces.get(&ty).cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    fn answer(
        &self,
        state: &XdsState,
        ty: ResourceType,
        subscribed: Option<&Subscription>,
        nonce: String,
        error: Option<Status>,
        node: Option<Node>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: state.accepted_version(ty),
            node,
            resource_names: subscribed.map(Subscription::names).unwrap_or_default(),
            type_url: ty.type_url(),
            response_nonce: nonce,
            error_detail: error,
            ..Default::default()
        }
    }
}
