//! `virtualInbound` under PeerAuthentication: which chains each mode
//! leaves, and where the TLS inspector runs.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_api::xds::json::to_json;
use serde_json::{Value, json};

use crate::xds::route::tests::{MESH, sidecar, translate};

/// The productpage sidecar's `virtualInbound` with `policies` added.
fn virtual_inbound(policies: &str) -> Value {
    let (listeners, _, _) = translate(&format!("{MESH}{policies}"), &sidecar());
    let vi = listeners
        .iter()
        .find(|l| l.name == "virtualInbound")
        .unwrap();
    to_json(vi).unwrap()
}

fn chain_names(vi: &Value) -> Vec<String> {
    vi["filterChains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn chain<'a>(vi: &'a Value, name: &str) -> &'a Value {
    vi["filterChains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no chain {name}"))
}

fn listener_filter_names(vi: &Value) -> Vec<&str> {
    vi["listenerFilters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect()
}

const NAMESPACE_STRICT: &str = "
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
";

#[test]
fn strict_leaves_no_plaintext_chain() {
    let vi = virtual_inbound(NAMESPACE_STRICT);
    assert_eq!(
        chain_names(&vi),
        [
            "0.0.0.0_9080_mtls",
            "0.0.0.0_9999_mtls",
            "virtualInbound-mtls"
        ]
    );
    let mtls = chain(&vi, "0.0.0.0_9080_mtls");
    assert_eq!(
        mtls["filterChainMatch"],
        json!({"destinationPort": 9080, "transportProtocol": "tls"})
    );
    let tls = &mtls["transportSocket"]["typedConfig"];
    assert_eq!(tls["requireClientCertificate"], true);
    assert_eq!(
        tls["commonTlsContext"]["alpnProtocols"],
        json!(["h2", "http/1.1"])
    );
    assert_eq!(
        tls["commonTlsContext"]["tlsCertificateSdsSecretConfigs"][0]["sdsConfig"]["apiConfigSource"]
            ["grpcServices"][0]["envoyGrpc"]["clusterName"],
        "sds-grpc"
    );
    assert_eq!(
        tls["commonTlsContext"]["combinedValidationContext"]["defaultValidationContext"]["matchTypedSubjectAltNames"],
        json!([{"sanType": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}])
    );
    let hcm = &mtls["filters"][0]["typedConfig"];
    assert_eq!(hcm["forwardClientCertDetails"], "APPEND_FORWARD");
    assert_eq!(
        hcm["setCurrentClientCertDetails"],
        json!({"subject": true, "dns": true, "uri": true})
    );
    // TCP ports terminate mTLS too, offering no ALPN.
    let tcp = chain(&vi, "0.0.0.0_9999_mtls");
    assert_eq!(
        tcp["filters"][0]["typedConfig"]["cluster"],
        "inbound|9999||"
    );
    assert!(
        tcp["transportSocket"]["typedConfig"]["commonTlsContext"]
            .get("alpnProtocols")
            .is_none()
    );
    // Unknown ports: TLS terminated, then passed through.
    let pass = chain(&vi, "virtualInbound-mtls");
    assert_eq!(
        pass["filterChainMatch"],
        json!({"transportProtocol": "tls"})
    );
    assert_eq!(
        pass["filters"][0]["typedConfig"]["cluster"],
        "InboundPassthroughCluster"
    );
    assert_eq!(
        listener_filter_names(&vi),
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector"
        ]
    );
    assert!(vi["listenerFilters"][1].get("filterDisabled").is_none());
}

#[test]
fn permissive_matches_istio_alpn_and_keeps_plaintext() {
    let vi = virtual_inbound("");
    assert_eq!(
        chain_names(&vi),
        [
            "0.0.0.0_9080_mtls",
            "0.0.0.0_9080",
            "0.0.0.0_9999_mtls",
            "0.0.0.0_9999_tls",
            "0.0.0.0_9999",
            "virtualInbound-mtls",
            "virtualInbound-tls",
            "virtualInbound"
        ]
    );
    assert_eq!(
        chain(&vi, "0.0.0.0_9080_mtls")["filterChainMatch"]["applicationProtocols"],
        json!([
            "istio-peer-exchange",
            "istio",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2"
        ])
    );
    let plain = chain(&vi, "0.0.0.0_9080");
    assert_eq!(plain["filterChainMatch"]["transportProtocol"], "raw_buffer");
    assert!(plain.get("transportSocket").is_none());
    // Plaintext HTTP keeps Envoy's default: a forged XFCC is dropped.
    assert!(
        plain["filters"][0]["typedConfig"]
            .get("forwardClientCertDetails")
            .is_none()
    );
    // Other TLS to unknown ports passes through untouched.
    assert!(
        chain(&vi, "virtualInbound-tls")
            .get("transportSocket")
            .is_none()
    );
}

#[test]
fn disable_everywhere_is_the_plaintext_listener() {
    let vi = virtual_inbound(
        "
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: DISABLE}}
",
    );
    assert_eq!(
        chain_names(&vi),
        ["0.0.0.0_9080", "0.0.0.0_9999", "virtualInbound"]
    );
    assert!(
        chain(&vi, "0.0.0.0_9080")["filterChainMatch"]
            .get("transportProtocol")
            .is_none()
    );
    assert!(
        chain(&vi, "virtualInbound")
            .get("filterChainMatch")
            .is_none()
    );
    assert_eq!(
        listener_filter_names(&vi),
        ["envoy.filters.listener.original_dst"]
    );
}

#[test]
fn port_level_disable_skips_tls_inspection_on_that_port() {
    let vi = virtual_inbound(&format!(
        "{NAMESPACE_STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: productpage, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  portLevelMtls: {{9080: {{mode: DISABLE}}, 7000: {{mode: PERMISSIVE}}}}
"
    ));
    assert_eq!(
        chain_names(&vi),
        [
            "0.0.0.0_9080",
            "0.0.0.0_9999_mtls",
            "0.0.0.0_7000_mtls",
            "0.0.0.0_7000_tls",
            "0.0.0.0_7000",
            "virtualInbound-mtls"
        ]
    );
    assert_eq!(
        chain(&vi, "0.0.0.0_7000")["filters"][0]["typedConfig"]["cluster"],
        "InboundPassthroughCluster"
    );
    assert_eq!(
        vi["listenerFilters"][1]["filterDisabled"],
        json!({"destinationPortRange": {"start": 9080, "end": 9081}})
    );
}

fn filter_names(filters: &Value) -> Vec<&str> {
    filters
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect()
}

#[test]
fn authorization_policies_put_rbac_in_front_of_every_chain() {
    let vi = virtual_inbound(
        "
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  rules: [{from: [{source: {namespaces: [default]}}]}]
",
    );
    for name in chain_names(&vi) {
        let filters = &chain(&vi, &name)["filters"];
        if name.starts_with("0.0.0.0_9080") {
            let hcm = &filters[0]["typedConfig"];
            assert_eq!(
                filter_names(&hcm["httpFilters"]),
                [
                    "envoy.filters.http.rbac",
                    "envoy.filters.http.rbac",
                    "envoy.filters.http.cors",
                    "envoy.filters.http.fault",
                    "envoy.filters.http.router"
                ],
                "{name}"
            );
            assert_eq!(
                hcm["httpFilters"][0]["typedConfig"]["rules"]["action"],
                "DENY"
            );
            assert!(
                hcm["httpFilters"][1]["typedConfig"]["rules"]
                    .get("action")
                    .is_none()
            );
        } else {
            // TCP ports and the passthrough chains.
            assert_eq!(
                filter_names(filters),
                [
                    "envoy.filters.network.rbac",
                    "envoy.filters.network.rbac",
                    "envoy.filters.network.tcp_proxy"
                ],
                "{name}"
            );
            assert_eq!(filters[0]["typedConfig"]["statPrefix"], "tcp.");
        }
    }
}

#[test]
fn mesh_proxy_tcp_mtls_chains_run_istios_metadata_exchange() {
    let inbound = |mesh_proxy: bool| {
        let mut proxy = sidecar();
        proxy.mesh_proxy = mesh_proxy;
        let (listeners, _, _) = translate(MESH, &proxy);
        let vi = listeners
            .iter()
            .find(|l| l.name == "virtualInbound")
            .unwrap();
        to_json(vi).unwrap()
    };
    let alpn = |c: &Value| {
        c["transportSocket"]["typedConfig"]["commonTlsContext"]["alpnProtocols"].clone()
    };
    let vi = inbound(true);
    for name in ["0.0.0.0_9999_mtls", "virtualInbound-mtls"] {
        let c = chain(&vi, name);
        assert_eq!(
            filter_names(&c["filters"]),
            ["istio.metadata_exchange", "envoy.filters.network.tcp_proxy"],
            "{name}"
        );
        assert_eq!(
            c["filters"][0]["typedConfig"]["value"]["protocol"],
            "istio-peer-exchange"
        );
        assert_eq!(alpn(c), json!(["istio-peer-exchange"]), "{name}");
    }
    // Plaintext, passed-through TLS and HTTP chains never exchange.
    for name in ["0.0.0.0_9999", "0.0.0.0_9999_tls", "0.0.0.0_9080_mtls"] {
        let c = chain(&vi, name);
        assert!(
            !filter_names(&c["filters"]).contains(&"istio.metadata_exchange"),
            "{name}"
        );
    }
    assert_eq!(
        alpn(chain(&vi, "0.0.0.0_9080_mtls")),
        json!(["h2", "http/1.1"])
    );
    // Stock Envoy: the chains it always got.
    let vi = inbound(false);
    let c = chain(&vi, "0.0.0.0_9999_mtls");
    assert_eq!(
        filter_names(&c["filters"]),
        ["envoy.filters.network.tcp_proxy"]
    );
    assert!(alpn(c).is_null());
}

#[test]
fn without_authorization_policies_chains_have_no_rbac() {
    let vi = virtual_inbound("");
    for name in chain_names(&vi) {
        let text = chain(&vi, &name).to_string();
        assert!(!text.contains("rbac"), "{name}");
    }
}
