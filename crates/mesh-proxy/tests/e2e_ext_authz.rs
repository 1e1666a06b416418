//! CUSTOM AuthorizationPolicy end to end, through both data planes:
//! mesh-control reads Istio's own configuration (MeshConfig
//! `extensionProviders` in the `istio` ConfigMap, a CUSTOM policy on the
//! ingress gateway naming one of them, a Service for the authorizer) and
//! the real `mesh-proxy` binary and then a stock Envoy, on the same
//! config, must answer alike and as Istio documents: paths outside the
//! policy's rules are never checked, inside them the sample authorizer
//! (`e2e::ext_authz`, Istio's `samples/extauthz` semantics) decides, its
//! headers reach the application on allow and the client on deny, and a
//! failing authorizer refuses the request. Once with the HTTP provider
//! (`envoyExtAuthzHttp`), once with the gRPC one (`envoyExtAuthzGrpc`).
//!
//! All on loopback: the application and the authorizer as "pods" on
//! their own 127.0.x.y addresses, the gateway on 127.0.0.1, mesh-control
//! in process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use e2e::ext_authz::{self as authz, Seen};
use http::Method;
use mesh_test_support::envoy::{Envoy, router_bootstrap};
use support::control_plane::ControlPlane;
use support::proxy_process::{ProxyProcess, RunFlags};
use support::*;

const HOST: &str = "shop.example.com";
const WAIT: Duration = Duration::from_secs(30);

/// The mesh: MeshConfig with both providers, the application, the
/// authorizer, the gateway, and the CUSTOM policy using `provider`.
fn config(provider: &str, ips: &Ips, ports: &PodPorts, gateway_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: sample-http
      envoyExtAuthzHttp:
        service: ext-authz.default.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-ext-authz-check-result]
        headersToDownstreamOnDeny: [x-ext-authz-check-result]
    - name: sample-grpc
      envoyExtAuthzGrpc:
        service: ext-authz.default.svc.cluster.local
        port: 9000
---
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: default}}
spec:
  clusterIP: 10.96.0.40
  selector: {{app: shop}}
  ports: [{{name: http, port: 8080, targetPort: {shop}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: shop-v1, namespace: default, labels: {{app: shop, version: v1}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: {shop_ip}}}
---
apiVersion: v1
kind: Service
metadata: {{name: ext-authz, namespace: default}}
spec:
  clusterIP: 10.96.0.41
  selector: {{app: ext-authz}}
  ports:
  - {{name: http, port: 8000, targetPort: {http}}}
  - {{name: grpc, port: 9000, targetPort: {grpc}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: ext-authz-0, namespace: default, labels: {{app: ext-authz}}}}
spec: {{containers: [{{name: app, image: ext-authz}}]}}
status: {{podIP: {authz_ip}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: plaintext, namespace: default}}
spec:
  host: "*.default.svc.cluster.local"
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
  - route:
    - destination: {{host: shop}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to: [{{operation: {{paths: ["/protected/*"]}}}}]
"#,
        shop = ports.shop,
        http = ports.http,
        grpc = ports.grpc,
        shop_ip = ips.shop,
        authz_ip = ips.authz,
    )
}

/// The pods' addresses.
struct Ips {
    shop: &'static str,
    authz: &'static str,
}

/// The pods' ports.
struct PodPorts {
    shop: u16,
    http: u16,
    grpc: u16,
}

/// What the client saw, and what the application saw.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: String,
    /// `x-ext-authz-check-result` on the response.
    to_client: Option<String>,
    /// `x-ext-authz-check-result` the application received.
    to_app: Option<String>,
    /// Whether the authorizer was asked.
    checked: bool,
}

async fn ask(gateway: SocketAddr, path: &str, decision: Option<&str>, seen: &Seen) -> Answer {
    seen.clear();
    let headers: Vec<(&str, &str)> = decision.map(|d| ("x-ext-authz", d)).into_iter().collect();
    let reply = send(&h1(), Method::GET, gateway, HOST, path, &headers).await;
    let echo: Option<e2e::echo::EchoResponse> = serde_json::from_slice(&reply.body).ok();
    Answer {
        status: reply.status.as_u16(),
        body: if echo.is_some() {
            String::new()
        } else {
            reply.text()
        },
        to_client: reply
            .headers
            .get(authz::RESULT_HEADER)
            .map(|v| v.to_str().unwrap().to_string()),
        to_app: echo.and_then(|e| e.headers.get(authz::RESULT_HEADER).cloned()),
        checked: !seen.all().is_empty(),
    }
}

/// The table, as one data plane answers it.
async fn answers(gateway: SocketAddr, seen: &Seen) -> Vec<Answer> {
    let mut out = Vec::new();
    for (path, decision) in [
        ("/public", Some("deny")),
        ("/protected/a", Some("allow")),
        ("/protected/a", Some("deny")),
        ("/protected/a", None),
        ("/protected/a", Some("fail")),
    ] {
        out.push(ask(gateway, path, decision, seen).await);
    }
    out
}

/// What Istio's semantics give for the table, with the provider's way of
/// passing the result header (`grpc`: the sample adds it to every
/// response through the gRPC answer's own header lists).
fn expected(grpc: bool) -> Vec<Answer> {
    let a = |status, body: &str, to_client: Option<&str>, to_app: Option<&str>, checked| Answer {
        status,
        body: body.to_string(),
        to_client: to_client.map(str::to_string),
        to_app: to_app.map(str::to_string),
        checked,
    };
    vec![
        a(200, "", None, None, false),
        a(200, "", grpc.then_some("allowed"), Some("allowed"), true),
        a(403, authz::DENIED_BODY, Some("denied"), None, true),
        a(403, authz::DENIED_BODY, Some("denied"), None, true),
        a(403, "", None, None, true),
    ]
}

async fn run(provider: &str, ips: Ips) {
    let grpc = provider.ends_with("grpc");
    let seen = Seen::default();
    let shop = bind(None, &format!("{}:0", ips.shop));
    let http = tokio::net::TcpListener::bind(format!("{}:0", ips.authz))
        .await
        .unwrap();
    let grpc_listener = tokio::net::TcpListener::bind(format!("{}:0", ips.authz))
        .await
        .unwrap();
    let ports = PodPorts {
        shop: shop.local_addr().unwrap().port(),
        http: http.local_addr().unwrap().port(),
        grpc: grpc_listener.local_addr().unwrap().port(),
    };
    let _shop = Backend::serve(shop, "shop-v1", "v1");
    let h = tokio::spawn(authz::serve_http(http, seen.clone()));
    let g = tokio::spawn(authz::serve_grpc(grpc_listener, seen.clone()));
    let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        config(provider, &ips, &ports, gateway.port()),
    )
    .unwrap();
    let cp = ControlPlane::serve_loopback(dir.path());
    assert_eq!(cp.config_errors(), 0);
    let want = expected(grpc);

    let proxy = ProxyProcess::start(RunFlags::gateway(cp.addr));
    cp.wait_synced(&proxy.flags.node_id(), WAIT).await;
    wait_routing(gateway, HOST, "/public").await;
    let ours = answers(gateway, &seen).await;
    assert_eq!(ours, want, "{provider}: mesh-proxy\n{}", proxy.log());
    drop(proxy);

    wait_until_free(gateway).await;
    let envoy = Envoy::start(&router_bootstrap(
        "ingressgateway-0",
        "istio-system",
        cp.addr.port(),
    ));
    assert!(envoy.wait_ready(WAIT), "envoy not ready: {}", envoy.log());
    wait_routing(gateway, HOST, "/public").await;
    let theirs = answers(gateway, &seen).await;
    assert_eq!(theirs, ours, "{provider}: stock Envoy vs mesh-proxy");
    h.abort();
    g.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_policy_with_the_http_provider() {
    bounded(
        180,
        run(
            "sample-http",
            Ips {
                shop: "127.0.33.1",
                authz: "127.0.33.2",
            },
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_policy_with_the_grpc_provider() {
    bounded(
        180,
        run(
            "sample-grpc",
            Ips {
                shop: "127.0.34.1",
                authz: "127.0.34.2",
            },
        ),
    )
    .await;
}
