//! Kubernetes ServiceAccount token authentication against kube's mock API
//! server (tower-test): the authenticator sends a well-formed TokenReview
//! and reads the answers a real kube-apiserver gives (bodies below follow
//! kube-apiserver 1.33 responses, tokens shortened). Then one end-to-end
//! run: `CreateCertificate` over TLS authenticated by TokenReview.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::authentication::v1::TokenReview;
use kube::client::Body;
use mesh_ca::auth::kube::{TokenReviewAuthenticator, TokenReviewConfig};
use mesh_ca::auth::{AuthError, Authenticator};
use mesh_ca::client::{check_response, generate_key_and_csr};
use tokio::net::TcpListener;
use tonic::Code;

const SLEEP_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjVzNnBfRnRR.sleep.sig";

/// `default/sleep`'s projected token, audience `istio-ca`, reviewed.
const AUTHENTICATED_SA: &str = r#"{
  "kind": "TokenReview",
  "apiVersion": "authentication.k8s.io/v1",
  "metadata": {"creationTimestamp": null},
  "spec": {"token": "eyJhbGciOiJSUzI1NiIsImtpZCI6IjVzNnBfRnRR.sleep.sig", "audiences": ["istio-ca"]},
  "status": {
    "authenticated": true,
    "user": {
      "username": "system:serviceaccount:default:sleep",
      "uid": "8f0c1b8e-3d0a-4c55-9a43-0d7f3f3c2a11",
      "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
      "extra": {
        "authentication.kubernetes.io/credential-id": ["JTI=0b1f5b4e-6a4c-4bd4-9a0b-2f1d0c7e9e10"],
        "authentication.kubernetes.io/node-name": ["kind-worker"],
        "authentication.kubernetes.io/node-uid": ["3c9d5a2e-1f7b-4e0a-8d6c-5b4a3f2e1d0c"],
        "authentication.kubernetes.io/pod-name": ["sleep-5f7c8d9b6-xq2lm"],
        "authentication.kubernetes.io/pod-uid": ["a1b2c3d4-e5f6-4789-8abc-def012345678"]
      }
    },
    "audiences": ["istio-ca"]
  }
}"#;

/// An expired token: the API server says no and why.
const UNAUTHENTICATED: &str = r#"{
  "kind": "TokenReview",
  "apiVersion": "authentication.k8s.io/v1",
  "metadata": {"creationTimestamp": null},
  "spec": {"token": "eyJhbGciOiJSUzI1NiJ9.expired.sig", "audiences": ["istio-ca"]},
  "status": {
    "user": {},
    "error": "[invalid bearer token, service account token has expired]"
  }
}"#;

/// A token minted for the API server's audience, reviewed for `istio-ca`.
const API_AUDIENCE_TOKEN: &str = r#"{
  "kind": "TokenReview",
  "apiVersion": "authentication.k8s.io/v1",
  "metadata": {"creationTimestamp": null},
  "spec": {"token": "eyJhbGciOiJSUzI1NiJ9.apiaud.sig", "audiences": ["istio-ca"]},
  "status": {
    "user": {},
    "error": "[invalid bearer token, token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences [\"istio-ca\"], unknown]"
  }
}"#;

/// A webhook authenticator that ignores `spec.audiences` and vouches for a
/// token of another audience: authenticated, but not for us.
const WRONG_AUDIENCE: &str = r#"{
  "kind": "TokenReview",
  "apiVersion": "authentication.k8s.io/v1",
  "metadata": {"creationTimestamp": null},
  "spec": {"token": "eyJhbGciOiJSUzI1NiJ9.webhook.sig", "audiences": ["istio-ca"]},
  "status": {
    "authenticated": true,
    "user": {
      "username": "system:serviceaccount:default:sleep",
      "uid": "8f0c1b8e-3d0a-4c55-9a43-0d7f3f3c2a11",
      "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"]
    },
    "audiences": ["https://kubernetes.default.svc.cluster.local", "k3s"]
  }
}"#;

/// A node's credential: authenticated, but not a workload.
const NODE_USER: &str = r#"{
  "kind": "TokenReview",
  "apiVersion": "authentication.k8s.io/v1",
  "metadata": {"creationTimestamp": null},
  "spec": {"token": "eyJhbGciOiJSUzI1NiJ9.node.sig", "audiences": ["istio-ca"]},
  "status": {
    "authenticated": true,
    "user": {
      "username": "system:node:x",
      "groups": ["system:nodes", "system:authenticated"]
    },
    "audiences": ["istio-ca"]
  }
}"#;

const INTERNAL_ERROR: &str = r#"{
  "kind": "Status",
  "apiVersion": "v1",
  "metadata": {},
  "status": "Failure",
  "message": "Internal error occurred: etcdserver: request timed out",
  "reason": "InternalError",
  "details": {"causes": [{"message": "etcdserver: request timed out"}]},
  "code": 500
}"#;

const FORBIDDEN: &str = r#"{
  "kind": "Status",
  "apiVersion": "v1",
  "metadata": {},
  "status": "Failure",
  "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:istio-system:istiod\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
  "reason": "Forbidden",
  "details": {"group": "authentication.k8s.io", "kind": "tokenreviews"},
  "code": 403
}"#;

/// One request the mock API server received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    review: TokenReview,
}

/// What the fake API server answers for a token; `None` never answers.
type Answer = fn(&str) -> Option<(StatusCode, &'static str)>;

/// A `kube::Client` over tower-test's mock service, answered by `answer`.
fn mock_api(answer: Answer) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut parked = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let review: TokenReview = serde_json::from_slice(&bytes).unwrap();
            let token = review.spec.token.clone().unwrap_or_default();
            log.lock().unwrap().push(Seen {
                method,
                path,
                review,
            });
            match answer(&token) {
                Some((code, body)) => send.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(body.as_bytes().to_vec()))
                        .unwrap(),
                ),
                // Keep the responder so the call hangs, as it would on a
                // partitioned API server.
                None => parked.push(send),
            }
        }
    });
    (kube::Client::new(service, "default"), seen)
}

fn recorded(token: &str) -> Option<(StatusCode, &'static str)> {
    Some(match token {
        SLEEP_TOKEN => (StatusCode::CREATED, AUTHENTICATED_SA),
        "expired" => (StatusCode::CREATED, UNAUTHENTICATED),
        "api-audience" => (StatusCode::CREATED, API_AUDIENCE_TOKEN),
        "webhook" => (StatusCode::CREATED, WRONG_AUDIENCE),
        "node" => (StatusCode::CREATED, NODE_USER),
        "etcd-down" => (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_ERROR),
        "no-rbac" => (StatusCode::FORBIDDEN, FORBIDDEN),
        _ => return None,
    })
}

fn authenticator(client: kube::Client) -> TokenReviewAuthenticator {
    TokenReviewAuthenticator::new(
        client,
        TokenReviewConfig {
            timeout: Duration::from_millis(300),
            ..TokenReviewConfig::default()
        },
    )
}

#[tokio::test]
async fn authenticated_service_account_becomes_its_spiffe_id() {
    let (client, seen) = mock_api(recorded);
    let auth = authenticator(client);
    assert_eq!(auth.name(), "kube-tokenreview");
    let proven = auth.authenticate(SLEEP_TOKEN).await.unwrap();
    assert_eq!(proven, id("default", "sleep"));
    assert_eq!(
        proven.to_string(),
        "spiffe://cluster.local/ns/default/sa/sleep"
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].path, "/apis/authentication.k8s.io/v1/tokenreviews?");
    assert_eq!(seen[0].review.spec.token.as_deref(), Some(SLEEP_TOKEN));
    assert_eq!(
        seen[0].review.spec.audiences,
        Some(vec!["istio-ca".to_string()])
    );
}

#[tokio::test]
async fn trust_domain_and_audiences_come_from_config() {
    let (client, seen) = mock_api(recorded);
    let auth = TokenReviewAuthenticator::new(
        client,
        TokenReviewConfig {
            trust_domain: "example.org".into(),
            audiences: vec!["mesh-ca".into(), "istio-ca".into()],
            timeout: Duration::from_secs(5),
        },
    );
    let proven = auth.authenticate(SLEEP_TOKEN).await.unwrap();
    assert_eq!(
        proven.to_string(),
        "spiffe://example.org/ns/default/sa/sleep"
    );
    assert_eq!(
        seen.lock().unwrap()[0].review.spec.audiences,
        Some(vec!["mesh-ca".to_string(), "istio-ca".to_string()])
    );
}

#[tokio::test]
async fn refusals_and_failures_map_to_rejected_or_unavailable() {
    let (client, _) = mock_api(recorded);
    let auth = authenticator(client);
    let cases: [(&str, bool, &str); 6] = [
        ("expired", false, "service account token has expired"),
        ("api-audience", false, "is invalid for the target audiences"),
        ("webhook", false, "include none of [\"istio-ca\"]"),
        ("node", false, "\"system:node:x\" is not a ServiceAccount"),
        (
            "etcd-down",
            true,
            "500 InternalError: Internal error occurred",
        ),
        ("no-rbac", true, "system:auth-delegator"),
    ];
    for (token, unavailable, needle) in cases {
        let err = auth.authenticate(token).await.unwrap_err();
        match (&err, unavailable) {
            (AuthError::Rejected { backend, reason }, false)
            | (AuthError::Unavailable { backend, reason }, true) => {
                assert_eq!(*backend, "kube-tokenreview");
                assert!(reason.contains(needle), "{token}: {reason}");
            }
            _ => panic!("{token}: unexpected {err:?}"),
        }
    }
    assert_eq!(
        auth.authenticate("").await.unwrap_err(),
        AuthError::MissingToken
    );
}

#[tokio::test]
async fn api_server_that_never_answers_is_unavailable() {
    let (client, _) = mock_api(recorded);
    let auth = authenticator(client);
    let err = auth.authenticate("partitioned").await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Unavailable { reason, .. } if reason.contains("no answer")),
        "{err:?}"
    );
}

#[tokio::test]
async fn create_certificate_with_tokenreview_signs_only_the_proven_service_account() {
    let (client, seen) = mock_api(recorded);
    let authenticators: Vec<Arc<dyn Authenticator>> = vec![Arc::new(authenticator(client))];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ca = RunningCa::start_with(listener, new_ca(), new_tokens(), authenticators).await;
    let client = ca.client();

    let sleep = id("default", "sleep");
    let (key, csr) = generate_key_and_csr(&sleep).unwrap();
    let chain = client
        .create_certificate(&csr, None, SLEEP_TOKEN)
        .await
        .unwrap();
    check_response(&sleep, &key, &chain, ca.authority.trust_bundle()).unwrap();

    // The same token asking for another ServiceAccount's identity.
    let (_, other_csr) = generate_key_and_csr(&id("default", "productpage")).unwrap();
    let err = client
        .create_certificate(&other_csr, None, SLEEP_TOKEN)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // A rejected token and an API server in trouble, told apart.
    let err = client
        .create_certificate(&csr, None, "node")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = client
        .create_certificate(&csr, None, "etcd-down")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");

    assert_eq!(ca.metrics.issued.get(), 1);
    assert_eq!(seen.lock().unwrap().len(), 4);
    ca.stop().await;
}
