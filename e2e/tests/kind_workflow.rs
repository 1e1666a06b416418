//! The kind backend cannot run here (no Docker), so its pieces are kept
//! honest statically: the workflow file is valid YAML that runs
//! e2e/kind/run.sh on pull requests, and the script builds every image the
//! sample app and `meshctl install` use, from Dockerfiles that exist, and
//! runs the same scenario test binary as the local backend. (.ci/run also
//! runs shellcheck over the scripts.)

use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_workflow_runs_the_kind_script_on_pull_requests() {
    let workflow: Value = serde_saphyr::from_str(&read(".github/workflows/e2e-kind.yml"))
        .unwrap_or_else(|e| panic!("e2e-kind.yml is not valid YAML: {e}"));
    assert!(
        workflow["on"].get("pull_request").is_some(),
        "runs on pull requests: {workflow}"
    );
    let steps = workflow["jobs"]["kind"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("jobs.kind.steps: {workflow}"));
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(
        runs.iter().any(|r| r.contains("bash e2e/kind/run.sh")),
        "a step runs e2e/kind/run.sh: {runs:?}"
    );
    for step in steps {
        assert!(
            step.get("run").is_some() || step.get("uses").is_some(),
            "every step runs or uses something: {step}"
        );
    }
}

#[test]
fn the_kind_script_builds_what_the_manifests_use() {
    let script = read("e2e/kind/run.sh");
    for dockerfile in [
        "deploy/docker/mesh-control.Dockerfile",
        "deploy/docker/mesh-proxy.Dockerfile",
        "e2e/kind/mesh-echo.Dockerfile",
    ] {
        assert!(script.contains(dockerfile), "run.sh builds {dockerfile}");
        assert!(root().join(dockerfile).is_file(), "{dockerfile} exists");
    }
    // Every image the sample app names is built or pulled and loaded.
    let app = read("e2e/manifests/app.yaml");
    for line in app.lines().filter_map(|l| l.trim().strip_prefix("image: ")) {
        let image = line.trim();
        let (name, tag) = image.rsplit_once(':').unwrap_or((image, ""));
        let built = name.starts_with("ghcr.io/mesh-rs/") && tag == "dev";
        let pulled = script.contains(&format!("client_image=\"{image}\""));
        assert!(built || pulled, "run.sh neither builds nor pulls {image}");
    }
    assert!(script.contains("E2E_BACKEND=kind cargo test --locked -p e2e --test scenarios"));
    assert!(script.contains("meshctl install --set \"hub=$hub\" --set \"tag=$tag\""));
    assert!(script.contains("istio-injection=enabled"));
}
