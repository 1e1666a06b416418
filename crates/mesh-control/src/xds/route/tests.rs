// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use mesh_api::mesh_config::MeshConfig;
use mesh_api::xds::json::to_json;
use serde_json::{Value, json};

use crate::proxy::ProxyInfo;
use crate::snapshot::Snapshot;
use crate::xds::ProxyScope;
use crate::xds::listener::build_listeners;
use crate::xds::route::build_routes;

pub(crate) const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  clusterIP: 10.96.0.11
  selector: {app: ratings}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: default}
spec:
  clusterIP: 10.96.0.12
  selector: {app: productpage}
  ports: [{name: http, port: 9080, targetPort: 9080}, {name: tcp-admin, port: 9999, targetPort: 9999}]
---
apiVersion: v1
kind: Service
metadata: {name: mongo, namespace: db}
spec:
  clusterIP: 10.96.0.20
  selector: {app: mongo}
  ports: [{name: tcp, port: 27017, targetPort: 27017}]
---
apiVersion: v1
kind: Pod
metadata: {name: productpage-v1, namespace: default, labels: {app: productpage, version: v1}}
spec: {containers: [{name: app, image: x}]}
status: {podIP: 10.1.0.31}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers: {end-user: {exact: jason}}
      uri: {prefix: /api}
      ignoreUriCase: true
    - queryParams: {debug: {exact: "1"}}
      withoutHeaders: {x-skip: {}}
      method: {exact: GET}
    route: [{destination: {host: reviews, subset: v2}}]
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,gateway-error,429", retryRemoteLocalities: true}
  - match: [{port: 1234, uri: {exact: /never}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - match: [{sourceLabels: {app: other}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - match: [{uri: {regex: "/v[0-9]+/.*"}}]
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 10}}
      abort: {httpStatus: 500, percentage: {value: 0.5}}
    retries: {attempts: 0}
    route:
    - {destination: {host: reviews, subset: v1}, weight: 75, headers: {request: {set: {x-canary: "no"}}}}
    - {destination: {host: reviews, subset: v3}, weight: 25}
    mirror: {host: ratings}
    mirrorPercentage: {value: 12.5}
  - route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v2}}]
"#;

pub(crate) fn clusters_for(snapshot: &Snapshot) -> Vec<Cluster> {
    let mut names = vec![
        "PassthroughCluster".to_string(),
        "BlackHoleCluster".into(),
        "InboundPassthroughCluster".into(),
    ];
    for svc in snapshot.registry.services.values() {
        for p in &svc.ports {
            for subset in ["", "v1", "v2", "v3"] {
                names.push(crate::xds::outbound_cluster_name(
                    p.port,
                    subset,
                    &svc.hostname,
                ));
            }
            names.push(crate::xds::inbound_cluster_name(p.port));
        }
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| Cluster {
            name,
            ..Default::default()
        })
        .collect()
}

pub(crate) fn translate(
    yaml: &str,
    proxy: &ProxyInfo,
) -> (Vec<Listener>, Vec<RouteConfiguration>, Vec<Cluster>) {
    let loaded = mesh_api::load_str("t.yaml", yaml);
    for l in &loaded {
        assert!(!l.report.has_errors(), "{:?}", l.report.diagnostics);
    }
    let snapshot = Snapshot::build(1, &loaded, MeshConfig::default());
    let clusters = clusters_for(&snapshot);
    let scope = ProxyScope::new(&snapshot, proxy);
    let listeners = build_listeners(&scope);
    let routes = build_routes(&scope, &listeners, &clusters);
    (listeners, routes, clusters)
}

pub(crate) fn sidecar() -> ProxyInfo {
    ProxyInfo::sidecar(
        "productpage-v1",
        "default",
        "10.1.0.31".parse::<IpAddr>().unwrap(),
        &[("app", "productpage"), ("version", "v1")],
    )
}

fn route_json(routes: &[RouteConfiguration], name: &str) -> Value {
    to_json(routes.iter().find(|r| r.name == name).unwrap()).unwrap()
}

fn vhost<'a>(rc: &'a Value, name: &str) -> &'a Value {
    rc["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap()
}

#[test]
fn sidecar_routes_by_port_with_domains_and_catch_all() {
    let (_, routes, _) = translate(MESH, &sidecar());
    assert_eq!(
        routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["9080"]
    );
    let rc = route_json(&routes, "9080");
    let ratings = vhost(&rc, "ratings.default.svc.cluster.local:9080");
    assert_eq!(
        ratings["domains"],
        json!([
            "ratings.default.svc.cluster.local",
            "ratings.default.svc.cluster.local:9080",
            "ratings",
            "ratings:9080",
            "ratings.default.svc",
            "ratings.default.svc:9080",
            "ratings.default",
            "ratings.default:9080",
            "10.96.0.11",
            "10.96.0.11:9080"
        ])
    );
    let default = &ratings["routes"][0];
    assert_eq!(default["name"], "default");
    assert_eq!(
        default["route"]["cluster"],
        "outbound|9080||ratings.default.svc.cluster.local"
    );
    assert_eq!(default["route"]["timeout"], "0s");
    assert_eq!(default["route"]["retryPolicy"]["numRetries"], 2);
    assert_eq!(
        default["route"]["retryPolicy"]["retriableStatusCodes"],
        json!([503])
    );
    assert_eq!(
        vhost(&rc, "allow_any")["routes"][0]["route"]["cluster"],
        "PassthroughCluster"
    );
}

#[test]
fn virtual_service_matches_weights_and_resilience() {
    let (_, routes, _) = translate(MESH, &sidecar());
    let rc = route_json(&routes, "9080");
    let r = vhost(&rc, "reviews.default.svc.cluster.local:9080")["routes"]
        .as_array()
        .unwrap()
        .clone();
    // Two matches of rule 1, rule 2 (port) and 3 (sourceLabels) skipped, rule 4, catch-all rule 5; rule 6 unreachable.
    assert_eq!(r.len(), 4, "{r:#?}");
    assert_eq!(r[0]["name"], "jason");
    assert_eq!(r[0]["match"]["prefix"], "/api");
    assert_eq!(r[0]["match"]["caseSensitive"], false);
    assert_eq!(
        r[0]["match"]["headers"][0],
        json!({"name": "end-user", "stringMatch": {"exact": "jason"}})
    );
    assert_eq!(
        r[0]["route"]["cluster"],
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(r[0]["route"]["timeout"], "2s");
    let retry = &r[0]["route"]["retryPolicy"];
    assert_eq!(retry["numRetries"], 3);
    assert_eq!(retry["retryOn"], "5xx,gateway-error,retriable-status-codes");
    assert_eq!(retry["retriableStatusCodes"], json!([429]));
    assert_eq!(retry["perTryTimeout"], "0.500s");
    assert_eq!(
        retry["retryPriority"]["name"],
        "envoy.retry_priorities.previous_priorities"
    );
    assert_eq!(
        r[1]["match"]["queryParameters"][0],
        json!({"name": "debug", "stringMatch": {"exact": "1"}})
    );
    assert_eq!(
        r[1]["match"]["headers"][0],
        json!({"name": ":method", "stringMatch": {"exact": "GET"}})
    );
    assert_eq!(
        r[1]["match"]["headers"][1],
        json!({"name": "x-skip", "presentMatch": true, "invertMatch": true})
    );
    assert_eq!(r[2]["match"]["safeRegex"]["regex"], "/v[0-9]+/.*");
    let weighted = &r[2]["route"]["weightedClusters"]["clusters"];
    assert_eq!(
        weighted[0]["name"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(weighted[0]["weight"], 75);
    assert_eq!(
        weighted[0]["requestHeadersToAdd"][0]["appendAction"],
        "OVERWRITE_IF_EXISTS_OR_ADD"
    );
    assert_eq!(weighted[1]["weight"], 25);
    assert!(
        r[2]["route"].get("retryPolicy").is_none(),
        "attempts: 0 disables retries"
    );
    let mirror = &r[2]["route"]["requestMirrorPolicies"][0];
    assert_eq!(
        mirror["cluster"],
        "outbound|9080||ratings.default.svc.cluster.local"
    );
    assert_eq!(
        mirror["runtimeFraction"]["defaultValue"],
        json!({"numerator": 125000, "denominator": "MILLION"})
    );
    let fault = &r[2]["typedPerFilterConfig"]["envoy.filters.http.fault"];
    assert_eq!(fault["delay"]["fixedDelay"], "7s");
    assert_eq!(
        fault["delay"]["percentage"],
        json!({"numerator": 100000, "denominator": "MILLION"})
    );
    assert_eq!(fault["abort"]["httpStatus"], 500);
    assert_eq!(r[3]["match"], json!({"prefix": "/"}));
    assert_eq!(
        r[3]["route"]["cluster"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
}

#[test]
fn missing_cluster_answers_503() {
    let yaml = format!(
        "{MESH}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings, namespace: default}}\nspec:\n  hosts: [ratings]\n  http:\n  - route: [{{destination: {{host: ratings, subset: nope}}}}]\n"
    );
    let (_, routes, _) = translate(&yaml, &sidecar());
    let rc = route_json(&routes, "9080");
    let r = &vhost(&rc, "ratings.default.svc.cluster.local:9080")["routes"][0];
    assert_eq!(r["directResponse"]["status"], 503);
}

#[test]
fn registry_only_blocks_unknown_hosts() {
    let yaml = format!(
        "{MESH}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: default}}\nspec:\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n"
    );
    let (listeners, routes, _) = translate(&yaml, &sidecar());
    let rc = route_json(&routes, "9080");
    assert_eq!(
        vhost(&rc, "block_all")["routes"][0]["directResponse"]["status"],
        502
    );
    let vo = to_json(
        listeners
            .iter()
            .find(|l| l.name == "virtualOutbound")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        vo["filterChains"][1]["filters"][0]["typedConfig"]["cluster"],
        "BlackHoleCluster"
    );
}

pub(crate) const REWRITES: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  http:
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: example.com, redirectCode: 302, derivePort: FROM_REQUEST_PORT, scheme: https}
  - match: [{uri: {prefix: /legacy}}]
    rewrite: {uri: /v2, authority: ratings.internal}
    headers:
      request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
      response: {remove: [server]}
    route: [{destination: {host: ratings}}]
  - match: [{uri: {exact: /exact}}]
    rewrite: {uri: /other}
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /re}}]
    rewrite: {uriRegexRewrite: {match: "^/re/(.*)$", rewrite: "/\\1"}}
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - match: [{uri: {prefix: /bytes}}]
    directResponse: {status: 200, body: {bytes: "aGVsbG8="}}
  - match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {regex: "https://.*\\.b\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE}}
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /d}}]
    delegate: {name: ratings-delegate}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-delegate, namespace: default}
spec:
  http:
  - match: [{uri: {prefix: /d/one}}, {headers: {x-d: {exact: "1"}}}]
    route: [{destination: {host: ratings, subset: v1}}]
"#;

#[test]
fn rewrites_redirects_headers_cors_and_delegates() {
    let (_, routes, _) = translate(&format!("{MESH}{REWRITES}"), &sidecar());
    let rc = route_json(&routes, "9080");
    let r = vhost(&rc, "ratings.default.svc.cluster.local:9080")["routes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        r[0]["redirect"],
        json!({"pathRedirect": "/new", "hostRedirect": "example.com", "portRedirect": 9080, "responseCode": "FOUND", "schemeRedirect": "https"})
    );
    assert_eq!(r[1]["route"]["prefixRewrite"], "/v2");
    assert_eq!(r[1]["route"]["hostRewriteLiteral"], "ratings.internal");
    assert_eq!(r[1]["requestHeadersToAdd"].as_array().unwrap().len(), 2);
    assert_eq!(
        r[1]["requestHeadersToAdd"][1]["appendAction"],
        json!(null),
        "add is Envoy's default APPEND_IF_EXISTS_OR_ADD"
    );
    assert_eq!(r[1]["requestHeadersToRemove"], json!(["x-c"]));
    assert_eq!(r[1]["responseHeadersToRemove"], json!(["server"]));
    assert_eq!(
        r[2]["route"]["regexRewrite"],
        json!({"pattern": {"regex": "^/exact$"}, "substitution": "/other"})
    );
    assert_eq!(r[3]["route"]["regexRewrite"]["substitution"], "/\\1");
    assert_eq!(
        r[4]["directResponse"],
        json!({"status": 418, "body": {"inlineString": "short and stout"}})
    );
    assert_eq!(r[5]["directResponse"]["body"]["inlineBytes"], "aGVsbG8=");
    let cors = &r[6]["typedPerFilterConfig"]["envoy.filters.http.cors"];
    assert_eq!(cors["allowMethods"], "GET,POST");
    assert_eq!(cors["maxAge"], "86400");
    assert_eq!(
        cors["allowOriginStringMatch"][1]["safeRegex"]["regex"],
        "https://.*\\.b\\.example"
    );
    assert_eq!(
        r[7]["typedPerFilterConfig"]["envoy.filters.http.fault"]["abort"]["grpcStatus"],
        14
    );
    // The delegate's matches replace the root's where both set the same field.
    assert_eq!(r[8]["match"]["prefix"], "/d/one");
    assert_eq!(r[9]["match"]["prefix"], "/d");
    assert_eq!(r[9]["match"]["headers"][0]["name"], "x-d");
    assert_eq!(
        r[9]["route"]["cluster"],
        "outbound|9080|v1|ratings.default.svc.cluster.local"
    );
}
