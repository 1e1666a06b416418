//! `meshctl kube-inject`: the injector run offline over manifests. Pods
//! and the pod templates of Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, ReplicationControllers, Jobs and CronJobs (also inside
//! `List`s) are injected with the webhook's code; every other document
//! passes through unchanged.

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::{Outcome, Settings, inject};

/// One injected (or passed-through) document, and what happened to it.
#[derive(Debug)]
pub struct Document {
    /// The document as it should be written out.
    pub value: Value,
    /// `kind/name: message` lines for the user (skips and warnings).
    pub notes: Vec<String>,
}

/// Why a document could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The document is not YAML.
    #[error("document at line {line}: {message}")]
    Yaml {
        /// Line of the document.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A pod template does not fit the Pod schema.
    #[error("{kind} {name}: {path}: {message}")]
    Schema {
        /// Kind of the workload.
        kind: String,
        /// Its name.
        name: String,
        /// JSON path of the template.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Injects every workload in the multi-document YAML `text`; `namespace`
/// is used for objects that name none.
pub fn inject_documents(
    text: &str,
    namespace: &str,
    settings: &Settings,
) -> Result<Vec<Document>, Error> {
    let mut out = Vec::new();
    for doc in mesh_api::object::split_documents(text) {
        let value: Value = serde_saphyr::from_str(doc.text).map_err(|e| Error::Yaml {
            line: doc.line,
            message: e.to_string().lines().next().unwrap_or_default().to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let mut notes = Vec::new();
        let value = inject_value(value, namespace, settings, &mut notes)?;
        out.push(Document { value, notes });
    }
    Ok(out)
}

/// Injects one object (recursing into `List` items).
pub fn inject_value(
    mut value: Value,
    namespace: &str,
    settings: &Settings,
    notes: &mut Vec<String>,
) -> Result<Value, Error> {
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ns = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or(namespace)
        .to_string();
    let template = match kind.as_str() {
        "List" => {
            if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
                for item in items.iter_mut() {
                    *item = inject_value(item.take(), namespace, settings, notes)?;
                }
            }
            return Ok(value);
        }
        "Pod" => "",
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return Ok(value),
    };
    let Some(slot) = value.pointer_mut(template) else {
        return Ok(value);
    };
    let schema = |message: String| Error::Schema {
        kind: kind.clone(),
        name: name.clone(),
        path: if template.is_empty() {
            "spec".to_string()
        } else {
            template.trim_start_matches('/').replace('/', ".")
        },
        message,
    };
    let mut meta: ObjectMeta = match &slot["metadata"] {
        Value::Null => ObjectMeta::default(),
        m => serde_json::from_value(m.clone()).map_err(|e| schema(format!("metadata: {e}")))?,
    };
    let spec: PodSpec =
        serde_json::from_value(slot["spec"].clone()).map_err(|e| schema(format!("spec: {e}")))?;
    // A template's pods are named after their workload.
    if !template.is_empty() {
        meta.name = Some(name.clone());
    }
    let pod = Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    };
    match inject(&pod, &ns, settings) {
        Outcome::Skipped(reason) => notes.push(format!("{kind}/{name}: not injected: {reason}")),
        Outcome::Injected { pod, warnings } => {
            notes.extend(warnings.into_iter().map(|w| format!("{kind}/{name}: {w}")));
            let mut meta = pod.metadata;
            if !template.is_empty() {
                meta.name = None;
            }
            let to_value = |v: serde_json::Result<Value>| v.map_err(|e| schema(e.to_string()));
            slot["metadata"] = to_value(serde_json::to_value(meta))?;
            slot["spec"] = to_value(serde_json::to_value(pod.spec))?;
        }
    }
    Ok(value)
}
