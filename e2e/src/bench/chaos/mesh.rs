//! The configuration `mesh-bench chaos` serves, and the release
//! `mesh-control` binary serving it from a config directory.
//!
//! One Service (`backend.chaos`, port 8080 named `http`, so both proxies
//! speak HTTP/1.1 upstream) with three Pods whose podIPs are the three
//! mesh-echo processes on 127.0.40.1-3; a DestinationRule with TLS off
//! (the endpoints have no sidecar) and outlier detection ([`Outlier`]); a
//! VirtualService routing every request for [`HOST`] to it with Istio's
//! default retry policy written out, bound to two Gateways, one per proxy
//! (the selectors of the proxy bench's subjects), each on its own
//! loopback port. The Pods never change: a killed process stays in the
//! endpoints, as it does in Kubernetes until the kubelet's probe notices,
//! so only the data plane's own reaction (retries, ejection) is measured.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench::proxy::load::HOST;
use crate::bench::proxy::mesh::{GATEWAY_NAMESPACE, gateways_yaml};
use crate::bench::proxy::subject::tail;
use crate::envoy::{admin_get, free_port};

/// Namespace of the Service and its Pods.
pub const NAMESPACE: &str = "chaos";
/// The Service's name.
pub const SERVICE: &str = "backend";
/// The Service's port (the endpoints listen on another one).
pub const SERVICE_PORT: u16 = 8080;
/// `retryOn` of the VirtualService: Istio's default policy
/// (`connect-failure,refused-stream,unavailable,cancelled,
/// retriable-status-codes` with 503 retriable) as a user writes it, the
/// status code in the list. Writing `retriable-status-codes` itself would
/// leave the list of codes empty, in Istio as in mesh-control.
pub const RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,503";
/// `attempts` of Istio's default retry policy.
pub const RETRY_ATTEMPTS: u32 = 2;

/// The DestinationRule's `outlierDetection`.
#[derive(Debug, Clone, Copy)]
pub struct Outlier {
    /// `consecutive5xxErrors`.
    pub consecutive_5xx: u32,
    /// `interval`.
    pub interval: Duration,
    /// `baseEjectionTime`.
    pub base_ejection: Duration,
    /// `maxEjectionPercent`.
    pub max_ejection_percent: u32,
}

/// The running `mesh-control`; killed by PID (and its directory removed)
/// when dropped.
pub struct ControlProcess {
    /// Plaintext ADS.
    pub xds: SocketAddr,
    /// `/ready`, `/debug/syncz`.
    pub monitoring: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// `--version`.
    pub version: String,
    child: Child,
    dir: PathBuf,
}

// === impl Outlier ===

impl Outlier {
    /// The YAML of the field, as the report quotes it.
    pub fn yaml(&self) -> String {
        format!(
            "outlierDetection: {{consecutive5xxErrors: {}, interval: {}, baseEjectionTime: {}, maxEjectionPercent: {}}}",
            self.consecutive_5xx,
            secs(self.interval),
            secs(self.base_ejection),
            self.max_ejection_percent
        )
    }
}

/// A duration as Istio's YAML writes it (`1s`, `1500ms`).
pub(crate) fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The configuration directory's content: the endpoints at `endpoints`
/// (all on `endpoint_port`), our proxy's gateway on 127.0.0.1:`ours_port`,
/// Envoy's on 127.0.0.1:`envoy_port`.
pub fn config_yaml(
    endpoints: &[IpAddr],
    endpoint_port: u16,
    ours_port: u16,
    envoy_port: u16,
    outlier: &Outlier,
) -> String {
    let ns = NAMESPACE;
    let mut yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {SERVICE}, namespace: {ns}}}
spec:
  clusterIP: 10.96.40.10
  selector: {{app: {SERVICE}}}
  ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {endpoint_port}}}]
"#
    );
    for (i, ip) in endpoints.iter().enumerate() {
        yaml.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata: {{name: {SERVICE}-{i}, namespace: {ns}, labels: {{app: {SERVICE}}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: {ip}}}
"#
        ));
    }
    let host = format!("{SERVICE}.{ns}.svc.cluster.local");
    let gw = GATEWAY_NAMESPACE;
    let gateways = gateways_yaml("chaos", ours_port, envoy_port);
    yaml.push_str(&format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {SERVICE}, namespace: {ns}}}
spec:
  host: {host}
  trafficPolicy:
    tls: {{mode: DISABLE}}
    {outlier}
---
{gateways}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: chaos, namespace: {ns}}}
spec:
  hosts: [{HOST}]
  gateways: [{gw}/chaos-envoy, {gw}/chaos-mesh-proxy]
  http:
  - route:
    - destination: {{host: {host}, port: {{number: {SERVICE_PORT}}}}}
    retries: {{attempts: {RETRY_ATTEMPTS}, retryOn: "{RETRY_ON}"}}
"#,
        outlier = outlier.yaml(),
    ));
    yaml
}

/// `mesh-control` next to this binary (`target/<profile>/`), or
/// `MESH_CONTROL_BIN`.
pub fn control_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("mesh-control", "MESH_CONTROL_BIN", "-p mesh-control")
}

/// `mesh-echo` next to this binary, or `MESH_ECHO_BIN`.
pub fn echo_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("mesh-echo", "MESH_ECHO_BIN", "-p e2e --bins")
}

fn sibling_binary(name: &str, var: &str, build: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("finding mesh-bench itself")?;
    let bin = exe.with_file_name(name);
    if !bin.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release {build}` (or set {var})",
            bin.display()
        );
    }
    Ok(bin)
}

// === impl ControlProcess ===

impl ControlProcess {
    /// Writes `yaml` into a fresh config directory and starts `binary` on
    /// it, ADS and monitoring on free loopback ports; returns once
    /// `/ready` answers (the directory is loaded).
    pub fn start(binary: &Path, yaml: &str, timeout: Duration) -> anyhow::Result<Self> {
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let monitoring = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let dir = std::env::temp_dir().join(format!(
            "mesh-bench-chaos-{}-{}",
            std::process::id(),
            xds.port()
        ));
        let config = dir.join("config");
        std::fs::create_dir_all(&config)
            .with_context(|| format!("creating {}", config.display()))?;
        std::fs::write(config.join("chaos.yaml"), yaml)?;
        let log = File::create(dir.join("mesh-control.log"))?;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let child = Command::new(binary)
            .arg("--config-dir")
            .arg(&config)
            .args(["--xds-address", &xds.to_string()])
            .args(["--monitoring-address", &monitoring.to_string()])
            .env_clear()
            .env("PATH", path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut control = Self {
            xds,
            monitoring,
            pid: child.id(),
            version: crate::bench::proxy::subject::version_line(binary, "--version"),
            child,
            dir,
        };
        let deadline = Instant::now() + timeout;
        while admin_get(monitoring.port(), "/ready").is_none() {
            if matches!(control.child.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
                bail!(
                    "mesh-control did not become ready; its log:\n{}",
                    control.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(control)
    }

    /// `Ok` when `node_id` ACKed the newest CDS, EDS, LDS and RDS it was
    /// sent and NACKed nothing (from `/debug/syncz`); else what is missing.
    pub fn synced(&self, node_id: &str) -> Result<(), String> {
        let body = admin_get(
            self.monitoring.port(),
            &format!("/debug/syncz?proxy={node_id}"),
        )
        .ok_or("no /debug/syncz answer")?;
        let syncz: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("/debug/syncz: {e}"))?;
        let proxy = syncz["proxies"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["proxy_id"] == node_id))
            .ok_or_else(|| format!("{node_id} is not connected"))?;
        let mut missing = Vec::new();
        for ty in ["CDS", "EDS", "LDS", "RDS"] {
            match proxy["status"][ty].as_str() {
                Some("SYNCED") => {}
                other => missing.push(format!("{ty} {}", other.unwrap_or("not requested"))),
            }
        }
        if let Some(types) = proxy["types"].as_object() {
            for (ty, s) in types {
                if s["nacks"].as_u64().unwrap_or(0) > 0 {
                    missing.push(format!("{ty} NACKed: {}", s["last_nack"]));
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }

    /// Waits (`timeout` at most) until [`ControlProcess::synced`].
    pub fn wait_synced(&self, node_id: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.synced(node_id) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => bail!("{node_id} is not in sync: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(self.dir.join("mesh-control.log")).unwrap_or_default(),
            40,
        )
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::proxy::mesh::ENVOY_SELECTOR;
    use envoy_types::pb::envoy::config::route::v3::route::Action;

    #[test]
    fn the_chaos_config_has_istio_default_retries_and_outlier_detection() {
        let ips: Vec<IpAddr> = (1..=3).map(|i| IpAddr::from([127, 0, 40, i])).collect();
        let outlier = Outlier {
            consecutive_5xx: 5,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 100,
        };
        let yaml = config_yaml(&ips, 18000, 18001, 18002, &outlier);
        let snap = crate::bench::proxy::mesh::snapshot(&yaml).unwrap();
        let proxy = mesh_control::proxy::ProxyInfo::router(
            "p",
            GATEWAY_NAMESPACE,
            IpAddr::from([127, 0, 0, 1]),
            &[("istio", ENVOY_SELECTOR)],
        );
        let out = mesh_control::xds::generate(&snap, &proxy);
        let cluster = out
            .clusters
            .iter()
            .find(|c| c.name == "outbound|8080||backend.chaos.svc.cluster.local")
            .expect("backend cluster");
        let od = cluster
            .outlier_detection
            .as_ref()
            .expect("outlier detection");
        assert_eq!(od.consecutive_5xx.as_ref().map(|v| v.value), Some(5));
        assert_eq!(od.max_ejection_percent.as_ref().map(|v| v.value), Some(100));
        let routes: Vec<_> = out
            .routes
            .iter()
            .flat_map(|r| &r.virtual_hosts)
            .flat_map(|vh| &vh.routes)
            .collect();
        let Some(Action::Route(action)) = routes.first().and_then(|r| r.action.as_ref()) else {
            panic!("no route: {routes:?}");
        };
        let retry = action.retry_policy.as_ref().expect("retry policy");
        // What Istio sends for a route without `retries`.
        assert_eq!(
            retry.retry_on,
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        );
        assert_eq!(retry.num_retries.as_ref().map(|v| v.value), Some(2));
        assert_eq!(retry.retriable_status_codes, vec![503]);
        assert_eq!(
            retry.retry_host_predicate[0].name,
            "envoy.retry_host_predicates.previous_hosts"
        );
        let eps: usize = out
            .endpoints
            .iter()
            .filter(|e| e.cluster_name.contains("backend.chaos"))
            .flat_map(|e| &e.endpoints)
            .map(|l| l.lb_endpoints.len())
            .sum();
        assert_eq!(eps, 3);
    }
}
