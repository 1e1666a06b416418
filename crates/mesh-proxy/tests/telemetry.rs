//! Telemetry as a user sees it: requests and connections through the data
//! path (`proxy::run_with` with the telemetry observer the binary
//! installs) show up in `/stats/prometheus` and `/stats` of the admin API
//! with Istio's metric names and labels and Envoy's per-cluster counters,
//! and each one writes one access log line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use mesh_proxy::drain;
use mesh_proxy::proxy::{Observer, Options, ProxyError};
use mesh_proxy::resources::{Resource, Resources};
use mesh_proxy::runtime::{self, Runtime};
use mesh_proxy::telemetry::{AccessLog, AccessLogMode, LocalIdentity, Metrics, Telemetry};
use mesh_proxy::xds::{NodeConfig, Role};
use serde_json::json;
use support::resources::*;
use support::xds_proxy::XdsProxy;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const REVIEWS: &str = "outbound|9080||reviews.bookinfo.svc.cluster.local";
const RATINGS: &str = "outbound|9080||ratings.bookinfo.svc.cluster.local";

/// The data path with the telemetry observer, and the admin server whose
/// registry the metrics are registered in.
struct Telemetered {
    admin: XdsProxy,
    log: Capture,
    _runtime: watch::Sender<Arc<Runtime>>,
    _trigger: drain::Trigger,
    task: JoinHandle<Result<(), ProxyError>>,
}

impl Drop for Telemetered {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An access log writer the test reads.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until `n` lines were written.
    async fn wait_lines(&self, n: usize) -> Vec<String> {
        let lines = eventually(Duration::from_secs(5), || async {
            Some(self.lines()).filter(|l| l.len() >= n)
        })
        .await;
        lines.unwrap_or_else(|| panic!("expected {n} access log lines, got {:?}", self.lines()))
    }
}

/// The proxy `productpage-v1` (namespace bookinfo) serving `list`, with
/// metrics and an access log in `mode`.
async fn start(list: Vec<Resource>, ready: SocketAddr, mode: AccessLogMode) -> Telemetered {
    let admin = XdsProxy::start(None, Resources::default()).await;
    let mut node = NodeConfig {
        role: Some(Role::Sidecar),
        pod_name: Some("productpage-v1-7d9f".into()),
        pod_namespace: Some("bookinfo".into()),
        workload_name: Some("productpage-v1".into()),
        ..Default::default()
    };
    node.add_labels(["app=productpage", "version=v1"]).unwrap();
    let metrics = Metrics::new(LocalIdentity::from_node(&node.build(None)));
    metrics.register(&mut admin.registry.write().unwrap());
    let log = Capture::default();
    let access_log = AccessLog::new(mode, Box::new(log.clone())).unwrap();
    let observer: Arc<dyn Observer> = Arc::new(Telemetry::new(Some(metrics), Some(access_log)));
    let (runtime, rx) = watch::channel(Arc::new(runtime::compile(&resources(list))));
    let (trigger, watch) = drain::channel();
    let task = tokio::spawn(mesh_proxy::proxy::run_with(
        rx,
        watch,
        Options {
            observer,
            ..Options::default()
        },
    ));
    wait_listening(ready).await;
    Telemetered {
        admin,
        log,
        _runtime: runtime,
        _trigger: trigger,
        task,
    }
}

impl Telemetered {
    async fn admin(&self, path: &str) -> String {
        let (status, body) = admin_get(self.admin.admin, path).await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// The value of the one Prometheus sample named `name` whose labels
    /// include every one of `labels`; waits for it to reach `expected`.
    async fn wait_sample(&self, name: &str, labels: &[&str], expected: f64) -> String {
        let found = eventually(Duration::from_secs(5), || async {
            let text = self.admin("/stats/prometheus").await;
            let value = sample(&text, name, labels);
            (value == Some(expected)).then_some(text)
        })
        .await;
        match found {
            Some(text) => text,
            None => {
                let text = self.admin("/stats/prometheus").await;
                panic!("{name} {labels:?} never reached {expected}:\n{text}")
            }
        }
    }
}

/// The value of the sample `name{...labels...}` in `text`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let matching: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches several series"
    );
    matching.first().copied()
}

#[tokio::test]
async fn requests_are_counted_by_code_and_flags_and_logged_once_each() {
    bounded(60, async {
        let reviews = echo("reviews", "v1").await;
        let addr = free_addr();
        let fault = json!({"envoy.filters.http.fault": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"grpcStatus": 14, "percentage": {"numerator": 100}}}});
        let routes = json!({"name": "9080", "virtualHosts": [{"name": "bookinfo", "domains": ["reviews", "ratings"], "routes": [
            {"match": {"prefix": "/grpc"}, "route": {"cluster": REVIEWS}, "typedPerFilterConfig": fault},
            {"match": {"prefix": "/ratings"}, "route": {"cluster": RATINGS}},
            {"match": {"prefix": "/"}, "name": "default", "route": {"cluster": REVIEWS}},
        ]}]});
        let proxy = start(
            vec![
                http_listener("0.0.0.0_9080", addr, "9080"),
                route(routes),
                static_cluster(REVIEWS, &[reviews.addr]),
                static_cluster(RATINGS, &[dead_addr()]),
            ],
            addr,
            AccessLogMode::Text,
        )
        .await;
        let c = h1();
        for _ in 0..3 {
            assert_eq!(get(&c, addr, "reviews", "/reviews/1").await.status, StatusCode::OK);
        }
        assert_eq!(get(&c, addr, "ratings", "/ratings/1").await.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&c, addr, "details", "/").await.status, StatusCode::NOT_FOUND);
        let grpc = send(&c, Method::POST, addr, "reviews", "/grpc.Reviews/Get", &[("content-type", "application/grpc")]).await;
        assert_eq!(grpc.headers["grpc-status"], "14");

        let ok = [
            "reporter=\"source\"",
            "source_workload=\"productpage-v1\"",
            "source_workload_namespace=\"bookinfo\"",
            "source_app=\"productpage\"",
            "source_version=\"v1\"",
            "destination_service=\"reviews.bookinfo.svc.cluster.local\"",
            "destination_service_name=\"reviews\"",
            "destination_service_namespace=\"bookinfo\"",
            "destination_workload=\"unknown\"",
            "request_protocol=\"http\"",
            "response_code=\"200\"",
            "response_flags=\"-\"",
        ];
        proxy.wait_sample("istio_requests_total", &ok, 3.0).await;
        let uf = ["destination_service_name=\"ratings\"", "response_code=\"503\"", "response_flags=\"UF\""];
        proxy.wait_sample("istio_requests_total", &uf, 1.0).await;
        let nr = ["destination_service=\"details\"", "response_code=\"404\"", "response_flags=\"NR\""];
        proxy.wait_sample("istio_requests_total", &nr, 1.0).await;
        let grpc = ["request_protocol=\"grpc\"", "grpc_response_status=\"14\"", "response_flags=\"FI\""];
        let text = proxy.wait_sample("istio_requests_total", &grpc, 1.0).await;
        assert_eq!(sample(&text, "istio_request_duration_milliseconds_count", &ok), Some(3.0));
        assert_eq!(sample(&text, "istio_response_bytes_count", &ok), Some(3.0));
        assert!(sample(&text, "istio_response_bytes_sum", &ok).unwrap() > 0.0);
        assert!(text.contains("# TYPE istio_request_bytes histogram"), "{text}");

        // Envoy's per-cluster counters, in Prometheus form and in /stats.
        let reviews_name = format!("envoy_cluster_name=\"{REVIEWS}\"");
        assert_eq!(sample(&text, "envoy_cluster_upstream_rq_total", &[&reviews_name]), Some(3.0));
        assert_eq!(
            sample(&text, "envoy_cluster_upstream_rq_xx", &["envoy_response_code_class=\"2\"", &reviews_name]),
            Some(3.0)
        );
        let ratings_name = format!("envoy_cluster_name=\"{RATINGS}\"");
        assert_eq!(sample(&text, "envoy_cluster_upstream_cx_connect_fail", &[&ratings_name]), Some(1.0));
        // As a tool reading Envoy's stats asks for one (the filter is a regex).
        let stat = format!("cluster.{REVIEWS}.upstream_rq_2xx");
        let body = proxy.admin(&format!("/stats?filter=^{}$", stat.replace('|', "%7C"))).await;
        assert!(body.lines().any(|l| l == format!("{stat}: 3")), "{body}");
        let stat = format!("cluster.{RATINGS}.upstream_rq_5xx");
        let body = proxy.admin("/stats?filter=upstream_rq_5xx").await;
        assert!(body.lines().any(|l| l == format!("{stat}: 1")), "{body}");

        // One access log line per request, in Istio's text format.
        let lines = proxy.log.wait_lines(6).await;
        assert_eq!(lines.len(), 6, "{lines:#?}");
        let ok_line = lines.iter().find(|l| l.contains("\"GET /reviews/1 HTTP/1.1\"")).unwrap();
        assert!(ok_line.contains("\" 200 - via_upstream - \"-\" 0 "), "{ok_line}");
        assert!(ok_line.contains(&format!(" {REVIEWS} ")), "{ok_line}");
        assert!(ok_line.contains(&format!("\"{}\"", reviews.addr)), "{ok_line}");
        assert!(ok_line.ends_with(" - default"), "{ok_line}");
        assert!(lines.iter().any(|l| l.contains(" 503 UF ")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains(" 404 NR route_not_found ")), "{lines:#?}");
    })
    .await;
}

/// A TCP backend that answers every read with what it read.
async fn tcp_echo() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = socket.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The proxy with an inbound TCP listener to an echo backend through
/// `cluster`, logging JSON: the proxy, its listener address, the backend.
async fn tcp_inbound(cluster: &str) -> (Telemetered, SocketAddr, SocketAddr) {
    let backend = tcp_echo().await;
    let addr = free_addr();
    let address =
        json!({"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}});
    let proxy = start(
        vec![
            listener(
                json!({"name": "virtualInbound", "address": address, "trafficDirection": "INBOUND",
                "filterChains": [{"filters": [tcp_proxy(cluster)]}]}),
            ),
            static_cluster(cluster, &[backend]),
        ],
        addr,
        AccessLogMode::Json,
    )
    .await;
    (proxy, addr, backend)
}

#[tokio::test]
async fn tcp_connections_move_the_tcp_counters_and_log_json() {
    bounded(30, async {
        let cluster = "inbound|3306||";
        let (proxy, addr, backend) = tcp_inbound(cluster).await;
        // The readiness probe made (and closed) a connection without bytes.
        let inbound = [
            "reporter=\"destination\"",
            "destination_workload=\"productpage-v1\"",
            "destination_workload_namespace=\"bookinfo\"",
            "source_workload=\"unknown\"",
            "request_protocol=\"tcp\"",
            "connection_security_policy=\"none\"",
        ];
        proxy
            .wait_sample("istio_tcp_connections_closed_total", &inbound, 1.0)
            .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"select 1;").await.unwrap();
        let mut buf = [0u8; 9];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"select 1;");
        drop(s);
        proxy
            .wait_sample("istio_tcp_connections_closed_total", &inbound, 2.0)
            .await;
        let text = proxy
            .wait_sample("istio_tcp_connections_opened_total", &inbound, 2.0)
            .await;
        assert_eq!(
            sample(&text, "istio_tcp_received_bytes_total", &inbound),
            Some(9.0)
        );
        assert_eq!(
            sample(&text, "istio_tcp_sent_bytes_total", &inbound),
            Some(9.0)
        );
        let name = format!("envoy_cluster_name=\"{cluster}\"");
        assert_eq!(
            sample(&text, "envoy_cluster_upstream_cx_total", &[&name]),
            Some(2.0)
        );

        let lines = proxy.log.wait_lines(2).await;
        let line: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(line["upstream_cluster"], cluster);
        assert_eq!(line["upstream_host"], backend.to_string());
        assert_eq!(line["bytes_received"], 9);
        assert_eq!(line["response_flags"], "-");
        assert_eq!(line["method"], serde_json::Value::Null);
    })
    .await;
}

/// Istio's periodic TCP reports: a connection still open is counted as
/// opened, with the bytes it moved, within one reporting interval (5 s);
/// its close adds only what came after, so nothing is counted twice.
#[tokio::test]
async fn a_long_lived_tcp_connection_is_reported_while_it_is_open() {
    bounded(40, async {
        let cluster = "inbound|5432||";
        let (proxy, addr, _backend) = tcp_inbound(cluster).await;
        let inbound = ["reporter=\"destination\"", "request_protocol=\"tcp\""];
        // The readiness probe's connection, opened and closed.
        proxy
            .wait_sample("istio_tcp_connections_closed_total", &inbound, 1.0)
            .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        // Still open: reported by the first periodic report.
        let open = eventually(Duration::from_secs(10), || async {
            let text = proxy.admin("/stats/prometheus").await;
            (sample(&text, "istio_tcp_connections_opened_total", &inbound) == Some(2.0)
                && sample(&text, "istio_tcp_received_bytes_total", &inbound) == Some(5.0))
            .then_some(text)
        })
        .await
        .unwrap_or_else(|| panic!("the open connection was never reported"));
        assert_eq!(
            sample(&open, "istio_tcp_connections_closed_total", &inbound),
            Some(1.0),
            "only the probe's connection is closed:\n{open}"
        );
        assert_eq!(
            sample(&open, "istio_tcp_sent_bytes_total", &inbound),
            Some(5.0)
        );
        assert!(
            proxy.log.lines().len() == 1,
            "access logs wait for the close"
        );
        // More bytes, then the close: counted once each.
        s.write_all(b"bye").await.unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.unwrap();
        drop(s);
        let text = proxy
            .wait_sample("istio_tcp_connections_closed_total", &inbound, 2.0)
            .await;
        assert_eq!(
            sample(&text, "istio_tcp_connections_opened_total", &inbound),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "istio_tcp_received_bytes_total", &inbound),
            Some(8.0)
        );
        assert_eq!(
            sample(&text, "istio_tcp_sent_bytes_total", &inbound),
            Some(8.0)
        );
        let lines = proxy.log.wait_lines(2).await;
        let line: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(
            line["bytes_received"], 8,
            "the log has the whole connection"
        );
    })
    .await;
}
