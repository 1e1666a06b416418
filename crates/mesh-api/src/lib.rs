//! The mesh's shared API: Istio's configuration kinds as Rust types, their
//! admission validation, CRD generation, YAML loading with precise error
//! locations, and the well-known values (ports, labels, SPIFFE ids) every
//! component agrees on.
//!
//! Every other crate depends on this one; it does no networking.

pub mod access_log_formats;
pub mod cel;
pub mod common;
pub mod crd;
pub mod kinds;
pub mod mesh_config;
pub mod mesh_networks;
pub mod networking;
pub mod object;
pub mod security;
pub mod spiffe;
pub mod status;
pub mod telemetry;
pub mod validation;
pub mod wellknown;
pub mod xds;

pub use common::{Duration, Percent, PortSelector, StringMatch, WorkloadSelector};
pub use kinds::IstioKind;
pub use object::{Loaded, MeshObject, load_path, load_str};
pub use spiffe::SpiffeId;
