//! LDS: capture listeners and per-port listeners for sidecars, server
//! listeners for gateways.
//!
//! A sidecar gets Istio's layout: `virtualOutbound` (15001) receives every
//! captured outbound connection and hands it, by original destination, to a
//! per-port listener that does not bind (`0.0.0.0_<port>` for HTTP ports,
//! `<vip>_<port>` for opaque TCP/TLS ports); what no listener claims falls
//! through to the passthrough (ALLOW_ANY) or blackhole (REGISTRY_ONLY) chain.
//! A port whose protocol is not declared (no name prefix, no `appProtocol`)
//! is sniffed, as Istio does: its `<vip>_<port>` listener runs the HTTP
//! inspector and holds an HTTP chain (ALPN `http/1.1`/`h2c`, routes over RDS
//! named `<fqdn>:<port>`) beside the TCP chains.
//! `virtualInbound` (15006) is built in [`inbound`], gateway listeners in
//! [`gateway`]. HTTP listeners fetch their routes over RDS, named by port;
//! [`rds_route_names`] reads those names back so `route` builds exactly the
//! configurations the listeners reference.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, TrafficDirection,
    address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
    ListenerFilterChainMatchPredicate, filter, listener_filter,
    listener_filter_chain_match_predicate,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use mesh_api::mesh_config::OutboundMode;
use mesh_api::networking::sidecar::OutboundTrafficMode;
use mesh_api::networking::virtual_service::{RouteDestination, VirtualService};
use mesh_api::xds::pack_any;
use prost::Message;

use super::Part;
use super::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, ProxyScope, VIRTUAL_OUTBOUND_LISTENER};
use crate::model::{Protocol, Service};
use crate::proxy::ProxyRole;
use crate::snapshot::namespace_of;

pub mod access_log;
mod gateway;
mod inbound;
mod inbound_tls;
mod internal_address;
pub mod stats;
mod tcp;

pub(crate) use gateway::drop_unservable_chains;
pub(crate) use gateway::{ServerKind, gateway_route_name, server_host, server_kind, server_port};
pub(crate) use tcp::virtual_services_for;

/// Outbound capture port.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Inbound capture port.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;

const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// HTTP filter name that per-route fault configuration is keyed by.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// HTTP filter name that per-route CORS configuration is keyed by.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// Every listener the proxy needs, sorted by name.
pub fn build_listeners(scope: &ProxyScope<'_>) -> Vec<Listener> {
    build_listeners_part(scope, Part::All)
}

/// The listeners of one part of the proxy's configuration, sorted by name.
pub fn build_listeners_part(scope: &ProxyScope<'_>, part: Part) -> Vec<Listener> {
    let mut listeners = Vec::new();
    match scope.proxy.role {
        ProxyRole::Sidecar => {
            if part.outbound() {
                listeners.push(virtual_outbound(scope));
                listeners.extend(outbound_port_listeners(scope));
            }
            if part.inbound() {
                listeners.push(inbound::virtual_inbound(scope));
            }
        }
        ProxyRole::Router if part.outbound() => listeners = gateway::gateway_listeners(scope),
        ProxyRole::Router => {}
    }
    access_log::apply(scope, &mut listeners);
    stats::apply(scope, &mut listeners);
    internal_address::apply(&scope.snapshot.mesh_networks, &mut listeners);
    super::tracing::apply(scope, &mut listeners);
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    listeners
}

/// Whether unknown destinations pass through: the Sidecar's
/// `outboundTrafficPolicy` wins over MeshConfig's; ALLOW_ANY when neither
/// says (Istio's default mesh config).
pub fn allow_any(scope: &ProxyScope<'_>) -> bool {
    if let Some(mode) = scope
        .sidecar
        .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.mode)
    {
        return mode != OutboundTrafficMode::RegistryOnly;
    }
    match scope.snapshot.mesh.outbound_traffic_policy.as_ref() {
        None => true,
        // An empty policy is proto3's default enum value, REGISTRY_ONLY.
        Some(p) => p.mode.unwrap_or_default() != OutboundMode::RegistryOnly,
    }
}

/// The cluster unknown outbound traffic goes to.
pub fn fallthrough_cluster(scope: &ProxyScope<'_>) -> &'static str {
    if allow_any(scope) {
        PASSTHROUGH_CLUSTER
    } else {
        BLACKHOLE_CLUSTER
    }
}

// === Sidecar outbound ===

fn virtual_outbound(scope: &ProxyScope<'_>) -> Listener {
    // A connection that still targets 15001 after capture would loop back
    // into the proxy: Istio blackholes it explicitly.
    let blackhole = FilterChain {
        name: "virtualOutbound-blackhole".into(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value {
                value: OUTBOUND_CAPTURE_PORT.into(),
            }),
            ..Default::default()
        }),
        filters: vec![tcp_proxy_filter(
            BLACKHOLE_CLUSTER,
            tcp_proxy::ClusterSpecifier::Cluster(BLACKHOLE_CLUSTER.into()),
        )],
        ..Default::default()
    };
    let cluster = fallthrough_cluster(scope);
    let catch_all = FilterChain {
        name: "virtualOutbound-catchall-tcp".into(),
        filters: vec![tcp_proxy_filter(
            cluster,
            tcp_proxy::ClusterSpecifier::Cluster(cluster.into()),
        )],
        ..Default::default()
    };
    Listener {
        name: VIRTUAL_OUTBOUND_LISTENER.into(),
        address: Some(socket_address("0.0.0.0", OUTBOUND_CAPTURE_PORT.into())),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![blackhole, catch_all],
        ..Default::default()
    }
}

/// Per-port listeners. HTTP ports share one wildcard listener per port;
/// opaque ports get one listener per service VIP so two TCP services on
/// the same port stay apart. A TCP service without a VIP takes the
/// wildcard name unless an HTTP service already holds it (Istio's conflict
/// rule: HTTP wins the wildcard).
fn outbound_port_listeners(scope: &ProxyScope<'_>) -> Vec<Listener> {
    let mut http_ports = BTreeSet::new();
    for svc in scope.services() {
        for p in &svc.ports {
            if p.protocol.is_http() && !is_capture_port(p.port) {
                http_ports.insert(p.port);
            }
        }
    }
    let mut by_name: BTreeMap<String, Listener> = BTreeMap::new();
    for &port in &http_ports {
        let name = format!("0.0.0.0_{port}");
        by_name.insert(name.clone(), outbound_http_listener(&name, port));
    }
    for svc in scope.services() {
        for p in &svc.ports {
            if p.protocol.is_http() || p.protocol == Protocol::Udp || is_capture_port(p.port) {
                continue;
            }
            let ips: Vec<String> = if svc.addresses.is_empty() {
                vec!["0.0.0.0".into()]
            } else {
                svc.addresses.iter().map(|a| a.to_string()).collect()
            };
            for ip in ips {
                let name = format!("{ip}_{}", p.port);
                if by_name.contains_key(&name) {
                    tracing::warn!(service = %svc.hostname, port = p.port, listener = %name,
                        "opaque port conflicts with an existing listener; traffic goes to the earlier service");
                    continue;
                }
                let mut chains = tcp::outbound_tcp_filter_chains(scope, svc, p.port, p.protocol);
                let mut listener_filters = if chains.iter().any(has_server_names) {
                    vec![tls_inspector()]
                } else {
                    Vec::new()
                };
                if p.protocol == Protocol::Unsupported && scope.proxy.role == ProxyRole::Sidecar {
                    chains.insert(0, sniffed_http_chain(svc, p.port));
                    listener_filters.push(http_inspector(&BTreeSet::new()));
                }
                by_name.insert(
                    name.clone(),
                    Listener {
                        name,
                        address: Some(socket_address(&ip, p.port.into())),
                        bind_to_port: Some(BoolValue { value: false }),
                        traffic_direction: TrafficDirection::Outbound as i32,
                        listener_filters,
                        filter_chains: chains,
                        ..Default::default()
                    },
                );
            }
        }
    }
    by_name.into_values().collect()
}

/// The HTTP chain of a sniffed outbound listener: connections the HTTP
/// inspector recognised, routed by the service's own route configuration
/// (`<fqdn>:<port>`).
fn sniffed_http_chain(svc: &Service, port: u16) -> FilterChain {
    let route_name = sniffed_route_name(svc, port);
    let hcm = build_hcm(&format!("outbound_{route_name}"), rds(&route_name), false);
    FilterChain {
        name: format!("{route_name}_http"),
        filter_chain_match: Some(sniffed_http_match()),
        filters: vec![hcm_filter(hcm)],
        ..Default::default()
    }
}

/// RDS name of a sniffed port's HTTP chain.
pub(crate) fn sniffed_route_name(svc: &Service, port: u16) -> String {
    format!("{}:{port}", svc.hostname)
}

/// What the HTTP inspector reports for plaintext HTTP/1.x and h2c.
pub(crate) fn sniffed_http_match() -> FilterChainMatch {
    FilterChainMatch {
        application_protocols: vec!["http/1.1".into(), "h2c".into()],
        ..Default::default()
    }
}

/// The HTTP inspector; with `only_ports`, disabled for every other
/// destination port, so server-first protocols on declared TCP ports never
/// wait for client bytes (Istio's `filter_disabled`).
pub(crate) fn http_inspector(only_ports: &BTreeSet<u16>) -> ListenerFilter {
    use listener_filter_chain_match_predicate::{MatchSet, Rule};
    let filter_disabled = (!only_ports.is_empty()).then(|| {
        let mut ports: Vec<ListenerFilterChainMatchPredicate> = only_ports
            .iter()
            .map(|&p| ListenerFilterChainMatchPredicate {
                rule: Some(Rule::DestinationPortRange(
                    envoy_types::pb::envoy::r#type::v3::Int32Range {
                        start: p.into(),
                        end: i32::from(p) + 1,
                    },
                )),
            })
            .collect();
        // Envoy wants at least two rules in an or_match.
        let any_port = if ports.len() == 1 {
            ports.remove(0)
        } else {
            ListenerFilterChainMatchPredicate {
                rule: Some(Rule::OrMatch(MatchSet { rules: ports })),
            }
        };
        ListenerFilterChainMatchPredicate {
            rule: Some(Rule::NotMatch(Box::new(any_port))),
        }
    });
    ListenerFilter {
        name: "envoy.filters.listener.http_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            HttpInspector::default(),
        ))),
        filter_disabled,
    }
}

fn is_capture_port(port: u16) -> bool {
    port == OUTBOUND_CAPTURE_PORT || port == INBOUND_CAPTURE_PORT
}

fn has_server_names(chain: &FilterChain) -> bool {
    chain
        .filter_chain_match
        .as_ref()
        .is_some_and(|m| !m.server_names.is_empty())
}

fn outbound_http_listener(name: &str, port: u16) -> Listener {
    let hcm = build_hcm(
        &format!("outbound_0.0.0.0_{port}"),
        rds(&port.to_string()),
        false,
    );
    Listener {
        name: name.into(),
        address: Some(socket_address("0.0.0.0", port.into())),
        bind_to_port: Some(BoolValue { value: false }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![hcm_filter(hcm)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

// === Shared builders ===

/// `ip:port` as an Envoy address.
pub(crate) fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// Config delivered over the same ADS stream.
pub(crate) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn rds(route_config_name: &str) -> http_connection_manager::RouteSpecifier {
    http_connection_manager::RouteSpecifier::Rds(Rds {
        route_config_name: route_config_name.into(),
        config_source: Some(ads_config_source()),
    })
}

/// An HTTP connection manager with Istio's filter order (CORS, fault,
/// router). Fault and CORS do nothing unless a route configures them, so
/// they are always present and routes can rely on them.
pub(crate) fn build_hcm(
    stat_prefix: &str,
    route: http_connection_manager::RouteSpecifier,
    use_remote_address: bool,
) -> HttpConnectionManager {
    let http_filters = vec![
        HttpFilter {
            name: CORS_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Cors::default(),
            ))),
            ..Default::default()
        },
        HttpFilter {
            name: FAULT_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                HttpFault::default(),
            ))),
            ..Default::default()
        },
        HttpFilter {
            name: ROUTER_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        },
    ];
    HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        route_specifier: Some(route),
        http_filters,
        use_remote_address: Some(BoolValue {
            value: use_remote_address,
        }),
        ..Default::default()
    }
}

pub(crate) fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    Filter {
        name: HCM_FILTER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
    }
}

pub(crate) fn tcp_proxy_filter(stat_prefix: &str, cluster: tcp_proxy::ClusterSpecifier) -> Filter {
    Filter {
        name: TCP_PROXY_FILTER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
            stat_prefix: stat_prefix.into(),
            cluster_specifier: Some(cluster),
            ..Default::default()
        }))),
    }
}

pub(crate) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

pub(crate) fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

/// The tcp_proxy cluster choice for L4 route destinations (VirtualService
/// `tcp`/`tls` routes): one cluster, or weighted clusters. Destinations
/// written in namespace `vs_ns`; `default_port` is the listener's port.
pub(crate) fn l4_destinations(
    scope: &ProxyScope<'_>,
    vs: &VirtualService,
    routes: &[RouteDestination],
    default_port: u16,
) -> Option<tcp_proxy::ClusterSpecifier> {
    let vs_ns = namespace_of(vs);
    let mut clusters: Vec<(String, u32)> = routes
        .iter()
        .map(|r| {
            let host = scope.resolve(&r.destination.host, vs_ns);
            let port = destination_port(
                scope.service(&host).map(AsRef::as_ref),
                r.destination.port.as_ref().map(|p| p.number),
                default_port,
            );
            let name = super::outbound_cluster_name(
                port,
                r.destination.subset.as_deref().unwrap_or(""),
                &host,
            );
            (name, r.weight.map_or(100, |w| w.max(0) as u32))
        })
        .filter(|(_, w)| *w > 0 || routes.len() == 1)
        .collect();
    match clusters.len() {
        0 => None,
        1 => clusters
            .pop()
            .map(|(c, _)| tcp_proxy::ClusterSpecifier::Cluster(c)),
        _ => Some(tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp_proxy::WeightedCluster {
                clusters: clusters
                    .into_iter()
                    .map(
                        |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                            name,
                            weight,
                            ..Default::default()
                        },
                    )
                    .collect(),
            },
        )),
    }
}

/// The port a destination without an explicit port means: the service's
/// only port, else the port the traffic arrived on (Istio's rule).
pub(crate) fn destination_port(
    service: Option<&Service>,
    explicit: Option<u32>,
    listener_port: u16,
) -> u16 {
    if let Some(p) = explicit
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
    {
        return p;
    }
    match service.map(|s| s.ports.as_slice()) {
        Some([only]) => only.port,
        _ => listener_port,
    }
}

/// Calls `f` with every filter chain of `listeners` (the default chain
/// too) and whether its listener is inbound. The passes applied over the
/// built listeners (access logs, stats, tracing, internal addresses) walk
/// them this way, so each stays unaware of how a listener was built.
pub(crate) fn for_each_chain(
    listeners: &mut [Listener],
    mut f: impl FnMut(bool, &mut FilterChain),
) {
    for l in listeners.iter_mut() {
        let inbound = l.traffic_direction == TrafficDirection::Inbound as i32;
        for chain in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.iter_mut())
        {
            f(inbound, chain);
        }
    }
}

/// Calls `f` with every HTTP connection manager of `listeners`, decoded,
/// and whether its listener is inbound; a manager `f` says it changed
/// (`true`) is encoded back in place. A filter that does not decode is
/// left alone.
pub(crate) fn for_each_hcm(
    listeners: &mut [Listener],
    f: impl FnMut(bool, &mut HttpConnectionManager) -> bool,
) {
    for_each_filter(listeners, HCM_FILTER, f);
}

/// [`for_each_hcm`] for every `tcp_proxy`.
pub(crate) fn for_each_tcp_proxy(
    listeners: &mut [Listener],
    f: impl FnMut(bool, &mut TcpProxy) -> bool,
) {
    for_each_filter(listeners, TCP_PROXY_FILTER, f);
}

/// Calls `f` with every network filter named `name` of `listeners`,
/// decoded as `M`, and whether its listener is inbound; one `f` changed
/// (`true`) is encoded back in place. One that does not decode is left
/// alone.
fn for_each_filter<M: prost::Name + Default>(
    listeners: &mut [Listener],
    name: &str,
    mut f: impl FnMut(bool, &mut M) -> bool,
) {
    for_each_chain(listeners, |inbound, chain| {
        for filter in chain.filters.iter_mut().filter(|x| x.name == name) {
            let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
                continue;
            };
            let Ok(mut message) = M::decode(any.value.as_slice()) else {
                continue;
            };
            if f(inbound, &mut message) {
                filter.config_type = Some(filter::ConfigType::TypedConfig(pack_any(message)));
            }
        }
    });
}

/// Names of the route configurations the listeners fetch over RDS, sorted.
pub fn rds_route_names(listeners: &[Listener]) -> Vec<String> {
    let mut names = BTreeSet::new();
    for chain in listeners
        .iter()
        .flat_map(|l| l.filter_chains.iter().chain(l.default_filter_chain.iter()))
    {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if f.name != HCM_FILTER {
                continue;
            }
            let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(http_connection_manager::RouteSpecifier::Rds(r)) = hcm.route_specifier {
                names.insert(r.route_config_name);
            }
        }
    }
    names.into_iter().collect()
}

#[cfg(test)]
mod tests;
