use super::*;
use crate::tls::PeerNames;
use http::{HeaderMap, Method};
use serde_json::json;

fn rbac(value: serde_json::Value) -> FieldResult<Option<Rbac>> {
    let pb: PbRbac = mesh_api::xds::json::from_json(&value).unwrap();
    compile(Some(&pb), "typed_config")
}

fn filter(action: &str, policies: serde_json::Value) -> Rbac {
    rbac(json!({"action": action, "policies": policies}))
        .unwrap()
        .unwrap()
}

fn peer(uri: &str) -> PeerNames {
    PeerNames {
        uris: vec![uri.to_string()],
        ..Default::default()
    }
}

struct Req {
    method: Method,
    path: &'static str,
    headers: HeaderMap,
}

fn req(method: Method, path: &'static str) -> Req {
    Req {
        method,
        path,
        headers: HeaderMap::new(),
    }
}

fn input<'a>(peer: Option<&'a PeerNames>, r: Option<&'a Req>) -> Input<'a> {
    Input {
        direct_remote: "10.1.2.3:40000".parse().unwrap(),
        remote: "10.1.2.3".parse().unwrap(),
        destination: "10.0.0.5:9080".parse().unwrap(),
        server_name: None,
        peer,
        request: r.map(|r| RequestView {
            method: &r.method,
            scheme: "http",
            authority: "reviews:9080",
            path: r.path,
            headers: &r.headers,
        }),
        metadata: None,
    }
}

fn principal_policy(principals: serde_json::Value) -> serde_json::Value {
    json!({"p": {"permissions": [{"any": true}], "principals": principals}})
}

#[test]
fn allow_without_policies_denies_everything() {
    let f = filter("ALLOW", json!({}));
    let r = req(Method::GET, "/");
    assert_eq!(f.evaluate(&input(None, Some(&r))), Verdict::Denied(None));
}

#[test]
fn allow_lets_only_matching_principals_through() {
    let f = filter(
        "ALLOW",
        principal_policy(
            json!([{"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/default/sa/client"}}}]),
        ),
    );
    let client = peer("spiffe://cluster.local/ns/default/sa/client");
    let other = peer("spiffe://cluster.local/ns/default/sa/other");
    let r = req(Method::GET, "/");
    assert_eq!(
        f.evaluate(&input(Some(&client), Some(&r))),
        Verdict::Allowed(Some("p".into()))
    );
    assert_eq!(
        f.evaluate(&input(Some(&other), Some(&r))),
        Verdict::Denied(None)
    );
    // Plaintext: no certificate, no principal.
    assert_eq!(f.evaluate(&input(None, Some(&r))), Verdict::Denied(None));
}

#[test]
fn namespace_regex_and_not_id() {
    let f = filter(
        "DENY",
        principal_policy(json!([{"andIds": {"ids": [
            {"authenticated": {"principalName": {"safeRegex": {"regex": ".*/ns/test/.*"}}}},
            {"notId": {"authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/test/sa/admin"}}}}
        ]}}])),
    );
    let r = req(Method::GET, "/");
    let tester = peer("spiffe://cluster.local/ns/test/sa/app");
    let admin = peer("spiffe://cluster.local/ns/test/sa/admin");
    let prod = peer("spiffe://cluster.local/ns/prod/sa/app");
    assert!(matches!(
        f.evaluate(&input(Some(&tester), Some(&r))),
        Verdict::Denied(Some(_))
    ));
    assert_eq!(
        f.evaluate(&input(Some(&admin), Some(&r))),
        Verdict::Allowed(None)
    );
    assert_eq!(
        f.evaluate(&input(Some(&prod), Some(&r))),
        Verdict::Allowed(None)
    );
}

#[test]
fn permissions_on_method_path_and_port() {
    let f = filter(
        "ALLOW",
        json!({"read": {"principals": [{"any": true}], "permissions": [{"andRules": {"rules": [
            {"header": {"name": ":method", "stringMatch": {"exact": "GET"}}},
            {"urlPath": {"path": {"prefix": "/api/"}}},
            {"destinationPort": 9080}
        ]}}]}}),
    );
    let get = req(Method::GET, "/api/items?x=1");
    let post = req(Method::POST, "/api/items");
    let other = req(Method::GET, "/admin");
    assert!(matches!(
        f.evaluate(&input(None, Some(&get))),
        Verdict::Allowed(_)
    ));
    assert_eq!(f.evaluate(&input(None, Some(&post))), Verdict::Denied(None));
    assert_eq!(
        f.evaluate(&input(None, Some(&other))),
        Verdict::Denied(None)
    );
    // On the network filter request conditions never match.
    assert_eq!(f.evaluate(&input(None, None)), Verdict::Denied(None));
}

#[test]
fn url_path_ignores_the_query_string() {
    let f = filter(
        "DENY",
        json!({"p": {"principals": [{"any": true}], "permissions": [{"urlPath": {"path": {"exact": "/admin"}}}]}}),
    );
    let r = req(Method::GET, "/admin?debug=1");
    assert!(matches!(
        f.evaluate(&input(None, Some(&r))),
        Verdict::Denied(_)
    ));
}

#[test]
fn ip_blocks_and_destination() {
    let f = filter(
        "DENY",
        json!({"p": {
            "permissions": [{"destinationIp": {"addressPrefix": "10.0.0.0", "prefixLen": 24}}],
            "principals": [{"directRemoteIp": {"addressPrefix": "10.1.0.0", "prefixLen": 16}}]
        }}),
    );
    assert!(matches!(f.evaluate(&input(None, None)), Verdict::Denied(_)));
    let g = filter(
        "DENY",
        json!({"p": {"permissions": [{"any": true}], "principals": [{"remoteIp": {"addressPrefix": "192.168.0.1"}}]}}),
    );
    assert_eq!(g.evaluate(&input(None, None)), Verdict::Allowed(None));
}

#[test]
fn jwt_metadata_matches_the_verified_payload() {
    use crate::runtime::metadata::Metadata;
    let f = filter(
        "ALLOW",
        principal_policy(
            json!([{"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}, {"key": "sub"}], "value": {"stringMatch": {"exact": "alice"}}}}]),
        ),
    );
    let r = req(Method::GET, "/");
    // No token verified: nothing to match.
    assert_eq!(f.evaluate(&input(None, Some(&r))), Verdict::Denied(None));
    let mut md = Metadata::default();
    md.insert(
        "envoy.filters.http.jwt_authn",
        "payload",
        json!({"sub": "alice"}),
    );
    let with = Input {
        metadata: Some(&md),
        ..input(None, Some(&r))
    };
    assert_eq!(f.evaluate(&with), Verdict::Allowed(Some("p".into())));
    let mut other = Metadata::default();
    other.insert(
        "envoy.filters.http.jwt_authn",
        "payload",
        json!({"sub": "mallory"}),
    );
    let with = Input {
        metadata: Some(&other),
        ..input(None, Some(&r))
    };
    assert_eq!(f.evaluate(&with), Verdict::Denied(None));
}

#[test]
fn log_never_refuses_and_deny_runs_first() {
    let log = filter("LOG", principal_policy(json!([{"any": true}])));
    let r = req(Method::GET, "/");
    assert_eq!(
        log.evaluate(&input(None, Some(&r))),
        Verdict::Allowed(Some("p".into()))
    );
    let deny = std::sync::Arc::new(filter("DENY", principal_policy(json!([{"any": true}]))));
    let allow = std::sync::Arc::new(filter("ALLOW", principal_policy(json!([{"any": true}]))));
    assert!(matches!(
        check(&[deny, allow.clone()], &input(None, Some(&r))),
        Verdict::Denied(Some(_))
    ));
    assert_eq!(
        check(&[allow], &input(None, Some(&r))),
        Verdict::Allowed(None)
    );
}

#[test]
fn unsupported_conditions_are_refused_with_their_field() {
    let err = rbac(json!({"action": "ALLOW", "policies": {"p": {
        "permissions": [{"any": true}], "principals": [{"any": true}],
        "condition": {"constExpr": {"boolValue": true}}}}}))
    .unwrap_err();
    assert_eq!(err.field, "typed_config.rules.policies[p].condition");
    let err = rbac(json!({"action": "DENY", "policies": {"p": {
        "permissions": [{"orRules": {"rules": [{"destinationPort": 70000}]}}], "principals": [{"any": true}]}}}))
    .unwrap_err();
    assert_eq!(
        err.field,
        "typed_config.rules.policies[p].permissions[0].or_rules.rules[0].destination_port"
    );
}

#[test]
fn missing_rules_mean_no_filter() {
    assert!(compile(None, "x").unwrap().is_none());
}

#[test]
fn shadow_rules_are_reported_never_enforced() {
    let shadow: PbRbac = mesh_api::xds::json::from_json(&json!({
        "action": "DENY",
        "policies": {"ns[default]-policy[dry]-rule[0]": {
            "permissions": [{"urlPath": {"path": {"prefix": "/admin"}}}],
            "principals": [{"any": true}],
        }},
    }))
    .unwrap();
    let f = compile_filter(None, Some(&shadow), "istio_dry_run_deny_", "typed_config").unwrap();
    assert!(f.rules.is_none(), "nothing enforced");
    let admin = req(Method::GET, "/admin/x");
    let other = req(Method::GET, "/");
    let would_deny = f.shadow(&input(None, Some(&admin))).unwrap();
    assert_eq!(
        would_deny,
        ShadowResult {
            policy: Some("ns[default]-policy[dry]-rule[0]".into()),
            allowed: false
        }
    );
    let mut metadata = Metadata::default();
    f.record_shadow(&would_deny, "envoy.filters.http.rbac", &mut metadata);
    assert_eq!(
        metadata.as_json()["envoy.filters.http.rbac"],
        json!({
            "istio_dry_run_deny_shadow_effective_policy_id": "ns[default]-policy[dry]-rule[0]",
            "istio_dry_run_deny_shadow_engine_result": "denied",
        })
    );
    // No match: allowed, and no policy id written (Envoy writes the id only
    // for a matched policy).
    let passes = f.shadow(&input(None, Some(&other))).unwrap();
    assert_eq!(
        passes,
        ShadowResult {
            policy: None,
            allowed: true
        }
    );
    let mut metadata = Metadata::default();
    f.record_shadow(&passes, "envoy.filters.http.rbac", &mut metadata);
    assert_eq!(
        metadata.as_json()["envoy.filters.http.rbac"],
        json!({"istio_dry_run_deny_shadow_engine_result": "allowed"})
    );
    // An ALLOW shadow engine with no match would deny.
    let allow: PbRbac =
        mesh_api::xds::json::from_json(&json!({"action": "ALLOW", "policies": {}})).unwrap();
    let f = compile_filter(None, Some(&allow), "istio_dry_run_allow_", "typed_config").unwrap();
    assert!(!f.shadow(&input(None, Some(&other))).unwrap().allowed);
}
