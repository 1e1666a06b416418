//! The sidecars of `mesh-bench security`, one per pod with a proxy, each
//! started inside its pod's namespace after `mesh-proxy iptables` set up
//! Istio's capture there, running as the proxy user (UID/GID 1337, whose
//! own connections the capture lets through), as `meshctl local` runs
//! them:
//!
//! - mesh-proxy: `mesh-proxy run --role sidecar`, its workload certificate
//!   fetched by itself from the mesh CA with the pod's token;
//! - Envoy: the stock binary with an Istio-style sidecar bootstrap (node
//!   metadata, ADS to the control plane, the `sds-grpc` cluster on a Unix
//!   socket), and beside it `mesh-proxy agent`, which fetches the
//!   certificate the same way and serves it over SDS (Istio's
//!   pilot-agent part).
//!
//! Each has one worker (`--concurrency 1`), log level warn, and its admin
//! API on 127.0.0.1:15000 of its pod. The pod's files (token, mesh root,
//! bootstrap, SDS socket) live in a directory only the proxy user reads.
//! Processes are killed by PID when dropped.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::mesh::{self, CA_PORT, CA_SERVER_NAME, HUB_IP, NAMESPACE, Pod, XDS_PORT};
use super::net::Netns;
use crate::bench::proxy::subject::{Kind, tail, version_line};
use crate::envoy::admin_get;

/// The proxy user (Istio's).
const PROXY_UID: u32 = 1337;
/// The admin port inside each pod.
const ADMIN_PORT: u16 = 15000;

/// The binaries the sidecars run.
pub struct Binaries {
    /// `mesh-proxy` (sidecar, agent, iptables).
    pub mesh_proxy: PathBuf,
    /// Stock Envoy, when its peer runs.
    pub envoy: Option<PathBuf>,
}

/// A running sidecar (and, for Envoy, its agent).
pub struct Sidecar {
    /// Whose.
    pub kind: Kind,
    /// Its pod.
    pub pod: &'static Pod,
    /// The proxy's PID.
    pub pid: u32,
    /// The agent's PID (Envoy).
    pub agent_pid: Option<u32>,
    /// `--version` of the proxy binary.
    pub version: String,
    /// Its node id at the control plane.
    pub node_id: String,
    /// When the proxy was started.
    pub started: Instant,
    children: Vec<Child>,
    dir: PathBuf,
}

// === impl Sidecar ===

impl Sidecar {
    /// Sets up capture in `pod`'s namespace and starts its sidecar; `token`
    /// proves the pod's service account to the CA, `root_pem` is the mesh
    /// root; the pod's files go under `run_dir`.
    pub fn start(
        bins: &Binaries,
        pod: &'static Pod,
        netns: &Netns,
        run_dir: &Path,
        token: &str,
        root_pem: &str,
    ) -> anyhow::Result<Self> {
        let out = netns
            .command(&bins.mesh_proxy)
            .arg("iptables")
            .stdin(Stdio::null())
            .output()
            .context("running mesh-proxy iptables")?;
        if !out.status.success() {
            bail!(
                "mesh-proxy iptables in {}: {}",
                pod.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let dir = run_dir.join(pod.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let token_file = dir.join("istio-token");
        let root_file = dir.join("root-cert.pem");
        std::fs::write(&token_file, token)?;
        std::fs::write(&root_file, root_pem)?;
        let identity: Vec<String> = [
            "--ca-address",
            &format!("https://{HUB_IP}:{CA_PORT}"),
            "--ca-server-name",
            CA_SERVER_NAME,
            "--ca-root-cert",
            &root_file.display().to_string(),
            "--token-file",
            &token_file.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        let sa = mesh::service_account(pod);
        let node_id = format!(
            "sidecar~{ip}~{name}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
            ip = pod.ip,
            name = pod.name
        );
        let log = |name: &str| File::create(dir.join(format!("{name}.log")));
        let mut children = Vec::new();
        let mut agent_pid = None;
        let (binary, args): (&Path, Vec<String>) = match pod.kind {
            Kind::Envoy => {
                let envoy = bins.envoy.as_deref().context("no Envoy binary")?;
                let socket = dir.join("sds.sock");
                let bootstrap = dir.join("bootstrap.yaml");
                std::fs::write(&bootstrap, envoy_bootstrap(pod, &socket))?;
                own(&dir)?;
                let mut agent = as_proxy_user(netns, &bins.mesh_proxy);
                agent
                    .arg("agent")
                    .arg("--sds-socket")
                    .arg(&socket)
                    .args(["--pod-namespace", NAMESPACE, "--service-account", sa])
                    .args(["--log-level", "warn"])
                    .args(&identity)
                    .stderr(log("agent")?);
                let child = agent.spawn().context("starting mesh-proxy agent")?;
                agent_pid = Some(child.id());
                children.push(child);
                let args = [
                    "-c",
                    &bootstrap.display().to_string(),
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "--log-level",
                    "warn",
                ]
                .map(String::from)
                .to_vec();
                (envoy, args)
            }
            _ => {
                own(&dir)?;
                let mut args: Vec<String> = [
                    "run",
                    "--role",
                    "sidecar",
                    "--xds-address",
                    &format!("http://{HUB_IP}:{XDS_PORT}"),
                    "--pod-name",
                    pod.name,
                    "--pod-namespace",
                    NAMESPACE,
                    "--instance-ip",
                    &pod.ip.to_string(),
                    "--service-account",
                    sa,
                    "--label",
                    &format!("app={}", pod.name),
                    "--label",
                    "security.istio.io/tlsMode=istio",
                    "--admin-address",
                    &format!("127.0.0.1:{ADMIN_PORT}"),
                    "--concurrency",
                    "1",
                    "--drain-duration",
                    "1s",
                    "--log-level",
                    "warn",
                ]
                .map(String::from)
                .to_vec();
                args.extend(identity);
                (bins.mesh_proxy.as_path(), args)
            }
        };
        let started = Instant::now();
        let mut proxy = as_proxy_user(netns, binary);
        proxy.args(&args).stderr(log("proxy")?);
        let child = proxy
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        children.push(child);
        let version_arg = if pod.kind == Kind::Envoy {
            "--version"
        } else {
            "version"
        };
        Ok(Self {
            kind: pod.kind,
            pod,
            pid,
            agent_pid,
            version: version_line(binary, version_arg),
            node_id,
            started,
            children,
            dir,
        })
    }

    /// The PIDs whose CPU time counts: the proxy and its agent.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.pid).chain(self.agent_pid).collect()
    }

    /// Waits until admin `/ready` answers 200 (configured, certificate
    /// in); the time since the proxy started.
    pub fn wait_ready(&mut self, netns: &Netns, timeout: Duration) -> anyhow::Result<Duration> {
        let waiting = Instant::now();
        while waiting.elapsed() < timeout {
            self.check_running()?;
            if netns.run_in(|| admin_get(ADMIN_PORT, "/ready"))?.is_some() {
                return Ok(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} in {} not ready within {timeout:?}; its log:\n{}",
            self.kind.name(),
            self.pod.name,
            self.log_tail()
        )
    }

    /// Fails (with the end of its logs) if a process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let exited = self
            .children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited {
            bail!(
                "a process of the {} sidecar in {} exited; its log:\n{}",
                self.kind.name(),
                self.pod.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of its logs.
    pub fn log_tail(&self) -> String {
        ["agent", "proxy"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(self.dir.join(format!("{name}.log"))).ok())
            .map(|log| tail(&log, 30))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` in `netns` as the proxy user, with only `PATH` passed
/// (Istio's or the caller's variables would change the node).
fn as_proxy_user(netns: &Netns, program: &Path) -> Command {
    let mut command = netns.command("setpriv");
    command
        .arg(format!("--reuid={PROXY_UID}"))
        .arg(format!("--regid={PROXY_UID}"))
        .args(["--clear-groups", "--"])
        .arg(program)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// Gives `dir` and its files to the proxy user, private to it.
fn own(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        std::os::unix::fs::chown(entry.path(), Some(PROXY_UID), Some(PROXY_UID))?;
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
    }
    std::os::unix::fs::chown(dir, Some(PROXY_UID), Some(PROXY_UID))
        .with_context(|| format!("chown {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// The bootstrap of `pod`'s Envoy sidecar, as Istio writes the parts
/// mesh-control reads: node id and metadata, ADS for everything, the
/// agent's SDS socket as `sds-grpc`.
fn envoy_bootstrap(pod: &Pod, sds_socket: &Path) -> String {
    let Pod { name, ip, .. } = *pod;
    let sa = mesh::service_account(pod);
    let h2 = "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}";
    let hub = HUB_IP;
    format!(
        r#"node:
  id: sidecar~{ip}~{name}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local
  cluster: {name}.{NAMESPACE}
  metadata:
    NAMESPACE: {NAMESPACE}
    NAME: {name}
    LABELS: {{app: {name}, "security.istio.io/tlsMode": istio}}
    SERVICE_ACCOUNT: {sa}
    INSTANCE_IPS: "{ip}"
    CLUSTER_ID: Kubernetes
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN_PORT}}}}}}}
dynamic_resources:
  ads_config: {{api_type: GRPC, transport_api_version: V3, set_node_on_first_message_only: true, grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - {{name: xds-grpc, type: STATIC, connect_timeout: 1s, {h2},
     load_assignment: {{cluster_name: xds-grpc, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {hub}, port_value: {XDS_PORT}}}}}}}}}]}}]}}}}
  - {{name: sds-grpc, type: STATIC, connect_timeout: 1s, {h2},
     load_assignment: {{cluster_name: sds-grpc, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: {socket}}}}}}}}}]}}]}}}}
"#,
        socket = sds_socket.display(),
    )
}
