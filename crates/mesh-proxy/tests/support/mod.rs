//! What the integration tests share, by responsibility:
//!
//! - [`resources`]: Envoy resources written as proto3 JSON, compiled into
//!   the proxy's runtime (the data-path tests);
//! - [`protos`]: Envoy resources built as protobuf values, served over xDS
//!   by the test ADS server;
//! - [`ads`]: a small ADS server (state of the world and delta) that
//!   records every request and can be killed and restarted;
//! - [`control_plane`]: the real mesh-control (directory source and ADS
//!   server) in this process;
//! - [`data_plane`]: the proxy's data path (`proxy::run_with`) in this
//!   process over a compiled runtime;
//! - [`xds_proxy`]: the proxy's control side (xDS client, admin and health
//!   servers) in this process;
//! - [`proxy_process`]: the `mesh-proxy` binary as a child process;
//! - [`backends`]: mesh-echo and other upstreams, on loopback or inside a
//!   network namespace;
//! - [`resilience`]: one gateway on either data plane (mesh-proxy or
//!   stock Envoy) with its access log and counters, and an upstream the
//!   test turns bad;
//! - [`tls`]: TLS transport sockets and a client trusting a test CA;
//! - [`clients`]: hyper clients (pooled, or one connection dialled by the
//!   test), `curl`, and the admin API's JSON.
//!
//! Each test file says `mod support;` and `use support::*;` (the clients,
//! backends, in-process data plane and polling helpers), then imports the
//! other submodules it needs by name: [`resources`] and [`protos`] both
//! have an `eds_cluster`, for example, in their own form.

// Every test binary compiles this whole tree and each uses only part of
// it (the data-path tests never start a control plane, the xDS tests never
// start a backend), so what one binary leaves unused is not dead code.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod ads;
pub mod backends;
pub mod clients;
pub mod control_plane;
pub mod data_plane;
pub mod protos;
pub mod proxy_process;
pub mod resilience;
pub mod resources;
pub mod tls;
pub mod xds_proxy;

use std::time::Duration;

use tokio::sync::watch;

// What most tests use, under `support::`; a binary that uses none of one
// module's items would otherwise see its re-export as unused.
#[allow(unused_imports)]
pub use backends::*;
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use data_plane::*;
#[allow(unused_imports)]
pub use mesh_test_support::{binomial_bounds, eventually, free_addr, free_port};

/// A gateway's static bootstrap (tests/fixtures/bootstrap.yaml, which the
/// bootstrap parser's unit tests read too): the listener `static_http` on
/// 127.0.0.1:18080 routing to the STATIC cluster `backend`, whose only
/// endpoint (127.0.0.1:18081) is UNHEALTHY.
pub const BOOTSTRAP: &str = include_str!("../fixtures/bootstrap.yaml");

/// Appended to [`BOOTSTRAP`], a control plane: the ADS cluster `xds-grpc`
/// on 127.0.0.1:15010, delta ADS for clusters and listeners, and an admin
/// address (127.0.0.1:15000).
pub const BOOTSTRAP_ADS: &str = include_str!("../fixtures/bootstrap_ads.yaml");

/// Runs `f`, failing the test if it takes longer than `secs`.
pub async fn bounded<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test took too long")
}

/// Stops the tasks a helper spawned when dropped: each task is given
/// [`StopOnDrop::until`] as its shutdown future.
pub struct StopOnDrop {
    stop: watch::Sender<bool>,
}

// === impl StopOnDrop ===

impl Default for StopOnDrop {
    fn default() -> Self {
        Self {
            stop: watch::channel(false).0,
        }
    }
}

impl StopOnDrop {
    /// Resolves once this value is dropped.
    pub fn until(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stop.subscribe();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
