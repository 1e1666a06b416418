//! AuthorizationPolicy to RBAC: which policies apply, what each field
//! becomes, and what HTTP-only fields do on TCP chains.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use envoy_types::pb::envoy::config::rbac::v3::{Permission, permission};
use mesh_api::mesh_config::MeshConfig;
use mesh_api::xds::json::to_json;
use serde_json::{Value, json};

use super::matcher::Matcher;
use super::rule::bracketed;
use super::*;
use crate::xds::Part;
use crate::xds::shape::ShapeKey;

/// A snapshot of `yaml`, validation findings ignored so that tests can
/// feed what validation would refuse (but every document must decode).
fn snapshot(yaml: &str) -> Snapshot {
    let loaded = mesh_api::load_str("t.yaml", yaml);
    for l in &loaded {
        assert!(l.object.is_some(), "{:?}", l.report.diagnostics);
    }
    Snapshot::build(1, &loaded, MeshConfig::default())
}

fn web() -> ProxyInfo {
    proxy("apps", &[("app", "web"), ("version", "v1")])
}

fn proxy(namespace: &str, labels: &[(&str, &str)]) -> ProxyInfo {
    ProxyInfo::sidecar(
        "web-0",
        namespace,
        "10.0.0.1".parse::<IpAddr>().unwrap(),
        labels,
    )
}

/// An AuthorizationPolicy document.
fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

fn applied(yaml: &str, proxy: &ProxyInfo) -> Vec<String> {
    let snap = snapshot(yaml);
    AppliedPolicies::of(&snap, proxy)
        .policies(&snap)
        .map(|p| format!("{}/{}", namespace_of(p), name_of(p)))
        .collect()
}

/// The filters for `web()`, as JSON with typed configs expanded.
fn filters(yaml: &str) -> (Vec<Value>, Vec<Value>) {
    let rbac = InboundRbac::of(&snapshot(yaml), &web());
    let http = rbac
        .http
        .iter()
        .map(|f| {
            assert_eq!(f.name, "envoy.filters.http.rbac");
            to_json(f).unwrap()["typedConfig"].clone()
        })
        .collect();
    let network = rbac
        .network
        .iter()
        .map(|f| {
            assert_eq!(f.name, "envoy.filters.network.rbac");
            to_json(f).unwrap()["typedConfig"].clone()
        })
        .collect();
    (http, network)
}

/// The only policy of the only HTTP filter, from one ALLOW policy `p`.
fn http_policy(spec: &str) -> Value {
    let (http, _) = filters(&ap("apps", "p", spec));
    assert_eq!(http.len(), 1, "{http:?}");
    http[0]["rules"]["policies"]["ns[apps]-policy[p]-rule[0]"].clone()
}

fn actions(filters: &[Value]) -> Vec<&str> {
    filters
        .iter()
        .map(|f| f["rules"]["action"].as_str().unwrap_or("ALLOW"))
        .collect()
}

fn policy_names(filter: &Value) -> Vec<String> {
    filter["rules"]["policies"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

// === Scope ===

#[test]
fn mesh_namespace_and_workload_policies_apply() {
    let yaml = ap("istio-system", "mesh", "{}")
        + &ap("apps", "namespace", "{}")
        + &ap("apps", "web", "{selector: {matchLabels: {app: web}}}")
        + &ap(
            "apps",
            "web-v2",
            "{selector: {matchLabels: {app: web, version: v2}}}",
        )
        + &ap("apps", "db", "{selector: {matchLabels: {app: db}}}")
        + &ap("other", "namespace", "{}")
        + &ap("other", "web", "{selector: {matchLabels: {app: web}}}");
    assert_eq!(
        applied(&yaml, &web()),
        ["apps/namespace", "apps/web", "istio-system/mesh"]
    );
    // Another namespace: only the mesh-wide one and its own.
    assert_eq!(
        applied(&yaml, &proxy("other", &[])),
        ["istio-system/mesh", "other/namespace"]
    );
    assert_eq!(applied(&yaml, &proxy("third", &[])), ["istio-system/mesh"]);
}

#[test]
fn a_root_namespace_selector_matches_in_every_namespace() {
    let yaml = ap(
        "istio-system",
        "webs",
        "{selector: {matchLabels: {app: web}}}",
    );
    assert_eq!(applied(&yaml, &web()), ["istio-system/webs"]);
    assert!(applied(&yaml, &proxy("apps", &[("app", "db")])).is_empty());
}

#[test]
fn target_refs_do_not_pick_sidecars() {
    let yaml = ap(
        "apps",
        "gw",
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]}",
    ) + &ap(
        "apps",
        "svc",
        "{targetRefs: [{kind: Service, group: \"\", name: web}]}",
    );
    assert!(applied(&yaml, &web()).is_empty());
    assert_eq!(
        InboundRbac::of(&snapshot(&yaml), &web()),
        InboundRbac::default()
    );
}

#[test]
fn no_policy_no_filter() {
    assert_eq!(filters(""), (vec![], vec![]));
}

#[test]
fn the_policies_that_apply_are_part_of_the_inbound_shape() {
    let yaml = ap("apps", "web", "{selector: {matchLabels: {app: web}}}");
    let snap = snapshot(&yaml);
    let key = |p: &ProxyInfo| ShapeKey::of(&snap, p, Part::Inbound);
    let other = proxy("apps", &[("app", "db")]);
    assert_ne!(key(&web()), key(&other));
    let snap = snapshot("");
    assert_eq!(
        ShapeKey::of(&snap, &web(), Part::Inbound),
        ShapeKey::of(&snap, &other, Part::Inbound)
    );
}

// === Actions ===

#[test]
fn filters_come_in_istio_order_audit_deny_allow() {
    let yaml = ap("apps", "a-allow", "{rules: [{}]}")
        + &ap("apps", "b-deny", "{action: DENY, rules: [{}]}")
        + &ap("apps", "c-audit", "{action: AUDIT, rules: [{}]}");
    let (http, network) = filters(&yaml);
    assert_eq!(actions(&http), ["LOG", "DENY", "ALLOW"]);
    assert_eq!(actions(&network), ["LOG", "DENY", "ALLOW"]);
    assert_eq!(policy_names(&http[1]), ["ns[apps]-policy[b-deny]-rule[0]"]);
    for f in &network {
        assert_eq!(f["statPrefix"], "tcp.");
    }
    for f in &http {
        assert_eq!(
            f["@type"],
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
        );
    }
}

#[test]
fn allow_without_rules_denies_everything() {
    let (http, network) = filters(&ap("apps", "deny-all", "{}"));
    assert_eq!(actions(&http), ["ALLOW"]);
    assert_eq!(actions(&network), ["ALLOW"]);
    assert!(policy_names(&http[0]).is_empty());
    assert!(policy_names(&network[0]).is_empty());
}

#[test]
fn an_empty_rule_allows_everything() {
    let p = http_policy("{rules: [{}]}");
    assert_eq!(
        p,
        json!({"permissions": [{"any": true}], "principals": [{"any": true}]})
    );
}

#[test]
fn deny_and_audit_without_rules_do_nothing() {
    let yaml = ap("apps", "d", "{action: DENY}") + &ap("apps", "a", "{action: AUDIT}");
    assert_eq!(filters(&yaml), (vec![], vec![]));
}

#[test]
fn custom_and_dry_run_policies_apply_like_the_others() {
    // Their filters are tested in `authz/ext_authz_tests.rs` and
    // `authz/dry_run_tests.rs`; they count for the shape (a change
    // re-translates).
    let yaml = ap(
        "apps",
        "ext",
        "{action: CUSTOM, provider: {name: opa}, rules: [{}]}",
    ) + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: try, namespace: apps, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n";
    assert_eq!(applied(&yaml, &web()), ["apps/ext", "apps/try"]);
}

#[test]
fn every_rule_is_a_policy_named_as_in_istio() {
    let yaml = ap(
        "apps",
        "two",
        "{rules: [{to: [{operation: {ports: [\"80\"]}}]}, {to: [{operation: {ports: [\"81\"]}}]}]}",
    ) + &ap("istio-system", "mesh", "{rules: [{}]}");
    let (http, _) = filters(&yaml);
    assert_eq!(
        policy_names(&http[0]),
        [
            "ns[apps]-policy[two]-rule[0]",
            "ns[apps]-policy[two]-rule[1]",
            "ns[istio-system]-policy[mesh]-rule[0]"
        ]
    );
}

// === Structure ===

#[test]
fn to_entries_are_alternatives_and_operation_fields_all_hold() {
    let p = http_policy(
        "{rules: [{to: [{operation: {methods: [GET, HEAD], paths: [/a]}}, {operation: {notPorts: [\"9090\"]}}]}]}",
    );
    assert_eq!(
        p["permissions"],
        json!([
            {"andRules": {"rules": [
                {"orRules": {"rules": [
                    {"header": {"name": ":method", "stringMatch": {"exact": "GET"}}},
                    {"header": {"name": ":method", "stringMatch": {"exact": "HEAD"}}}
                ]}},
                {"orRules": {"rules": [{"urlPath": {"path": {"exact": "/a"}}}]}}
            ]}},
            {"andRules": {"rules": [
                {"notRule": {"orRules": {"rules": [{"destinationPort": 9090}]}}}
            ]}}
        ])
    );
    assert_eq!(p["principals"], json!([{"any": true}]));
}

#[test]
fn from_entries_are_alternatives_and_when_joins_each() {
    let p = http_policy(
        "{rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/x]}}, {source: {namespaces: [b]}}], when: [{key: source.ip, values: [10.0.0.0/8]}, {key: destination.port, values: [\"8080\"]}]}]}",
    );
    let ip = json!({"orIds": {"ids": [{"directRemoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 8}}]}});
    assert_eq!(
        p["principals"],
        json!([
            {"andIds": {"ids": [
                {"orIds": {"ids": [{"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/a/sa/x"}}}]}},
                ip
            ]}},
            {"andIds": {"ids": [
                {"orIds": {"ids": [{"authenticated": {"principalName": {"safeRegex": {"regex": ".*/ns/b/.*"}}}}]}},
                ip
            ]}}
        ])
    );
    assert_eq!(
        p["permissions"],
        json!([{"andRules": {"rules": [{"orRules": {"rules": [{"destinationPort": 8080}]}}]}}])
    );
}

/// The single matcher a one-value field becomes.
fn principal_of(source: &str) -> Value {
    let p = http_policy(&format!("{{rules: [{{from: [{{source: {source}}}]}}]}}"));
    p["principals"][0]["andIds"]["ids"][0]["orIds"]["ids"][0].clone()
}

fn permission_of(operation: &str) -> Value {
    let p = http_policy(&format!(
        "{{rules: [{{to: [{{operation: {operation}}}]}}]}}"
    ));
    p["permissions"][0]["andRules"]["rules"][0]["orRules"]["rules"][0].clone()
}

fn when_principal(key: &str, value: &str) -> Value {
    let p = http_policy(&format!(
        "{{rules: [{{when: [{{key: \"{key}\", values: [\"{value}\"]}}]}}]}}"
    ));
    assert_eq!(p["permissions"], json!([{"any": true}]), "{key}");
    p["principals"][0]["andIds"]["ids"][0]["orIds"]["ids"][0].clone()
}

fn when_permission(key: &str, value: &str) -> Value {
    let p = http_policy(&format!(
        "{{rules: [{{when: [{{key: \"{key}\", values: [\"{value}\"]}}]}}]}}"
    ));
    assert_eq!(p["principals"], json!([{"any": true}]), "{key}");
    p["permissions"][0]["andRules"]["rules"][0]["orRules"]["rules"][0].clone()
}

fn authenticated(name: Value) -> Value {
    json!({"authenticated": {"principalName": name}})
}

// === Sources ===

#[test]
fn principals_match_the_spiffe_id_with_wildcards() {
    let cases = [
        (
            "cluster.local/ns/a/sa/x",
            json!({"exact": "spiffe://cluster.local/ns/a/sa/x"}),
        ),
        (
            "cluster.local/ns/a/*",
            json!({"prefix": "spiffe://cluster.local/ns/a/"}),
        ),
        ("*/sa/x", json!({"suffix": "/sa/x"})),
        ("*", json!({"safeRegex": {"regex": ".+"}})),
    ];
    for (value, want) in cases {
        assert_eq!(
            principal_of(&format!("{{principals: [\"{value}\"]}}")),
            authenticated(want),
            "{value}"
        );
    }
}

#[test]
fn not_values_are_the_negation_of_any() {
    let p =
        http_policy("{rules: [{from: [{source: {notPrincipals: [a/ns/b/sa/c, \"*/sa/d\"]}}]}]}");
    assert_eq!(
        p["principals"][0]["andIds"]["ids"],
        json!([{"notId": {"orIds": {"ids": [
            authenticated(json!({"exact": "spiffe://a/ns/b/sa/c"})),
            authenticated(json!({"suffix": "/sa/d"}))
        ]}}}])
    );
}

#[test]
fn namespaces_service_accounts_and_trust_domains_match_the_spiffe_id() {
    let regex = |r: &str| authenticated(json!({"safeRegex": {"regex": r}}));
    assert_eq!(principal_of("{namespaces: [prod]}"), regex(".*/ns/prod/.*"));
    assert_eq!(
        principal_of("{namespaces: [\"prod-*\"]}"),
        regex(".*/ns/prod-.*/.*")
    );
    assert_eq!(
        principal_of("{serviceAccounts: [other/reader]}"),
        regex("spiffe://.+/ns/other/(.+/|)sa/reader(/.+)?")
    );
    // Without a namespace: the policy's.
    assert_eq!(
        principal_of("{serviceAccounts: [reader]}"),
        regex("spiffe://.+/ns/apps/(.+/|)sa/reader(/.+)?")
    );
    assert_eq!(
        principal_of("{trustDomains: [example.org]}"),
        authenticated(json!({"prefix": "spiffe://example.org/"}))
    );
    assert_eq!(
        principal_of("{trustDomains: [\"*.example.org\"]}"),
        regex("spiffe://[^/]*\\.example\\.org/.*")
    );
}

#[test]
fn ip_blocks_are_cidr_ranges_of_the_peer_or_the_client() {
    assert_eq!(
        principal_of("{ipBlocks: [10.1.2.3]}"),
        json!({"directRemoteIp": {"addressPrefix": "10.1.2.3", "prefixLen": 32}})
    );
    assert_eq!(
        principal_of("{ipBlocks: [\"fd00::/8\"]}"),
        json!({"directRemoteIp": {"addressPrefix": "fd00::", "prefixLen": 8}})
    );
    assert_eq!(
        principal_of("{remoteIpBlocks: [\"2001:db8::1\"]}"),
        json!({"remoteIp": {"addressPrefix": "2001:db8::1", "prefixLen": 128}})
    );
}

/// The RBAC metadata principal on claim `path` of the verified payload.
fn claim(path: &[&str], value: Value) -> Value {
    let mut keys = vec![json!({"key": "payload"})];
    keys.extend(path.iter().map(|k| json!({"key": k})));
    json!({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": keys, "value": value}})
}

fn exact(v: &str) -> Value {
    json!({"stringMatch": {"exact": v}})
}

fn and(ids: Vec<Value>) -> Value {
    json!({"andIds": {"ids": ids}})
}

fn or(ids: Vec<Value>) -> Value {
    json!({"orIds": {"ids": ids}})
}

fn prefix(v: &str) -> Value {
    json!({"stringMatch": {"prefix": v}})
}

fn suffix(v: &str) -> Value {
    json!({"stringMatch": {"suffix": v}})
}

/// `iss` and `sub` matching `iss` and `sub`.
fn principal(iss: Value, sub: Value) -> Value {
    and(vec![claim(&["iss"], iss), claim(&["sub"], sub)])
}

#[test]
fn request_principals_match_issuer_and_subject_at_every_split() {
    let present = || json!({"presentMatch": true});
    let table: Vec<(&str, Value)> = vec![
        // No '/': no issuer/subject pair can make it.
        ("nobody", json!({"notId": {"any": true}})),
        // One '/': one split.
        ("issuer/sub", principal(exact("issuer"), exact("sub"))),
        // Two: the issuer or the subject may hold the middle part.
        (
            "a/b/c",
            or(vec![
                principal(exact("a"), exact("b/c")),
                principal(exact("a/b"), exact("c")),
            ]),
        ),
        // An issuer URL has slashes of its own: every split is an alternative.
        (
            "https://issuer.example/alice",
            or(vec![
                principal(exact("https:"), exact("/issuer.example/alice")),
                principal(exact("https:/"), exact("issuer.example/alice")),
                principal(exact("https://issuer.example"), exact("alice")),
            ]),
        ),
        // `*`: any verified token with both claims.
        ("*", principal(present(), present())),
        // Prefix: an issuer starting with it, or a split whose subject
        // starts with the rest.
        (
            "iss/a*",
            or(vec![
                principal(prefix("iss/a"), present()),
                principal(exact("iss"), prefix("a")),
            ]),
        ),
        ("acc*", principal(prefix("acc"), present())),
        // A trailing '/' leaves an empty subject prefix: any subject.
        (
            "iss/*",
            or(vec![
                principal(prefix("iss/"), present()),
                principal(exact("iss"), present()),
            ]),
        ),
        // Suffix, symmetrically.
        (
            "*s/alice",
            or(vec![
                principal(present(), suffix("s/alice")),
                principal(suffix("s"), exact("alice")),
            ]),
        ),
        ("*alice", principal(present(), suffix("alice"))),
        // A leading '/' leaves an empty issuer suffix: any issuer.
        (
            "*/alice",
            or(vec![
                principal(present(), suffix("/alice")),
                principal(present(), exact("alice")),
            ]),
        ),
    ];
    for (value, want) in table {
        assert_eq!(
            principal_of(&format!("{{requestPrincipals: [\"{value}\"]}}")),
            want,
            "requestPrincipals {value}"
        );
        assert_eq!(
            when_principal("request.auth.principal", value),
            want,
            "request.auth.principal {value}"
        );
    }
}

#[test]
fn not_request_principals_negate_the_alternatives() {
    let p =
        http_policy("{rules: [{from: [{source: {notRequestPrincipals: [\"*\", \"iss/bob\"]}}]}]}");
    let present = json!({"presentMatch": true});
    assert_eq!(
        p["principals"][0]["andIds"]["ids"],
        json!([{"notId": or(vec![
            principal(present.clone(), present),
            principal(exact("iss"), exact("bob")),
        ])}])
    );
}

// === Operations ===

#[test]
fn hosts_match_the_authority_ignoring_case() {
    let host = |m: Value| json!({"header": {"name": ":authority", "stringMatch": m}});
    assert_eq!(
        permission_of("{hosts: [Example.com]}"),
        host(json!({"exact": "Example.com", "ignoreCase": true}))
    );
    assert_eq!(
        permission_of("{hosts: [\"*.example.com\"]}"),
        host(json!({"suffix": ".example.com", "ignoreCase": true}))
    );
    assert_eq!(
        permission_of("{hosts: [\"api.*\"]}"),
        host(json!({"prefix": "api.", "ignoreCase": true}))
    );
    assert_eq!(
        permission_of("{hosts: [\"*\"]}"),
        json!({"header": {"name": ":authority", "presentMatch": true}})
    );
}

#[test]
fn paths_are_exact_prefix_suffix_or_templates() {
    let path = |m: Value| json!({"urlPath": {"path": m}});
    let cases = [
        ("/info", json!({"exact": "/info"})),
        ("/api/*", json!({"prefix": "/api/"})),
        ("*.html", json!({"suffix": ".html"})),
        ("*", json!({"safeRegex": {"regex": ".+"}})),
        (
            "/users/{*}/orders",
            json!({"safeRegex": {"regex": "/users/[^/]+/orders"}}),
        ),
        ("/v1.0/{**}", json!({"safeRegex": {"regex": "/v1\\.0/.*"}})),
        (
            "/a/{*}/b/{**}",
            json!({"safeRegex": {"regex": "/a/[^/]+/b/.*"}}),
        ),
    ];
    for (value, want) in cases {
        assert_eq!(
            permission_of(&format!("{{paths: [\"{value}\"]}}")),
            path(want),
            "{value}"
        );
    }
}

#[test]
fn methods_and_ports() {
    assert_eq!(
        permission_of("{methods: [POST]}"),
        json!({"header": {"name": ":method", "stringMatch": {"exact": "POST"}}})
    );
    assert_eq!(
        permission_of("{ports: [\"8443\"]}"),
        json!({"destinationPort": 8443})
    );
}

// === Conditions ===

#[test]
fn conditions_on_the_source_are_principals() {
    assert_eq!(
        when_principal("request.headers[x-user]", "alice"),
        json!({"header": {"name": "x-user", "stringMatch": {"exact": "alice"}}})
    );
    assert_eq!(
        when_principal("source.ip", "10.0.0.0/16"),
        json!({"directRemoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 16}})
    );
    assert_eq!(
        when_principal("remote.ip", "1.2.3.4"),
        json!({"remoteIp": {"addressPrefix": "1.2.3.4", "prefixLen": 32}})
    );
    assert_eq!(
        when_principal("source.namespace", "prod"),
        authenticated(json!({"safeRegex": {"regex": ".*/ns/prod/.*"}}))
    );
    assert_eq!(
        when_principal("source.principal", "td/ns/a/sa/b"),
        authenticated(json!({"exact": "spiffe://td/ns/a/sa/b"}))
    );
    let admin = exact("admin");
    assert_eq!(
        when_principal("request.auth.claims[org][groups]", "admin"),
        json!({"orIds": {"ids": [
            claim(&["org", "groups"], admin.clone()),
            claim(&["org", "groups"], json!({"listMatch": {"oneOf": admin}})),
        ]}})
    );
    assert_eq!(
        when_principal("request.auth.audiences", "web"),
        json!({"orIds": {"ids": [
            claim(&["aud"], exact("web")),
            claim(&["aud"], json!({"listMatch": {"oneOf": exact("web")}})),
        ]}})
    );
    assert_eq!(
        when_principal("request.auth.presenter", "spa"),
        claim(&["azp"], exact("spa"))
    );
}

#[test]
fn conditions_on_the_destination_are_permissions() {
    assert_eq!(
        when_permission("destination.ip", "10.0.0.1"),
        json!({"destinationIp": {"addressPrefix": "10.0.0.1", "prefixLen": 32}})
    );
    assert_eq!(
        when_permission("destination.port", "8080"),
        json!({"destinationPort": 8080})
    );
    assert_eq!(
        when_permission("connection.sni", "*.example.com"),
        json!({"requestedServerName": {"suffix": ".example.com"}})
    );
}

#[test]
fn a_condition_with_not_values_negates_them() {
    let p = http_policy(
        "{rules: [{when: [{key: source.ip, values: [10.0.0.0/8], notValues: [10.1.0.0/16]}]}]}",
    );
    assert_eq!(
        p["principals"][0]["andIds"]["ids"],
        json!([
            {"orIds": {"ids": [{"directRemoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 8}}]}},
            {"notId": {"orIds": {"ids": [{"directRemoteIp": {"addressPrefix": "10.1.0.0", "prefixLen": 16}}]}}}
        ])
    );
}

#[test]
fn an_unknown_key_skips_the_rule() {
    let (http, _) = filters(&ap(
        "apps",
        "p",
        "{rules: [{when: [{key: destination.labels, values: [x]}]}, {}]}",
    ));
    assert_eq!(policy_names(&http[0]), ["ns[apps]-policy[p]-rule[1]"]);
}

// === TCP ===

#[test]
fn allow_rules_with_http_fields_allow_nothing_on_tcp() {
    let yaml = ap(
        "apps",
        "p",
        "{rules: [{to: [{operation: {methods: [GET], ports: [\"80\"]}}]}, {to: [{operation: {ports: [\"6379\"]}}]}, {from: [{source: {requestPrincipals: [\"*\"]}}]}, {when: [{key: \"request.headers[x]\", values: [v1]}]}]}",
    );
    let (http, network) = filters(&yaml);
    assert_eq!(policy_names(&http[0]).len(), 4);
    assert_eq!(policy_names(&network[0]), ["ns[apps]-policy[p]-rule[1]"]);
}

#[test]
fn deny_and_audit_rules_lose_their_http_fields_on_tcp() {
    for action in ["DENY", "AUDIT"] {
        let yaml = ap(
            "apps",
            "p",
            &format!(
                "{{action: {action}, rules: [{{to: [{{operation: {{paths: [/admin], ports: [\"8080\"]}}}}]}}, {{to: [{{operation: {{methods: [DELETE]}}}}]}}]}}"
            ),
        );
        let (http, network) = filters(&yaml);
        let http_rule = &http[0]["rules"]["policies"]["ns[apps]-policy[p]-rule[0]"];
        assert_eq!(
            http_rule["permissions"][0]["andRules"]["rules"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let tcp = &network[0]["rules"]["policies"];
        assert_eq!(
            tcp["ns[apps]-policy[p]-rule[0]"]["permissions"],
            json!([{"andRules": {"rules": [{"orRules": {"rules": [{"destinationPort": 8080}]}}]}}]),
            "{action}"
        );
        // Only HTTP fields: it matches every connection.
        assert_eq!(
            tcp["ns[apps]-policy[p]-rule[1]"]["permissions"],
            json!([{"any": true}]),
            "{action}"
        );
    }
}

// === Invalid values ===

#[test]
fn an_invalid_value_drops_an_allow_rule() {
    let yaml = ap(
        "apps",
        "p",
        "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, not-an-ip]}}]}, {to: [{operation: {ports: [\"70000\"]}}]}, {}]}",
    );
    let (http, network) = filters(&yaml);
    assert_eq!(policy_names(&http[0]), ["ns[apps]-policy[p]-rule[2]"]);
    assert_eq!(policy_names(&network[0]), ["ns[apps]-policy[p]-rule[2]"]);
}

#[test]
fn an_invalid_value_is_skipped_in_a_deny_rule() {
    let yaml = ap(
        "apps",
        "p",
        "{action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, \"10.0.0.0/40\"]}}]}]}",
    );
    let (http, _) = filters(&yaml);
    assert_eq!(
        http[0]["rules"]["policies"]["ns[apps]-policy[p]-rule[0]"]["principals"],
        json!([{"andIds": {"ids": [{"orIds": {"ids": [
            {"directRemoteIp": {"addressPrefix": "10.0.0.0", "prefixLen": 8}}
        ]}}]}}])
    );
}

// === Encoding ===

#[test]
fn policies_are_encoded_in_name_order_so_bytes_are_stable() {
    let rules: Vec<String> = (0..20)
        .map(|i| format!("{{to: [{{operation: {{ports: [\"{}\"]}}}}]}}", 1000 + i))
        .collect();
    let yaml = ap(
        "apps",
        "many",
        &format!("{{rules: [{}]}}", rules.join(", ")),
    );
    let snap = snapshot(&yaml);
    let first = InboundRbac::of(&snap, &web());
    for _ in 0..5 {
        assert_eq!(InboundRbac::of(&snap, &web()), first);
    }
    // The bytes decode as Envoy's own message, with every policy.
    let Some(http_filter::ConfigType::TypedConfig(any)) = &first.http[0].config_type else {
        panic!("no typed config");
    };
    let decoded = HttpRbac::decode(any.value.as_slice()).unwrap();
    let rules = decoded.rules.unwrap();
    assert_eq!(rules.action, rbac::Action::Allow as i32);
    assert_eq!(rules.policies.len(), 20);
    assert_eq!(
        rules.policies["ns[apps]-policy[many]-rule[7]"].permissions,
        vec![Permission::and(vec![Permission::or(vec![Permission {
            rule: Some(permission::Rule::DestinationPort(1007)),
        }])])]
    );
    let Some(filter::ConfigType::TypedConfig(any)) = &first.network[0].config_type else {
        panic!("no typed config");
    };
    let decoded = NetworkRbac::decode(any.value.as_slice()).unwrap();
    assert_eq!(decoded.stat_prefix, "tcp.");
    assert_eq!(decoded.rules.unwrap().policies.len(), 20);
}

#[test]
fn bracketed_names() {
    assert_eq!(bracketed("[a]"), Some(vec!["a"]));
    assert_eq!(bracketed("[a][b]"), Some(vec!["a", "b"]));
    for bad in ["", "[]", "a", "[a", "[a]b", "[[a]]"] {
        assert_eq!(bracketed(bad), None, "{bad}");
    }
}
