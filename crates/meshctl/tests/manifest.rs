//! The CRDs committed under `deploy/crds/` are exactly what the API types
//! generate. `UPDATE_GOLDEN=1 cargo test -p meshctl --test manifest`
//! rewrites the file after an API change.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn committed_crds_are_generated_from_the_types() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["manifest", "crds"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let generated = String::from_utf8(out.stdout).unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds/crds.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&file, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == generated,
        "deploy/crds/crds.yaml is stale: rerun with UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn generated_crds_parse_back_as_kubernetes_objects() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["manifest", "crds"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = mesh_api::object::split_documents(&text);
    assert_eq!(docs.len(), mesh_api::IstioKind::ALL.len());
    for doc in docs {
        let v: serde_json::Value = serde_saphyr::from_str(doc.text).unwrap();
        assert_eq!(v["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(v["kind"], "CustomResourceDefinition");
        let versions = v["spec"]["versions"].as_array().unwrap();
        assert!(versions.iter().all(|ver| ver["served"] == true));
        assert_eq!(
            versions.iter().filter(|ver| ver["storage"] == true).count(),
            1
        );
        let spec_schema = &versions[0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec_schema["type"], "object", "{}", v["metadata"]["name"]);
        // What the API server refuses in a v1 CRD's structural schema.
        let schema = serde_json::to_string(&versions[0]["schema"]).unwrap();
        for forbidden in [
            "\"patternProperties\"",
            "\"additionalProperties\":false",
            "\"uniqueItems\":true",
        ] {
            assert!(
                !schema.contains(forbidden),
                "{}: {forbidden} in the schema",
                v["metadata"]["name"]
            );
        }
    }
}

/// Checks `value` against a CRD's structural schema the way the API server
/// does with strict field validation (`kubectl apply --validate=strict`):
/// types, `nullable`, enums, `required`, `minimum`, and unknown fields
/// (refused unless `additionalProperties` or
/// `x-kubernetes-preserve-unknown-fields` allow them). Problems are pushed
/// as `path: what`.
fn check_schema(
    schema: &serde_json::Value,
    value: &serde_json::Value,
    path: &str,
    errors: &mut Vec<String>,
) {
    use serde_json::Value;
    if value.is_null() {
        if schema["nullable"] != true && schema.get("type").is_some() {
            errors.push(format!("{path}: null where {} is expected", schema["type"]));
        }
        return;
    }
    if schema["x-kubernetes-preserve-unknown-fields"] == true && schema.get("properties").is_none()
    {
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let type_ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!("{path}: {value} is not of type {ty}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < min
    {
        errors.push(format!("{path}: {n} is below the minimum {min}"));
    }
    match value {
        Value::Object(map) => {
            for field in schema["required"].as_array().into_iter().flatten() {
                let field = field.as_str().unwrap_or_default();
                if !map.contains_key(field) {
                    errors.push(format!("{path}: required field {field} is missing"));
                }
            }
            let properties = schema["properties"].as_object();
            for (key, v) in map {
                let at = format!("{path}.{key}");
                match properties.and_then(|p| p.get(key)) {
                    Some(s) => check_schema(s, v, &at, errors),
                    None => match &schema["additionalProperties"] {
                        Value::Object(_) => {
                            check_schema(&schema["additionalProperties"], v, &at, errors)
                        }
                        Value::Bool(true) => {}
                        _ if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
                        _ => errors.push(format!("{at}: unknown field")),
                    },
                }
            }
        }
        Value::Array(items) if schema.get("items").is_some() => {
            for (i, item) in items.iter().enumerate() {
                check_schema(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

/// Every Istio object in the bundled samples, the e2e manifests and the
/// mesh-api fixtures of valid objects passes its own CRD's schema, so
/// `kubectl apply` of them against the CRDs `meshctl install` creates is
/// not refused.
#[test]
fn every_crd_accepts_the_bundled_samples() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["manifest", "crds"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    // (group, kind, version) -> openAPIV3Schema
    let mut schemas = std::collections::BTreeMap::new();
    for doc in mesh_api::object::split_documents(&text) {
        let crd: serde_json::Value = serde_saphyr::from_str(doc.text).unwrap();
        let group = crd["spec"]["group"].as_str().unwrap().to_string();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        for ver in crd["spec"]["versions"].as_array().unwrap() {
            let name = ver["name"].as_str().unwrap().to_string();
            schemas.insert(
                (group.clone(), kind.clone(), name),
                ver["schema"]["openAPIV3Schema"].clone(),
            );
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    let mut dirs = vec![
        root.join("samples"),
        root.join("e2e/manifests"),
        root.join("crates/mesh-api/tests/fixtures/valid"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let (mut checked, mut errors) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in mesh_api::object::split_documents(&text) {
            let Ok(obj) = serde_saphyr::from_str::<serde_json::Value>(doc.text) else {
                continue;
            };
            let (Some(api_version), Some(kind)) =
                (obj["apiVersion"].as_str(), obj["kind"].as_str())
            else {
                continue;
            };
            let Some((group, version)) = api_version.split_once('/') else {
                continue;
            };
            if !group.ends_with("istio.io") {
                continue;
            }
            let key = (group.to_string(), kind.to_string(), version.to_string());
            let Some(schema) = schemas.get(&key) else {
                errors.push(format!(
                    "{}: no CRD serves {api_version} {kind}",
                    file.display()
                ));
                continue;
            };
            let name = obj["metadata"]["name"].as_str().unwrap_or("?");
            let mut problems = Vec::new();
            check_schema(
                &schema["properties"]["spec"],
                &obj["spec"],
                "spec",
                &mut problems,
            );
            errors.extend(
                problems
                    .into_iter()
                    .map(|p| format!("{}: {kind} {name}: {p}", file.display())),
            );
            checked += 1;
        }
    }
    assert!(
        checked > 100,
        "only {checked} Istio objects found in the samples"
    );
    assert!(
        errors.is_empty(),
        "{} problems:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn the_schema_check_refuses_what_the_api_server_refuses() {
    let schema = serde_json::json!({"type": "object", "properties": {
        "hosts": {"type": "array", "items": {"type": "string"}},
        "mode": {"type": "string", "enum": ["STRICT", "PERMISSIVE"]},
        "port": {"type": "integer", "minimum": 0, "nullable": true},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    }});
    let check = |v: serde_json::Value| {
        let mut errors = Vec::new();
        check_schema(&schema, &v, "spec", &mut errors);
        errors
    };
    assert!(check(serde_json::json!({"hosts": ["a"], "mode": "STRICT", "port": null, "labels": {"x": "y"}})).is_empty());
    assert_eq!(
        check(serde_json::json!({"hostz": ["a"]})),
        ["spec.hostz: unknown field"]
    );
    assert_eq!(
        check(serde_json::json!({"hosts": [1]})),
        ["spec.hosts[0]: 1 is not of type string"]
    );
    assert_eq!(
        check(serde_json::json!({"mode": "LAX"}))[0],
        "spec.mode: \"LAX\" is not one of [String(\"STRICT\"), String(\"PERMISSIVE\")]"
    );
    assert_eq!(
        check(serde_json::json!({"port": -1})),
        ["spec.port: -1 is below the minimum 0"]
    );
    assert_eq!(
        check(serde_json::json!({"labels": {"x": 1}})),
        ["spec.labels.x: 1 is not of type string"]
    );
}
