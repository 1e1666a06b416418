//! The xDS client: one ADS stream to the control plane, state of the world
//! or delta, keeping [`crate::resources::Resources`] and publishing the
//! compiled runtime.
//!
//! ```text
//! client (connect, backoff) -> sotw | delta session (requests, nonces)
//!   -> state::XdsState::apply (decode, runtime::check, accept / refuse
//!      each resource, full-set removal, EDS/RDS subscriptions follow)
//!   -> publish::Publisher (runtime::compile, watch channels)
//!   -> ACK, or NACK naming every refused resource
//! ```
//!
//! The node is sent on the first request of every stream. CDS and LDS
//! are subscribed for every name, EDS for the EDS clusters held, RDS for
//! the route names the listeners' HTTP connection managers load.

use std::future::Future;

use envoy_types::pb::envoy::config::core::v3::Node;

mod client;
pub mod decode;
mod delta;
pub mod node;
pub mod publish;
mod session;
mod sotw;
pub mod state;

pub use client::Backoff;
pub use node::{NodeConfig, Role};
pub use publish::{ConfigWatch, Publisher, Rejection, TypeStatus, XdsStatus, channels};

/// State of the world or incremental xDS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// `StreamAggregatedResources` (Envoy's `GRPC`), the default.
    #[default]
    Sotw,
    /// `DeltaAggregatedResources` (Envoy's `DELTA_GRPC`).
    Delta,
}

/// Where and how to fetch config.
#[derive(Clone, Debug, PartialEq)]
pub struct XdsConfig {
    /// The ADS server: `host:port` or `http://host:port`.
    pub address: String,
    /// Who the proxy is.
    pub node: Node,
    /// SotW or delta.
    pub protocol: Protocol,
    /// Subscribe to every cluster (the bootstrap's `cds_config`).
    pub cds: bool,
    /// Subscribe to every listener (the bootstrap's `lds_config`).
    pub lds: bool,
    /// Delays between reconnections.
    pub backoff: Backoff,
    /// PEM roots the control plane's certificate must chain to, for an
    /// `https://` address (the mesh root, Istio's `root-cert.pem`).
    pub tls_roots_pem: Option<String>,
}

/// Why the client could not talk to the control plane. Every one of these
/// is retried; the last accepted config keeps serving meanwhile.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// `--xds-address` is not a usable URI.
    #[error(
        "xDS address {address:?}: {reason}; expected host:port, http://host:port or https://host:port"
    )]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP or HTTP/2 connection failed.
    #[error("cannot connect to the control plane: {0}")]
    Connect(String),
    /// The gRPC stream failed.
    #[error("ADS stream: {0}")]
    Stream(String),
}

// === impl XdsConfig ===

impl XdsConfig {
    /// A SotW config subscribing to clusters and listeners.
    pub fn new(address: impl Into<String>, node: Node) -> Self {
        Self {
            address: address.into(),
            node,
            protocol: Protocol::Sotw,
            cds: true,
            lds: true,
            backoff: Backoff::default(),
            tls_roots_pem: None,
        }
    }

    /// The address as a URI (plaintext `http://` when no scheme is given).
    pub fn uri(&self) -> String {
        if self.address.contains("://") {
            self.address.clone()
        } else {
            format!("http://{}", self.address)
        }
    }

    /// Checks the address before the client starts.
    pub fn validate(&self) -> Result<(), XdsError> {
        let uri: http::Uri =
            self.uri()
                .parse()
                .map_err(|e: http::uri::InvalidUri| XdsError::Address {
                    address: self.address.clone(),
                    reason: e.to_string(),
                })?;
        match uri.scheme_str() {
            Some("http") if uri.host().is_some() => Ok(()),
            Some("https") if uri.host().is_some() && self.tls_roots_pem.is_some() => Ok(()),
            Some("https") => Err(XdsError::Address {
                address: self.address.clone(),
                reason: "TLS to the control plane needs the mesh root (--ca-root-cert)".into(),
            }),
            _ => Err(XdsError::Address {
                address: self.address.clone(),
                reason: "no host".into(),
            }),
        }
    }
}

/// Runs the xDS client until `shutdown` resolves, publishing through
/// `publisher` (which already holds the bootstrap's static resources).
pub async fn run(config: XdsConfig, publisher: Publisher, shutdown: impl Future<Output = ()>) {
    let state = state::XdsState::new(publisher, config.cds, config.lds);
    client::run(config, state, shutdown).await;
}
