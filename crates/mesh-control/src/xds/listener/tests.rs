// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use mesh_api::xds::json::to_json;
use mesh_api::xds::pack_any;
use prost::Message;
use serde_json::{Value, json};

use crate::proxy::ProxyInfo;
use crate::xds::route::tests::{MESH, REWRITES, sidecar, translate};

const GATEWAY: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 18080, name: http, protocol: HTTP}
    bind: 127.0.0.1
    hosts: ["*"]
  - port: {number: 8080, name: http-redirect, protocol: HTTP}
    hosts: [secure.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: SIMPLE, credentialName: secure-cert}
  - port: {number: 8443, name: https-mtls, protocol: HTTPS}
    hosts: [mtls.example.com]
    tls: {mode: MUTUAL, credentialName: mtls-cert}
  - port: {number: 8444, name: tls, protocol: TLS}
    hosts: [db.example.com, "*.pass.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge-routes, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
  - route: [{destination: {host: productpage, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure.example.com]
  gateways: [istio-system/edge]
  http:
  - route: [{destination: {host: ratings}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: passthrough, namespace: default}
spec:
  hosts: [db.example.com]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: [db.example.com], port: 8444}]
    route: [{destination: {host: mongo.db.svc.cluster.local, port: {number: 27017}}}]
"#;

fn router() -> ProxyInfo {
    ProxyInfo::router(
        "ingress",
        "istio-system",
        "10.1.0.99".parse::<IpAddr>().unwrap(),
        &[("istio", "ingressgateway")],
    )
}

fn listener(listeners: &[Listener], name: &str) -> Value {
    to_json(
        listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no listener {name}")),
    )
    .unwrap()
}

#[test]
fn sidecar_listeners() {
    let (listeners, _, _) = translate(MESH, &sidecar());
    let names: Vec<_> = listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.0.0.0_9080",
            "10.96.0.12_9999",
            "10.96.0.20_27017",
            "virtualInbound",
            "virtualOutbound"
        ]
    );
    let http = listener(&listeners, "0.0.0.0_9080");
    assert_eq!(http["bindToPort"], false);
    let hcm = &http["filterChains"][0]["filters"][0]["typedConfig"];
    assert_eq!(hcm["statPrefix"], "outbound_0.0.0.0_9080");
    assert_eq!(hcm["rds"]["routeConfigName"], "9080");
    assert_eq!(hcm["httpFilters"][2]["name"], "envoy.filters.http.router");
    let tcp = listener(&listeners, "10.96.0.20_27017");
    assert_eq!(
        tcp["filterChains"][0]["filters"][0]["typedConfig"]["cluster"],
        "outbound|27017||mongo.db.svc.cluster.local"
    );
    let vo = listener(&listeners, "virtualOutbound");
    assert_eq!(vo["useOriginalDst"], true);
    assert_eq!(
        vo["filterChains"][1]["filters"][0]["typedConfig"]["cluster"],
        "PassthroughCluster"
    );
    let vi = listener(&listeners, "virtualInbound");
    let chains = vi["filterChains"].as_array().unwrap();
    let chain = |name: &str| {
        chains
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no chain {name}"))
    };
    // No PeerAuthentication: PERMISSIVE, plaintext and mTLS chains per port.
    let plain = chain("0.0.0.0_9080");
    assert_eq!(plain["filterChainMatch"]["destinationPort"], 9080);
    assert_eq!(plain["filterChainMatch"]["transportProtocol"], "raw_buffer");
    let inbound_hcm = &plain["filters"][0]["typedConfig"];
    assert_eq!(inbound_hcm["routeConfig"]["name"], "inbound|9080||");
    assert_eq!(
        inbound_hcm["routeConfig"]["virtualHosts"][0]["routes"][0]["route"]["cluster"],
        "inbound|9080||"
    );
    assert_eq!(
        chain("0.0.0.0_9080_mtls")["filterChainMatch"]["transportProtocol"],
        "tls"
    );
    assert_eq!(
        chain("0.0.0.0_9999")["filters"][0]["typedConfig"]["cluster"],
        "inbound|9999||"
    );
    assert_eq!(
        chain("virtualInbound")["filters"][0]["typedConfig"]["cluster"],
        "InboundPassthroughCluster"
    );
}

#[test]
fn gateway_listeners_and_routes() {
    let (listeners, routes, _) = translate(&format!("{MESH}{GATEWAY}"), &router());
    let names: Vec<_> = listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.0.0.0_8080",
            "0.0.0.0_8443",
            "0.0.0.0_8444",
            "127.0.0.1_18080"
        ]
    );
    let bound = listener(&listeners, "127.0.0.1_18080");
    assert_eq!(
        bound["address"]["socketAddress"],
        json!({"address": "127.0.0.1", "portValue": 18080})
    );
    assert_eq!(
        bound["filterChains"][0]["filters"][0]["typedConfig"]["rds"]["routeConfigName"],
        "http.18080"
    );
    let https = listener(&listeners, "0.0.0.0_8443");
    assert_eq!(
        https["listenerFilters"][0]["name"],
        "envoy.filters.listener.tls_inspector"
    );
    let chain = &https["filterChains"][0];
    assert_eq!(
        chain["filterChainMatch"]["serverNames"],
        json!(["secure.example.com"])
    );
    let tls = &chain["transportSocket"]["typedConfig"]["commonTlsContext"];
    assert_eq!(
        tls["tlsCertificateSdsSecretConfigs"][0]["name"],
        "kubernetes://secure-cert"
    );
    assert_eq!(
        chain["filters"][0]["typedConfig"]["rds"]["routeConfigName"],
        "https.8443.https.edge.istio-system"
    );
    let mtls = &https["filterChains"][1]["transportSocket"]["typedConfig"];
    assert_eq!(mtls["requireClientCertificate"], true);
    assert_eq!(
        mtls["commonTlsContext"]["validationContextSdsSecretConfig"]["name"],
        "kubernetes://mtls-cert-cacert"
    );
    let pass = listener(&listeners, "0.0.0.0_8444");
    assert_eq!(
        pass["filterChains"][0]["filterChainMatch"]["serverNames"],
        json!(["db.example.com"])
    );
    assert_eq!(
        pass["filterChains"][0]["filters"][0]["typedConfig"]["cluster"],
        "outbound|27017||mongo.db.svc.cluster.local"
    );

    let route_names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        route_names,
        [
            "http.18080",
            "http.8080",
            "https.8443.https-mtls.edge.istio-system",
            "https.8443.https.edge.istio-system"
        ]
    );
    let r18080 = to_json(&routes[0]).unwrap();
    assert_eq!(r18080["virtualHosts"][0]["name"], "*:18080");
    assert_eq!(r18080["virtualHosts"][0]["domains"], json!(["*"]));
    let gw_routes = &r18080["virtualHosts"][0]["routes"];
    assert_eq!(
        gw_routes[0]["route"]["cluster"],
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    assert_eq!(
        gw_routes[1]["route"]["cluster"],
        "outbound|9080||productpage.default.svc.cluster.local"
    );
    let r8080 = to_json(&routes[1]).unwrap();
    let secure = &r8080["virtualHosts"][0];
    assert_eq!(
        secure["domains"],
        json!(["secure.example.com", "secure.example.com:8080"])
    );
    assert_eq!(secure["requireTls"], "ALL");
    let mtls_routes = to_json(&routes[2]).unwrap();
    assert_eq!(
        mtls_routes["virtualHosts"][0]["name"],
        "mtls.example.com:8443"
    );
    assert_eq!(
        mtls_routes["virtualHosts"][0]["routes"][1]["route"]["cluster"],
        "outbound|9080||productpage.default.svc.cluster.local"
    );
}

/// Writes a static Envoy bootstrap (RDS inlined, a STATIC cluster per
/// referenced name) for `envoy --mode validate`, when
/// `MESH_ENVOY_VALIDATE_DIR` is set. The check itself runs outside tests.
#[test]
fn write_envoy_validation_bootstraps() {
    let Some(dir) = std::env::var_os("MESH_ENVOY_VALIDATE_DIR") else {
        return;
    };
    let cases = [
        ("sidecar", format!("{MESH}{REWRITES}"), sidecar()),
        ("gateway", format!("{MESH}{GATEWAY}"), router()),
    ];
    for (name, yaml, proxy) in cases {
        let (listeners, routes, clusters) = translate(&yaml, &proxy);
        let listeners: Vec<Value> = listeners
            .into_iter()
            .map(|l| to_json(&inline_routes(l, &routes)).unwrap())
            .collect();
        let clusters: Vec<Value> = clusters
            .iter()
            .map(|c| json!({"name": c.name, "type": "STATIC", "connectTimeout": "1s"}))
            .collect();
        let bootstrap = json!({
            "node": {"id": "validate", "cluster": "validate"},
            "staticResources": {"listeners": listeners, "clusters": clusters},
        });
        let path = std::path::Path::new(&dir).join(format!("{name}.json"));
        std::fs::write(path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    }
}

fn inline_routes(mut l: Listener, routes: &[RouteConfiguration]) -> Listener {
    for chain in &mut l.filter_chains {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                let rc = routes
                    .iter()
                    .find(|r| r.name == rds.route_config_name)
                    .unwrap()
                    .clone();
                hcm.route_specifier =
                    Some(http_connection_manager::RouteSpecifier::RouteConfig(rc));
                f.config_type = Some(filter::ConfigType::TypedConfig(pack_any(hcm)));
            }
        }
    }
    l
}

#[test]
fn authorization_policies_apply_to_gateways() {
    let policy = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge-allow, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]
"#;
    let (listeners, _, _) = translate(&format!("{MESH}{GATEWAY}{policy}"), &router());
    // Every HTTP connection manager starts with the ALLOW filter ...
    let http = listener(&listeners, "127.0.0.1_18080");
    let filters = &http["filterChains"][0]["filters"][0]["typedConfig"]["httpFilters"];
    assert_eq!(filters[0]["name"], "envoy.filters.http.rbac");
    // ALLOW is the proto default, so proto JSON leaves it out.
    assert!(
        filters[0]["typedConfig"]["rules"].get("action").is_none(),
        "{filters}"
    );
    let https = listener(&listeners, "0.0.0.0_8443");
    let filters = &https["filterChains"][0]["filters"][0]["typedConfig"]["httpFilters"];
    assert_eq!(filters[0]["name"], "envoy.filters.http.rbac");
    // ... and every TCP chain (TLS passthrough here) with the network one.
    let passthrough = listener(&listeners, "0.0.0.0_8444");
    for chain in passthrough["filterChains"].as_array().unwrap() {
        assert_eq!(
            chain["filters"][0]["name"], "envoy.filters.network.rbac",
            "{chain}"
        );
        assert_eq!(
            chain["filters"][1]["name"],
            "envoy.filters.network.tcp_proxy"
        );
    }
    // Without a policy for it the gateway has none.
    let (listeners, _, _) = translate(&format!("{MESH}{GATEWAY}"), &router());
    let http = listener(&listeners, "127.0.0.1_18080");
    let filters = &http["filterChains"][0]["filters"][0]["typedConfig"]["httpFilters"];
    assert_ne!(filters[0]["name"], "envoy.filters.http.rbac");
}

#[test]
fn gateway_listeners_bind_the_gateway_services_target_ports() {
    // Istio's ingress gateway: the Service exposes 80 and 443, the pod
    // listens on 8080 and 8443, and Gateways are written with 80 and 443.
    let config = r#"
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: v1
kind: Pod
metadata: {name: ingress, namespace: istio-system, labels: {istio: ingressgateway}}
spec: {containers: [{name: istio-proxy, image: x}]}
status: {podIP: 10.1.0.99}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: SIMPLE, credentialName: secure-cert}
  - port: {number: 9000, name: http-other, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: redirect, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http-redirect, protocol: HTTP}
    hosts: [login.example.com]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: public, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/public]
  http:
  - match: [{port: 80}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
  - route: [{destination: {host: ratings, port: {number: 9080}}}]
"#;
    let (listeners, routes, _) = translate(&format!("{MESH}{config}"), &router());
    let names: Vec<_> = listeners.iter().map(|l| l.name.as_str()).collect();
    // 80 and 443 bind their target ports; 9000, which the Service does not
    // expose, binds as written.
    assert_eq!(names, ["0.0.0.0_8080", "0.0.0.0_8443", "0.0.0.0_9000"]);
    let http = listener(&listeners, "0.0.0.0_8080");
    assert_eq!(http["address"]["socketAddress"]["portValue"], 8080);
    let hcm = &http["filterChains"][0]["filters"][0]["typedConfig"];
    assert_eq!(hcm["rds"]["routeConfigName"], "http.8080");
    let https = listener(&listeners, "0.0.0.0_8443");
    let hcm = &https["filterChains"][0]["filters"][0]["typedConfig"];
    assert_eq!(
        hcm["rds"]["routeConfigName"],
        "https.443.https.public.istio-system"
    );
    // The route `port: 80` match still compares the server's own port: on
    // http.8080 it holds (reviews first), on http.9000 it does not.
    let first_cluster = |name: &str| {
        let rc = routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no route config {name}"));
        to_json(rc).unwrap()["virtualHosts"][0]["routes"][0]["route"]["cluster"].clone()
    };
    assert_eq!(
        first_cluster("http.8080"),
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    assert_eq!(
        first_cluster("http.9000"),
        "outbound|9080||ratings.default.svc.cluster.local"
    );
    // No VirtualService serves login.example.com, yet its redirecting
    // server still redirects it to HTTPS.
    let rc = to_json(routes.iter().find(|r| r.name == "http.8080").unwrap()).unwrap();
    let login = rc["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["domains"][0] == "login.example.com")
        .unwrap_or_else(|| panic!("no login.example.com virtual host: {rc}"));
    assert_eq!(login["requireTls"], "ALL");
    assert_eq!(login["domains"][1], "login.example.com:80");
}
