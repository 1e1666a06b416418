//! Istio's metrics as a real Prometheus sees them: the local mesh's
//! sidecars scraped at their status port (the merged `/stats/prometheus`,
//! targets from the `file_sd` file `local up` writes), known traffic sent
//! from the client, and PromQL answers checked against it.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, which
//! `.ci/run` installs): under `CI=true` a missing binary fails the test,
//! elsewhere it is skipped with a message.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_test_support::netns::run_bounded;
use mesh_test_support::wait_for;

use super::{LIMIT, Mesh, text};

/// Requests to v2 (header `x-version: v2`), to v1 (no header), and aborted
/// by the client's sidecar with 503 (`x-fail: "1"`, a fault).
const TO_V2: usize = 7;
const TO_V1: usize = 5;
const ABORTED: usize = 3;

const ROUTING: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-fail: {exact: \"1\"}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
";

/// Telemetry metrics overrides for every workload of the namespace: the
/// servers stop reporting request sizes, every request count gains the
/// method and loses the protocol (Istio's `tagOverrides`).
const OVERRIDES: &str = "\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: metrics, namespace: default}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_SIZE, mode: SERVER}
      disabled: true
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_method: {value: request.method}
        request_protocol: {operation: REMOVE}
";

/// The Prometheus binary, or `None` (skip) when it is missing outside CI.
fn prometheus_binary() -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_string());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus is not installed (Debian package `prometheus`; .ci/run installs it)"
        );
        eprintln!("SKIPPED: prometheus is not installed (apt-get install prometheus)");
    }
    found
}

/// A Prometheus server, killed by PID on drop; its TSDB in a temp dir.
struct Prometheus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes the pods in `targets_file` and mesh-control at `control`.
    fn start(binary: &str, targets_file: &std::path::Path, control: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: kubernetes-pods\n  \
                   file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]\n\
                 - job_name: istiod\n  \
                   static_configs: [{{targets: ['{control}']}}]\n",
                targets_file.display()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            address,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with `query` (URL-encoded); the `data` field.
    fn api(&self, path: &str, query: Option<&str>) -> Option<serde_json::Value> {
        let mut command = Command::new("curl");
        command.args(["-s", "--max-time", "5", "-G"]);
        if let Some(q) = query {
            command.arg("--data-urlencode").arg(format!("query={q}"));
        }
        command.arg(format!("http://{}/api/v1/{path}", self.address));
        let out = run_bounded(&mut command, LIMIT);
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// The vector answer of `query`: (labels, value) per series.
    fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let Some(data) = self.api("query", Some(query)) else {
            return Vec::new();
        };
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok());
                (r["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The single value of `query`, or `None` when it has no series.
    fn scalar(&self, query: &str) -> Option<f64> {
        self.query(query).first().map(|(_, v)| *v)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both sides of every request between the sidecars (mutual TLS, with
/// Istio's peer metadata exchange), as Istio reports them.
#[test]
fn a_real_prometheus_scraping_the_status_ports_answers_promql_with_the_traffic_sent() {
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let mesh = Mesh::new();
    std::fs::write(mesh.config.path().join("routing.yaml"), ROUTING).unwrap();
    std::fs::write(mesh.config.path().join("telemetry.yaml"), OVERRIDES).unwrap();
    let up = mesh.up_with(&["--no-gateway"]);
    assert!(
        up.status.success(),
        "local up failed: {}\n{}",
        text(&up.stdout),
        text(&up.stderr)
    );
    let targets_file = mesh.run_dir.path().join("prometheus/targets.json");
    let targets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&targets_file).unwrap()).unwrap();
    let pods: Vec<&str> = targets
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["labels"]["pod"].as_str())
        .collect();
    assert!(
        pods.iter().any(|p| p.starts_with("reviews-v2")) && pods.contains(&"client"),
        "{targets}"
    );
    assert!(
        text(&up.stdout).contains("Prometheus scrape config"),
        "{}",
        text(&up.stdout)
    );

    let codes = mesh.in_client(&format!(
        "for i in $(seq {TO_V2}); do curl -s -o /dev/null -w '%{{http_code}} v2\\n' --max-time 5 -H 'x-version: v2' http://reviews:9080/; done; \
         for i in $(seq {TO_V1}); do curl -s -o /dev/null -w '%{{http_code}} v1\\n' --max-time 5 http://reviews:9080/; done; \
         for i in $(seq {ABORTED}); do curl -s -o /dev/null -w '%{{http_code}} fail\\n' --max-time 5 -H 'x-fail: 1' http://reviews:9080/; done"
    ));
    let count = |line: &str| codes.lines().filter(|l| *l == line).count();
    assert_eq!(
        (count("200 v2"), count("200 v1"), count("503 fail")),
        (TO_V2, TO_V1, ABORTED),
        "{codes}"
    );

    // The whole config `up` wrote is one Prometheus accepts.
    let promtool = std::path::Path::new(&binary).with_file_name("promtool");
    if promtool.is_file() {
        let config = mesh.run_dir.path().join("prometheus/prometheus.yml");
        let check = run_bounded(
            Command::new(&promtool)
                .arg("check")
                .arg("config")
                .arg(&config),
            LIMIT,
        );
        assert!(
            check.status.success(),
            "{}{}",
            text(&check.stdout),
            text(&check.stderr)
        );
    }

    let control = mesh.state()["monitoring"]
        .as_str()
        .expect("mesh-control's monitoring address in state.json")
        .to_string();
    let prometheus = Prometheus::start(&binary, &targets_file, &control);
    let v2 =
        r#"sum(istio_requests_total{reporter="destination",destination_workload="reviews-v2"})"#;
    let scraped = wait_for(Duration::from_secs(60), || {
        (prometheus.scalar(v2) == Some(TO_V2 as f64)
            && prometheus.scalar(
                r#"sum(istio_requests_total{reporter="destination",destination_workload="reviews-v1"})"#,
            ) == Some(TO_V1 as f64)
            && prometheus.query(r#"up{job="kubernetes-pods"} == 1"#).len() == 3
            && prometheus.scalar(
                r#"sum(istio_requests_total{reporter="source",source_workload="client",response_code="503"})"#,
            ) == Some(ABORTED as f64))
        .then_some(())
    });
    assert!(
        scraped.is_some(),
        "Prometheus never saw the traffic: {v2} = {:?}\nall: {:?}\ntargets: {:?}\n{}",
        prometheus.query(v2),
        prometheus.query("sum by (reporter, source_workload, destination_workload, response_code) (istio_requests_total)"),
        prometheus.api("targets", None),
        prometheus.log()
    );

    // Every sidecar target is up: the merged text parsed.
    let up_targets = prometheus.query(r#"up{job="kubernetes-pods"}"#);
    assert!(
        up_targets.len() == 3 && up_targets.iter().all(|(_, v)| *v == 1.0),
        "{up_targets:?}"
    );

    // Destination side: v1 and v2 counted apart, all 200.
    let by_workload = |policy: &str| {
        let mut got: Vec<(String, String, f64)> = prometheus
            .query(&format!(
                r#"sum by (destination_workload, response_code) (istio_requests_total{{reporter="destination",destination_service_name="reviews"{policy}}})"#
            ))
            .iter()
            .map(|(m, v)| {
                let label = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                (label("destination_workload"), label("response_code"), *v)
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        got
    };
    let expected = vec![
        ("reviews-v1".to_string(), "200".to_string(), TO_V1 as f64),
        ("reviews-v2".to_string(), "200".to_string(), TO_V2 as f64),
    ];
    assert_eq!(by_workload(""), expected);
    // Every request between the sidecars went over mutual TLS, and the
    // destination knows who sent it: the client's workload from the
    // metadata exchange, its SPIFFE id from its certificate.
    assert_eq!(
        by_workload(
            r#",connection_security_policy="mutual_tls",source_workload="client",source_app="client",source_principal=~"spiffe://cluster.local/ns/default/sa/.+",destination_principal=~"spiffe://cluster.local/ns/default/sa/.+""#
        ),
        expected,
        "{:?}",
        prometheus.query(
            r#"sum by (connection_security_policy, source_workload, source_app, source_principal, destination_principal) (istio_requests_total{reporter="destination"})"#
        )
    );

    // Source side: the client's sidecar reports every request, naming
    // the reviews service, with the aborted ones as 503.
    let source = prometheus.query(
        r#"sum by (response_code, destination_service) (istio_requests_total{reporter="source",source_workload="client"})"#,
    );
    let value = |code: &str| {
        source
            .iter()
            .find(|(m, _)| m["response_code"] == code)
            .map(|(m, v)| (m["destination_service"].clone(), *v))
    };
    let (service_503, aborted) = value("503").expect("source-reported 503s");
    assert_eq!(aborted, ABORTED as f64, "{source:?}");
    assert!(
        service_503
            .as_str()
            .is_some_and(|s| s.starts_with("reviews")),
        "{source:?}"
    );
    let (service_200, ok) = value("200").expect("source-reported 200s");
    assert_eq!(
        service_200, "reviews.default.svc.cluster.local",
        "{source:?}"
    );
    // As Istio: every request the client sent is reported, the aborted
    // ones naming the service's FQDN too.
    assert_eq!(ok, (TO_V1 + TO_V2) as f64, "{source:?}");
    assert_eq!(
        service_503, "reviews.default.svc.cluster.local",
        "{source:?}"
    );
    // The source knows which workload answered (the exchange's response
    // headers) and its identity (the server certificate); aborted requests
    // never left, so their destination stays unknown.
    let answered_by = |workload: &str| {
        prometheus.scalar(&format!(
            r#"sum(istio_requests_total{{reporter="source",source_workload="client",destination_workload="{workload}",destination_principal=~"spiffe://.+",connection_security_policy="unknown"}})"#
        ))
    };
    assert_eq!(
        (answered_by("reviews-v1"), answered_by("reviews-v2"), answered_by("unknown")),
        (Some(TO_V1 as f64), Some(TO_V2 as f64), None),
        "{:?}",
        prometheus.query(
            r#"sum by (destination_workload, destination_principal, response_code) (istio_requests_total{reporter="source"})"#
        )
    );

    // The latency histogram is there for the dashboards' quantiles.
    let p99 = prometheus.scalar(
        r#"histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{reporter="destination",destination_workload="reviews-v2"}[1m])))"#,
    );
    let buckets = prometheus.scalar(
        r#"sum(istio_request_duration_milliseconds_count{reporter="destination",destination_workload="reviews-v2"})"#,
    );
    assert_eq!(buckets, Some(TO_V2 as f64), "p99 {p99:?}");

    // The Telemetry overrides, as the scrape shows them. Request sizes:
    // only the clients' sidecars report them.
    let sizes = |reporter: &str| {
        prometheus.scalar(&format!(
            r#"sum(istio_request_bytes_count{{reporter="{reporter}"}})"#
        ))
    };
    assert_eq!(
        (sizes("source"), sizes("destination")),
        (Some((TO_V1 + TO_V2 + ABORTED) as f64), None),
        "{:?}",
        prometheus.query("sum by (reporter) (istio_request_bytes_count)")
    );
    // Request counts carry the method and not the protocol; the other
    // metrics keep Istio's tags.
    let methods = prometheus.query(
        r#"sum by (reporter, request_method) (istio_requests_total{source_workload="client"})"#,
    );
    let by_method: Vec<(String, String, f64)> = methods
        .iter()
        .map(|(m, v)| {
            let label = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            (label("reporter"), label("request_method"), *v)
        })
        .collect();
    assert!(
        by_method.contains(&("destination".into(), "GET".into(), (TO_V1 + TO_V2) as f64))
            && by_method.contains(&(
                "source".into(),
                "GET".into(),
                (TO_V1 + TO_V2 + ABORTED) as f64
            ))
            && by_method.len() == 2,
        "{by_method:?}"
    );
    assert_eq!(
        prometheus.query(r#"istio_requests_total{request_protocol!=""}"#),
        Vec::new()
    );
    assert_eq!(
        prometheus.scalar(
            r#"sum(istio_request_duration_milliseconds_count{reporter="destination",request_protocol="http"})"#
        ),
        Some((TO_V1 + TO_V2) as f64)
    );
    control_plane_dashboard_answers(&prometheus);
    drop(prometheus);
    // (Past the counts.) The exchange's headers reach neither the app (mesh-echo answers
    // with the request headers it got) nor the client.
    let seen = mesh.in_client("curl -si --max-time 5 -H 'x-version: v2' http://reviews:9080/");
    // The echo lists the headers the sidecar added (XFCC over mTLS).
    assert!(seen.contains("x-forwarded-client-cert"), "{seen}");
    assert!(
        !seen.to_ascii_lowercase().contains("x-envoy-peer-metadata"),
        "{seen}"
    );

    let down = mesh.meshctl(&["down"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
}

/// deploy/addons/grafana-control-plane.json against the same Prometheus,
/// which also scraped mesh-control: the three sidecars connected, pushes,
/// push and convergence times, CA issuance and the config in effect all
/// answer; nothing was rejected.
fn control_plane_dashboard_answers(prometheus: &Prometheus) {
    let connected = wait_for(Duration::from_secs(30), || {
        (prometheus.scalar(r#"sum(pilot_xds{job="istiod"})"#) == Some(3.0)).then_some(())
    });
    assert!(
        connected.is_some(),
        "pilot_xds: {:?}",
        prometheus.query(r#"{job="istiod"}"#).len()
    );
    let path = mesh_test_support::workspace_root().join("deploy/addons/grafana-control-plane.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let answered = || {
        let mut answered = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$job", "istiod");
                if !prometheus.query(&expr).is_empty() {
                    answered.push(panel["title"].as_str().unwrap().to_string());
                }
            }
        }
        answered
    };
    let wanted = [
        "Connected proxies",
        "Pushes by type",
        "Push time p99 by type",
        "Convergence time (snapshot to ACK)",
        "VirtualServices in effect",
        "Certificates issued and CSRs received",
    ];
    // Rates need two scrapes of mesh-control.
    let all = wait_for(Duration::from_secs(30), || {
        let got = answered();
        wanted
            .iter()
            .all(|w| got.iter().any(|a| a == w))
            .then_some(())
    });
    assert!(
        all.is_some(),
        "panels showing nothing; wanted {wanted:?}, answered: {:?}",
        answered()
    );
    // The sample's config is good and every push was accepted.
    assert_eq!(
        prometheus.scalar(r#"sum(mesh_config_rejected{job="istiod"})"#),
        None
    );
    assert!(
        prometheus
            .scalar(r#"sum(pilot_total_xds_rejects{job="istiod"})"#)
            .is_none_or(|v| v == 0.0)
    );
    // Each sidecar's certificate was issued by mesh-control's CA.
    assert!(
        prometheus
            .scalar(r#"sum(citadel_server_success_cert_issuance_count{job="istiod"})"#)
            .is_some_and(|v| v >= 3.0)
    );
}
