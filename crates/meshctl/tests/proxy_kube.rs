//! `meshctl proxy-config` and `proxy-status` against pods of a Kubernetes
//! cluster, through kube-rs's port-forward. The cluster is a fake API
//! server on loopback (`proxy_kube/api_server.rs`: recorded pods and a
//! deployment, and the `v4.channel.k8s.io` port-forward WebSocket) whose
//! port-forwards reach real processes: the two sidecars of
//! `support/sidecars.rs` (a stock Envoy and a mesh-proxy, admin on
//! 127.0.0.1:15000 inside their network namespaces) and the real
//! mesh-control they are connected to (its monitoring port, for the istiod
//! pod's 15014). meshctl finds the server through a kubeconfig the test
//! writes, so every byte it reads came over the WebSocket.
//!
//! Needs root, `ip`, Envoy (ENVOY_BIN or `e2e/test.sh`'s .venv) and the
//! mesh-control and mesh-proxy binaries built next to meshctl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

#[path = "support/sidecars.rs"]
mod sidecars;

#[path = "proxy_kube/api_server.rs"]
mod api_server;

use api_server::{ApiServer, Cluster, Relay};
use meshctl::local::State;
use sidecars::Mesh;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proxy_kube");
const ISTIOD: &str = "istiod-7c9d8f6b5-h4kzq";
const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn fixture(name: &str, key: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value[key].as_array().unwrap().clone()
}

/// A kubeconfig naming `server`, written into `dir`.
fn kubeconfig(dir: &Path, name: &str, server: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: \"{server}\"}}
users:
- name: developer
  user: {{}}
contexts:
- name: fake
  context: {{cluster: fake, user: developer, namespace: default}}
current-context: fake
"
        ),
    )
    .unwrap();
    path
}

/// The cells of a table's rows (layout aside).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

fn has_row(table: &str, cells: &[&str]) -> bool {
    rows(table).iter().any(|r| r == cells)
}

struct Fixture {
    mesh: Mesh,
    api: ApiServer,
    kubeconfig: String,
}

impl Fixture {
    fn start() -> Self {
        let mesh = Mesh::start("");
        let state = State::load(mesh.run_dir.path()).unwrap().unwrap();
        let admin: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let mut relays = HashMap::new();
        for sidecar in [&mesh.envoy, &mesh.proxy] {
            let netns = state.pod(&sidecar.pod).unwrap().netns.clone();
            relays.insert(
                ("default".to_string(), sidecar.pod.clone(), 15000),
                Relay::Netns(netns, admin),
            );
        }
        relays.insert(
            ("istio-system".to_string(), ISTIOD.to_string(), 15014),
            Relay::Addr(mesh.monitoring),
        );
        let api = ApiServer::start(Cluster {
            pods: fixture("pods.json", "pods"),
            deployments: fixture("deployments.json", "deployments"),
            relays,
            forbidden: vec![mesh.proxy.pod.clone()],
            ..Default::default()
        });
        let kubeconfig = kubeconfig(mesh.scratch(), "kubeconfig", &api.url)
            .display()
            .to_string();
        Self {
            mesh,
            api,
            kubeconfig,
        }
    }

    /// `meshctl ARGS --kubeconfig K`, which must succeed; its stdout.
    fn meshctl(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "meshctl {} failed ({}):\n{}{}\nAPI requests: {:#?}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.api.log(),
            self.mesh.logs()
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `meshctl ARGS --kubeconfig K`, which must fail; its stderr.
    fn error(&self, args: &[&str]) -> String {
        let output = self.output(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(
            output.status.code(),
            Some(1),
            "meshctl {} should fail:\n{}{stderr}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }

    fn output(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(["--kubeconfig", &self.kubeconfig]);
        // No local mesh to fall back on: the run state is elsewhere.
        let mut all_owned: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        all_owned.extend(["--run-dir".to_string(), "/nonexistent".to_string()]);
        let refs: Vec<&str> = all_owned.iter().map(String::as_str).collect();
        self.mesh.meshctl_output(&refs)
    }

    fn forwards(&self) -> Vec<String> {
        self.api
            .log()
            .into_iter()
            .filter(|l| l.contains("/portforward"))
            .collect()
    }
}

#[test]
fn proxy_config_and_status_reach_cluster_pods_through_port_forward() {
    let f = Fixture::start();
    let envoy = f.mesh.envoy.pod.as_str();

    // proxy-config cluster over the port-forward: the proxy's real clusters,
    // exactly what the local way (its network namespace) prints.
    let clusters = f.meshctl(&["proxy-config", "cluster", envoy]);
    for subset in ["-", "v1", "v2"] {
        assert!(
            has_row(
                &clusters,
                &[
                    REVIEWS,
                    "9080",
                    subset,
                    "outbound",
                    "EDS",
                    "reviews.default"
                ]
            ),
            "no reviews {subset} cluster in\n{clusters}"
        );
    }
    let local = f.mesh.meshctl(&["proxy-config", "cluster", envoy]);
    assert_eq!(clusters, local);
    assert!(
        f.forwards().iter().any(|l| l
            == &format!("GET /api/v1/namespaces/default/pods/{envoy}/portforward?ports=15000")),
        "{:#?}",
        f.api.log()
    );

    // Listeners and routes, by `pod.namespace` and by `-n`.
    let listeners = f.meshctl(&["proxy-config", "listener", &format!("{envoy}.default")]);
    assert!(
        has_row(&listeners, &["0.0.0.0", "9080", "ALL", "Route: 9080"]),
        "{listeners}"
    );
    assert_eq!(
        listeners,
        f.mesh.meshctl(&["proxy-config", "listener", envoy])
    );
    let routes = f.meshctl(&["proxy-config", "route", envoy, "-n", "default"]);
    let vhost = format!("{REVIEWS}:9080");
    let matches: Vec<String> = rows(&routes)
        .into_iter()
        .filter(|r| r.get(1) == Some(&vhost))
        .map(|r| r[3].clone())
        .collect();
    assert_eq!(matches, ["/v2*", "/*"], "{routes}");
    assert_eq!(routes, f.mesh.meshctl(&["proxy-config", "route", envoy]));

    // log levels are POSTs over the same kind of forward.
    let levels = f.meshctl(&["proxy-config", "log", envoy, "--level", "debug"]);
    assert!(levels.contains("debug"), "{levels}");
    f.meshctl(&["proxy-config", "log", envoy, "--level", "info"]);

    // deploy/NAME resolves to the first running pod of the selector.
    let by_deployment = f.meshctl(&["proxy-config", "cluster", "deploy/productpage"]);
    assert_eq!(by_deployment, clusters);
    assert!(
        f.api.log().iter().any(|l| l
            == "GET /api/v1/namespaces/default/pods?labelSelector=app%3Dproductpage%2Cversion%3Dv1"),
        "{:#?}",
        f.api.log()
    );

    // proxy-status: mesh-control's syncz over a forward to the istiod pod's
    // 15014; both sidecars connected to it are SYNCED.
    let table = f.meshctl(&["proxy-status"]);
    for sidecar in [&f.mesh.envoy, &f.mesh.proxy] {
        let name = format!("{}.default", sidecar.pod);
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"))
            .split_whitespace()
            .collect();
        assert_eq!(
            &row[1..8],
            [
                "Kubernetes",
                "SYNCED",
                "SYNCED",
                "SYNCED",
                "SYNCED",
                "IGNORED",
                ISTIOD
            ],
            "{table}"
        );
    }
    assert!(
        f.forwards().iter().any(|l| l
            == &format!(
                "GET /api/v1/namespaces/istio-system/pods/{ISTIOD}/portforward?ports=15014"
            )),
        "{:#?}",
        f.api.log()
    );
    // The Pending replica is not asked.
    assert!(
        !f.forwards()
            .iter()
            .any(|l| l.contains("istiod-7c9d8f6b5-w8d2m")),
        "{:#?}",
        f.api.log()
    );
    // The same rows as asking mesh-control directly.
    let direct = f.mesh.meshctl(&["proxy-status"]);
    let names = |t: &str| -> Vec<String> { rows(t).iter().map(|r| r[..7].join(" ")).collect() };
    assert_eq!(names(&table), names(&direct));

    // proxy-status POD: the diff of what mesh-control serves it and what
    // it runs, both over port-forwards.
    let report = f.meshctl(&["proxy-status", envoy]);
    assert_eq!(
        report, "Clusters Match\nListeners Match\nRoutes Match\n",
        "{report}"
    );

    // Errors name the object.
    let err = f.error(&["proxy-config", "cluster", "nope"]);
    assert!(
        err.contains("pod nope in namespace default: not found"),
        "{err}"
    );
    let err = f.error(&["proxy-config", "cluster", "ratings-v1-5d8c7b9f6-x2k4p"]);
    assert!(
        err.contains("pod ratings-v1-5d8c7b9f6-x2k4p in namespace default is Pending, not Running"),
        "{err}"
    );
    let err = f.error(&["proxy-config", "cluster", "deploy/reviews"]);
    assert!(
        err.contains("deployment reviews in namespace default: not found"),
        "{err}"
    );
    // RBAC: the mesh-proxy pod's forward is refused with 403.
    let err = f.error(&["proxy-config", "listener", &f.mesh.proxy.pod]);
    assert!(
        err.contains("create pods/portforward in namespace default"),
        "{err}"
    );
    // Nothing listens on 15000 in details-v1: the kubelet's error channel.
    let err = f.error(&["proxy-config", "cluster", "details-v1-7f4b9c8d5-q9m2z"]);
    assert!(
        err.contains(
            "port-forward to pod details-v1-7f4b9c8d5-q9m2z in namespace default port 15000"
        ) && err.contains("connection refused"),
        "{err}"
    );
    let err = f.error(&["proxy-status", "-i", "mesh-system"]);
    assert!(
        err.contains("no running control plane pod (label app=istiod) in namespace mesh-system"),
        "{err}"
    );
    let err = f.error(&["proxy-status", "details-v1-7f4b9c8d5-q9m2z"]);
    assert!(
        err.contains(&format!(
            "pod details-v1-7f4b9c8d5-q9m2z in namespace default is not connected to the control plane (no proxy details-v1-7f4b9c8d5-q9m2z.default in the /debug/syncz of {ISTIOD}.istio-system)"
        )),
        "{err}"
    );

    // An API server nobody serves.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dead = kubeconfig(f.mesh.scratch(), "dead", &url);
    let output = f.mesh.meshctl_output(&[
        "proxy-config",
        "cluster",
        envoy,
        "--kubeconfig",
        dead.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach the Kubernetes API server at {url}")),
        "{err}"
    );
}
