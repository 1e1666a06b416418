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
    }
}
