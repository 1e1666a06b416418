//! CUSTOM AuthorizationPolicies: the shadow RBAC + ext_authz pairs, their
//! place among the other filters, and the deny configs for unusable
//! providers. Expected values follow Istio's builder testdata
//! (`custom-http-provider`, `custom-grpc-provider`, `custom-bad-*`,
//! `tcp/custom-*`) with the same MeshConfig providers.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use mesh_api::mesh_config::{MeshConfig, parse_mesh_config};
use mesh_api::xds::json::to_json;
use serde_json::{Value, json};

use super::ext_authz::{ProviderError, Providers};
use super::*;

const SERVICE: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: my-custom-ext-authz, namespace: foo}\nspec:\n  clusterIP: 10.96.0.50\n  ports: [{name: grpc, port: 9000}, {name: http, port: 8000}]\n";
const HOST: &str = "my-custom-ext-authz.foo.svc.cluster.local";
const CLUSTER: &str = "outbound|9000||my-custom-ext-authz.foo.svc.cluster.local";

/// Istio's `meshConfigHTTP`.
const MESH_HTTP: &str = r#"
extensionProviders:
- name: default
  envoyExtAuthzHttp:
    service: foo/my-custom-ext-authz.foo.svc.cluster.local
    port: 9000
    timeout: 10s
    failOpen: true
    statusOnError: "403"
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-custom-id, x-prefix-*, "*-suffix"]
    includeHeadersInCheck: [should-not-include-when-IncludeRequestHeadersInCheck-is-set]
    includeAdditionalHeadersInCheck: {x-header-2: value-2, x-header-1: value-1}
    includeRequestBodyInCheck: {maxRequestBytes: 2048, allowPartialMessage: true, packAsBytes: true}
    headersToUpstreamOnAllow: [Authorization, x-prefix-*, "*-suffix"]
    headersToDownstreamOnDeny: [Set-cookie, x-prefix-*, "*-suffix"]
    headersToDownstreamOnAllow: [Set-cookie, x-prefix-*, "*-suffix"]
"#;

/// Istio's `meshConfigGRPC`.
const MESH_GRPC: &str = r#"
extensionProviders:
- name: default
  envoyExtAuthzGrpc:
    service: foo/my-custom-ext-authz.foo.svc.cluster.local
    port: 9000
    timeout: 2ms
    failOpen: true
    statusOnError: "403"
    includeRequestBodyInCheck: {maxRequestBytes: 4096, allowPartialMessage: true}
"#;

/// Istio's `meshConfigInvalid`.
const MESH_INVALID: &str = r#"
extensionProviders:
- name: default
  envoyExtAuthzHttp:
    service: foo/my-custom-ext-authz
    port: 999999
    pathPrefix: check
    statusOnError: "999"
"#;

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

/// MeshConfig from YAML, validation findings ignored (translation must
/// cope with what validation would refuse).
fn mesh(yaml: &str) -> MeshConfig {
    parse_mesh_config(yaml).0.unwrap()
}

fn snapshot(yaml: &str, mesh_yaml: &str) -> Snapshot {
    let loaded = mesh_api::load_str("t.yaml", &format!("{SERVICE}{yaml}"));
    for l in &loaded {
        assert!(l.object.is_some(), "{:?}", l.report.diagnostics);
    }
    Snapshot::build(1, &loaded, mesh(mesh_yaml))
}

fn httpbin() -> ProxyInfo {
    ProxyInfo::sidecar(
        "httpbin-0",
        "foo",
        "10.0.0.1".parse::<IpAddr>().unwrap(),
        &[("app", "httpbin"), ("version", "v1")],
    )
}

/// A policy in `foo` selecting httpbin.
fn ap(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: foo}}\nspec: {{selector: {{matchLabels: {{app: httpbin, version: v1}}}}, {spec}}}\n"
    )
}

fn custom(name: &str, provider: &str, path: &str) -> String {
    ap(
        name,
        &format!(
            "action: CUSTOM, provider: {{name: {provider}}}, rules: [{{to: [{{operation: {{paths: [\"{path}\"]}}}}]}}]"
        ),
    )
}

/// Istio's `custom-simple-http-in.yaml`.
fn simple(provider2: &str) -> String {
    custom("httpbin-1", "default", "/httpbin1") + &custom("httpbin-2", provider2, "/httpbin2")
}

/// `(name, typed config)` of each filter.
type Named = Vec<(String, Value)>;

/// Every HTTP and network filter.
fn filters(yaml: &str, mesh_yaml: &str) -> (Named, Named) {
    let rbac = InboundRbac::of(&snapshot(yaml, mesh_yaml), &httpbin());
    let http = rbac
        .http
        .iter()
        .map(|f| (f.name.clone(), to_json(f).unwrap()["typedConfig"].clone()))
        .collect();
    let network = rbac
        .network
        .iter()
        .map(|f| (f.name.clone(), to_json(f).unwrap()["typedConfig"].clone()))
        .collect();
    (http, network)
}

fn names(filters: &[(String, Value)]) -> Vec<&str> {
    filters.iter().map(|(n, _)| n.as_str()).collect()
}

fn path_policy(path: &str) -> Value {
    json!({
        "permissions": [{"andRules": {"rules": [{"orRules": {"rules": [
            {"urlPath": {"path": {"exact": path}}}
        ]}}]}}],
        "principals": [{"any": true}]
    })
}

fn enabled_by(filter: &str) -> Value {
    json!({
        "filter": filter,
        "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
        "value": {"stringMatch": {"prefix": "istio-ext-authz-default"}}
    })
}

fn ci(pattern: &str, value: &str) -> Value {
    json!({pattern: value, "ignoreCase": true})
}

const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const HTTP_EXT_AUTHZ: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const NETWORK_EXT_AUTHZ: &str =
    "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";

/// The shadow RBAC filter of Istio's `custom-*-provider-out1.yaml`.
fn shadow_of_simple() -> Value {
    json!({
        "@type": HTTP_RBAC,
        "shadowRules": {"action": "DENY", "policies": {
            "istio-ext-authz-default-ns[foo]-policy[httpbin-1]-rule[0]": path_policy("/httpbin1"),
            "istio-ext-authz-default-ns[foo]-policy[httpbin-2]-rule[0]": path_policy("/httpbin2"),
        }},
        "shadowRulesStatPrefix": "istio_ext_authz_"
    })
}

// === Usable providers ===

#[test]
fn custom_http_provider() {
    let (http, network) = filters(&simple("default"), MESH_HTTP);
    assert_eq!(names(&http), [HTTP_RBAC_FILTER, HTTP_EXT_AUTHZ_FILTER]);
    assert_eq!(http[0].1, shadow_of_simple());
    let headers = |first: &str| json!({"patterns": [ci("exact", first), ci("prefix", "x-prefix-"), ci("suffix", "-suffix")]});
    assert_eq!(
        http[1].1,
        json!({
            "@type": HTTP_EXT_AUTHZ,
            "allowedHeaders": headers("x-custom-id"),
            "failureModeAllow": true,
            "filterEnabledMetadata": enabled_by(HTTP_RBAC_FILTER),
            "httpService": {
                "authorizationRequest": {"headersToAdd": [
                    {"key": "x-header-1", "value": "value-1"},
                    {"key": "x-header-2", "value": "value-2"},
                ]},
                "authorizationResponse": {
                    "allowedClientHeaders": headers("Set-cookie"),
                    "allowedClientHeadersOnSuccess": headers("Set-cookie"),
                    "allowedUpstreamHeaders": headers("Authorization"),
                },
                "pathPrefix": "/check",
                "serverUri": {"cluster": CLUSTER, "timeout": "10s", "uri": format!("http://{HOST}")},
            },
            "statusOnError": {"code": "Forbidden"},
            "transportApiVersion": "V3",
            "withRequestBody": {"allowPartialMessage": true, "maxRequestBytes": 2048, "packAsBytes": true},
        })
    );
    // An HTTP provider does not apply to TCP chains (Istio's
    // `tcp/custom-only-http`): no filter there at all.
    assert!(network.is_empty(), "{network:?}");
}

#[test]
fn custom_grpc_provider() {
    let (http, network) = filters(&simple("default"), MESH_GRPC);
    assert_eq!(names(&http), [HTTP_RBAC_FILTER, HTTP_EXT_AUTHZ_FILTER]);
    assert_eq!(http[0].1, shadow_of_simple());
    let grpc =
        json!({"envoyGrpc": {"authority": HOST, "clusterName": CLUSTER}, "timeout": "0.002s"});
    assert_eq!(
        http[1].1,
        json!({
            "@type": HTTP_EXT_AUTHZ,
            "failureModeAllow": true,
            "filterEnabledMetadata": enabled_by(HTTP_RBAC_FILTER),
            "grpcService": grpc,
            "statusOnError": {"code": "Forbidden"},
            "transportApiVersion": "V3",
            "withRequestBody": {"allowPartialMessage": true, "maxRequestBytes": 4096},
        })
    );
    assert_eq!(
        names(&network),
        [NETWORK_RBAC_FILTER, NETWORK_EXT_AUTHZ_FILTER]
    );
    assert_eq!(
        network[1].1,
        json!({
            "@type": NETWORK_EXT_AUTHZ,
            "failureModeAllow": true,
            "filterEnabledMetadata": enabled_by(NETWORK_RBAC_FILTER),
            "grpcService": grpc,
            "statPrefix": "tcp.",
            "transportApiVersion": "V3",
        })
    );
}

#[test]
fn tcp_chain_with_a_grpc_provider_keeps_the_rules_minus_http_fields() {
    // From Istio's `tcp/custom-both-http-tcp`: a CUSTOM rule is a DENY
    // rule for translation, so on TCP it loses its HTTP fields.
    let yaml = ap(
        "httpbin-deny",
        "action: CUSTOM, provider: {name: default}, rules: [{to: [{operation: {methods: [GET]}}]}, {from: [{source: {ipBlocks: [1.2.3.4]}}], to: [{operation: {ports: [\"80\"]}}]}]",
    );
    let (_, network) = filters(&yaml, MESH_GRPC);
    assert_eq!(
        names(&network),
        [NETWORK_RBAC_FILTER, NETWORK_EXT_AUTHZ_FILTER]
    );
    assert_eq!(
        network[0].1,
        json!({
            "@type": NETWORK_RBAC,
            "shadowRules": {"action": "DENY", "policies": {
                "istio-ext-authz-default-ns[foo]-policy[httpbin-deny]-rule[0]": {
                    "permissions": [{"any": true}],
                    "principals": [{"any": true}]
                },
                "istio-ext-authz-default-ns[foo]-policy[httpbin-deny]-rule[1]": {
                    "permissions": [{"andRules": {"rules": [{"orRules": {"rules": [{"destinationPort": 80}]}}]}}],
                    "principals": [{"andIds": {"ids": [{"orIds": {"ids": [
                        {"directRemoteIp": {"addressPrefix": "1.2.3.4", "prefixLen": 32}}
                    ]}}]}}]
                },
            }},
            "shadowRulesStatPrefix": "istio_ext_authz_",
            "statPrefix": "tcp.",
        })
    );
}

#[test]
fn custom_comes_first_then_jwt_then_deny_and_allow() {
    let ra = format!(
        "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec: {{jwtRules: [{{issuer: \"https://a\", jwks: '{JWKS}'}}]}}\n"
    );
    let yaml = custom("ext", "default", "/ext")
        + &ap(
            "deny",
            "action: DENY, rules: [{to: [{operation: {paths: [\"/admin\"]}}]}]",
        )
        + &ap("allow", "rules: [{}]")
        + &ap("audit", "action: AUDIT, rules: [{}]")
        + &ra;
    let (http, network) = filters(&yaml, MESH_GRPC);
    assert_eq!(
        names(&http),
        [
            HTTP_RBAC_FILTER,
            HTTP_EXT_AUTHZ_FILTER,
            crate::xds::authn::JWT_AUTHN_FILTER,
            HTTP_RBAC_FILTER,
            HTTP_RBAC_FILTER,
            HTTP_RBAC_FILTER,
        ]
    );
    let action = |v: &Value| v["rules"]["action"].as_str().unwrap_or("ALLOW").to_string();
    assert!(http[0].1.get("rules").is_none());
    assert_eq!(
        [action(&http[3].1), action(&http[4].1), action(&http[5].1)],
        ["LOG", "DENY", "ALLOW"]
    );
    assert_eq!(
        names(&network),
        [
            NETWORK_RBAC_FILTER,
            NETWORK_EXT_AUTHZ_FILTER,
            NETWORK_RBAC_FILTER,
            NETWORK_RBAC_FILTER,
            NETWORK_RBAC_FILTER,
        ]
    );
}

// === Unusable providers: deny what the rules match ===

/// The enforcing DENY filter Istio emits instead (`custom-bad-out.yaml`).
fn deny_instead(type_url: &str, policies: &[(&str, &str)]) -> Value {
    let policies: serde_json::Map<String, Value> = policies
        .iter()
        .map(|(name, path)| {
            (
                format!("istio-ext-authz-{name}-deny-due-to-bad-CUSTOM-action"),
                path_policy(path),
            )
        })
        .collect();
    json!({"@type": type_url, "rules": {"action": "DENY", "policies": policies}})
}

#[test]
fn an_unknown_provider_denies_what_the_rules_match() {
    let (http, network) = filters(&simple("default"), "");
    assert_eq!(names(&http), [HTTP_RBAC_FILTER]);
    assert_eq!(
        http[0].1,
        deny_instead(
            HTTP_RBAC,
            &[
                ("default-ns[foo]-policy[httpbin-1]-rule[0]", "/httpbin1"),
                ("default-ns[foo]-policy[httpbin-2]-rule[0]", "/httpbin2"),
            ]
        )
    );
    // On TCP too (the paths are gone there: it denies every connection).
    assert_eq!(names(&network), [NETWORK_RBAC_FILTER]);
    assert_eq!(network[0].1["rules"]["action"], "DENY");
    assert_eq!(network[0].1["statPrefix"], "tcp.");
    assert_eq!(
        network[0].1["rules"]["policies"]["istio-ext-authz-default-ns[foo]-policy[httpbin-1]-rule[0]-deny-due-to-bad-CUSTOM-action"],
        json!({"permissions": [{"any": true}], "principals": [{"any": true}]})
    );
}

#[test]
fn an_invalid_provider_denies_what_the_rules_match() {
    // Istio's `custom-bad-invalid-config`.
    let (http, network) = filters(&simple("default"), MESH_INVALID);
    assert_eq!(
        http.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        [deny_instead(
            HTTP_RBAC,
            &[
                ("default-ns[foo]-policy[httpbin-1]-rule[0]", "/httpbin1"),
                ("default-ns[foo]-policy[httpbin-2]-rule[0]", "/httpbin2"),
            ]
        )]
    );
    assert_eq!(names(&network), [NETWORK_RBAC_FILTER]);
    let snap = snapshot("", MESH_INVALID);
    let providers = Providers::resolve(&snap);
    let Some((0, Err(errors))) = providers.get("default") else {
        panic!("provider should be invalid");
    };
    assert_eq!(
        errors,
        &[
            ProviderError::BadPort {
                kind: "envoyExtAuthzHttp",
                port: 999_999
            },
            ProviderError::UnknownService {
                kind: "envoyExtAuthzHttp",
                service: "foo/my-custom-ext-authz".into()
            },
            ProviderError::BadStatus {
                kind: "envoyExtAuthzHttp",
                value: "999".into()
            },
            ProviderError::BadPathPrefix {
                value: "check".into()
            },
        ]
    );
}

#[test]
fn two_providers_on_one_workload_deny_what_each_matches() {
    // Istio's `custom-bad-multiple-providers`: one filter per provider,
    // in name order, even for the provider that exists.
    let (http, network) = filters(&simple("another"), MESH_HTTP);
    assert_eq!(
        http.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        [
            deny_instead(
                HTTP_RBAC,
                &[("another-ns[foo]-policy[httpbin-2]-rule[0]", "/httpbin2")]
            ),
            deny_instead(
                HTTP_RBAC,
                &[("default-ns[foo]-policy[httpbin-1]-rule[0]", "/httpbin1")]
            ),
        ]
    );
    assert_eq!(names(&network), [NETWORK_RBAC_FILTER, NETWORK_RBAC_FILTER]);
}

// === Dry run ===

fn dry_custom(name: &str, path: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: foo, annotations: {{istio.io/dry-run: \"true\"}}}}\nspec: {{action: CUSTOM, provider: {{name: default}}, rules: [{{to: [{{operation: {{paths: [\"{path}\"]}}}}]}}]}}\n"
    )
}

#[test]
fn a_dry_run_custom_policy_is_neither_sent_nor_enforced() {
    let (http, network) = filters(&dry_custom("try", "/try"), MESH_GRPC);
    assert_eq!(names(&http), [HTTP_RBAC_FILTER, HTTP_EXT_AUTHZ_FILTER]);
    // Nothing to match: the ext_authz filter never runs, nothing denies.
    assert_eq!(
        http[0].1,
        json!({"@type": HTTP_RBAC, "shadowRules": {"action": "DENY"}, "shadowRulesStatPrefix": "istio_ext_authz_"})
    );
    assert_eq!(
        names(&network),
        [NETWORK_RBAC_FILTER, NETWORK_EXT_AUTHZ_FILTER]
    );
    assert!(network[0].1.get("rules").is_none());
    // Next to an enforced one, only the enforced one is marked.
    let (http, _) = filters(
        &(dry_custom("try", "/try") + &custom("ext", "default", "/ext")),
        MESH_GRPC,
    );
    assert_eq!(
        http[0].1["shadowRules"]["policies"],
        json!({"istio-ext-authz-default-ns[foo]-policy[ext]-rule[0]": path_policy("/ext")})
    );
    assert!(http[0].1.get("rules").is_none());
}

#[test]
fn a_dry_run_policy_of_another_provider_still_counts() {
    let other = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: try, namespace: foo, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: CUSTOM, provider: {name: other}, rules: [{}]}\n";
    let (http, _) = filters(&(custom("ext", "default", "/ext") + other), MESH_GRPC);
    // Two providers: deny filters, and the dry-run one denies nothing.
    assert_eq!(names(&http), [HTTP_RBAC_FILTER, HTTP_RBAC_FILTER]);
    assert_eq!(http[1].1["rules"]["action"], "DENY");
    assert_eq!(http[1].1["rules"].get("policies"), None);
    assert_eq!(
        http[0].1["rules"]["policies"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["istio-ext-authz-default-ns[foo]-policy[ext]-rule[0]-deny-due-to-bad-CUSTOM-action"]
    );
}

// === Provider resolution ===

fn resolve(providers_yaml: &str) -> Providers {
    Providers::resolve(&snapshot(
        "",
        &format!("extensionProviders:\n{providers_yaml}"),
    ))
}

fn errors_of<'a>(providers: &'a Providers, name: &str) -> &'a [ProviderError] {
    match providers.get(name) {
        Some((_, Err(e))) => e,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn the_service_is_looked_up_as_istio_does() {
    for (service, found) in [
        (HOST, true),
        ("foo/my-custom-ext-authz.foo.svc.cluster.local", true),
        ("bar/my-custom-ext-authz.foo.svc.cluster.local", false),
        ("my-custom-ext-authz", false),
        ("a/b/my-custom-ext-authz.foo.svc.cluster.local", false),
    ] {
        let p = resolve(&format!(
            "- name: p\n  envoyExtAuthzGrpc: {{service: \"{service}\", port: 9000}}\n"
        ));
        let (_, resolved) = p.get("p").unwrap();
        match resolved {
            Ok(ext) => {
                assert!(found, "{service}");
                assert_eq!(ext.cluster, CLUSTER);
                let config = to_json(&ext.http_filter_config("p")).unwrap();
                // Istio's default timeout; no status unless configured.
                assert_eq!(config["grpcService"]["timeout"], "600s", "{service}");
                assert!(config.get("statusOnError").is_none());
                assert!(config.get("failureModeAllow").is_none());
            }
            Err(e) => {
                assert!(!found, "{service}: {e:?}");
                assert!(matches!(e[..], [ProviderError::UnknownService { .. }]));
            }
        }
    }
}

#[test]
fn provider_names_must_be_unique_lowercase_dns_labels() {
    let svc = format!("{{service: {HOST}, port: 9000}}");
    let p = resolve(&format!(
        "- name: Opa\n  envoyExtAuthzGrpc: {svc}\n- name: -opa\n  envoyExtAuthzGrpc: {svc}\n- name: ok\n  envoyExtAuthzGrpc: {svc}\n- name: ok\n  envoyExtAuthzHttp: {svc}\n- envoyExtAuthzGrpc: {svc}\n- name: trace\n  zipkin: {svc}\n"
    ));
    assert!(matches!(
        errors_of(&p, "Opa"),
        [ProviderError::BadName { .. }]
    ));
    assert!(matches!(
        errors_of(&p, "-opa"),
        [ProviderError::BadName { .. }]
    ));
    // The second `ok` replaces the first, with its error.
    assert!(matches!(
        errors_of(&p, "ok"),
        [ProviderError::Duplicate { .. }]
    ));
    assert!(matches!(
        errors_of(&p, ""),
        [ProviderError::EmptyName { index: 4 }]
    ));
    // Tracing providers are not authorization providers.
    assert_eq!(p.names(), ["", "-opa", "Opa", "ok"]);
}

#[test]
fn values_envoy_would_refuse_make_the_provider_unusable() {
    let p = resolve(&format!(
        "- name: zero\n  envoyExtAuthzGrpc: {{service: {HOST}, port: 9000, statusOnError: \"0\"}}\n- name: body\n  envoyExtAuthzGrpc: {{service: {HOST}, port: 9000, includeRequestBodyInCheck: {{allowPartialMessage: true}}}}\n- name: star\n  envoyExtAuthzHttp: {{service: {HOST}, port: 8000, headersToUpstreamOnAllow: [\"*\"]}}\n- name: no-port\n  envoyExtAuthzHttp: {{service: {HOST}}}\n- name: both\n  envoyExtAuthzHttp: {{service: {HOST}, port: 8000}}\n  envoyExtAuthzGrpc: {{service: {HOST}, port: 9000}}\n- name: fine\n  envoyExtAuthzHttp: {{service: {HOST}, port: 8000, statusOnError: \"503\"}}\n"
    ));
    assert!(matches!(
        errors_of(&p, "zero"),
        [ProviderError::BadStatus { .. }]
    ));
    assert!(matches!(
        errors_of(&p, "body"),
        [ProviderError::NoBodyLimit { .. }]
    ));
    assert!(matches!(
        errors_of(&p, "star"),
        [ProviderError::Wildcard {
            field: "headersToUpstreamOnAllow"
        }]
    ));
    assert!(matches!(
        errors_of(&p, "no-port"),
        [ProviderError::BadPort { port: 0, .. }]
    ));
    assert!(matches!(errors_of(&p, "both"), [ProviderError::TwoKinds]));
    let Some((_, Ok(fine))) = p.get("fine") else {
        panic!("fine should resolve");
    };
    let config = to_json(&fine.http_filter_config("fine")).unwrap();
    assert_eq!(config["statusOnError"]["code"], "ServiceUnavailable");
    assert_eq!(
        config["httpService"]["serverUri"]["cluster"],
        "outbound|8000||my-custom-ext-authz.foo.svc.cluster.local"
    );
    assert_eq!(
        config["filterEnabledMetadata"]["value"]["stringMatch"]["prefix"],
        "istio-ext-authz-fine"
    );
    // HTTP providers have no TCP filter.
    assert!(fine.network_filter_config("fine").is_none());
}

#[test]
fn the_deprecated_header_list_counts_when_the_new_one_is_empty() {
    let p = resolve(&format!(
        "- name: old\n  envoyExtAuthzHttp: {{service: {HOST}, port: 8000, includeHeadersInCheck: [x-old]}}\n"
    ));
    let Some((_, Ok(old))) = p.get("old") else {
        panic!("old should resolve");
    };
    let config = to_json(&old.http_filter_config("old")).unwrap();
    assert_eq!(
        config["allowedHeaders"],
        json!({"patterns": [ci("exact", "x-old")]})
    );
    assert!(config["httpService"].get("authorizationRequest").is_none());
    assert!(config["httpService"].get("authorizationResponse").is_none());
}
