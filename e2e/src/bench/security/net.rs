//! The network of `mesh-bench security`, made with `ip` (iproute2): a hub
//! namespace holding a bridge (the control plane's address is on it) and
//! one namespace per pod, joined to the bridge by a veth pair (`eth0`
//! inside), `lo` up, and a default route into a dummy device so a Service
//! VIP exists nowhere but in a sidecar's capture. Nothing is added to the
//! host's own namespace, and nothing leaves the machine.
//!
//! The bench works inside a namespace in three ways: a command run there
//! (`ip netns exec`, which execs, so the child's PID is the program's), a
//! closure on a thread that joined it ([`Netns::run_in`]; sockets it makes
//! stay in the namespace wherever they are used), and a tokio runtime
//! whose threads all joined it ([`Netns::runtime`]): every connection a
//! load generator on that runtime opens starts in that pod.
//!
//! Namespaces are deleted by name when dropped, and those of an earlier
//! run of the bench that died are deleted at the start of the next one.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// Prefix of every namespace the bench makes; then its PID.
const PREFIX: &str = "mbsec-";
/// Where `ip netns add` puts the namespace handles.
const NETNS_DIR: &str = "/run/netns";
/// The bridge, inside the hub namespace.
const BRIDGE: &str = "br0";

/// A named network namespace, deleted when dropped.
pub struct Netns {
    name: String,
}

/// The hub and the pods' namespaces.
pub struct Network {
    /// Where the bridge and the control plane's sockets are.
    pub hub: Netns,
    /// Pod name and its namespace.
    pub pods: Vec<(&'static str, Netns)>,
}

// === impl Netns ===

impl Netns {
    /// Creates `mbsec-<pid>-<suffix>` with `lo` up.
    pub fn create(suffix: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{}-{suffix}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, for `ip -n` and `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command running `program` in the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a new thread that joined the namespace. `f` must bound
    /// its own blocking calls.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let handle = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&handle, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("joining {}", self.name))?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread in {} panicked", self.name))?
        })
    }

    /// Writes `value` to the per-namespace sysctl `key` (`net.ipv4.x`).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run_in(|| std::fs::write(&path, value))?
            .with_context(|| format!("{}: setting {key} = {value}", self.name))
    }

    /// A tokio runtime with `threads` workers whose threads all joined the
    /// namespace before running anything (checked on a worker).
    pub fn runtime(&self, threads: usize, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
        let path = self.path();
        let handle =
            Arc::new(File::open(&path).with_context(|| format!("opening {}", path.display()))?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .on_thread_start(move || {
                // Checked below; a thread that failed stays in the host's
                // namespace, where no pod address is reachable.
                let _ = setns(&*handle, CloneFlags::CLONE_NEWNET);
            })
            .enable_all()
            .build()
            .context("starting a load runtime")?;
        let want = std::fs::metadata(&path)?.ino();
        let got =
            runtime
                .block_on(runtime.spawn(async {
                    std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino())
                }))
                .context("the namespace check panicked")??;
        if got != want {
            bail!("the threads of runtime {name} did not join {}", self.name);
        }
        Ok(runtime)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

// === impl Network ===

impl Network {
    /// The hub with its bridge at `hub_ip/prefix`, and one namespace per
    /// `(pod name, address)`, each joined to the bridge.
    pub fn create(
        hub_ip: Ipv4Addr,
        prefix: u8,
        pods: &[(&'static str, Ipv4Addr)],
    ) -> anyhow::Result<Self> {
        remove_stale();
        let hub = Netns::create("hub")?;
        hub.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        hub.ip(&["addr", "add", &format!("{hub_ip}/{prefix}"), "dev", BRIDGE])?;
        hub.ip(&["link", "set", BRIDGE, "up"])?;
        // Where br_netfilter is loaded, bridged frames would also pass the
        // hub's (empty) iptables and conntrack: not what a pod network does.
        if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            let _ = hub.sysctl("net.bridge.bridge-nf-call-iptables", "0");
        }
        let mut network = Self {
            hub,
            pods: Vec::new(),
        };
        for (index, &(name, addr)) in pods.iter().enumerate() {
            let ns = Netns::create(name)?;
            let host_end = format!("veth{index}");
            ip(&[
                "link",
                "add",
                &host_end,
                "netns",
                network.hub.name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            network
                .hub
                .ip(&["link", "set", &host_end, "master", BRIDGE, "up"])?;
            ns.ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            // Kernels without the dummy module (some containers) have
            // ifb, which drops what it is sent just as well.
            if ns.ip(&["link", "add", "dummy0", "type", "dummy"]).is_err() {
                ns.ip(&["link", "add", "dummy0", "type", "ifb"])?;
            }
            ns.ip(&["link", "set", "dummy0", "up"])?;
            ns.ip(&["route", "add", "default", "dev", "dummy0"])?;
            // Connection churn (the handshake phase) must not run out of
            // ports or wait on TIME_WAIT; the range stays clear of the
            // ports the pods listen on (8080, 150xx).
            ns.sysctl("net.ipv4.ip_local_port_range", "20000 65000")?;
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
            network.pods.push((name, ns));
        }
        Ok(network)
    }

    /// The namespace of pod `name`.
    pub fn pod(&self, name: &str) -> anyhow::Result<&Netns> {
        self.pods
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, ns)| ns)
            .with_context(|| format!("no namespace for pod {name}"))
    }
}

/// Deletes the namespaces of runs of this bench whose process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// `ip <args>`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Fails unless this runs as root with `ip`, `iptables` and `setpriv`.
pub fn require_tools() -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("mesh-bench security needs root (network namespaces, iptables): run it with sudo");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (program, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        let found = std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .any(|dir| dir.join(program).is_file());
        if !found {
            bail!("mesh-bench security needs `{program}`: install the Debian package {package}");
        }
    }
    Ok(())
}
