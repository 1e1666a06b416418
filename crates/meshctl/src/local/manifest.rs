//! What the local mesh runs, read from the user's directory: one pod per
//! `Pod` and `replicas` pods per `Deployment` (its template), each running
//! its first container's `command` + `args` as a program on this machine
//! (the image is ignored), and the `Service`s whose names the pods resolve.
//!
//! Everything else in the directory (Istio objects) is mesh-control's to
//! read; this module only needs what it takes to start processes and write
//! hosts files. A pod the mesh cannot run is an error naming the object and
//! field, before anything is created.
//!
//! Whether a pod gets a sidecar is the injection webhook's own decision
//! ([`mesh_control::inject::skip_reason`]): a pod it would skip
//! (`sidecar.istio.io/inject: "false"`, a namespace never injected, another
//! revision, ...) runs outside the mesh, with no capture and no sidecar.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::MeshObject;
use mesh_api::object::{config_files, load_str};
use mesh_api::wellknown::LABEL_TLS_MODE;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The control plane's namespace, as the injector is told in a cluster
/// (pods there are never injected).
pub const CONTROL_NAMESPACE: &str = "istio-system";

/// A pod to start.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalPod {
    /// Pod name (for a Deployment, `<deployment>-<ordinal>`).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels (the Deployment template's for its pods).
    pub labels: BTreeMap<String, String>,
    /// Service account (`default` when unset).
    pub service_account: String,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Environment of the app (`value` entries; `fieldRef`s to the pod's
    /// name, namespace and IP are resolved at start).
    pub env: Vec<EnvVar>,
    /// Declared container ports, `(name, port)`, for named `targetPort`s.
    pub ports: Vec<(String, u16)>,
    /// Where the pod came from, for messages.
    pub origin: String,
    /// What runs beside the app.
    pub role: Role,
}

/// What a pod runs besides (or instead of) its app.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The app behind capture with a sidecar, as the injector makes a pod.
    #[default]
    Sidecar,
    /// The app alone: the injector skips this pod, for the reason given,
    /// so it has no capture, no sidecar and no `tlsMode` mark (its peers
    /// send it plaintext).
    OutsideMesh(String),
    /// The ingress gateway: `mesh-proxy run --role router` is the pod's
    /// only process (no app, no capture).
    Gateway,
}

// === impl Role ===

impl Role {
    /// Whether the pod runs a proxy (sidecar or gateway).
    pub fn has_proxy(&self) -> bool {
        !matches!(self, Self::OutsideMesh(_))
    }

    /// Whether the pod runs an app.
    pub fn has_app(&self) -> bool {
        !matches!(self, Self::Gateway)
    }
}

/// One environment variable of the app.
#[derive(Clone, Debug, PartialEq)]
pub enum EnvVar {
    /// A literal.
    Value(String, String),
    /// `valueFrom.fieldRef.fieldPath` (`metadata.name`, ...).
    Field(String, String),
}

/// A service the pods resolve by name.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalService {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The VIP (`spec.clusterIP`).
    pub cluster_ip: Ipv4Addr,
    /// `spec.selector` (empty: endpoints are not the local mesh's pods).
    pub selector: BTreeMap<String, String>,
    /// Service ports.
    pub ports: Vec<LocalServicePort>,
}

/// One port of a [`LocalService`].
#[derive(Clone, Debug, PartialEq)]
pub struct LocalServicePort {
    /// The service port.
    pub port: u16,
    /// `targetPort` (a number or a container port's name; the port itself
    /// when unset).
    pub target: IntOrString,
    /// Whether the protocol is TCP (the default).
    pub tcp: bool,
}

/// Everything the local mesh starts for a directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods, in file order.
    pub pods: Vec<LocalPod>,
    /// Services with a VIP.
    pub services: Vec<LocalService>,
    /// Objects the local mesh adds to what mesh-control reads (the
    /// ingress gateway's Service), written beside the started pods.
    pub generated: Vec<serde_json::Value>,
}

// === impl Plan ===

impl Plan {
    /// Reads `dir`. Fails naming the file, object and field of the first
    /// pod or service the local mesh cannot run, or of a document that
    /// does not parse.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let mut plan = Self::default();
        let files = config_files(dir).with_context(|| format!("reading {}", dir.display()))?;
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for loaded in load_str(&file.display().to_string(), &text) {
                let origin = format!(
                    "{} {}/{} ({}:{})",
                    loaded.header.kind,
                    loaded.header.namespace,
                    loaded.header.name,
                    loaded.source.file,
                    loaded.source.line
                );
                let Some(object) = loaded.object else {
                    if let Some(error) = loaded.report.errors().next() {
                        bail!("{origin}: {}: {}", error.path, error.message);
                    }
                    continue;
                };
                match object {
                    MeshObject::Pod(pod) => {
                        let spec = pod
                            .spec
                            .as_ref()
                            .with_context(|| format!("{origin}: spec: required"))?;
                        plan.pods.push(pod_from(
                            &pod.metadata,
                            spec,
                            &loaded.header.namespace,
                            None,
                            &origin,
                        )?);
                    }
                    MeshObject::Deployment(deployment) => {
                        let spec = deployment
                            .spec
                            .as_ref()
                            .with_context(|| format!("{origin}: spec: required"))?;
                        let template_spec =
                            spec.template.spec.as_ref().with_context(|| {
                                format!("{origin}: spec.template.spec: required")
                            })?;
                        let metadata = spec.template.metadata.clone().unwrap_or_default();
                        let replicas = spec.replicas.unwrap_or(1);
                        if !(0..=16).contains(&replicas) {
                            bail!(
                                "{origin}: spec.replicas: the local mesh runs 0 to 16 replicas, not {replicas}"
                            );
                        }
                        for ordinal in 0..replicas {
                            let name = format!("{}-{ordinal}", loaded.header.name);
                            plan.pods.push(pod_from(
                                &metadata,
                                template_spec,
                                &loaded.header.namespace,
                                Some(name),
                                &origin,
                            )?);
                        }
                    }
                    MeshObject::Service(service) => {
                        let spec = service.spec.clone().unwrap_or_default();
                        if spec.type_.as_deref() == Some("ExternalName") {
                            continue;
                        }
                        match spec.cluster_ip.as_deref() {
                            Some("None") => continue,
                            Some(ip) => {
                                let cluster_ip = ip.parse().with_context(|| {
                                    format!(
                                        "{origin}: spec.clusterIP: {ip:?} is not an IPv4 address"
                                    )
                                })?;
                                plan.services.push(LocalService {
                                    name: loaded.header.name.clone(),
                                    namespace: loaded.header.namespace.clone(),
                                    cluster_ip,
                                    selector: spec.selector.clone().unwrap_or_default(),
                                    ports: spec
                                        .ports
                                        .iter()
                                        .flatten()
                                        .filter_map(|p| {
                                            let port = u16::try_from(p.port).ok()?;
                                            Some(LocalServicePort {
                                                port,
                                                target: p
                                                    .target_port
                                                    .clone()
                                                    .unwrap_or(IntOrString::Int(p.port)),
                                                tcp: p
                                                    .protocol
                                                    .as_deref()
                                                    .is_none_or(|p| p == "TCP"),
                                            })
                                        })
                                        .collect(),
                                });
                            }
                            None => bail!(
                                "{origin}: spec.clusterIP: required in the local mesh (there is no \
                                 Kubernetes to allocate one): give it an address outside the pod \
                                 subnet, e.g. 10.96.0.10"
                            ),
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut seen = BTreeMap::new();
        for pod in &plan.pods {
            if let Some(first) = seen.insert((&pod.namespace, &pod.name), &pod.origin) {
                bail!(
                    "{}: pod {}.{} is also defined by {first}",
                    pod.origin,
                    pod.name,
                    pod.namespace
                );
            }
        }
        Ok(plan)
    }
}

/// The hosts file of every pod: each service's short, namespaced and fully
/// qualified names to its VIP, as cluster DNS would answer (short names
/// only for services in `namespace`).
pub fn hosts_file(
    services: &[LocalService],
    namespace: &str,
    pod: &str,
    pod_ip: Ipv4Addr,
) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    out.push_str(&format!("{pod_ip}\t{pod}\n"));
    for svc in services {
        let (name, ns) = (&svc.name, &svc.namespace);
        let mut names = vec![
            format!("{name}.{ns}.svc.cluster.local"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}"),
        ];
        if ns == namespace {
            names.push(name.clone());
        }
        out.push_str(&format!("{}\t{}\n", svc.cluster_ip, names.join(" ")));
    }
    out
}

/// The Pod object mesh-control reads for a started pod: the user's labels
/// and service account, the address it got, Running and Ready, and for a
/// pod with a sidecar the mark injection puts on it
/// (`security.istio.io/tlsMode: istio`), so its peers' sidecars send it
/// mutual TLS (auto mTLS). Pods outside the mesh and the gateway have no
/// mark, so their peers send plaintext, as in a cluster.
pub fn running_pod(pod: &LocalPod, ip: Ipv4Addr) -> serde_json::Value {
    let mut labels = pod.labels.clone();
    if pod.role == Role::Sidecar {
        labels.insert(LABEL_TLS_MODE.into(), "istio".into());
    }
    let container = if pod.role == Role::Gateway {
        "istio-proxy"
    } else {
        "app"
    };
    let ports: Vec<_> = pod
        .ports
        .iter()
        .map(|(name, port)| json!({"name": name, "containerPort": port}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": labels,
        },
        "spec": {
            "serviceAccountName": pod.service_account,
            "containers": [{"name": container, "image": "local", "ports": ports}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

fn pod_from(
    metadata: &ObjectMeta,
    spec: &PodSpec,
    namespace: &str,
    name: Option<String>,
    origin: &str,
) -> anyhow::Result<LocalPod> {
    let name = name
        .or_else(|| metadata.name.clone())
        .with_context(|| format!("{origin}: metadata.name: required"))?;
    let container: &Container = spec.containers.first().with_context(|| {
        format!("{origin}: spec.containers: at least one container is required")
    })?;
    let mut command: Vec<String> = container.command.clone().unwrap_or_default();
    command.extend(container.args.clone().unwrap_or_default());
    if command.is_empty() {
        bail!(
            "{origin}: spec.containers[0].command: required in the local mesh, which runs the \
             command as a program on this machine (the image is ignored)"
        );
    }
    let mut env = Vec::new();
    for (i, var) in container.env.iter().flatten().enumerate() {
        if let Some(value) = &var.value {
            env.push(EnvVar::Value(var.name.clone(), value.clone()));
        } else if let Some(field) = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
            env.push(EnvVar::Field(var.name.clone(), field.field_path.clone()));
        } else if var.value_from.is_some() {
            bail!(
                "{origin}: spec.containers[0].env[{i}].valueFrom: only fieldRef is supported in the local mesh"
            );
        }
    }
    let ports = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                u16::try_from(p.container_port).ok()?,
            ))
        })
        .collect();
    // The webhook's own rule, on the pod as it would be created.
    let as_created = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_string()),
            ..metadata.clone()
        },
        spec: Some(spec.clone()),
        status: None,
    };
    let role = match mesh_control::inject::skip_reason(&as_created, namespace, &inject_settings()) {
        Some(reason) => Role::OutsideMesh(reason),
        None => Role::Sidecar,
    };
    Ok(LocalPod {
        name,
        namespace: namespace.to_string(),
        labels: metadata.labels.clone().unwrap_or_default(),
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        command,
        env,
        ports,
        origin: origin.to_string(),
        role,
    })
}

/// What the injector is told about the local mesh: its control plane in
/// `istio-system`, revision `default`, as `meshctl install` deploys it.
fn inject_settings() -> mesh_control::inject::Settings {
    mesh_control::inject::Settings::new("mesh-proxy", CONTROL_NAMESPACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> anyhow::Result<Plan> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.yaml"), yaml).unwrap();
        Plan::read(dir.path())
    }

    #[test]
    fn pods_and_deployment_replicas_with_their_commands() {
        let plan = plan(
            r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: demo}
spec: {clusterIP: 10.96.0.20, selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: reviews}}
  template:
    metadata: {labels: {app: reviews, version: v1}}
    spec:
      serviceAccountName: reviews
      containers:
      - name: app
        image: ignored
        command: [mesh-echo]
        args: [--port, "9080"]
        env:
        - {name: ECHO_VERSION, value: v1}
        - name: ECHO_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{name: http, containerPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec: {containers: [{name: c, image: x, command: [sleep, infinity]}]}
"#,
        )
        .unwrap();
        let names: Vec<_> = plan.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["reviews-v1-0", "reviews-v1-1", "client"]);
        let reviews = &plan.pods[1];
        assert_eq!(reviews.command, ["mesh-echo", "--port", "9080"]);
        assert_eq!(reviews.labels["version"], "v1");
        assert_eq!(reviews.service_account, "reviews");
        assert_eq!(reviews.ports, [("http".to_string(), 9080)]);
        assert_eq!(
            reviews.env[1],
            EnvVar::Field("ECHO_NAME".into(), "metadata.name".into())
        );
        assert_eq!(plan.pods[2].service_account, "default");
        assert!(plan.pods.iter().all(|p| p.role == Role::Sidecar));
        assert_eq!(
            plan.services,
            [LocalService {
                name: "reviews".into(),
                namespace: "demo".into(),
                cluster_ip: "10.96.0.20".parse().unwrap(),
                selector: BTreeMap::from([("app".into(), "reviews".into())]),
                ports: vec![LocalServicePort {
                    port: 9080,
                    target: IntOrString::Int(9080),
                    tcp: true,
                }],
            }]
        );
    }

    #[test]
    fn pods_the_injector_skips_run_outside_the_mesh() {
        let plan = plan(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: by-label, namespace: demo, labels: {sidecar.istio.io/inject: "false"}}
spec: {containers: [{name: c, image: x, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: by-annotation, namespace: demo, annotations: {sidecar.istio.io/inject: "false"}}
spec: {containers: [{name: c, image: x, command: [sleep, infinity]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy, namespace: demo}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata: {labels: {app: legacy, sidecar.istio.io/inject: "false"}}
    spec: {containers: [{name: c, image: x, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: system, namespace: kube-system}
spec: {containers: [{name: c, image: x, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: canary, namespace: demo, labels: {istio.io/rev: canary}}
spec: {containers: [{name: c, image: x, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: meshed, namespace: demo, labels: {sidecar.istio.io/inject: "true"}}
spec: {containers: [{name: c, image: x, command: [sleep, infinity]}]}
"#,
        )
        .unwrap();
        let roles: Vec<_> = plan
            .pods
            .iter()
            .map(|p| (p.name.as_str(), &p.role))
            .collect();
        let outside = |reason: &str| Role::OutsideMesh(reason.to_string());
        assert_eq!(
            roles,
            [
                ("by-label", &outside("sidecar.istio.io/inject: \"false\"")),
                (
                    "by-annotation",
                    &outside("sidecar.istio.io/inject: \"false\"")
                ),
                ("legacy-0", &outside("sidecar.istio.io/inject: \"false\"")),
                (
                    "system",
                    &outside("namespace kube-system is never injected")
                ),
                (
                    "canary",
                    &outside("istio.io/rev: canary belongs to another control plane revision")
                ),
                ("meshed", &Role::Sidecar),
            ]
        );
        let running = running_pod(&plan.pods[0], "10.99.0.3".parse().unwrap());
        assert!(
            running["metadata"]["labels"].get(LABEL_TLS_MODE).is_none(),
            "{running}"
        );
        let running = running_pod(&plan.pods[5], "10.99.0.4".parse().unwrap());
        assert_eq!(running["metadata"]["labels"][LABEL_TLS_MODE], "istio");
    }

    #[test]
    fn what_cannot_run_locally_is_named_with_its_field() {
        let err = plan("apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c, image: nginx}]}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Pod default/web") && err.contains("spec.containers[0].command"),
            "{err}"
        );
        let err = plan(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("Service default/web") && err.contains("spec.clusterIP"),
            "{err}"
        );
    }

    #[test]
    fn hosts_file_names_services_as_cluster_dns_would() {
        let services = [
            LocalService {
                name: "reviews".into(),
                namespace: "demo".into(),
                cluster_ip: "10.96.0.20".parse().unwrap(),
                selector: BTreeMap::new(),
                ports: vec![],
            },
            LocalService {
                name: "db".into(),
                namespace: "other".into(),
                cluster_ip: "10.96.0.30".parse().unwrap(),
                selector: BTreeMap::new(),
                ports: vec![],
            },
        ];
        let hosts = hosts_file(&services, "demo", "client", "10.99.0.2".parse().unwrap());
        assert!(
            hosts.contains(
                "10.96.0.20\treviews.demo.svc.cluster.local reviews.demo.svc reviews.demo reviews\n"
            ),
            "{hosts}"
        );
        assert!(
            hosts.contains("10.96.0.30\tdb.other.svc.cluster.local db.other.svc db.other\n"),
            "{hosts}"
        );
        assert!(hosts.contains("10.99.0.2\tclient\n"));
    }
}
