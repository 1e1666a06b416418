//! RequestAuthentication to Envoy's jwt_authn filter.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use mesh_api::mesh_config::MeshConfig;
use serde_json::{Value, json};

use super::*;
use crate::xds::Part;
use crate::xds::authz::InboundRbac;
use crate::xds::shape::ShapeKey;

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

fn snapshot(yaml: &str) -> Snapshot {
    let loaded = mesh_api::load_str("t.yaml", yaml);
    for l in &loaded {
        assert!(l.object.is_some(), "{:?}", l.report.diagnostics);
    }
    Snapshot::build(1, &loaded, MeshConfig::default())
}

fn proxy(namespace: &str, labels: &[(&str, &str)]) -> ProxyInfo {
    ProxyInfo::sidecar(
        "web-0",
        namespace,
        "10.0.0.1".parse::<IpAddr>().unwrap(),
        labels,
    )
}

fn web() -> ProxyInfo {
    proxy("apps", &[("app", "web")])
}

fn ra(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

fn rule(issuer: &str, extra: &str) -> String {
    format!("{{issuer: \"{issuer}\", jwks: '{JWKS}'{extra}}}")
}

/// The filter's typed config as JSON.
fn config(yaml: &str, proxy: &ProxyInfo) -> Option<Value> {
    let filter = jwt_filter(&snapshot(yaml), proxy)?;
    assert_eq!(filter.name, JWT_AUTHN_FILTER);
    let Some(http_filter::ConfigType::TypedConfig(any)) = filter.config_type else {
        panic!("no typed config");
    };
    let decoded = JwtAuthentication::decode(any.value.as_slice()).unwrap();
    Some(mesh_api::xds::json::to_json(&decoded).unwrap())
}

#[test]
fn which_policies_apply() {
    let yaml = [
        ra("istio-system", "mesh", &format!("{{jwtRules: [{}]}}", rule("https://mesh", ""))),
        ra("apps", "ns", &format!("{{jwtRules: [{}]}}", rule("https://ns", ""))),
        ra("apps", "web", &format!("{{selector: {{matchLabels: {{app: web}}}}, jwtRules: [{}]}}", rule("https://web", ""))),
        ra("apps", "db", &format!("{{selector: {{matchLabels: {{app: db}}}}, jwtRules: [{}]}}", rule("https://db", ""))),
        ra("other", "other", &format!("{{jwtRules: [{}]}}", rule("https://other", ""))),
        ra("apps", "gw", &format!("{{targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: gw}}], jwtRules: [{}]}}", rule("https://gw", ""))),
    ]
    .concat();
    let c = config(&yaml, &web()).unwrap();
    let issuers: Vec<&str> = (0..3)
        .map(|i| {
            c["providers"][format!("origins-{i}")]["issuer"]
                .as_str()
                .unwrap()
        })
        .collect();
    // Snapshot order: namespace, then name.
    assert_eq!(issuers, ["https://ns", "https://web", "https://mesh"]);
    assert!(c["providers"]["origins-3"].is_null());
    assert!(
        config(&yaml, &proxy("elsewhere", &[])).is_some(),
        "the mesh-wide one"
    );
    assert!(config("", &web()).is_none());
}

#[test]
fn a_rule_becomes_a_provider_and_any_or_none_is_required() {
    let yaml = ra(
        "apps",
        "jwt",
        &format!(
            "{{jwtRules: [{}, {}]}}",
            rule(
                "https://a",
                ", audiences: [web], fromHeaders: [{name: x-jwt, prefix: \"Token \"}], fromParams: [tok], forwardOriginalToken: true, outputPayloadToHeader: x-payload, outputClaimToHeaders: [{header: x-sub, claim: sub}], spaceDelimitedClaims: [roles]"
            ),
            rule("https://b", "")
        ),
    );
    let c = config(&yaml, &web()).unwrap();
    assert_eq!(
        c["providers"]["origins-0"],
        json!({
            "issuer": "https://a",
            "audiences": ["web"],
            "localJwks": {"inlineString": JWKS},
            "forward": true,
            "fromHeaders": [{"name": "x-jwt", "valuePrefix": "Token "}],
            "fromParams": ["tok"],
            "forwardPayloadHeader": "x-payload",
            "payloadInMetadata": "payload",
            "normalizePayloadInMetadata": {"spaceDelimitedClaims": ["scope", "permission", "roles"]},
            "claimToHeaders": [{"headerName": "x-sub", "claimName": "sub"}],
            "clearRouteCache": true,
        })
    );
    // No locations given: Envoy's defaults (Authorization, access_token).
    assert!(c["providers"]["origins-1"]["fromHeaders"].is_null());
    assert_eq!(
        c["rules"],
        json!([{"match": {"prefix": "/"}, "requires": {"requiresAny": {"requirements": [
            {"providerName": "origins-0"}, {"providerName": "origins-1"}, {"allowMissing": {}}]}}}])
    );
    assert_eq!(c["bypassCorsPreflight"], true);
}

#[test]
fn required_presence_leaves_out_allow_missing() {
    let yaml = ra(
        "apps",
        "jwt",
        &format!(
            "{{jwtRules: [{}]}}",
            rule("https://a", ", presence: REQUIRED")
        ),
    );
    let c = config(&yaml, &web()).unwrap();
    assert_eq!(
        c["rules"][0]["requires"]["requiresAny"]["requirements"],
        json!([{"providerName": "origins-0"}])
    );
}

#[test]
fn unknown_keys_fail_closed() {
    let yaml = [
        ra(
            "apps",
            "uri",
            "{jwtRules: [{issuer: \"https://a\", jwksUri: \"https://a/keys\"}]}",
        ),
        ra(
            "apps",
            "broken",
            "{jwtRules: [{issuer: \"https://b\", jwks: \"not json\"}]}",
        ),
    ]
    .concat();
    let c = config(&yaml, &web()).unwrap();
    for i in 0..2 {
        let jwks = c["providers"][format!("origins-{i}")]["localJwks"]["inlineString"]
            .as_str()
            .unwrap();
        assert_eq!(jwks, UNUSABLE_JWKS);
    }
    let keys: Value = serde_json::from_str(UNUSABLE_JWKS).unwrap();
    assert_eq!(keys["keys"][0]["kty"], "RSA");
}

#[test]
fn the_filter_comes_before_rbac_and_is_part_of_the_inbound_shape() {
    let policy = ra(
        "apps",
        "jwt",
        &format!("{{jwtRules: [{}]}}", rule("https://a", "")),
    );
    let deny = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: apps}\nspec: {action: DENY, rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]}\n";
    let snap = snapshot(&format!("{policy}{deny}"));
    let names: Vec<String> = InboundRbac::of(&snap, &web())
        .http
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(names, [JWT_AUTHN_FILTER, "envoy.filters.http.rbac"]);
    let other = proxy("apps", &[("app", "db")]);
    let selected = ra(
        "apps",
        "jwt",
        &format!(
            "{{selector: {{matchLabels: {{app: web}}}}, jwtRules: [{}]}}",
            rule("https://a", "")
        ),
    );
    let snap = snapshot(&selected);
    assert_ne!(
        ShapeKey::of(&snap, &web(), Part::Inbound),
        ShapeKey::of(&snap, &other, Part::Inbound)
    );
}
