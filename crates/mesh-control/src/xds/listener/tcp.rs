//! Sidecar outbound filter chains for opaque ports: TCP routes pick the
//! cluster(s) by port and source; TLS routes split the listener into filter
//! chains by SNI. Without a VirtualService the service's own cluster takes
//! the traffic.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy;
use mesh_api::networking::virtual_service::VirtualService;

use super::{l4_destinations, tcp_proxy_filter};
use crate::model::{Protocol, Service};
use crate::xds::route::source_matches;
use crate::xds::{ProxyScope, outbound_cluster_name};

/// The VirtualServices (mesh-bound) whose hosts cover `hostname`, in
/// snapshot order, exact hosts first.
pub(crate) fn virtual_services_for<'a>(
    scope: &ProxyScope<'a>,
    hostname: &str,
) -> Vec<&'a VirtualService> {
    scope.mesh_virtual_services_for(hostname)
}

pub(super) fn outbound_tcp_filter_chains(
    scope: &ProxyScope<'_>,
    svc: &Service,
    port: u16,
    protocol: Protocol,
) -> Vec<FilterChain> {
    let default_cluster = outbound_cluster_name(port, "", &svc.hostname);
    let stat = default_cluster.clone();
    let mut chains = Vec::new();
    let mut has_catch_all = false;
    let vss = virtual_services_for(scope, &svc.hostname);
    if matches!(protocol, Protocol::Tls | Protocol::Https) {
        let mut seen_sni = BTreeSet::new();
        for vs in vss.iter().filter(|vs| !vs.spec.tls.is_empty()).take(1) {
            for (i, rule) in vs.spec.tls.iter().enumerate() {
                let applicable: Vec<_> = rule
                    .r#match
                    .iter()
                    .filter(|m| m.port.is_none_or(|p| p == u32::from(port)))
                    .filter(|m| {
                        source_matches(
                            scope,
                            &m.source_labels,
                            m.source_namespace.as_deref(),
                            &m.gateways,
                            None,
                        )
                    })
                    .collect();
                if applicable.is_empty() {
                    continue;
                }
                let Some(cluster) = l4_destinations(scope, vs, &rule.route, port) else {
                    continue;
                };
                let mut sni: Vec<String> = applicable
                    .iter()
                    .flat_map(|m| m.sni_hosts.iter())
                    .map(|h| h.to_string())
                    .filter(|h| seen_sni.insert(h.clone()))
                    .collect();
                sni.sort();
                let catch_all = sni.is_empty() || sni.iter().any(|h| h == "*");
                if catch_all {
                    if has_catch_all {
                        continue;
                    }
                    has_catch_all = true;
                    sni.clear();
                } else if sni.is_empty() {
                    continue;
                }
                chains.push(FilterChain {
                    name: format!("{}_{port}_tls_{i}", svc.hostname),
                    filter_chain_match: (!sni.is_empty()).then(|| FilterChainMatch {
                        server_names: sni,
                        ..Default::default()
                    }),
                    filters: vec![tcp_proxy_filter(&stat, cluster)],
                    ..Default::default()
                });
            }
        }
    } else if let Some(cluster) = vss
        .iter()
        .filter(|vs| !vs.spec.tcp.is_empty())
        .take(1)
        .find_map(|vs| {
            vs.spec.tcp.iter().find_map(|rule| {
                let applies = rule.r#match.is_empty()
                    || rule.r#match.iter().any(|m| {
                        m.port.is_none_or(|p| p == u32::from(port))
                            && source_matches(
                                scope,
                                &m.source_labels,
                                m.source_namespace.as_deref(),
                                &m.gateways,
                                None,
                            )
                    });
                if applies {
                    l4_destinations(scope, vs, &rule.route, port)
                } else {
                    None
                }
            })
        })
    {
        chains.push(FilterChain {
            filters: vec![tcp_proxy_filter(&stat, cluster)],
            ..Default::default()
        });
        has_catch_all = true;
    }
    if !has_catch_all {
        chains.push(FilterChain {
            filters: vec![tcp_proxy_filter(
                &stat,
                tcp_proxy::ClusterSpecifier::Cluster(default_cluster),
            )],
            ..Default::default()
        });
    }
    chains
}
