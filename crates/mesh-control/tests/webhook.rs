//! The injection webhook as the API server sees it: a real HTTPS server
//! with the control plane's CA-issued serving certificate, sent recorded
//! `admission.k8s.io/v1` AdmissionReviews of pods created by each workload
//! kind (tests/webhook/*.json). The JSONPatch it answers is applied to the
//! request's pod the way the API server applies it, and the result is
//! parsed back into k8s-openapi's `Pod` and checked field by field.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Pod;
use mesh_control::inject::{Settings, webhook};
use mesh_control::secure::{Secure, SecureConfig};
use serde_json::Value;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

struct Webhook {
    address: std::net::SocketAddr,
    root_pem: String,
    _dir: tempfile::TempDir,
    _task: Option<tokio::task::JoinHandle<()>>,
}

async fn start() -> Webhook {
    let dir = tempfile::tempdir().expect("tempdir");
    let secure = Secure::load(&SecureConfig {
        ca_dir: dir.path().to_path_buf(),
        trust_domain: "cluster.local".into(),
        extra_names: Vec::new(),
    })
    .expect("CA");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let settings = Arc::new(Settings::new(
        "ghcr.io/mesh-rs/mesh-proxy:0.1.0",
        "istio-system",
    ));
    let (_, settings) = tokio::sync::watch::channel(settings);
    let router = webhook::router(settings, webhook::Metrics::default());
    let task = tokio::spawn(webhook::serve(
        listener,
        secure.webhook_tls(),
        router,
        std::future::pending(),
    ));
    Webhook {
        address,
        root_pem: secure.root_pem(),
        _dir: dir,
        _task: Some(task),
    }
}

/// POSTs `body` to `/inject` over TLS, verifying the server as the API
/// server does (the service name `istiod.istio-system.svc`, the caBundle).
async fn post(w: &Webhook, body: Vec<u8>) -> (u16, Bytes) {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(w.root_pem.as_bytes()) {
        roots.add(cert.expect("root PEM")).expect("root");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(w.address)
        .await
        .expect("connect");
    let name = ServerName::try_from("istiod.istio-system.svc").expect("name");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the webhook's CA-issued certificate");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
    tokio::spawn(conn);
    let request = http::Request::post("/inject?timeout=10s")
        .header("host", "istiod.istio-system.svc:443")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/webhook")
        .join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("fixture JSON")
}

/// Sends the fixture, checks the envelope, applies the patch; returns the
/// patched pod and the warnings.
async fn review(w: &Webhook, name: &str) -> (Pod, Vec<String>, usize) {
    let request = fixture(name);
    let (status, body) = post(w, serde_json::to_vec(&request).expect("JSON")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).expect("answer JSON");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], request["request"]["uid"], "uid echoed");
    assert_eq!(response["allowed"], true, "a pod is never refused");
    let warnings: Vec<String> =
        serde_json::from_value(response["warnings"].clone()).unwrap_or_default();
    let mut pod = request["request"]["object"].clone();
    let mut ops = 0;
    if let Some(patch) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("patch is base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("RFC 6902 patch");
        ops = patch.0.len();
        json_patch::patch(&mut pod, &patch).expect("the patch applies to the request's pod");
    }
    let pod: Pod = serde_json::from_value(pod).expect("the patched object is a Pod");
    (pod, warnings, ops)
}

fn names(list: &Option<Vec<k8s_openapi::api::core::v1::Container>>) -> Vec<String> {
    list.iter().flatten().map(|c| c.name.clone()).collect()
}

#[tokio::test]
async fn pods_of_every_workload_kind_get_the_proxy() {
    let w = start().await;
    for (fixture, app, canonical) in [
        ("deployment", "reviews", "reviews"),
        ("statefulset", "redis", "redis"),
        ("daemonset", "node-exporter", "node-exporter"),
        ("job", "migrate", "migrate"),
        ("cronjob", "report", "report"),
        ("pod", "sleep", "sleep"),
    ] {
        let (pod, _, ops) = review(&w, fixture).await;
        assert!(ops > 0, "{fixture}: a patch");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            names(&spec.init_containers),
            ["istio-init", "istio-proxy"],
            "{fixture}: native sidecar after the capture init container"
        );
        assert_eq!(names(&Some(spec.containers.clone())), [app], "{fixture}");
        let proxy = &spec.init_containers.as_ref().expect("inits")[1];
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"), "{fixture}");
        // What was there stays: the API server's defaults and the app's volume.
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            volumes,
            [
                "kube-api-access-7x2lq",
                "istio-envoy",
                "istio-token",
                "istiod-ca-cert"
            ],
            "{fixture}"
        );
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["security.istio.io/tlsMode"], "istio", "{fixture}");
        assert_eq!(
            labels["service.istio.io/canonical-name"], canonical,
            "{fixture}"
        );
        assert!(
            pod.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("sidecar.istio.io/status")),
            "{fixture}"
        );
        // Every original label and annotation is kept.
        let original: Pod = serde_json::from_value(fixture_pod(fixture)).expect("fixture pod");
        for (k, v) in original.metadata.labels.iter().flatten() {
            assert_eq!(labels.get(k), Some(v), "{fixture}: label {k}");
        }
    }
}

fn fixture_pod(name: &str) -> Value {
    fixture(name)["request"]["object"].clone()
}

#[tokio::test]
async fn probes_are_rewritten_and_warnings_reach_the_user() {
    let w = start().await;
    let (pod, warnings, _) = review(&w, "deployment").await;
    let app = &pod.spec.as_ref().expect("spec").containers[0];
    let probe = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("readiness");
    assert_eq!(probe.path.as_deref(), Some("/app-health/reviews/readyz"));
    assert!(warnings.is_empty(), "{warnings:?}");

    let (pod, warnings, _) = review(&w, "pod").await;
    assert_eq!(
        warnings,
        [
            "annotation sidecar.istio.io/proxyCPU: \"a lot\" is not a resource quantity; default used"
        ]
    );
    let init = &pod
        .spec
        .as_ref()
        .expect("spec")
        .init_containers
        .as_ref()
        .expect("inits")[0];
    let args = init.args.clone().unwrap_or_default();
    let o = args.iter().position(|a| a == "-o").expect("-o");
    assert_eq!(args[o + 1], "5432", "excludeOutboundPorts reaches iptables");
}

#[tokio::test]
async fn opted_out_and_already_injected_pods_are_left_alone() {
    let w = start().await;
    let (pod, warnings, ops) = review(&w, "opted-out").await;
    assert_eq!(ops, 0);
    assert_eq!(
        warnings,
        ["sidecar not injected: sidecar.istio.io/inject: \"false\""]
    );
    assert!(pod.spec.expect("spec").init_containers.is_none());

    // The injected pod sent again (a reinvocation): no patch.
    let (injected, _, _) = review(&w, "deployment").await;
    let mut again = fixture("deployment");
    again["request"]["object"] = serde_json::to_value(&injected).expect("pod JSON");
    let (status, body) = post(&w, serde_json::to_vec(&again).expect("JSON")).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).expect("JSON");
    assert!(answer["response"]["patch"].is_null(), "{answer}");
    assert_eq!(answer["response"]["allowed"], true);
}

#[tokio::test]
async fn garbage_is_a_400_not_a_crash() {
    let w = start().await;
    let (status, body) = post(&w, b"{\"kind\": \"AdmissionReview\"".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("not an admission.k8s.io/v1 AdmissionReview"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Not a pod: allowed, unchanged, with the reason.
    let mut review = fixture("pod");
    review["request"]["kind"]["kind"] = "Service".into();
    let (status, body) = post(&w, serde_json::to_vec(&review).expect("JSON")).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["patch"].is_null());
    // The server still serves after both.
    let (_, _, ops) = self::review(&w, "job").await;
    assert!(ops > 0);
}

/// The MutatingWebhookConfiguration `meshctl install` applies, as the API
/// server returns it (caBundle empty).
const WEBHOOK_CONFIG: &str = r#"{
  "apiVersion": "admissionregistration.k8s.io/v1",
  "kind": "MutatingWebhookConfiguration",
  "metadata": {"name": "istio-sidecar-injector", "resourceVersion": "48213", "uid": "0d6e2c1b-8a7f-4e3d-9c2b-1a0f9e8d7c6b",
               "labels": {"app": "sidecar-injector", "istio.io/rev": "default"}},
  "webhooks": [
    {"name": "namespace.sidecar-injector.istio.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
     "failurePolicy": "Fail", "matchPolicy": "Equivalent", "reinvocationPolicy": "Never", "timeoutSeconds": 10,
     "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject", "port": 443}},
     "namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}},
     "objectSelector": {"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]},
     "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "*"}]},
    {"name": "object.sidecar-injector.istio.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
     "failurePolicy": "Fail", "matchPolicy": "Equivalent", "reinvocationPolicy": "Never", "timeoutSeconds": 10,
     "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject", "port": 443}},
     "namespaceSelector": {"matchExpressions": [{"key": "istio-injection", "operator": "DoesNotExist"}]},
     "objectSelector": {"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "In", "values": ["true"]}]},
     "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "*"}]}
  ]
}"#;

/// At start the control plane puts its root into every webhook's
/// `caBundle` (a GET, then one strategic merge PATCH keyed by webhook
/// name); when the bundle is already there it sends nothing.
#[tokio::test]
async fn ca_bundle_is_patched_into_the_webhook_configuration() {
    use http::{Method, Request, Response};
    use kube::client::Body;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let root = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let server = tokio::spawn(async move {
        let path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector";
        let (request, send) = handle.next_request().await.expect("GET");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), path);
        send.send_response(Response::new(Body::from(
            WEBHOOK_CONFIG.as_bytes().to_vec(),
        )));

        let (request, send) = handle.next_request().await.expect("PATCH");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), path);
        assert_eq!(
            request.headers()["content-type"],
            "application/strategic-merge-patch+json"
        );
        let body = request.into_body().collect_bytes().await.expect("body");
        let patch: Value = serde_json::from_slice(&body).expect("JSON");
        let hooks = patch["webhooks"].as_array().expect("webhooks");
        assert_eq!(hooks.len(), 2);
        let expected = base64::engine::general_purpose::STANDARD
            .encode("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        for hook in hooks {
            assert!(hook["name"].is_string(), "merge key present");
            assert_eq!(hook["clientConfig"]["caBundle"], expected.as_str());
            // The service reference is kept, not replaced by the patch.
            assert_eq!(hook["clientConfig"]["service"]["name"], "istiod");
        }
        let mut updated: Value = serde_json::from_str(WEBHOOK_CONFIG).expect("JSON");
        for hook in updated["webhooks"].as_array_mut().expect("hooks") {
            hook["clientConfig"]["caBundle"] = expected.clone().into();
        }
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&updated).expect("JSON"),
        )));

        // A restart with the bundle in place: GET only.
        let (request, send) = handle.next_request().await.expect("GET again");
        assert_eq!(request.method(), Method::GET);
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&updated).expect("JSON"),
        )));
    });
    let patched = webhook::patch_ca_bundle(client.clone(), "istio-sidecar-injector", root)
        .await
        .expect("patched");
    assert_eq!(patched, 2);
    let again = webhook::patch_ca_bundle(client, "istio-sidecar-injector", root)
        .await
        .expect("read");
    assert_eq!(again, 0, "nothing to change");
    server.await.expect("mock API server");
}

/// The `mesh-control` binary with `--webhook-address`: the webhook serves
/// on the secure port's certificate, injects the `--proxy-image`, takes
/// `defaultConfig` from the `istio` ConfigMap in the config directory and
/// follows its edits, and counts injections in `/metrics`.
#[tokio::test]
async fn the_binary_serves_the_webhook_with_mesh_config_defaults() {
    use mesh_test_support::{free_port, wait_for};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("mkdir");
    let mesh = |concurrency: u32| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    defaultConfig:\n      concurrency: {concurrency}\n"
        )
    };
    std::fs::write(config.join("mesh.yaml"), mesh(3)).expect("write");
    let (xds, secure, monitoring, hook) = (free_port(), free_port(), free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-control"))
        .arg("--config-dir")
        .arg(&config)
        .arg("--ca-dir")
        .arg(dir.path().join("ca"))
        .args(["--xds-address", &format!("127.0.0.1:{xds}")])
        .args(["--secure-address", &format!("127.0.0.1:{secure}")])
        .args(["--monitoring-address", &format!("127.0.0.1:{monitoring}")])
        .args(["--webhook-address", &format!("127.0.0.1:{hook}")])
        .args(["--proxy-image", "registry.example/mesh-proxy:dev"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("mesh-control starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _ = child.try_wait();
    let _guard = Kill(child);
    let ready = wait_for(std::time::Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", hook)).ok()
    });
    assert!(ready.is_some(), "the webhook never listened");
    let w = Webhook {
        address: format!("127.0.0.1:{hook}").parse().expect("address"),
        root_pem: std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root"),
        _dir: dir,
        _task: None,
    };
    let proxy_of = |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "istio-proxy"))
            .cloned()
            .expect("istio-proxy")
    };
    let concurrency = |c: &k8s_openapi::api::core::v1::Container| {
        let args = c.args.clone().unwrap_or_default();
        args.iter()
            .position(|a| a == "--concurrency")
            .map(|i| args[i + 1].clone())
    };
    let (pod, _, _) = review(&w, "deployment").await;
    let proxy = proxy_of(&pod);
    assert_eq!(
        proxy.image.as_deref(),
        Some("registry.example/mesh-proxy:dev")
    );
    assert_eq!(concurrency(&proxy).as_deref(), Some("3"));

    std::fs::write(w._dir.path().join("config/mesh.yaml"), mesh(5)).expect("write");
    let mut seen = None;
    for _ in 0..100 {
        let (pod, _, _) = review(&w, "deployment").await;
        seen = concurrency(&proxy_of(&pod));
        if seen.as_deref() == Some("5") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.as_deref(),
        Some("5"),
        "the webhook follows MeshConfig edits"
    );

    let metrics = mesh_test_support::envoy::http_get(monitoring, "/metrics").expect("metrics");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("sidecar_injection_success_total"))
        .unwrap_or_else(|| panic!("no injection counter:\n{metrics}"));
    let count: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(count >= 2.0, "{line}");
}
