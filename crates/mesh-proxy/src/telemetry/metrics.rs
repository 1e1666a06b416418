//! Istio's standard metrics, made from the data path's request and
//! connection records: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes` for HTTP and gRPC, and
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total` for TCP,
//! labelled as Istio's stats filter labels them (see [`super::labels`]).
//! Each record also feeds Envoy's per-cluster upstream counters
//! ([`super::envoy_stats`]).
//!
//! Metrics are registered in the registry the admin API (`/stats`,
//! `/stats/prometheus`) and the Prometheus port (15090) serve.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::envoy_stats::{ClusterStats, RbacStats};
use super::labels::{LocalIdentity, PeerCache, PeerFacts, PeerLabels};
use super::overrides::{Metric, TagChanges, Verdict, Verdicts};
use crate::proxy::record::{RequestRecord, ResponseFlags, TcpRecord};

/// Istio's buckets for `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's buckets for `istio_request_bytes` and `istio_response_bytes`
/// (powers of ten, 1 B to 1 GB).
pub const BYTES_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Istio's metrics and Envoy's cluster counters of one proxy.
#[derive(Debug)]
pub struct Metrics {
    peers: PeerCache,
    requests: Family<RequestLabels, Counter>,
    duration: Histograms<RequestLabels>,
    request_bytes: Histograms<RequestLabels>,
    response_bytes: Histograms<RequestLabels>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    clusters: ClusterStats,
    rbac: RbacStats,
}

/// The labels of the HTTP metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RequestLabels {
    peer: Arc<PeerLabels>,
    protocol: &'static str,
    response_code: u16,
    grpc_status: Option<u32>,
    flags: ResponseFlags,
    /// Telemetry's tag overrides, when the listener has any.
    changes: Option<Arc<TagChanges>>,
}

/// The labels of the TCP metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TcpLabels {
    peer: Arc<PeerLabels>,
    flags: ResponseFlags,
    changes: Option<Arc<TagChanges>>,
}

/// The labels of `metric` under `verdicts`: `base`, or `base` with the
/// overrides' tag changes; `None` when the metric is dropped.
fn overridden<L: Clone>(
    verdicts: Option<&Verdicts>,
    metric: Metric,
    base: &L,
    with: fn(&L, Arc<TagChanges>) -> L,
) -> Option<L> {
    match verdicts.map(|v| v.of(metric)) {
        None | Some(Verdict::Untouched) => Some(base.clone()),
        Some(Verdict::Dropped) => None,
        Some(Verdict::Changed(c)) => Some(with(base, c.clone())),
    }
}

// === impl Metrics ===

impl Metrics {
    /// Metrics of the proxy `local`, not registered yet.
    pub fn new(local: LocalIdentity) -> Self {
        let duration: fn() -> Histogram = || Histogram::new(DURATION_BUCKETS);
        let bytes: fn() -> Histogram = || Histogram::new(BYTES_BUCKETS);
        Self {
            peers: PeerCache::new(local),
            requests: Family::default(),
            duration: Family::new_with_constructor(duration),
            request_bytes: Family::new_with_constructor(bytes),
            response_bytes: Family::new_with_constructor(bytes),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            clusters: ClusterStats::default(),
            rbac: RbacStats::default(),
        }
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "istio_requests",
            "Requests handled by the proxy",
            self.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Duration of requests, from the first request byte to the last response byte, in milliseconds",
            self.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes",
            self.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes",
            self.response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            self.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            self.tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client on TCP connections",
            self.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client on TCP connections",
            self.tcp_received.clone(),
        );
        self.clusters.register(registry);
        self.rbac.register(registry);
    }

    /// Counts an RBAC decision.
    pub fn rbac(&self, http: Option<&str>, allowed: bool) {
        self.rbac.decision(http, allowed);
    }

    /// Counts an authorization event other than an RBAC decision.
    pub fn authz(&self, http: Option<&str>, event: crate::proxy::record::AuthzEvent<'_>) {
        self.rbac.event(http, event);
    }

    /// Counts a finished HTTP request.
    pub fn request(&self, r: &RequestRecord) {
        let peer = self.peers.get(
            r.direction,
            r.cluster.as_deref(),
            Some(r.authority.as_str()).filter(|a| !a.is_empty()),
            PeerFacts::of_request(r),
        );
        if let Some(cluster) = &peer.cluster {
            self.clusters.request(cluster, r);
        }
        let labels = RequestLabels {
            peer,
            protocol: if r.grpc { "grpc" } else { "http" },
            response_code: r.response_code,
            grpc_status: r.grpc_status,
            flags: r.flags,
            changes: None,
        };
        let Some(stats) = r.stats.as_deref() else {
            self.requests.get_or_create(&labels).inc();
            self.duration
                .get_or_create(&labels)
                .observe(r.duration.as_secs_f64() * 1000.0);
            self.request_bytes
                .get_or_create(&labels)
                .observe(r.bytes_received as f64);
            self.response_bytes
                .get_or_create(&labels)
                .observe(r.bytes_sent as f64);
            return;
        };
        let verdicts = stats.verdicts(r);
        let with = |metric| {
            overridden(Some(&verdicts), metric, &labels, |l, changes| {
                RequestLabels {
                    changes: Some(changes),
                    ..l.clone()
                }
            })
        };
        if let Some(l) = with(Metric::Requests) {
            self.requests.get_or_create(&l).inc();
        }
        if let Some(l) = with(Metric::Duration) {
            self.duration
                .get_or_create(&l)
                .observe(r.duration.as_secs_f64() * 1000.0);
        }
        if let Some(l) = with(Metric::RequestBytes) {
            self.request_bytes
                .get_or_create(&l)
                .observe(r.bytes_received as f64);
        }
        if let Some(l) = with(Metric::ResponseBytes) {
            self.response_bytes
                .get_or_create(&l)
                .observe(r.bytes_sent as f64);
        }
    }

    /// Counts a closed TCP connection: what its periodic reports
    /// ([`Self::connection_progress`]) did not count yet, and the close.
    pub fn connection(&self, r: &TcpRecord) {
        self.tcp(r, true);
    }

    /// Counts a TCP connection still open, as Istio's periodic TCP
    /// reports do: opened on its first report, and the bytes moved since
    /// the last one, so a long-lived connection shows up while it lives.
    pub fn connection_progress(&self, r: &TcpRecord) {
        self.tcp(r, false);
    }

    fn tcp(&self, r: &TcpRecord, closed: bool) {
        let peer = self.peers.get(
            r.direction,
            r.cluster.as_deref(),
            r.server_name.as_deref(),
            PeerFacts::of_connection(r),
        );
        if closed && let Some(cluster) = &peer.cluster {
            self.clusters.connection(cluster, r);
        }
        let labels = TcpLabels {
            peer,
            flags: r.flags,
            changes: None,
        };
        let verdicts = r.stats.as_deref().map(|s| s.verdicts(r));
        let with = |metric| {
            overridden(verdicts.as_ref(), metric, &labels, |l, changes| TcpLabels {
                changes: Some(changes),
                ..l.clone()
            })
        };
        let sent = r.bytes_sent.saturating_sub(r.reported.bytes_sent);
        let received = r.bytes_received.saturating_sub(r.reported.bytes_received);
        if !r.reported.opened
            && let Some(l) = with(Metric::TcpOpened)
        {
            self.tcp_opened.get_or_create(&l).inc();
        }
        if closed && let Some(l) = with(Metric::TcpClosed) {
            self.tcp_closed.get_or_create(&l).inc();
        }
        if (closed || sent > 0)
            && let Some(l) = with(Metric::TcpSent)
        {
            self.tcp_sent.get_or_create(&l).inc_by(sent);
        }
        if (closed || received > 0)
            && let Some(l) = with(Metric::TcpReceived)
        {
            self.tcp_received.get_or_create(&l).inc_by(received);
        }
    }
}

// === impl RequestLabels ===

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        let code = self.response_code.to_string();
        // Istio leaves the gRPC status empty for plain HTTP.
        let grpc = self.grpc_status.map(|s| s.to_string()).unwrap_or_default();
        let flags = self.flags.to_string();
        self.peer.encode_with(
            &[
                ("request_protocol", self.protocol),
                ("response_code", &code),
                ("grpc_response_status", &grpc),
                ("response_flags", &flags),
            ],
            self.changes.as_deref(),
            encoder,
        )
    }
}

// === impl TcpLabels ===

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        let flags = self.flags.to_string();
        self.peer.encode_with(
            &[("request_protocol", "tcp"), ("response_flags", &flags)],
            self.changes.as_deref(),
            encoder,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::fixtures::request;
    use crate::xds::NodeConfig;

    fn scrape(m: &Metrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn requests_are_counted_with_istio_labels() {
        let mut node = NodeConfig {
            pod_name: Some("productpage-v1-1".into()),
            pod_namespace: Some("bookinfo".into()),
            ..Default::default()
        };
        node.add_labels(["app=productpage", "version=v1"]).unwrap();
        let m = Metrics::new(LocalIdentity::from_node(&node.build(None)));
        let cluster = "outbound|9080||reviews.bookinfo.svc.cluster.local";
        m.request(&request(200, ResponseFlags::default(), Some(cluster)));
        m.request(&request(200, ResponseFlags::default(), Some(cluster)));
        m.request(&request(
            503,
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            Some(cluster),
        ));
        let text = scrape(&m);
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
            .unwrap();
        for label in [
            "reporter=\"source\"",
            "source_workload=\"productpage\"",
            "source_workload_namespace=\"bookinfo\"",
            "source_app=\"productpage\"",
            "source_version=\"v1\"",
            "source_cluster=\"Kubernetes\"",
            "destination_workload=\"unknown\"",
            "destination_service=\"reviews.bookinfo.svc.cluster.local\"",
            "destination_service_name=\"reviews\"",
            "destination_service_namespace=\"bookinfo\"",
            "request_protocol=\"http\"",
            "grpc_response_status=\"\"",
            "response_flags=\"-\"",
            "connection_security_policy=\"unknown\"",
        ] {
            assert!(line.contains(label), "{label} missing in {line}");
        }
        assert!(line.ends_with(" 2"), "{line}");
        assert!(text.contains("response_flags=\"UF\""), "{text}");
        assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"));
        assert!(text.contains("le=\"0.5\""), "Istio's first duration bucket");
        assert!(text.contains("# TYPE istio_response_bytes histogram"));
    }

    #[test]
    fn tcp_connections_move_the_tcp_counters() {
        let m = Metrics::new(LocalIdentity::from_node(&NodeConfig::default().build(None)));
        let r = crate::telemetry::fixtures::connection();
        m.connection(&r);
        let text = scrape(&m);
        for (name, value) in [
            ("istio_tcp_connections_opened_total", 1),
            ("istio_tcp_connections_closed_total", 1),
            ("istio_tcp_sent_bytes_total", 7),
            ("istio_tcp_received_bytes_total", 5),
        ] {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap();
            assert!(line.contains("reporter=\"destination\""), "{line}");
            assert!(line.contains("request_protocol=\"tcp\""), "{line}");
            assert!(
                line.contains("connection_security_policy=\"none\""),
                "{line}"
            );
            assert!(line.ends_with(&format!(" {value}")), "{line}");
        }
    }

    #[test]
    fn telemetry_overrides_drop_metrics_and_change_tags() {
        use mesh_api::xds::istio_stats::{MetricConfig, PluginConfig};
        let metric =
            |name: &str, dims: &[(&str, &str)], remove: &[&str], drop: bool| MetricConfig {
                name: name.into(),
                dimensions: dims
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                tags_to_remove: remove.iter().map(|s| s.to_string()).collect(),
                drop,
                ..Default::default()
            };
        let cfg = PluginConfig {
            metrics: vec![
                metric(
                    "requests_total",
                    &[
                        ("source_app", "'web'"),
                        ("destination_port", "string(destination.port)"),
                    ],
                    &["response_flags"],
                    false,
                ),
                metric("request_duration_milliseconds", &[], &[], true),
                metric("tcp_sent_bytes_total", &[], &[], true),
            ],
            ..Default::default()
        };
        let stats = crate::telemetry::overrides::Overrides::compile(&cfg, "f").unwrap();
        let m = Metrics::new(LocalIdentity::from_node(&NodeConfig::default().build(None)));
        let mut r = request(
            200,
            ResponseFlags::default(),
            Some("outbound|9080||reviews.bookinfo.svc.cluster.local"),
        );
        r.stats = stats.clone();
        m.request(&r);
        let mut tcp = crate::telemetry::fixtures::connection();
        tcp.stats = stats;
        m.connection(&tcp);
        let text = scrape(&m);
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        assert!(!line.contains("response_flags="), "{line}");
        assert!(line.contains("source_app=\"web\""), "{line}");
        // A changed standard tag keeps its place; a new one comes last.
        let app = line.find("source_app=").unwrap();
        assert!(app < line.find("destination_workload=").unwrap(), "{line}");
        assert!(line.ends_with("destination_port=\"9080\"} 1"), "{line}");
        assert!(
            !text.contains("istio_request_duration_milliseconds_count"),
            "{text}"
        );
        // The other HTTP metrics keep Istio's labels.
        let bytes = text
            .lines()
            .find(|l| l.starts_with("istio_request_bytes_count{"))
            .unwrap();
        assert!(bytes.contains("response_flags=\"-\""), "{bytes}");
        assert!(!bytes.contains("destination_port"), "{bytes}");
        assert!(!text.contains("istio_tcp_sent_bytes_total{"), "{text}");
        assert!(text.contains("istio_tcp_received_bytes_total{"), "{text}");
    }
}
