//! Distributed tracing through three real `mesh-proxy` processes: a
//! gateway-like hop (outbound, spawning an upstream span), a sidecar's
//! outbound hop and a sidecar's inbound hop in front of a mesh-echo
//! backend, each configured by a static bootstrap with Envoy's
//! OpenTelemetry tracer. Spans go over OTLP/gRPC to a receiver in this
//! test: a tonic server implementing the collector's `TraceService`.
//!
//! Topology, all on loopback: client -> hop1 (OUTBOUND, spawn upstream
//! span) -> hop2 (OUTBOUND) -> hop3 (INBOUND) -> echo. Every hop's
//! collector cluster points at the receiver; hop1 is an edge proxy
//! (`use_remote_address`, as gateways are) and loopback an internal
//! address, so the client's `x-envoy-force-trace` is honoured there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_test_support::envoy::{AdsBootstrap, Envoy};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::control_plane::ControlPlane;
use support::proxy_process::{ProxyProcess, RunFlags};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
/// Batches leave the proxies this often (OTEL_BSP_SCHEDULE_DELAY, ms).
const BATCH_DELAY_MS: &str = "100";

/// A span as the receiver got it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    kind: i32,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// The OTLP receiver: every span it was sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| text(v.value.as_ref()))
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                spans.push(Got {
                    service: service.clone(),
                    name: s.name,
                    kind: s.kind,
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent_span_id: s.parent_span_id,
                    attributes: s
                        .attributes
                        .into_iter()
                        .map(|kv| (kv.key, text(kv.value.and_then(|v| v.value).as_ref())))
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

// === impl Receiver ===

impl Receiver {
    /// Serves on a loopback port; stops with the test's runtime.
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Self::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (receiver, addr)
    }

    /// The spans of trace `trace_id` (hex) so far.
    fn trace(&self, trace_id: &[u8]) -> Vec<Got> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `n` spans of one trace carrying `request_id` arrived.
    async fn wait_for(&self, request_id: &str, n: usize) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let trace = self
                .all()
                .into_iter()
                .find(|s| {
                    s.attributes.get("guid:x-request-id").map(String::as_str) == Some(request_id)
                })
                .map(|s| self.trace(&s.trace_id));
            if let Some(t) = trace.filter(|t| t.len() >= n) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {n} spans for request {request_id}; got {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One hop's bootstrap: listener `listen` (direction `direction`; when
/// `spawn`, an edge proxy like a gateway, spawning an upstream span),
/// routing to `upstream`,
/// tracing to `collector` at `sampling` percent.
fn bootstrap(
    name: &str,
    listen: SocketAddr,
    upstream: SocketAddr,
    collector: SocketAddr,
    direction: &str,
    spawn: bool,
    sampling: f64,
) -> String {
    format!(
        r#"
node:
  id: sidecar~127.0.0.1~{name}-0.default~default.svc.cluster.local
  locality: {{zone: zone-a}}
static_resources:
  listeners:
  - name: {name}
    traffic_direction: {direction}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          use_remote_address: {spawn}
          # The test follows each request by its own x-request-id.
          preserve_external_request_id: true
          internal_address_config:
            cidr_ranges: [{{address_prefix: 127.0.0.0, prefix_len: 8}}]
          tracing:
            random_sampling: {{value: {sampling}}}
            client_sampling: {{value: 100}}
            overall_sampling: {{value: 100}}
            spawn_upstream_span: {spawn}
            custom_tags:
            - {{tag: istio.canonical_service, literal: {{value: {name}}}}}
            - {{tag: tenant, request_header: {{name: x-tenant, default_value: none}}}}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: {name}.default
                grpc_service:
                  envoy_grpc: {{cluster_name: "outbound|4317||otel.observability.svc.cluster.local"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: {name}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: next}}
  clusters:
  - name: next
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: next
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up_port}}}}}}}
  - name: "outbound|4317||otel.observability.svc.cluster.local"
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

/// Three hops in front of a mesh-echo backend, and the receiver.
struct Chain {
    entry: SocketAddr,
    receiver: Receiver,
    _hops: Vec<ProxyProcess>,
    _backend: Backend,
    _dir: tempfile::TempDir,
}

impl Chain {
    async fn start(sampling: f64) -> Self {
        let (receiver, collector) = Receiver::start().await;
        let backend = echo("reviews", "v1").await;
        let addrs = [free_addr(), free_addr(), free_addr()];
        let dir = tempfile::tempdir().unwrap();
        let hops = [
            ("hop1", "OUTBOUND", true, addrs[1]),
            ("hop2", "OUTBOUND", false, addrs[2]),
            ("hop3", "INBOUND", false, backend.addr),
        ];
        let mut procs = Vec::new();
        // From the backend outwards, so each hop's readiness check goes
        // all the way through.
        for (i, (name, direction, spawn, upstream)) in hops.into_iter().enumerate().rev() {
            let file = dir.path().join(format!("{name}.yaml"));
            let text = bootstrap(
                name, addrs[i], upstream, collector, direction, spawn, sampling,
            );
            std::fs::write(&file, text).unwrap();
            let mut flags = RunFlags::bootstrap(&file);
            flags
                .env
                .push(("OTEL_BSP_SCHEDULE_DELAY".into(), BATCH_DELAY_MS.into()));
            let mut p = ProxyProcess::start(flags);
            p.wait_ok(None, addrs[i], "reviews", "/ready-check", WAIT)
                .await;
            procs.push(p);
        }
        Self {
            entry: addrs[0],
            receiver,
            _hops: procs,
            _backend: backend,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let reply = send(
            &h1(),
            http::Method::GET,
            self.entry,
            "reviews",
            path,
            headers,
        )
        .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply
    }
}

fn by_service<'a>(spans: &'a [Got], service: &str, kind: SpanKind) -> &'a Got {
    spans
        .iter()
        .find(|s| s.service == service && s.kind == kind as i32)
        .unwrap_or_else(|| panic!("no {kind:?} span of {service} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_hop_request_is_one_trace_with_parent_child_spans_across_proxies() {
    let chain = Chain::start(100.0).await;
    chain
        .get(
            "/trace-me",
            &[("x-request-id", "trace-me-1"), ("x-tenant", "acme")],
        )
        .await;
    // hop1: server + upstream client; hop2: client; hop3: server.
    let spans = chain.receiver.wait_for("trace-me-1", 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");

    let hop1 = by_service(&spans, "hop1.default", SpanKind::Server);
    let hop1_up = by_service(&spans, "hop1.default", SpanKind::Client);
    let hop2 = by_service(&spans, "hop2.default", SpanKind::Client);
    let hop3 = by_service(&spans, "hop3.default", SpanKind::Server);
    assert!(
        hop1.parent_span_id.is_empty(),
        "the first hop starts the trace"
    );
    assert_eq!(hop1_up.parent_span_id, hop1.span_id);
    assert_eq!(hop2.parent_span_id, hop1_up.span_id);
    assert_eq!(hop3.parent_span_id, hop2.span_id);
    assert_eq!(hop1.name, "egress reviews");
    assert_eq!(hop1_up.name, "router next egress");
    assert_eq!(hop3.name, "ingress");

    for s in &spans {
        let a = &s.attributes;
        assert_eq!(a["component"], "proxy");
        assert_eq!(a["http.method"], "GET");
        assert_eq!(a["http.url"], "http://reviews/trace-me");
        assert_eq!(a["http.status_code"], "200");
        assert_eq!(a["upstream_cluster"], "next");
        assert_eq!(a["response_flags"], "-");
        assert_eq!(a["zone"], "zone-a");
        assert_eq!(a["tenant"], "acme");
        assert_eq!(
            a["istio.canonical_service"],
            s.service.trim_end_matches(".default")
        );
        assert!(a["node_id"].starts_with("sidecar~127.0.0.1~hop"), "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_sampling_exports_nothing_and_force_trace_exports() {
    let chain = Chain::start(0.0).await;
    for i in 0..20 {
        chain
            .get("/quiet", &[("x-request-id", &format!("quiet-{i}"))])
            .await;
    }
    chain
        .get(
            "/forced",
            &[
                ("x-request-id", "forced-1"),
                ("x-envoy-force-trace", "true"),
            ],
        )
        .await;
    let spans = chain.receiver.wait_for("forced-1", 4).await;
    assert_eq!(
        spans.len(),
        4,
        "every hop keeps the forced decision: {spans:#?}"
    );
    // The forced trace came after the quiet ones, through the same
    // batches; none of those was exported.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet: Vec<_> = chain
        .receiver
        .all()
        .into_iter()
        .filter(|s| s.attributes["guid:x-request-id"].starts_with("quiet"))
        .collect();
    assert!(
        quiet.is_empty(),
        "unsampled requests were exported: {quiet:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_traceparent_is_continued_and_b3_is_passed_on() {
    let chain = Chain::start(0.0).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = chain
        .get(
            "/continued",
            &[
                ("x-request-id", "continued-1"),
                ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
                ("b3", &format!("{trace}-00f067aa0ba902b7-1")),
            ],
        )
        .await;
    let spans = chain.receiver.wait_for("continued-1", 4).await;
    let hop1 = by_service(&spans, "hop1.default", SpanKind::Server);
    assert_eq!(hex(&hop1.trace_id), trace);
    assert_eq!(hex(&hop1.parent_span_id), "00f067aa0ba902b7");
    // The backend saw the last hop's context in both formats.
    let hop3 = by_service(&spans, "hop3.default", SpanKind::Server);
    let echoed = String::from_utf8_lossy(&reply.body).to_ascii_lowercase();
    assert!(
        echoed.contains(&format!("00-{trace}-{}-01", hex(&hop3.span_id))),
        "traceparent of hop3 not seen by the backend: {echoed}"
    );
    assert!(
        echoed.contains(&format!("{trace}-{}-1-", hex(&hop3.span_id))),
        "b3 of hop3 not seen by the backend: {echoed}"
    );

    // A malformed traceparent is not continued: a new (unsampled at 0 %)
    // decision is made and a well-formed header replaces it.
    let reply = chain
        .get("/broken", &[("traceparent", "00-zz-00f067aa0ba902b7-01")])
        .await;
    let echoed = String::from_utf8_lossy(&reply.body).to_ascii_lowercase();
    assert!(!echoed.contains("00-zz-"), "{echoed}");
    assert!(echoed.contains("traceparent"), "{echoed}");
}

/// Spans still batched when the proxy is told to stop are exported
/// before it exits: the batch delay here is a minute, so the span can
/// only arrive by the flush on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_batched_are_flushed_when_the_proxy_stops() {
    let (receiver, collector) = Receiver::start().await;
    let backend = echo("reviews", "v1").await;
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hop.yaml");
    let text = bootstrap(
        "hop1",
        addr,
        backend.addr,
        collector,
        "OUTBOUND",
        false,
        0.0,
    );
    std::fs::write(&file, text).unwrap();
    let mut flags = RunFlags::bootstrap(&file);
    flags
        .env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "60000".into()));
    let mut proxy = ProxyProcess::start(flags);
    proxy
        .wait_ok(None, addr, "reviews", "/ready-check", WAIT)
        .await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let reply = send(
        &h1(),
        http::Method::GET,
        addr,
        "reviews",
        "/last",
        &[
            ("x-request-id", "flushed-at-exit"),
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    // Well inside the batch delay: nothing exported yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.all().is_empty(), "{:#?}", receiver.all());
    let status = tokio::task::block_in_place(|| proxy.terminate());
    assert!(status.success(), "{status:?}\n{}", proxy.log());
    let spans = receiver.trace(
        &(0..16)
            .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        spans.len(),
        1,
        "the span did not arrive before exit: {:#?}",
        receiver.all()
    );
    assert_eq!(
        spans[0]
            .attributes
            .get("guid:x-request-id")
            .map(String::as_str),
        Some("flushed-at-exit")
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The config directory of the mesh-control test: three gateways
/// chained by VirtualServices (hop1 -> Service hop2 -> hop2 -> Service
/// hop3 -> hop3 -> Service reviews), MeshConfig naming the OTLP collector
/// (Service otel in `observability`, the receiver) and a mesh-wide
/// Telemetry selecting it at `sampling` percent.
fn mesh_config_dir(
    ports: [u16; 3],
    backend: u16,
    receiver: u16,
    sampling: f64,
    networks: bool,
) -> String {
    let [p1, p2, p3] = ports;
    // MeshNetworks' fromCidr ranges are what istiod makes the gateways'
    // internal addresses: loopback here, where the client is.
    let networks = if networks {
        "  meshNetworks: |\n    networks:\n      local: {endpoints: [{fromCidr: 127.0.0.0/8}]}\n"
    } else {
        ""
    };
    let mut text = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {{service: observability/otel.observability.svc.cluster.local, port: 4317}}
{networks}---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: otel}}]
    randomSamplingPercentage: {sampling}
---
apiVersion: v1
kind: Service
metadata: {{name: otel, namespace: observability}}
spec:
  clusterIP: 10.96.31.9
  selector: {{app: otel}}
  ports: [{{name: grpc-otlp, port: 4317, targetPort: {receiver}}}]
---
# The collector is outside the mesh: plaintext (a stock Envoy would
# otherwise wait for the mesh certificates auto mTLS asks it for).
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
status: {{podIP: 127.0.31.9}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  clusterIP: 10.96.31.10
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {backend}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1-0, namespace: default, labels: {{app: reviews}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: 127.0.31.10}}
"#
    );
    let targets = ["hop2", "hop3", "reviews"];
    for (i, port) in [p1, p2, p3].into_iter().enumerate() {
        let n = i + 1;
        let next = targets[i];
        let next_port = if next == "reviews" { 9080 } else { 80 };
        text.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: hop{n}, namespace: istio-system}}
spec:
  selector: {{istio: hop{n}}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    bind: 127.0.31.{n}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hop{n}, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [hop{n}]
  http:
  - route:
    - destination: {{host: {next}.default.svc.cluster.local, port: {{number: {next_port}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {next}, namespace: default}}
spec:
  host: {next}.default.svc.cluster.local
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
"#
        ));
        if n > 1 {
            text.push_str(&format!(
                r#"---
apiVersion: v1
kind: Service
metadata: {{name: hop{n}, namespace: default}}
spec:
  clusterIP: 10.96.31.{n}
  selector: {{app: hop{n}-entry}}
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: hop{n}-entry, namespace: default, labels: {{app: hop{n}-entry}}}}
spec: {{containers: [{{name: app, image: mesh-proxy}}]}}
status: {{podIP: 127.0.31.{n}}}
"#
            ));
        }
    }
    text
}

/// The three gateways, the backend and the receiver, configured by
/// mesh-control from the directory above.
struct Mesh {
    entry: SocketAddr,
    receiver: Receiver,
    _gateways: Vec<ProxyProcess>,
    _envoys: Vec<Envoy>,
    _backend: Backend,
    _cp: ControlPlane,
    _dir: tempfile::TempDir,
}

/// How the mesh of the mesh-control tests is set up.
#[derive(Clone, Copy, Default)]
struct MeshOpts {
    /// Randomly sampled percentage of the mesh-wide Telemetry.
    sampling: f64,
    /// MeshNetworks with loopback as a network (internal addresses).
    networks: bool,
    /// Which of hop1..hop3 are stock Envoy (the others mesh-proxy).
    envoy: [bool; 3],
}

/// A stock Envoy gateway `hop{n}` over ADS from `xds`: the same node
/// identity and labels as the mesh-proxy gateways, its OpenTelemetry
/// batches flushed every 100 ms (Envoy's default is 5 s).
fn envoy_gateway_bootstrap(n: usize, xds: SocketAddr) -> String {
    let hop = format!("hop{n}");
    AdsBootstrap {
        extra: "layered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      tracing.opentelemetry.flush_interval_ms: 100\n      tracing.opentelemetry.min_flush_spans: 1\n".into(),
        ..AdsBootstrap::router(
            &format!("{hop}-0"),
            &hop,
            "istio-system",
            &[("istio", &hop), ("service.istio.io/canonical-name", &hop)],
            xds,
        )
        .metadata("NAME", &format!("{hop}-0"))
    }
    .yaml()
}

impl Mesh {
    async fn start(sampling: f64) -> Self {
        Self::start_with(MeshOpts {
            sampling,
            ..MeshOpts::default()
        })
        .await
    }

    async fn start_with(opts: MeshOpts) -> Self {
        let MeshOpts {
            sampling,
            networks,
            envoy,
        } = opts;
        let listener = tokio::net::TcpListener::bind("127.0.31.9:0").await.unwrap();
        let receiver_port = listener.local_addr().unwrap().port();
        let receiver = Receiver::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        let backend_port = free_port();
        let backend = Backend::serve(
            bind(None, &format!("127.0.31.10:{backend_port}")),
            "reviews",
            "v1",
        );
        let ports = [free_port(), free_port(), free_port()];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mesh.yaml"),
            mesh_config_dir(ports, backend_port, receiver_port, sampling, networks),
        )
        .unwrap();
        let cp = ControlPlane::serve_loopback(dir.path());
        let mut gateways = Vec::new();
        let mut envoys = Vec::new();
        for n in 1..=3 {
            if envoy[n - 1] {
                let e = Envoy::start(&envoy_gateway_bootstrap(n, cp.addr));
                let ready = tokio::task::block_in_place(|| e.wait_ready(WAIT));
                assert!(ready, "envoy hop{n} not ready:\n{}", e.log());
                cp.wait_synced(
                    &format!(
                        "router~127.0.0.1~hop{n}-0.istio-system~istio-system.svc.cluster.local"
                    ),
                    WAIT,
                )
                .await;
                envoys.push(e);
                continue;
            }
            let mut flags = RunFlags::gateway(cp.addr);
            let pod = flags.pod.as_mut().unwrap();
            pod.name = format!("hop{n}-0");
            pod.labels = vec![
                ("istio".into(), format!("hop{n}")),
                ("service.istio.io/canonical-name".into(), format!("hop{n}")),
            ];
            flags
                .env
                .push(("OTEL_BSP_SCHEDULE_DELAY".into(), BATCH_DELAY_MS.into()));
            let proxy = ProxyProcess::start(flags);
            cp.wait_synced(&proxy.flags.node_id(), WAIT).await;
            gateways.push(proxy);
        }
        let entry = SocketAddr::from(([127, 0, 31, 1], ports[0]));
        // Every hop's listener is up once a request goes all the way
        // through (listeners arrive after their clusters are warm).
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let reply = try_send(
                &h1(),
                http::Method::GET,
                entry,
                "reviews",
                "/ready-check",
                &[],
            )
            .await;
            if reply.as_ref().is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the chain never answered 200: {reply:?}\n{}",
                envoys.iter().map(Envoy::log).collect::<Vec<_>>().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The readiness requests may have been sampled: start clean.
        tokio::time::sleep(Duration::from_millis(500)).await;
        receiver.spans.lock().unwrap().clear();
        Self {
            entry,
            receiver,
            _envoys: envoys,
            _gateways: gateways,
            _backend: backend,
            _cp: cp,
            _dir: dir,
        }
    }
}

impl Mesh {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let reply = send(
            &h1(),
            http::Method::GET,
            self.entry,
            "reviews",
            path,
            headers,
        )
        .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply
    }

    /// The spans of the trace the backend saw in `reply`, once `n` have
    /// arrived or the wait is over.
    async fn trace_of(&self, reply: &Reply, n: usize) -> Vec<Got> {
        // An edge gateway replaces x-request-id, so follow the trace the
        // backend saw.
        let traceparent = echoed_header(reply, "traceparent");
        let trace_hex = &traceparent[3..35];
        let trace: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&trace_hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let spans = self.receiver.trace(&trace);
            if spans.len() >= n || tokio::time::Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Each gateway: its connection manager's span and the router's upstream
/// span (spawn_upstream_span, as istiod sets for gateways), each
/// continuing the one before, with Istio's tags.
fn assert_chain(spans: &[Got]) {
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let mut parent: Vec<u8> = Vec::new();
    for n in 1..=3 {
        let service = format!("hop{n}.istio-system");
        let server = by_service(spans, &service, SpanKind::Server);
        let client = by_service(spans, &service, SpanKind::Client);
        assert_eq!(
            server.parent_span_id, parent,
            "hop{n}'s span continues the caller's: {spans:#?}"
        );
        assert_eq!(client.parent_span_id, server.span_id, "{spans:#?}");
        for s in [server, client] {
            let a = &s.attributes;
            assert_eq!(a["istio.canonical_service"], format!("hop{n}"), "{a:?}");
            assert_eq!(a["istio.namespace"], "istio-system", "{a:?}");
            assert_eq!(a["istio.canonical_revision"], "latest", "{a:?}");
            assert_eq!(a["istio.mesh_id"], "cluster.local", "{a:?}");
            assert_eq!(a["http.status_code"], "200", "{a:?}");
        }
        assert_eq!(server.attributes["http.method"], "GET");
        parent = client.span_id.clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_control_telemetry_traces_three_gateways_as_one_trace() {
    let mesh = Mesh::start(100.0).await;
    let reply = mesh.get("/traced", &[("x-request-id", "mc-1")]).await;
    assert_chain(&mesh.trace_of(&reply, 6).await);
}

/// The same Istio YAML through mesh-control with stock Envoy as the
/// middle gateway: mesh-proxy -> Envoy -> mesh-proxy, one trace, and
/// Envoy's spans carry the same links and tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_control_traces_a_chain_mixing_mesh_proxy_and_envoy() {
    let mesh = Mesh::start_with(MeshOpts {
        sampling: 100.0,
        envoy: [false, true, false],
        ..MeshOpts::default()
    })
    .await;
    let reply = mesh.get("/mixed", &[]).await;
    assert_chain(&mesh.trace_of(&reply, 6).await);
}

/// Stock Envoy as every gateway, and force-trace through mesh-control's
/// internal addresses on Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_control_traces_three_envoy_gateways_and_envoy_honours_force_trace() {
    let mesh = Mesh::start_with(MeshOpts {
        sampling: 100.0,
        networks: true,
        envoy: [true, true, true],
    })
    .await;
    let reply = mesh.get("/envoy", &[]).await;
    assert_chain(&mesh.trace_of(&reply, 6).await);
    drop(mesh);

    let mesh = Mesh::start_with(MeshOpts {
        sampling: 0.0,
        networks: true,
        envoy: [true, false, false],
    })
    .await;
    assert_force_trace(&mesh).await;
}

/// At 0 %, requests are not exported; one with `x-envoy-force-trace`
/// from the client (an internal address) is, on every hop.
async fn assert_force_trace(mesh: &Mesh) {
    for _ in 0..10 {
        let reply = mesh.get("/quiet", &[]).await;
        let traceparent = echoed_header(&reply, "traceparent");
        assert!(traceparent.ends_with("-00"), "{traceparent}");
    }
    let reply = mesh
        .get("/forced", &[("x-envoy-force-trace", "true")])
        .await;
    let traceparent = echoed_header(&reply, "traceparent");
    assert!(
        traceparent.ends_with("-01"),
        "forced decision travels sampled: {traceparent}"
    );
    let spans = mesh.trace_of(&reply, 6).await;
    assert_chain(&spans);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trace = spans[0].trace_id.clone();
    let others: Vec<_> = mesh
        .receiver
        .all()
        .into_iter()
        .filter(|s| s.trace_id != trace)
        .collect();
    assert!(
        others.is_empty(),
        "unsampled requests were exported: {others:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_control_force_trace_samples_at_zero_percent_from_mesh_networks() {
    let mesh = Mesh::start_with(MeshOpts {
        sampling: 0.0,
        networks: true,
        ..MeshOpts::default()
    })
    .await;
    assert_force_trace(&mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_control_telemetry_at_zero_percent_exports_nothing() {
    let mesh = Mesh::start(0.0).await;
    for _ in 0..20 {
        let reply = mesh.get("/quiet", &[]).await;
        let traceparent = echoed_header(&reply, "traceparent");
        assert!(
            traceparent.ends_with("-00"),
            "the decision travels unsampled: {traceparent}"
        );
    }
    // Without MeshNetworks no address is internal: a client's
    // x-envoy-force-trace is not trusted.
    let reply = mesh
        .get("/untrusted", &[("x-envoy-force-trace", "true")])
        .await;
    let traceparent = echoed_header(&reply, "traceparent");
    assert!(traceparent.ends_with("-00"), "{traceparent}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(mesh.receiver.all().is_empty(), "{:#?}", mesh.receiver.all());
}

/// A request header as the mesh-echo backend reports it.
fn echoed_header(reply: &Reply, name: &str) -> String {
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    body["headers"][name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} did not reach the backend: {body}"))
        .to_string()
}
