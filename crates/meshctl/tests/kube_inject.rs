//! `meshctl kube-inject` on a manifest with every workload kind: the
//! output parses back into k8s-openapi types, each pod template has the
//! capture init container and the proxy (native sidecar by default, a
//! regular container with `--native-sidecars=false`), objects that are not
//! workloads and opted-out pods come out unchanged, and injecting the
//! output again changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde_json::Value;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kube_inject/bookinfo.yaml")
}

fn kube_inject(file: &std::path::Path, extra: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("kube-inject")
        .arg("-f")
        .arg(file)
        .args(extra)
        .output()
        .expect("meshctl runs");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8");
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

fn docs(yaml: &str) -> Vec<Value> {
    mesh_api::object::split_documents(yaml)
        .iter()
        .map(|d| serde_saphyr::from_str(d.text).expect("YAML document"))
        .collect()
}

fn by_kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && (kind == "List" || d["metadata"]["name"] == name))
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn injected(template: &PodTemplateSpec, native: bool) {
    let spec = template.spec.as_ref().expect("spec");
    let inits: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    if native {
        assert_eq!(inits, ["istio-init", "istio-proxy"]);
        assert!(!containers.contains(&"istio-proxy"));
    } else {
        assert_eq!(inits, ["istio-init"]);
        assert_eq!(containers.last(), Some(&"istio-proxy"));
    }
    let meta = template.metadata.as_ref().expect("metadata");
    assert_eq!(
        meta.labels.as_ref().expect("labels")["security.istio.io/tlsMode"],
        "istio"
    );
    assert!(
        meta.annotations
            .as_ref()
            .expect("annotations")
            .contains_key("sidecar.istio.io/status")
    );
    assert!(meta.name.is_none(), "templates stay unnamed");
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).expect("parses into the k8s-openapi type")
}

#[test]
fn every_workload_kind_gets_the_proxy() {
    let (out, stderr) = kube_inject(&manifest(), &[]);
    let out = docs(&out);
    assert_eq!(out.len(), 9, "one document out per document in");

    let d: Deployment = typed(by_kind(&out, "Deployment", "reviews-v1"));
    let template = d.spec.expect("spec").template;
    injected(&template, true);
    let init = &template
        .spec
        .as_ref()
        .expect("spec")
        .init_containers
        .as_ref()
        .expect("inits")[0];
    let args = init.args.clone().unwrap_or_default();
    let o = args.iter().position(|a| a == "-o").expect("-o");
    assert_eq!(args[o + 1], "5432");
    let app = &template.spec.as_ref().expect("spec").containers[0];
    let probe = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("probe");
    assert_eq!(probe.path.as_deref(), Some("/app-health/reviews/readyz"));

    let s: StatefulSet = typed(by_kind(&out, "StatefulSet", "redis"));
    injected(&s.spec.expect("spec").template, true);
    let ds: DaemonSet = typed(by_kind(&out, "DaemonSet", "node-agent"));
    injected(&ds.spec.expect("spec").template, true);
    let job: Job = typed(by_kind(&out, "Job", "migrate"));
    injected(&job.spec.expect("spec").template, true);
    let cron: CronJob = typed(by_kind(&out, "CronJob", "report"));
    let cron_template = cron
        .spec
        .expect("spec")
        .job_template
        .spec
        .expect("job spec")
        .template;
    injected(&cron_template, true);
    assert_eq!(
        cron_template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("labels")["service.istio.io/canonical-name"],
        "report"
    );

    let sleep: Pod = typed(by_kind(&out, "Pod", "sleep"));
    let inits: Vec<String> = sleep
        .spec
        .expect("spec")
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(inits, ["istio-init", "istio-proxy"]);

    let list = by_kind(&out, "List", "");
    let ratings: Deployment = typed(&list["items"][0]);
    injected(&ratings.spec.expect("spec").template, true);

    // Left alone: the Service, the ConfigMap in the List, the opted-out pod.
    let input = docs(&std::fs::read_to_string(manifest()).expect("fixture"));
    assert_eq!(
        by_kind(&out, "Service", "reviews"),
        by_kind(&input, "Service", "reviews")
    );
    assert_eq!(list["items"][1], by_kind(&input, "List", "")["items"][1]);
    let legacy: Pod = typed(by_kind(&out, "Pod", "legacy"));
    assert!(legacy.spec.expect("spec").init_containers.is_none());
    assert!(
        stderr.contains("Pod/legacy: not injected: sidecar.istio.io/inject: \"false\""),
        "{stderr}"
    );
}

#[test]
fn regular_container_without_native_sidecars_and_idempotent() {
    let (once, _) = kube_inject(&manifest(), &["--native-sidecars=false"]);
    let d: Deployment = typed(by_kind(&docs(&once), "Deployment", "reviews-v1"));
    injected(&d.spec.expect("spec").template, false);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("injected.yaml");
    std::fs::write(&file, &once).expect("write");
    let (twice, stderr) = kube_inject(&file, &["--native-sidecars=false"]);
    assert_eq!(
        docs(&twice),
        docs(&once),
        "injecting an injected manifest changes nothing"
    );
    assert!(stderr.contains("already injected"), "{stderr}");
}

#[test]
fn mesh_config_default_config_reaches_the_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "defaultConfig:\n  concurrency: 3\n  holdApplicationUntilProxyStarts: true\n",
    )
    .expect("write");
    let (out, _) = kube_inject(
        &manifest(),
        &[
            "--meshConfigFile",
            mesh.to_str().expect("path"),
            "--native-sidecars=false",
        ],
    );
    let d: Deployment = typed(by_kind(&docs(&out), "Deployment", "reviews-v1"));
    let spec = d.spec.expect("spec").template.spec.expect("pod spec");
    let proxy = &spec.containers[0];
    assert_eq!(proxy.name, "istio-proxy", "held: the proxy starts first");
    let args = proxy.args.clone().unwrap_or_default();
    let c = args
        .iter()
        .position(|a| a == "--concurrency")
        .expect("--concurrency");
    assert_eq!(args[c + 1], "3");

    std::fs::write(&mesh, "defaultConfig:\n  concurrency: lots\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["kube-inject", "-f"])
        .arg(manifest())
        .arg("--meshConfigFile")
        .arg(&mesh)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mesh.yaml: defaultConfig.concurrency: invalid type"),
        "{stderr}"
    );
}
