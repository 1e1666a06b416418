//! Envoy resources built as protobuf values, for the test ADS server to
//! serve ([`super::ads::TestAds::set`] takes them through [`named`]).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_api::xds::pack_any;

/// A loopback socket address.
pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// An EDS cluster.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A load assignment of one endpoint.
pub fn assignment(cluster: &str, ip: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(ip, port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An HTTP listener on `port` loading route `route` over RDS.
pub fn rds_listener(name: &str, port: u32, route: &str) -> Listener {
    let router = envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default();
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(router))),
            ..Default::default()
        }],
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: route.into(),
            config_source: Some(envoy_types::pb::envoy::config::core::v3::ConfigSource {
                config_source_specifier: Some(
                    envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(
                        Default::default(),
                    ),
                ),
                ..Default::default()
            }),
        })),
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: Some(socket_address("127.0.0.1", port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route configuration with no virtual hosts.
pub fn route(name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        ..Default::default()
    }
}

/// `(name, Any)` pairs for the test server.
pub fn named<T: prost::Message + prost::Name>(items: Vec<(&str, T)>) -> Vec<(String, Any)> {
    items
        .into_iter()
        .map(|(n, r)| (n.to_string(), pack_any(r)))
        .collect()
}
