//! The `mesh-proxy` binary as an operator runs it: from a static bootstrap
//! file, stopped by SIGTERM or `/quitquitquit`, refusing a broken file
//! with a message naming the file and the field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::proxy_process::{BINARY, ProxyProcess, RunFlags};
use support::*;

/// `text` (the bootstrap fixture, maybe extended) with its listener moved
/// to a free port, written to `bootstrap.yaml` in `dir`.
fn write_bootstrap(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("bootstrap.yaml");
    let text = text.replace("port_value: 18080", &format!("port_value: {}", free_port()));
    std::fs::write(&file, text).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_from_a_static_bootstrap_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_bootstrap(dir.path(), BOOTSTRAP);
    let mut proxy = ProxyProcess::start(RunFlags::bootstrap(&file));
    proxy.wait_live().await;
    assert_eq!(
        admin_get(proxy.flags.health, "/healthz/ready")
            .await
            .unwrap()
            .0,
        200
    );

    let dump = config_dump(proxy.flags.admin, "").await;
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

    let status = proxy.terminate();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_bootstrap(dir.path(), BOOTSTRAP);
    let mut proxy = ProxyProcess::start(RunFlags::bootstrap(&file));
    proxy.wait_live().await;
    let (status, _) = admin_request("POST", proxy.flags.admin, "/quitquitquit")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(proxy.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_address_overrides_the_bootstrap_and_the_binary_follows_the_control_plane() {
    use mesh_api::xds::ResourceType;
    use support::ads::TestAds;
    use support::protos::{assignment, eds_cluster, named};

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

    // The file points ADS at a cluster nothing listens on, over state of
    // the world; the flags win.
    let dead = free_port();
    let ads_config = BOOTSTRAP_ADS
        .replace("port_value: 15010", &format!("port_value: {dead}"))
        .replace("api_type: DELTA_GRPC", "api_type: GRPC");
    let dir = tempfile::tempdir().unwrap();
    let file = write_bootstrap(dir.path(), &format!("{BOOTSTRAP}{ads_config}"));
    let mut proxy = ProxyProcess::start(RunFlags {
        xds_address: Some(server.addr.to_string()),
        xds_delta: true,
        ..RunFlags::bootstrap(&file)
    });
    proxy.wait_live().await;
    let requests = ads.requests();
    assert!(requests[0].delta, "--xds-delta selects delta");
    assert_eq!(
        requests[0].node_id.as_deref(),
        Some("router~127.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local"),
        "the bootstrap's node is sent"
    );
    let dump = config_dump(proxy.flags.admin, "").await;
    let clusters = dump_section(&dump, "ClustersConfigDump");
    assert_eq!(
        clusters["dynamic_active_clusters"][0]["cluster"]["name"],
        "reviews"
    );
    let statics: Vec<&str> = clusters["static_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statics, ["backend", "xds-grpc"]);

    assert!(proxy.terminate().success());
    server.kill().await;
}

#[test]
fn a_broken_bootstrap_exits_non_zero_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        BOOTSTRAP.replace("port_value: 18080", "port_value: eighty"),
    )
    .unwrap();
    let out = Command::new(BINARY)
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
    let out = Command::new(BINARY).arg("version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("mesh-proxy {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// The status port an injected pod's probes are rewritten to: each
/// `/app-health/<container>/<kind>` runs the original probe from
/// `ISTIO_KUBE_APP_PROBERS` against the app on loopback, and answers 200
/// only when the app's answer (or connect) succeeds.
#[tokio::test]
async fn the_status_port_runs_the_apps_probes() {
    bounded(60, async {
        let app = echo("app", "v1").await;
        let db = tcp_backend("db", None).await;
        let closed = free_addr();
        let probers = serde_json::json!({
            "/app-health/app/readyz": {"httpGet": {"path": "/health", "port": app.addr.port(), "scheme": "HTTP"}, "timeoutSeconds": 2},
            "/app-health/app/livez": {"httpGet": {"path": "/health?status=500", "port": app.addr.port()}},
            "/app-health/db/livez": {"tcpSocket": {"port": db.port()}},
            "/app-health/gone/readyz": {"tcpSocket": {"port": closed.port()}},
        });
        let dir = tempfile::tempdir().unwrap();
        let status = free_addr();
        let mut flags = RunFlags::bootstrap(&write_bootstrap(dir.path(), BOOTSTRAP));
        flags.extra = vec!["--status-address".into(), status.to_string()];
        flags.env = vec![("ISTIO_KUBE_APP_PROBERS".into(), probers.to_string())];
        let mut proxy = ProxyProcess::start(flags);
        proxy.wait_live().await;
        for (path, code) in [
            ("/app-health/app/readyz", 200),
            ("/app-health/app/livez", 503),
            ("/app-health/db/livez", 200),
            ("/app-health/gone/readyz", 503),
            ("/app-health/other/readyz", 404),
            ("/healthz/ready", 200),
        ] {
            let (got, body) = admin_get(status, path).await.unwrap();
            assert_eq!(got, code, "{path}: {body}");
        }
        let hosts = app.seen("/health");
        let expected = format!("localhost:{}", app.addr.port());
        assert!(
            !hosts.is_empty() && hosts.iter().all(|h| *h == expected),
            "the probes reached the app with the kubelet's Host: {hosts:?}"
        );
    })
    .await;
}

/// Istio's merged metrics: the status port's `/stats/prometheus` carries
/// the proxy's metrics and the app's own (from `ISTIO_PROMETHEUS_ANNOTATIONS`)
/// in one Prometheus text answer, with one `# TYPE` line per family; when
/// the app stops answering, the proxy's part is still served and the
/// failure is counted.
#[tokio::test]
async fn the_status_port_merges_the_apps_metrics_with_the_proxys() {
    bounded(60, async {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_port = app.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut s, _)) = app.accept().await else {
                    return;
                };
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let body = "# HELP app_orders_total Orders taken.\n# TYPE app_orders_total counter\n\
                            app_orders_total{kind=\"book\"} 7\n\
                            # TYPE istio_agent_scrapes_total counter\nistio_agent_scrapes_total 0\n";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let status = free_addr();
        let mut flags = RunFlags::bootstrap(&write_bootstrap(dir.path(), BOOTSTRAP));
        flags.extra = vec!["--status-address".into(), status.to_string()];
        flags.env = vec![(
            "ISTIO_PROMETHEUS_ANNOTATIONS".into(),
            format!(r#"{{"scrape":"true","port":"{app_port}","path":"/metrics"}}"#),
        )];
        let mut proxy = ProxyProcess::start(flags);
        proxy.wait_live().await;
        let (code, text) = admin_get(status, "/stats/prometheus").await.unwrap();
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("app_orders_total{kind=\"book\"} 7\n"), "{text}");
        assert!(text.contains("\nenvoy_tcp_rbac_allowed 0\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let mut types = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(types.insert(line.split(' ').nth(2).unwrap()), "twice: {line}\n{text}");
        }
        assert!(
            text.contains("istio_agent_scrape_failures_total{type=\"application\"} 0\n"),
            "{text}"
        );

        server.abort();
        let _ = server.await;
        let (code, text) = admin_get(status, "/stats/prometheus").await.unwrap();
        assert_eq!(code, 200, "{text}");
        assert!(!text.contains("app_orders_total"), "{text}");
        assert!(text.contains("\nenvoy_tcp_rbac_allowed 0\n"), "{text}");
        assert!(
            text.contains("istio_agent_scrape_failures_total{type=\"application\"} 1\n"),
            "{text}"
        );
    })
    .await;
}

/// `mesh-proxy wait`, the post-start hook holding the app until the proxy
/// is ready: exit 0 once `/healthz/ready` answers 200, exit 1 with the
/// reason when it never does.
#[tokio::test]
async fn wait_returns_once_the_proxy_is_ready() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut proxy =
            ProxyProcess::start(RunFlags::bootstrap(&write_bootstrap(dir.path(), BOOTSTRAP)));
        let url = format!("http://{}/healthz/ready", proxy.flags.health);
        let waited = tokio::task::spawn_blocking(move || {
            Command::new(BINARY)
                .args([
                    "wait",
                    "--url",
                    &url,
                    "--timeout",
                    "20s",
                    "--period",
                    "100ms",
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            waited.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&waited.stderr),
            proxy.log()
        );
        proxy.assert_running();

        let nobody = format!("http://{}/healthz/ready", free_addr());
        let failed = tokio::task::spawn_blocking(move || {
            Command::new(BINARY)
                .args([
                    "wait",
                    "--url",
                    &nobody,
                    "--timeout",
                    "1s",
                    "--period",
                    "100ms",
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(failed.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(stderr.contains("was not ready within 1s"), "{stderr}");
    })
    .await;
}
