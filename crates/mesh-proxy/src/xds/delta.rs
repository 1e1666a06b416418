//! Incremental ADS (`DeltaAggregatedResources`), the client side.
//!
//! The first request of each type on a stream states the whole
//! subscription and, after a reconnect, `initial_resource_versions` (every
//! resource held, by name and version) so the server sends only what
//! changed while the proxy was away. Later requests carry only changes
//! (`resource_names_subscribe` / `_unsubscribe`). Responses carry changed
//! resources and `removed_resources`; each is ACKed or NACKed once by its
//! nonce, in [`super::session::Session`]'s order.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use mesh_api::xds::ResourceType;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::session::{AdsClient, Wire};
use super::state::{Item, Subscription, Update, XdsState};

/// The protocol (it keeps no state of its own on a stream).
#[derive(Debug, Default)]
pub struct Delta;

// === impl Delta ===

impl Wire for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    async fn open(
        client: &mut AdsClient,
        requests: UnboundedReceiverStream<DeltaDiscoveryRequest>,
    ) -> Result<tonic::Response<tonic::Streaming<DeltaDiscoveryResponse>>, tonic::Status> {
        client.delta_aggregated_resources(requests).await
    }

    fn update(&mut self, response: DeltaDiscoveryResponse) -> Option<Update> {
        let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "delta response for a type the proxy does not use; ignored");
            return None;
        };
        tracing::debug!(
            r#type = ty.short_name(),
            version = %response.system_version_info,
            nonce = %response.nonce,
            updated = response.resources.len(),
            removed = response.removed_resources.len(),
            "delta response"
        );
        Some(Update {
            ty,
            version: response.system_version_info,
            nonce: response.nonce,
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
        })
    }

    fn subscribe(
        &self,
        state: &XdsState,
        ty: ResourceType,
        had: Option<&Subscription>,
        want: Option<&Subscription>,
        node: Option<Node>,
    ) -> DeltaDiscoveryRequest {
        let request = match had {
            // First request of the type on this stream: the whole
            // subscription and what is already held (a wildcard is an
            // empty list, the legacy form every server understands).
            None => DeltaDiscoveryRequest {
                resource_names_subscribe: want.map(Subscription::names).unwrap_or_default(),
                initial_resource_versions: state.known_versions(ty),
                ..Default::default()
            },
            Some(h) => {
                let before = set_of(h);
                let after = want.map(set_of).unwrap_or_default();
                DeltaDiscoveryRequest {
                    resource_names_subscribe: after.difference(&before).cloned().collect(),
                    resource_names_unsubscribe: before.difference(&after).cloned().collect(),
                    ..Default::default()
                }
            }
        };
        DeltaDiscoveryRequest {
            node,
            type_url: ty.type_url(),
            ..request
        }
    }

    fn answer(
        &self,
        _state: &XdsState,
        ty: ResourceType,
        _subscribed: Option<&Subscription>,
        nonce: String,
        error: Option<Status>,
        node: Option<Node>,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node,
            type_url: ty.type_url(),
            response_nonce: nonce,
            error_detail: error,
            ..Default::default()
        }
    }
}

/// A subscription as names, `*` standing for every name.
fn set_of(sub: &Subscription) -> BTreeSet<String> {
    match sub {
        Subscription::Wildcard => ["*".to_string()].into(),
        Subscription::Names(n) => n.clone(),
    }
}
