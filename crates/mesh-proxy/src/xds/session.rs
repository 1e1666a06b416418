//! One ADS stream's client state and the order of its requests, shared by
//! state of the world ([`super::sotw`]) and delta ([`super::delta`]); each
//! protocol is a [`Wire`] that only builds its own messages.
//!
//! A response is applied to [`XdsState`] and answered exactly once (ACK,
//! or NACK with `error_detail` naming every refused resource).
//! Subscription changes it causes for other types go out as their own
//! requests: EDS and RDS names before the answer (as Envoy does), a newly
//! opened CDS or LDS after it. The node goes on the first request of the
//! stream only.

use std::collections::BTreeMap;
use std::future::Future;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status;
use mesh_api::xds::ResourceType;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

use super::state::{Subscription, Update, XdsState, nack_message};

/// gRPC code `INVALID_ARGUMENT`, what a NACK's `error_detail` carries.
pub const INVALID_ARGUMENT: i32 = 3;

/// The gRPC client of the aggregated discovery service.
pub type AdsClient = AggregatedDiscoveryServiceClient<Channel>;

/// One protocol's messages: how its stream opens, what a response carries
/// and how a subscription change and an answer are written.
pub trait Wire {
    /// What the client sends.
    type Request: Send + 'static;
    /// What the server sends.
    type Response;
    /// The protocol, as logs name it.
    const NAME: &'static str;

    /// Opens the stream, sending `requests` as they come.
    fn open(
        client: &mut AdsClient,
        requests: UnboundedReceiverStream<Self::Request>,
    ) -> impl Future<
        Output = Result<tonic::Response<tonic::Streaming<Self::Response>>, tonic::Status>,
    > + Send;

    /// The update a response carries, or `None` (logged) for a type the
    /// proxy does not use.
    fn update(&mut self, response: Self::Response) -> Option<Update>;

    /// The request that moves the subscription of `ty` from `had` (what
    /// the server was last asked on this stream) to `want`; they differ.
    fn subscribe(
        &self,
        state: &XdsState,
        ty: ResourceType,
        had: Option<&Subscription>,
        want: Option<&Subscription>,
        node: Option<Node>,
    ) -> Self::Request;

    /// The ACK, or with `error` the NACK, of the response of `ty` with
    /// `nonce`; `subscribed` is what the server was last asked for.
    fn answer(
        &self,
        state: &XdsState,
        ty: ResourceType,
        subscribed: Option<&Subscription>,
        nonce: String,
        error: Option<Status>,
        node: Option<Node>,
    ) -> Self::Request;
}

/// One stream's client state.
#[derive(Debug)]
pub struct Session<W> {
    /// Sent on the first request only.
    node: Option<Node>,
    /// What the server was last asked for, per type.
    sent: BTreeMap<ResourceType, Subscription>,
    /// The protocol and its own state.
    wire: W,
}

// === impl Session ===

impl<W: Wire> Session<W> {
    /// A new stream introducing itself as `node`.
    pub fn new(node: Node, wire: W) -> Self {
        Self {
            node: Some(node),
            sent: BTreeMap::new(),
            wire,
        }
    }

    /// The requests that open the stream: everything wanted now, with the
    /// versions held (so a reconnect after an outage resumes, not restarts).
    pub fn initial(&mut self, state: &mut XdsState) -> Vec<W::Request> {
        self.sync(state, |_| true)
    }

    /// Applies a response; returns the requests to send, in order.
    pub fn on_response(&mut self, state: &mut XdsState, response: W::Response) -> Vec<W::Request> {
        let Some(update) = self.wire.update(response) else {
            return Vec::new();
        };
        let (ty, nonce) = (update.ty, update.nonce.clone());
        let refused = state.apply(update);
        let mut requests = self.sync(state, |t| t != ty && !t.is_full_set());
        let error = (!refused.is_empty()).then(|| Status {
            code: INVALID_ARGUMENT,
            message: nack_message(refused.iter()),
            details: Vec::new(),
        });
        requests.push(self.wire.answer(
            state,
            ty,
            self.sent.get(&ty),
            nonce,
            error,
            self.node.take(),
        ));
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
    ) -> Vec<W::Request> {
        let mut requests = Vec::new();
        for ty in ResourceType::ALL.into_iter().filter(|t| filter(*t)) {
            let want = state.desired(ty);
            let had = self.sent.get(&ty);
            if want.as_ref() == had {
                continue;
            }
            let widened = want.as_ref().is_some_and(|w| w.widens(had));
            requests.push(
                self.wire
                    .subscribe(state, ty, had, want.as_ref(), self.node.take()),
            );
            state.requested(ty, want.as_ref(), widened);
            match want {
                Some(w) => self.sent.insert(ty, w),
                None => self.sent.remove(&ty),
            };
        }
        requests
    }
}
