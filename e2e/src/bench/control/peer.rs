//! The stock Envoy peer of `mesh-bench control`: one real Envoy
//! (`--concurrency 1`, admin on 127.0.0.1) connected to the same ADS
//! server as the simulated proxies. It plays the ingress gateway (role
//! `router`) so it receives every cluster but only binds the loopback
//! address the generated Gateway names. Its progress is read from admin
//! `/ready` and `/stats`; the process is killed by PID on drop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::mesh::GATEWAY_NAMESPACE;
use crate::envoy::{EnvoyProcess, find_binary, router_bootstrap};

/// The Envoy binary: `ENVOY_BIN`, else the workspace's `.venv/` build.
pub fn envoy_binary(workspace: &Path) -> Option<PathBuf> {
    find_binary(workspace)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    crate::envoy::free_port().context("finding a free port")
}

/// The running peer.
pub struct Envoy {
    process: EnvoyProcess,
    /// When the process was started.
    pub started: Instant,
}

impl Envoy {
    /// Starts Envoy as the bench gateway against ADS on `xds_port`.
    pub fn start(binary: &Path, xds_port: u16) -> anyhow::Result<Self> {
        let bootstrap = router_bootstrap("bench-gateway-0", GATEWAY_NAMESPACE, xds_port);
        let process = EnvoyProcess::start(binary, &bootstrap, "warn")
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            started: process.started,
            process,
        })
    }

    /// Polls `/ready` until Envoy is LIVE (CDS, EDS, LDS, RDS applied);
    /// time since start, `None` on timeout or exit.
    pub fn wait_ready(&mut self, timeout: Duration) -> Option<Duration> {
        while self.started.elapsed() < timeout {
            if self.process.exited() {
                return None;
            }
            if self.process.admin("/ready").is_some() {
                return Some(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sum of the stats matching `regex` (admin `/stats?filter=`).
    pub fn stat_sum(&self, regex: &str) -> Option<u64> {
        let body = self
            .process
            .admin(&format!("/stats?filter={}", encode(regex)))?;
        Some(
            body.lines()
                .filter_map(|l| l.rsplit_once(": "))
                .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                .sum(),
        )
    }

    /// Polls `regex` until its sum passes `baseline`; time since `since`.
    pub fn wait_stat_above(
        &self,
        regex: &str,
        baseline: u64,
        since: Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        while since.elapsed() < timeout {
            if self.stat_sum(regex).is_some_and(|v| v > baseline) {
                return Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
