//! The admin API and health endpoint as tools use them: Envoy's paths,
//! formats, status codes and methods, over a real HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use mesh_api::xds::ResourceType;
use mesh_proxy::admin::{LogControl, ShutdownRequest};
use mesh_proxy::bootstrap::StaticConfig;
use mesh_proxy::resources::Resources;
use mesh_proxy::xds::{Backoff, NodeConfig, XdsConfig};
use prometheus_client::metrics::counter::Counter;
use support::ads::TestAds;
use support::protos::*;
use support::xds_proxy::XdsProxy;
use support::*;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, reload};

const WAIT: Duration = Duration::from_secs(20);

async fn static_proxy() -> XdsProxy {
    let statics = StaticConfig::parse(BOOTSTRAP, "test.yaml", false).unwrap();
    XdsProxy::start(None, statics.resources).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_complete_config() {
    // A control plane that is not there yet.
    let addr = free_addr();
    let node = NodeConfig::default().build(None);
    let config = XdsConfig {
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        ..XdsConfig::new(addr.to_string(), node)
    };
    let proxy = XdsProxy::start(Some(config), Resources::default()).await;
    assert_eq!(
        admin_get(proxy.admin, "/ready").await.unwrap(),
        (503, "PRE_INITIALIZING\n".to_string())
    );
    assert_eq!(
        admin_get(proxy.health, "/healthz/ready").await.unwrap().0,
        503
    );

    let ads = TestAds::default();
    ads.set(
        ResourceType::Cluster,
        "1",
        named(vec![("a", eds_cluster("a"))]),
    );
    ads.set(
        ResourceType::Endpoint,
        "1",
        named(vec![("a", assignment("a", "127.0.0.1", 80))]),
    );
    ads.set(ResourceType::Listener, "1", vec![]);
    let _server = ads.start(addr).await;
    proxy.wait_ready().await;
    assert_eq!(
        admin_get(proxy.admin, "/ready").await.unwrap(),
        (200, "LIVE\n".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_has_envoys_shape_and_filters_by_resource() {
    let proxy = static_proxy().await;
    let dump = config_dump(proxy.admin, "").await;
    let types: Vec<&str> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec![
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        ]
    );
    let listeners = dump_section(&dump, "ListenersConfigDump");
    let listener = &listeners["static_listeners"][0]["listener"];
    assert_eq!(
        listener["@type"],
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    assert_eq!(listener["name"], "static_http");
    assert_eq!(
        listener["address"]["socket_address"]["port_value"], 18080,
        "field names as Envoy prints them"
    );
    assert!(listeners["static_listeners"][0]["last_updated"].is_string());
    let routes = dump_section(&dump, ".RoutesConfigDump");
    assert_eq!(
        routes["static_route_configs"][0]["route_config"]["name"], "local",
        "inline route configs are listed as static"
    );

    let with_eds = config_dump(proxy.admin, "?include_eds").await;
    let endpoints = dump_section(&with_eds, "EndpointsConfigDump");
    assert_eq!(
        endpoints["static_endpoint_configs"][0]["endpoint_config"]["cluster_name"],
        "backend"
    );

    let only = config_dump(proxy.admin, "?resource=static_clusters").await;
    let configs = only["configs"].as_array().unwrap();
    assert_eq!(configs.len(), 1);
    assert_eq!(
        configs[0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"
    );
    assert_eq!(configs[0]["cluster"]["name"], "backend");
    let (status, body) = admin_get(proxy.admin, "/config_dump?resource=nonsense")
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("nonsense"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_listeners_and_server_info_read_like_envoys() {
    let proxy = static_proxy().await;
    let (_, clusters) = admin_get(proxy.admin, "/clusters").await.unwrap();
    assert!(
        clusters.contains("backend::added_via_api::false\n"),
        "{clusters}"
    );
    assert!(
        clusters.contains("backend::127.0.0.1:18081::health_flags::/failed_eds_health\n"),
        "{clusters}"
    );
    let (_, json) = admin_get(proxy.admin, "/clusters?format=json")
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let host = &json["cluster_statuses"][0]["host_statuses"][0];
    assert_eq!(host["address"]["socket_address"]["port_value"], 18081);
    assert_eq!(host["health_status"]["eds_health_status"], "UNHEALTHY");

    assert_eq!(
        admin_get(proxy.admin, "/listeners").await.unwrap().1,
        "static_http::127.0.0.1:18080\n"
    );
    let (_, json) = admin_get(proxy.admin, "/listeners?format=json")
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["listener_statuses"][0]["name"], "static_http");

    let (status, info) = admin_get(proxy.admin, "/server_info").await.unwrap();
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["state"], "LIVE");
    assert!(info["version"].as_str().unwrap().starts_with("mesh-proxy/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_changes_the_live_filter_and_needs_post() {
    let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
    // Keeps the layer alive so the handle can reach it.
    let _subscriber = tracing_subscriber::registry().with(filter);
    let logging = LogControl::new("info", move |directives| {
        let f = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    let probe = logging.clone();
    let statics = StaticConfig::parse(BOOTSTRAP, "test.yaml", false).unwrap();
    let proxy = XdsProxy::start_with(None, statics.resources, logging).await;

    let (status, body) = admin_request("POST", proxy.admin, "/logging?level=debug")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("all: debug"), "{body}");
    let (status, _) = admin_request("POST", proxy.admin, "/logging?xds=trace")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(probe.directives(), "debug,mesh_proxy::xds=trace");

    let (status, _) = admin_get(proxy.admin, "/logging?level=off").await.unwrap();
    assert_eq!(status, 405, "changing levels needs POST, as in Envoy");
    let (status, body) = admin_request("POST", proxy.admin, "/logging?level=loud")
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("loud"), "{body}");
    assert_eq!(probe.directives(), "debug,mesh_proxy::xds=trace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_serve_the_registry_handed_in() {
    let proxy = static_proxy().await;
    let requests = Counter::<u64>::default();
    proxy
        .registry
        .write()
        .unwrap()
        .register("istio_requests", "Requests", requests.clone());
    requests.inc();
    let (status, body) = admin_get(proxy.admin, "/stats/prometheus").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("istio_requests_total 1"), "{body}");
    let (_, body) = admin_get(proxy.admin, "/stats?filter=istio").await.unwrap();
    assert_eq!(body, "istio_requests_total: 1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_asks_to_drain_and_exit_and_ready_says_draining() {
    let mut proxy = static_proxy().await;
    assert_eq!(
        admin_get(proxy.admin, "/quitquitquit").await.unwrap().0,
        405
    );
    assert_eq!(
        admin_request("POST", proxy.admin, "/quitquitquit")
            .await
            .unwrap(),
        (200, "OK\n".to_string())
    );
    let asked = tokio::time::timeout(WAIT, proxy.requests.recv())
        .await
        .unwrap();
    assert_eq!(asked, Some(ShutdownRequest::Quit));
    assert_eq!(
        admin_get(proxy.admin, "/ready").await.unwrap(),
        (503, "DRAINING\n".to_string())
    );
    assert_eq!(
        admin_get(proxy.health, "/healthz/ready").await.unwrap().0,
        503
    );

    let mut other = static_proxy().await;
    admin_request("POST", other.admin, "/drain_listeners")
        .await
        .unwrap();
    let asked = tokio::time::timeout(WAIT, other.requests.recv())
        .await
        .unwrap();
    assert_eq!(asked, Some(ShutdownRequest::DrainListeners));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_is_empty_without_tls() {
    let proxy = static_proxy().await;
    let (status, body) = admin_get(proxy.admin, "/certs").await.unwrap();
    assert_eq!(status, 200);
    let certs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(certs, serde_json::json!({"certificates": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_lists_the_bootstraps_certificates_as_envoy_does() {
    // A workload certificate (inline) and its root (a file), as static
    // bootstrap secrets.
    let mut params = rcgen::CertificateParams::new(vec!["gw.example.com".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/istio-system/sa/gw"
            .try_into()
            .unwrap(),
    ));
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    params.serial_number = Some(rcgen::SerialNumber::from(vec![0x1a, 0x2b, 0x3c]));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root-cert.pem");
    std::fs::write(&root, cert.pem()).unwrap();
    let secrets = format!(
        "  secrets:\n  - name: default\n    tls_certificate:\n      certificate_chain: {{inline_string: {}}}\n      private_key: {{inline_string: {}}}\n  - name: ROOTCA\n    validation_context:\n      trusted_ca: {{filename: {}}}\n",
        serde_json::to_string(&cert.pem()).unwrap(),
        serde_json::to_string(&key.serialize_pem()).unwrap(),
        root.display(),
    );
    let statics =
        StaticConfig::parse(&format!("{BOOTSTRAP}{secrets}"), "test.yaml", false).unwrap();
    let proxy = XdsProxy::start(None, statics.resources).await;
    let (status, body) = admin_get(proxy.admin, "/certs").await.unwrap();
    assert_eq!(status, 200);
    let certs: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entries = certs["certificates"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{body}");
    let chain = entries
        .iter()
        .find_map(|e| e["cert_chain"].as_array().filter(|c| !c.is_empty()))
        .expect("no cert_chain");
    let leaf = &chain[0];
    assert_eq!(leaf["path"], "<inline>");
    assert_eq!(leaf["serial_number"], "1a2b3c");
    assert_eq!(
        leaf["subject_alt_names"],
        serde_json::json!([{"dns": "gw.example.com"}, {"uri": "spiffe://cluster.local/ns/istio-system/sa/gw"}])
    );
    assert_eq!(leaf["valid_from"], "2025-01-01T00:00:00Z");
    assert_eq!(leaf["expiration_time"], "2099-01-01T00:00:00Z");
    let days: u64 = leaf["days_until_expiration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(days > 365, "{days}");
    let ca = entries
        .iter()
        .find_map(|e| e["ca_cert"].as_array().filter(|c| !c.is_empty()))
        .expect("no ca_cert");
    assert_eq!(ca[0]["path"], root.display().to_string());
    assert_eq!(ca[0]["serial_number"], "1a2b3c");
}
