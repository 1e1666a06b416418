//! Turning YAML text into typed mesh objects, with every problem reported
//! against the file, line, object and field that caused it.
//!
//! Flow: text → [`split_documents`] (so a malformed document never hides its
//! neighbours) → a generic YAML value → `apiVersion`/`kind` dispatch →
//! typed decode that records every field it ignored (a warning naming the
//! path) → Istio validation. The same entry point serves `meshctl validate`,
//! `meshctl analyze` and the control plane's config-directory source.

use std::path::{Path as FsPath, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::kinds::IstioKind;
use crate::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry, WorkloadGroup,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::telemetry::Telemetry;
use crate::validation::{Context, Path, Report, Validate};

// === Documents ===

/// One YAML document inside a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Document<'a> {
    /// 1-based line of the document's first content line.
    pub line: usize,
    /// 1-based line where the document's text (as sliced) begins.
    pub start_line: usize,
    /// The document's text.
    pub text: &'a str,
}

/// Splits a multi-document YAML stream on `---` / `...` markers at column 0.
/// Documents holding only comments or blank lines are dropped.
pub fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize; // byte offset of the current document
    let mut start_line = 1usize;
    let mut offset = 0usize;
    let mut push = |from: usize, to: usize, first_line: usize| {
        let body = &text[from..to];
        let content_line = body
            .lines()
            .position(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
            })
            .map(|i| first_line + i);
        if let Some(line) = content_line {
            docs.push(Document {
                line,
                start_line: first_line,
                text: body,
            });
        }
    };
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_marker = trimmed == "---"
            || trimmed == "..."
            || trimmed.starts_with("--- ")
            || trimmed.starts_with("---\t");
        if is_marker {
            push(start, offset, start_line);
            // `--- {inline: doc}` keeps its content on the marker line.
            let after = trimmed.get(3..).unwrap_or("").trim();
            if trimmed.starts_with("---") && !after.is_empty() && !after.starts_with('#') {
                start = offset + 3;
                start_line = i + 1;
            } else {
                start = offset + line.len();
                start_line = i + 2;
            }
        }
        offset += line.len();
    }
    push(start, text.len(), start_line);
    docs
}

// === Objects ===

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Source {
    /// File name as given by the user (`-` for standard input).
    pub file: String,
    /// 1-based line of the object's first line.
    pub line: usize,
}

/// The identifying header every document carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Header {
    /// `apiVersion`, e.g. `networking.istio.io/v1`.
    pub api_version: String,
    /// `kind`, e.g. `VirtualService`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
}

/// A decoded object of a kind the mesh understands.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum MeshObject {
    VirtualService(Box<VirtualService>),
    DestinationRule(Box<DestinationRule>),
    Gateway(Box<Gateway>),
    ServiceEntry(Box<ServiceEntry>),
    WorkloadEntry(Box<WorkloadEntry>),
    WorkloadGroup(Box<WorkloadGroup>),
    Sidecar(Box<Sidecar>),
    PeerAuthentication(Box<PeerAuthentication>),
    RequestAuthentication(Box<RequestAuthentication>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    Telemetry(Box<Telemetry>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Pod(Box<Pod>),
    Deployment(Box<Deployment>),
    Namespace(Box<Namespace>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
}

/// One document after loading: where it was, what it claims to be, the
/// typed object when it decoded, and everything found wrong with it.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// File and line.
    pub source: Source,
    /// apiVersion, kind, name, namespace (as far as they could be read).
    pub header: Header,
    /// The typed object; `None` when the document could not be decoded or
    /// is of a kind the mesh does not use.
    pub object: Option<MeshObject>,
    /// Decode errors, unknown-field warnings and validation findings.
    pub report: Report,
}

impl Loaded {
    /// Whether this is one of Istio's kinds (as opposed to Kubernetes or other).
    pub fn is_istio(&self) -> bool {
        self.header
            .api_version
            .split_once('/')
            .is_some_and(|(g, _)| g.ends_with(".istio.io"))
    }
}

/// Loads every document in `text`, read from `file`.
pub fn load_str(file: &str, text: &str) -> Vec<Loaded> {
    let mut out = Vec::new();
    for doc in split_documents(text) {
        let source = Source {
            file: file.to_string(),
            line: doc.line,
        };
        match serde_saphyr::from_str::<Value>(doc.text) {
            Ok(Value::Null) => {}
            Ok(value) => load_value(source, value, &mut out),
            Err(e) => {
                let mut report = Report::default();
                let line = e
                    .location()
                    .map(|l| doc.start_line + l.line() as usize - 1)
                    .unwrap_or(doc.line);
                report.error(
                    &Path::root(""),
                    format!(
                        "malformed YAML at line {line}: {}",
                        first_line(&e.to_string())
                    ),
                );
                out.push(Loaded {
                    source,
                    header: Header::default(),
                    object: None,
                    report,
                });
            }
        }
    }
    out
}

/// Loads a file, or every `.yaml`, `.yml` and `.json` file under a
/// directory (recursively, in name order). `-` reads standard input.
pub fn load_path(path: &FsPath) -> std::io::Result<Vec<Loaded>> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        return Ok(load_str("-", &text));
    }
    let mut out = Vec::new();
    for file in config_files(path)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
        out.extend(load_str(&file.display().to_string(), &text));
    }
    Ok(out)
}

/// The config files under `path` (itself when it is a file), sorted.
pub fn config_files(path: &FsPath) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let p = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            files.extend(config_files(&p)?);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(p);
        }
    }
    Ok(files)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn str_at<'v>(value: &'v Value, pointer: &str) -> &'v str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn load_value(source: Source, value: Value, out: &mut Vec<Loaded>) {
    // `kind: List` (kubectl's output format) carries objects in `items`.
    if str_at(&value, "/kind") == "List" {
        if let Some(Value::Array(items)) = value.get("items") {
            for item in items {
                load_value(source.clone(), item.clone(), out);
            }
        }
        return;
    }
    let namespace = match str_at(&value, "/metadata/namespace") {
        "" => "default",
        ns => ns,
    };
    let header = Header {
        api_version: str_at(&value, "/apiVersion").to_string(),
        kind: str_at(&value, "/kind").to_string(),
        name: str_at(&value, "/metadata/name").to_string(),
        namespace: namespace.to_string(),
    };
    let mut report = Report::default();
    let object = decode_object(&header, value, &mut report);
    out.push(Loaded {
        source,
        header,
        object,
        report,
    });
}

fn decode_object(header: &Header, value: Value, report: &mut Report) -> Option<MeshObject> {
    if !value.is_object() {
        report.error(&Path::root(""), "document is not a YAML mapping (object)");
        return None;
    }
    if header.api_version.is_empty() {
        report.error(&Path::root("apiVersion"), "apiVersion is required");
    }
    if header.kind.is_empty() {
        report.error(&Path::root("kind"), "kind is required");
    }
    if report.has_errors() {
        return None;
    }
    let kind = match IstioKind::from_type(&header.api_version, &header.kind) {
        Ok(Some(kind)) => kind,
        Ok(None) => return decode_kubernetes(header, value, report),
        Err(e) => {
            report.error(&Path::root("apiVersion"), e);
            return None;
        }
    };
    if header.name.is_empty() {
        report.error(
            &Path::root("metadata").field("name"),
            "metadata.name is required",
        );
    }
    let ctx = Context {
        namespace: &header.namespace,
        name: &header.name,
        ..Context::default()
    };
    // Kubernetes accepts an Istio object without `spec` (an empty
    // AuthorizationPolicy is a deny-all); the derived type requires one.
    let mut value = value;
    if let Some(map) = value.as_object_mut() {
        map.entry("spec")
            .or_insert_with(|| Value::Object(Default::default()));
    }
    macro_rules! istio {
        ($variant:ident) => {{
            let obj: $variant = decode(value, report, true)?;
            obj.spec.validate(&ctx, &Path::root("spec"), report);
            Some(MeshObject::$variant(Box::new(obj)))
        }};
    }
    match kind {
        IstioKind::VirtualService => istio!(VirtualService),
        IstioKind::DestinationRule => istio!(DestinationRule),
        IstioKind::Gateway => istio!(Gateway),
        IstioKind::ServiceEntry => istio!(ServiceEntry),
        IstioKind::WorkloadEntry => istio!(WorkloadEntry),
        IstioKind::WorkloadGroup => istio!(WorkloadGroup),
        IstioKind::Sidecar => istio!(Sidecar),
        IstioKind::PeerAuthentication => istio!(PeerAuthentication),
        IstioKind::RequestAuthentication => istio!(RequestAuthentication),
        IstioKind::AuthorizationPolicy => istio!(AuthorizationPolicy),
        IstioKind::Telemetry => istio!(Telemetry),
    }
}

/// Kubernetes kinds the mesh reads (services, workloads, secrets). Their
/// decode problems are warnings: the API server is their validator, and
/// `meshctl validate` only vouches for Istio kinds.
fn decode_kubernetes(header: &Header, value: Value, report: &mut Report) -> Option<MeshObject> {
    let mut sub = Report::default();
    let obj = match (header.api_version.as_str(), header.kind.as_str()) {
        ("v1", "Service") => {
            decode(value, &mut sub, false).map(|o| MeshObject::Service(Box::new(o)))
        }
        ("v1", "Pod") => decode(value, &mut sub, false).map(|o| MeshObject::Pod(Box::new(o))),
        ("v1", "Namespace") => {
            decode(value, &mut sub, false).map(|o| MeshObject::Namespace(Box::new(o)))
        }
        ("v1", "ConfigMap") => {
            decode(value, &mut sub, false).map(|o| MeshObject::ConfigMap(Box::new(o)))
        }
        ("v1", "Secret") => decode(value, &mut sub, false).map(|o| MeshObject::Secret(Box::new(o))),
        ("apps/v1", "Deployment") => {
            decode(value, &mut sub, false).map(|o| MeshObject::Deployment(Box::new(o)))
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            decode(value, &mut sub, false).map(|o| MeshObject::EndpointSlice(Box::new(o)))
        }
        _ => None,
    };
    for d in sub.diagnostics {
        report.warn(&Path::root(&d.path), d.message);
    }
    obj
}

/// Decodes `value` into `T`, recording a decode failure as an error at the
/// failing field and, when `warn_unknown`, every ignored field as a warning.
pub fn decode<T: DeserializeOwned>(
    value: Value,
    report: &mut Report,
    warn_unknown: bool,
) -> Option<T> {
    let mut ignored = Vec::new();
    let result = {
        let mut on_ignored = |p: serde_ignored::Path<'_>| ignored.push(format_ignored(&p));
        let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
        serde_path_to_error::deserialize::<_, T>(de)
    };
    match result {
        Ok(obj) => {
            if warn_unknown {
                for path in ignored {
                    // The derived root type reads apiVersion/kind from its
                    // Resource impl, not from the document.
                    if path == "apiVersion" || path == "kind" {
                        continue;
                    }
                    report.warn(
                        &Path::root(&path),
                        "unknown field: it is not part of this kind's API and is ignored; check its spelling and indentation",
                    );
                }
            }
            Some(obj)
        }
        Err(e) => {
            let path = format_error_path(e.path());
            report.error(&Path::root(&path), e.into_inner().to_string());
            None
        }
    }
}

fn format_ignored(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", format_ignored(parent)),
        P::Map { parent, key } => {
            let parent = format_ignored(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            format_ignored(parent)
        }
    }
}

fn format_error_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_keeps_lines() {
        let text = "# leading comment\napiVersion: v1\nkind: A\n---\n# only a comment\n---\n\napiVersion: v1\nkind: B\n...\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 2);
        assert_eq!(docs[1].line, 8);
        assert!(docs[1].text.contains("kind: B"));
    }

    #[test]
    fn malformed_document_does_not_hide_its_neighbours() {
        let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec:\n  mtls: {mode: STRICT}\n---\napiVersion: v1\nkind: [unclosed\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: c}\n";
        let loaded = load_str("f.yaml", text);
        assert_eq!(loaded.len(), 3);
        assert!(!loaded[0].report.has_errors());
        assert!(loaded[1].report.has_errors());
        assert_eq!(loaded[1].source.line, 7);
        assert!(
            loaded[1].report.diagnostics[0]
                .message
                .contains("malformed YAML")
        );
        assert_eq!(loaded[2].header.name, "c");
        assert!(loaded[2].object.is_some());
    }

    #[test]
    fn unknown_fields_are_warnings_with_paths() {
        let text = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: foo}\nspec:\n  mtls: {mode: STRICT, strict: true}\n  selektor: {}\n";
        let loaded = load_str("f.yaml", text);
        let warnings: Vec<_> = loaded[0]
            .report
            .warnings()
            .map(|d| d.path.as_str())
            .collect();
        assert_eq!(warnings, ["spec.mtls.strict", "spec.selektor"]);
        assert!(!loaded[0].report.has_errors());
        assert_eq!(loaded[0].header.namespace, "foo");
    }

    #[test]
    fn bad_enum_value_names_the_field() {
        let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec:\n  mtls: {mode: STRICTT}\n";
        let loaded = load_str("f.yaml", text);
        let err = loaded[0].report.errors().next().unwrap();
        assert_eq!(err.path, "spec.mtls.mode");
        assert!(err.message.contains("STRICT"), "{}", err.message);
        assert!(loaded[0].object.is_none());
    }

    #[test]
    fn kubernetes_kinds_decode_and_others_are_skipped() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  ports: [{port: 9080, name: http}]\n  selector: {app: reviews}\n---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\n";
        let loaded = load_str("f.yaml", text);
        assert!(matches!(loaded[0].object, Some(MeshObject::Service(_))));
        assert!(loaded[1].object.is_none());
        assert!(loaded.iter().all(|l| !l.report.has_errors()));
    }

    #[test]
    fn lists_are_flattened() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {name: a}\n- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {name: b}\n";
        let names: Vec<_> = load_str("f.yaml", text)
            .into_iter()
            .map(|l| l.header.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }
}
