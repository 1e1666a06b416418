//! The local mesh's run state: what `meshctl local up` created (bridge,
//! namespaces, links, processes by PID), written to `<run dir>/state.json`
//! before each thing is created, so `meshctl local down` can remove all of
//! it, also after a crash half-way through `up`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::manifest::Role;

/// Environment variable that overrides the run directory.
pub const RUN_DIR_ENV: &str = "MESHCTL_LOCAL_DIR";

/// The run directory when none is given: `$MESHCTL_LOCAL_DIR`, else
/// `/run/meshctl-local` (a tmpfs, cleared on reboot like the namespaces).
pub fn default_run_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/meshctl-local"))
}

/// Everything one local mesh consists of.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The user's configuration directory.
    pub config_dir: PathBuf,
    /// The bridge every pod is attached to.
    pub bridge: String,
    /// The bridge's (host side) address, where mesh-control listens.
    pub gateway: Option<Ipv4Addr>,
    /// Prefix length of the pod subnet.
    pub prefix: u8,
    /// mesh-control's ADS address.
    pub xds: Option<SocketAddr>,
    /// mesh-control's monitoring address (`/debug/syncz`, `/metrics`).
    pub monitoring: Option<SocketAddr>,
    /// mesh-control's PID.
    pub control_pid: Option<u32>,
    /// Host iptables rules added (as `iptables` argument lists after `-D`/`-I`).
    pub host_rules: Vec<Vec<String>>,
    /// The pods.
    pub pods: Vec<PodState>,
    /// The ingress gateway Service's VIP, when the gateway runs.
    #[serde(default)]
    pub ingress_vip: Option<Ipv4Addr>,
}

/// One pod: a network namespace with the app and its sidecar (or only the
/// app, outside the mesh; or only the gateway's proxy).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// Sidecar, outside the mesh, or the gateway.
    #[serde(default)]
    pub role: Role,
    /// Namespace (Kubernetes namespace, not network namespace).
    pub namespace: String,
    /// The pod's address on the bridge.
    pub ip: Option<Ipv4Addr>,
    /// The network namespace (`ip netns` name; `/run/netns/<netns>`).
    pub netns: String,
    /// The host end of the pod's veth pair.
    pub host_veth: String,
    /// The application's PID.
    pub app_pid: Option<u32>,
    /// The sidecar's PID.
    pub proxy_pid: Option<u32>,
    /// The certificate agent's PID (`mesh-proxy agent`, beside an Envoy
    /// sidecar).
    #[serde(default)]
    pub agent_pid: Option<u32>,
    /// The sidecar's program (`mesh-proxy`, or `envoy` with `--data-plane envoy`).
    #[serde(default = "default_proxy_program")]
    pub proxy_program: String,
    /// The proxy's xDS node id (`sidecar~IP~POD.NS~NS.svc.cluster.local`,
    /// `router~...` for the gateway; empty without a proxy).
    pub node_id: String,
}

fn default_proxy_program() -> String {
    "mesh-proxy".into()
}

// === impl State ===

impl State {
    /// The state file in `run_dir`.
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("state.json")
    }

    /// Reads the state of the mesh in `run_dir`; `None` when nothing runs there.
    pub fn load(run_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::path(run_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Reads the state of the running mesh, or says that none runs.
    pub fn running(run_dir: &Path) -> anyhow::Result<Self> {
        Self::load(run_dir)?.with_context(|| {
            format!(
                "no local mesh is running (no {}); start one with `meshctl local up DIR`",
                Self::path(run_dir).display()
            )
        })
    }

    /// Writes the state (atomically: a temporary file renamed over it).
    pub fn save(&self, run_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let path = Self::path(run_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// The ingress gateway pod, when it runs.
    pub fn ingress(&self) -> Option<&PodState> {
        self.pods.iter().find(|p| p.role == Role::Gateway)
    }

    /// The pod named `name` (`name` or `name.namespace`).
    pub fn pod(&self, name: &str) -> anyhow::Result<&PodState> {
        let (pod, ns) = match name.split_once('.') {
            Some((pod, ns)) => (pod, Some(ns)),
            None => (name, None),
        };
        self.pods
            .iter()
            .find(|p| p.name == pod && ns.is_none_or(|ns| p.namespace == ns))
            .with_context(|| {
                let known: Vec<&str> = self.pods.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "no pod {name:?} in the local mesh (pods: {})",
                    known.join(", ")
                )
            })
    }
}
