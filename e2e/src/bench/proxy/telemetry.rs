//! The telemetry phase of `mesh-bench proxy`: what metrics plus tracing
//! cost per request, in mesh-proxy and in a stock Envoy.
//!
//! Besides the plain pair, the run starts a second mesh-proxy and a
//! second Envoy, identical but for their labels, which a Telemetry
//! resource in the root namespace selects: tracing through the
//! `opentelemetry` extension provider of MeshConfig at 100 % random
//! sampling, as a mesh operator writes it (mesh-control turns it into the
//! connection managers' `tracing` block, both proxies get the same). The
//! provider's Service is the bench's [`Collector`], an OTLP/gRPC
//! `TraceService` that counts the spans it is sent, per `service.name`.
//! Metrics are always on in every proxy (mesh-proxy's Istio standard
//! metrics, Envoy's own stats); during each window of a telemetry proxy
//! a [`Scraper`] also fetches its Prometheus endpoint once a second, as
//! Prometheus would in production, so serving the metrics is counted too.
//!
//! The four proxies run the whole time; the fixed-rate windows of all
//! five targets (direct, the plain pair, the telemetry pair) rotate in
//! the same rounds, so the difference between a telemetry proxy and its
//! plain twin is the cost of telemetry under the same conditions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_api::mesh_config::{MeshConfig, parse_mesh_config};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use super::TargetResult;
use super::load::HOST;
use super::mesh::GATEWAY_NAMESPACE;
use super::subject::Kind;

/// Name of the extension provider in MeshConfig.
pub const PROVIDER: &str = "bench-otel";
/// Host of the collector's Service.
pub const COLLECTOR_HOST: &str = "otel-collector.bench-observability.svc.cluster.local";
/// Port of the collector's Service (OTLP/gRPC's).
pub const COLLECTOR_PORT: u16 = 4317;
/// Where the collector listens, and its Pod's IP: not 127.0.0.1, the
/// backend's and the proxies' address.
pub const COLLECTOR_IP: [u8; 4] = [127, 0, 0, 2];
/// Random sampling of the Telemetry resource, percent.
pub const SAMPLING: f64 = 100.0;
/// Label the Telemetry resource selects.
pub const TELEMETRY_LABEL: (&str, &str) = ("bench-telemetry", "enabled");
/// `istio` label of the telemetry mesh-proxy.
pub const OURS_SELECTOR: &str = "mesh-bench-proxy-telemetry";
/// `istio` label of the telemetry Envoy.
pub const ENVOY_SELECTOR: &str = "ingressgateway-telemetry";
/// Pod name of the telemetry mesh-proxy.
pub const OURS_POD: &str = "bench-telemetry-mesh-proxy-0";
/// Pod name of the telemetry Envoy.
pub const ENVOY_POD: &str = "bench-telemetry-envoy-0";
/// `app` label (so the canonical service, and `service.name` of the
/// spans) of the telemetry mesh-proxy.
pub const OURS_APP: &str = "bench-telemetry-mesh-proxy";
/// `app` label of the telemetry Envoy.
pub const ENVOY_APP: &str = "bench-telemetry-envoy";
/// Path of the Prometheus endpoint of both proxies (mesh-proxy's stats
/// server, Istio's 15090; Envoy's admin).
pub const PROMETHEUS_PATH: &str = "/stats/prometheus";
/// How often a telemetry proxy is scraped during its windows.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait after the last window for the spans still batched in the
/// proxies (both flush at least every 5 s by default).
pub const FLUSH_WAIT: Duration = Duration::from_secs(7);

/// The OTLP/gRPC trace sink: spans and export calls per `service.name`.
#[derive(Clone, Default)]
pub struct Collector {
    counts: Arc<Mutex<BTreeMap<String, SpanCount>>>,
}

/// What the collector received from one `service.name`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanCount {
    /// Spans.
    pub spans: u64,
    /// `Export` calls.
    pub exports: u64,
}

/// Scrapes one Prometheus endpoint every [`SCRAPE_INTERVAL`] until
/// stopped.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Scrapes of one proxy over the run.
#[derive(Debug, Default)]
pub struct ScrapeStats {
    /// Answered with a 200.
    pub ok: AtomicU64,
    /// Failed (connection, status).
    pub failed: AtomicU64,
    /// Bytes of the answered bodies.
    pub bytes: AtomicU64,
}

/// What the telemetry phase measured.
#[derive(Debug)]
pub struct TelemetryReport {
    /// mesh-proxy then Envoy (if run), with telemetry; fixed-rate phase only.
    pub targets: Vec<TargetResult>,
    /// Spans received, per `service.name`.
    pub spans: BTreeMap<String, SpanCount>,
    /// Scrapes per proxy.
    pub scrapes: Vec<(Kind, ScrapeSummary)>,
}

/// [`ScrapeStats`] read at the end of the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScrapeSummary {
    /// Answered with a 200.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Bytes of an answer, on average.
    pub mean_bytes: u64,
}

// === impl Collector ===

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| tonic::Status::internal("collector lock poisoned"))?;
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let spans: usize = rs.scope_spans.iter().map(|ss| ss.spans.len()).sum();
            let c = counts.entry(service).or_default();
            c.spans += spans as u64;
            c.exports += 1;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Binds [`COLLECTOR_IP`]`:0` and serves on the current runtime.
    pub async fn start() -> anyhow::Result<(Self, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((COLLECTOR_IP, 0)))
            .await
            .context("binding the OTLP collector")?;
        let addr = listener.local_addr()?;
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                eprintln!("OTLP collector stopped: {e}");
            }
        });
        Ok((collector, addr))
    }

    /// Counts so far, per `service.name`.
    pub fn counts(&self) -> BTreeMap<String, SpanCount> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Total spans so far.
    pub fn total(&self) -> u64 {
        self.counts().values().map(|c| c.spans).sum()
    }

    /// Waits until no span arrived for `quiet` (or `max` is over): the
    /// proxies' batches still in flight after the last window.
    pub fn wait_flushed(&self, quiet: Duration, max: Duration) {
        let deadline = Instant::now() + max;
        let mut last = self.total();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.total();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }
}

// === impl Scraper ===

impl Scraper {
    /// Starts scraping 127.0.0.1:`port` [`PROMETHEUS_PATH`] now and then
    /// every [`SCRAPE_INTERVAL`], counting into `stats`.
    pub fn start(port: u16, stats: Arc<ScrapeStats>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("bench-scrape".into())
                .spawn(move || {
                    // The first scrape at once, then one a second until stopped.
                    loop {
                        let next = Instant::now() + SCRAPE_INTERVAL;
                        match crate::envoy::admin_get(port, PROMETHEUS_PATH) {
                            Some(body) => {
                                stats.ok.fetch_add(1, Ordering::Relaxed);
                                stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                            }
                            None => {
                                stats.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                })
                .ok()
        };
        if thread.is_none() {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        Self { stop, thread }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// === impl ScrapeStats ===

impl ScrapeStats {
    /// The counts now.
    pub fn summary(&self) -> ScrapeSummary {
        let ok = self.ok.load(Ordering::Relaxed);
        ScrapeSummary {
            ok,
            failed: self.failed.load(Ordering::Relaxed),
            mean_bytes: self.bytes.load(Ordering::Relaxed) / ok.max(1),
        }
    }
}

// === impl TelemetryReport ===

impl TelemetryReport {
    /// The telemetry twin of `kind`, if it ran.
    pub fn target(&self, kind: Kind) -> Option<&TargetResult> {
        self.targets.iter().find(|t| t.kind == kind)
    }

    /// Spans received from the telemetry proxy `kind`.
    pub fn spans_of(&self, kind: Kind) -> SpanCount {
        self.spans
            .get(&service_name(kind))
            .copied()
            .unwrap_or_default()
    }
}

/// The `service.name` mesh-control gives the telemetry proxy `kind`:
/// its canonical service (the `app` label) and namespace.
pub fn service_name(kind: Kind) -> String {
    let app = match kind {
        Kind::Envoy => ENVOY_APP,
        _ => OURS_APP,
    };
    format!("{app}.{GATEWAY_NAMESPACE}")
}

/// The MeshConfig of the run: the collector as an `opentelemetry`
/// extension provider (no default provider: only the Telemetry resource
/// turns tracing on, for the proxies it selects).
pub fn mesh_config_yaml() -> String {
    format!(
        "extensionProviders:\n\
         - name: {PROVIDER}\n\
         \x20 opentelemetry: {{service: bench-observability/{COLLECTOR_HOST}, port: {COLLECTOR_PORT}}}\n"
    )
}

/// [`mesh_config_yaml`] parsed; an error names what MeshConfig rejected.
pub fn mesh_config() -> anyhow::Result<MeshConfig> {
    let (mesh, report) = parse_mesh_config(&mesh_config_yaml());
    if report.has_errors() {
        bail!(
            "the bench's MeshConfig has errors: {:?}",
            report.diagnostics
        );
    }
    mesh.context("the bench's MeshConfig did not decode")
}

/// The configuration the telemetry pair adds to the plain bench's: the
/// collector's Service (port 4317 named `grpc-otlp`, so HTTP/2) whose
/// Pod is the collector on [`COLLECTOR_IP`]:`collector_port`, TLS off to
/// it (it has no sidecar), the root-namespace Telemetry selecting the
/// pair, and their Gateways (on 127.0.0.1:`ours_port` and `envoy_port`)
/// with a VirtualService routing [`HOST`] to the same backend.
pub fn config_yaml(collector_port: u16, ours_port: u16, envoy_port: u16) -> String {
    let [a, b, c, d] = COLLECTOR_IP;
    let (label, value) = TELEMETRY_LABEL;
    let gateway = |who: &str, selector: &str, port: u16| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bench-telemetry-{who}, namespace: {GATEWAY_NAMESPACE}}}
spec:
  selector: {{istio: {selector}}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["*"]
---
"#
        )
    };
    let gateways = gateway("envoy", ENVOY_SELECTOR, envoy_port)
        + &gateway("mesh-proxy", OURS_SELECTOR, ours_port);
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: otel-collector, namespace: bench-observability}}
spec:
  clusterIP: 10.96.0.101
  selector: {{app: otel-collector}}
  ports: [{{name: grpc-otlp, port: {COLLECTOR_PORT}, targetPort: {collector_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: otel-collector-0, namespace: bench-observability, labels: {{app: otel-collector}}}}
spec: {{containers: [{{name: collector, image: otel-collector}}]}}
status: {{podIP: {a}.{b}.{c}.{d}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: otel-collector, namespace: bench-observability}}
spec:
  host: {COLLECTOR_HOST}
  trafficPolicy:
    tls: {{mode: DISABLE}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: bench-tracing, namespace: {GATEWAY_NAMESPACE}}}
spec:
  selector:
    matchLabels: {{{label}: {value}}}
  tracing:
  - providers: [{{name: {PROVIDER}}}]
    randomSamplingPercentage: {SAMPLING}
---
{gateways}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench-telemetry, namespace: bench}}
spec:
  hosts: [{HOST}]
  gateways: [{GATEWAY_NAMESPACE}/bench-telemetry-envoy, {GATEWAY_NAMESPACE}/bench-telemetry-mesh-proxy]
  http:
  - route:
    - destination: {{host: bench-backend.bench.svc.cluster.local, port: {{number: 8080}}}}
"#
    )
}

/// Labels of the telemetry proxy `kind` (its Gateway's selector, the
/// Telemetry's label, its canonical service).
pub fn labels(kind: Kind) -> Vec<(&'static str, &'static str)> {
    let (selector, app) = match kind {
        Kind::Envoy => (ENVOY_SELECTOR, ENVOY_APP),
        _ => (OURS_SELECTOR, OURS_APP),
    };
    vec![("istio", selector), ("app", app), TELEMETRY_LABEL]
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::grpc_service;
    use envoy_types::pb::envoy::config::listener::v3::filter;
    use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, tracing::http};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use mesh_api::wellknown::LABEL_APP;
    use prost::Message;

    use super::*;
    use crate::bench::proxy::mesh;

    fn proxy(pod: &str, labels: &[(&str, &str)]) -> mesh_control::proxy::ProxyInfo {
        mesh_control::proxy::ProxyInfo::router(
            pod,
            GATEWAY_NAMESPACE,
            std::net::IpAddr::from([127, 0, 0, 1]),
            labels,
        )
    }

    /// The sampling percentage and collector cluster of every HTTP
    /// connection manager on `port`'s listener (`None`: no tracing).
    fn tracing_on(
        out: &mesh_control::xds::ProxyResources,
        port: u16,
    ) -> Vec<Option<(f64, String)>> {
        let mut found = Vec::new();
        for l in out
            .listeners
            .iter()
            .filter(|l| l.name.contains(&port.to_string()))
        {
            for f in l.filter_chains.iter().flat_map(|c| &c.filters) {
                let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                    continue;
                };
                found.push(hcm.tracing.map(|t| {
                    let provider = t.provider.expect("a tracing provider");
                    assert_eq!(provider.name, "envoy.tracers.opentelemetry");
                    let Some(http::ConfigType::TypedConfig(any)) = provider.config_type else {
                        panic!("no typed config");
                    };
                    let otel = OpenTelemetryConfig::decode(any.value.as_slice()).unwrap();
                    let Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) =
                        otel.grpc_service.and_then(|g| g.target_specifier)
                    else {
                        panic!("no envoy_grpc service");
                    };
                    (
                        t.random_sampling.map(|p| p.value).unwrap_or(-1.0),
                        g.cluster_name,
                    )
                }));
            }
        }
        found
    }

    #[test]
    fn only_the_telemetry_pair_traces_at_100_percent_to_the_collector() {
        let yaml =
            mesh::config_yaml(18000, 18001, 18002) + "---\n" + &config_yaml(18003, 18004, 18005);
        let snap = mesh::snapshot_with(&yaml, mesh_config().unwrap()).unwrap();
        let cases = [
            (
                mesh::OURS_POD,
                vec![("istio", mesh::OURS_SELECTOR)],
                18001,
                false,
            ),
            (
                mesh::ENVOY_POD,
                vec![("istio", mesh::ENVOY_SELECTOR)],
                18002,
                false,
            ),
            (OURS_POD, labels(Kind::Ours), 18004, true),
            (ENVOY_POD, labels(Kind::Envoy), 18005, true),
        ];
        for (pod, labels, port, traced) in cases {
            let out = mesh_control::xds::generate(&snap, &proxy(pod, &labels));
            let hcms = tracing_on(&out, port);
            assert!(!hcms.is_empty(), "{pod}: no HTTP listener on {port}");
            for t in hcms {
                match (traced, t) {
                    (true, Some((sampling, cluster))) => {
                        assert_eq!(sampling, SAMPLING, "{pod}");
                        assert_eq!(
                            cluster,
                            format!("outbound|{COLLECTOR_PORT}||{COLLECTOR_HOST}")
                        );
                    }
                    (false, None) => {}
                    (traced, t) => panic!("{pod}: traced {traced}, got {t:?}"),
                }
            }
            // The collector's cluster is there for the proxies to export to.
            assert!(
                out.clusters
                    .iter()
                    .any(|c| c.name == format!("outbound|{COLLECTOR_PORT}||{COLLECTOR_HOST}")),
                "{pod}: no collector cluster"
            );
        }
    }

    #[test]
    fn span_service_names_are_the_pairs_canonical_services() {
        let yaml =
            mesh::config_yaml(18000, 18001, 18002) + "---\n" + &config_yaml(18003, 18004, 18005);
        let snap = mesh::snapshot_with(&yaml, mesh_config().unwrap()).unwrap();
        for (pod, kind) in [(OURS_POD, Kind::Ours), (ENVOY_POD, Kind::Envoy)] {
            let labels = labels(kind);
            assert!(labels.iter().any(|(k, _)| *k == LABEL_APP));
            let s = mesh_control::xds::tracing::settings(
                &snap,
                &proxy(pod, &labels),
                mesh_api::telemetry::WorkloadMode::Client,
            )
            .unwrap();
            assert_eq!(s.service_name, service_name(kind));
        }
    }

    #[tokio::test]
    async fn the_collector_counts_spans_per_service() {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

        let (collector, addr) = Collector::start().await.unwrap();
        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let batch = |service: &str, n: usize| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(service.into())),
                    }),
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); n],
                ..Default::default()
            }],
            ..Default::default()
        };
        for (service, n) in [("a.ns", 3), ("b.ns", 2), ("a.ns", 4)] {
            client
                .export(ExportTraceServiceRequest {
                    resource_spans: vec![batch(service, n)],
                })
                .await
                .unwrap();
        }
        let counts = collector.counts();
        assert_eq!(
            counts["a.ns"],
            SpanCount {
                spans: 7,
                exports: 2
            }
        );
        assert_eq!(
            counts["b.ns"],
            SpanCount {
                spans: 2,
                exports: 1
            }
        );
        assert_eq!(collector.total(), 9);
    }

    #[test]
    fn the_scraper_counts_answers_and_failures() {
        // A one-shot HTTP server answering the Prometheus path.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            // The request may come in pieces: read up to its blank line.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed mid-request");
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&request);
            assert!(request.starts_with("GET /stats/prometheus "), "{request}");
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\na 1\n\n")
                .unwrap();
        });
        let stats = Arc::new(ScrapeStats::default());
        drop(Scraper::start(port, stats.clone()));
        server.join().unwrap();
        assert_eq!(stats.summary().ok, 1);
        assert_eq!(stats.summary().mean_bytes, 5);
        // Nothing listens there any more.
        drop(Scraper::start(port, stats.clone()));
        assert_eq!(stats.summary().failed, 1);
    }
}
