//! The `mesh-control` binary as a child process, and the bootstrap of a
//! stock Envoy gateway (role router, `istio: ingressgateway`) that takes its
//! whole configuration from it over ADS. Shared by the real-Envoy tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_test_support::envoy::http_get;
use mesh_test_support::{free_port, wait_for};

/// The control plane process, killed by PID on drop.
pub struct ControlPlane {
    child: Child,
    /// ADS port on 127.0.0.1.
    pub xds_port: u16,
    /// Monitoring port on 127.0.0.1.
    pub monitoring_port: u16,
}

impl ControlPlane {
    /// Starts the binary on `dir` and waits for `/ready`.
    pub fn start(dir: &Path) -> Self {
        let xds_port = free_port();
        let monitoring_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-control"))
            .arg("--config-dir")
            .arg(dir)
            .args(["--xds-address", &format!("127.0.0.1:{xds_port}")])
            .args([
                "--monitoring-address",
                &format!("127.0.0.1:{monitoring_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let cp = Self {
            child,
            xds_port,
            monitoring_port,
        };
        assert!(
            wait_for(Duration::from_secs(10), || http_get(
                cp.monitoring_port,
                "/ready"
            ))
            .is_some(),
            "mesh-control did not become ready"
        );
        cp
    }

    /// `/debug/syncz` as JSON.
    pub fn syncz(&self) -> serde_json::Value {
        http_get(self.monitoring_port, "/debug/syncz")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A router-role Envoy bootstrap (`istio: ingressgateway` in
/// `istio-system`) pointed at the ADS server on `xds_port`.
pub fn bootstrap(xds_port: u16) -> String {
    mesh_test_support::envoy::router_bootstrap("ingressgateway-0", "istio-system", xds_port)
}
