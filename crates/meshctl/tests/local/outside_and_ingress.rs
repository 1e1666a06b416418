//! Pods outside the mesh and the ingress gateway, through the same
//! [`Mesh`] harness as the rest of the local suite.

use std::process::{Command, Output};
use std::time::Duration;

use mesh_test_support::netns::run_bounded;
use mesh_test_support::wait_for;

use super::{LIMIT, Mesh, assert_all_removed, text};

/// A pod the injector skips (`sidecar.istio.io/inject: "false"`).
const OUTSIDE: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: outsider
  namespace: default
  labels: {app: outsider, sidecar.istio.io/inject: \"false\"}
spec:
  containers:
  - {name: c, image: curlimages/curl, command: [sleep, infinity]}
";

/// The pod `name`'s entry in the run state.
fn pod_state(state: &serde_json::Value, name: &str) -> serde_json::Value {
    state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no pod {name} in {state}"))
        .clone()
}

/// The command lines of every process in network namespace `netns`.
fn processes_in(netns: &str) -> Vec<String> {
    let pids = run_bounded(Command::new("ip").args(["netns", "pids", netns]), LIMIT);
    text(&pids.stdout)
        .split_whitespace()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| text(&c).replace('\0', " "))
        .collect()
}

/// `iptables-save` in network namespace `netns`.
fn iptables_in(netns: &str) -> String {
    let out = run_bounded(
        Command::new("ip").args(["netns", "exec", netns, "iptables-save"]),
        LIMIT,
    );
    text(&out.stdout)
}

#[test]
fn a_pod_outside_the_mesh_gets_plaintext_under_permissive_and_is_refused_under_strict() {
    let mesh = Mesh::new();
    std::fs::write(mesh.config.path().join("outsider.yaml"), OUTSIDE).unwrap();
    let up = mesh.up_with(&["--no-gateway"]);
    assert!(
        up.status.success(),
        "local up failed: {}\n{}",
        text(&up.stdout),
        text(&up.stderr)
    );
    let shown = text(&up.stdout);
    assert!(
        shown.contains("outsider.default")
            && shown.contains("outside the mesh, no sidecar: sidecar.istio.io/inject: \"false\""),
        "{shown}"
    );
    // --no-gateway: no gateway pod, namespace or Service.
    assert!(!shown.contains("ingress gateway"), "{shown}");
    let state = mesh.state();
    assert!(
        state["pods"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["namespace"] != "istio-system"),
        "{state}"
    );
    assert!(state["ingress_vip"].is_null(), "{state}");

    // The app alone: no proxy process, no capture rules.
    let outsider = pod_state(&state, "outsider");
    assert!(outsider["proxy_pid"].is_null(), "{outsider}");
    assert!(outsider["app_pid"].is_u64(), "{outsider}");
    let netns = outsider["netns"].as_str().unwrap();
    let procs = processes_in(netns);
    assert!(
        !procs.is_empty() && procs.iter().all(|c| !c.contains("mesh-proxy")),
        "{procs:?}"
    );
    let rules = iptables_in(netns);
    assert!(
        !rules.contains("ISTIO_") && !rules.contains("REDIRECT"),
        "capture rules in a pod outside the mesh:\n{rules}"
    );
    let status = text(&mesh.meshctl(&["status"]).stdout);
    let row = status
        .lines()
        .find(|l| l.starts_with("outsider.default"))
        .unwrap_or_else(|| panic!("{status}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[2..5], ["running", "-", "-"], "{row}");
    let logs = mesh.meshctl(&["logs", "outsider"]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    let proxy_logs = mesh.meshctl(&["logs", "outsider", "-c", "istio-proxy"]);
    assert!(
        text(&proxy_logs.stderr).contains("outside the mesh"),
        "{}",
        text(&proxy_logs.stderr)
    );

    // By service name (kube-proxy's NAT, as in a cluster), in plaintext:
    // PERMISSIVE answers it, without a client identity.
    let from_outside = || {
        mesh.meshctl(&[
            "exec",
            "outsider",
            "--",
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://reviews:9080/",
        ])
    };
    let plain = from_outside();
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let echo: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert!(
        echo["name"].as_str().unwrap().starts_with("reviews-v"),
        "{echo}"
    );
    assert!(
        echo["headers"]["x-forwarded-client-cert"].is_null(),
        "{echo}"
    );

    // STRICT: the plaintext caller is refused (the connection is reset or
    // closed: a curl error), while the mesh client goes on over mTLS.
    std::fs::write(
        mesh.config.path().join("strict.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .unwrap();
    let refused = wait_for(Duration::from_secs(20), || {
        let out = from_outside();
        (!out.status.success()).then_some(out)
    })
    .expect("plaintext from outside the mesh still accepted under STRICT");
    assert!(
        text(&refused.stderr).contains("curl: ("),
        "{}",
        text(&refused.stderr)
    );
    let meshed = mesh.in_client("curl -s --max-time 5 http://reviews:9080/");
    let echo: serde_json::Value = serde_json::from_str(&meshed).unwrap();
    assert!(
        echo["headers"]["x-forwarded-client-cert"]
            .as_str()
            .is_some_and(|x| x.contains("URI=spiffe://cluster.local/ns/default/sa/default")),
        "{echo}"
    );

    let down = mesh.meshctl(&["down"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_all_removed(&state, &mesh.bridge);
}

/// A Gateway on the ingress gateway: HTTP on 8080 for reviews.example.com,
/// HTTPS on 8443 (SIMPLE) for two hosts with a certificate each, all
/// routed to the reviews service.
const GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: reviews-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [reviews.example.com]
  - port: {number: 8443, name: https-reviews, protocol: HTTPS}
    hosts: [reviews.example.com]
    tls: {mode: SIMPLE, credentialName: reviews-cert}
  - port: {number: 8443, name: https-books, protocol: HTTPS}
    hosts: [books.example.com]
    tls: {mode: SIMPLE, credentialName: books-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-ingress, namespace: default}
spec:
  hosts: [reviews.example.com, books.example.com]
  gateways: [istio-system/reviews-gateway]
  http:
  - route:
    - destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}
";

/// A `kubernetes.io/tls` Secret in istio-system.
fn tls_secret(name: &str, leaf: &mesh_test_support::certs::Leaf) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n    {}\n  tls.key: |\n    {}\n",
        indent(&leaf.cert_pem),
        indent(&leaf.key_pem)
    )
}

#[test]
fn the_ingress_gateway_routes_http_and_https_by_sni_into_the_mesh() {
    use mesh_test_support::certs::TestCa;
    use rcgen::ExtendedKeyUsagePurpose::ServerAuth;

    let mesh = Mesh::new();
    let ca = TestCa::new("ingress test CA");
    let secrets = [
        tls_secret(
            "reviews-cert",
            &ca.leaf(&["reviews.example.com"], ServerAuth),
        ),
        tls_secret("books-cert", &ca.leaf(&["books.example.com"], ServerAuth)),
    ]
    .concat();
    std::fs::write(
        mesh.config.path().join("gateway.yaml"),
        format!("{GATEWAY}{secrets}"),
    )
    .unwrap();
    let ca_file = mesh.run_dir.path().join("test-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let up = mesh.up();
    assert!(
        up.status.success(),
        "local up failed: {}\n{}",
        text(&up.stdout),
        text(&up.stderr)
    );
    let state = mesh.state();
    let gateway = pod_state(&state, "istio-ingressgateway-0");
    assert_eq!(gateway["namespace"], "istio-system");
    assert_eq!(gateway["role"], "gateway");
    assert!(gateway["app_pid"].is_null(), "{gateway}");
    let ip = gateway["ip"].as_str().unwrap().to_string();
    let shown = text(&up.stdout);
    assert!(
        shown.contains(&format!(
            "ingress gateway istio-ingressgateway-0.istio-system {ip}"
        )),
        "{shown}"
    );
    let status = text(&mesh.meshctl(&["status"]).stdout);
    assert!(
        status.contains(&format!("http://{ip}:8080 https://{ip}:8443")),
        "{status}"
    );
    // The router is the pod's only process, with no capture.
    let netns = gateway["netns"].as_str().unwrap();
    let procs = processes_in(netns);
    assert!(
        procs.len() == 1 && procs[0].contains("mesh-proxy run --role router"),
        "{procs:?}"
    );
    assert!(!iptables_in(netns).contains("ISTIO_"));

    // HTTP from the host (the bridge): Host picks the VirtualService.
    let curl = |args: &[&str]| {
        let mut full = vec!["-sS", "--max-time", "5"];
        full.extend_from_slice(args);
        run_bounded(Command::new("curl").args(&full), LIMIT)
    };
    let answered_by_reviews = |out: &Output| {
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|e| {
                e["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("reviews-v"))
            })
    };
    let http = wait_for(Duration::from_secs(20), || {
        let out = curl(&[
            "-H",
            "Host: reviews.example.com",
            &format!("http://{ip}:8080/"),
        ]);
        answered_by_reviews(&out).then_some(out)
    });
    assert!(
        http.is_some(),
        "no answer through the gateway:\n{}",
        mesh.log("istio-ingressgateway-0.istio-system.proxy.log")
    );
    let unknown = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: nobody.example.com",
        &format!("http://{ip}:8080/"),
    ]);
    assert_eq!(text(&unknown.stdout), "404");

    // From a pod in the mesh: by address, and by the Service's name and
    // port 80 (through the client's sidecar).
    for url in [
        format!("http://{ip}:8080/"),
        "http://istio-ingressgateway.istio-system/".to_string(),
    ] {
        let out = mesh.in_client(&format!(
            "curl -s --max-time 5 -H 'Host: reviews.example.com' {url}"
        ));
        assert!(out.contains("\"name\": \"reviews-v"), "{url}: {out}");
    }

    // HTTPS: each SNI gets its own certificate (curl checks the name
    // against the test CA), then the same routing.
    for host in ["reviews.example.com", "books.example.com"] {
        let out = curl(&[
            "--cacert",
            ca_file.to_str().unwrap(),
            "--resolve",
            &format!("{host}:8443:{ip}"),
            &format!("https://{host}:8443/"),
        ]);
        assert!(
            answered_by_reviews(&out),
            "https://{host}:8443/: {} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    let down = mesh.meshctl(&["down"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_all_removed(&state, &mesh.bridge);
}
