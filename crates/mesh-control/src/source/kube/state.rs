//! What the Kubernetes source knows, and which of it is config: every
//! watched object as the API server last sent it (minus `managedFields`),
//! and the rules deciding what reaches the [`ConfigStore`]:
//!
//! - MeshConfig `discoverySelectors` pick namespaces (the control plane's
//!   own namespace always counts); objects elsewhere are left out.
//! - An Istio object labelled `istio.io/rev` for another revision belongs
//!   to another control plane and is left out (an unlabelled one is
//!   everyone's, as in Istio).
//! - A Pod without a locality of its own gets its Node's topology labels,
//!   which is where the registry reads locality from.
//!
//! Each object in effect is one pseudo-file `kube://<Kind>/<namespace>/<name>`
//! in the store, so a broken object keeps its last good version and shows in
//! `/debug/configz` exactly as a broken file does. Watch events only mark
//! what changed; [`KubeState::flush`] writes the store once per batch.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::DynamicObject;
use mesh_api::mesh_config::parse_mesh_config;
use mesh_api::wellknown::{
    LABEL_ISTIO_LOCALITY, LABEL_REVISION, LABEL_TOPOLOGY_REGION, LABEL_TOPOLOGY_SUBZONE,
    LABEL_TOPOLOGY_ZONE,
};
use serde_json::Value;

use super::Watched;
use crate::source::store::ConfigStore;

type Labels = BTreeMap<String, String>;

/// An Istio object the store rejected, for the Kubernetes Event written
/// on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidObject {
    /// Its pseudo-file.
    pub file: String,
    /// `apiVersion` as watched.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// The rejected `metadata.resourceVersion`.
    pub resource_version: String,
    /// Each error, `field: message`.
    pub errors: Vec<String>,
}

/// What one [`KubeState::flush`] did.
#[derive(Debug, Default)]
pub struct Flush {
    /// Whether config in effect changed.
    pub changed: bool,
    /// Istio objects newly found invalid (one per rejected version).
    pub invalid: Vec<InvalidObject>,
    /// Pseudo-files of objects that were invalid and no longer are
    /// (fixed, deleted or filtered out).
    pub resolved: Vec<String>,
}

/// One watched object.
#[derive(Clone, Debug)]
struct Cached {
    watched: Watched,
    namespace: String,
    name: String,
    labels: Labels,
    uid: String,
    resource_version: String,
    /// The object with `apiVersion`/`kind` set and `managedFields` removed.
    value: Value,
}

/// Everything watched, and what of it is in the store.
pub struct KubeState {
    revision: String,
    control_namespace: String,
    mesh_config_name: String,
    objects: BTreeMap<String, Cached>,
    /// Node name -> labels (locality).
    nodes: BTreeMap<String, Labels>,
    /// Namespace name -> labels (discoverySelectors).
    namespaces: BTreeMap<String, Labels>,
    selectors: Vec<LabelSelector>,
    /// Per kind being relisted: the objects listed since `Init`.
    relisting: BTreeMap<Watched, BTreeSet<String>>,
    /// Pseudo-file -> text last written to the store.
    applied: BTreeMap<String, String>,
    /// Pseudo-file -> resourceVersion last reported invalid.
    invalid: BTreeMap<String, String>,
    dirty: BTreeSet<String>,
    dirty_all: bool,
}

// === impl KubeState ===

impl KubeState {
    /// Empty state for the control plane in `control_namespace` at `revision`.
    pub fn new(control_namespace: &str, revision: &str) -> Self {
        Self {
            revision: revision.to_string(),
            control_namespace: control_namespace.to_string(),
            mesh_config_name: mesh_config_name(revision),
            objects: BTreeMap::new(),
            nodes: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            selectors: Vec::new(),
            relisting: BTreeMap::new(),
            applied: BTreeMap::new(),
            invalid: BTreeMap::new(),
            dirty: BTreeSet::new(),
            dirty_all: false,
        }
    }

    /// An object was added or changed.
    pub fn apply(&mut self, watched: Watched, object: DynamicObject) {
        let cached = cache(watched, object);
        let file = file_name(watched, &cached.namespace, &cached.name);
        if let Some(set) = self.relisting.get_mut(&watched) {
            set.insert(file.clone());
        }
        match watched {
            Watched::Node => {
                if self.nodes.get(&cached.name) != Some(&cached.labels) {
                    self.nodes
                        .insert(cached.name.clone(), cached.labels.clone());
                    // Locality of every pod on it may change.
                    self.dirty_all = true;
                }
                return;
            }
            Watched::Namespace => {
                let old = self
                    .namespaces
                    .insert(cached.name.clone(), cached.labels.clone());
                self.dirty_all |= old.as_ref() != Some(&cached.labels);
            }
            Watched::MeshConfig if cached.name == self.mesh_config_name => {
                self.read_selectors(&cached);
            }
            _ => {}
        }
        self.objects.insert(file.clone(), cached);
        self.dirty.insert(file);
    }

    /// An object was deleted.
    pub fn delete(&mut self, watched: Watched, object: &DynamicObject) {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        self.remove(watched, &file_name(watched, &namespace, &name), &name);
    }

    /// A relist of `watched` starts.
    pub fn init(&mut self, watched: Watched) {
        self.relisting.insert(watched, BTreeSet::new());
    }

    /// A relist of `watched` ended: what it did not list is gone.
    pub fn init_done(&mut self, watched: Watched) {
        let Some(listed) = self.relisting.remove(&watched) else {
            return;
        };
        let gone: Vec<(String, String)> = match watched {
            Watched::Node => self
                .nodes
                .keys()
                .map(|n| (file_name(watched, "", n), n.clone()))
                .filter(|(f, _)| !listed.contains(f))
                .collect(),
            _ => self
                .objects
                .iter()
                .filter(|(f, c)| c.watched == watched && !listed.contains(*f))
                .map(|(f, c)| (f.clone(), c.name.clone()))
                .collect(),
        };
        for (file, name) in gone {
            self.remove(watched, &file, &name);
        }
    }

    fn remove(&mut self, watched: Watched, file: &str, name: &str) {
        match watched {
            Watched::Node => {
                if self.nodes.remove(name).is_some() {
                    self.dirty_all = true;
                }
                return;
            }
            Watched::Namespace => {
                self.dirty_all |= self.namespaces.remove(name).is_some();
            }
            Watched::MeshConfig if name == self.mesh_config_name => {
                self.dirty_all |= !self.selectors.is_empty();
                self.selectors.clear();
            }
            _ => {}
        }
        self.objects.remove(file);
        self.dirty.insert(file.to_string());
    }

    fn read_selectors(&mut self, cm: &Cached) {
        let text = cm.value.pointer("/data/mesh").and_then(Value::as_str);
        let selectors = match text.map(parse_mesh_config) {
            None => Vec::new(),
            Some((Some(mesh), report)) if !report.has_errors() => mesh.discovery_selectors,
            Some((_, report)) => {
                // Keep watching what we watched: a typo must not widen or
                // empty the mesh. The store reports the same errors.
                for d in report.errors() {
                    tracing::warn!(configmap = %cm.name, "MeshConfig {}: {}; discoverySelectors unchanged", d.path, d.message);
                }
                return;
            }
        };
        if selectors != self.selectors {
            self.selectors = selectors;
            self.dirty_all = true;
        }
    }

    /// Whether objects of namespace `ns` are used.
    pub fn namespace_selected(&self, ns: &str) -> bool {
        if ns == self.control_namespace || self.selectors.is_empty() {
            return true;
        }
        self.namespaces
            .get(ns)
            .is_some_and(|labels| self.selectors.iter().any(|s| selector_matches(s, labels)))
    }

    /// Every known namespace whose objects are used (where the root
    /// certificate ConfigMap goes).
    pub fn selected_namespaces(&self) -> BTreeSet<String> {
        self.namespaces
            .keys()
            .filter(|ns| self.namespace_selected(ns))
            .cloned()
            .collect()
    }

    fn selected(&self, c: &Cached) -> bool {
        let ns = match c.watched {
            Watched::Namespace => &c.name,
            _ => &c.namespace,
        };
        if !self.namespace_selected(ns) {
            return false;
        }
        match c.watched {
            Watched::Istio(_) => c
                .labels
                .get(LABEL_REVISION)
                .is_none_or(|rev| *rev == self.revision),
            _ => true,
        }
    }

    /// The text stored for `c`: a Pod gains its Node's locality labels.
    fn render(&self, c: &Cached) -> String {
        if c.watched != Watched::Pod || c.labels.contains_key(LABEL_ISTIO_LOCALITY) {
            return c.value.to_string();
        }
        let node = c
            .value
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .and_then(|n| self.nodes.get(n));
        let Some(node) = node else {
            return c.value.to_string();
        };
        let mut value = c.value.clone();
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            let labels = meta
                .entry("labels")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(labels) = labels.as_object_mut() {
                for key in [
                    LABEL_TOPOLOGY_REGION,
                    LABEL_TOPOLOGY_ZONE,
                    LABEL_TOPOLOGY_SUBZONE,
                ] {
                    if let Some(v) = node.get(key) {
                        labels
                            .entry(key)
                            .or_insert_with(|| Value::String(v.clone()));
                    }
                }
            }
        }
        value.to_string()
    }

    /// Writes what changed since the last flush into `store`.
    pub fn flush(&mut self, store: &mut ConfigStore) -> Flush {
        let files: Vec<String> = if std::mem::take(&mut self.dirty_all) {
            self.dirty.clear();
            self.objects
                .keys()
                .chain(self.applied.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        let mut flush = Flush::default();
        for file in files {
            let wanted = self
                .objects
                .get(&file)
                .filter(|c| self.selected(c))
                .map(|c| (c, self.render(c)));
            match wanted {
                Some((c, text)) => {
                    if self.applied.get(&file) == Some(&text) {
                        continue;
                    }
                    flush.changed |= store.update_file(&file, &text);
                    self.applied.insert(file.clone(), text);
                    self.check_valid(store, &file, c.clone(), &mut flush);
                }
                None => {
                    if self.applied.remove(&file).is_some() {
                        flush.changed |= store.remove_file(&file);
                    }
                    if self.invalid.remove(&file).is_some() {
                        flush.resolved.push(file);
                    }
                }
            }
        }
        flush
    }

    fn check_valid(&mut self, store: &ConfigStore, file: &str, c: Cached, flush: &mut Flush) {
        let Watched::Istio(kind) = c.watched else {
            return;
        };
        let errors: Vec<String> = store
            .file_status(file)
            .iter()
            .filter(|s| s.status.starts_with("error"))
            .flat_map(|s| s.messages.iter())
            // Messages read `<Severity>: <path>: <message>`.
            .filter_map(|m| m.strip_prefix("Error: "))
            .map(str::to_string)
            .collect();
        if errors.is_empty() {
            if self.invalid.remove(file).is_some() {
                flush.resolved.push(file.to_string());
            }
            return;
        }
        if self.invalid.get(file) == Some(&c.resource_version) {
            return;
        }
        self.invalid
            .insert(file.to_string(), c.resource_version.clone());
        flush.invalid.push(InvalidObject {
            file: file.to_string(),
            api_version: c
                .value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            kind: kind.kind().to_string(),
            namespace: c.namespace,
            name: c.name,
            uid: c.uid,
            resource_version: c.resource_version,
            errors,
        });
    }
}

/// Istio's MeshConfig ConfigMap for `revision`.
pub fn mesh_config_name(revision: &str) -> String {
    if revision.is_empty() || revision == "default" {
        "istio".to_string()
    } else {
        format!("istio-{revision}")
    }
}

/// The pseudo-file of an object.
pub fn file_name(watched: Watched, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("kube://{}/{name}", watched.kind())
    } else {
        format!("kube://{}/{namespace}/{name}", watched.kind())
    }
}

fn cache(watched: Watched, object: DynamicObject) -> Cached {
    let meta = &object.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let labels = meta.labels.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let resource_version = meta.resource_version.clone().unwrap_or_default();
    let resource = watched.api_resource();
    let mut value = serde_json::to_value(&object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        // List items come without their type; the store needs it.
        // Custom resources carry the version they were read at; keep it.
        map.entry("apiVersion")
            .or_insert(Value::String(resource.api_version));
        map.entry("kind").or_insert(Value::String(resource.kind));
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    }
    Cached {
        watched,
        namespace,
        name,
        labels,
        uid,
        resource_version,
        value,
    }
}

/// Kubernetes label selector semantics: every `matchLabels` entry and every
/// expression must hold; an empty selector matches everything.
pub fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // The API server rejects other operators; match nothing.
            _ => false,
        }
    });
    by_label && by_expression
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use mesh_api::kinds::IstioKind;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_follow_kubernetes() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("env", "prod")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(selector_matches(&sel, &labels(&[("env", "prod")])));
        assert!(selector_matches(
            &sel,
            &labels(&[("env", "prod"), ("tier", "web")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("env", "prod"), ("tier", "db")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("env", "dev")])));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        let exists = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "istio-discovery".into(),
                operator: "Exists".into(),
                values: None,
            }]),
            ..LabelSelector::default()
        };
        assert!(!selector_matches(&exists, &labels(&[])));
        assert!(selector_matches(
            &exists,
            &labels(&[("istio-discovery", "")])
        ));
    }

    #[test]
    fn mesh_config_and_file_names() {
        assert_eq!(mesh_config_name("default"), "istio");
        assert_eq!(mesh_config_name("canary"), "istio-canary");
        assert_eq!(
            file_name(
                Watched::Istio(IstioKind::VirtualService),
                "default",
                "reviews"
            ),
            "kube://VirtualService/default/reviews"
        );
        assert_eq!(
            file_name(Watched::Namespace, "", "default"),
            "kube://Namespace/default"
        );
    }

    fn object(json: Value) -> DynamicObject {
        serde_json::from_value(json).expect("object")
    }

    fn vs(name: &str, ns: &str, rv: &str, rev: Option<&str>) -> DynamicObject {
        let mut labels = serde_json::Map::new();
        if let Some(rev) = rev {
            labels.insert(LABEL_REVISION.into(), Value::String(rev.into()));
        }
        object(
            serde_json::json!({"metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels},
            "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}]}]}}),
        )
    }

    fn names(store: &ConfigStore) -> Vec<String> {
        store
            .objects()
            .iter()
            .map(|l| l.header.name.clone())
            .collect()
    }

    #[test]
    fn a_relist_removes_what_it_no_longer_lists_and_revisions_filter() {
        let watched = Watched::Istio(IstioKind::VirtualService);
        let mut state = KubeState::new("istio-system", "canary");
        let mut store = ConfigStore::default();
        state.init(watched);
        state.apply(watched, vs("a", "default", "1", None));
        state.apply(watched, vs("b", "default", "2", Some("canary")));
        state.apply(watched, vs("c", "default", "3", Some("default")));
        state.init_done(watched);
        state.flush(&mut store);
        assert_eq!(names(&store), ["a", "b"], "c belongs to revision default");
        // Relist without a: it goes.
        state.init(watched);
        state.apply(watched, vs("b", "default", "2", Some("canary")));
        state.init_done(watched);
        let flush = state.flush(&mut store);
        assert!(flush.changed);
        assert_eq!(names(&store), ["b"]);
        // A delete event.
        state.delete(watched, &vs("b", "default", "4", Some("canary")));
        state.flush(&mut store);
        assert!(names(&store).is_empty());
    }

    #[test]
    fn a_broken_mesh_config_keeps_the_discovery_selectors() {
        let mesh = |text: &str| {
            object(
                serde_json::json!({"metadata": {"name": "istio", "namespace": "istio-system"},
                "data": {"mesh": text}}),
            )
        };
        let mut state = KubeState::new("istio-system", "default");
        state.apply(
            Watched::Namespace,
            object(serde_json::json!({"metadata": {"name": "apps", "labels": {"mesh": "on"}}})),
        );
        state.apply(
            Watched::Namespace,
            object(serde_json::json!({"metadata": {"name": "other"}})),
        );
        state.apply(
            Watched::MeshConfig,
            mesh("discoverySelectors:\n- matchLabels: {mesh: \"on\"}\n"),
        );
        assert!(state.namespace_selected("apps"));
        assert!(!state.namespace_selected("other"));
        assert!(state.namespace_selected("istio-system"));
        state.apply(Watched::MeshConfig, mesh("discoverySelectors: 7\n"));
        assert!(
            !state.namespace_selected("other"),
            "a typo must not widen the mesh"
        );
        assert_eq!(
            state.selected_namespaces().into_iter().collect::<Vec<_>>(),
            ["apps"]
        );
    }

    #[test]
    fn pods_take_their_nodes_locality_and_managed_fields_go() {
        let mut state = KubeState::new("istio-system", "default");
        state.apply(
            Watched::Node,
            object(serde_json::json!({"metadata": {"name": "n1", "labels": {
                "topology.kubernetes.io/region": "eu-west1", "topology.kubernetes.io/zone": "eu-west1-b"}}})),
        );
        state.apply(
            Watched::Pod,
            object(
                serde_json::json!({"metadata": {"name": "p", "namespace": "default",
                "managedFields": [{"manager": "kubelet"}]},
                "spec": {"nodeName": "n1", "containers": []}}),
            ),
        );
        let mut store = ConfigStore::default();
        assert!(state.flush(&mut store).changed);
        let objects = store.objects();
        let Some(mesh_api::MeshObject::Pod(pod)) = &objects[0].object else {
            panic!("not a pod");
        };
        let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            pod_labels.get(LABEL_TOPOLOGY_ZONE).map(String::as_str),
            Some("eu-west1-b")
        );
        assert!(pod.metadata.managed_fields.is_none());
        // The node moves zone: the pod is rewritten.
        state.apply(
            Watched::Node,
            object(serde_json::json!({"metadata": {"name": "n1", "labels": {
                "topology.kubernetes.io/region": "eu-west1", "topology.kubernetes.io/zone": "eu-west1-c"}}})),
        );
        assert!(state.flush(&mut store).changed);
        // Nothing new: nothing written.
        assert!(!state.flush(&mut store).changed);
    }
}
