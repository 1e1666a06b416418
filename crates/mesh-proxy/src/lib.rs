//! The mesh's data plane: the proxy every pod (sidecar) and every gateway
//! runs.
//!
//! Data flows one way. xDS responses (or a static bootstrap file) fill
//! [`resources::Resources`], the last accepted version of every resource.
//! Each accepted change is compiled by [`runtime::compile`] into an
//! immutable [`runtime::Runtime`] (route tables, compiled regexes,
//! normalised weights, load-balancer state) which is published on a
//! `tokio::sync::watch` channel. Listeners read the current runtime when a
//! connection or request starts, so the request path never parses protobuf
//! and never takes a global lock, and in-flight requests finish on the
//! config they started with.

pub mod admin;
pub mod agent;
pub mod bootstrap;
pub mod cli;
pub mod drain;
pub mod iptables;
pub mod proxy;
pub mod resources;
pub mod runtime;
pub mod socket;
pub mod telemetry;
pub mod tls;
pub mod wait;
pub mod xds;
