//! Envoy's xDS v3 protocol types, shared by the control plane, the proxy and
//! the CLI, plus their proto3 JSON form.
//!
//! The message types come from `envoy-types` (pre-generated, no protoc).
//! Build `Any` values with [`pack_any`] and name types with `T::type_url()`,
//! never with hand-written URLs.

pub mod istio_stats;
pub mod json;
pub mod metadata_exchange;

pub use envoy_types::pb;
pub use envoy_types::util::pack_any;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Name;

/// The xDS resource types the mesh serves, in the order Envoy must receive
/// them on a fresh stream (clusters before endpoints, listeners before routes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// SDS: `envoy.extensions.transport_sockets.tls.v3.Secret`.
    Secret,
}

impl ResourceType {
    /// Every type, in push order.
    pub const ALL: [ResourceType; 5] = [
        Self::Cluster,
        Self::Endpoint,
        Self::Listener,
        Self::Route,
        Self::Secret,
    ];

    /// The type URL Envoy uses in discovery requests.
    pub fn type_url(self) -> String {
        match self {
            Self::Cluster => Cluster::type_url(),
            Self::Endpoint => ClusterLoadAssignment::type_url(),
            Self::Listener => Listener::type_url(),
            Self::Route => RouteConfiguration::type_url(),
            Self::Secret => Secret::type_url(),
        }
    }

    /// The type for a type URL, if the mesh serves it.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name used in logs, metrics and debug pages (`CDS`, `EDS`, ...).
    pub const fn short_name(self) -> &'static str {
        match self {
            Self::Cluster => "CDS",
            Self::Endpoint => "EDS",
            Self::Listener => "LDS",
            Self::Route => "RDS",
            Self::Secret => "SDS",
        }
    }

    /// Whether a state-of-the-world response must carry every resource of
    /// the type (Envoy deletes the ones missing), as for CDS and LDS.
    pub const fn is_full_set(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }
}
