use super::*;
use crate::runtime::test_support::golden;
use http::{HeaderMap, HeaderName, Method};
use serde_json::json;
use test_case::test_case;

fn table(value: serde_json::Value) -> FieldResult<RouteTable> {
    let rc: RouteConfiguration = mesh_api::xds::json::from_json(&value).unwrap();
    compile(&rc)
}

fn vhosts() -> RouteTable {
    let vh = |name: &str, domains: &[&str]| json!({"name": name, "domains": domains, "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 200}}]});
    table(json!({"name": "80", "virtualHosts": [
        vh("exact", &["reviews", "reviews:9080", "Mixed.Example.com"]),
        vh("suffix", &["*.example.com"]),
        vh("longer-suffix", &["*.api.example.com"]),
        vh("prefix", &["foo.*"]),
        vh("port-wildcard", &["gateway.io:*"]),
        vh("default", &["*"]),
    ]}))
    .unwrap()
}

#[test_case("reviews", "exact"; "exact without port")]
#[test_case("reviews:9080", "exact"; "exact with port")]
#[test_case("REVIEWS", "exact"; "case insensitive")]
#[test_case("mixed.example.com", "exact"; "exact beats wildcard")]
#[test_case("reviews:8080", "default"; "other port falls to default")]
#[test_case("a.example.com", "suffix"; "suffix")]
#[test_case("v1.api.example.com", "longer-suffix"; "longest suffix wins")]
#[test_case("example.com", "default"; "wildcard needs a label")]
#[test_case("foo.bar", "prefix"; "prefix")]
#[test_case("gateway.io:8080", "port-wildcard"; "port wildcard")]
#[test_case("gateway.io", "default"; "port wildcard needs a port")]
#[test_case("unknown", "default"; "default")]
fn virtual_host_by_host(host: &str, expected: &str) {
    assert_eq!(vhosts().virtual_host(host).unwrap().name, expected);
}

#[test]
fn no_default_means_no_virtual_host() {
    let t = table(json!({"name": "80", "virtualHosts": [
        {"name": "a", "domains": ["a"], "routes": []}
    ]}))
    .unwrap();
    assert!(t.virtual_host("b").is_none());
}

#[test]
fn ignore_port_in_host_matching() {
    let t = table(
        json!({"name": "80", "ignorePortInHostMatching": true, "virtualHosts": [
            {"name": "a", "domains": ["a"], "routes": []}
        ]}),
    )
    .unwrap();
    assert_eq!(t.virtual_host("a:9080").unwrap().name, "a");
}

#[test_case("example.com:80", "example.com"; "name")]
#[test_case("10.0.0.1:80", "10.0.0.1"; "ipv4")]
#[test_case("[::1]:80", "[::1]"; "ipv6")]
#[test_case("::1", "::1"; "bare ipv6")]
#[test_case("example.com", "example.com"; "no port")]
fn strips_ports(host: &str, expected: &str) {
    assert_eq!(strip_port(host), expected);
}

fn routes(routes: serde_json::Value) -> RouteTable {
    table(
        json!({"name": "80", "virtualHosts": [{"name": "vh", "domains": ["*"], "routes": routes}]}),
    )
    .unwrap()
}

fn matched<'a>(
    t: &'a RouteTable,
    method: &Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<&'a str> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let view = RequestView {
        method,
        scheme: "http",
        authority: "reviews:9080",
        path,
        headers: &map,
    };
    t.virtual_host("x")
        .unwrap()
        .route(&view, None)
        .map(|r| r.name.as_str())
}

fn direct(name: &str, m: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "match": m, "directResponse": {"status": 200}})
}

#[test_case("/api/v1", &[], Some("exact"); "exact path")]
#[test_case("/api/v1?x=1", &[], Some("exact"); "exact ignores query")]
#[test_case("/API/V2", &[], Some("insensitive"); "case insensitive prefix")]
#[test_case("/re/123", &[], Some("regex"); "regex")]
#[test_case("/re/12a", &[], Some("fallback"); "regex must match whole path")]
#[test_case("/sep", &[], Some("separated"); "separated prefix exact")]
#[test_case("/sep/x", &[], Some("separated"); "separated prefix child")]
#[test_case("/sepx", &[], Some("fallback"); "separated prefix needs separator")]
#[test_case("/team", &[("x-team", "beta")], Some("header"); "header")]
#[test_case("/team", &[("x-team", "alpha")], Some("fallback"); "header miss")]
#[test_case("/q?user=jason", &[], Some("query"); "query")]
#[test_case("/q?user=bob", &[], Some("fallback"); "query miss")]
#[test_case("/grpc", &[("content-type", "application/grpc")], Some("grpc"); "grpc")]
#[test_case("/grpc", &[], Some("fallback"); "grpc needs content type")]
fn routes_first_match_wins(path: &str, headers: &[(&str, &str)], expected: Option<&str>) {
    let t = routes(json!([
        direct("exact", json!({"path": "/api/v1"})),
        direct(
            "insensitive",
            json!({"prefix": "/api/", "caseSensitive": false})
        ),
        direct("regex", json!({"safeRegex": {"regex": "/re/[0-9]+"}})),
        direct("separated", json!({"pathSeparatedPrefix": "/sep"})),
        direct(
            "header",
            json!({"prefix": "/team", "headers": [{"name": "x-team", "stringMatch": {"exact": "beta"}}]})
        ),
        direct(
            "query",
            json!({"prefix": "/q", "queryParameters": [{"name": "user", "stringMatch": {"exact": "jason"}}]})
        ),
        direct("grpc", json!({"prefix": "/grpc", "grpc": {}})),
        direct("fallback", json!({"prefix": "/"})),
    ]));
    assert_eq!(matched(&t, &Method::GET, path, headers), expected);
}

#[test]
fn method_matches_through_pseudo_header() {
    let t = routes(json!([direct(
        "post",
        json!({"prefix": "/", "headers": [{"name": ":method", "stringMatch": {"exact": "POST"}}]})
    ),]));
    assert_eq!(matched(&t, &Method::POST, "/", &[]), Some("post"));
    assert_eq!(matched(&t, &Method::GET, "/", &[]), None);
}

#[test_case(
    json!([{"match": {"safeRegex": {"regex": "a("}}, "directResponse": {"status": 200}}]),
    "virtual_hosts[0].routes[0].match.safe_regex.regex";
    "bad path regex"
)]
#[test_case(
    json!([{"match": {"prefix": "/"}}, {"match": {"prefix": "/"}, "route": {}}]),
    "virtual_hosts[0].routes[0]";
    "route without action"
)]
#[test_case(
    json!([{"match": {"prefix": "/"}, "directResponse": {"status": 200}}, {"match": {"prefix": "/"}, "route": {}}]),
    "virtual_hosts[0].routes[1].route.cluster_specifier";
    "route action without target"
)]
#[test_case(
    json!([{"match": {"prefix": "/"}, "route": {"weightedClusters": {"clusters": [{"name": "a", "weight": 0}]}}}]),
    "virtual_hosts[0].routes[0].route.weighted_clusters.clusters";
    "zero total weight"
)]
#[test_case(
    json!([{"match": {"prefix": "/", "headers": [{"name": "x", "safeRegexMatch": {"regex": "("}}]}, "directResponse": {"status": 200}}]),
    "virtual_hosts[0].routes[0].match.headers[0].safe_regex_match.regex";
    "bad header regex"
)]
#[test_case(
    json!([{"match": {"prefix": "/"}, "route": {"cluster": "c", "regexRewrite": {"pattern": {"regex": "["}, "substitution": "x"}}}]),
    "virtual_hosts[0].routes[0].route.regex_rewrite.pattern.regex";
    "bad rewrite regex"
)]
#[test_case(
    json!([{"match": {"prefix": "/"}, "route": {"cluster": "c", "retryPolicy": {"retryOn": "sometimes"}}}]),
    "virtual_hosts[0].routes[0].route.retry_policy.retry_on";
    "bad retry condition"
)]
fn refuses_with_field_path(routes: serde_json::Value, field: &str) {
    let err = table(
        json!({"name": "80", "virtualHosts": [{"name": "vh", "domains": ["*"], "routes": routes}]}),
    )
    .unwrap_err();
    assert_eq!(err.field, field, "{err:?}");
}

#[test]
fn duplicate_domains_are_refused() {
    let err = table(json!({"name": "80", "virtualHosts": [
        {"name": "a", "domains": ["a"]},
        {"name": "b", "domains": ["b", "A"]},
    ]}))
    .unwrap_err();
    assert_eq!(err.field, "virtual_hosts[1].domains[1]");
}

#[test]
fn golden_route_configurations_compile() {
    for (path, rc) in golden("routes") {
        table(rc).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    }
}
