use super::*;

fn settings() -> Settings {
    Settings::new("ghcr.io/mesh-rs/mesh-proxy:0.1.0", "istio-system")
}

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).expect("test pod")
}

const APP: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  generateName: reviews-v1-5b8d9c7f5d-
  namespace: bookinfo
  labels: {app: reviews, version: v1, pod-template-hash: 5b8d9c7f5d}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: reviews-v1-5b8d9c7f5d, uid: 9d1c, controller: true}
spec:
  serviceAccountName: bookinfo-reviews
  initContainers:
  - {name: migrate, image: busybox}
  containers:
  - name: reviews
    image: docker.io/istio/examples-bookinfo-reviews-v1:1.20.2
    ports: [{name: http, containerPort: 9080}]
    readinessProbe:
      httpGet: {path: /health, port: http}
      timeoutSeconds: 2
    livenessProbe:
      tcpSocket: {port: 9080}
    startupProbe:
      exec: {command: [cat, /tmp/ok]}
"#;

fn injected(p: &Pod, s: &Settings) -> (Pod, Vec<String>) {
    match inject(p, "bookinfo", s) {
        Outcome::Injected { pod, warnings } => (*pod, warnings),
        Outcome::Skipped(reason) => panic!("not injected: {reason}"),
    }
}

fn container<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn args(c: &Container) -> Vec<&str> {
    c.args.iter().flatten().map(String::as_str).collect()
}

fn arg_after<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    let a = c.args.as_deref()?;
    a.iter()
        .position(|x| x == flag)
        .and_then(|i| a.get(i + 1))
        .map(String::as_str)
}

#[test]
fn native_sidecar_is_an_init_container_after_istio_init() {
    let (p, warnings) = injected(&pod(APP), &settings());
    assert!(warnings.is_empty(), "{warnings:?}");
    let spec = p.spec.as_ref().expect("spec");
    let inits: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, ["istio-init", "istio-proxy", "migrate"]);
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["reviews"], "the proxy is not a regular container");
    let proxy = container(
        spec.init_containers.as_deref().expect("inits"),
        PROXY_CONTAINER,
    );
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let startup = proxy.startup_probe.as_ref().expect("startup probe");
    let get = startup.http_get.as_ref().expect("httpGet");
    assert_eq!(get.path.as_deref(), Some("/healthz/ready"));
    assert_eq!(get.port, IntOrString::Int(15021));
    let sc = proxy.security_context.as_ref().expect("security context");
    assert_eq!(sc.run_as_user, Some(1337));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert!(proxy.lifecycle.is_none());
    assert_eq!(arg_after(proxy, "--role"), Some("sidecar"));
    assert_eq!(
        arg_after(proxy, "--xds-address"),
        Some("https://istiod.istio-system.svc:15012")
    );
    let a = args(proxy);
    for label in ["app=reviews", "version=v1"] {
        assert!(a.contains(&label), "{label} in {a:?}");
    }
    let env: Vec<&str> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    for name in [
        "POD_NAME",
        "POD_NAMESPACE",
        "INSTANCE_IP",
        "SERVICE_ACCOUNT",
    ] {
        assert!(env.contains(&name), "{name} in {env:?}");
    }
}

#[test]
fn init_container_captures_with_only_net_admin_and_net_raw() {
    let (p, _) = injected(&pod(APP), &settings());
    let inits = p
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .expect("inits");
    let init = container(inits, INIT_CONTAINER);
    assert_eq!(
        args(init),
        [
            "iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-m", "REDIRECT",
            "-i", "*", "-x", "", "-b", "*", "-d", ""
        ]
    );
    let caps = init
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("capabilities");
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let sc = init.security_context.as_ref().expect("security context");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
}

#[test]
fn labels_annotations_and_volumes() {
    let (p, _) = injected(&pod(APP), &settings());
    let labels = p.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["security.istio.io/tlsMode"], "istio");
    assert_eq!(labels["service.istio.io/canonical-name"], "reviews");
    assert_eq!(labels["service.istio.io/canonical-revision"], "v1");
    let annotations = p.metadata.annotations.as_ref().expect("annotations");
    let status: serde_json::Value =
        serde_json::from_str(&annotations["sidecar.istio.io/status"]).expect("status JSON");
    assert_eq!(
        status["initContainers"],
        serde_json::json!(["istio-init", "istio-proxy"])
    );
    assert_eq!(status["revision"], "default");
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "reviews"
    );
    let volumes = p
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .expect("volumes");
    let token = volumes
        .iter()
        .find(|v| v.name == "istio-token")
        .and_then(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s.first())
        .and_then(|s| s.service_account_token.as_ref())
        .expect("projected token");
    assert_eq!(token.audience.as_deref(), Some("istio-ca"));
    let ca = volumes
        .iter()
        .find(|v| v.name == "istiod-ca-cert")
        .and_then(|v| v.config_map.as_ref())
        .expect("root cert volume");
    assert_eq!(ca.name, "istio-ca-root-cert");
}

#[test]
fn injecting_twice_changes_nothing() {
    let (once, _) = injected(&pod(APP), &settings());
    match inject(&once, "bookinfo", &settings()) {
        Outcome::Skipped(reason) => assert!(reason.contains("already injected"), "{reason}"),
        Outcome::Injected { .. } => panic!("injected twice"),
    }
}

#[test]
fn who_is_not_injected() {
    let s = settings();
    let skipped = |p: &Pod, ns: &str| match inject(p, ns, &s) {
        Outcome::Skipped(reason) => reason,
        Outcome::Injected { .. } => panic!("injected in {ns}"),
    };
    let app = pod(APP);
    assert!(skipped(&app, "kube-system").contains("never injected"));
    assert!(skipped(&app, "istio-system").contains("never injected"));
    let mut opted_out = app.clone();
    opted_out
        .metadata
        .labels
        .get_or_insert_default()
        .insert("sidecar.istio.io/inject".into(), "false".into());
    assert!(skipped(&opted_out, "bookinfo").contains("\"false\""));
    let mut host = app.clone();
    if let Some(spec) = host.spec.as_mut() {
        spec.host_network = Some(true);
    }
    assert!(skipped(&host, "bookinfo").contains("host network"));
    let mut canary = app.clone();
    canary
        .metadata
        .labels
        .get_or_insert_default()
        .insert("istio.io/rev".into(), "canary".into());
    assert!(skipped(&canary, "bookinfo").contains("canary"));
}

#[test]
fn old_api_servers_get_a_regular_container_held_until_ready() {
    let mut s = settings();
    s.native_sidecars = false;
    s.default_config.hold_application_until_proxy_starts = Some(true);
    let (p, _) = injected(&pod(APP), &s);
    let spec = p.spec.as_ref().expect("spec");
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["istio-proxy", "reviews"],
        "held: the proxy starts first"
    );
    let proxy = &spec.containers[0];
    assert!(proxy.restart_policy.is_none());
    let hook = proxy
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("postStart exec");
    assert_eq!(hook, ["mesh-proxy", "wait"]);

    s.default_config.hold_application_until_proxy_starts = None;
    let (p, _) = injected(&pod(APP), &s);
    let names: Vec<String> = p
        .spec
        .map(|s| s.containers.into_iter().map(|c| c.name).collect())
        .unwrap_or_default();
    assert_eq!(names, ["reviews", "istio-proxy"]);
}

#[test]
fn annotations_change_capture_resources_and_proxy_config() {
    let mut p = pod(APP);
    let a = p.metadata.annotations.get_or_insert_default();
    for (k, v) in [
        (
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            "5432, 6379",
        ),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.96.0.0/12",
        ),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "9901"),
        ("sidecar.istio.io/proxyCPU", "250m"),
        ("sidecar.istio.io/proxyMemoryLimit", "lots"),
        (
            "proxy.istio.io/config",
            "concurrency: 4\ndiscoveryAddress: istiod.istio-system.svc:15012\n",
        ),
        ("sidecar.istio.io/nativeSidecar", "false"),
        ("sidecar.istio.io/logLevel", "warning"),
        ("sidecar.istio.io/statsInclusionPrefixes", "cluster"),
        ("sidecar.istio.io/proxyCPUs", "1"),
    ] {
        a.insert(k.to_string(), v.to_string());
    }
    let (p, warnings) = injected(&p, &settings());
    let spec = p.spec.as_ref().expect("spec");
    let init = container(
        spec.init_containers.as_deref().expect("inits"),
        INIT_CONTAINER,
    );
    assert_eq!(arg_after(init, "-o"), Some("5432,6379"));
    assert_eq!(arg_after(init, "-i"), Some("10.96.0.0/12"));
    assert_eq!(arg_after(init, "-d"), Some("9901"));
    // nativeSidecar "false" wins over the API server's support.
    let proxy = container(&spec.containers, PROXY_CONTAINER);
    assert_eq!(arg_after(proxy, "--concurrency"), Some("4"));
    assert_eq!(
        arg_after(proxy, "--xds-address"),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(arg_after(proxy, "--log-level"), Some("warn"));
    let res = proxy.resources.as_ref().expect("resources");
    assert_eq!(res.requests.as_ref().expect("requests")["cpu"].0, "250m");
    assert_eq!(res.limits.as_ref().expect("limits")["memory"].0, "1024Mi");
    let joined = warnings.join("\n");
    assert!(
        joined.contains("sidecar.istio.io/proxyMemoryLimit: \"lots\" is not a resource quantity"),
        "{joined}"
    );
    assert!(
        joined.contains("statsInclusionPrefixes is not supported"),
        "{joined}"
    );
    assert!(
        joined.contains("unknown annotation sidecar.istio.io/proxyCPUs"),
        "{joined}"
    );
    assert_eq!(warnings.len(), 3, "{joined}");
}

#[test]
fn malformed_annotations_never_fail_the_pod() {
    let mut p = pod(APP);
    let a = p.metadata.annotations.get_or_insert_default();
    a.insert(
        "proxy.istio.io/config".into(),
        "concurrency: [not a number".into(),
    );
    a.insert(
        "traffic.sidecar.istio.io/excludeOutboundPorts".into(),
        "postgres".into(),
    );
    a.insert(
        "sidecar.istio.io/rewriteAppHTTPProbers".into(),
        "maybe".into(),
    );
    let (p, warnings) = injected(&p, &settings());
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].contains("proxy.istio.io/config"),
        "{warnings:?}"
    );
    let inits = p
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .expect("inits");
    assert_eq!(arg_after(container(inits, INIT_CONTAINER), "-o"), None);
}

#[test]
fn app_probes_go_through_the_status_port() {
    let (p, _) = injected(&pod(APP), &settings());
    let spec = p.spec.as_ref().expect("spec");
    let app = container(&spec.containers, "reviews");
    let ready = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("readiness httpGet");
    assert_eq!(ready.path.as_deref(), Some("/app-health/reviews/readyz"));
    assert_eq!(ready.port, IntOrString::Int(15020));
    let live = app.liveness_probe.as_ref().expect("liveness");
    assert!(live.tcp_socket.is_none(), "tcp probe became http");
    assert_eq!(
        live.http_get.as_ref().and_then(|g| g.path.as_deref()),
        Some("/app-health/reviews/livez")
    );
    // exec probes stay as they are.
    assert!(
        app.startup_probe
            .as_ref()
            .and_then(|p| p.exec.as_ref())
            .is_some()
    );
    let proxy = container(
        spec.init_containers.as_deref().expect("inits"),
        PROXY_CONTAINER,
    );
    let probers = proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ISTIO_KUBE_APP_PROBERS")
        .and_then(|e| e.value.as_deref())
        .expect("probers env");
    let probers: serde_json::Value = serde_json::from_str(probers).expect("JSON");
    assert_eq!(
        probers["/app-health/reviews/readyz"],
        serde_json::json!({"httpGet": {"path": "/health", "port": 9080, "scheme": "HTTP"}, "timeoutSeconds": 2})
    );
    assert_eq!(
        probers["/app-health/reviews/livez"],
        serde_json::json!({"tcpSocket": {"port": 9080}, "timeoutSeconds": 1})
    );
}

#[test]
fn workload_names_from_owners() {
    let (p, _) = injected(&pod(APP), &settings());
    // No app label: the canonical name comes from the ReplicaSet's Deployment.
    let mut unlabelled = pod(APP);
    unlabelled.metadata.labels = None;
    let (u, _) = injected(&unlabelled, &settings());
    assert_eq!(
        u.metadata.labels.as_ref().expect("labels")["service.istio.io/canonical-name"],
        "reviews-v1"
    );
    assert_eq!(
        u.metadata.labels.as_ref().expect("labels")["service.istio.io/canonical-revision"],
        "latest"
    );
    drop(p);
}

/// The pod's annotations (set on the test pod) and MeshConfig
/// `enablePrometheusMerge`, and what Prometheus and the proxy get.
struct MergeCase {
    annotations: &'static [(&'static str, &'static str)],
    mesh_merge: bool,
    /// `prometheus.io/scrape`, `port`, `path` after injection.
    scrape: (&'static str, &'static str, &'static str),
    /// `ISTIO_PROMETHEUS_ANNOTATIONS` on the proxy.
    env: Option<serde_json::Value>,
}

#[test]
fn scrape_annotations_point_at_the_merged_metrics() {
    let cases = [
        // No annotations of its own: the status port, nothing to merge.
        MergeCase {
            annotations: &[],
            mesh_merge: true,
            scrape: ("true", "15020", "/stats/prometheus"),
            env: None,
        },
        // The app's own endpoint moves into the proxy's variable.
        MergeCase {
            annotations: &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "9080"),
                ("prometheus.io/path", "/metrics"),
            ],
            mesh_merge: true,
            scrape: ("true", "15020", "/stats/prometheus"),
            env: Some(serde_json::json!({"scrape": "true", "port": "9080", "path": "/metrics"})),
        },
        // Opted out of scraping: left alone.
        MergeCase {
            annotations: &[("prometheus.io/scrape", "false")],
            mesh_merge: true,
            scrape: ("false", "", ""),
            env: None,
        },
        // Merging off on the pod: the app's annotations stay.
        MergeCase {
            annotations: &[
                ("prometheus.istio.io/merge-metrics", "false"),
                ("prometheus.io/port", "9080"),
            ],
            mesh_merge: true,
            scrape: ("true", "9080", "/stats/prometheus"),
            env: None,
        },
        // Merging off in MeshConfig: the proxy's own port.
        MergeCase {
            annotations: &[],
            mesh_merge: false,
            scrape: ("true", "15090", "/stats/prometheus"),
            env: None,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut p = pod(APP);
        let a = p.metadata.annotations.get_or_insert_default();
        for (k, v) in case.annotations {
            a.insert(k.to_string(), v.to_string());
        }
        let mut s = settings();
        s.prometheus_merge = case.mesh_merge;
        let (p, _) = injected(&p, &s);
        let a = p.metadata.annotations.as_ref().expect("annotations");
        let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("");
        let (scrape, port, path) = case.scrape;
        assert_eq!(
            (
                get("prometheus.io/scrape"),
                get("prometheus.io/port"),
                get("prometheus.io/path")
            ),
            (scrape, port, path),
            "case {i}"
        );
        let spec = p.spec.as_ref().expect("spec");
        let proxy = container(
            spec.init_containers.as_deref().unwrap_or_default(),
            "istio-proxy",
        );
        let env = proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "ISTIO_PROMETHEUS_ANNOTATIONS")
            .and_then(|e| e.value.as_deref())
            .map(|v| serde_json::from_str::<serde_json::Value>(v).expect("JSON"));
        assert_eq!(env, case.env, "case {i}");
    }
}
