//! Runs every fixture under `tests/fixtures`: Istio's documented examples
//! must load cleanly and round-trip; crafted invalid objects must produce
//! exactly the findings their header comments expect.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mesh_api::object::{Loaded, MeshObject, config_files, load_str};
use mesh_api::validation::Severity;
use serde_json::Value;

fn fixtures(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub);
    config_files(&dir).unwrap()
}

/// Every key path in a JSON value, e.g. `spec.http[0].route`.
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                key_paths(v, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                key_paths(v, &format!("{prefix}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn to_json(obj: &MeshObject) -> Value {
    match obj {
        MeshObject::VirtualService(o) => serde_json::to_value(o),
        MeshObject::DestinationRule(o) => serde_json::to_value(o),
        MeshObject::Gateway(o) => serde_json::to_value(o),
        MeshObject::ServiceEntry(o) => serde_json::to_value(o),
        MeshObject::WorkloadEntry(o) => serde_json::to_value(o),
        MeshObject::WorkloadGroup(o) => serde_json::to_value(o),
        MeshObject::Sidecar(o) => serde_json::to_value(o),
        MeshObject::PeerAuthentication(o) => serde_json::to_value(o),
        MeshObject::RequestAuthentication(o) => serde_json::to_value(o),
        MeshObject::AuthorizationPolicy(o) => serde_json::to_value(o),
        MeshObject::Telemetry(o) => serde_json::to_value(o),
        other => panic!("not an Istio object: {other:?}"),
    }
    .unwrap()
}

fn describe(l: &Loaded) -> String {
    format!(
        "{} {}/{} ({}:{})",
        l.header.kind, l.header.namespace, l.header.name, l.source.file, l.source.line
    )
}

#[test]
fn istio_documented_examples_load_cleanly_and_round_trip() {
    let files = fixtures("valid");
    assert!(!files.is_empty(), "no valid fixtures found");
    let mut count = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs = mesh_api::object::split_documents(&text);
        for (loaded, doc) in load_str(&file.display().to_string(), &text)
            .iter()
            .zip(docs)
        {
            count += 1;
            let what = describe(loaded);
            assert!(loaded.is_istio(), "{what}: fixtures hold Istio kinds only");
            assert!(
                loaded.report.diagnostics.is_empty(),
                "{what}: {:#?}",
                loaded.report.diagnostics
            );
            let obj = loaded
                .object
                .as_ref()
                .unwrap_or_else(|| panic!("{what} did not decode"));
            let json = to_json(obj);
            // parse -> serialize -> parse gives the same object.
            let again = load_str("roundtrip", &serde_json::to_string(&json).unwrap());
            assert_eq!(again.len(), 1, "{what}");
            assert_eq!(
                again[0].object.as_ref(),
                Some(obj),
                "{what}: round trip changed the object"
            );
            // Serializing neither adds nor drops fields (omitted defaults stay omitted).
            let input: Value = serde_saphyr::from_str(doc.text).unwrap();
            let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
            key_paths(&input, "", &mut want);
            key_paths(&json, "", &mut got);
            let added: Vec<_> = got.difference(&want).collect();
            let dropped: Vec<_> = want.difference(&got).collect();
            assert!(
                added.is_empty() && dropped.is_empty(),
                "{what}: added {added:?}, dropped {dropped:?}"
            );
        }
    }
    assert!(count > 0);
}

#[test]
fn invalid_objects_report_the_expected_findings() {
    let files = fixtures("invalid");
    assert!(!files.is_empty(), "no invalid fixtures found");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut expected = Vec::new();
        for line in text.lines() {
            let (sev, rest) = if let Some(r) = line.strip_prefix("# expect-error:") {
                (Severity::Error, r)
            } else if let Some(r) = line.strip_prefix("# expect-warning:") {
                (Severity::Warning, r)
            } else {
                continue;
            };
            let (path, msg) = rest
                .split_once('|')
                .unwrap_or_else(|| panic!("{}: bad expect line {line:?}", file.display()));
            expected.push((sev, path.trim().to_string(), msg.trim().to_string()));
        }
        assert!(!expected.is_empty(), "{}: no expect lines", file.display());
        let loaded = load_str(&file.display().to_string(), &text);
        assert_eq!(
            loaded.len(),
            1,
            "{}: one object per invalid fixture",
            file.display()
        );
        let found = &loaded[0].report.diagnostics;
        for (sev, path, msg) in &expected {
            assert!(
                found.iter().any(|d| d.severity == *sev
                    && d.path == *path
                    && d.message.contains(msg.as_str())),
                "{}: expected {sev} at {path} containing {msg:?}; found {found:#?}",
                file.display()
            );
        }
        if expected.iter().any(|(s, _, _)| *s == Severity::Error) {
            let unexpected: Vec<_> = found
                .iter()
                .filter(|d| {
                    d.severity == Severity::Error && !expected.iter().any(|(_, p, _)| *p == d.path)
                })
                .collect();
            assert!(
                unexpected.is_empty(),
                "{}: unexpected errors {unexpected:#?}",
                file.display()
            );
        }
    }
}
