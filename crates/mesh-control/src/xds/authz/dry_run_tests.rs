//! Dry-run AuthorizationPolicies (`istio.io/dry-run`): shadow rules that
//! Envoy evaluates and counts without enforcing, as in Istio's builder
//! testdata (`dry-run-allow`, `dry-run-mix`, `dry-run-allow-and-deny`).

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use mesh_api::mesh_config::MeshConfig;
use mesh_api::xds::json::to_json;
use serde_json::{Value, json};

use super::*;

fn web() -> ProxyInfo {
    ProxyInfo::sidecar(
        "web-0",
        "foo",
        "10.0.0.1".parse::<IpAddr>().unwrap(),
        &[("app", "web")],
    )
}

/// An AuthorizationPolicy in `foo`, with `annotations` (YAML flow map).
fn ap(name: &str, annotations: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: foo, annotations: {annotations}}}\nspec: {spec}\n"
    )
}

fn dry(name: &str, spec: &str) -> String {
    ap(name, "{istio.io/dry-run: \"true\"}", spec)
}

/// The typed configs of the HTTP and network filters.
fn filters(yaml: &str) -> (Vec<Value>, Vec<Value>) {
    let loaded = mesh_api::load_str("t.yaml", yaml);
    for l in &loaded {
        assert!(l.object.is_some(), "{:?}", l.report.diagnostics);
    }
    let snap = Snapshot::build(1, &loaded, MeshConfig::default());
    let rbac = InboundRbac::of(&snap, &web());
    let typed = |v: Value| v["typedConfig"].clone();
    (
        rbac.http
            .iter()
            .map(|f| {
                assert_eq!(f.name, HTTP_RBAC_FILTER);
                typed(to_json(f).unwrap())
            })
            .collect(),
        rbac.network
            .iter()
            .map(|f| {
                assert_eq!(f.name, NETWORK_RBAC_FILTER);
                typed(to_json(f).unwrap())
            })
            .collect(),
    )
}

/// The policy for a rule `to: [{operation: {paths: [<path>]}}]`.
fn path_policy(path: &str) -> Value {
    json!({
        "permissions": [{"andRules": {"rules": [{"orRules": {"rules": [
            {"urlPath": {"path": {"exact": path}}}
        ]}}]}}],
        "principals": [{"any": true}]
    })
}

fn paths(path: &str) -> String {
    format!("{{rules: [{{to: [{{operation: {{paths: [\"{path}\"]}}}}]}}]}}")
}

const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

#[test]
fn only_dry_run_allow_policies_enforce_nothing() {
    // Istio's dry-run-allow: no `rules` at all, so nothing is denied.
    let (http, network) = filters(&dry("httpbin-1", &paths("/exact")));
    assert_eq!(
        http,
        [json!({
            "@type": RBAC_TYPE,
            "shadowRules": {"policies": {"ns[foo]-policy[httpbin-1]-rule[0]": path_policy("/exact")}},
            "shadowRulesStatPrefix": "istio_dry_run_allow_"
        })]
    );
    // On TCP the rule's path cannot match: the shadow ALLOW set is empty
    // (it would deny all), still without enforcing anything.
    assert_eq!(network.len(), 1);
    assert!(network[0].get("rules").is_none(), "{network:?}");
    assert_eq!(network[0]["shadowRules"], json!({}));
    assert_eq!(network[0]["shadowRulesStatPrefix"], "istio_dry_run_allow_");
    assert_eq!(network[0]["statPrefix"], "tcp.");
}

#[test]
fn a_dry_run_allow_without_rules_shadows_a_deny_all() {
    let (http, _) = filters(&dry("deny-all", "{}"));
    assert_eq!(http.len(), 1);
    assert!(http[0].get("rules").is_none());
    assert_eq!(http[0]["shadowRules"], json!({}));
}

#[test]
fn dry_run_and_enforced_allow_share_one_filter() {
    // Istio's dry-run-mix ("false" enforces).
    let yaml = dry("httpbin-1", &paths("/allow"))
        + &ap(
            "httpbin-2",
            "{istio.io/dry-run: \"false\"}",
            &paths("/another"),
        );
    let (http, _) = filters(&yaml);
    assert_eq!(
        http,
        [json!({
            "@type": RBAC_TYPE,
            "rules": {"policies": {"ns[foo]-policy[httpbin-2]-rule[0]": path_policy("/another")}},
            "shadowRules": {"policies": {"ns[foo]-policy[httpbin-1]-rule[0]": path_policy("/allow")}},
            "shadowRulesStatPrefix": "istio_dry_run_allow_"
        })]
    );
}

#[test]
fn dry_run_deny_next_to_an_enforced_deny() {
    let yaml = dry(
        "try-deny",
        "{action: DENY, rules: [{to: [{operation: {paths: [\"/try\"]}}]}]}",
    ) + &ap(
        "deny",
        "{}",
        "{action: DENY, rules: [{to: [{operation: {paths: [\"/admin\"]}}]}]}",
    );
    let (http, network) = filters(&yaml);
    assert_eq!(
        http,
        [json!({
            "@type": RBAC_TYPE,
            "rules": {"action": "DENY", "policies": {"ns[foo]-policy[deny]-rule[0]": path_policy("/admin")}},
            "shadowRules": {"action": "DENY", "policies": {"ns[foo]-policy[try-deny]-rule[0]": path_policy("/try")}},
            "shadowRulesStatPrefix": "istio_dry_run_deny_"
        })]
    );
    // On TCP a DENY rule loses its HTTP fields (it matches every
    // connection), in the shadow as in the enforced set.
    let any = json!({"permissions": [{"any": true}], "principals": [{"any": true}]});
    assert_eq!(network.len(), 1);
    assert_eq!(
        network[0]["rules"]["policies"]["ns[foo]-policy[deny]-rule[0]"],
        any
    );
    assert_eq!(
        network[0]["shadowRules"]["policies"]["ns[foo]-policy[try-deny]-rule[0]"],
        any
    );
    assert_eq!(network[0]["shadowRulesStatPrefix"], "istio_dry_run_deny_");
}

#[test]
fn dry_run_allow_and_deny_get_a_filter_each_deny_first() {
    // Istio's dry-run-allow-and-deny.
    let yaml = dry("httpbin-1", &paths("/allow"))
        + &dry(
            "httpbin-2",
            "{action: DENY, rules: [{to: [{operation: {paths: [\"/deny\"]}}]}]}",
        );
    let (http, _) = filters(&yaml);
    assert_eq!(
        http,
        [
            json!({
                "@type": RBAC_TYPE,
                "shadowRules": {"action": "DENY", "policies": {"ns[foo]-policy[httpbin-2]-rule[0]": path_policy("/deny")}},
                "shadowRulesStatPrefix": "istio_dry_run_deny_"
            }),
            json!({
                "@type": RBAC_TYPE,
                "shadowRules": {"policies": {"ns[foo]-policy[httpbin-1]-rule[0]": path_policy("/allow")}},
                "shadowRulesStatPrefix": "istio_dry_run_allow_"
            }),
        ]
    );
}

#[test]
fn a_dry_run_audit_is_a_shadow_log_without_prefix() {
    let (http, _) = filters(&dry("audit", "{action: AUDIT, rules: [{}]}"));
    assert_eq!(http.len(), 1);
    assert_eq!(http[0]["shadowRules"]["action"], "LOG");
    assert!(http[0].get("rules").is_none());
    assert!(http[0].get("shadowRulesStatPrefix").is_none());
}

#[test]
fn a_dry_run_deny_without_rules_needs_no_filter() {
    assert_eq!(filters(&dry("d", "{action: DENY}")), (vec![], vec![]));
}

#[test]
fn enforced_filters_carry_no_shadow_prefix() {
    let (http, network) = filters(&ap("allow", "{}", "{rules: [{}]}"));
    assert!(http[0].get("shadowRulesStatPrefix").is_none());
    assert!(network[0].get("shadowRulesStatPrefix").is_none());
}

#[test]
fn the_annotation_reads_as_go_parse_bool() {
    for (value, dry_run) in [
        ("true", true),
        ("True", true),
        ("TRUE", true),
        ("t", true),
        ("T", true),
        ("1", true),
        ("false", false),
        ("0", false),
        ("F", false),
        // Neither: reported, and enforced as in Istio.
        ("yes", false),
        ("tRuE", false),
        ("", false),
    ] {
        let yaml = ap(
            "p",
            &format!("{{istio.io/dry-run: \"{value}\"}}"),
            "{action: DENY, rules: [{}]}",
        );
        let (http, _) = filters(&yaml);
        assert_eq!(http.len(), 1, "{value}");
        assert_eq!(http[0].get("rules").is_none(), dry_run, "{value}");
        assert_eq!(http[0].get("shadowRules").is_some(), dry_run, "{value}");
    }
}
