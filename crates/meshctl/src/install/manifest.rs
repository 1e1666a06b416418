//! The objects an install consists of, in apply order: CRDs, namespace,
//! RBAC, config, workloads, webhooks. Each is built as its k8s-openapi type
//! and kept type-erased ([`Object`]) so apply, delete and printing treat
//! them alike.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::ApiResource;
use serde::Serialize;
use serde_json::Value;

use super::values::Values;
use super::{gateway, istiod, rbac, webhook};

/// The control plane namespace (fixed: Istio's tools look there).
pub const NAMESPACE: &str = "istio-system";

/// What a group of objects is, for progress lines and uninstall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// The CRDs (shared by every revision; removed only with --purge).
    Crds,
    /// Namespace, RBAC, config.
    Base,
    /// istiod.
    Pilot,
    /// The ingress gateway.
    IngressGateway,
    /// The MutatingWebhookConfiguration.
    Webhook,
}

impl Component {
    /// The name in progress lines, istioctl's.
    pub fn title(self) -> &'static str {
        match self {
            Component::Crds | Component::Base => "Istio core",
            Component::Pilot => "Istiod",
            Component::IngressGateway => "Ingress gateways",
            Component::Webhook => "Sidecar injector",
        }
    }
}

/// One object of the install, type-erased.
#[derive(Clone, Debug)]
pub struct Object {
    /// Its API group/version/kind/plural.
    pub resource: ApiResource,
    /// Its namespace, `None` when cluster-scoped.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// What it belongs to.
    pub component: Component,
    /// The object as JSON (apiVersion and kind included).
    pub body: Value,
    /// The object as YAML, fields in the API's order.
    pub yaml: String,
}

impl Object {
    /// Erases `object`.
    pub fn new<K>(component: Component, object: &K) -> Result<Self, serde_json::Error>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let body = serde_json::to_value(object)?;
        let yaml = serde_saphyr::to_string(object).map_err(serde::ser::Error::custom)?;
        Ok(Object {
            yaml,
            namespace: object.meta().namespace.clone(),
            name: object.meta().name.clone().unwrap_or_default(),
            resource,
            component,
            body,
        })
    }

    /// `Kind namespace/name` or `Kind name`, for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.resource.kind, self.name),
            None => format!("{} {}", self.resource.kind, self.name),
        }
    }
}

/// Errors of rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// An object did not serialize (a bug, not user input).
    #[error("serializing {what}: {source}")]
    Serialize {
        /// Which object.
        what: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The MeshConfig did not serialize as YAML.
    #[error("serializing meshConfig: {0}")]
    MeshConfig(String),
    /// A resource quantity does not parse.
    #[error("{key}: {value:?} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 1Gi)")]
    Quantity {
        /// The values key.
        key: String,
        /// The value.
        value: String,
    },
}

/// Checks a resource quantity the API server would reject, so the error
/// names the values key instead of surfacing as a 422 mid-install.
pub(crate) fn quantity(key: &str, value: &str) -> Result<Quantity, RenderError> {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|s| value.strip_suffix(s))
        .unwrap_or(value);
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    let fraction = parts.next();
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let ok = digits(whole)
        && fraction.is_none_or(|f| !f.is_empty() && digits(f))
        && !(whole.is_empty() && fraction.is_none());
    if ok {
        Ok(Quantity(value.to_string()))
    } else {
        Err(RenderError::Quantity {
            key: key.into(),
            value: value.into(),
        })
    }
}

/// Adds objects of one component, keeping the manifest order.
pub(crate) struct Builder {
    objects: Vec<Object>,
}

impl Builder {
    pub(crate) fn push<K>(&mut self, component: Component, object: &K) -> Result<(), RenderError>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let object = Object::new(component, object).map_err(|source| RenderError::Serialize {
            what: format!("{} {:?}", K::kind(&()), object.meta().name),
            source,
        })?;
        self.objects.push(object);
        Ok(())
    }
}

/// Every object of an install with `values`, in apply order.
pub fn render(values: &Values) -> Result<Vec<Object>, RenderError> {
    let mut b = Builder {
        objects: Vec::new(),
    };
    for crd in mesh_api::crd::all_crds() {
        b.push(Component::Crds, &crd)?;
    }
    b.push(
        Component::Base,
        &Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )?;
    rbac::push(&mut b, values)?;
    if values.components.ingress_gateways.enabled {
        gateway::push_service_account(&mut b, values)?;
    }
    b.push(Component::Base, &mesh_config_map(values)?)?;
    istiod::push(&mut b, values)?;
    if values.components.ingress_gateways.enabled {
        gateway::push(&mut b, values)?;
    }
    webhook::push(&mut b, values)?;
    Ok(b.objects)
}

/// Labels every revisioned object carries.
pub(crate) fn labels(values: &Values, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.insert(
        mesh_api::wellknown::LABEL_REVISION.into(),
        values.revision_label().into(),
    );
    labels
}

/// Metadata of a revisioned object in istio-system.
pub(crate) fn meta(values: &Values, name: String, extra: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(NAMESPACE.into()),
        labels: Some(labels(values, extra)),
        ..Default::default()
    }
}

/// The discovery address proxies use (`istiod[-R].istio-system.svc:15012`).
pub fn discovery_address(values: &Values, port: u16) -> String {
    format!("{}.{NAMESPACE}.svc:{port}", values.revisioned("istiod"))
}

/// ConfigMap `istio` (`istio-R`): key `mesh` is the MeshConfig with the proxies'
/// discovery address and trace sampling filled in.
fn mesh_config_map(values: &Values) -> Result<ConfigMap, RenderError> {
    let mut mesh = values.mesh_config.clone();
    let proxy = mesh.default_config.get_or_insert_with(Default::default);
    if proxy.discovery_address.is_none() {
        proxy.discovery_address =
            Some(discovery_address(values, mesh_api::wellknown::XDS_TLS_PORT));
    }
    let tracing = proxy.tracing.get_or_insert_with(Default::default);
    if tracing.sampling.is_none() {
        tracing.sampling = Some(values.values.pilot.trace_sampling);
    }
    let yaml =
        serde_saphyr::to_string(&mesh).map_err(|e| RenderError::MeshConfig(e.to_string()))?;
    Ok(ConfigMap {
        // `istio-R` for revision R: what mesh-control --revision R reads.
        metadata: meta(values, values.revisioned("istio"), &[]),
        data: Some(BTreeMap::from([("mesh".to_string(), yaml)])),
        ..Default::default()
    })
}

/// The objects as multi-document YAML.
pub fn to_yaml(objects: &[Object]) -> String {
    let mut out = String::from("# Generated by `meshctl manifest generate`; do not edit.\n");
    for object in objects {
        out.push_str("---\n");
        out.push_str(&object.yaml);
    }
    out
}
