//! `meshctl analyze` against a cluster, with kube's mock API server
//! answering recorded list responses (tests/analyze_cluster/*.json): the
//! objects are listed with the kinds' storage versions, kinds whose CRD is
//! missing (404) are skipped, and the same checks as for files find the
//! VirtualService route to a host no Service declares, named by the object.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use http::{Request, Response, StatusCode};
use kube::client::Body;

fn recorded(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/analyze_cluster")
            .join(name),
    )
    .expect("fixture")
}

fn empty_list(kind: &str, api_version: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": format!("{kind}List"), "apiVersion": api_version,
        "metadata": {"resourceVersion": "51234"}, "items": []
    }))
    .unwrap()
}

/// Serves the list requests; returns the paths asked for.
async fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
) -> Vec<String> {
    let answers: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
        (
            "/apis/networking.istio.io/v1alpha3/namespaces/default/virtualservices",
            recorded("virtualservices.json"),
        ),
        (
            "/apis/networking.istio.io/v1alpha3/namespaces/default/destinationrules",
            recorded("destinationrules.json"),
        ),
        (
            "/api/v1/namespaces/default/services",
            recorded("services.json"),
        ),
        ("/api/v1/namespaces", recorded("namespaces.json")),
        ("/api/v1/namespaces/default/pods", empty_list("Pod", "v1")),
        (
            "/apis/apps/v1/namespaces/default/deployments",
            empty_list("Deployment", "apps/v1"),
        ),
    ]);
    let mut asked = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let path = request.uri().path().to_string();
        asked.push(path.clone());
        let response = match answers.get(path.as_str()) {
            Some(body) => Response::new(Body::from(body.clone())),
            // Telemetry's CRD is not installed in this cluster.
            None if path.contains("telemetry.istio.io") => {
                let status = serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "the server could not find the requested resource",
                    "reason": "NotFound", "details": {}, "code": 404
                });
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap()
            }
            None if path.starts_with("/apis/") && path.contains(".istio.io/") => {
                let kind = path.rsplit('/').next().unwrap_or_default().to_string();
                let api = path
                    .split('/')
                    .skip(2)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("/");
                Response::new(Body::from(empty_list(&kind, &api)))
            }
            None => panic!("unexpected request {path}"),
        };
        send.send_response(response);
    }
    asked
}

#[tokio::test]
async fn the_cluster_is_analyzed_like_files() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(api_server(handle));
    let loaded = meshctl::analyze::cluster::load(client, Some("default"))
        .await
        .expect("listed");
    let asked = server.await.expect("server");
    for kind in [
        "virtualservices",
        "destinationrules",
        "gateways",
        "serviceentries",
        "sidecars",
    ] {
        assert!(
            asked
                .iter()
                .any(|p| p
                    == &format!("/apis/networking.istio.io/v1alpha3/namespaces/default/{kind}")),
            "{kind} listed in its storage version: {asked:?}"
        );
    }
    assert!(
        asked.iter().any(
            |p| p == "/apis/security.istio.io/v1beta1/namespaces/default/authorizationpolicies"
        ),
        "{asked:?}"
    );
    let kinds: Vec<&str> = loaded.iter().map(|l| l.header.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["VirtualService", "DestinationRule", "Service", "Namespace"],
        "every listed object loads; the missing Telemetry CRD is skipped"
    );
    assert!(
        loaded.iter().all(|l| !l.report.has_errors()),
        "no decode errors"
    );

    let messages = meshctl::analyze::analyze(&loaded);
    let lines: Vec<String> = messages.iter().map(|m| m.to_string()).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("IST0101"), "{}", lines[0]);
    assert!(
        lines[0].contains("VirtualService default/reviews")
            && lines[0].contains("Referenced host not found: \"ratings\""),
        "{}",
        lines[0]
    );
}
