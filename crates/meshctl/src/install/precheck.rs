//! `meshctl precheck`: can this cluster take the install, and can this
//! user do it? The API server answers and is recent enough, the user may
//! create every kind the manifest holds (SelfSubjectAccessReview), and no
//! other control plane is in the way.

use std::collections::BTreeSet;
use std::io::Write;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

use super::manifest::{NAMESPACE, Object};

/// The oldest Kubernetes minor version supported (1.x).
pub const MIN_MINOR: u32 = 28;
/// The first minor version with native sidecars on by default.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The install would fail or break the cluster.
    Error(String),
    /// The install works, with a caveat.
    Warning(String),
}

/// The Kubernetes minor version in `/version`'s `minor` (`"29"`, or
/// `"29+"` as some providers write it).
fn minor(info: &k8s_openapi::apimachinery::pkg::version::Info) -> Option<u32> {
    if info.major.trim_end_matches('+') != "1" {
        return None;
    }
    let digits: String = info
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Runs every check; findings in the order found.
pub async fn check(client: &Client, objects: &[Object], revision: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    match client.apiserver_version().await {
        Err(e) => {
            findings.push(Finding::Error(format!(
                "cannot reach the Kubernetes API server: {e} (check --kubeconfig/--context)"
            )));
            return findings;
        }
        Ok(info) => match minor(&info) {
            Some(m) if m < MIN_MINOR => findings.push(Finding::Error(format!(
                "Kubernetes {} is too old: 1.{MIN_MINOR} or newer is required",
                info.git_version
            ))),
            Some(m) if m < NATIVE_SIDECAR_MINOR => findings.push(Finding::Warning(format!(
                "Kubernetes {}: native sidecars need 1.{NATIVE_SIDECAR_MINOR}; proxies are injected as regular containers (the app waits for the proxy, Jobs need the proxy stopped to finish)",
                info.git_version
            ))),
            Some(_) => {}
            None => findings.push(Finding::Warning(format!(
                "cannot read the Kubernetes version from major {:?} minor {:?}",
                info.major, info.minor
            ))),
        },
    }
    access(client, objects, &mut findings).await;
    existing(client, revision, &mut findings).await;
    findings
}

/// Whether the user may create each (group, resource, namespace) of the manifest.
async fn access(client: &Client, objects: &[Object], findings: &mut Vec<Finding>) {
    let needed: BTreeSet<(String, String, Option<String>)> = objects
        .iter()
        .map(|o| {
            (
                o.resource.group.clone(),
                o.resource.plural.clone(),
                o.namespace.clone(),
            )
        })
        .collect();
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for (group, resource, namespace) in needed {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.clone()),
                    resource: Some(resource.clone()),
                    namespace: namespace.clone(),
                    verb: Some("create".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let what = match (group.as_str(), &namespace) {
            ("", Some(ns)) => format!("{resource} in namespace {ns}"),
            ("", None) => resource.clone(),
            (g, Some(ns)) => format!("{resource}.{g} in namespace {ns}"),
            (g, None) => format!("{resource}.{g}"),
        };
        match api.create(&PostParams::default(), &review).await {
            Ok(answer) => {
                let status = answer.status.unwrap_or_default();
                if !status.allowed {
                    let why = status
                        .reason
                        .filter(|r| !r.is_empty())
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    findings.push(Finding::Error(format!(
                        "you are not allowed to create {what}{why}"
                    )));
                }
            }
            Err(e) => findings.push(Finding::Error(format!(
                "cannot check whether you may create {what}: {e}"
            ))),
        }
    }
}

/// istiod Deployments already in istio-system.
async fn existing(client: &Client, revision: &str, findings: &mut Vec<Finding>) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let list = match api.list(&ListParams::default().labels("app=istiod")).await {
        Ok(list) => list,
        Err(e) => {
            findings.push(Finding::Error(format!(
                "cannot list Deployments in {NAMESPACE}: {e}"
            )));
            return;
        }
    };
    for d in list.items {
        let name = d.metadata.name.clone().unwrap_or_default();
        let rev = d
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(mesh_api::wellknown::LABEL_REVISION))
            .cloned()
            .unwrap_or_else(|| "default".into());
        let image = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        if !image.contains("mesh-control") {
            findings.push(Finding::Error(format!(
                "Deployment {NAMESPACE}/{name} (revision {rev}) runs {image:?}, not mesh-control: another Istio installation is present; remove it (istioctl uninstall --purge) or install into another cluster"
            )));
        } else if rev != revision {
            findings.push(Finding::Warning(format!(
                "revision {rev} is already installed (Deployment {NAMESPACE}/{name}); revision {revision} is installed beside it, and namespaces keep revision {rev} until relabelled"
            )));
        }
    }
}

/// Prints the findings as istioctl does; returns the exit code.
pub fn report(findings: &[Finding], out: &mut dyn Write) -> std::io::Result<i32> {
    let mut errors = 0;
    for f in findings {
        match f {
            Finding::Error(m) => {
                errors += 1;
                writeln!(out, "✘ Error: {m}")?;
            }
            Finding::Warning(m) => writeln!(out, "! Warning: {m}")?,
        }
    }
    if errors == 0 {
        writeln!(
            out,
            "✔ No issues found when checking the cluster. The mesh is safe to install or upgrade!"
        )?;
        Ok(0)
    } else {
        writeln!(out, "{errors} error(s) found: fix them before installing.")?;
        Ok(1)
    }
}
