//! OpenTelemetry access logs through a real `mesh-proxy` process: a
//! static bootstrap whose listener logs with Envoy's
//! `envoy.access_loggers.open_telemetry` (the config istiod writes for an
//! `envoyOtelAls` provider) to a collector cluster; the collector is a
//! tonic `LogsService` receiver in this test.
//!
//! What a user would notice: the receiver gets one record per request,
//! its body the rendered format, its attributes the labels, its resource
//! the log name; a collector that is down changes nothing for requests;
//! records still batched when the proxy stops are sent before it exits.
//! And end to end from Istio YAML: mesh-control turns a MeshConfig
//! `envoyOtelAls` provider named by a Telemetry into the logger, and a
//! mesh-proxy gateway and a stock Envoy gateway send the same record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_test_support::envoy::{AdsBootstrap, Envoy};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use support::control_plane::ControlPlane;
use support::proxy_process::{ProxyProcess, RunFlags};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const COLLECTOR: &str = "outbound|4317||otel-collector.observability.svc.cluster.local";

/// A log record as the receiver got it.
#[derive(Clone, Debug)]
struct Got {
    body: String,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
    time_unix_nano: u64,
}

/// The OTLP receiver: every record it was sent.
#[derive(Clone, Default)]
struct Receiver {
    records: Arc<Mutex<Vec<Got>>>,
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn map(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut records = self.records.lock().unwrap();
        for rl in request.into_inner().resource_logs {
            let resource = map(rl.resource.as_ref().map_or(&[][..], |r| &r.attributes));
            for r in rl.scope_logs.into_iter().flat_map(|s| s.log_records) {
                records.push(Got {
                    body: text(r.body.as_ref().and_then(|b| b.value.as_ref())),
                    attributes: map(&r.attributes),
                    resource: resource.clone(),
                    time_unix_nano: r.time_unix_nano,
                });
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

// === impl Receiver ===

impl Receiver {
    /// Serves on a loopback port; stops with the test's runtime.
    async fn start() -> (Self, SocketAddr) {
        Self::start_on("127.0.0.1:0").await
    }

    async fn start_on(addr: &str) -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Self::default();
        let service = LogsServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (receiver, addr)
    }

    /// The records whose body mentions `path`.
    fn of(&self, path: &str) -> Vec<Got> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.body.contains(path))
            .cloned()
            .collect()
    }

    /// Waits (bounded) for a record whose body mentions `path`.
    async fn wait_for(&self, path: &str) -> Got {
        let got = eventually(WAIT, || async { self.of(path).into_iter().next() }).await;
        got.unwrap_or_else(|| {
            panic!(
                "no record for {path}; got {:#?}",
                self.records.lock().unwrap()
            )
        })
    }
}

/// A proxy whose listener `listen` routes to `upstream` and logs every
/// request to the collector at `collector`, batching for `flush`.
fn bootstrap(
    listen: SocketAddr,
    upstream: SocketAddr,
    collector: SocketAddr,
    flush: &str,
) -> String {
    format!(
        r#"
node:
  id: router~127.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local
  cluster: gw.istio-system
  locality: {{zone: zone-a}}
static_resources:
  listeners:
  - name: gw
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gw
          access_log:
          - name: envoy.access_loggers.open_telemetry
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig
              common_config:
                log_name: otel_envoy_accesslog
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: {{cluster_name: "{COLLECTOR}"}}
              buffer_flush_interval: {flush}
              body: {{string_value: "%RESPONSE_CODE% %REQ(:PATH)% %UPSTREAM_CLUSTER%"}}
              attributes:
                values:
                - {{key: path, value: {{string_value: "%REQ(:PATH)%"}}}}
                - {{key: code, value: {{string_value: "%RESPONSE_CODE%"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: gw
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: reviews}}
  clusters:
  - name: reviews
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: reviews
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up_port}}}}}}}
  - name: "{COLLECTOR}"
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: otel
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {collector_port}}}}}}}
"#,
        listen_port = listen.port(),
        up_port = upstream.port(),
        collector_port = collector.port(),
    )
}

/// A running proxy in front of a mesh-echo backend.
struct Gateway {
    addr: SocketAddr,
    proxy: ProxyProcess,
    _backend: Backend,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(collector: SocketAddr, flush: &str) -> Self {
        let backend = echo("reviews", "v1").await;
        let addr = free_addr();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.yaml");
        std::fs::write(&file, bootstrap(addr, backend.addr, collector, flush)).unwrap();
        let mut proxy = ProxyProcess::start(RunFlags::bootstrap(&file));
        proxy
            .wait_ok(None, addr, "reviews", "/ready-check", WAIT)
            .await;
        Self {
            addr,
            proxy,
            _backend: backend,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str) -> u16 {
        send(&h1(), http::Method::GET, self.addr, "reviews", path, &[])
            .await
            .status
            .as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_reaches_the_collector_as_one_rendered_record() {
    let (receiver, collector) = Receiver::start().await;
    let gw = Gateway::start(collector, "0.1s").await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert_eq!(gw.get("/otel/one").await, 200);
    let got = receiver.wait_for("/otel/one").await;
    assert_eq!(got.body, "200 /otel/one reviews");
    assert_eq!(
        got.attributes.get("path").map(String::as_str),
        Some("/otel/one")
    );
    assert_eq!(got.attributes.get("code").map(String::as_str), Some("200"));
    assert_eq!(
        got.resource.get("log_name").map(String::as_str),
        Some("otel_envoy_accesslog"),
        "{got:?}"
    );
    assert_eq!(
        got.resource.get("zone_name").map(String::as_str),
        Some("zone-a")
    );
    assert_eq!(
        got.resource.get("cluster_name").map(String::as_str),
        Some("gw.istio-system")
    );
    assert!(got.resource.contains_key("node_name"), "{got:?}");
    assert!(
        got.time_unix_nano > 0 && got.time_unix_nano <= before + 60_000_000_000,
        "the request's start time: {got:?}"
    );
    // One record per request: a second request is a second record.
    assert_eq!(gw.get("/otel/two").await, 200);
    receiver.wait_for("/otel/two").await;
    assert_eq!(receiver.of("/otel/one").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_only_the_logs() {
    // Nothing listens there: every export fails at once.
    let nobody = free_addr();
    let mut gw = Gateway::start(nobody, "0.05s").await;
    for i in 0..20 {
        assert_eq!(gw.get(&format!("/down/{i}")).await, 200);
    }
    let warned = eventually(WAIT, || async {
        gw.proxy
            .log()
            .contains("OpenTelemetry access logs not exported")
            .then_some(())
    })
    .await;
    assert!(warned.is_some(), "no warning:\n{}", gw.proxy.log());
    assert_eq!(gw.get("/down/after").await, 200);
    gw.proxy.assert_running();
    let warnings = gw
        .proxy
        .log()
        .matches("OpenTelemetry access logs not exported")
        .count();
    assert!(warnings <= 3, "the warning is rate limited: {warnings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_still_batched_are_sent_when_the_proxy_stops() {
    let (receiver, collector) = Receiver::start().await;
    // A minute's batching: only the shutdown flush can send the record.
    let mut gw = Gateway::start(collector, "60s").await;
    assert_eq!(gw.get("/otel/last").await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.of("/otel/last").is_empty(),
        "batched, not sent yet"
    );
    let status = tokio::task::block_in_place(|| gw.proxy.terminate());
    assert!(status.success(), "{status:?}\n{}", gw.proxy.log());
    assert_eq!(receiver.of("/otel/last").len(), 1, "not flushed at exit");
}

/// The Istio YAML of the end-to-end test: MeshConfig's `otel` provider
/// (the receiver, Service `otel` in `observability`), a mesh-wide
/// Telemetry naming it, and two gateways (`gw1` on 127.0.32.1, `gw2` on
/// 127.0.32.2) routing to `reviews`.
fn istio_yaml(gw_ports: [u16; 2], backend: u16, receiver: u16) -> String {
    let [p1, p2] = gw_ports;
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: otel
      envoyOtelAls:
        service: observability/otel.observability.svc.cluster.local
        port: 4317
        logFormat:
          text: "%RESPONSE_CODE% %REQ(:PATH)% %UPSTREAM_CLUSTER%"
          labels: {{path: "%REQ(:PATH)%"}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  accessLogging:
  - providers: [{{name: otel}}]
---
apiVersion: v1
kind: Service
metadata: {{name: otel, namespace: observability}}
spec:
  clusterIP: 10.96.32.9
  selector: {{app: otel}}
  ports: [{{name: grpc-otlp, port: 4317, targetPort: {receiver}}}]
---
# The collector is outside the mesh: plaintext.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: otel, namespace: observability}}
spec:
  host: otel.observability.svc.cluster.local
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: otel-0, namespace: observability, labels: {{app: otel}}}}
spec: {{containers: [{{name: collector, image: otel}}]}}
status: {{podIP: 127.0.32.9}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  clusterIP: 10.96.32.10
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {backend}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1-0, namespace: default, labels: {{app: reviews}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: 127.0.32.10}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw1, namespace: istio-system}}
spec:
  selector: {{istio: gw1}}
  servers:
  - port: {{number: {p1}, name: http, protocol: HTTP}}
    bind: 127.0.32.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw2, namespace: istio-system}}
spec:
  selector: {{istio: gw2}}
  servers:
  - port: {{number: {p2}, name: http, protocol: HTTP}}
    bind: 127.0.32.2
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [gw1, gw2]
  http:
  - route:
    - destination: {{host: reviews.default.svc.cluster.local, port: {{number: 9080}}}}
"#
    )
}

/// Waits (bounded) until a GET through `addr` answers 200.
async fn wait_200(addr: SocketAddr) {
    let ok = eventually(WAIT, || async {
        try_send(
            &h1(),
            http::Method::GET,
            addr,
            "reviews",
            "/ready-check",
            &[],
        )
        .await
        .ok()
        .filter(|r| r.status == 200)
    })
    .await;
    assert!(ok.is_some(), "{addr} never answered 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_control_otel_provider_logs_from_mesh_proxy_and_stock_envoy_alike() {
    let (receiver, collector) = Receiver::start_on("127.0.32.9:0").await;
    let backend_port = free_port();
    let _backend = Backend::serve(
        bind(None, &format!("127.0.32.10:{backend_port}")),
        "reviews",
        "v1",
    );
    let ports = [free_port(), free_port()];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        istio_yaml(ports, backend_port, collector.port()),
    )
    .unwrap();
    let cp = ControlPlane::serve_loopback(dir.path());

    // gw1: mesh-proxy.
    let mut flags = RunFlags::gateway(cp.addr);
    let pod = flags.pod.as_mut().unwrap();
    pod.name = "gw1-0".into();
    pod.labels = vec![("istio".into(), "gw1".into())];
    let proxy = ProxyProcess::start(flags);
    cp.wait_synced(&proxy.flags.node_id(), WAIT).await;
    // gw2: stock Envoy, the same YAML.
    let envoy = Envoy::start(
        &AdsBootstrap::router("gw2-0", "gw2", "istio-system", &[("istio", "gw2")], cp.addr).yaml(),
    );
    assert!(
        tokio::task::block_in_place(|| envoy.wait_ready(WAIT)),
        "envoy not ready:\n{}",
        envoy.log()
    );
    let gw1 = SocketAddr::from(([127, 0, 32, 1], ports[0]));
    let gw2 = SocketAddr::from(([127, 0, 32, 2], ports[1]));
    wait_200(gw1).await;
    wait_200(gw2).await;

    for (addr, path) in [(gw1, "/mc/mesh-proxy"), (gw2, "/mc/envoy")] {
        let reply = send(&h1(), http::Method::GET, addr, "reviews", path, &[]).await;
        assert_eq!(reply.status, 200, "{path}");
        let got = receiver.wait_for(path).await;
        assert_eq!(
            got.body,
            format!("200 {path} outbound|9080||reviews.default.svc.cluster.local"),
            "{got:?}"
        );
        assert_eq!(got.attributes.get("path").map(String::as_str), Some(path));
        // istiod turns Envoy's built-in resource labels off; so does
        // mesh-control, and both proxies honour it.
        assert!(!got.resource.contains_key("log_name"), "{path}: {got:?}");
    }
    drop(proxy);
    drop(envoy);
}
