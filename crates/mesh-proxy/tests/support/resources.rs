//! Envoy resources written as proto3 JSON (the form the golden files and
//! Envoy's docs use) and compiled into the proxy's runtime, for the tests
//! that run the data path in process.

use std::net::SocketAddr;

use mesh_proxy::resources::{Origin, Resource, Resources};
use mesh_proxy::runtime;
use serde_json::{Value, json};

pub fn listener(v: Value) -> Resource {
    Resource::Listener(Box::new(mesh_api::xds::json::from_json(&v).unwrap()))
}

pub fn route(v: Value) -> Resource {
    Resource::Route(mesh_api::xds::json::from_json(&v).unwrap())
}

pub fn cluster(v: Value) -> Resource {
    Resource::Cluster(Box::new(mesh_api::xds::json::from_json(&v).unwrap()))
}

pub fn endpoints(v: Value) -> Resource {
    Resource::Endpoint(mesh_api::xds::json::from_json(&v).unwrap())
}

/// An HTTP listener on `addr` taking its routes from RDS `route_name`,
/// with the filters Istio configures.
pub fn http_listener(name: &str, addr: SocketAddr, route_name: &str) -> Resource {
    listener(json!({
        "name": name,
        "address": {"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}},
        "filterChains": [{"filters": [hcm(json!({"rds": {"routeConfigName": route_name}}))]}],
    }))
}

/// [`http_listener`] whose connection manager also has the `extra` fields
/// (timeouts, limits).
pub fn http_listener_with(
    name: &str,
    addr: SocketAddr,
    route_name: &str,
    extra: Value,
) -> Resource {
    let mut config = json!({"rds": {"routeConfigName": route_name}});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    listener(json!({
        "name": name,
        "address": {"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}},
        "filterChains": [{"filters": [hcm(config)]}],
    }))
}

/// An HTTP connection manager filter with `extra` fields.
pub fn hcm(extra: Value) -> Value {
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "statPrefix": "test",
        "upgradeConfigs": [{"upgradeType": "websocket"}],
        "httpFilters": [
            {"name": "envoy.filters.http.cors", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.fault", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": config})
}

/// A TCP proxy filter to `cluster`.
pub fn tcp_proxy(cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "statPrefix": cluster, "cluster": cluster}})
}

/// A route configuration with one virtual host for every domain.
pub fn route_config(name: &str, routes: Value) -> Resource {
    route(
        json!({"name": name, "virtualHosts": [{"name": "all", "domains": ["*"], "routes": routes}]}),
    )
}

fn lb_endpoints(addrs: &[SocketAddr]) -> Value {
    json!([{"lbEndpoints": addrs.iter().map(|a| json!({"endpoint": {"address": {"socketAddress": {
        "address": a.ip().to_string(), "portValue": a.port()}}}})).collect::<Vec<_>>()}])
}

/// A STATIC cluster over `addrs`.
pub fn static_cluster(name: &str, addrs: &[SocketAddr]) -> Resource {
    cluster(
        json!({"name": name, "type": "STATIC", "connectTimeout": "1s",
        "loadAssignment": {"clusterName": name, "endpoints": lb_endpoints(addrs)}}),
    )
}

/// [`static_cluster`] with the `extra` fields (protocol options, DNS
/// settings; `type` too).
pub fn static_cluster_with(name: &str, addrs: &[SocketAddr], extra: Value) -> Resource {
    let mut c = json!({"name": name, "type": "STATIC", "connectTimeout": "1s",
        "loadAssignment": {"clusterName": name, "endpoints": lb_endpoints(addrs)}});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    cluster(c)
}

/// An EDS cluster and its assignment over `addrs`.
pub fn eds_cluster(name: &str, addrs: &[SocketAddr]) -> Vec<Resource> {
    vec![
        cluster(json!({"name": name, "type": "EDS", "connectTimeout": "1s",
            "edsClusterConfig": {"edsConfig": {"ads": {}}, "serviceName": name}})),
        endpoints(json!({"clusterName": name, "endpoints": lb_endpoints(addrs)})),
    ]
}

/// `list` checked as the xDS client checks it, held as static resources.
pub fn resources(list: Vec<Resource>) -> Resources {
    let mut r = Resources::default();
    for resource in list {
        runtime::check(&resource).unwrap_or_else(|e| panic!("{e}"));
        r.insert(resource, Origin::Static);
    }
    r
}
