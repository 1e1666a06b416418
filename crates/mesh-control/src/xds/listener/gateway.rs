//! Gateway listeners: one per (bind address, port) over every Gateway that
//! selects this proxy. Plain HTTP servers share the RDS configuration
//! `http.<port>`; terminated HTTPS servers get a filter chain per server,
//! matched on SNI, with their own `https.<port>.<portName>.<gateway>.<ns>`
//! routes (Istio's names); TLS passthrough and TCP servers forward with
//! tcp_proxy using the VirtualServices' `tls`/`tcp` routes. As in Istio, a
//! listener binds the target port of the gateway Service's port for the
//! server port (80 → 8080), and plain HTTP routes are named by it.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TrafficDirection, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    TlsCertificate, TlsParameters, common_tls_context, tls_parameters,
};
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_api::networking::Gateway;
use mesh_api::networking::gateway::{Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use mesh_api::xds::pack_any;
use prost::Message;

use super::{
    HCM_FILTER, ads_config_source, build_hcm, hcm_filter, l4_destinations, socket_address,
    tcp_proxy_filter, tls_inspector,
};
use crate::model::Protocol;
use crate::snapshot::{name_of, namespace_of};
use crate::xds::ProxyScope;
use crate::xds::authz::InboundRbac;
use crate::xds::route::source_matches;
use crate::xds::scope::host_matches;

/// How a gateway server handles its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerKind {
    /// Plaintext HTTP, routed by `http.<port>`.
    Http,
    /// TLS terminated here, then HTTP routing.
    HttpsTerminated,
    /// TLS forwarded untouched, routed by SNI.
    TlsPassthrough,
    /// TLS terminated here, then opaque TCP.
    TlsTerminatedTcp,
    /// Opaque TCP.
    Tcp,
}

/// Classifies a server by its port protocol and TLS mode.
pub(crate) fn server_kind(server: &Server) -> ServerKind {
    let protocol = Protocol::parse(&server.port.protocol);
    let mode = server.tls.as_ref().map(|t| t.mode.unwrap_or_default());
    let terminates = matches!(
        mode,
        Some(
            ServerTlsMode::Simple
                | ServerTlsMode::Mutual
                | ServerTlsMode::OptionalMutual
                | ServerTlsMode::IstioMutual
        )
    );
    match protocol {
        p if p.is_http() => ServerKind::Http,
        Protocol::Https if terminates => ServerKind::HttpsTerminated,
        Protocol::Https | Protocol::Tls if !terminates => ServerKind::TlsPassthrough,
        Protocol::Tls => ServerKind::TlsTerminatedTcp,
        _ => ServerKind::Tcp,
    }
}

/// The host part of a server host (`ns/host` → `host`).
pub(crate) fn server_host(host: &str) -> &str {
    host.split_once('/').map_or(host, |(_, h)| h)
}

/// The port number of a server, if valid.
pub(crate) fn server_port(server: &Server) -> Option<u16> {
    u16::try_from(server.port.number).ok().filter(|p| *p != 0)
}

/// The RDS name of a server's routes (Istio's naming): plain HTTP routes
/// are named by the port the listener binds (`bind_port`), terminated
/// HTTPS ones by the server's own port number.
pub(crate) fn gateway_route_name(gateway: &Gateway, server: &Server, bind_port: u16) -> String {
    match server_kind(server) {
        ServerKind::HttpsTerminated => {
            format!(
                "https.{}.{}.{}.{}",
                server.port.number,
                server.port.name,
                name_of(gateway),
                namespace_of(gateway)
            )
        }
        _ => format!("http.{bind_port}"),
    }
}

/// Whether any of `hosts` (VirtualService hosts) overlaps any server host.
pub(crate) fn hosts_intersect(server_hosts: &[String], hosts: &[String]) -> bool {
    server_hosts.iter().map(|s| server_host(s)).any(|s| {
        hosts
            .iter()
            .any(|h| host_matches(s, h) || host_matches(h, s))
    })
}

pub(super) fn gateway_listeners(scope: &ProxyScope<'_>) -> Vec<Listener> {
    // AuthorizationPolicies selecting the gateway's workload (Istio applies
    // them to ingress gateways as to sidecars, CUSTOM and dry-run ones
    // included): the HTTP authorization filters (CUSTOM's RBAC + ext_authz,
    // JWT, RBAC) first in every connection manager, the network ones before
    // every TCP proxy.
    let rbac = InboundRbac::of(scope.snapshot, scope.proxy);
    let hcm_filter = |mut hcm: HttpConnectionManager| {
        hcm.http_filters.splice(0..0, rbac.http.iter().cloned());
        hcm_filter(hcm)
    };
    let mut by_name: BTreeMap<String, (String, u16, Vec<FilterChain>)> = BTreeMap::new();
    let mut plain_http: BTreeSet<String> = BTreeSet::new();
    for gw in scope.gateways() {
        for server in &gw.spec.servers {
            let Some(port) = server_port(server) else {
                continue;
            };
            // The listener binds the gateway Service's target port; VirtualService
            // `port` matches still compare the server's own port.
            let bind = scope.gateway_bind_port(port);
            let ip = server.bind.clone().unwrap_or_else(|| "0.0.0.0".into());
            let name = format!("{ip}_{bind}");
            let entry = by_name
                .entry(name.clone())
                .or_insert_with(|| (ip, bind, Vec::new()));
            match server_kind(server) {
                ServerKind::Http => {
                    // Every plain HTTP server on a port shares one chain and `http.<port>`.
                    if plain_http.insert(name) {
                        let hcm = build_hcm(
                            &format!("outbound_0.0.0.0_{bind}"),
                            rds_ads(&gateway_route_name(gw, server, bind)),
                            true,
                        );
                        entry.2.push(FilterChain {
                            filters: vec![hcm_filter(hcm)],
                            ..Default::default()
                        });
                    }
                }
                ServerKind::HttpsTerminated => {
                    let route = gateway_route_name(gw, server, bind);
                    let hcm = build_hcm(&format!("outbound_0.0.0.0_{bind}"), rds_ads(&route), true);
                    entry.2.push(FilterChain {
                        name: route,
                        filter_chain_match: sni_match(server),
                        filters: vec![hcm_filter(hcm)],
                        transport_socket: server
                            .tls
                            .as_ref()
                            .map(|t| tls_transport_socket(t, true)),
                        ..Default::default()
                    });
                }
                ServerKind::TlsPassthrough => {
                    entry.2.extend(passthrough_chains(scope, gw, server, port))
                }
                kind @ (ServerKind::Tcp | ServerKind::TlsTerminatedTcp) => {
                    if let Some(cluster) = tcp_destination(scope, gw, server, port) {
                        entry.2.push(FilterChain {
                            filter_chain_match: (kind == ServerKind::TlsTerminatedTcp)
                                .then(|| sni_match(server))
                                .flatten(),
                            filters: vec![tcp_proxy_filter(
                                &format!("outbound_0.0.0.0_{bind}"),
                                cluster,
                            )],
                            transport_socket: server
                                .tls
                                .as_ref()
                                .filter(|_| kind == ServerKind::TlsTerminatedTcp)
                                .map(|t| tls_transport_socket(t, false)),
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    by_name
        .into_iter()
        .filter(|(_, (_, _, chains))| !chains.is_empty())
        .map(|(name, (ip, port, chains))| {
            let mut chains = dedupe_chains(&name, chains);
            for chain in &mut chains {
                if chain.filters.iter().all(|f| f.name != HCM_FILTER) {
                    chain.filters.splice(0..0, rbac.network.iter().cloned());
                }
            }
            let needs_tls_inspector = chains.iter().any(|c| {
                c.filter_chain_match
                    .as_ref()
                    .is_some_and(|m| !m.server_names.is_empty())
            });
            Listener {
                name,
                address: Some(socket_address(&ip, port.into())),
                traffic_direction: TrafficDirection::Outbound as i32,
                listener_filters: if needs_tls_inspector {
                    vec![tls_inspector()]
                } else {
                    Vec::new()
                },
                filter_chains: chains,
                ..Default::default()
            }
        })
        .collect()
}

/// Leaves out the filter chains whose SDS certificates the control plane
/// cannot serve (a missing or broken `credentialName` Secret), and the
/// listeners left with none. Envoy would otherwise keep the whole listener
/// warming — and, at start-up, every listener — until SDS's initial fetch
/// times out. The Secret's problem is logged when secrets are built.
pub(crate) fn drop_unservable_chains(listeners: &mut Vec<Listener>, secrets: &[Secret]) {
    let served: BTreeSet<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    for listener in listeners.iter_mut() {
        let name = listener.name.clone();
        listener.filter_chains.retain(|chain| {
            let missing: Vec<String> = sds_names(chain)
                .into_iter()
                .filter(|n| !served.contains(n.as_str()))
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    listener = %name,
                    chain = %chain.name,
                    ?missing,
                    "gateway server left out until its credential Secret can be served"
                );
            }
            missing.is_empty()
        });
    }
    listeners.retain(|l| !l.filter_chains.is_empty());
}

/// The SDS secret names a filter chain's TLS context refers to.
fn sds_names(chain: &FilterChain) -> Vec<String> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = chain
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.as_ref())
    else {
        return Vec::new();
    };
    let Ok(ctx) = DownstreamTlsContext::decode(any.value.as_slice()) else {
        return Vec::new();
    };
    let Some(common) = ctx.common_tls_context else {
        return Vec::new();
    };
    let mut names: Vec<String> = common
        .tls_certificate_sds_secret_configs
        .into_iter()
        .map(|s| s.name)
        .collect();
    if let Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(v)) =
        common.validation_context_type
    {
        names.push(v.name);
    }
    names
}

/// Envoy refuses a listener whose chains repeat a match; the first wins,
/// the rest are reported (Istio's conflict handling).
fn dedupe_chains(listener: &str, chains: Vec<FilterChain>) -> Vec<FilterChain> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for c in chains {
        let key = c.filter_chain_match.clone().unwrap_or_default();
        if seen.contains(&key) {
            tracing::warn!(listener, chain = %c.name, "gateway servers conflict on the same port and SNI; keeping the first");
            continue;
        }
        seen.push(key);
        out.push(c);
    }
    out
}

fn rds_ads(name: &str) -> http_connection_manager::RouteSpecifier {
    http_connection_manager::RouteSpecifier::Rds(Rds {
        route_config_name: name.into(),
        config_source: Some(ads_config_source()),
    })
}

/// SNI match for a server's hosts; `*` (any host) means no SNI condition.
fn sni_match(server: &Server) -> Option<FilterChainMatch> {
    let mut names: Vec<String> = server
        .hosts
        .iter()
        .map(|h| server_host(h).to_string())
        .collect();
    if names.iter().any(|h| h == "*") {
        return None;
    }
    names.sort();
    names.dedup();
    (!names.is_empty()).then(|| FilterChainMatch {
        server_names: names,
        ..Default::default()
    })
}

fn passthrough_chains(
    scope: &ProxyScope<'_>,
    gw: &Gateway,
    server: &Server,
    port: u16,
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    for vs in scope.gateway_virtual_services(gw) {
        if !hosts_intersect(&server.hosts, &vs.spec.hosts) {
            continue;
        }
        for rule in &vs.spec.tls {
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
                        Some(gw),
                    )
                })
                .collect();
            let mut sni: Vec<String> = applicable
                .iter()
                .flat_map(|m| m.sni_hosts.iter())
                .filter(|h| {
                    server
                        .hosts
                        .iter()
                        .any(|s| host_matches(server_host(s), h) || host_matches(h, server_host(s)))
                })
                .cloned()
                .collect();
            sni.sort();
            sni.dedup();
            if sni.is_empty() {
                continue;
            }
            let Some(cluster) = l4_destinations(scope, vs, &rule.route, port) else {
                continue;
            };
            let catch_all = sni.iter().any(|h| h == "*");
            let bind = scope.gateway_bind_port(port);
            chains.push(FilterChain {
                name: format!("{}_{bind}_{}", namespace_of(vs), name_of(vs)),
                filter_chain_match: (!catch_all).then(|| FilterChainMatch {
                    server_names: sni,
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_filter(
                    &format!("outbound_0.0.0.0_{bind}"),
                    cluster,
                )],
                ..Default::default()
            });
        }
    }
    chains
}

fn tcp_destination(
    scope: &ProxyScope<'_>,
    gw: &Gateway,
    server: &Server,
    port: u16,
) -> Option<envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier>{
    scope
        .gateway_virtual_services(gw)
        .into_iter()
        .filter(|vs| hosts_intersect(&server.hosts, &vs.spec.hosts))
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
                                Some(gw),
                            )
                    });
                if applies {
                    l4_destinations(scope, vs, &rule.route, port)
                } else {
                    None
                }
            })
        })
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.into())),
        ..Default::default()
    }
}

fn sds(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ads_config_source()),
    }
}

fn tls_version(v: TlsProtocol) -> i32 {
    match v {
        TlsProtocol::TlsAuto => tls_parameters::TlsProtocol::TlsAuto as i32,
        TlsProtocol::TlsV1_0 => tls_parameters::TlsProtocol::TlSv10 as i32,
        TlsProtocol::TlsV1_1 => tls_parameters::TlsProtocol::TlSv11 as i32,
        TlsProtocol::TlsV1_2 => tls_parameters::TlsProtocol::TlSv12 as i32,
        TlsProtocol::TlsV1_3 => tls_parameters::TlsProtocol::TlSv13 as i32,
    }
}

/// Server-side TLS: certificates from SDS (`kubernetes://<credentialName>`,
/// served by the control plane from the Secret) or from files; MUTUAL also
/// verifies clients against `<credentialName>-cacert` or `caCertificates`.
fn tls_transport_socket(tls: &ServerTlsSettings, http: bool) -> TransportSocket {
    let mode = tls.mode.unwrap_or_default();
    let mutual = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    let mut common = CommonTlsContext {
        alpn_protocols: if http {
            vec!["h2".into(), "http/1.1".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    if tls.min_protocol_version.is_some()
        || tls.max_protocol_version.is_some()
        || !tls.cipher_suites.is_empty()
    {
        common.tls_params = Some(TlsParameters {
            tls_minimum_protocol_version: tls.min_protocol_version.map_or(0, tls_version),
            tls_maximum_protocol_version: tls.max_protocol_version.map_or(0, tls_version),
            cipher_suites: tls.cipher_suites.clone(),
            ..Default::default()
        });
    }
    let credential = tls
        .credential_name
        .clone()
        .or_else(|| tls.credential_names.first().cloned());
    if let Some(cred) = &credential {
        common.tls_certificate_sds_secret_configs = vec![sds(format!("kubernetes://{cred}"))];
        if mutual {
            let ca = tls
                .ca_cert_credential_name
                .clone()
                .unwrap_or_else(|| format!("{cred}-cacert"));
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    format!("kubernetes://{ca}"),
                )),
            );
        }
    } else {
        if let (Some(cert), Some(key)) = (&tls.server_certificate, &tls.private_key) {
            common.tls_certificates = vec![TlsCertificate {
                certificate_chain: Some(file(cert)),
                private_key: Some(file(key)),
                ..Default::default()
            }];
        }
        if mutual && let Some(ca) = &tls.ca_certificates {
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(file(ca)),
                        match_typed_subject_alt_names: Vec::new(),
                        verify_certificate_spki: tls.verify_certificate_spki.clone(),
                        verify_certificate_hash: tls.verify_certificate_hash.clone(),
                        ..Default::default()
                    },
                ),
            );
        }
    }
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue {
            value: mode == ServerTlsMode::Mutual,
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}
