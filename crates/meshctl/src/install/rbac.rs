//! istiod's ServiceAccount and least-privilege RBAC: read (list/watch)
//! what the Kubernetes source watches, write only what mesh-control writes
//! (root-cert ConfigMaps, status, events, the webhook's caBundle, the CA
//! Secret and leader Leases in istio-system). No wildcard verb or resource.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

use super::manifest::{Builder, Component, NAMESPACE, RenderError, meta};
use super::values::Values;

/// The API groups of the Istio kinds mesh-control serves.
pub const ISTIO_GROUPS: [&str; 3] = [
    "networking.istio.io",
    "security.istio.io",
    "telemetry.istio.io",
];

fn rule(groups: &[&str], resources: &[String], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        resources: Some(resources.to_vec()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The plural resource names of the Istio kinds in `group`.
fn istio_resources(group: &str) -> Vec<String> {
    mesh_api::crd::all_crds()
        .into_iter()
        .filter(|crd| crd.spec.group == group)
        .map(|crd| crd.spec.names.plural)
        .collect()
}

/// The cluster-wide rules (ClusterRole `istiod-istio-system`).
pub fn cluster_rules(values: &Values) -> Vec<PolicyRule> {
    let mut rules = vec![
        rule(
            &[""],
            &names(&[
                "services",
                "endpoints",
                "pods",
                "namespaces",
                "nodes",
                "configmaps",
                // Namespace-wide read, as Istio: gateways' credentialName.
                "secrets",
            ]),
            &["list", "watch"],
        ),
        rule(
            &["discovery.k8s.io"],
            &names(&["endpointslices"]),
            &["list", "watch"],
        ),
    ];
    for group in ISTIO_GROUPS {
        let resources = istio_resources(group);
        let status: Vec<String> = resources.iter().map(|r| format!("{r}/status")).collect();
        rules.push(rule(&[group], &resources, &["get", "list", "watch"]));
        rules.push(rule(&[group], &status, &["get", "update", "patch"]));
    }
    rules.extend([
        // istio-ca-root-cert in every namespace.
        rule(&[""], &names(&["configmaps"]), &["create", "update"]),
        rule(
            &["authentication.k8s.io"],
            &names(&["tokenreviews"]),
            &["create"],
        ),
        PolicyRule {
            // Only its own configuration: the caBundle patched at start.
            resource_names: Some(vec![values.revisioned("istio-sidecar-injector")]),
            ..rule(
                &["admissionregistration.k8s.io"],
                &names(&["mutatingwebhookconfigurations"]),
                &["get", "patch"],
            )
        },
        rule(
            &["", "events.k8s.io"],
            &names(&["events"]),
            &["create", "patch"],
        ),
    ]);
    rules
}

/// The rules in istio-system (Role `istiod`).
pub fn namespace_rules() -> Vec<PolicyRule> {
    vec![
        // istio-ca-secret, created once under the istio-ca-root Lease.
        rule(&[""], &names(&["secrets"]), &["get", "create", "update"]),
        rule(
            &["coordination.k8s.io"],
            &names(&["leases"]),
            &["get", "create", "update"],
        ),
    ]
}

fn subject(values: &Values) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: values.revisioned("istiod"),
        namespace: Some(NAMESPACE.into()),
        ..Default::default()
    }
}

/// Pushes the ServiceAccount, ClusterRole(Binding) and Role(Binding).
pub(crate) fn push(b: &mut Builder, values: &Values) -> Result<(), RenderError> {
    let pilot = [("app", "istiod")];
    let sa = values.revisioned("istiod");
    let cluster_name = format!("{sa}-{NAMESPACE}");
    b.push(
        Component::Base,
        &ServiceAccount {
            metadata: meta(values, sa.clone(), &pilot),
            ..Default::default()
        },
    )?;
    let mut cluster_meta = meta(values, cluster_name.clone(), &pilot);
    cluster_meta.namespace = None;
    b.push(
        Component::Base,
        &ClusterRole {
            metadata: cluster_meta.clone(),
            rules: Some(cluster_rules(values)),
            ..Default::default()
        },
    )?;
    b.push(
        Component::Base,
        &ClusterRoleBinding {
            metadata: cluster_meta,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: cluster_name,
            },
            subjects: Some(vec![subject(values)]),
        },
    )?;
    b.push(
        Component::Base,
        &Role {
            metadata: meta(values, sa.clone(), &pilot),
            rules: Some(namespace_rules()),
        },
    )?;
    b.push(
        Component::Base,
        &RoleBinding {
            metadata: meta(values, sa.clone(), &pilot),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: sa,
            },
            subjects: Some(vec![subject(values)]),
        },
    )?;
    Ok(())
}
