//! End-to-end support: the sample application `mesh-echo` (used by docs,
//! demos, the control-plane tests against a stock Envoy and the scenario
//! suite) and, as they land, the scenario harness and benchmarks.

pub mod echo;
