//! The ingress gateway (profiles `default` and `demo`): mesh-proxy in the
//! router role behind a LoadBalancer Service, with Istio's names and labels
//! so `selector: {istio: ingressgateway}` in users' Gateways finds it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::wellknown::{
    PROXY_HEALTH_PORT, PROXY_PROMETHEUS_PORT, PROXY_UID, XDS_PLAINTEXT_PORT,
};

use super::istiod::{env, field_env, pdb, pod_security, port, resources, restricted, service_port};
use super::manifest::{Builder, Component, RenderError, discovery_address, labels, meta};
use super::values::Values;

/// The gateway's Deployment, Service and ServiceAccount name.
pub const NAME: &str = "istio-ingressgateway";

const GATEWAY_LABELS: [(&str, &str); 2] = [("app", NAME), ("istio", "ingressgateway")];

/// Pushes the gateway's ServiceAccount (with the RBAC objects).
pub(crate) fn push_service_account(b: &mut Builder, values: &Values) -> Result<(), RenderError> {
    b.push(
        Component::IngressGateway,
        &ServiceAccount {
            metadata: meta(values, NAME.into(), &GATEWAY_LABELS),
            ..Default::default()
        },
    )
}

fn deployment(values: &Values) -> Result<Deployment, RenderError> {
    let gw = &values.values.gateways.ingress;
    let container = Container {
        name: "istio-proxy".into(),
        image: Some(values.image("mesh-proxy")),
        args: Some(vec![
            "run".into(),
            "--role".into(),
            "router".into(),
            "--xds-address".into(),
            discovery_address(values, XDS_PLAINTEXT_PORT),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            env("MESH_LOG_LEVEL", gw.log_level.clone()),
        ]),
        ports: Some(vec![
            port("status-port", PROXY_HEALTH_PORT),
            port("http2", 8080),
            port("https", 8443),
            port("http-envoy-prom", PROXY_PROMETHEUS_PORT),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".into()),
                port: IntOrString::Int(PROXY_HEALTH_PORT.into()),
                ..Default::default()
            }),
            initial_delay_seconds: Some(1),
            period_seconds: Some(2),
            failure_threshold: Some(30),
            ..Default::default()
        }),
        resources: Some(resources(
            "values.gateways.istio-ingressgateway.resources",
            &gw.resources,
        )?),
        security_context: Some(restricted(PROXY_UID.into())),
        ..Default::default()
    };
    Ok(Deployment {
        metadata: meta(values, NAME.into(), &GATEWAY_LABELS),
        spec: Some(DeploymentSpec {
            replicas: Some(gw.replica_count),
            selector: LabelSelector {
                match_labels: Some(selector()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(values, &GATEWAY_LABELS)),
                    annotations: Some(BTreeMap::from([(
                        "sidecar.istio.io/inject".to_string(),
                        "false".to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NAME.into()),
                    containers: vec![container],
                    security_context: Some(pod_security()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The gateway selector: not the revision, so a revision upgrade keeps
/// the one gateway Service in front of whichever pods run.
fn selector() -> BTreeMap<String, String> {
    GATEWAY_LABELS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn service(values: &Values) -> Service {
    Service {
        metadata: meta(values, NAME.into(), &GATEWAY_LABELS),
        spec: Some(ServiceSpec {
            type_: Some(values.values.gateways.ingress.service_type.clone()),
            selector: Some(selector()),
            ports: Some(vec![
                service_port("status-port", PROXY_HEALTH_PORT, PROXY_HEALTH_PORT),
                service_port("http2", 80, 8080),
                service_port("https", 443, 8443),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pushes the gateway's Deployment, Service and PDB.
pub(crate) fn push(b: &mut Builder, values: &Values) -> Result<(), RenderError> {
    b.push(Component::IngressGateway, &deployment(values)?)?;
    b.push(Component::IngressGateway, &service(values))?;
    b.push(
        Component::IngressGateway,
        &pdb(meta(values, NAME.into(), &GATEWAY_LABELS), selector()),
    )?;
    Ok(())
}
