//! The control plane: reads Istio configuration and the service registry
//! (a config directory, or the Kubernetes API), builds immutable
//! snapshots, translates them per proxy into Envoy xDS resources, and
//! streams them over ADS.
//!
//! ```text
//! source (config dir | kube watchers) -> store (last good per object) -> debounce
//!   -> Snapshot (Arc, versioned) -> xds::generate(snapshot, proxy)
//!   -> ads (per-connection versions, nonces, ACK/NACK)
//! ```

pub mod ads;
pub mod cli;
pub mod inject;
pub mod jwks;
pub mod model;
pub mod proxy;
pub mod secure;
pub mod snapshot;
pub mod source;
pub mod xds;
