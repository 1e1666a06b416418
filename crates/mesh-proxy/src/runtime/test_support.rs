//! What the runtime's unit tests share: the realistic input every compiler
//! must accept, i.e. the resources mesh-control's golden cases hold
//! (`crates/mesh-control/tests/golden/<case>/*.json`, Envoy JSON dumps of
//! translated sidecar and gateway config).

use std::path::{Path, PathBuf};

/// Every entry of `section` (`"clusters"`, `"endpoints"`, `"listeners"`,
/// `"routes"`) in the golden dumps, with the file it came from. Fails the
/// test when there is none, so a moved directory cannot pass silently.
pub fn golden(section: &str) -> Vec<(PathBuf, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-control/tests/golden");
    let mut found = Vec::new();
    for case in std::fs::read_dir(&dir).unwrap() {
        for file in std::fs::read_dir(case.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let dump: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for item in dump[section].as_array().into_iter().flatten() {
                found.push((path.clone(), item.clone()));
            }
        }
    }
    assert!(!found.is_empty(), "no {section} in {}", dir.display());
    found
}
