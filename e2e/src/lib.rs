//! End-to-end support: the sample application `mesh-echo` (used by docs,
//! demos, the control-plane tests against a stock Envoy and the scenario
//! suite), the benchmarks behind `mesh-bench` and, as it lands, the
//! scenario harness.

pub mod bench;
#[allow(clippy::expect_used)]
pub mod certs;
pub mod echo;
pub mod envoy;
pub mod ext_authz;
#[allow(clippy::expect_used)]
pub mod jwt;
pub mod scenario;
