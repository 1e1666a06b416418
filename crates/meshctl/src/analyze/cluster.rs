//! `meshctl analyze` against a live cluster: every Istio object of the
//! kinds the mesh serves, plus the Services, Pods, Deployments and
//! Namespaces the checks look at, listed through the API server and loaded
//! through the same code as files (each object is the one-document file
//! `k8s://<Kind>/<namespace>/<name>`), so messages read as istioctl's do.

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use mesh_api::object::{Loaded, load_str};

/// Lists everything the analysis needs, in `namespace` or in all
/// namespaces when `None`.
pub async fn load(client: kube::Client, namespace: Option<&str>) -> anyhow::Result<Vec<Loaded>> {
    let mut loaded = Vec::new();
    for crd in mesh_api::crd::all_crds() {
        let spec = &crd.spec;
        let version = spec
            .versions
            .iter()
            .find(|v| v.storage)
            .or_else(|| spec.versions.first())
            .map(|v| v.name.clone())
            .unwrap_or_default();
        let gvk = GroupVersionKind::gvk(&spec.group, &version, &spec.names.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural);
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            // The CRD is not installed: nothing of that kind exists.
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("listing {}", spec.names.plural));
            }
        };
        for mut object in list.items {
            // List items carry no apiVersion/kind of their own.
            object.types = Some(kube::core::TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            });
            push(&mut loaded, &resource.kind, serde_json::to_value(&object)?);
        }
    }
    let params = ListParams::default();
    macro_rules! core {
        ($ty:ty) => {
            core!(
                $ty,
                match namespace {
                    Some(ns) => Api::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                }
            )
        };
        ($ty:ty, $api:expr) => {{
            let api: Api<$ty> = $api;
            let kind = <$ty as k8s_openapi::Resource>::KIND;
            let list = api
                .list(&params)
                .await
                .with_context(|| format!("listing {kind}s"))?;
            for object in list.items {
                let mut value = serde_json::to_value(&object)?;
                value["apiVersion"] = <$ty as k8s_openapi::Resource>::API_VERSION.into();
                value["kind"] = kind.into();
                push(&mut loaded, kind, value);
            }
        }};
    }
    core!(Service);
    core!(Pod);
    core!(Deployment);
    core!(Namespace, Api::all(client.clone()));
    Ok(loaded)
}

fn push(loaded: &mut Vec<Loaded>, kind: &str, mut value: serde_json::Value) {
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("managedFields");
    }
    if let Some(obj) = value.as_object_mut() {
        obj.remove("status");
    }
    let ns = value["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    let file = if ns.is_empty() {
        format!("k8s://{kind}/{name}")
    } else {
        format!("k8s://{kind}/{ns}/{name}")
    };
    loaded.extend(load_str(&file, &value.to_string()));
}
