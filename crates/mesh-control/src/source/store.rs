//! The config store: every object currently in effect, with the rule that
//! a broken input never loses good config. Per file it keeps the last good
//! version of each object; when a new version of a file has a broken object
//! the previous good version of that object stays in effect (and the error
//! is reported), and when a file cannot be read into objects at all every
//! object it held before stays.

use std::collections::{BTreeMap, BTreeSet};

use mesh_api::MeshObject;
use mesh_api::mesh_config::{MeshConfig, parse_mesh_config};
use mesh_api::mesh_networks::{MeshNetworks, parse_mesh_networks};
use mesh_api::object::{Loaded, load_str};
use mesh_api::validation::Severity;

/// Identity of an object: kind, namespace, name.
pub type ObjectKey = (String, String, String);

fn key_of(l: &Loaded) -> Option<ObjectKey> {
    (!l.header.kind.is_empty() && !l.header.name.is_empty()).then(|| {
        (
            l.header.kind.clone(),
            l.header.namespace.clone(),
            l.header.name.clone(),
        )
    })
}

/// The status of one object (or unreadable document) for `/debug/configz`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ObjectStatus {
    /// Kind (empty when the document could not be read).
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// File and line.
    pub file: String,
    /// Line of the document.
    pub line: usize,
    /// `ok`, `warning`, `error (last good version kept)` or `error (skipped)`.
    pub status: String,
    /// Every finding, formatted `path: message`.
    pub messages: Vec<String>,
}

/// Everything `/debug/configz` shows.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConfigStatus {
    /// Objects in effect and rejected documents, by file.
    pub objects: Vec<ObjectStatus>,
    /// Number of documents with errors.
    pub errors: usize,
    /// The newest snapshot published.
    pub snapshot_version: u64,
    /// Whether files read since then wait for the next snapshot (the
    /// debounce): when false, every object listed here is in
    /// `snapshot_version`.
    pub pending: bool,
}

#[derive(Default)]
struct FileState {
    /// Precedence: when two files declare the same object, the one with
    /// the higher layer wins (a later `--config-dir` overrides earlier ones).
    layer: usize,
    /// Good objects in effect from this file.
    good: BTreeMap<ObjectKey, Loaded>,
    /// Status lines for the latest read.
    status: Vec<ObjectStatus>,
}

/// All objects in effect.
#[derive(Default)]
pub struct ConfigStore {
    files: BTreeMap<String, FileState>,
}

impl ConfigStore {
    /// Replaces the contents of `file` with `text`, keeping last good
    /// versions of any object that is now broken. Returns whether anything
    /// in effect changed.
    pub fn update_file(&mut self, file: &str, text: &str) -> bool {
        self.update_file_in_layer(file, 0, text)
    }

    /// [`ConfigStore::update_file`] for a file of precedence `layer`.
    pub fn update_file_in_layer(&mut self, file: &str, layer: usize, text: &str) -> bool {
        let loaded = load_str(file, text);
        let previous = self.files.remove(file).unwrap_or_default();
        let mut next = FileState {
            layer,
            ..FileState::default()
        };
        let mut unreadable = false;
        let mut seen = BTreeSet::new();
        for l in loaded {
            let key = key_of(&l);
            let errors = l.report.has_errors();
            let status = if !errors {
                if l.report
                    .diagnostics
                    .iter()
                    .any(|d| d.severity == Severity::Warning)
                {
                    "warning"
                } else {
                    "ok"
                }
            } else if key.as_ref().is_some_and(|k| previous.good.contains_key(k)) {
                "error (last good version kept)"
            } else {
                "error (skipped)"
            };
            next.status.push(ObjectStatus {
                kind: l.header.kind.clone(),
                namespace: l.header.namespace.clone(),
                name: l.header.name.clone(),
                file: l.source.file.clone(),
                line: l.source.line,
                status: status.to_string(),
                messages: l
                    .report
                    .diagnostics
                    .iter()
                    .map(|d| {
                        format!(
                            "{}: {}{}",
                            d.severity,
                            if d.path.is_empty() {
                                String::new()
                            } else {
                                format!("{}: ", d.path)
                            },
                            d.message
                        )
                    })
                    .collect(),
            });
            match (key, errors) {
                (Some(k), false) => {
                    if l.object.is_some() {
                        seen.insert(k.clone());
                        next.good.insert(k, l);
                    }
                }
                (Some(k), true) => {
                    if let Some(old) = previous.good.get(&k) {
                        seen.insert(k.clone());
                        next.good.insert(k, old.clone());
                    }
                    tracing::warn!(file, kind = %l.header.kind, namespace = %l.header.namespace, name = %l.header.name, "invalid object: {}", first_error(&l));
                }
                (None, _) => {
                    unreadable = true;
                    tracing::warn!(
                        file,
                        line = l.source.line,
                        "unreadable document: {}",
                        first_error(&l)
                    );
                }
            }
        }
        // A document we could not even identify may have been any of the
        // objects this file held: keep them all rather than drop good config.
        if unreadable {
            for (k, old) in &previous.good {
                if !seen.contains(k) {
                    next.good.insert(k.clone(), old.clone());
                }
            }
        }
        let changed = !same_objects(&previous.good, &next.good);
        self.files.insert(file.to_string(), next);
        changed
    }

    /// Forgets a deleted file. Returns whether anything in effect changed.
    pub fn remove_file(&mut self, file: &str) -> bool {
        self.files.remove(file).is_some_and(|f| !f.good.is_empty())
    }

    /// The status lines of the latest read of `file`.
    pub fn file_status(&self, file: &str) -> &[ObjectStatus] {
        self.files.get(file).map_or(&[], |f| f.status.as_slice())
    }

    /// The files currently known.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Every object in effect. When two files declare the same object, the
    /// file of the higher layer wins, then the first in name order.
    pub fn objects(&self) -> Vec<&Loaded> {
        let mut files: Vec<&FileState> = self.files.values().collect();
        // Stable: within a layer, path order as before.
        files.sort_by_key(|f| std::cmp::Reverse(f.layer));
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for f in files {
            for (k, l) in &f.good {
                if seen.insert(k) {
                    out.push(l);
                }
            }
        }
        out
    }

    /// MeshConfig from a ConfigMap named `istio` (key `mesh`), Istio's place
    /// for it; defaults when absent or broken.
    pub fn mesh_config(&self) -> MeshConfig {
        self.mesh_config_named("istio")
    }

    /// MeshConfig from the ConfigMap `name` (`istio-<rev>` for a revision).
    pub fn mesh_config_named(&self, name: &str) -> MeshConfig {
        for l in self.objects() {
            if let Some(MeshObject::ConfigMap(cm)) = &l.object {
                if l.header.name != name {
                    continue;
                }
                let Some(text) = cm.data.as_ref().and_then(|d| d.get("mesh")) else {
                    continue;
                };
                let (mesh, report) = parse_mesh_config(text);
                for d in report.errors() {
                    tracing::warn!(file = %l.source.file, "MeshConfig {}: {}", d.path, d.message);
                }
                if let Some(mesh) = mesh.filter(|_| !report.has_errors()) {
                    return mesh;
                }
            }
        }
        MeshConfig::default()
    }

    /// MeshNetworks from the ConfigMap `name` (key `meshNetworks`); none
    /// when absent or undecodable. A malformed `fromCidr` is logged and
    /// skipped, the other ranges kept (as istiod does).
    pub fn mesh_networks_named(&self, name: &str) -> MeshNetworks {
        for l in self.objects() {
            if let Some(MeshObject::ConfigMap(cm)) = &l.object {
                if l.header.name != name {
                    continue;
                }
                let Some(text) = cm.data.as_ref().and_then(|d| d.get("meshNetworks")) else {
                    continue;
                };
                let (networks, report) = parse_mesh_networks(text);
                for d in report.errors() {
                    tracing::warn!(file = %l.source.file, "MeshNetworks {}: {}", d.path, d.message);
                }
                if let Some(n) = networks {
                    return n;
                }
            }
        }
        MeshNetworks::default()
    }

    /// The status of every document, for `/debug/configz`.
    pub fn status(&self) -> ConfigStatus {
        let objects: Vec<ObjectStatus> = self
            .files
            .values()
            .flat_map(|f| f.status.iter().cloned())
            .collect();
        let errors = objects
            .iter()
            .filter(|o| o.status.starts_with("error"))
            .count();
        ConfigStatus {
            objects,
            errors,
            ..ConfigStatus::default()
        }
    }
}

fn first_error(l: &Loaded) -> String {
    l.report
        .errors()
        .next()
        .map(|d| {
            if d.path.is_empty() {
                d.message.clone()
            } else {
                format!("{}: {}", d.path, d.message)
            }
        })
        .unwrap_or_default()
}

fn same_objects(a: &BTreeMap<ObjectKey, Loaded>, b: &BTreeMap<ObjectKey, Loaded>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, la), (kb, lb))| ka == kb && la.object == lb.object)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
    const OTHER: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n";

    fn vs_subset(store: &ConfigStore) -> Option<String> {
        store.objects().iter().find_map(|l| match &l.object {
            Some(MeshObject::VirtualService(vs)) => {
                vs.spec.http[0].route[0].destination.subset.clone()
            }
            _ => None,
        })
    }

    #[test]
    fn broken_object_keeps_its_last_good_version() {
        let mut store = ConfigStore::default();
        assert!(store.update_file("a.yaml", &format!("{GOOD}---\n{OTHER}")));
        assert_eq!(store.objects().len(), 2);
        // The VirtualService becomes invalid (weights all zero); the DR changes.
        let broken = GOOD.replace(
            "subset: v1}\n",
            "subset: v2}\n      weight: 0\n    - destination: {host: reviews}\n      weight: 0\n",
        );
        store.update_file(
            "a.yaml",
            &format!(
                "{broken}---\n{}",
                OTHER.replace("host: reviews", "host: reviews.default.svc.cluster.local")
            ),
        );
        assert_eq!(store.objects().len(), 2);
        assert_eq!(
            vs_subset(&store).as_deref(),
            Some("v1"),
            "last good version stays in effect"
        );
        let status = store.status();
        assert_eq!(status.errors, 1);
        assert!(
            status
                .objects
                .iter()
                .any(|o| o.status == "error (last good version kept)")
        );
    }

    #[test]
    fn a_later_layer_overrides_the_same_object_whatever_the_paths() {
        let pod = |ip: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: default}}\nstatus: {{podIP: {ip}}}\n"
            )
        };
        let mut store = ConfigStore::default();
        // The overlay's path sorts first; its layer still wins.
        store.update_file_in_layer("/a/overlay.yaml", 1, &pod("10.0.0.2"));
        store.update_file_in_layer("/z/user.yaml", 0, &pod("10.0.0.1"));
        let objects = store.objects();
        assert_eq!(objects.len(), 1);
        let Some(MeshObject::Pod(p)) = &objects[0].object else {
            panic!("not a pod")
        };
        assert_eq!(
            p.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
            Some("10.0.0.2")
        );
    }

    #[test]
    fn unreadable_file_keeps_everything_and_deletion_removes_it() {
        let mut store = ConfigStore::default();
        store.update_file("a.yaml", GOOD);
        assert!(!store.update_file("a.yaml", "kind: [oops"));
        assert_eq!(store.objects().len(), 1);
        assert!(store.remove_file("a.yaml"));
        assert!(store.objects().is_empty());
    }

    #[test]
    fn new_broken_object_is_skipped_and_others_apply() {
        let mut store = ConfigStore::default();
        store.update_file("a.yaml", &format!("{OTHER}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bad}}\nspec:\n  hosts: [\"*.\"]\n"));
        assert_eq!(store.objects().len(), 1);
        assert!(
            store
                .status()
                .objects
                .iter()
                .any(|o| o.name == "bad" && o.status == "error (skipped)")
        );
    }
}
