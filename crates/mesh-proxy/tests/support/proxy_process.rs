//! The `mesh-proxy` binary as a child process: `run` with the flags an
//! injected pod, a gateway deployment or an operator with a bootstrap file
//! gives it, its log kept in a file for failure messages, killed by PID
//! when dropped (also when the test panics).
//!
//! The command that starts it is the caller's choice, so the same value
//! runs the proxy directly on loopback or inside a network namespace as
//! UID/GID 1337 (`ip netns exec NAME setpriv ... mesh-proxy run ...`; both
//! `ip` and `setpriv` exec, so the child's PID is the proxy's).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use http::Version;

use mesh_test_support::netns::Namespace;
use mesh_test_support::process::Process;
use mesh_test_support::{eventually, free_addr};

use super::clients::get_in;

/// The binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_mesh-proxy");

/// Bound on waiting for the proxy to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Flags of one `mesh-proxy run`.
#[derive(Clone, Debug)]
pub struct RunFlags {
    /// `--xds-address`.
    pub xds_address: Option<String>,
    /// `--xds-delta`.
    pub xds_delta: bool,
    /// `--bootstrap`.
    pub bootstrap: Option<PathBuf>,
    /// Who the proxy is; `None` leaves the node to the bootstrap file.
    pub pod: Option<Pod>,
    /// `--admin-address`.
    pub admin: SocketAddr,
    /// `--health-address`.
    pub health: SocketAddr,
    /// `--stats-address`.
    pub stats: SocketAddr,
    /// `--log-level`.
    pub log_level: &'static str,
    /// More arguments, appended.
    pub extra: Vec<String>,
    /// Environment variables besides `PATH` (e.g. what an injected pod
    /// spec sets).
    pub env: Vec<(String, String)>,
}

/// The identity flags of a proxy in a pod.
#[derive(Clone, Debug)]
pub struct Pod {
    /// `--role`.
    pub role: &'static str,
    /// `--pod-name`.
    pub name: String,
    /// `--pod-namespace`.
    pub namespace: String,
    /// `--instance-ip`.
    pub instance_ip: String,
    /// `--label k=v`.
    pub labels: Vec<(String, String)>,
}

/// A running `mesh-proxy run`.
pub struct ProxyProcess {
    process: Process,
    /// The flags it was started with.
    pub flags: RunFlags,
    log: tempfile::NamedTempFile,
}

// === impl RunFlags ===

impl RunFlags {
    /// A gateway (role router) in `istio-system` labelled
    /// `istio: ingressgateway`, its admin, health and Prometheus servers on
    /// free loopback ports.
    pub fn gateway(xds: SocketAddr) -> Self {
        Self {
            xds_address: Some(xds.to_string()),
            pod: Some(Pod {
                role: "router",
                name: "ingressgateway-0".into(),
                namespace: "istio-system".into(),
                instance_ip: "127.0.0.1".into(),
                labels: vec![("istio".into(), "ingressgateway".into())],
            }),
            ..Self::loopback()
        }
    }

    /// A sidecar of pod `pod` (namespace `default`) at `ip` with `labels`,
    /// on Istio's well-known ports (it runs in its own network namespace).
    pub fn sidecar(xds: SocketAddr, pod: &str, ip: &str, labels: &[(&str, &str)]) -> Self {
        Self {
            xds_address: Some(xds.to_string()),
            pod: Some(Pod {
                role: "sidecar",
                name: pod.into(),
                namespace: "default".into(),
                instance_ip: ip.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            admin: "127.0.0.1:15000".parse().unwrap(),
            health: "0.0.0.0:15021".parse().unwrap(),
            stats: "0.0.0.0:15090".parse().unwrap(),
            ..Self::loopback()
        }
    }

    /// A proxy configured by the bootstrap `file` alone (its node, static
    /// resources and control plane), servers on free loopback ports.
    pub fn bootstrap(file: &Path) -> Self {
        Self {
            bootstrap: Some(file.to_path_buf()),
            ..Self::loopback()
        }
    }

    /// Nothing to serve yet; admin, health and Prometheus servers on free
    /// loopback ports.
    fn loopback() -> Self {
        Self {
            xds_address: None,
            xds_delta: false,
            bootstrap: None,
            pod: None,
            admin: free_addr(),
            health: free_addr(),
            stats: free_addr(),
            log_level: "info",
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The node id the proxy introduces itself with (Istio's form).
    pub fn node_id(&self) -> String {
        let pod = self.pod.as_ref().expect("node_id needs the pod flags");
        let ns = &pod.namespace;
        format!(
            "{}~{}~{}.{ns}~{ns}.svc.cluster.local",
            pod.role, pod.instance_ip, pod.name
        )
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["run".to_string()];
        if let Some(x) = &self.xds_address {
            args.extend(["--xds-address".into(), x.clone()]);
        }
        if self.xds_delta {
            args.push("--xds-delta".into());
        }
        if let Some(b) = &self.bootstrap {
            args.extend(["--bootstrap".into(), b.display().to_string()]);
        }
        if let Some(pod) = &self.pod {
            args.extend([
                "--role".into(),
                pod.role.into(),
                "--pod-name".into(),
                pod.name.clone(),
                "--pod-namespace".into(),
                pod.namespace.clone(),
                "--instance-ip".into(),
                pod.instance_ip.clone(),
            ]);
            for (k, v) in &pod.labels {
                args.extend(["--label".into(), format!("{k}={v}")]);
            }
        }
        args.extend([
            "--admin-address".into(),
            self.admin.to_string(),
            "--health-address".into(),
            self.health.to_string(),
            "--stats-address".into(),
            self.stats.to_string(),
            "--drain-duration".into(),
            "1s".into(),
            "--log-level".into(),
            self.log_level.into(),
        ]);
        args.extend(self.extra.iter().cloned());
        args
    }
}

// === impl ProxyProcess ===

impl ProxyProcess {
    /// Starts the binary on loopback, as the test's own user.
    pub fn start(flags: RunFlags) -> Self {
        Self::spawn(Command::new(BINARY), flags)
    }

    /// Starts the binary inside `ns` as UID/GID 1337, as the sidecar runs
    /// in a pod, so the capture rules let its own connections through.
    pub fn start_in(ns: &Namespace, flags: RunFlags) -> Self {
        let mut command = ns.exec("setpriv");
        command.args(["--reuid=1337", "--regid=1337", "--clear-groups", BINARY]);
        Self::spawn(command, flags)
    }

    fn spawn(mut command: Command, flags: RunFlags) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        // Only PATH passes: POD_NAME, MESH_* or ISTIO_META_* of the test's
        // environment would change the node the control plane sees.
        let path = std::env::var_os("PATH").unwrap_or_default();
        command
            .args(flags.args())
            .env_clear()
            .env("PATH", path)
            .envs(flags.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log.reopen().unwrap()));
        let process = Process::spawn(&mut command);
        Self {
            process,
            flags,
            log,
        }
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Fails the test (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.process.exited() {
            panic!("mesh-proxy exited ({status}):\n{}", self.log());
        }
    }

    /// Waits (bounded by `timeout`) until a GET of `path` with host `host`
    /// at `addr` (from inside `ns` when given) answers 200; a test failure
    /// with the proxy's log otherwise.
    pub async fn wait_ok(
        &mut self,
        ns: Option<&Namespace>,
        addr: SocketAddr,
        host: &str,
        path: &str,
        timeout: Duration,
    ) {
        let ok = eventually(timeout, || async {
            get_in(ns, addr, Version::HTTP_11, host, path, &[])
                .await
                .ok()
                .filter(|r| r.status == 200)
        })
        .await;
        self.assert_running();
        assert!(
            ok.is_some(),
            "{host}{path} at {addr} never answered 200:\n{}",
            self.log()
        );
    }

    /// Waits (bounded) until the admin API answers `/ready` with 200
    /// (`LIVE`).
    pub async fn wait_live(&mut self) {
        let admin = self.flags.admin;
        self.wait_ok(None, admin, "localhost", "/ready", Duration::from_secs(20))
            .await;
    }

    /// Sends `signal` (a `kill` option such as `-TERM`).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Waits (bounded) for the exit status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        match self.process.wait_exit(EXIT_TIMEOUT) {
            Some(status) => status,
            None => panic!("mesh-proxy did not exit:\n{}", self.log()),
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- mesh-proxy log ---\n{}", self.log());
        }
    }
}
