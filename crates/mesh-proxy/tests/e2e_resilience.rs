//! Resilience end to end, through real binaries on both data planes: each
//! scenario is a config directory written as an Istio user writes it
//! (MeshConfig with `accessLogFile`, a Service with Pods, a Gateway, a
//! VirtualService and a DestinationRule) that mesh-control serves to the
//! ingress gateway, run once with the `mesh-proxy` binary and once with a
//! stock Envoy (`<scenario>_mesh_proxy`, `<scenario>_envoy`). Upstreams
//! fail on cue (mesh-echo's `delay=`, `fail_first=`, `fail_every=`,
//! `reset=`; an address nothing listens on; an endpoint the test turns
//! bad), and for every behaviour three things are asserted: what the
//! client got, the response flag of the access log line, and the counter
//! in `/stats/prometheus` (Envoy's cluster and fault counters on both
//! planes; Istio's `istio_requests_total{response_flags=...}` on
//! mesh-proxy, which stock Envoy has no stats filter for).
//!
//! All on loopback: each scenario's Pods on their own 127.0.5x.y addresses
//! sharing one port, the gateway on 127.0.0.1, mesh-control in process.
//! The scenarios run one at a time ([`SERIAL`]): they measure timeouts,
//! delays and ejection windows, which two shared cores running seven
//! proxies at once would blur.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, Version};
use support::control_plane::ControlPlane;
use support::resilience::{Gateway, LogLine, Plane, Switchable};
use support::*;

const HOST: &str = "app.example.com";
/// The cluster of the Service `app`, port 8080.
const CLUSTER: &str = "outbound|8080||app.default.svc.cluster.local";
const CLUSTER_LABEL: &str = r#"envoy_cluster_name="outbound|8080||app.default.svc.cluster.local""#;
/// Bound on one scenario on one data plane.
const SCENARIO: u64 = 150;

/// One scenario at a time (see the module doc).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Pod of the Service `app`.
struct Pod {
    name: &'static str,
    ip: &'static str,
    /// More labels, as YAML flow entries (`k: v, k: v`).
    labels: &'static str,
}

/// What a scenario's config directory says.
struct Scenario {
    pods: Vec<Pod>,
    /// The Pods' port (the Service's `targetPort`).
    pod_port: u16,
    /// The VirtualService's `http:` list, indented by two spaces.
    http: &'static str,
    /// The DestinationRule's `trafficPolicy` beyond `tls`, indented by
    /// four spaces (then, indented by two, any field of its `spec` after
    /// `trafficPolicy`, such as `subsets`).
    traffic_policy: &'static str,
    /// Labels of the gateway's pod beyond `istio: ingressgateway`.
    gateway_labels: &'static [(&'static str, &'static str)],
}

/// The gateway of one scenario on one plane, and what it runs on.
struct Run {
    gateway: Gateway,
    /// The Gateway server's address.
    listener: SocketAddr,
    client: HttpClient,
    _cp: ControlPlane,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// What one request got, and how long it took.
struct Answer {
    reply: Reply,
    elapsed: Duration,
}

/// The config directory's one file.
fn config(s: &Scenario, access_log: &str, gateway_port: u16) -> String {
    let mut out = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    accessLogFile: {access_log}
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: default}}
spec:
  clusterIP: 10.96.0.50
  selector: {{app: app}}
  ports: [{{name: http, port: 8080, targetPort: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: app-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/app-gateway]
  http:
{http}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app, namespace: default}}
spec:
  host: app
  trafficPolicy:
    tls: {{mode: DISABLE}}
{policy}
"#,
        port = s.pod_port,
        http = s.http,
        policy = s.traffic_policy,
    );
    for pod in &s.pods {
        let extra = if pod.labels.is_empty() {
            String::new()
        } else {
            format!(", {}", pod.labels)
        };
        out.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: app{extra}}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: {ip}}}
"#,
            name = pod.name,
            ip = pod.ip,
        ));
    }
    out
}

// === impl Run ===

impl Run {
    /// Serves `scenario` from mesh-control and starts the gateway of
    /// `plane` on it; returns once it routes.
    async fn start(plane: Plane, scenario: &Scenario) -> Self {
        let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config_dir = tempfile::tempdir().unwrap();
        let log_dir = tempfile::tempdir().unwrap();
        let access_log = log_dir.path().join("access.log");
        std::fs::write(
            config_dir.path().join("mesh.yaml"),
            config(scenario, &access_log.display().to_string(), listener.port()),
        )
        .unwrap();
        let cp = ControlPlane::serve_loopback(config_dir.path());
        assert_eq!(cp.config_errors(), 0, "the scenario's config is refused");
        let gateway = Gateway::start(
            plane,
            &cp,
            scenario.gateway_labels,
            &access_log,
            listener,
            HOST,
        )
        .await;
        Self {
            gateway,
            listener,
            client: h1(),
            _cp: cp,
            _dirs: (config_dir, log_dir),
        }
    }

    /// A GET of `path` through the gateway.
    async fn get(&self, path: &str) -> Answer {
        self.request(&self.client, Method::GET, path, &[]).await
    }

    async fn request(
        &self,
        client: &HttpClient,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let started = Instant::now();
        let reply = send(client, method, self.listener, HOST, path, headers).await;
        Answer {
            reply,
            elapsed: started.elapsed(),
        }
    }

    /// `name` of the Service's cluster.
    async fn cluster_counter(&self, name: &str) -> f64 {
        self.gateway.counter(name, &[CLUSTER_LABEL]).await
    }

    /// On mesh-proxy, waits (bounded) until `istio_requests_total` with
    /// `response_code` and `response_flags` reaches `n`, and fails unless it
    /// is exactly `n`; stock Envoy has no Istio stats filter.
    async fn assert_istio_requests(&self, code: u16, flags: &str, n: usize) {
        if self.gateway.plane != Plane::MeshProxy {
            return;
        }
        let code = format!("response_code=\"{code}\"");
        let flags_label = format!("response_flags=\"{flags}\"");
        let labels = [code.as_str(), flags_label.as_str()];
        let seen = eventually(Duration::from_secs(5), || async {
            let v = self.gateway.counter("istio_requests_total", &labels).await;
            (v >= n as f64).then_some(v)
        })
        .await;
        let v = self.gateway.counter("istio_requests_total", &labels).await;
        assert!(
            seen.is_some() && v == n as f64,
            "istio_requests_total{{{code},{flags_label}}} is {v}, want {n}:\n{}",
            self.gateway.admin_text("/stats/prometheus").await
        );
    }

    /// Fails with what the plane logged and counted.
    async fn context(&self) -> String {
        format!(
            "{} access log {:#?}\nprometheus:\n{}",
            self.gateway.plane.name(),
            self.gateway.access_log(),
            self.gateway.admin_text("/stats/prometheus").await
        )
    }
}

/// The flags of `lines`, each once, sorted.
fn flags(lines: &[LogLine]) -> Vec<String> {
    let mut f: Vec<String> = lines.iter().map(|l| l.flags.clone()).collect();
    f.sort();
    f.dedup();
    f
}

/// The `x-echo-name` of an answer.
fn answered_by(answer: &Answer) -> String {
    answer
        .reply
        .headers
        .get("x-echo-name")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Serves mesh-echo as Pod `name` on `ip`:`port`.
fn echo_pod(ip: &str, port: u16, name: &str) -> Backend {
    Backend::serve(bind(None, &format!("{ip}:{port}")), name, "v1")
}

/// Declares `<scenario>_mesh_proxy` and `<scenario>_envoy`, one scenario at
/// a time, each bounded.
macro_rules! on_both_planes {
    ($scenario:ident, $mesh_proxy:ident, $envoy:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mesh_proxy() {
            let _one = SERIAL.lock().await;
            bounded(SCENARIO, $scenario(Plane::MeshProxy)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $envoy() {
            let _one = SERIAL.lock().await;
            bounded(SCENARIO, $scenario(Plane::Envoy)).await;
        }
    };
}

// === 1. Route timeout ===

on_both_planes!(route_timeout, route_timeout_mesh_proxy, route_timeout_envoy);

/// VirtualService `timeout: 200ms` to a backend delaying 1 s: 504 after
/// about 200 ms, flag UT, `upstream_rq_timeout`.
async fn route_timeout(plane: Plane) {
    let port = free_port();
    let _app = echo_pod("127.0.51.1", port, "app-0");
    let scenario = Scenario {
        pods: vec![Pod {
            name: "app-0",
            ip: "127.0.51.1",
            labels: "",
        }],
        pod_port: port,
        http: "  - timeout: 200ms\n    route:\n    - destination: {host: app}",
        traffic_policy: "",
        gateway_labels: &[],
    };
    let run = Run::start(plane, &scenario).await;
    let n = 3;
    for _ in 0..n {
        let a = run.get("/slow?delay=1s").await;
        assert_eq!(a.reply.status, 504, "{plane:?}: {:?}", a.reply);
        assert_eq!(a.reply.text(), "upstream request timeout");
        assert!(
            a.elapsed >= Duration::from_millis(180) && a.elapsed < Duration::from_millis(900),
            "{plane:?}: answered after {:?}",
            a.elapsed
        );
    }
    let lines = run.gateway.wait_log("/slow", n).await;
    assert!(
        lines.iter().all(|l| l.status == 504 && l.flags == "UT"),
        "{plane:?}: {lines:#?}"
    );
    let timeouts = run
        .cluster_counter("envoy_cluster_upstream_rq_timeout")
        .await;
    assert_eq!(timeouts, n as f64, "{}", run.context().await);
    run.assert_istio_requests(504, "UT", n).await;
}

// === 2. Retries on 5xx ===

on_both_planes!(
    retries_on_5xx,
    retries_on_5xx_mesh_proxy,
    retries_on_5xx_envoy
);

/// `retries: {attempts: 3, retryOn: 5xx}`: a backend failing every other
/// request is invisible to clients, one retry each; one failing four times
/// in a row exhausts the retries once (503, URX), then answers.
async fn retries_on_5xx(plane: Plane) {
    let port = free_port();
    let app = echo_pod("127.0.52.1", port, "app-0");
    let scenario = Scenario {
        pods: vec![Pod {
            name: "app-0",
            ip: "127.0.52.1",
            labels: "",
        }],
        pod_port: port,
        http: "  - retries: {attempts: 3, retryOn: 5xx}\n    route:\n    - destination: {host: app}",
        traffic_policy: "",
        gateway_labels: &[],
    };
    let run = Run::start(plane, &scenario).await;
    let retries = || run.cluster_counter("envoy_cluster_upstream_rq_retry");
    let before = retries().await;
    let n = 20;
    for _ in 0..n {
        let a = run.get("/flaky?fail_every=2").await;
        assert_eq!(a.reply.status, 200, "{plane:?}: {:?}", a.reply);
    }
    assert_eq!(
        app.seen("/flaky").len(),
        2 * n,
        "each request took two attempts"
    );
    let lines = run.gateway.wait_log("/flaky", n).await;
    assert!(
        lines.iter().all(|l| l.status == 200 && l.flags == "-"),
        "{plane:?}: {lines:#?}"
    );
    let moved = retries().await - before;
    assert_eq!(
        moved,
        n as f64,
        "one retry per request\n{}",
        run.context().await
    );
    run.assert_istio_requests(200, "-", n + 1).await;

    // Four failures in a row: the first request's four attempts all fail.
    let before = retries().await;
    let a = run.get("/exhausted?fail_first=4").await;
    assert_eq!(a.reply.status, 503, "{plane:?}: {:?}", a.reply);
    let a = run.get("/exhausted?fail_first=4").await;
    assert_eq!(a.reply.status, 200, "{plane:?}: {:?}", a.reply);
    assert_eq!(app.seen("/exhausted").len(), 5);
    let lines = run.gateway.wait_log("/exhausted", 2).await;
    assert_eq!(
        lines
            .iter()
            .map(|l| (l.status, l.flags.as_str()))
            .collect::<Vec<_>>(),
        [(503, "URX"), (200, "-")],
        "{plane:?}"
    );
    assert_eq!(retries().await - before, 3.0, "{}", run.context().await);
    run.assert_istio_requests(503, "URX", 1).await;
}

// === 2b. Per-try timeout ===

on_both_planes!(
    per_try_timeout,
    per_try_timeout_mesh_proxy,
    per_try_timeout_envoy
);

/// `perTryTimeout: 200ms` against a backend whose every other answer takes
/// 1 s: each slow attempt is cut after 200 ms and retried, so every client
/// request succeeds well before the slow answer would have come.
async fn per_try_timeout(plane: Plane) {
    let port = free_port();
    let app = echo_pod("127.0.53.1", port, "app-0");
    let scenario = Scenario {
        pods: vec![Pod {
            name: "app-0",
            ip: "127.0.53.1",
            labels: "",
        }],
        pod_port: port,
        http: "  - retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}\n    route:\n    - destination: {host: app}",
        traffic_policy: "",
        gateway_labels: &[],
    };
    let run = Run::start(plane, &scenario).await;
    let retries = || run.cluster_counter("envoy_cluster_upstream_rq_retry");
    let per_try = || run.cluster_counter("envoy_cluster_upstream_rq_per_try_timeout");
    let (retries_before, per_try_before) = (retries().await, per_try().await);
    let n = 3;
    for _ in 0..n {
        let a = run.get("/slow-then-fast?fail_every=2&delay=1s").await;
        assert_eq!(a.reply.status, 200, "{plane:?}: {:?}", a.reply);
        assert!(
            a.elapsed >= Duration::from_millis(180) && a.elapsed < Duration::from_millis(900),
            "{plane:?}: answered after {:?}",
            a.elapsed
        );
    }
    // Only the fast attempts finish (and are logged by the echo).
    assert_eq!(app.seen("/slow-then-fast").len(), n);
    let lines = run.gateway.wait_log("/slow-then-fast", n).await;
    assert!(
        lines.iter().all(|l| l.status == 200 && l.flags == "-"),
        "{plane:?}: {lines:#?}"
    );
    let context = run.context().await;
    assert_eq!(retries().await - retries_before, n as f64, "{context}");
    assert_eq!(per_try().await - per_try_before, n as f64, "{context}");
}

// === 3. Connect failures and resets ===

on_both_planes!(
    connect_failure_and_reset,
    connect_failure_and_reset_mesh_proxy,
    connect_failure_and_reset_envoy
);

/// Two Pods, one of which refuses connections (nothing listens on its
/// IP), the other resetting every other connection on `/reset`:
/// `retryOn: connect-failure,reset` hides both from clients; without
/// retries the client sees 503 with UF (refused) or UC (reset).
async fn connect_failure_and_reset(plane: Plane) {
    let port = free_port();
    let live = echo_pod("127.0.54.1", port, "app-live");
    let scenario = Scenario {
        pods: vec![
            Pod {
                name: "app-live",
                ip: "127.0.54.1",
                labels: "version: live",
            },
            Pod {
                name: "app-refusing",
                ip: "127.0.54.2",
                labels: "version: refusing",
            },
        ],
        pod_port: port,
        http: "  - match: [{uri: {prefix: /bare}}]
    retries: {attempts: 0}
    route:
    - destination: {host: app}
  - match: [{uri: {prefix: /reset}}]
    retries: {attempts: 3, retryOn: \"connect-failure,reset\"}
    route:
    - destination: {host: app, subset: live}
  - retries: {attempts: 3, retryOn: \"connect-failure,reset\"}
    route:
    - destination: {host: app}",
        // Resets are counted on the live endpoint alone.
        traffic_policy: "  subsets:\n  - {name: live, labels: {version: live}}",
        gateway_labels: &[],
    };
    let run = Run::start(plane, &scenario).await;
    let retries = || run.cluster_counter("envoy_cluster_upstream_rq_retry");
    let refused = || run.cluster_counter("envoy_cluster_upstream_cx_connect_fail");

    // Refused connections, retried on the other endpoint.
    let (r0, f0) = (retries().await, refused().await);
    let n = 20;
    for _ in 0..n {
        let a = run.get("/refused").await;
        assert_eq!(a.reply.status, 200, "{plane:?}: {:?}", a.reply);
        assert_eq!(answered_by(&a), "app-live");
    }
    let (r1, f1) = (retries().await, refused().await);
    let context = run.context().await;
    assert!(
        f1 - f0 >= 1.0,
        "no connection was refused in {n}: {context}"
    );
    assert_eq!(
        r1 - r0,
        f1 - f0,
        "one retry per refused connection: {context}"
    );
    let lines = run.gateway.wait_log("/refused", n).await;
    assert!(
        lines.iter().all(|l| l.status == 200 && l.flags == "-"),
        "{plane:?}: {lines:#?}"
    );

    // Resets: the live endpoint closes every other connection unanswered.
    const LIVE: &str = r#"envoy_cluster_name="outbound|8080|live|app.default.svc.cluster.local""#;
    let live_retries = || {
        run.gateway
            .counter("envoy_cluster_upstream_rq_retry", &[LIVE])
    };
    let r1 = live_retries().await;
    let n = 20;
    for _ in 0..n {
        let a = run.get("/reset?reset=1&fail_every=2").await;
        assert_eq!(a.reply.status, 200, "{plane:?}: {:?}", a.reply);
    }
    assert_eq!(live.seen("/reset").len(), n, "every request answered once");
    let r2 = live_retries().await;
    assert_eq!(
        r2 - r1,
        n as f64,
        "a retry per reset: {}",
        run.context().await
    );
    let lines = run.gateway.wait_log("/reset", n).await;
    assert!(
        lines.iter().all(|l| l.status == 200 && l.flags == "-"),
        "{plane:?}: {lines:#?}"
    );

    // No retries: each failure reaches the client, with its flag (the
    // balancer picks either endpoint; both show up in 16 requests but
    // once in 30,000 runs).
    let sent = 16;
    for _ in 0..sent {
        let a = run.get("/bare?reset=1").await;
        assert_eq!(a.reply.status, 503, "{plane:?}: {:?}", a.reply);
    }
    let lines = run.gateway.wait_log("/bare", sent).await;
    let count = |flag: &str| lines.iter().filter(|l| l.flags == flag).count();
    let reset = count("UC");
    assert!(
        lines.iter().all(|l| l.status == 503),
        "{plane:?}: {lines:#?}"
    );
    assert!(
        reset > 0 && count("UF") > 0 && reset + count("UF") == sent,
        "{plane:?}: resets are UC, refusals UF: {lines:#?}"
    );
    run.assert_istio_requests(503, "UC", reset).await;
    run.assert_istio_requests(503, "UF", sent - reset).await;
}

// === 4. Fault injection ===

on_both_planes!(
    fault_injection,
    fault_injection_mesh_proxy,
    fault_injection_envoy
);

/// Abort 503 at 50 %: the share of aborts within the 99.9 % binomial
/// interval, flag FI, the filter's `aborts_injected`; a fixed 300 ms delay
/// at 100 %: every answer after 300 ms, flag DI, `delays_injected`; a gRPC
/// abort: `grpc-status: 14` in an HTTP 200.
async fn fault_injection(plane: Plane) {
    let port = free_port();
    let app = echo_pod("127.0.55.1", port, "app-0");
    let scenario = Scenario {
        pods: vec![Pod {
            name: "app-0",
            ip: "127.0.55.1",
            labels: "",
        }],
        pod_port: port,
        http: "  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    route:
    - destination: {host: app}
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
    route:
    - destination: {host: app}
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route:
    - destination: {host: app}
  - route:
    - destination: {host: app}",
        traffic_policy: "",
        gateway_labels: &[],
    };
    let run = Run::start(plane, &scenario).await;

    let n = 400;
    let mut aborted = 0;
    for _ in 0..n {
        let a = run.get("/abort").await;
        match a.reply.status.as_u16() {
            503 => {
                assert_eq!(a.reply.text(), "fault filter abort");
                aborted += 1;
            }
            200 => {}
            other => panic!("{plane:?}: /abort answered {other}"),
        }
    }
    let share = aborted as f64 / n as f64;
    let (lo, hi) = binomial_bounds(0.5, n);
    assert!(
        (lo..=hi).contains(&share),
        "{plane:?}: abort share {share} outside [{lo:.3}, {hi:.3}]"
    );
    assert_eq!(
        app.seen("/abort").len(),
        n - aborted,
        "aborts never reach the app"
    );
    let lines = run.gateway.wait_log("/abort", n).await;
    let fi = lines
        .iter()
        .filter(|l| l.status == 503 && l.flags == "FI")
        .count();
    let ok = lines
        .iter()
        .filter(|l| l.status == 200 && l.flags == "-")
        .count();
    assert_eq!(
        (fi, ok),
        (aborted, n - aborted),
        "{plane:?}: {:?}",
        flags(&lines)
    );
    run.assert_istio_requests(503, "FI", aborted).await;

    let delays = 5;
    for _ in 0..delays {
        let a = run.get("/delay").await;
        assert_eq!(a.reply.status, 200, "{plane:?}: {:?}", a.reply);
        assert!(
            // Envoy's timer fires up to a millisecond early.
            a.elapsed >= Duration::from_millis(295),
            "{plane:?}: delayed only {:?}",
            a.elapsed
        );
    }
    let lines = run.gateway.wait_log("/delay", delays).await;
    assert!(
        lines.iter().all(|l| l.status == 200 && l.flags == "DI"),
        "{plane:?}: {lines:#?}"
    );
    run.assert_istio_requests(200, "DI", delays).await;

    let grpc = client(Version::HTTP_2);
    let a = run
        .request(
            &grpc,
            Method::POST,
            "/grpc.health.v1.Health/Check",
            &[("content-type", "application/grpc"), ("te", "trailers")],
        )
        .await;
    assert_eq!(a.reply.status, 200, "{plane:?}: {:?}", a.reply);
    assert_eq!(
        a.reply
            .headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("14"),
        "{plane:?}: {:?}",
        a.reply
    );
    let lines = run.gateway.wait_log("/grpc", 1).await;
    assert_eq!(lines[0].flags, "FI", "{plane:?}: {lines:#?}");

    // Envoy counts in the fault filter, per connection manager; the
    // Istio counters above are mesh-proxy's.
    if plane == Plane::Envoy {
        let context = run.context().await;
        let aborts = run.gateway.counter_ending("_fault_aborts_injected").await;
        assert_eq!(aborts, (aborted + 1) as f64, "{context}");
        let delayed = run.gateway.counter_ending("_fault_delays_injected").await;
        assert_eq!(delayed, delays as f64, "{context}");
    }
}

// === 5. Circuit breaking ===

on_both_planes!(
    circuit_breaking,
    circuit_breaking_mesh_proxy,
    circuit_breaking_envoy
);

/// One connection, one pending request, one request per connection: of
/// ten concurrent slow requests one is served, one waits its turn, and the
/// rest are refused at once with 503, `x-envoy-overloaded: true`, flag UO
/// and `upstream_rq_pending_overflow`.
async fn circuit_breaking(plane: Plane) {
    let port = free_port();
    let _app = echo_pod("127.0.56.1", port, "app-0");
    let scenario = Scenario {
        pods: vec![Pod {
            name: "app-0",
            ip: "127.0.56.1",
            labels: "",
        }],
        pod_port: port,
        http: "  - retries: {attempts: 0}\n    route:\n    - destination: {host: app}",
        traffic_policy: "    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}",
        gateway_labels: &[],
    };
    let run = std::sync::Arc::new(Run::start(plane, &scenario).await);
    let n = 10;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let run = run.clone();
            tokio::spawn(async move { run.get("/slow?delay=1s").await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let served = answers.iter().filter(|a| a.reply.status == 200).count();
    let overloaded: Vec<&Answer> = answers.iter().filter(|a| a.reply.status == 503).collect();
    assert_eq!(served + overloaded.len(), n, "{plane:?}: only 200 and 503");
    assert!(
        (1..=2).contains(&served),
        "{plane:?}: {served} served, want the active one and the pending one"
    );
    for a in &overloaded {
        assert_eq!(
            a.reply
                .headers
                .get("x-envoy-overloaded")
                .map(|v| v.to_str().unwrap()),
            Some("true"),
            "{plane:?}: {:?}",
            a.reply
        );
        assert!(
            a.elapsed < Duration::from_millis(500),
            "{plane:?}: refused only after {:?}",
            a.elapsed
        );
    }
    let lines = run.gateway.wait_log("/slow", n).await;
    let uo = lines
        .iter()
        .filter(|l| l.status == 503 && l.flags == "UO")
        .count();
    assert_eq!(uo, overloaded.len(), "{plane:?}: {lines:#?}");
    let overflow = run
        .cluster_counter("envoy_cluster_upstream_rq_pending_overflow")
        .await;
    assert_eq!(overflow, overloaded.len() as f64, "{}", run.context().await);
    run.assert_istio_requests(503, "UO", overloaded.len()).await;
}

// === 6. Outlier detection ===

on_both_planes!(
    outlier_ejection,
    outlier_ejection_mesh_proxy,
    outlier_ejection_envoy
);

/// Three endpoints, one answering 503 from some point on: after a 5xx it
/// is ejected (`/clusters` shows `failed_outlier_check`, the ejection
/// counters move), the next 100 requests all succeed on the other two,
/// and after `baseEjectionTime` it gets traffic again.
async fn outlier_ejection(plane: Plane) {
    let port = free_port();
    let at = |ip: [u8; 4]| SocketAddr::from((ip, port));
    let good_a = Switchable::serve(at([127, 0, 57, 1]), "app-a");
    let good_b = Switchable::serve(at([127, 0, 57, 2]), "app-b");
    let bad = Switchable::serve(at([127, 0, 57, 3]), "app-c");
    let scenario = Scenario {
        pods: vec![
            Pod {
                name: "app-a",
                ip: "127.0.57.1",
                labels: "",
            },
            Pod {
                name: "app-b",
                ip: "127.0.57.2",
                labels: "",
            },
            Pod {
                name: "app-c",
                ip: "127.0.57.3",
                labels: "",
            },
        ],
        pod_port: port,
        http: "  - retries: {attempts: 0}\n    route:\n    - destination: {host: app}",
        traffic_policy: "    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3s
      maxEjectionPercent: 100",
        gateway_labels: &[],
    };
    let run = Run::start(plane, &scenario).await;
    bad.set_status(503);

    let ejected = wait_ejected(&run, &bad).await;
    let context = run.context().await;
    // What `meshctl proxy-config endpoint` reads for its OUTLIER CHECK column.
    let json = run.gateway.admin_text("/clusters?format=json").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let failed: Vec<String> = json["cluster_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["host_statuses"].as_array().into_iter().flatten())
        .filter(|h| h["health_status"]["failed_outlier_check"] == true)
        .map(|h| h["address"]["socket_address"]["address"].to_string())
        .collect();
    assert_eq!(
        failed,
        vec!["\"127.0.57.3\"".to_string()],
        "{plane:?}: {json}"
    );
    let enforced = run
        .cluster_counter("envoy_cluster_outlier_detection_ejections_enforced_total")
        .await;
    assert!(enforced >= 1.0, "no enforced ejection counted: {context}");
    let active = run
        .cluster_counter("envoy_cluster_outlier_detection_ejections_active")
        .await;
    assert_eq!(active, 1.0, "{context}");

    let hits = bad.hits();
    for i in 0..100 {
        let a = run.get(&format!("/after-ejection/{i}")).await;
        assert_eq!(
            a.reply.status,
            200,
            "{plane:?}: request {i} after the ejection ({:?} since): {:?}",
            ejected.elapsed(),
            a.reply
        );
    }
    assert_eq!(bad.hits(), hits, "the ejected endpoint got traffic");
    assert!(
        good_a.hits() > 0 && good_b.hits() > 0,
        "both good endpoints serve"
    );
    let lines = run.gateway.wait_log("/after-ejection", 100).await;
    assert!(
        lines.iter().all(|l| l.status == 200 && l.flags == "-"),
        "{plane:?}: {:?}",
        flags(&lines)
    );

    // Back after baseEjectionTime: it is sent requests again.
    let back = eventually(Duration::from_secs(20), || async {
        let _ = run.get("/probe").await;
        (bad.hits() > hits).then(|| ejected.elapsed())
    })
    .await;
    let Some(after) = back else {
        panic!(
            "{plane:?}: the ejected endpoint never got traffic again:\n{}",
            run.gateway.admin_text("/clusters").await
        );
    };
    assert!(
        after >= Duration::from_millis(2500),
        "{plane:?}: back after only {after:?}, baseEjectionTime is 3s"
    );
}

/// Sends requests until `/clusters` shows `host` ejected (bounded); when.
async fn wait_ejected(run: &Run, host: &Switchable) -> Instant {
    let ejected = eventually(Duration::from_secs(10), || async {
        let _ = run.get("/before-ejection").await;
        let flags = run.gateway.health_flags(CLUSTER, host.addr).await?;
        flags.contains("failed_outlier_check").then(Instant::now)
    })
    .await;
    match ejected {
        Some(at) => at,
        None => panic!(
            "{}: {} never ejected:\n{}\n{}",
            run.gateway.plane.name(),
            host.addr,
            run.gateway.admin_text("/clusters").await,
            run.context().await
        ),
    }
}

// === 7. Locality failover ===

on_both_planes!(
    locality_failover,
    locality_failover_mesh_proxy,
    locality_failover_envoy
);

/// Endpoints in two zones of one region, the gateway in `r1/z1`,
/// `localityLbSetting` with outlier detection: traffic stays in the
/// gateway's zone; once its endpoint fails and is ejected, it spills to
/// the other zone.
async fn locality_failover(plane: Plane) {
    let port = free_port();
    let local = Switchable::serve(SocketAddr::from(([127, 0, 58, 1], port)), "app-z1");
    let remote = Switchable::serve(SocketAddr::from(([127, 0, 58, 2], port)), "app-z2");
    let scenario = Scenario {
        pods: vec![
            Pod {
                name: "app-z1",
                ip: "127.0.58.1",
                labels: "topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1",
            },
            Pod {
                name: "app-z2",
                ip: "127.0.58.2",
                labels: "topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z2",
            },
        ],
        pod_port: port,
        http: "  - retries: {attempts: 0}\n    route:\n    - destination: {host: app}",
        traffic_policy: "    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting: {enabled: true}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100",
        gateway_labels: &[("istio-locality", "r1.z1")],
    };
    let run = Run::start(plane, &scenario).await;

    for _ in 0..20 {
        let a = run.get("/in-zone").await;
        assert_eq!(a.reply.status, 200, "{plane:?}: {:?}", a.reply);
        assert_eq!(
            answered_by(&a),
            "app-z1",
            "{plane:?}: traffic left the gateway's zone:\n{}",
            run.gateway.admin_text("/clusters").await
        );
    }
    assert_eq!(remote.hits(), 0, "{plane:?}: the other zone got traffic");

    local.set_status(503);
    wait_ejected(&run, &local).await;
    let enforced = run
        .cluster_counter("envoy_cluster_outlier_detection_ejections_enforced_total")
        .await;
    assert!(enforced >= 1.0, "{}", run.context().await);
    for _ in 0..20 {
        let a = run.get("/spilled").await;
        assert_eq!(a.reply.status, 200, "{plane:?}: {:?}", a.reply);
        assert_eq!(answered_by(&a), "app-z2", "{plane:?}: not failed over");
    }
    let lines = run.gateway.wait_log("/spilled", 20).await;
    assert!(
        lines.iter().all(|l| l.status == 200 && l.flags == "-"),
        "{plane:?}: {lines:#?}"
    );
}
