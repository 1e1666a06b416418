//! The MutatingWebhookConfiguration that sends pod creations to istiod's
//! `/inject`, with Istio's webhook names and selectors. Every webhook
//! leaves kube-system and istio-system alone so a failing control plane
//! (failurePolicy Fail) can never stop the pods that would repair it.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use mesh_api::wellknown::{LABEL_INJECTION, LABEL_REVISION, LABEL_SIDECAR_INJECT};

use super::manifest::{Builder, Component, NAMESPACE, RenderError, meta};
use super::values::Values;

/// Namespaces no webhook ever injects.
pub const EXCLUDED_NAMESPACES: [&str; 2] = ["kube-system", NAMESPACE];

fn req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

fn selector(exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(exprs),
        ..Default::default()
    }
}

/// A namespace selector: `exprs` and the exclusions.
fn namespaces(mut exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
    exprs.push(req(
        "kubernetes.io/metadata.name",
        "NotIn",
        &EXCLUDED_NAMESPACES,
    ));
    selector(exprs)
}

fn webhook(
    values: &Values,
    name: &str,
    ns: LabelSelector,
    objects: LabelSelector,
) -> MutatingWebhook {
    MutatingWebhook {
        name: name.into(),
        client_config: WebhookClientConfig {
            service: Some(ServiceReference {
                name: values.revisioned("istiod"),
                namespace: NAMESPACE.into(),
                path: Some("/inject".into()),
                port: Some(443),
            }),
            // Left empty: mesh-control patches its CA in at start.
            ca_bundle: None,
            ..Default::default()
        },
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            ..Default::default()
        }]),
        admission_review_versions: vec!["v1".into()],
        side_effects: "None".into(),
        failure_policy: Some("Fail".into()),
        reinvocation_policy: Some("Never".into()),
        timeout_seconds: Some(10),
        namespace_selector: Some(ns),
        object_selector: Some(objects),
        ..Default::default()
    }
}

/// The configuration's webhooks for `values`' revision.
pub fn webhooks(values: &Values) -> Vec<MutatingWebhook> {
    if values.revision.is_empty() {
        vec![
            webhook(
                values,
                "namespace.sidecar-injector.istio.io",
                namespaces(vec![req(LABEL_INJECTION, "In", &["enabled"])]),
                selector(vec![req(LABEL_SIDECAR_INJECT, "NotIn", &["false"])]),
            ),
            webhook(
                values,
                "object.sidecar-injector.istio.io",
                namespaces(vec![
                    req(LABEL_INJECTION, "DoesNotExist", &[]),
                    req(LABEL_REVISION, "DoesNotExist", &[]),
                ]),
                selector(vec![req(LABEL_SIDECAR_INJECT, "In", &["true"])]),
            ),
        ]
    } else {
        let rev = values.revision.as_str();
        vec![
            webhook(
                values,
                "rev.namespace.sidecar-injector.istio.io",
                namespaces(vec![
                    req(LABEL_REVISION, "In", &[rev]),
                    req(LABEL_INJECTION, "DoesNotExist", &[]),
                ]),
                selector(vec![req(LABEL_SIDECAR_INJECT, "NotIn", &["false"])]),
            ),
            webhook(
                values,
                "rev.object.sidecar-injector.istio.io",
                namespaces(vec![
                    req(LABEL_REVISION, "DoesNotExist", &[]),
                    req(LABEL_INJECTION, "DoesNotExist", &[]),
                ]),
                selector(vec![
                    req(LABEL_SIDECAR_INJECT, "NotIn", &["false"]),
                    req(LABEL_REVISION, "In", &[rev]),
                ]),
            ),
        ]
    }
}

/// Pushes the MutatingWebhookConfiguration.
pub(crate) fn push(b: &mut Builder, values: &Values) -> Result<(), RenderError> {
    let mut metadata = meta(
        values,
        values.revisioned("istio-sidecar-injector"),
        &[("app", "sidecar-injector")],
    );
    metadata.namespace = None;
    b.push(
        Component::Webhook,
        &MutatingWebhookConfiguration {
            metadata,
            webhooks: Some(webhooks(values)),
        },
    )
}
