//! Istio's TCP metadata exchange between two mesh-proxy sidecars of the
//! local mesh: a Service whose port is declared TCP (`tcp-echo`) in front
//! of reviews-v1, traffic to it from the client, and both sidecars' TCP
//! metrics naming the workload on the other side, which only the exchange
//! (ALPN `istio-peer-exchange`, a header at the start of the stream) can
//! tell them. The bytes are HTTP, but both sidecars proxy them as opaque
//! TCP: a single byte of the exchange leaking into the stream would break
//! the request at mesh-echo or the answer at curl.

use std::time::Duration;

use mesh_test_support::netns::run_bounded;
use mesh_test_support::wait_for;

use super::{LIMIT, Mesh, text};

/// The TCP service: reviews-v1's mesh-echo, on a second port.
const TCP_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: reviews-tcp, namespace: default}
spec:
  clusterIP: 10.96.0.21
  selector: {app: reviews, version: v1}
  ports:
  - {name: tcp-echo, port: 9091, targetPort: 9091}
";

/// Access logs of every sidecar of the namespace in Istio's text format
/// on the proxy's stdout (the built-in `envoy` provider).
const ACCESS_LOGS: &str = "\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: logs, namespace: default}
spec:
  accessLogging:
  - providers: [{name: envoy}]
";

/// The access log lines of the TCP connections in the sidecar log of
/// the pod whose name starts with `pod`: Istio's text format with no
/// request (`"- - -" 0`), naming `cluster`.
fn tcp_log_lines(mesh: &Mesh, pod: &str, cluster: &str) -> Vec<String> {
    let logs = mesh.run_dir.path().join("logs");
    let Ok(entries) = std::fs::read_dir(&logs) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with(pod) && name.ends_with(".proxy.log")
        })
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("\"- - -\" 0 ") && l.contains(cluster))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Connections the client makes.
const CONNECTIONS: usize = 3;

/// `/stats/prometheus` of the pod named `pod`, from its status port.
fn pod_metrics(mesh: &Mesh, pod: &str) -> String {
    let targets_file = mesh.run_dir.path().join("prometheus/targets.json");
    let targets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&targets_file).unwrap()).unwrap();
    let target = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|g| {
            g["labels"]["pod"]
                .as_str()
                .is_some_and(|p| p.starts_with(pod))
        })
        .and_then(|g| g["targets"][0].as_str())
        .unwrap_or_else(|| panic!("no scrape target for {pod}: {targets}"))
        .to_string();
    let out = run_bounded(
        std::process::Command::new("curl").args([
            "-s",
            "--max-time",
            "5",
            &format!("http://{target}/stats/prometheus"),
        ]),
        LIMIT,
    );
    text(&out.stdout)
}

/// The value of the series of `metric` whose labels include every one of
/// `labels` (`name="value"`), summed; 0 when there is none.
fn sum(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn mesh_proxy_sidecars_exchange_peer_metadata_over_tcp_without_touching_the_bytes() {
    let mesh = Mesh::new();
    let app = mesh.config.path().join("app.yaml");
    let sample = std::fs::read_to_string(&app).unwrap();
    let v1 = r#"command: [mesh-echo, --port, "9080", --version, v1]"#;
    assert!(
        sample.contains(v1),
        "the sample's reviews-v1 command changed"
    );
    let sample = sample.replace(
        v1,
        r#"command: [mesh-echo, --port, "9080", --port, "9091", --version, v1]"#,
    );
    std::fs::write(&app, format!("{sample}\n---\n{TCP_SERVICE}")).unwrap();
    std::fs::write(mesh.config.path().join("telemetry.yaml"), ACCESS_LOGS).unwrap();
    let up = mesh.up_with(&["--no-gateway"]);
    assert!(
        up.status.success(),
        "local up failed: {}\n{}",
        text(&up.stdout),
        text(&up.stderr)
    );

    // Byte for byte: the request reaches mesh-echo intact (it echoes the
    // probe header back) and the answer reaches curl intact (a status
    // line first, then exactly Content-Length bytes of JSON).
    let out = mesh.in_client(&format!(
        "for i in $(seq {CONNECTIONS}); do \
           curl -s --max-time 5 -D /tmp/h -o /tmp/b -w '%{{http_code}} %{{size_download}}\\n' \
             -H \"x-probe: probe-$i\" http://reviews-tcp:9091/; \
           grep -i '^content-length' /tmp/h | tr -d '\\r'; cat /tmp/b; echo; \
         done"
    ));
    for i in 1..=CONNECTIONS {
        assert!(
            out.contains(&format!("\"x-probe\": \"probe-{i}\"")),
            "request {i} did not reach the app intact:\n{out}"
        );
    }
    let statuses: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("200 ") || l.starts_with("000 "))
        .collect();
    assert_eq!(statuses.len(), CONNECTIONS, "{out}");
    let lengths: Vec<String> = out
        .lines()
        .filter_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .collect();
    assert_eq!(lengths.len(), CONNECTIONS, "{out}");
    for (status, length) in statuses.iter().zip(&lengths) {
        assert_eq!(*status, format!("200 {length}"), "{out}");
    }

    // Destination side: the reviews-v1 sidecar knows the client's
    // workload; source side: the client's sidecar knows reviews-v1's.
    // Records arrive when the connections close.
    let opened = "istio_tcp_connections_opened_total";
    let destination = [
        r#"reporter="destination""#,
        r#"source_workload="client""#,
        r#"source_app="client""#,
        r#"source_version="v1""#,
        r#"source_canonical_service="client""#,
        r#"destination_workload="reviews-v1""#,
        r#"connection_security_policy="mutual_tls""#,
    ];
    let source = [
        r#"reporter="source""#,
        r#"source_workload="client""#,
        r#"destination_workload="reviews-v1""#,
        r#"destination_app="reviews""#,
        r#"destination_version="v1""#,
        r#"destination_canonical_service="reviews""#,
    ];
    let seen = wait_for(Duration::from_secs(30), || {
        let server = pod_metrics(&mesh, "reviews-v1");
        let client = pod_metrics(&mesh, "client");
        (sum(&server, opened, &destination) >= CONNECTIONS as f64
            && sum(&client, opened, &source) >= CONNECTIONS as f64)
            .then_some((server, client))
    });
    let Some((server, client)) = seen else {
        let tcp = |m: String| {
            m.lines()
                .filter(|l| l.starts_with("istio_tcp_connections_opened"))
                .map(str::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "the sidecars never named each other:\nreviews-v1:\n{}\nclient:\n{}",
            tcp(pod_metrics(&mesh, "reviews-v1")),
            tcp(pod_metrics(&mesh, "client"))
        );
    };
    // What each side counted as the application's bytes agrees: the
    // exchange headers are not counted (and were not delivered).
    let received = sum(&server, "istio_tcp_received_bytes_total", &destination);
    let sent = sum(&client, "istio_tcp_sent_bytes_total", &source);
    assert!(received > 0.0, "{server}");
    assert_eq!(
        received,
        sum(&client, "istio_tcp_received_bytes_total", &source),
        "bytes from the client differ between the two sidecars"
    );
    assert_eq!(
        sent,
        sum(&server, "istio_tcp_sent_bytes_total", &destination),
        "bytes to the client differ between the two sidecars"
    );

    // Each TCP connection is in both sidecars' access logs, as Istio logs
    // a tcp_proxy connection: no request, the cluster it went to.
    let outbound = "outbound|9091||reviews-tcp.default.svc.cluster.local";
    let logged = wait_for(Duration::from_secs(10), || {
        let client = tcp_log_lines(&mesh, "client", outbound);
        let server = tcp_log_lines(&mesh, "reviews-v1", "inbound|9091||");
        (client.len() >= CONNECTIONS && server.len() >= CONNECTIONS).then_some((client, server))
    });
    assert!(
        logged.is_some(),
        "TCP connections missing from the access logs: client {:?}, reviews-v1 {:?}",
        tcp_log_lines(&mesh, "client", outbound),
        tcp_log_lines(&mesh, "reviews-v1", "inbound|9091||")
    );
}
