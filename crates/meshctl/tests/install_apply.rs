//! `meshctl install` / `uninstall` / `precheck` against kube's mock API
//! service (tower-test): the requests are what a kube-apiserver expects
//! (server-side apply PATCHes with field manager `meshctl`, forced, as
//! `application/apply-patch+yaml`, to each object's URL, CRDs first), the
//! waits read CRD conditions and Deployment rollout status the way the
//! API server reports them, and uninstall deletes in reverse order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use meshctl::install::apply::{self, Keep, WaitOptions};
use meshctl::install::precheck::{self, Finding};
use meshctl::install::{Object, Profile, render, values};
use serde_json::{Value, json};

/// One request the fake API server received.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    content_type: String,
    body: Value,
}

/// How the fake answers: given the request, how many times this
/// method+path was seen before, and the last applied body at this path.
type Answer = dyn Fn(&Seen, usize, Option<&Value>) -> (StatusCode, Value) + Send + Sync;

fn fake_api(answer: Arc<Answer>) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut applied: HashMap<String, Value> = HashMap::new();
        let mut counts: HashMap<(Method, String), usize> = HashMap::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let query = request
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            let content_type = request
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let seen = Seen {
                method: method.clone(),
                path: path.clone(),
                query,
                content_type,
                body: body.clone(),
            };
            log.lock().unwrap().push(seen.clone());
            let n = counts.entry((method.clone(), path.clone())).or_default();
            let (status, reply) = answer(&seen, *n, applied.get(&path));
            *n += 1;
            if method == Method::PATCH && status.is_success() {
                applied.insert(path, body);
            }
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (kube::Client::new(service, "default"), seen)
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{} not found", path.rsplit('/').next().unwrap()),
            "reason": "NotFound", "code": 404
        }),
    )
}

/// The object as the API server returns it after an apply.
fn stored(body: &Value) -> Value {
    let mut v = body.clone();
    v["metadata"]["generation"] = json!(1);
    v["metadata"]["uid"] = json!("5d0e1c4b-8a2f-4f7e-9c61-2b7f0a3d9e10");
    v
}

fn established(body: &Value) -> Value {
    let mut v = stored(body);
    v["status"] = json!({
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
        ],
        "acceptedNames": body["spec"]["names"].clone(),
        "storedVersions": ["v1"]
    });
    v
}

fn rolled_out(body: &Value, available: i32) -> Value {
    let mut v = stored(body);
    v["status"] = json!({
        "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
        "readyReplicas": available, "availableReplicas": available,
    });
    v
}

/// A cluster where CRDs are Established on the second read and
/// Deployments become available on the read `ready_after` (never if None),
/// except those named in `stuck`.
fn cluster(ready_after: usize, stuck: &'static [&'static str]) -> Arc<Answer> {
    Arc::new(move |seen, n, applied| {
        let path = seen.path.as_str();
        match seen.method {
            Method::PATCH => (StatusCode::OK, stored(&seen.body)),
            Method::GET => match applied {
                None => not_found(path),
                Some(body) if path.contains("/customresourcedefinitions/") => {
                    if n == 0 {
                        (StatusCode::OK, stored(body))
                    } else {
                        (StatusCode::OK, established(body))
                    }
                }
                Some(body) if path.contains("/deployments/") => {
                    let name = path.rsplit('/').next().unwrap();
                    let ready = n >= ready_after && !stuck.contains(&name);
                    (StatusCode::OK, rolled_out(body, i32::from(ready)))
                }
                Some(body) => (StatusCode::OK, stored(body)),
            },
            _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
        }
    })
}

fn objects(profile: Profile, revision: Option<&str>) -> Vec<Object> {
    render(&values::build(profile, &[], revision).unwrap()).unwrap()
}

fn url(o: &Object) -> String {
    let prefix = if o.resource.group.is_empty() {
        format!("/api/{}", o.resource.version)
    } else {
        format!("/apis/{}/{}", o.resource.group, o.resource.version)
    };
    match &o.namespace {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{}/{}", o.resource.plural, o.name),
        None => format!("{prefix}/{}/{}", o.resource.plural, o.name),
    }
}

fn quick() -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(3),
        poll: Duration::from_millis(20),
    }
}

#[tokio::test]
async fn install_applies_server_side_crds_first_then_waits_for_rollout() {
    let (client, seen) = fake_api(cluster(2, &[]));
    let objects = objects(Profile::Default, None);
    let mut out = Vec::new();
    apply::install(&client, &objects, &quick(), &mut out)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();

    let patches: Vec<&Seen> = seen.iter().filter(|s| s.method == Method::PATCH).collect();
    let want: Vec<String> = objects.iter().map(url).collect();
    let got: Vec<String> = patches.iter().map(|s| s.path.clone()).collect();
    assert_eq!(got, want, "one apply per object, in manifest order");
    for (p, o) in patches.iter().zip(&objects) {
        assert_eq!(
            p.query.get("fieldManager").map(String::as_str),
            Some("meshctl"),
            "{}",
            p.path
        );
        assert_eq!(
            p.query.get("force").map(String::as_str),
            Some("true"),
            "{}",
            p.path
        );
        assert_eq!(p.content_type, "application/apply-patch+yaml", "{}", p.path);
        assert_eq!(p.body["kind"], o.resource.kind.as_str());
        assert_eq!(p.body["apiVersion"], o.resource.api_version.as_str());
        assert_eq!(p.body["metadata"]["name"], o.name.as_str());
    }
    for path in [
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/virtualservices.networking.istio.io",
        "/api/v1/namespaces/istio-system",
        "/api/v1/namespaces/istio-system/serviceaccounts/istiod",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/istiod-istio-system",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/istio-system/roles/istiod",
        "/api/v1/namespaces/istio-system/configmaps/istio",
        "/apis/apps/v1/namespaces/istio-system/deployments/istiod",
        "/apis/policy/v1/namespaces/istio-system/poddisruptionbudgets/istiod",
        "/apis/autoscaling/v2/namespaces/istio-system/horizontalpodautoscalers/istiod",
        "/apis/apps/v1/namespaces/istio-system/deployments/istio-ingressgateway",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector",
    ] {
        assert!(got.iter().any(|g| g == path), "no apply of {path}");
    }

    // Every CRD is read until Established before the namespace is applied.
    let ns_at = seen
        .iter()
        .position(|s| s.method == Method::PATCH && s.path == "/api/v1/namespaces/istio-system")
        .unwrap();
    let crd_count = mesh_api::IstioKind::ALL.len();
    let last_crd_patch = seen
        .iter()
        .rposition(|s| s.method == Method::PATCH && s.path.contains("/customresourcedefinitions/"))
        .unwrap();
    let crd_reads: Vec<&Seen> = seen[last_crd_patch..ns_at]
        .iter()
        .filter(|s| s.method == Method::GET)
        .collect();
    assert_eq!(
        crd_reads.len(),
        2 * crd_count,
        "each CRD read not-Established, then Established"
    );
    assert!(
        crd_reads
            .iter()
            .all(|s| s.path.contains("/customresourcedefinitions/"))
    );

    // Rollout is read after the last apply, until available (third read).
    let last_patch = seen
        .iter()
        .rposition(|s| s.method == Method::PATCH)
        .unwrap();
    let istiod_reads = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.method == Method::GET && s.path.ends_with("/deployments/istiod"))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    assert_eq!(istiod_reads.len(), 3);
    assert!(istiod_reads[0] > last_patch);

    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "✔ Istio core installed",
            "✔ Istiod installed",
            "✔ Ingress gateways installed",
            "✔ Installation complete"
        ]
    );
}

#[tokio::test]
async fn minimal_profile_waits_only_for_istiod() {
    let (client, seen) = fake_api(cluster(0, &[]));
    let mut out = Vec::new();
    apply::install(
        &client,
        &objects(Profile::Minimal, Some("canary")),
        &quick(),
        &mut out,
    )
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    let reads: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == Method::GET && s.path.contains("/deployments/"))
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(
        reads,
        ["/apis/apps/v1/namespaces/istio-system/deployments/istiod-canary"]
    );
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("Ingress gateways"), "{out}");
    assert!(out.contains("✔ Istiod installed"), "{out}");
}

#[tokio::test]
async fn a_deployment_that_never_rolls_out_times_out_naming_it() {
    let (client, _seen) = fake_api(cluster(0, &["istiod"]));
    let mut out = Vec::new();
    let options = WaitOptions {
        timeout: Duration::from_millis(400),
        poll: Duration::from_millis(20),
    };
    let err = apply::install(
        &client,
        &objects(Profile::Default, None),
        &options,
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, apply::ApplyError::Timeout { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("timed out after 400ms"), "{message}");
    assert!(
        message.contains("Deployment istio-system/istiod (0 of 1 updated replicas available)"),
        "{message}"
    );
    assert!(
        !message.contains("istio-ingressgateway"),
        "only what is not ready: {message}"
    );
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("✔ Istio core installed"));
    assert!(!out.contains("Istiod installed"), "{out}");
    assert!(!out.contains("complete"), "{out}");
}

#[tokio::test]
async fn crds_never_established_stop_the_install_before_anything_else() {
    let answer: Arc<Answer> = Arc::new(|seen, _, applied| match seen.method {
        Method::PATCH => (StatusCode::OK, stored(&seen.body)),
        _ => (StatusCode::OK, stored(applied.unwrap())),
    });
    let (client, seen) = fake_api(answer);
    let options = WaitOptions {
        timeout: Duration::from_millis(200),
        poll: Duration::from_millis(20),
    };
    let err = apply::install(
        &client,
        &objects(Profile::Minimal, None),
        &options,
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(
            "CustomResourceDefinition virtualservices.networking.istio.io (not Established)"
        ),
        "{message}"
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|s| s.path.contains("/customresourcedefinitions/")),
        "nothing but CRDs was touched"
    );
}

#[tokio::test]
async fn a_refused_apply_names_the_object_and_stops() {
    let answer: Arc<Answer> = Arc::new(|seen, n, applied| {
        if seen.method == Method::PATCH && seen.path.contains("/clusterroles/") {
            return (
                StatusCode::FORBIDDEN,
                json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "clusterroles.rbac.authorization.k8s.io \"istiod-istio-system\" is forbidden: user \"dev\" is attempting to grant RBAC permissions not currently held",
                    "reason": "Forbidden", "code": 403
                }),
            );
        }
        cluster(0, &[])(seen, n, applied)
    });
    let (client, seen) = fake_api(answer);
    let err = apply::install(
        &client,
        &objects(Profile::Default, None),
        &quick(),
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("applying ClusterRole istiod-istio-system"),
        "{message}"
    );
    assert!(message.contains("forbidden"), "{message}");
    let seen = seen.lock().unwrap();
    assert!(
        !seen
            .iter()
            .any(|s| s.path.contains("/clusterrolebindings/")),
        "stopped at the failure"
    );
}

fn deleter(missing: &'static [&'static str]) -> Arc<Answer> {
    Arc::new(move |seen, _, _| {
        let name = seen.path.rsplit('/').next().unwrap();
        if seen.method != Method::DELETE {
            return (StatusCode::METHOD_NOT_ALLOWED, json!({}));
        }
        if missing.contains(&name) {
            return not_found(&seen.path);
        }
        (
            StatusCode::OK,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name}}),
        )
    })
}

#[tokio::test]
async fn uninstall_deletes_in_reverse_order_webhook_first_tolerating_404() {
    // The gateway was never installed (minimal profile).
    let (client, seen) = fake_api(deleter(&["istio-ingressgateway"]));
    let objects = objects(Profile::Default, None);
    let keep = Keep {
        purge: false,
        revision: false,
    };
    let mut out = Vec::new();
    apply::uninstall(&client, &objects, keep, &mut out)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let deleted: Vec<String> = seen.iter().map(|s| s.path.clone()).collect();
    assert!(seen.iter().all(|s| s.method == Method::DELETE));
    let want: Vec<String> = objects
        .iter()
        .rev()
        .filter(|o| o.resource.kind != "CustomResourceDefinition" && o.resource.kind != "Namespace")
        .map(url)
        .collect();
    assert_eq!(deleted, want);
    assert_eq!(
        deleted[0],
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector"
    );
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("✔ Removed Deployment istio-system/istiod."),
        "{out}"
    );
    assert!(
        !out.contains("istio-ingressgateway"),
        "absent objects are not reported removed: {out}"
    );
    assert!(out.ends_with("✔ Uninstall complete\n"));
}

#[tokio::test]
async fn purge_removes_the_namespace_and_then_the_crds() {
    let (client, seen) = fake_api(deleter(&[]));
    let objects = objects(Profile::Default, None);
    apply::uninstall(
        &client,
        &objects,
        Keep {
            purge: true,
            revision: false,
        },
        &mut Vec::new(),
    )
    .await
    .unwrap();
    let deleted: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(deleted.len(), objects.len());
    let crds = mesh_api::IstioKind::ALL.len();
    assert_eq!(
        deleted[deleted.len() - crds - 1],
        "/api/v1/namespaces/istio-system"
    );
    assert!(
        deleted[deleted.len() - crds..]
            .iter()
            .all(|p| p.contains("/customresourcedefinitions/"))
    );
}

#[tokio::test]
async fn revision_uninstall_keeps_what_revisions_share() {
    let (client, seen) = fake_api(deleter(&[]));
    let objects = objects(Profile::Default, Some("canary"));
    apply::uninstall(
        &client,
        &objects,
        Keep {
            purge: false,
            revision: true,
        },
        &mut Vec::new(),
    )
    .await
    .unwrap();
    let deleted: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        deleted[0],
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector-canary"
    );
    assert!(
        deleted
            .iter()
            .any(|p| p.ends_with("/deployments/istiod-canary"))
    );
    assert!(
        !deleted.iter().any(|p| p.contains("istio-ingressgateway")),
        "{deleted:?}"
    );
    assert!(
        deleted
            .iter()
            .any(|p| p.ends_with("/configmaps/istio-canary")),
        "{deleted:?}"
    );
}

const VERSION_1_28: &str = r#"{"major":"1","minor":"28","emulationMajor":"1","emulationMinor":"28","minCompatibilityMajor":"1","minCompatibilityMinor":"27","gitVersion":"v1.28.15","gitCommit":"841856557ef0f6a399096c42635d114d6f2cf7f4","gitTreeState":"clean","buildDate":"2024-10-22T20:26:19Z","goVersion":"go1.22.8","compiler":"gc","platform":"linux/amd64"}"#;

fn precheck_cluster(version: &'static str, denied: &'static str, istiods: Value) -> Arc<Answer> {
    Arc::new(
        move |seen, _, _| match (seen.method.as_str(), seen.path.as_str()) {
            ("GET", "/version") => (StatusCode::OK, serde_json::from_str(version).unwrap()),
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => {
                let attrs = &seen.body["spec"]["resourceAttributes"];
                let allowed = attrs["resource"] != denied;
                let mut review = seen.body.clone();
                review["status"] = if allowed {
                    json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"cluster-admin\""})
                } else {
                    json!({"allowed": false})
                };
                (StatusCode::CREATED, review)
            }
            ("GET", "/apis/apps/v1/namespaces/istio-system/deployments") => {
                assert_eq!(
                    seen.query.get("labelSelector").map(String::as_str),
                    Some("app%3Distiod")
                );
                (
                    StatusCode::OK,
                    json!({"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {"resourceVersion": "1"}, "items": istiods.clone()}),
                )
            }
            _ => not_found(&seen.path),
        },
    )
}

fn istiod(rev: &str, image: &str) -> Value {
    json!({
        "metadata": {"name": format!("istiod-{rev}"), "namespace": "istio-system", "labels": {"app": "istiod", "istio.io/rev": rev}},
        "spec": {"selector": {"matchLabels": {"app": "istiod"}}, "template": {"spec": {"containers": [{"name": "discovery", "image": image}]}}}
    })
}

#[tokio::test]
async fn precheck_passes_a_1_28_cluster_with_a_warning_about_native_sidecars() {
    let (client, seen) = fake_api(precheck_cluster(VERSION_1_28, "", json!([])));
    let objects = objects(Profile::Default, None);
    let findings = precheck::check(&client, &objects, "default").await;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(matches!(&findings[0], Finding::Warning(m) if m.contains("native sidecars need 1.29")));
    let mut out = Vec::new();
    assert_eq!(precheck::report(&findings, &mut out).unwrap(), 0);
    assert!(String::from_utf8(out).unwrap().contains("No issues found"));
    // One review per (group, resource, namespace) the manifest creates.
    let seen = seen.lock().unwrap();
    let reviews: Vec<&Value> = seen
        .iter()
        .filter(|s| s.path.ends_with("selfsubjectaccessreviews"))
        .map(|s| &s.body["spec"]["resourceAttributes"])
        .collect();
    assert!(reviews.iter().all(|r| r["verb"] == "create"));
    for resource in [
        "customresourcedefinitions",
        "clusterroles",
        "clusterrolebindings",
        "mutatingwebhookconfigurations",
        "deployments",
        "horizontalpodautoscalers",
    ] {
        assert!(
            reviews.iter().any(|r| r["resource"] == resource),
            "no review of {resource}"
        );
    }
}

#[tokio::test]
async fn precheck_fails_old_clusters_missing_rights_and_foreign_istiod() {
    let old = VERSION_1_28
        .replace(r#""minor":"28""#, r#""minor":"27+""#)
        .replace("v1.28.15", "v1.27.16");
    let old: &'static str = Box::leak(old.into_boxed_str());
    let (client, _) = fake_api(precheck_cluster(
        old,
        "mutatingwebhookconfigurations",
        json!([
            istiod("stable", "docker.io/istio/pilot:1.24.0"),
            istiod("canary", "ghcr.io/mesh-rs/mesh-control:0.1.0")
        ]),
    ));
    let findings = precheck::check(&client, &objects(Profile::Default, None), "default").await;
    let errors: Vec<&String> = findings
        .iter()
        .filter_map(|f| match f {
            Finding::Error(m) => Some(m),
            Finding::Warning(_) => None,
        })
        .collect();
    assert_eq!(errors.len(), 3, "{findings:?}");
    assert!(errors[0].contains("v1.27.16 is too old"), "{}", errors[0]);
    assert!(
        errors[1].contains(
            "not allowed to create mutatingwebhookconfigurations.admissionregistration.k8s.io"
        ),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("istio-system/istiod-stable")
            && errors[2].contains("docker.io/istio/pilot")
    );
    assert!(findings.iter().any(
        |f| matches!(f, Finding::Warning(m) if m.contains("revision canary is already installed"))
    ));
    let mut out = Vec::new();
    assert_eq!(precheck::report(&findings, &mut out).unwrap(), 1);
}
