//! The `mesh-proxy` binary as an operator runs it: from a static bootstrap
//! file, stopped by SIGTERM or `/quitquitquit`, refusing a broken file
//! with a message naming the file and the field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_xds;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mesh_test_support::free_addr;
use support_xds::*;

fn bootstrap(listener_port: u16) -> String {
    format!(
        r#"
node:
  id: router~127.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local
static_resources:
  listeners:
  - name: static_http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: static_http
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                direct_response: {{status: 200, body: {{inline_string: hello}}}}
"#
    )
}

/// A `mesh-proxy run` child process, killed on drop if still running.
struct ProxyProcess {
    child: Child,
    admin: SocketAddr,
    health: SocketAddr,
}

impl ProxyProcess {
    fn start(bootstrap: &Path) -> Self {
        Self::start_with(bootstrap, &[])
    }

    fn start_with(bootstrap: &Path, extra: &[&str]) -> Self {
        let (admin, health, stats) = (free_addr(), free_addr(), free_addr());
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
            .arg("run")
            .arg("--bootstrap")
            .arg(bootstrap)
            .args(extra)
            .args(["--admin-address", &admin.to_string()])
            .args(["--health-address", &health.to_string()])
            .args(["--stats-address", &stats.to_string()])
            .args(["--drain-duration", "2s"])
            .env("MESH_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            admin,
            health,
        }
    }

    async fn wait_live(&self) {
        let admin = self.admin;
        let live = eventually(Duration::from_secs(20), || async move {
            get(admin, "/ready").await.filter(|r| r.1 == "LIVE\n")
        })
        .await;
        assert!(live.is_some(), "the proxy never became LIVE");
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "mesh-proxy did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_from_a_static_bootstrap_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.yaml");
    std::fs::write(&file, bootstrap(free_addr().port())).unwrap();
    let mut proxy = ProxyProcess::start(&file);
    proxy.wait_live().await;
    assert_eq!(get(proxy.health, "/healthz/ready").await.unwrap().0, 200);

    let dump = config_dump(proxy.admin, "").await;
    let listeners = dump_section(&dump, "ListenersConfigDump");
    assert_eq!(
        listeners["static_listeners"][0]["listener"]["name"],
        "static_http"
    );
    let boot = dump_section(&dump, "BootstrapConfigDump");
    assert_eq!(
        boot["bootstrap"]["node"]["id"],
        "router~127.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local"
    );

    proxy.signal("-TERM");
    let status = proxy.wait_exit();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.yaml");
    std::fs::write(&file, bootstrap(free_addr().port())).unwrap();
    let mut proxy = ProxyProcess::start(&file);
    proxy.wait_live().await;
    let (status, _) = request("POST", proxy.admin, "/quitquitquit").await.unwrap();
    assert_eq!(status, 200);
    assert!(proxy.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_address_overrides_the_bootstrap_and_the_binary_follows_the_control_plane() {
    use mesh_api::xds::ResourceType;
    use support_xds::ads::TestAds;

    let ads = TestAds::default();
    ads.set(
        ResourceType::Cluster,
        "c1",
        named(vec![("reviews", eds_cluster("reviews"))]),
    );
    ads.set(
        ResourceType::Endpoint,
        "e1",
        named(vec![("reviews", assignment("reviews", "127.0.0.1", 9080))]),
    );
    ads.set(ResourceType::Listener, "l1", vec![]);
    let server = ads.start("127.0.0.1:0".parse().unwrap()).await;

    // The file points ADS at a cluster nothing listens on; the flag wins.
    let dead = free_addr().port();
    let text = format!(
        "{}\ndynamic_resources:\n  ads_config:\n    api_type: GRPC\n    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]\n  cds_config: {{ads: {{}}}}\n  lds_config: {{ads: {{}}}}\n",
        bootstrap(free_addr().port()).replace(
            "  listeners:",
            &format!(
                "  clusters:\n  - name: xds-grpc\n    type: STATIC\n    load_assignment:\n      cluster_name: xds-grpc\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {dead}}}}}}}}}]}}]\n  listeners:"
            ),
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.yaml");
    std::fs::write(&file, text).unwrap();
    let mut proxy = ProxyProcess::start_with(
        &file,
        &["--xds-address", &server.addr.to_string(), "--xds-delta"],
    );
    proxy.wait_live().await;
    let requests = ads.requests();
    assert!(requests[0].delta, "--xds-delta selects delta");
    assert_eq!(
        requests[0].node_id.as_deref(),
        Some("router~127.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local"),
        "the bootstrap's node is sent"
    );
    let dump = config_dump(proxy.admin, "").await;
    let clusters = dump_section(&dump, "ClustersConfigDump");
    assert_eq!(
        clusters["dynamic_active_clusters"][0]["cluster"]["name"],
        "reviews"
    );
    assert_eq!(
        clusters["static_clusters"][0]["cluster"]["name"],
        "xds-grpc"
    );

    proxy.signal("-TERM");
    assert!(proxy.wait_exit().success());
    server.kill().await;
}

#[test]
fn a_broken_bootstrap_exits_non_zero_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        bootstrap(8080).replace("port_value: 8080", "port_value: eighty"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .arg("--bootstrap")
        .arg(&file)
        .args(["--admin-address", &free_addr().to_string()])
        .args(["--health-address", &free_addr().to_string()])
        .args(["--stats-address", &free_addr().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("static_resources.listeners[0].address.socket_address.port_value"),
        "{stderr}"
    );
}

#[test]
fn version_prints_the_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("mesh-proxy {}\n", env!("CARGO_PKG_VERSION"))
    );
}
