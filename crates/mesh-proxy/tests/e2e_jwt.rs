//! End-user authentication through both data planes: mesh-control turns a
//! RequestAuthentication (inline JWKS of a test issuer) and
//! AuthorizationPolicies on the ingress gateway into Envoy's `jwt_authn`
//! and RBAC filters; the real `mesh-proxy` binary and a stock Envoy, one
//! after the other on the same config, must give every request of a table
//! of good and hostile tokens the same answer, and the answer Istio
//! documents: a valid token with the required claim passes, a missing
//! token where a principal is required gets 403, any invalid token 401.
//!
//! Topology, all on loopback: one mesh-echo "pod" on 127.0.31.1, the
//! Gateway bound to 127.0.0.1 on a port the test picks, mesh-control in
//! process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use mesh_test_support::envoy::{Envoy, router_bootstrap};
use mesh_test_support::jwt::{self as tj, Issuer};
use serde_json::{Value, json};
use support::control_plane::ControlPlane;
use support::proxy_process::{ProxyProcess, RunFlags};
use support::*;

const ISS: &str = "https://issuer.example";
/// An issuer whose keys the control plane fetches from its jwksUri.
const FETCHED_ISS: &str = "https://fetched.example";
const HOST: &str = "shop.example.com";
const WAIT: Duration = Duration::from_secs(30);

/// Service, pod, gateway and routing, plus the security policies.
fn config(issuer: &Issuer, jwks_uri: &str, backend_port: u16, gateway_port: u16) -> String {
    let jwks = serde_json::to_string(&issuer.jwks()).unwrap();
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: default}}
spec:
  clusterIP: 10.96.0.30
  selector: {{app: shop}}
  ports: [{{name: http, port: 8080, targetPort: {backend_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: shop-v1, namespace: default, labels: {{app: shop, version: v1}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: 127.0.31.1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: shop, namespace: default}}
spec:
  host: shop
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/shop-gateway]
  http:
  - match: [{{headers: {{"@request.auth.claims.groups": {{exact: admin}}}}}}]
    headers: {{request: {{set: {{x-route: admins}}}}}}
    route:
    - destination: {{host: shop}}
  - route:
    - destination: {{host: shop}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {ISS}
    audiences: [shop]
    jwks: {jwks}
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
  - issuer: {FETCHED_ISS}
    jwksUri: {jwks_uri}
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-admin, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{paths: ["/public*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["{ISS}/*", "{FETCHED_ISS}/*"]}}}}]
    to: [{{operation: {{paths: ["/private*"]}}}}]
    when:
    - key: request.auth.claims[groups]
      values: [admin]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-mallory, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISS}/mallory"]}}}}]
"#
    )
}

/// A request of the table: what is sent, and what Istio's semantics say
/// must come back.
struct Case {
    name: &'static str,
    path: &'static str,
    token: Option<String>,
    status: u16,
}

fn cases(issuer: &Issuer, fetched: &Issuer) -> Vec<Case> {
    let now = tj::now();
    let claims = |sub: &str, groups: &[&str]| {
        let mut c = issuer.claims(sub);
        c["aud"] = json!("shop");
        c["groups"] = json!(groups);
        c
    };
    let admin = claims("alice", &["admin", "dev"]);
    let mut fetched_admin = fetched.claims("fred");
    fetched_admin["groups"] = json!(["admin"]);
    let with = |mut c: Value, k: &str, v: Value| {
        c[k] = v;
        c
    };
    let stranger = Issuer::new("https://evil.example");
    let mut big = admin.clone();
    big["pad"] = json!("x".repeat(30_000));
    let case = |name, path, token: Option<String>, status| Case {
        name,
        path,
        token,
        status,
    };
    vec![
        case("public, no token", "/public/a", None, 200),
        case("private, no token", "/private/a", None, 403),
        case("admin token", "/private/a", Some(issuer.rs256(&admin)), 200),
        case(
            "admin token, ES256",
            "/private/a",
            Some(issuer.es256(&admin)),
            200,
        ),
        case(
            "token without the claim",
            "/private/a",
            Some(issuer.rs256(&claims("bob", &["dev"]))),
            403,
        ),
        case(
            "denied principal",
            "/private/a",
            Some(issuer.rs256(&claims("mallory", &["admin"]))),
            403,
        ),
        case(
            "invalid token on a public path",
            "/public/a",
            Some("not.a.token".into()),
            401,
        ),
        case("alg none", "/private/a", Some(tj::unsigned(&admin)), 401),
        case(
            "HS256 signed with the RSA public key",
            "/private/a",
            Some(issuer.hs256_with_public_key(&admin)),
            401,
        ),
        case(
            "expired",
            "/private/a",
            Some(issuer.rs256(&with(admin.clone(), "exp", json!(now - 600)))),
            401,
        ),
        case(
            "not yet valid",
            "/private/a",
            Some(issuer.rs256(&with(admin.clone(), "nbf", json!(now + 600)))),
            401,
        ),
        case(
            "another issuer",
            "/private/a",
            Some(stranger.rs256(&with(admin.clone(), "iss", json!(stranger.iss)))),
            401,
        ),
        case(
            "our issuer, another key",
            "/private/a",
            Some(stranger.es256(&admin)),
            401,
        ),
        case(
            "unknown kid",
            "/private/a",
            Some(issuer.with_kid(&admin, "nobody")),
            401,
        ),
        case(
            "tampered payload",
            "/private/a",
            Some(tj::tampered(
                &issuer.rs256(&claims("bob", &["dev"])),
                &admin,
            )),
            401,
        ),
        case(
            "oversized",
            "/private/a",
            Some(tj::tampered(&issuer.rs256(&admin), &big)),
            401,
        ),
        case(
            "token of the issuer whose keys were fetched",
            "/private/a",
            Some(fetched.es256(&fetched_admin)),
            200,
        ),
        // Routing on a claim: a list claim holding the value.
        case(
            "dev token on a public path",
            "/public/b",
            Some(issuer.rs256(&claims("bob", &["dev"]))),
            200,
        ),
        // Envoy answers an audience it does not accept with 403.
        case(
            "wrong audience",
            "/private/a",
            Some(issuer.rs256(&with(admin.clone(), "aud", json!("other")))),
            403,
        ),
    ]
}

/// What one data plane answered a case: status, the 401/403 reason, and
/// for a 200 what the application saw of the caller.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    body: String,
    sub_header: Option<String>,
    authorization_forwarded: bool,
    /// `x-route`, set by the VirtualService route matching on the
    /// `groups` claim.
    route: Option<String>,
}

async fn ask(client: &HttpClient, gateway: SocketAddr, case: &Case) -> Answer {
    let auth = case.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let reply = send(client, Method::GET, gateway, HOST, case.path, &headers).await;
    let status = reply.status.as_u16();
    if status == 200 {
        let echo = reply.echo();
        Answer {
            status,
            body: String::new(),
            sub_header: echo.headers.get("x-jwt-sub").cloned(),
            authorization_forwarded: echo.headers.contains_key("authorization"),
            route: echo.headers.get("x-route").cloned(),
        }
    } else {
        Answer {
            status,
            body: reply.text(),
            sub_header: None,
            authorization_forwarded: false,
            route: None,
        }
    }
}

async fn answers(gateway: SocketAddr, table: &[Case]) -> Vec<Answer> {
    let client = h1();
    let mut out = Vec::new();
    for case in table {
        out.push(ask(&client, gateway, case).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_judged_alike_by_mesh_proxy_and_stock_envoy() {
    let issuer = Issuer::new(ISS);
    let fetched = Issuer::new(FETCHED_ISS);
    let jwks_uri = serve_jwks(fetched.jwks()).await;
    let backend_port = free_port();
    let _backend = Backend::serve(
        bind(None, &format!("127.0.31.1:{backend_port}")),
        "shop-v1",
        "v1",
    );
    let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shop.yaml"),
        config(&issuer, &jwks_uri, backend_port, gateway.port()),
    )
    .unwrap();
    let cp = ControlPlane::serve_loopback(dir.path());
    assert_eq!(cp.config_errors(), 0);
    let table = cases(&issuer, &fetched);
    let fetched_case = table
        .iter()
        .position(|c| c.name.contains("fetched"))
        .unwrap();

    let ours = {
        let proxy = ProxyProcess::start(RunFlags::gateway(cp.addr));
        cp.wait_synced(&proxy.flags.node_id(), WAIT).await;
        wait_routing(gateway, HOST, "/public/ready").await;
        wait_admitted(gateway, &table[fetched_case]).await;
        let answers = answers(gateway, &table).await;
        drop(proxy);
        answers
    };
    for (case, answer) in table.iter().zip(&ours) {
        assert_eq!(
            answer.status, case.status,
            "mesh-proxy, {}: {answer:?}",
            case.name
        );
    }
    let admin = &ours[2];
    assert_eq!(
        admin.sub_header.as_deref(),
        Some("alice"),
        "claim copied to x-jwt-sub"
    );
    assert!(!admin.authorization_forwarded, "the token is not forwarded");
    assert_eq!(
        admin.route.as_deref(),
        Some("admins"),
        "routed on the groups claim"
    );
    let dev = table
        .iter()
        .position(|c| c.name == "dev token on a public path")
        .unwrap();
    assert_eq!(ours[dev].route, None, "no admin claim, default route");
    assert_eq!(ours[0].route, None, "no token, default route");
    assert_eq!(ours[1].body, "RBAC: access denied");
    assert_eq!(ours[9].body, "Jwt is expired");
    assert_eq!(
        ours[7].body,
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );

    // The same config through a stock Envoy on the same address.
    wait_until_free(gateway).await;
    let envoy = Envoy::start(&router_bootstrap(
        "ingressgateway-0",
        "istio-system",
        cp.addr.port(),
    ));
    assert!(envoy.wait_ready(WAIT), "envoy not ready: {}", envoy.log());
    wait_routing(gateway, HOST, "/public/ready").await;
    wait_admitted(gateway, &table[fetched_case]).await;
    let theirs = answers(gateway, &table).await;
    for ((case, ours), theirs) in table.iter().zip(&ours).zip(&theirs) {
        assert_eq!(
            (
                ours.status,
                &ours.sub_header,
                ours.authorization_forwarded,
                &ours.route
            ),
            (
                theirs.status,
                &theirs.sub_header,
                theirs.authorization_forwarded,
                &theirs.route
            ),
            "{}: mesh-proxy {ours:?}, Envoy {theirs:?}",
            case.name
        );
        // The reasons agree too (Envoy's RBAC and JWT bodies).
        assert_eq!(ours.body, theirs.body, "{}", case.name);
    }
}

/// Serves `jwks` on a loopback port, as an identity provider's key
/// endpoint; the URI.
async fn serve_jwks(jwks: String) -> String {
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { jwks }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/.well-known/jwks.json")
}

/// Waits until `case` gets its expected status (the control plane has
/// fetched the key set and the proxy has it).
async fn wait_admitted(gateway: SocketAddr, case: &Case) {
    let client = h1();
    let ok = eventually(WAIT, || async {
        (ask(&client, gateway, case).await.status == case.status).then_some(())
    })
    .await;
    assert!(ok.is_some(), "{}: never {}", case.name, case.status);
}
