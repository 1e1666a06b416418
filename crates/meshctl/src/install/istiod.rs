//! The control plane workload: istiod's Deployment, Service,
//! PodDisruptionBudget and HorizontalPodAutoscaler.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::wellknown::{
    CONTROL_MONITORING_PORT, WEBHOOK_PORT, XDS_PLAINTEXT_PORT, XDS_TLS_PORT,
};

use super::manifest::{Builder, Component, RenderError, labels, meta, quantity};
use super::values::{Resources, Values};

/// Where mesh-control writes the CA from its Secret (an emptyDir).
pub const CA_DIR: &str = "/var/run/mesh/ca";

/// UID of distroless's `nonroot` user, which the mesh-control image runs as.
const NONROOT_UID: i64 = 65532;

/// istiod's pod labels.
fn pod_labels(values: &Values) -> BTreeMap<String, String> {
    labels(values, &[("app", "istiod"), ("istio", "pilot")])
}

/// istiod's selector: the app and the revision, so two revisions' pods
/// never fall under one Service or PDB.
fn selector(values: &Values) -> BTreeMap<String, String> {
    labels(values, &[("app", "istiod")])
}

/// The container arguments (the contract's command line, flags only; the
/// command is `mesh-control`).
pub fn args(values: &Values) -> Vec<String> {
    let mut args: Vec<String> = [
        "--kubernetes".to_string(),
        "--xds-address".into(),
        format!("0.0.0.0:{XDS_PLAINTEXT_PORT}"),
        "--monitoring-address".into(),
        format!("0.0.0.0:{CONTROL_MONITORING_PORT}"),
        "--secure-address".into(),
        format!("0.0.0.0:{XDS_TLS_PORT}"),
        "--webhook-address".into(),
        format!("0.0.0.0:{WEBHOOK_PORT}"),
        "--ca-dir".into(),
        CA_DIR.into(),
    ]
    .into();
    if values.values.global.log_as_json {
        args.extend(["--log-format".into(), "json".into()]);
    }
    args
}

pub(crate) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

pub(crate) fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `requests`/`limits` from values; empty strings are left out.
pub(crate) fn resources(key: &str, r: &Resources) -> Result<ResourceRequirements, RenderError> {
    let pair = |which: &str, cm: &super::values::CpuMemory| -> Result<_, RenderError> {
        let mut map = BTreeMap::new();
        for (name, value) in [("cpu", &cm.cpu), ("memory", &cm.memory)] {
            if !value.is_empty() {
                map.insert(
                    name.to_string(),
                    quantity(&format!("{key}.{which}.{name}"), value)?,
                );
            }
        }
        Ok((!map.is_empty()).then_some(map))
    };
    Ok(ResourceRequirements {
        requests: pair("requests", &r.requests)?,
        limits: pair("limits", &r.limits)?,
        ..Default::default()
    })
}

/// A container security context that can do nothing but run the binary.
pub(crate) fn restricted(uid: i64) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        ..Default::default()
    }
}

pub(crate) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn deployment(values: &Values) -> Result<Deployment, RenderError> {
    let pilot = &values.values.pilot;
    let mut env = vec![
        field_env("POD_NAMESPACE", "metadata.namespace"),
        env("REVISION", values.revision_label()),
        env("MESH_PROXY_IMAGE", values.image("mesh-proxy")),
        env(
            "MESH_WEBHOOK_CONFIG",
            values.revisioned("istio-sidecar-injector"),
        ),
        env("RUST_LOG", pilot.log_level.clone()),
    ];
    env.extend(pilot.env.iter().map(|(k, v)| self::env(k, v.clone())));
    let container = Container {
        name: "discovery".into(),
        image: Some(values.image("mesh-control")),
        command: Some(vec!["mesh-control".into()]),
        args: Some(args(values)),
        env: Some(env),
        ports: Some(vec![
            port("grpc-xds", XDS_PLAINTEXT_PORT),
            port("https-dns", XDS_TLS_PORT),
            port("http-monitoring", CONTROL_MONITORING_PORT),
            port("https-webhook", WEBHOOK_PORT),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(CONTROL_MONITORING_PORT.into()),
                ..Default::default()
            }),
            initial_delay_seconds: Some(1),
            period_seconds: Some(3),
            timeout_seconds: Some(5),
            ..Default::default()
        }),
        resources: Some(resources("values.pilot.resources", &pilot.resources)?),
        security_context: Some(restricted(NONROOT_UID)),
        volume_mounts: Some(vec![VolumeMount {
            name: "ca".into(),
            mount_path: CA_DIR.into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    Ok(Deployment {
        metadata: meta(
            values,
            values.revisioned("istiod"),
            &[("app", "istiod"), ("istio", "pilot")],
        ),
        spec: Some(DeploymentSpec {
            // With the HPA on, replicas are its to set: a count here would
            // be reapplied by every `meshctl install` and fight it.
            replicas: (!pilot.autoscale_enabled).then_some(pilot.replica_count),
            selector: LabelSelector {
                match_labels: Some(selector(values)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(values)),
                    annotations: Some(BTreeMap::from([(
                        "sidecar.istio.io/inject".to_string(),
                        "false".to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(values.revisioned("istiod")),
                    containers: vec![container],
                    security_context: Some(pod_security()),
                    volumes: Some(vec![Volume {
                        name: "ca".into(),
                        empty_dir: Some(EmptyDirVolumeSource {
                            medium: Some("Memory".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub(crate) fn service_port(name: &str, port: u16, target: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: port.into(),
        target_port: Some(IntOrString::Int(target.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn service(values: &Values) -> Service {
    Service {
        metadata: meta(
            values,
            values.revisioned("istiod"),
            &[("app", "istiod"), ("istio", "pilot")],
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector(values)),
            ports: Some(vec![
                service_port("grpc-xds", XDS_PLAINTEXT_PORT, XDS_PLAINTEXT_PORT),
                service_port("https-dns", XDS_TLS_PORT, XDS_TLS_PORT),
                service_port("https-webhook", 443, WEBHOOK_PORT),
                service_port(
                    "http-monitoring",
                    CONTROL_MONITORING_PORT,
                    CONTROL_MONITORING_PORT,
                ),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn pdb(meta: ObjectMeta, selector: BTreeMap<String, String>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn hpa(values: &Values) -> HorizontalPodAutoscaler {
    let pilot = &values.values.pilot;
    HorizontalPodAutoscaler {
        metadata: meta(values, values.revisioned("istiod"), &[("app", "istiod")]),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: values.revisioned("istiod"),
            },
            min_replicas: Some(pilot.autoscale_min),
            max_replicas: pilot.autoscale_max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(pilot.cpu.target_average_utilization),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pushes istiod's workload objects.
pub(crate) fn push(b: &mut Builder, values: &Values) -> Result<(), RenderError> {
    b.push(Component::Pilot, &deployment(values)?)?;
    b.push(Component::Pilot, &service(values))?;
    b.push(
        Component::Pilot,
        &pdb(
            meta(values, values.revisioned("istiod"), &[("app", "istiod")]),
            selector(values),
        ),
    )?;
    if values.values.pilot.autoscale_enabled {
        b.push(Component::Pilot, &hpa(values))?;
    }
    Ok(())
}
