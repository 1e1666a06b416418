//! The `mesh-proxy` binary as a child process: `run` with the flags an
//! injected pod or a gateway deployment gives it, its log kept in a file
//! for failure messages, killed by PID when dropped (also when the test
//! panics).
//!
//! The command that starts it is the caller's choice, so the same value
//! runs the proxy directly on loopback or inside a network namespace as
//! UID/GID 1337 (`ip netns exec NAME setpriv ... mesh-proxy run ...`; both
//! `ip` and `setpriv` exec, so the child's PID is the proxy's).

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_test_support::netns::Namespace;

/// The binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_mesh-proxy");

/// Flags of one `mesh-proxy run`.
#[derive(Clone, Debug)]
pub struct RunFlags {
    /// `--xds-address`.
    pub xds_address: Option<String>,
    /// `--bootstrap`.
    pub bootstrap: Option<std::path::PathBuf>,
    /// `--role`.
    pub role: &'static str,
    /// `--pod-name`.
    pub pod_name: String,
    /// `--pod-namespace`.
    pub pod_namespace: String,
    /// `--instance-ip`.
    pub instance_ip: String,
    /// `--label k=v`.
    pub labels: Vec<(String, String)>,
    /// `--admin-address`.
    pub admin: SocketAddr,
    /// `--health-address`.
    pub health: SocketAddr,
    /// `--stats-address`.
    pub stats: SocketAddr,
    /// `--log-level`.
    pub log_level: &'static str,
}

/// A running `mesh-proxy run`.
pub struct ProxyProcess {
    child: Child,
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
        use mesh_test_support::free_addr;
        Self {
            xds_address: Some(xds.to_string()),
            bootstrap: None,
            role: "router",
            pod_name: "ingressgateway-0".into(),
            pod_namespace: "istio-system".into(),
            instance_ip: "127.0.0.1".into(),
            labels: vec![("istio".into(), "ingressgateway".into())],
            admin: free_addr(),
            health: free_addr(),
            stats: free_addr(),
            log_level: "info",
        }
    }

    /// A sidecar of pod `pod` (namespace `default`) at `ip` with `labels`,
    /// on Istio's well-known ports (it runs in its own network namespace).
    pub fn sidecar(xds: SocketAddr, pod: &str, ip: &str, labels: &[(&str, &str)]) -> Self {
        Self {
            xds_address: Some(xds.to_string()),
            bootstrap: None,
            role: "sidecar",
            pod_name: pod.into(),
            pod_namespace: "default".into(),
            instance_ip: ip.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            admin: "127.0.0.1:15000".parse().unwrap(),
            health: "0.0.0.0:15021".parse().unwrap(),
            stats: "0.0.0.0:15090".parse().unwrap(),
            log_level: "info",
        }
    }

    /// A proxy serving only the static bootstrap `file`.
    pub fn bootstrap(file: &std::path::Path) -> Self {
        let mut flags = Self::gateway(mesh_test_support::free_addr());
        flags.xds_address = None;
        flags.bootstrap = Some(file.to_path_buf());
        flags
    }

    /// The node id the proxy introduces itself with (Istio's form).
    pub fn node_id(&self) -> String {
        let ns = &self.pod_namespace;
        format!(
            "{}~{}~{}.{ns}~{ns}.svc.cluster.local",
            self.role, self.instance_ip, self.pod_name
        )
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["run".to_string()];
        if let Some(x) = &self.xds_address {
            args.extend(["--xds-address".into(), x.clone()]);
        }
        if let Some(b) = &self.bootstrap {
            args.extend(["--bootstrap".into(), b.display().to_string()]);
        }
        args.extend([
            "--role".into(),
            self.role.into(),
            "--pod-name".into(),
            self.pod_name.clone(),
            "--pod-namespace".into(),
            self.pod_namespace.clone(),
            "--instance-ip".into(),
            self.instance_ip.clone(),
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
        for (k, v) in &self.labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log.reopen().unwrap()));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Self { child, flags, log }
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log.path()) {
            let _ = std::io::Read::read_to_string(&mut f, &mut text);
        }
        text
    }

    /// Fails the test (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("mesh-proxy exited ({status}):\n{}", self.log());
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mesh-proxy did not exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- mesh-proxy log ---\n{}", self.log());
        }
    }
}
