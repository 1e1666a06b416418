use super::*;
use crate::runtime::test_support::golden;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use serde_json::json;
use test_case::test_case;

fn listener(value: serde_json::Value) -> FieldResult<Listener> {
    let l: PbListener = mesh_api::xds::json::from_json(&value).unwrap();
    compile(&l)
}

fn tcp(cluster: &str) -> serde_json::Value {
    json!([{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "statPrefix": cluster, "cluster": cluster}}])
}

fn chain(name: &str, m: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "filterChainMatch": m, "filters": tcp(name)})
}

fn sample() -> Listener {
    listener(json!({
        "name": "l",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15006}},
        "filterChains": [
            chain("port-9080", json!({"destinationPort": 9080})),
            chain("port-9080-tls", json!({"destinationPort": 9080, "transportProtocol": "tls"})),
            chain("port-9080-tls-istio", json!({"destinationPort": 9080, "transportProtocol": "tls", "applicationProtocols": ["istio-peer-exchange", "istio"]})),
            chain("sni-exact", json!({"destinationPort": 8443, "serverNames": ["a.example.com"]})),
            chain("sni-wildcard", json!({"destinationPort": 8443, "serverNames": ["*.example.com"]})),
            chain("ip-10", json!({"prefixRanges": [{"addressPrefix": "10.0.0.0", "prefixLen": 8}]})),
            chain("ip-10-1", json!({"prefixRanges": [{"addressPrefix": "10.1.0.0", "prefixLen": 16}]})),
            chain("any", json!({})),
        ],
    }))
    .unwrap()
}

fn select(
    l: &Listener,
    dest: &str,
    sni: Option<&str>,
    transport: &str,
    alpn: &[&str],
) -> Option<String> {
    let alpn: Vec<String> = alpn.iter().map(|s| s.to_string()).collect();
    l.select(&ConnectionInfo {
        destination: dest.parse().unwrap(),
        source: "192.168.1.1:40000".parse().unwrap(),
        server_name: sni,
        transport_protocol: transport,
        application_protocols: &alpn,
    })
    .map(|c| c.name.clone())
}

#[test_case("127.0.0.1:9080", None, "raw_buffer", &[], "port-9080"; "port plaintext")]
#[test_case("127.0.0.1:9080", None, "tls", &[], "port-9080-tls"; "port tls")]
#[test_case("127.0.0.1:9080", None, "tls", &["istio"], "port-9080-tls-istio"; "port tls alpn")]
#[test_case("127.0.0.1:8443", Some("a.example.com"), "tls", &[], "sni-exact"; "exact server name")]
#[test_case("127.0.0.1:8443", Some("b.example.com"), "tls", &[], "sni-wildcard"; "wildcard server name")]
#[test_case("10.2.3.4:80", None, "raw_buffer", &[], "ip-10"; "prefix")]
#[test_case("10.1.3.4:80", None, "raw_buffer", &[], "ip-10-1"; "longest prefix")]
#[test_case("127.0.0.1:80", None, "raw_buffer", &[], "any"; "catch all")]
fn filter_chain_selection(
    dest: &str,
    sni: Option<&str>,
    transport: &str,
    alpn: &[&str],
    expected: &str,
) {
    assert_eq!(
        select(&sample(), dest, sni, transport, alpn).as_deref(),
        Some(expected)
    );
}

#[test]
fn unknown_server_name_on_a_matched_port_has_no_chain() {
    assert_eq!(
        select(&sample(), "127.0.0.1:8443", Some("other.org"), "tls", &[]),
        None
    );
    assert_eq!(
        select(&sample(), "127.0.0.1:8443", None, "raw_buffer", &[]),
        None
    );
}

#[test]
fn a_port_match_hides_less_specific_chains() {
    // Envoy: once the destination port matched, chains without a port are
    // no longer candidates, even if the later criteria rule out the rest.
    let l = listener(json!({
        "name": "l",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 8443}},
        "filterChains": [
            chain("sni", json!({"destinationPort": 8443, "serverNames": ["a.example.com"]})),
            chain("any", json!({})),
        ],
        "defaultFilterChain": {"name": "default", "filters": tcp("default")},
    }))
    .unwrap();
    assert_eq!(
        select(&l, "127.0.0.1:8443", Some("b.example.com"), "tls", &[]).as_deref(),
        Some("default")
    );
    assert_eq!(
        select(&l, "127.0.0.1:9000", None, "raw_buffer", &[]).as_deref(),
        Some("any")
    );
}

#[test]
fn inspection_only_when_a_candidate_needs_it() {
    let l = sample();
    assert!(l.needs_tls_inspection("127.0.0.1:9080".parse().unwrap()));
    assert!(l.needs_tls_inspection("127.0.0.1:8443".parse().unwrap()));
    // A TCP port with its own chain: a server-first protocol is not held up.
    assert!(!l.needs_tls_inspection("10.1.0.1:3306".parse().unwrap()));
}

#[test_case(json!({"name": "l", "filterChains": [{"filters": []}]}), "address"; "no address")]
#[test_case(json!({"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 80}}, "filterChains": [{"filters": []}]}), "filter_chains[0].filters"; "no terminal filter")]
#[test_case(json!({"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 80}}, "filterChains": [{"filters": [{"name": "envoy.filters.network.local_ratelimit", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"}}, {"name": "t", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "cluster": "c"}}]}]}), "filter_chains[0].filters[0].name"; "unknown network filter")]
#[test_case(json!({"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 80}}, "filterChains": [{"filters": [{"name": "envoy.filters.network.ext_authz", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"}}, {"name": "t", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "cluster": "c"}}]}]}), "filter_chains[0].filters[0].typed_config.grpc_service"; "network ext_authz without service")]
#[test_case(json!({"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 80}}, "filterChains": [{"filters": [{"name": "envoy.filters.network.rbac", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "statPrefix": "tcp.", "shadowRules": {"policies": {"p": {"permissions": [{"any": true}], "principals": [{"any": true}], "condition": {"constExpr": {"boolValue": true}}}}}}}, {"name": "t", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "cluster": "c"}}]}]}), "filter_chains[0].filters[0].typed_config.shadow_rules.policies[p].condition"; "shadow rule with CEL")]
#[test_case(hcm_with(json!({"name": "envoy.filters.http.ext_authz", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"}})), "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"; "http ext_authz without service")]
#[test_case(hcm_with(json!({"name": "envoy.filters.http.ext_authz", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", "shadowMode": true, "grpcService": {"envoyGrpc": {"clusterName": "a"}}}})), "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.shadow_mode"; "http ext_authz shadow mode")]
#[test_case(hcm_with(json!({"name": "envoy.filters.http.ext_authz", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", "grpcService": {"googleGrpc": {"targetUri": "a:1", "statPrefix": "a"}}}})), "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.grpc_service"; "http ext_authz google grpc")]
#[test_case(hcm_with(json!({"name": "envoy.filters.http.ext_authz", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", "httpService": {"serverUri": {"uri": "http://a", "cluster": "a"}}}})), "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.http_service.server_uri.timeout"; "http ext_authz without timeout")]
#[test_case(hcm_with(json!({"name": "envoy.filters.http.ext_authz", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", "grpcService": {"envoyGrpc": {"clusterName": "a"}}, "filterEnabledMetadata": {"filter": "envoy.filters.http.rbac", "path": [{"key": "k"}]}}})), "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.filter_enabled_metadata.value"; "http ext_authz enabled metadata without value")]
#[test_case(hcm_with(json!({"name": "envoy.filters.http.rbac", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "shadowMatcher": {}}})), "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"; "http rbac shadow matcher")]
#[test_case(json!({"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 80}}, "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "routeConfig": {"virtualHosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"safeRegex": {"regex": "("}}, "directResponse": {"status": 200}}]}]}, "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}), "filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].match.safe_regex.regex"; "inline route regex")]
#[test_case(json!({"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 80}}, "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "rds": {"routeConfigName": "80"}, "httpFilters": [{"name": "envoy.filters.http.ext_proc", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"}}, {"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}), "filter_chains[0].filters[0].typed_config.http_filters[0].name"; "unknown http filter")]
#[test_case(json!({"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 80}}, "filterChains": [{"filters": tcp("a")}, {"filters": tcp("b")}]}), "filter_chains[1].filter_chain_match"; "duplicate match")]
fn refuses_with_field_path(value: serde_json::Value, field: &str) {
    let err = listener(value).unwrap_err();
    assert_eq!(err.field, field, "{err:?}");
}

#[test]
fn golden_listeners_compile() {
    for (path, l) in golden("listeners") {
        listener(l).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    }
}

#[test]
fn virtual_outbound_shape() {
    let l = listener(json!({
        "name": "virtualOutbound",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
        "useOriginalDst": true,
        "filterChains": [
            {"name": "virtualOutbound-blackhole", "filterChainMatch": {"destinationPort": 15001}, "filters": tcp("BlackHoleCluster")},
            {"name": "virtualOutbound-catchall-tcp", "filters": tcp("PassthroughCluster")},
        ],
    }))
    .unwrap();
    assert!(l.use_original_dst);
    assert!(l.bind_to_port);
    assert_eq!(
        select(&l, "10.0.0.1:15001", None, "raw_buffer", &[]).as_deref(),
        Some("virtualOutbound-blackhole")
    );
    assert_eq!(
        select(&l, "10.0.0.1:3306", None, "raw_buffer", &[]).as_deref(),
        Some("virtualOutbound-catchall-tcp")
    );
}

/// A listener whose connection manager has `filter`, then the router.
fn hcm_with(filter: serde_json::Value) -> serde_json::Value {
    json!({"name": "l", "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 80}}, "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "rds": {"routeConfigName": "80"}, "httpFilters": [filter, {"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]})
}
