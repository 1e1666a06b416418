//! Certificate authority of the mesh: SPIFFE X.509 SVID issuance and the
//! workload side that obtains and rotates them.
//!
//! - [`authority`]: root/intermediate material (generated or plugged in from
//!   Istio's `cacerts` layout) and signing.
//! - [`csr`]: CSR parsing and the policy of what a caller may ask for.
//! - [`bundle`]: the trust bundle (roots, two during a rotation).
//! - [`auth`]: who is calling: control-plane-issued tokens in local mode,
//!   Kubernetes ServiceAccount tokens (TokenReview) otherwise.
//! - [`service`]: Istio's `IstioCertificateService` over gRPC+TLS, server and
//!   client.
//! - [`client`]: the workload certificate client (key in memory, rotation at
//!   half life, rustls configs published through `tokio::sync::watch`).
//! - [`tls`]: rustls configs with a SPIFFE-aware peer verifier.
//! - [`sds`]: the agent's SDS server (`default`, `ROOTCA`) for a stock Envoy
//!   on a Unix socket.
//! - [`metrics`]: Prometheus counters of the CA.

pub mod auth;
pub mod authority;
pub mod bundle;
pub mod client;
pub mod csr;
pub mod error;
pub mod metrics;
pub mod sds;
pub mod service;
pub mod tls;

pub use authority::{Authority, AuthorityConfig, CaMaterial, IssuedCertificate};
pub use bundle::TrustBundle;
pub use error::{AuthorityError, SignError};

/// The rustls crypto provider every TLS config of the mesh is built with.
/// Only *ring* is compiled in; configs name it explicitly so a second
/// provider pulled in by some dependency can never make rustls panic.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
