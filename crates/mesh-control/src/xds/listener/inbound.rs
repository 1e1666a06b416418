//! `virtualInbound` (15006): every captured inbound connection arrives
//! here; a filter chain per port of this workload's services (matched on
//! the original destination port) routes it to `inbound|<port>||`, and
//! everything else passes through to the application unchanged. A port
//! whose protocol is not declared gets two chains, HTTP (for what the HTTP
//! inspector recognises) and TCP, and the inspector runs for those ports
//! only.
//!
//! PeerAuthentication decides how each port's chains match TLS (see
//! [`super::inbound_tls`]): STRICT ports terminate Istio mTLS only,
//! PERMISSIVE ports take both, DISABLE ports plaintext. Traffic to ports no
//! service declares passes through under the workload-level mode, or under
//! a port-level mode a PeerAuthentication gives that port.
//!
//! AuthorizationPolicy puts RBAC and ext_authz filters (see
//! [`crate::xds::authz`]) in front of every chain: first among an HTTP
//! chain's HTTP filters, before `tcp_proxy` in TCP and passthrough chains.
//!
//! For mesh-proxy nodes, TCP chains that terminate Istio mTLS run Istio's
//! metadata exchange (`istio.metadata_exchange` first, server ALPN
//! `istio-peer-exchange`); stock Envoy has no such filter and gets the
//! chains without it.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

use super::inbound_tls::{
    ChainKind, ChainSpec, chain_specs, downstream_mtls_socket, forward_client_cert,
    metadata_exchange_filter, tls_inspector_for,
};
use super::{
    INBOUND_CAPTURE_PORT, build_hcm, hcm_filter, http_inspector, original_dst, socket_address,
    tcp_proxy_filter,
};
use crate::model::Protocol;
use crate::xds::authz::InboundRbac;
use crate::xds::peer_auth::InboundMtls;
use crate::xds::{
    INBOUND_PASSTHROUGH_CLUSTER, ProxyScope, VIRTUAL_INBOUND_LISTENER, inbound_cluster_name,
};

/// Where a chain sends its traffic.
#[derive(Clone, Copy)]
enum Upstream {
    /// A service port of the workload: `inbound|<port>||`.
    Port(u16),
    /// `InboundPassthroughCluster`, for ports no service declares: on one
    /// port (`Some`, a port-level PeerAuthentication) or any (`None`).
    Passthrough(Option<u16>),
}

/// The workload ports this proxy serves, with their protocol: the same
/// list the cluster builder uses, so every chain's cluster exists.
pub(crate) fn inbound_ports(scope: &ProxyScope<'_>) -> BTreeMap<u16, Protocol> {
    crate::xds::cluster::inbound_ports(scope)
        .into_iter()
        .map(|p| (p.port, p.protocol))
        .collect()
}

pub(super) fn virtual_inbound(scope: &ProxyScope<'_>) -> Listener {
    let mtls = InboundMtls::of(scope.snapshot, scope.proxy);
    let rbac = InboundRbac::of(scope.snapshot, scope.proxy);
    let trust_domain = scope.snapshot.mesh.trust_domain();
    let exchange = scope.proxy.mesh_proxy;
    let chain = |upstream, spec: &ChainSpec| chain(upstream, spec, trust_domain, &rbac, exchange);
    let ports: BTreeMap<u16, Protocol> = inbound_ports(scope)
        .into_iter()
        .filter(|(port, _)| *port != INBOUND_CAPTURE_PORT)
        .collect();
    let mut chains = Vec::new();
    for (&port, &protocol) in &ports {
        let specs = chain_specs(protocol, mtls.port(port));
        chains.extend(specs.iter().map(|spec| chain(Upstream::Port(port), spec)));
    }
    // A port-level mode on a port no service declares still applies to the
    // traffic passing through to it (as in Istio).
    let mut own_ports: BTreeSet<u16> = ports.keys().copied().collect();
    for (&port, &mode) in &mtls.ports {
        if ports.contains_key(&port) || port == INBOUND_CAPTURE_PORT || mode == mtls.workload {
            continue;
        }
        own_ports.insert(port);
        let specs = chain_specs(Protocol::Tcp, mode);
        chains.extend(
            specs
                .iter()
                .map(|spec| chain(Upstream::Passthrough(Some(port)), spec)),
        );
    }
    let specs = chain_specs(Protocol::Tcp, mtls.workload);
    chains.extend(
        specs
            .iter()
            .map(|spec| chain(Upstream::Passthrough(None), spec)),
    );
    // TLS inspection first: the HTTP inspector leaves TLS alone.
    let mut listener_filters = vec![original_dst()];
    listener_filters.extend(tls_inspector_for(&mtls, &own_ports));
    let sniffed: BTreeSet<u16> = ports
        .iter()
        .filter(|(_, p)| **p == Protocol::Unsupported)
        .map(|(port, _)| *port)
        .collect();
    if !sniffed.is_empty() {
        listener_filters.push(http_inspector(&sniffed));
    }
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

/// One chain: `0.0.0.0_<port><suffix>` for a port, `virtualInbound<suffix>`
/// for the catch-all passthrough (whose plaintext chain keeps the plain
/// name `virtualInbound`). `rbac` goes in front of the chain's filters;
/// with `peer_exchange`, a TCP chain terminating mTLS runs Istio's metadata
/// exchange before them.
fn chain(
    upstream: Upstream,
    spec: &ChainSpec,
    trust_domain: &str,
    rbac: &InboundRbac,
    peer_exchange: bool,
) -> FilterChain {
    let exchange = peer_exchange && spec.terminate && spec.kind == ChainKind::Tcp;
    let (name, port) = match upstream {
        Upstream::Port(port) | Upstream::Passthrough(Some(port)) => {
            (format!("0.0.0.0_{port}{}", spec.suffix), Some(port))
        }
        Upstream::Passthrough(None) => {
            let suffix = spec.suffix.replacen('_', "-", 1);
            (format!("{VIRTUAL_INBOUND_LISTENER}{suffix}"), None)
        }
    };
    let mut filters = match (upstream, spec.kind) {
        (Upstream::Port(port), ChainKind::Http) => {
            vec![http_filter(port, spec.terminate, &rbac.http)]
        }
        (Upstream::Port(port), ChainKind::Tcp) => {
            let cluster = inbound_cluster_name(port);
            tcp_filters(
                rbac,
                tcp_proxy_filter(
                    &cluster,
                    tcp_proxy::ClusterSpecifier::Cluster(cluster.clone()),
                ),
            )
        }
        (Upstream::Passthrough(_), _) => tcp_filters(
            rbac,
            tcp_proxy_filter(
                INBOUND_PASSTHROUGH_CLUSTER,
                tcp_proxy::ClusterSpecifier::Cluster(INBOUND_PASSTHROUGH_CLUSTER.into()),
            ),
        ),
    };
    if exchange {
        filters.insert(0, metadata_exchange_filter());
    }
    let filter_chain_match = FilterChainMatch {
        destination_port: port.map(|p| UInt32Value { value: p.into() }),
        transport_protocol: spec.transport.unwrap_or_default().into(),
        application_protocols: spec.alpns.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    FilterChain {
        name,
        filter_chain_match: (filter_chain_match != FilterChainMatch::default())
            .then_some(filter_chain_match),
        filters,
        transport_socket: spec
            .terminate
            .then(|| downstream_mtls_socket(trust_domain, spec.kind, exchange)),
        ..Default::default()
    }
}

/// A TCP chain's filters: the network RBAC filters, then `tcp_proxy`.
fn tcp_filters(rbac: &InboundRbac, tcp_proxy: Filter) -> Vec<Filter> {
    rbac.network.iter().cloned().chain([tcp_proxy]).collect()
}

/// The HTTP connection manager of a port's HTTP chain, with `rbac` first
/// among its HTTP filters; chains terminating mTLS tell the application
/// who the peer is.
fn http_filter(port: u16, mtls: bool, rbac: &[HttpFilter]) -> Filter {
    let mut hcm = build_hcm(
        &format!("inbound_0.0.0.0_{port}"),
        http_connection_manager::RouteSpecifier::RouteConfig(inbound_route_config(port)),
        false,
    );
    hcm.http_filters.splice(0..0, rbac.iter().cloned());
    if mtls {
        forward_client_cert(&mut hcm);
    }
    hcm_filter(hcm)
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

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod tests;
