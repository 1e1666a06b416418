//! Sidecar injection: what Istio's injector does to a pod, as one pure
//! function shared by the admission webhook ([`webhook`]) and
//! `meshctl kube-inject` ([`workload`]).
//!
//! [`inject`] decides whether a pod gets a proxy (Istio's rules: never in
//! `kube-system`, `kube-public` or the control plane's namespace, never with
//! `hostNetwork`, never twice, and `sidecar.istio.io/inject: "false"` opts
//! out) and, if so, returns the pod with:
//! - the `istio-init` init container running `mesh-proxy iptables` with
//!   only `NET_ADMIN` and `NET_RAW`, its ports and ranges taken from the
//!   `traffic.sidecar.istio.io/*` annotations;
//! - the `istio-proxy` container, as a native sidecar (an init container
//!   with `restartPolicy: Always` and a startup probe, so the app starts
//!   after the proxy is ready and Jobs complete) or, on API servers before
//!   1.29, as a regular container (first, with a `mesh-proxy wait`
//!   post-start hook, when `holdApplicationUntilProxyStarts`);
//! - the projected ServiceAccount token (audience `istio-ca`) and the
//!   `istio-ca-root-cert` ConfigMap as volumes;
//! - the app's HTTP and TCP probes rewritten through the proxy's status
//!   port (15020), so the kubelet's plaintext probes still work under
//!   STRICT mTLS;
//! - Istio's metrics merging: `prometheus.io/*` annotations pointing at the
//!   status port's `/stats/prometheus`, the app's own moved into
//!   `ISTIO_PROMETHEUS_ANNOTATIONS` for the proxy to scrape;
//! - Istio's labels (`security.istio.io/tlsMode`, canonical name and
//!   revision) and the `sidecar.istio.io/status` annotation that makes a
//!   second injection a no-op.
//!
//! Annotations that are unknown or malformed never fail the pod: they are
//! reported as warnings (the webhook returns them in the AdmissionReview)
//! and the default is used.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod,
    Probe, ProjectedVolumeSource, ResourceRequirements, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::mesh_config::ProxyConfig;
use mesh_api::wellknown;

mod annotations;
mod probes;
pub mod webhook;
pub mod workload;

pub use annotations::Overrides;

/// The proxy image of this release.
pub const DEFAULT_PROXY_IMAGE: &str =
    concat!("ghcr.io/mesh-rs/mesh-proxy:", env!("CARGO_PKG_VERSION"));
/// Name of the injected init container.
pub const INIT_CONTAINER: &str = "istio-init";
/// Name of the injected proxy container.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The proxy's status port: rewritten app probes (`/app-health/...`).
pub const STATUS_PORT: u16 = 15020;
/// Audience of the projected token the CA accepts.
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// Where the projected token is mounted (the proxy's `--token-file` default).
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// Where the root certificate is mounted (the proxy's `--ca-root-cert` default).
pub const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";
/// Volumes the injector adds, in order.
pub const VOLUMES: [&str; 3] = ["istio-envoy", "istio-token", "istiod-ca-cert"];
/// Namespaces never injected whatever their labels.
pub const NEVER_INJECTED: [&str; 2] = ["kube-system", "kube-public"];

/// What the injector needs to know about the mesh it injects into.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of the proxy (and of the init container).
    pub proxy_image: String,
    /// The control plane's namespace (never injected).
    pub control_namespace: String,
    /// The revision this injector serves (`default`).
    pub revision: String,
    /// Address the proxies get their xDS from: `https://host:port` (TLS,
    /// verified against the mesh root) or `host:port` (plaintext).
    pub xds_address: String,
    /// The CA's address, `https://host:port`.
    pub ca_address: String,
    /// Cluster id sent in the node metadata.
    pub cluster_id: String,
    /// Trust domain of the workload identities.
    pub trust_domain: String,
    /// Whether the API server runs native sidecars (1.29+).
    pub native_sidecars: bool,
    /// MeshConfig `defaultConfig`, which `proxy.istio.io/config` overrides.
    pub default_config: ProxyConfig,
    /// MeshConfig `enablePrometheusMerge` (default on): scrape annotations
    /// point at the status port's merged app+proxy metrics.
    pub prometheus_merge: bool,
}

impl Settings {
    /// Istio's defaults for a control plane `istiod` in `namespace`.
    pub fn new(proxy_image: impl Into<String>, namespace: &str) -> Self {
        Self {
            proxy_image: proxy_image.into(),
            control_namespace: namespace.to_string(),
            revision: "default".to_string(),
            xds_address: format!("https://istiod.{namespace}.svc:{}", wellknown::XDS_TLS_PORT),
            ca_address: format!("https://istiod.{namespace}.svc:{}", wellknown::XDS_TLS_PORT),
            cluster_id: "Kubernetes".to_string(),
            trust_domain: wellknown::DEFAULT_TRUST_DOMAIN.to_string(),
            native_sidecars: true,
            default_config: ProxyConfig::default(),
            prometheus_merge: true,
        }
    }
}

/// What happened to a pod.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The pod gets no proxy, for this reason.
    Skipped(String),
    /// The pod with its proxy, and the warnings to show the user.
    Injected {
        /// The injected pod.
        pod: Box<Pod>,
        /// Problems with the pod's annotations (defaults were used).
        warnings: Vec<String>,
    },
}

/// Why `pod` in `namespace` gets no proxy, or `None` when it gets one.
pub fn skip_reason(pod: &Pod, namespace: &str, settings: &Settings) -> Option<String> {
    if NEVER_INJECTED.contains(&namespace) || namespace == settings.control_namespace {
        return Some(format!("namespace {namespace} is never injected"));
    }
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return Some("the pod uses the host network".to_string());
    }
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(wellknown::ANNOTATION_SIDECAR_STATUS)) {
        return Some(format!(
            "already injected ({} is set)",
            wellknown::ANNOTATION_SIDECAR_STATUS
        ));
    }
    let has_proxy = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER);
    if has_proxy {
        return Some(format!("the pod already has a {PROXY_CONTAINER} container"));
    }
    let labels = pod.metadata.labels.as_ref();
    // The label wins over the (deprecated) annotation of the same name.
    let opt = labels
        .and_then(|l| l.get(wellknown::LABEL_SIDECAR_INJECT))
        .or_else(|| annotations.and_then(|a| a.get(wellknown::LABEL_SIDECAR_INJECT)));
    if opt.is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return Some(format!("{}: \"false\"", wellknown::LABEL_SIDECAR_INJECT));
    }
    if let Some(rev) = labels.and_then(|l| l.get(wellknown::LABEL_REVISION))
        && *rev != settings.revision
    {
        return Some(format!(
            "{}: {rev} belongs to another control plane revision",
            wellknown::LABEL_REVISION
        ));
    }
    None
}

/// Injects the proxy into `pod` (created in `namespace`), or says why not.
pub fn inject(pod: &Pod, namespace: &str, settings: &Settings) -> Outcome {
    if pod.spec.is_none() {
        return Outcome::Skipped("the pod has no spec".to_string());
    }
    if let Some(reason) = skip_reason(pod, namespace, settings) {
        return Outcome::Skipped(reason);
    }
    let mut pod = pod.clone();
    let (overrides, mut warnings) = Overrides::parse(
        pod.metadata
            .annotations
            .as_ref()
            .unwrap_or(&BTreeMap::new()),
        &settings.default_config,
    );
    let native = overrides.native_sidecar.unwrap_or(settings.native_sidecars);
    let app_containers: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();

    let probers = if overrides.rewrite_probes {
        pod.spec
            .as_mut()
            .map(|s| probes::rewrite(&mut s.containers, &mut warnings))
            .unwrap_or_default()
    } else {
        BTreeMap::new()
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let init = init_container(settings, &overrides);
    let proxy = proxy_container(settings, &overrides, &labels, &probers, native);

    let Some(spec) = pod.spec.as_mut() else {
        return Outcome::Skipped("the pod has no spec".to_string());
    };
    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    if native {
        inits.splice(0..0, [init, proxy]);
    } else {
        inits.insert(0, init);
        if overrides.hold_application {
            spec.containers.insert(0, proxy);
        } else {
            spec.containers.push(proxy);
        }
    }
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(volumes(&overrides));

    let workload = workload_name(&pod);
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(wellknown::LABEL_TLS_MODE.to_string(), "istio".to_string());
    let canonical_name = [
        wellknown::LABEL_CANONICAL_NAME,
        "app.kubernetes.io/name",
        wellknown::LABEL_APP,
    ]
    .iter()
    .find_map(|k| labels.get(*k).cloned())
    .unwrap_or(workload);
    let canonical_revision = [
        wellknown::LABEL_CANONICAL_REVISION,
        "app.kubernetes.io/version",
        wellknown::LABEL_VERSION,
    ]
    .iter()
    .find_map(|k| labels.get(*k).cloned())
    .unwrap_or_else(|| "latest".to_string());
    labels.insert(wellknown::LABEL_CANONICAL_NAME.to_string(), canonical_name);
    labels.insert(
        wellknown::LABEL_CANONICAL_REVISION.to_string(),
        canonical_revision,
    );

    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let status = serde_json::json!({
        "initContainers": if native { vec![INIT_CONTAINER, PROXY_CONTAINER] } else { vec![INIT_CONTAINER] },
        "containers": if native { Vec::new() } else { vec![PROXY_CONTAINER] },
        "volumes": VOLUMES,
        "imagePullSecrets": serde_json::Value::Null,
        "revision": settings.revision,
    });
    annotations.insert(
        wellknown::ANNOTATION_SIDECAR_STATUS.to_string(),
        status.to_string(),
    );
    if let Some(first) = app_containers.first() {
        for key in [
            "kubectl.kubernetes.io/default-container",
            "kubectl.kubernetes.io/default-logs-container",
        ] {
            annotations
                .entry(key.to_string())
                .or_insert_with(|| first.clone());
        }
    }
    apply_prometheus_merge(&mut pod, settings);
    Outcome::Injected {
        pod: Box::new(pod),
        warnings,
    }
}

/// The pod annotations Prometheus' `kubernetes-pods` job reads.
const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
/// See [`PROMETHEUS_SCRAPE`].
const PROMETHEUS_PORT: &str = "prometheus.io/port";
/// See [`PROMETHEUS_SCRAPE`].
const PROMETHEUS_PATH: &str = "prometheus.io/path";
/// Opts a pod out of metrics merging (Istio's annotation).
pub const ANNOTATION_MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";
/// The proxy's variable with the app's original scrape annotations.
pub const PROMETHEUS_ANNOTATIONS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";

/// Istio's metrics merging: unless the pod says `prometheus.io/scrape:
/// "false"`, or merging is off (MeshConfig `enablePrometheusMerge: false`,
/// `prometheus.istio.io/merge-metrics: "false"`), the pod's scrape
/// annotations point at the status port's merged `/stats/prometheus`, and
/// the app's own (`scrape`, `port`, `path`) move into
/// `ISTIO_PROMETHEUS_ANNOTATIONS` so the proxy scrapes the app for it.
/// With merging off, only missing annotations are added, pointing at the
/// proxy's own Prometheus port (15090).
fn apply_prometheus_merge(pod: &mut Pod, settings: &Settings) {
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if annotations
        .get(PROMETHEUS_SCRAPE)
        .is_some_and(|v| v == "false")
    {
        return;
    }
    let merge = settings.prometheus_merge
        && annotations
            .get(ANNOTATION_MERGE_METRICS)
            .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    if !merge {
        for (key, value) in [
            (PROMETHEUS_SCRAPE, "true".to_string()),
            (
                PROMETHEUS_PORT,
                wellknown::PROXY_PROMETHEUS_PORT.to_string(),
            ),
            (PROMETHEUS_PATH, "/stats/prometheus".to_string()),
        ] {
            annotations.entry(key.to_string()).or_insert(value);
        }
        return;
    }
    let target_port = STATUS_PORT.to_string();
    // Already pointing at the status port: injected before, or the user's
    // choice; either way the original annotations are gone.
    if annotations.get(PROMETHEUS_PORT) == Some(&target_port) {
        annotations.insert(PROMETHEUS_SCRAPE.to_string(), "true".to_string());
        annotations
            .entry(PROMETHEUS_PATH.to_string())
            .or_insert_with(|| "/stats/prometheus".to_string());
        return;
    }
    let original: serde_json::Map<String, serde_json::Value> = [
        ("scrape", PROMETHEUS_SCRAPE),
        ("path", PROMETHEUS_PATH),
        ("port", PROMETHEUS_PORT),
    ]
    .into_iter()
    .filter_map(|(field, key)| {
        annotations
            .get(key)
            .map(|v| (field.to_string(), serde_json::Value::from(v.clone())))
    })
    .collect();
    annotations.insert(PROMETHEUS_SCRAPE.to_string(), "true".to_string());
    annotations.insert(PROMETHEUS_PORT.to_string(), target_port);
    annotations.insert(PROMETHEUS_PATH.to_string(), "/stats/prometheus".to_string());
    if original.is_empty() {
        return;
    }
    let value = serde_json::Value::Object(original).to_string();
    if let Some(spec) = pod.spec.as_mut() {
        let proxy = spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
            .find(|c| c.name == PROXY_CONTAINER);
        if let Some(proxy) = proxy {
            proxy
                .env
                .get_or_insert_with(Vec::new)
                .push(value_env(PROMETHEUS_ANNOTATIONS_ENV, value));
        }
    }
}

/// The pod's workload name: its owner's, as Istio derives it from the
/// generated name (`reviews-v1-5b8d9c7f5d-` of a ReplicaSet is
/// `reviews-v1`), else the pod's own name.
fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let owner = meta
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|r| r.controller == Some(true)));
    match (owner, &meta.generate_name) {
        (Some(owner), _) if owner.kind == "ReplicaSet" => owner
            .name
            .rsplit_once('-')
            .map_or(owner.name.clone(), |(name, _)| name.to_string()),
        // A CronJob's Jobs are `<cronjob>-<scheduled time in minutes>`.
        (Some(owner), _) if owner.kind == "Job" => owner
            .name
            .rsplit_once('-')
            .filter(|(_, t)| t.len() >= 8 && t.chars().all(|c| c.is_ascii_digit()))
            .map_or(owner.name.clone(), |(name, _)| name.to_string()),
        (Some(owner), _) => owner.name.clone(),
        (None, Some(generated)) if meta.name.is_none() => {
            let trimmed = generated.trim_end_matches('-');
            // ReplicaSet pods: `<deployment>-<hash>-`.
            trimmed
                .rsplit_once('-')
                .filter(|(_, hash)| {
                    hash.len() >= 5 && hash.chars().all(|c| c.is_ascii_alphanumeric())
                })
                .map_or(trimmed.to_string(), |(name, _)| name.to_string())
        }
        _ => meta.name.clone().unwrap_or_default(),
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn capabilities(add: &[&str]) -> Capabilities {
    Capabilities {
        add: (!add.is_empty()).then(|| add.iter().map(|s| s.to_string()).collect()),
        drop: Some(vec!["ALL".to_string()]),
    }
}

fn init_container(settings: &Settings, o: &Overrides) -> Container {
    let mut args: Vec<String> = ["iptables", "-p"].iter().map(|s| s.to_string()).collect();
    args.push(wellknown::OUTBOUND_CAPTURE_PORT.to_string());
    args.extend([
        "-z".to_string(),
        wellknown::INBOUND_CAPTURE_PORT.to_string(),
    ]);
    args.extend(["-u".to_string(), wellknown::PROXY_UID.to_string()]);
    args.extend(["-g".to_string(), wellknown::PROXY_GID.to_string()]);
    args.extend(["-m".to_string(), "REDIRECT".to_string()]);
    args.extend(["-i".to_string(), o.include_outbound_ranges.clone()]);
    args.extend(["-x".to_string(), o.exclude_outbound_ranges.clone()]);
    args.extend(["-b".to_string(), o.include_inbound_ports.clone()]);
    args.extend(["-d".to_string(), o.exclude_inbound_ports.clone()]);
    if !o.exclude_outbound_ports.is_empty() {
        args.extend(["-o".to_string(), o.exclude_outbound_ports.clone()]);
    }
    if !o.include_outbound_ports.is_empty() {
        args.extend(["-q".to_string(), o.include_outbound_ports.clone()]);
    }
    Container {
        name: INIT_CONTAINER.to_string(),
        image: Some(
            o.image
                .clone()
                .unwrap_or_else(|| settings.proxy_image.clone()),
        ),
        args: Some(args),
        resources: Some(o.resources()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            capabilities: Some(capabilities(&["NET_ADMIN", "NET_RAW"])),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn http_probe(path: &str, port: u16) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.to_string()),
        port: IntOrString::Int(i32::from(port)),
        ..HTTPGetAction::default()
    }
}

fn proxy_container(
    settings: &Settings,
    o: &Overrides,
    labels: &BTreeMap<String, String>,
    probers: &BTreeMap<String, serde_json::Value>,
    native: bool,
) -> Container {
    // Istio's discoveryAddress has no scheme: its TLS port means TLS.
    let xds = match &o.proxy.discovery_address {
        Some(a) if a.ends_with(&format!(":{}", wellknown::XDS_TLS_PORT)) && !a.contains("://") => {
            format!("https://{a}")
        }
        Some(a) => a.clone(),
        None => settings.xds_address.clone(),
    };
    let mut args: Vec<String> = vec![
        "run".into(),
        "--role".into(),
        "sidecar".into(),
        "--xds-address".into(),
        xds,
        "--ca-address".into(),
        settings.ca_address.clone(),
        "--ca-root-cert".into(),
        format!("{ROOT_CERT_DIR}/root-cert.pem"),
        "--token-file".into(),
        format!("{TOKEN_DIR}/istio-token"),
        "--cluster-id".into(),
        settings.cluster_id.clone(),
        "--trust-domain".into(),
        settings.trust_domain.clone(),
        "--status-address".into(),
        format!("0.0.0.0:{STATUS_PORT}"),
    ];
    if let Some(n) = o.proxy.concurrency.filter(|n| *n > 0) {
        args.extend(["--concurrency".into(), n.to_string()]);
    }
    if let Some(d) = &o.proxy.termination_drain_duration {
        args.extend(["--drain-duration".into(), d.to_string()]);
    }
    if let Some(level) = &o.log_level {
        args.extend(["--log-level".into(), level.clone()]);
    }
    for (k, v) in labels {
        args.extend(["--label".into(), format!("{k}={v}")]);
    }
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("HOST_IP", "status.hostIP"),
        value_env("ISTIO_META_CLUSTER_ID", settings.cluster_id.clone()),
    ];
    if !probers.is_empty() {
        env.push(value_env(
            probes::PROBERS_ENV,
            serde_json::Value::Object(probers.clone().into_iter().collect()).to_string(),
        ));
    }
    for (k, v) in &o.proxy.proxy_metadata {
        env.push(value_env(k, v.clone()));
    }
    let ready = http_probe("/healthz/ready", wellknown::PROXY_HEALTH_PORT);
    let readiness = Probe {
        http_get: Some(ready.clone()),
        initial_delay_seconds: Some(if native { 0 } else { 1 }),
        period_seconds: Some(if native { 15 } else { 2 }),
        timeout_seconds: Some(3),
        failure_threshold: Some(if native { 4 } else { 30 }),
        ..Probe::default()
    };
    let startup = native.then(|| Probe {
        http_get: Some(ready),
        initial_delay_seconds: Some(0),
        period_seconds: Some(1),
        timeout_seconds: Some(3),
        failure_threshold: Some(600),
        ..Probe::default()
    });
    let lifecycle = (!native && o.hold_application).then(|| Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["mesh-proxy".into(), "wait".into()]),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    });
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    };
    Container {
        name: PROXY_CONTAINER.to_string(),
        image: Some(
            o.image
                .clone()
                .unwrap_or_else(|| settings.proxy_image.clone()),
        ),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http-envoy-prom".to_string()),
            container_port: i32::from(wellknown::PROXY_PROMETHEUS_PORT),
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(readiness),
        startup_probe: startup,
        lifecycle,
        restart_policy: native.then(|| "Always".to_string()),
        resources: Some(o.resources()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(i64::from(wellknown::PROXY_UID)),
            run_as_group: Some(i64::from(wellknown::PROXY_GID)),
            run_as_non_root: Some(true),
            capabilities: Some(capabilities(&[])),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("istio-envoy", "/etc/istio/proxy"),
            mount("istio-token", TOKEN_DIR),
            mount("istiod-ca-cert", ROOT_CERT_DIR),
        ]),
        ..Container::default()
    }
}

fn volumes(_o: &Overrides) -> Vec<Volume> {
    vec![
        Volume {
            name: "istio-envoy".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_string()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "istio-token".to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.to_string()),
                        expiration_seconds: Some(43200),
                        path: "istio-token".to_string(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "istiod-ca-cert".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: wellknown::ROOT_CERT_CONFIGMAP.to_string(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

/// Resource requests and limits, Istio's defaults unless annotated.
fn resources(cpu: &str, memory: &str, cpu_limit: &str, memory_limit: &str) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q(cpu)),
            ("memory".to_string(), q(memory)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), q(cpu_limit)),
            ("memory".to_string(), q(memory_limit)),
        ])),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests;
