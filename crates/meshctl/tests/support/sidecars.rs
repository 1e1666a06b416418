//! Two sidecars of the same workload against one real mesh-control: a
//! stock Envoy and a mesh-proxy, each in its own network namespace with
//! its admin API on 127.0.0.1:15000 there (as in the local mesh), linked to
//! the host by a veth pair so both reach mesh-control's ADS on the host.
//! A run directory with a `state.json` names them as local-mesh pods, so
//! `meshctl proxy-config POD` and `proxy-status POD` reach them the way
//! they reach `meshctl local up`'s pods.
//!
//! Needs root, `ip`, the Envoy of `e2e/test.sh` (or ENVOY_BIN), and the
//! mesh-control and mesh-proxy binaries next to meshctl (`cargo build
//! -p mesh-control -p mesh-proxy`, or `cargo test --workspace`). Every
//! namespace (and with it its veth), process and directory goes on drop.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mesh_test_support::envoy::AdsBootstrap;
use mesh_test_support::netns::{Namespace, require_program, require_root, run_bounded};
use mesh_test_support::process::Process;
use mesh_test_support::{free_port, wait_for};
use meshctl::local::{PodState, State};

/// The CLI under test.
pub const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

/// Limit for one meshctl run.
const LIMIT: Duration = Duration::from_secs(60);

/// Limit for the proxies to take their configuration.
const SYNC_LIMIT: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The workload both sidecars belong to, and the services they call.
pub fn config(extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: productpage, namespace: default}}
spec:
  clusterIP: 10.96.0.30
  selector: {{app: productpage}}
  ports: [{{name: http, port: 9080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1, namespace: default, labels: {{app: reviews, version: v1}}}}
spec: {{containers: [{{name: app, image: reviews}}]}}
status: {{podIP: 10.201.9.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v2, namespace: default, labels: {{app: reviews, version: v2}}}}
spec: {{containers: [{{name: app, image: reviews}}]}}
status: {{podIP: 10.201.9.2}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: DISABLE}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy:
    tls: {{mode: DISABLE}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {{prefix: /v2}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - route:
    - destination: {{host: reviews, subset: v1}}
{extra}"#
    )
}

/// One sidecar: its namespace (with the proxy process in it) and identity.
pub struct Sidecar {
    /// The pod name (`productpage-envoy`, `productpage-proxy`).
    pub pod: String,
    /// Its address (the namespace end of the veth).
    pub ip: Ipv4Addr,
    /// Node id.
    pub node_id: String,
    /// Where the proxy logs.
    pub log: PathBuf,
    ns: Namespace,
}

/// mesh-control, two sidecars and a run directory naming them.
pub struct Mesh {
    /// The Envoy sidecar.
    pub envoy: Sidecar,
    /// The mesh-proxy sidecar.
    pub proxy: Sidecar,
    /// mesh-control's monitoring address (host loopback).
    pub monitoring: SocketAddr,
    /// The config directory mesh-control watches.
    pub config_dir: tempfile::TempDir,
    /// The run directory with `state.json`.
    pub run_dir: tempfile::TempDir,
    // Dropped after the sidecars' namespaces (declaration order).
    _control: Process,
    scratch: tempfile::TempDir,
}

// === impl Mesh ===

impl Mesh {
    /// Starts everything on `config(extra)` and waits until both sidecars
    /// have ACKed every type.
    pub fn start(extra: &str) -> Self {
        require_root();
        require_program("ip", "iproute2");
        let dir = Path::new(MESHCTL).parent().unwrap();
        let binary = |name: &str| {
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "{name} is not built next to meshctl in {}: run `cargo build -p mesh-control -p mesh-proxy` (cargo test --workspace builds it)",
                dir.display()
            );
            path
        };
        let (control_bin, proxy_bin) = (binary("mesh-control"), binary("mesh-proxy"));
        let envoy_bin = mesh_test_support::envoy::envoy_binary();

        let scratch = tempfile::tempdir().unwrap();
        let (envoy_net, proxy_net) = (free_net(), free_net());
        let config_dir = tempfile::tempdir().unwrap();
        let pods = [
            ("productpage-envoy", address(envoy_net)),
            ("productpage-proxy", address(proxy_net)),
        ];
        write_config(config_dir.path(), &pods, extra);
        let envoy_ns = linked_namespace("pcenv", envoy_net);
        let proxy_ns = linked_namespace("pcprx", proxy_net);
        let xds = SocketAddr::from((gateway(envoy_net), free_port()));
        let monitoring = SocketAddr::from(([127, 0, 0, 1], free_port()));

        let control_log = scratch.path().join("mesh-control.log");
        let control = Process::spawn(
            Command::new(control_bin)
                .arg("--config-dir")
                .arg(config_dir.path())
                .args(["--xds-address", &xds.to_string()])
                .args(["--monitoring-address", &monitoring.to_string()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&control_log).unwrap()),
        );
        assert!(
            wait_for(Duration::from_secs(20), || {
                mesh_test_support::envoy::http_get(monitoring.port(), "/ready")
            })
            .is_some(),
            "mesh-control did not become ready:\n{}",
            std::fs::read_to_string(&control_log).unwrap_or_default()
        );

        let envoy = Sidecar::new(
            envoy_ns,
            "productpage-envoy",
            address(envoy_net),
            scratch.path(),
        );
        let bootstrap = scratch.path().join("envoy.yaml");
        std::fs::write(&bootstrap, envoy.bootstrap(xds)).unwrap();
        let mut cmd = envoy.ns.exec(&envoy_bin);
        cmd.arg("-c")
            .arg(&bootstrap)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "info",
            ])
            .args(["--base-id", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&envoy.log).unwrap());
        envoy.ns.spawn(cmd);

        let proxy = Sidecar::new(
            proxy_ns,
            "productpage-proxy",
            address(proxy_net),
            scratch.path(),
        );
        let mut cmd = proxy.ns.exec(&proxy_bin);
        cmd.arg("run")
            .args(["--xds-address", &xds.to_string()])
            .args(["--role", "sidecar", "--pod-name", &proxy.pod])
            .args(["--pod-namespace", "default"])
            .args(["--instance-ip", &proxy.ip.to_string()])
            .args(["--label", "app=productpage", "--label", "version=v1"])
            .args(["--admin-address", "127.0.0.1:15000"])
            .args(["--health-address", "127.0.0.1:15021"])
            .args(["--stats-address", "127.0.0.1:15090"])
            .args(["--drain-duration", "1s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&proxy.log).unwrap());
        proxy.ns.spawn(cmd);

        let run_dir = tempfile::tempdir().unwrap();
        State {
            config_dir: config_dir.path().to_path_buf(),
            monitoring: Some(monitoring),
            xds: Some(xds),
            pods: vec![envoy.pod_state("envoy"), proxy.pod_state("mesh-proxy")],
            ..Default::default()
        }
        .save(run_dir.path())
        .unwrap();

        let mesh = Self {
            envoy,
            proxy,
            monitoring,
            config_dir,
            run_dir,
            _control: control,
            scratch,
        };
        mesh.wait_synced(&[]);
        mesh
    }

    /// Replaces the configuration with `config(extra)` (mesh-control
    /// watches the directory).
    pub fn reconfigure(&self, extra: &str) {
        let pods = [
            (self.envoy.pod.as_str(), self.envoy.ip),
            (self.proxy.pod.as_str(), self.proxy.ip),
        ];
        write_config(self.config_dir.path(), &pods, extra);
    }

    /// `meshctl <args>` on this mesh's run directory; fails the test
    /// unless it succeeds. Its stdout.
    pub fn meshctl(&self, args: &[&str]) -> String {
        let output = self.meshctl_output(args);
        assert!(
            output.status.success(),
            "meshctl {} failed ({}):\n{}{}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `meshctl <args>` on this mesh's run directory, however it ends.
    pub fn meshctl_output(&self, args: &[&str]) -> Output {
        run_bounded(
            Command::new(MESHCTL)
                .args(args)
                .env("MESHCTL_LOCAL_DIR", self.run_dir.path()),
            LIMIT,
        )
    }

    /// `meshctl <args>` run inside `sidecar`'s network namespace (where
    /// `--admin 127.0.0.1:15000` reaches its proxy).
    pub fn meshctl_in(&self, sidecar: &Sidecar, args: &[&str]) -> String {
        let mut cmd = sidecar.ns.exec(MESHCTL);
        cmd.args(args);
        let output = run_bounded(&mut cmd, LIMIT);
        assert!(
            output.status.success(),
            "meshctl {} in {} failed: {}",
            args.join(" "),
            sidecar.pod,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Waits until both sidecars show CDS, LDS, EDS and RDS `SYNCED` and,
    /// when `must_have` names clusters, until both were sent them.
    pub fn wait_synced(&self, must_have: &[&str]) {
        let synced = wait_for(SYNC_LIMIT, || {
            let out = self.meshctl_output(&["proxy-status"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let rows: Vec<&str> = text.lines().skip(1).collect();
            let all_synced = [&self.envoy, &self.proxy].iter().all(|s| {
                rows.iter().any(|r| {
                    r.starts_with(&format!("{}.default ", s.pod))
                        && r.split_whitespace().skip(2).take(4).all(|c| c == "SYNCED")
                })
            });
            let has = must_have.iter().all(|cluster| {
                [&self.envoy, &self.proxy].iter().all(|s| {
                    let out = self.meshctl_output(&["proxy-config", "cluster", &s.pod]);
                    String::from_utf8_lossy(&out.stdout).contains(cluster)
                })
            });
            (all_synced && has).then_some(())
        });
        assert!(
            synced.is_some(),
            "the sidecars did not sync:\n{}\n{}",
            String::from_utf8_lossy(&self.meshctl_output(&["proxy-status"]).stdout),
            self.logs()
        );
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "--- mesh-control\n{}\n--- envoy\n{}\n--- mesh-proxy\n{}",
            tail(read(&self.scratch.path().join("mesh-control.log"))),
            tail(read(&self.envoy.log)),
            tail(read(&self.proxy.log)),
        )
    }

    /// A scratch directory that lives as long as the mesh.
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }
}

// === impl Sidecar ===

impl Sidecar {
    fn new(ns: Namespace, pod: &str, ip: Ipv4Addr, scratch: &Path) -> Self {
        Self {
            pod: pod.into(),
            ip,
            node_id: format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local"),
            log: scratch.join(format!("{pod}.log")),
            ns,
        }
    }

    fn pod_state(&self, program: &str) -> PodState {
        PodState {
            name: self.pod.clone(),
            namespace: "default".into(),
            ip: Some(self.ip),
            netns: self.ns.name().into(),
            proxy_program: program.into(),
            node_id: self.node_id.clone(),
            ..Default::default()
        }
    }

    /// An Envoy sidecar bootstrap as the local mesh writes it: Istio's node
    /// metadata, admin on loopback, everything else over ADS.
    fn bootstrap(&self, xds: SocketAddr) -> String {
        AdsBootstrap {
            node_id: self.node_id.clone(),
            cluster: "productpage.default".into(),
            metadata: [
                ("NAMESPACE", "default".to_string()),
                ("NAME", self.pod.to_string()),
                ("LABELS", "{app: productpage, version: v1}".into()),
                ("INSTANCE_IPS", format!("\"{}\"", self.ip)),
                ("CLUSTER_ID", "Kubernetes".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            admin_port: Some(15000),
            xds,
            extra: String::new(),
        }
        .yaml()
    }
}

/// `config(extra)` and the sidecars' own pods (their addresses make them
/// endpoints of `productpage`, which gives them inbound listeners).
fn write_config(dir: &Path, pods: &[(&str, Ipv4Addr)], extra: &str) {
    let mut yaml = config(extra);
    for (name, ip) in pods {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: productpage, version: v1}}}}\nspec: {{containers: [{{name: app, image: productpage}}]}}\nstatus: {{podIP: {ip}}}\n"
        ));
    }
    // Written whole and renamed, so the watcher never reads half a file.
    let tmp = dir.join(".mesh.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join("mesh.yaml")).unwrap();
}

/// A `10.213.<net>.0/24` no link on the host uses yet (the local mesh's
/// pods and other tests' sidecars live elsewhere or on other nets).
fn free_net() -> u32 {
    let start = std::process::id() % 250 + NEXT.fetch_add(1, Ordering::Relaxed) * 7;
    let used = run_bounded(
        Command::new("ip").args(["-o", "-4", "addr", "show"]),
        Duration::from_secs(10),
    );
    let used = String::from_utf8_lossy(&used.stdout).into_owned();
    (0..250)
        .map(|i| (start + i) % 250)
        .find(|net| !used.contains(&format!(" {}/", gateway(*net))))
        .expect("a free 10.213.x.0/24")
}

/// `10.213.<net>.1`: the host end of a sidecar's link.
fn gateway(net: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, net as u8, 1)
}

/// `10.213.<net>.2`: the sidecar's address.
fn address(net: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, net as u8, 2)
}

/// A namespace linked to the host by a veth pair on `10.213.<net>.0/24`,
/// the host end its default gateway. Deleting the namespace deletes the
/// pair.
fn linked_namespace(prefix: &str, net: u32) -> Namespace {
    let ns = Namespace::create(prefix);
    let host_end = format!("pc{}x{net}", std::process::id() % 100_000);
    let run = |args: &[&str]| {
        let out = run_bounded(Command::new("ip").args(args), Duration::from_secs(10));
        assert!(
            out.status.success(),
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "link",
        "add",
        &host_end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]);
    run(&[
        "addr",
        "add",
        &format!("{}/24", gateway(net)),
        "dev",
        &host_end,
    ]);
    run(&["link", "set", &host_end, "up"]);
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/24", address(net)),
        "dev",
        "eth0",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.add_default_route_via(&gateway(net).to_string());
    ns
}
