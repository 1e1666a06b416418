//! `virtualInbound` (15006): every captured inbound connection arrives
//! here; a filter chain per port of this workload's services (matched on
//! the original destination port) routes it to `inbound|<port>||`, and
//! everything else passes through to the application unchanged. A port
//! whose protocol is not declared gets two chains, HTTP (for what the HTTP
//! inspector recognises) and TCP, and the inspector runs for those ports
//! only.
//!
//! TODO(mtls): inbound chains are plaintext for now; PeerAuthentication
//! (STRICT/PERMISSIVE) adds TLS-matched chains with the workload's SVID in
//! a later change.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

use super::{
    INBOUND_CAPTURE_PORT, build_hcm, hcm_filter, http_inspector, original_dst, sniffed_http_match,
    socket_address, tcp_proxy_filter,
};
use crate::model::Protocol;
use crate::xds::{
    INBOUND_PASSTHROUGH_CLUSTER, ProxyScope, VIRTUAL_INBOUND_LISTENER, inbound_cluster_name,
};

/// The workload ports this proxy serves, with their protocol: the same
/// list the cluster builder uses, so every chain's cluster exists.
pub(crate) fn inbound_ports(scope: &ProxyScope<'_>) -> BTreeMap<u16, Protocol> {
    crate::xds::cluster::inbound_ports(scope)
        .into_iter()
        .map(|p| (p.port, p.protocol))
        .collect()
}

pub(super) fn virtual_inbound(scope: &ProxyScope<'_>) -> Listener {
    let ports = inbound_ports(scope);
    let ports = ports
        .into_iter()
        .filter(|(port, _)| *port != INBOUND_CAPTURE_PORT);
    let mut sniffed = BTreeSet::new();
    let mut chains = Vec::new();
    for (port, protocol) in ports {
        if protocol == Protocol::Unsupported {
            sniffed.insert(port);
            let mut http = inbound_chain(port, Protocol::Http);
            http.name = format!("0.0.0.0_{port}_http");
            if let Some(m) = http.filter_chain_match.as_mut() {
                m.application_protocols = sniffed_http_match().application_protocols;
            }
            chains.push(http);
        }
        chains.push(inbound_chain(port, protocol));
    }
    let mut listener_filters = vec![original_dst()];
    if !sniffed.is_empty() {
        listener_filters.push(http_inspector(&sniffed));
    }
    chains.push(FilterChain {
        name: VIRTUAL_INBOUND_LISTENER.into(),
        filters: vec![tcp_proxy_filter(
            INBOUND_PASSTHROUGH_CLUSTER,
            tcp_proxy::ClusterSpecifier::Cluster(INBOUND_PASSTHROUGH_CLUSTER.into()),
        )],
        ..Default::default()
    });
    // Not `use_original_dst`: that would hand inbound connections to the
    // outbound `0.0.0.0_<port>` listeners. The original_dst listener filter
    // restores the destination so chains can match its port, as Istio does.
    Listener {
        name: VIRTUAL_INBOUND_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT.into())),
        listener_filters,
        traffic_direction: TrafficDirection::Inbound as i32,
        filter_chains: chains,
        ..Default::default()
    }
}

fn inbound_chain(port: u16, protocol: Protocol) -> FilterChain {
    let cluster = inbound_cluster_name(port);
    let filter = if protocol.is_http() {
        let hcm = build_hcm(
            &format!("inbound_0.0.0.0_{port}"),
            http_connection_manager::RouteSpecifier::RouteConfig(inbound_route_config(port)),
            false,
        );
        hcm_filter(hcm)
    } else {
        tcp_proxy_filter(
            &cluster,
            tcp_proxy::ClusterSpecifier::Cluster(cluster.clone()),
        )
    };
    FilterChain {
        name: format!("0.0.0.0_{port}"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: port.into() }),
            ..Default::default()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}

/// The inline route of an inbound HTTP chain: everything to the local
/// cluster, no timeout (the caller's sidecar enforces it).
fn inbound_route_config(port: u16) -> RouteConfiguration {
    let cluster = inbound_cluster_name(port);
    RouteConfiguration {
        name: cluster.clone(),
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
                    timeout: Some(PbDuration {
                        seconds: 0,
                        nanos: 0,
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
