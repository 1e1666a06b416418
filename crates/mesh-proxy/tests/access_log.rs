//! Telemetry access logging end to end: Istio YAML (a MeshConfig
//! `envoyFileAccessLog` provider with JSON labels, a mesh-wide Telemetry
//! selecting it with `filter.expression: response.code >= 500`) through
//! mesh-control to a gateway that is a real `mesh-proxy` process (stock
//! Envoy's acceptance of the same config is the golden test's
//! `access_log_telemetry` case). Requests that succeed leave no line; requests that fail
//! (a Service without endpoints: 503 UH) leave one line each, with the
//! response flags and upstream cluster.
//!
//! A second case gives two providers custom formats (a text
//! `logFormat.text` with `%TRACE_ID%` and the peer SAN operators, and JSON
//! `labels`) with tracing on: every request leaves one line in each file,
//! rendered from the format, the trace id being the one the client sent
//! in `traceparent`. The gateway's hops are plaintext here, so the SANs
//! print `-` (their values from mTLS records are asserted in the
//! formatter's unit tests), as does the upstream transport failure reason;
//! `%UPSTREAM_LOCAL_ADDRESS%` is the local end of the gateway's open
//! connection to the backend, as `/proc/net/tcp` lists it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::control_plane::ControlPlane;
use support::proxy_process::{ProxyProcess, RunFlags};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn mesh_yaml(log: &Path, port: u16, backend: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: errors
      envoyFileAccessLog:
        path: {log}
        logFormat:
          labels:
            response_code: "%RESPONSE_CODE%"
            response_flags: "%RESPONSE_FLAGS%"
            upstream_cluster: "%UPSTREAM_CLUSTER%"
            path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  accessLogging:
  - providers: [{{name: errors}}]
    filter:
      expression: "response.code >= 500"
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
apiVersion: v1
kind: Service
metadata: {{name: gone, namespace: default}}
spec:
  clusterIP: 10.96.32.11
  selector: {{app: gone}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: edge}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    bind: 127.0.32.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - match: [{{uri: {{prefix: /broken}}}}]
    route:
    - destination: {{host: gone.default.svc.cluster.local, port: {{number: 80}}}}
  - route:
    - destination: {{host: reviews.default.svc.cluster.local, port: {{number: 9080}}}}
"#,
        log = log.display()
    )
}

/// The log file's JSON lines.
fn lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// The `edge` gateway (pod `edge-0`, label `istio: edge`) configured by a
/// control plane from the YAML `mesh(port, backend_port)` returns, in
/// front of a `reviews` backend on 127.0.32.10; ready once it answers
/// `/ready` with 200 on `ip:port`. Everything stops on drop.
struct EdgeGateway {
    entry: SocketAddr,
    _proxy: ProxyProcess,
    _cp: ControlPlane,
    _config: tempfile::TempDir,
    backend: Backend,
}

impl EdgeGateway {
    async fn start(ip: [u8; 4], mesh: impl FnOnce(u16, u16) -> String) -> Self {
        let backend_port = free_port();
        let backend = Backend::serve(
            bind(None, &format!("127.0.32.10:{backend_port}")),
            "reviews",
            "v1",
        );
        let port = free_port();
        let config = tempfile::tempdir().unwrap();
        std::fs::write(config.path().join("mesh.yaml"), mesh(port, backend_port)).unwrap();
        let cp = ControlPlane::serve_loopback(config.path());
        let mut flags = RunFlags::gateway(cp.addr);
        let pod = flags.pod.as_mut().unwrap();
        pod.name = "edge-0".into();
        pod.labels = vec![("istio".into(), "edge".into())];
        let proxy = ProxyProcess::start(flags);
        cp.wait_synced(&proxy.flags.node_id(), WAIT).await;
        let entry = SocketAddr::from((ip, port));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let reply = try_send(&h1(), http::Method::GET, entry, "reviews", "/ready", &[]).await;
            if reply.as_ref().is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never answered 200: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            entry,
            _proxy: proxy,
            _cp: cp,
            _config: config,
            backend,
        }
    }
}

async fn only_failures_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("errors.log");
    let edge = EdgeGateway::start([127, 0, 32, 1], |port, backend| {
        mesh_yaml(&log, port, backend)
    })
    .await;
    let entry = edge.entry;
    for i in 0..5 {
        let ok = send(
            &h1(),
            http::Method::GET,
            entry,
            "reviews",
            &format!("/ok/{i}"),
            &[],
        )
        .await;
        assert_eq!(ok.status, 200);
    }
    for i in 0..3 {
        let broken = send(
            &h1(),
            http::Method::GET,
            entry,
            "reviews",
            &format!("/broken/{i}"),
            &[],
        )
        .await;
        assert_eq!(broken.status, 503);
    }
    let got = tokio::task::block_in_place(|| {
        mesh_test_support::wait_for(Duration::from_secs(10), || {
            let l = lines(&log);
            (l.len() >= 3).then_some(l)
        })
    })
    .unwrap_or_else(|| panic!("three failure lines never arrived: {:?}", lines(&log)));
    // Let a wrongly logged success arrive too before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = if lines(&log).len() > got.len() {
        lines(&log)
    } else {
        got
    };
    assert_eq!(got.len(), 3, "only the 503s are logged: {got:#?}");
    for (i, line) in got.iter().enumerate() {
        assert_eq!(line["response_code"], 503, "{line}");
        assert_eq!(line["response_flags"], "UH", "{line}");
        assert_eq!(
            line["upstream_cluster"], "outbound|80||gone.default.svc.cluster.local",
            "{line}"
        );
        assert_eq!(line["path"], format!("/broken/{i}"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_proxy_logs_only_what_the_telemetry_filter_selects() {
    only_failures_are_logged().await;
}

/// Two access log providers with custom formats and a tracing provider
/// (its collector is not listening: spans are made, export fails).
fn custom_formats_yaml(text_log: &Path, json_log: &Path, port: u16, backend: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: text
      envoyFileAccessLog:
        path: {text_log}
        logFormat:
          text: "%TRACE_ID% %DOWNSTREAM_PEER_URI_SAN% %UPSTREAM_PEER_URI_SAN% %RESPONSE_CODE% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_LOCAL_PORT% %UPSTREAM_TRANSPORT_FAILURE_REASON% %%"
    - name: json
      envoyFileAccessLog:
        path: {json_log}
        logFormat:
          labels:
            trace: "%TRACE_ID%"
            code: "%RESPONSE_CODE%"
            peer: "%DOWNSTREAM_PEER_URI_SAN%"
            upstream_peer: "%UPSTREAM_PEER_URI_SAN%"
            line: "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%"
            cluster: "%UPSTREAM_CLUSTER%"
    - name: otel
      opentelemetry: {{service: observability/otel.observability.svc.cluster.local, port: 4317}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: otel}}]
    randomSamplingPercentage: 100
  accessLogging:
  - providers: [{{name: text}}, {{name: json}}]
---
apiVersion: v1
kind: Service
metadata: {{name: otel, namespace: observability}}
spec:
  clusterIP: 10.96.32.19
  selector: {{app: otel}}
  ports: [{{name: grpc-otlp, port: 4317, targetPort: 4317}}]
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
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: edge}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    bind: 127.0.32.2
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route:
    - destination: {{host: reviews.default.svc.cluster.local, port: {{number: 9080}}}}
"#,
        text_log = text_log.display(),
        json_log = json_log.display(),
    )
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The local addresses of the established IPv4 TCP connections to `to`
/// (from `/proc/net/tcp`).
fn established_to(to: SocketAddr) -> Vec<SocketAddr> {
    // `0100007F:1F90`: the address's bytes as a native-endian integer.
    let addr = |s: &str| -> Option<SocketAddr> {
        let (ip, port) = s.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?.to_ne_bytes();
        Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
    };
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // State 01 is ESTABLISHED.
            let (local, remote) = (addr(f.get(1)?)?, addr(f.get(2)?)?);
            (remote == to && *f.get(3)? == "01").then_some(local)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_proxy_writes_custom_text_and_json_formats() {
    let dir = tempfile::tempdir().unwrap();
    let text_log = dir.path().join("text.log");
    let json_log = dir.path().join("json.log");
    let edge = EdgeGateway::start([127, 0, 32, 2], |port, backend| {
        custom_formats_yaml(&text_log, &json_log, port, backend)
    })
    .await;
    let entry = edge.entry;
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    for i in 0..3 {
        let ok = send(
            &h1(),
            http::Method::GET,
            entry,
            "reviews",
            &format!("/custom/{i}"),
            &[("traceparent", traceparent.as_str())],
        )
        .await;
        assert_eq!(ok.status, 200);
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/custom/"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (text, json) = tokio::task::block_in_place(|| {
        mesh_test_support::wait_for(Duration::from_secs(10), || {
            let (t, j) = (read(&text_log), read(&json_log));
            (t.len() >= 3 && j.len() >= 3).then_some((t, j))
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "three lines per format never arrived: text {:?}, json {:?}",
            read(&text_log),
            read(&json_log)
        )
    });
    // Envoy appends nothing to a text format; istiod (and mesh-control)
    // end `logFormat.text` with a newline, so there is one line each.
    let raw = std::fs::read_to_string(&text_log).unwrap();
    assert!(raw.ends_with("%\n"), "{raw:?}");
    let mut upstream_locals = Vec::new();
    for (i, line) in text.iter().enumerate() {
        // The upstream connection's local address and port, then `-` for
        // the transport failure reason (the connection was plaintext).
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 9, "{line}");
        let local: SocketAddr = fields[5]
            .parse()
            .unwrap_or_else(|e| panic!("UPSTREAM_LOCAL_ADDRESS is no ip:port in {line:?}: {e}"));
        assert!(local.ip().is_loopback() && local.port() != 0, "{line}");
        assert_eq!(fields[6], local.port().to_string(), "{line}");
        let rest = [&fields[..5], &fields[7..]].concat().join(" ");
        assert_eq!(rest, format!("{TRACE_ID} - - 200 /custom/{i} - %"));
        upstream_locals.push(local);
    }
    // The logged address is that of the proxy's (pooled, still open)
    // connection to the backend, as the kernel knows it.
    let open = established_to(edge.backend.addr);
    assert!(
        upstream_locals.iter().any(|a| open.contains(a)),
        "logged {upstream_locals:?}, connections to {} are from {open:?}",
        edge.backend.addr
    );
    for (i, line) in json.iter().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        assert_eq!(
            v,
            serde_json::json!({
                "trace": TRACE_ID,
                "code": 200,
                "peer": null,
                "upstream_peer": null,
                "line": format!("GET /custom/{i} HTTP/1.1"),
                "cluster": "outbound|9080||reviews.default.svc.cluster.local",
            }),
            "{line}"
        );
        // Keys in Envoy's (sorted) order.
        assert!(line.starts_with("{\"cluster\":"), "{line}");
    }
}
