//! Talking to the cluster: server-side apply of the rendered objects, the
//! waits (CRDs Established, Deployments rolled out) and uninstall.
//!
//! Install applies CRDs first and waits for them, since nothing that uses
//! the kinds may be applied before the API server serves them; then every
//! other object in manifest order; then waits for each Deployment the way
//! `kubectl rollout status` does. One deadline covers all the waiting, and
//! running out of it names every object that is not ready yet.

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use tokio::time::Instant;

use super::manifest::{Component, Object};

/// The field manager of every apply (what `kubectl` shows as the owner).
pub const FIELD_MANAGER: &str = "meshctl";

/// How install waits.
#[derive(Clone, Debug)]
pub struct WaitOptions {
    /// Total time for CRDs and rollouts.
    pub timeout: Duration,
    /// Time between two readiness reads.
    pub poll: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            timeout: Duration::from_secs(300),
            poll: Duration::from_secs(1),
        }
    }
}

/// What can go wrong against the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server refused or failed a request about one object.
    #[error("{action} {object}: {source}")]
    Request {
        /// apply, read, delete.
        action: &'static str,
        /// `Kind namespace/name`.
        object: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Waiting ran out of time.
    #[error(
        "timed out after {timeout:?} waiting for {}; check `kubectl -n istio-system get pods` and `kubectl -n istio-system describe deployment` (or retry with a longer --timeout)",
        .not_ready.join(", ")
    )]
    Timeout {
        /// The --timeout.
        timeout: Duration,
        /// Each object still not ready, with why.
        not_ready: Vec<String>,
    },
    /// Writing progress failed.
    #[error("writing progress: {0}")]
    Io(#[from] std::io::Error),
}

fn api(client: &Client, object: &Object) -> Api<DynamicObject> {
    match &object.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &object.resource),
        None => Api::all_with(client.clone(), &object.resource),
    }
}

/// Server-side applies one object (forced: meshctl owns these fields).
pub async fn apply(client: &Client, object: &Object) -> Result<(), ApplyError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api(client, object)
        .patch(&object.name, &params, &Patch::Apply(&object.body))
        .await
        .map(drop)
        .map_err(|source| ApplyError::Request {
            action: "applying",
            object: object.describe(),
            source,
        })
}

/// Why a CRD is not yet served, or `None` once it is Established.
fn crd_not_ready(crd: &CustomResourceDefinition) -> Option<String> {
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    (!established).then(|| "not Established".to_string())
}

/// Why a Deployment has not rolled out, or `None` once it has (the checks
/// of `kubectl rollout status`).
pub fn rollout_not_ready(d: &Deployment) -> Option<String> {
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or(0) < generation {
        return Some("the new spec is not observed yet".into());
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        return Some(format!("{updated} of {desired} replicas updated"));
    }
    if total > updated {
        return Some(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < updated {
        return Some(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    None
}

/// Polls `objects` until `check` says each is ready, or the deadline.
async fn wait_for<K, F>(
    client: &Client,
    objects: &[&Object],
    check: F,
    deadline: Instant,
    options: &WaitOptions,
) -> Result<(), ApplyError>
where
    K: serde::de::DeserializeOwned + Clone + std::fmt::Debug,
    F: Fn(&K) -> Option<String>,
{
    let mut pending: Vec<&Object> = objects.to_vec();
    loop {
        let mut still = Vec::new();
        let mut reasons = Vec::new();
        for object in pending {
            let found = api(client, object).get(&object.name).await;
            let reason = match found {
                Ok(dynamic) => {
                    let typed =
                        serde_json::to_value(&dynamic).and_then(serde_json::from_value::<K>);
                    match typed {
                        Ok(k) => check(&k),
                        Err(e) => Some(format!("unreadable status: {e}")),
                    }
                }
                // Not there yet (an aggregated API can lag the apply).
                Err(kube::Error::Api(s)) if s.code == 404 => Some("not found".into()),
                Err(source) => {
                    return Err(ApplyError::Request {
                        action: "reading",
                        object: object.describe(),
                        source,
                    });
                }
            };
            if let Some(reason) = reason {
                reasons.push(format!("{} ({reason})", object.describe()));
                still.push(object);
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() + options.poll > deadline {
            return Err(ApplyError::Timeout {
                timeout: options.timeout,
                not_ready: reasons,
            });
        }
        tokio::time::sleep(options.poll).await;
        pending = still;
    }
}

fn of<'a>(objects: &'a [Object], component: Component, kind: &str) -> Vec<&'a Object> {
    objects
        .iter()
        .filter(|o| o.component == component && o.resource.kind == kind)
        .collect()
}

/// Installs `objects` (in manifest order) and waits until they are ready,
/// writing one `✔` line per component as it becomes ready.
pub async fn install(
    client: &Client,
    objects: &[Object],
    options: &WaitOptions,
    out: &mut dyn Write,
) -> Result<(), ApplyError> {
    let deadline = Instant::now() + options.timeout;
    let crds: Vec<&Object> = objects
        .iter()
        .filter(|o| o.component == Component::Crds)
        .collect();
    for crd in &crds {
        apply(client, crd).await?;
    }
    wait_for::<CustomResourceDefinition, _>(client, &crds, crd_not_ready, deadline, options)
        .await?;
    let last_base = objects.iter().rposition(|o| o.component == Component::Base);
    for (i, object) in objects.iter().enumerate() {
        if object.component == Component::Crds {
            continue;
        }
        apply(client, object).await?;
        if Some(i) == last_base {
            writeln!(out, "✔ {} installed", Component::Base.title())?;
            out.flush()?;
        }
    }
    for component in [Component::Pilot, Component::IngressGateway] {
        let deployments = of(objects, component, "Deployment");
        if deployments.is_empty() {
            continue;
        }
        wait_for::<Deployment, _>(client, &deployments, rollout_not_ready, deadline, options)
            .await?;
        writeln!(out, "✔ {} installed", component.title())?;
        out.flush()?;
    }
    writeln!(out, "✔ Installation complete")?;
    Ok(())
}

/// What uninstall keeps.
#[derive(Clone, Copy, Debug)]
pub struct Keep {
    /// Remove CRDs (and every Istio object with them) and the namespace.
    pub purge: bool,
    /// A non-default revision: objects shared by revisions stay.
    pub revision: bool,
}

/// Whether uninstall deletes `object`.
pub fn deletes(object: &Object, keep: Keep) -> bool {
    let shared = object.resource.kind == "Namespace"
        || object.component == Component::Crds
        || (keep.revision && object.component == Component::IngressGateway);
    keep.purge || !shared
}

/// Deletes what install created, in reverse order (so the webhook goes
/// first: no pod is sent to a control plane that is going away). Objects
/// already gone are fine.
pub async fn uninstall(
    client: &Client,
    objects: &[Object],
    keep: Keep,
    out: &mut dyn Write,
) -> Result<(), ApplyError> {
    for object in objects.iter().rev().filter(|o| deletes(o, keep)) {
        match api(client, object)
            .delete(&object.name, &DeleteParams::background())
            .await
        {
            Ok(_) => writeln!(out, "✔ Removed {}.", object.describe())?,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ApplyError::Request {
                    action: "deleting",
                    object: object.describe(),
                    source,
                });
            }
        }
    }
    writeln!(out, "✔ Uninstall complete")?;
    Ok(())
}
