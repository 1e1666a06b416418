//! CDS: the clusters one proxy needs, as Istio builds them.
//!
//! - `outbound|<port>||<host>` for every port of every visible service, and
//!   `outbound|<port>|<subset>|<host>` per DestinationRule subset. The
//!   discovery type follows the service's resolution (EDS, STRICT_DNS,
//!   LOGICAL_DNS, ORIGINAL_DST); the DestinationRule's traffic policy,
//!   merged as Istio merges it ([`policy`]), sets load balancing, circuit
//!   breakers, outlier detection and TLS ([`tls`], auto-mTLS by default).
//! - For sidecars, `inbound|<port>||` per port the workload serves, plus
//!   `PassthroughCluster` and `InboundPassthroughCluster`.
//! - `BlackHoleCluster` for everyone.
//!
//! Output is sorted by name, so the same snapshot always gives the same list.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
    LbPolicy,
    common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig},
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, BindConfig, ConfigSource, SocketAddress,
    address::Address as AddressKind, config_source::ConfigSourceSpecifier,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{HashPolicy, hash_policy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use mesh_api::networking::destination_rule::Subset;

use super::Part;
use super::endpoint::{self, EndpointFilter};
use super::{
    BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER, ProxyScope,
    inbound_cluster_name, outbound_cluster_name,
};
use crate::model::{Protocol, Resolution, Service, ServicePort};
use crate::proxy::ProxyRole;

pub(crate) mod policy;
mod tls;

pub(crate) use policy::{Policy, find_subset};
pub(crate) use tls::tls_mode_struct;

/// Istio's default upstream connect timeout.
const DEFAULT_CONNECT_TIMEOUT_SECS: i64 = 10;
/// Istio's default refresh rate of DNS clusters.
const DEFAULT_DNS_REFRESH_SECS: i64 = 60;
/// Source address of inbound passthrough connections; Istio's iptables
/// rules let traffic from it reach the app without being captured again.
const INBOUND_PASSTHROUGH_BIND_ADDRESS: &str = "127.0.0.6";

// === Builders ===

/// Every cluster the proxy needs: outbound clusters for each visible
/// service port and subset; for sidecars also the inbound clusters and the
/// passthrough clusters; `BlackHoleCluster` for every proxy. Sorted by name.
pub fn build_clusters(scope: &ProxyScope<'_>) -> Vec<Cluster> {
    build_clusters_part(scope, Part::All)
}

/// The clusters of one part of the proxy's configuration, sorted by name.
pub fn build_clusters_part(scope: &ProxyScope<'_>, part: Part) -> Vec<Cluster> {
    let sidecar = scope.proxy.role == ProxyRole::Sidecar;
    let mut clusters = Vec::new();
    if part.outbound() {
        for service in scope.services() {
            for port in service.ports.iter().filter(|p| p.protocol != Protocol::Udp) {
                clusters.extend(outbound_clusters(scope, service, port));
            }
        }
        if sidecar {
            clusters.push(passthrough_cluster(scope, PASSTHROUGH_CLUSTER, false));
        }
        clusters.push(blackhole_cluster(scope));
    }
    if part.inbound() && sidecar {
        clusters.extend(
            inbound_ports(scope)
                .into_iter()
                .map(|p| inbound_cluster(scope, p)),
        );
        clusters.push(passthrough_cluster(
            scope,
            INBOUND_PASSTHROUGH_CLUSTER,
            true,
        ));
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    clusters.dedup_by(|a, b| a.name == b.name);
    clusters
}

/// The default cluster of a service port and one per DestinationRule subset.
fn outbound_clusters(
    scope: &ProxyScope<'_>,
    service: &Service,
    port: &ServicePort,
) -> Vec<Cluster> {
    let dr = scope.destination_rule(&service.hostname);
    let mut out = vec![outbound_cluster(scope, service, port, None)];
    if let Some(dr) = dr {
        out.extend(
            dr.spec
                .subsets
                .iter()
                .filter(|s| !s.name.is_empty())
                .map(|s| outbound_cluster(scope, service, port, Some(s))),
        );
    }
    out
}

/// One outbound cluster, with the merged DestinationRule policy applied.
fn outbound_cluster(
    scope: &ProxyScope<'_>,
    service: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
) -> Cluster {
    let mesh = scope.snapshot.mesh.as_ref();
    let subset_name = subset.map_or("", |s| s.name.as_str());
    let name = outbound_cluster_name(port.port, subset_name, &service.hostname);
    let dr = scope.destination_rule(&service.hostname);
    let policy = Policy::effective(dr, subset, port.port);
    let mut cluster = Cluster {
        name: name.clone(),
        connect_timeout: Some(connect_timeout(scope)),
        metadata: dr.map(|dr| {
            super::istio_config_metadata(
                "destination-rule",
                crate::snapshot::namespace_of(dr),
                crate::snapshot::name_of(dr),
            )
        }),
        ..Default::default()
    };
    let filter = EndpointFilter {
        service,
        port: port.port,
        subset_labels: subset.map(|s| &s.labels),
    };
    match service.resolution {
        Resolution::ClientSideLb => {
            set_type(&mut cluster, DiscoveryType::Eds);
            cluster.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: name.clone(),
            });
        }
        Resolution::DnsLb | Resolution::DnsRoundRobin => {
            let mut cla = endpoint::load_assignment(scope, &name, &filter, &policy);
            let single = cla
                .endpoints
                .iter()
                .map(|l| l.lb_endpoints.len())
                .sum::<usize>()
                == 1;
            // LOGICAL_DNS takes exactly one host; Istio's validation refuses
            // more, so anything else falls back to STRICT_DNS rather than a NACK.
            if service.resolution == Resolution::DnsRoundRobin && single {
                set_type(&mut cluster, DiscoveryType::LogicalDns);
                for l in &mut cla.endpoints {
                    l.priority = 0;
                }
            } else {
                set_type(&mut cluster, DiscoveryType::StrictDns);
            }
            cluster.load_assignment = Some(cla);
            set_dns_options(&mut cluster, mesh);
        }
        Resolution::Passthrough => policy::make_original_dst(&mut cluster),
    }
    if service.resolution != Resolution::Passthrough {
        policy::apply_load_balancer(&mut cluster, policy.load_balancer);
    }
    let http2 = policy::use_http2(port.protocol, policy.connection_pool, mesh);
    let mut http_options = if http2 {
        Some(policy::explicit_http2())
    } else if port.protocol == Protocol::Unsupported && scope.proxy.role == ProxyRole::Sidecar {
        // Sniffed ports: the upstream speaks whatever the client spoke.
        Some(HttpProtocolOptions {
            upstream_protocol_options: Some(policy::use_downstream_protocol()),
            ..Default::default()
        })
    } else {
        None
    };
    policy::apply_connection_pool(
        &mut cluster,
        policy.connection_pool,
        mesh,
        &mut http_options,
    );
    policy::attach_http_options(&mut cluster, http_options);
    policy::apply_outlier_detection(&mut cluster, policy.outlier_detection);
    policy::apply_retry_budget(&mut cluster, policy.retry_budget);
    if policy
        .locality_setting(mesh)
        .is_some_and(|l| !l.distribute.is_empty())
        && cluster.lb_policy != LbPolicy::ClusterProvided as i32
    {
        cluster
            .common_lb_config
            .get_or_insert_with(CommonLbConfig::default)
            .locality_config_specifier = Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
            LocalityWeightedLbConfig {},
        ));
    }
    let target = tls::TlsTarget {
        service,
        port: port.port,
        subset: subset_name,
        http2,
        // As istiod: TCP (and sniffed) ports, for proxies that have the filter.
        peer_exchange: scope.proxy.mesh_proxy && !http2 && !port.protocol.is_http(),
    };
    tls::apply_tls(&mut cluster, scope, policy.tls, &target);
    cluster
}

/// One port the sidecar's workload serves: the target (container) port and
/// its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundPort {
    /// The port the application listens on (the endpoint's target port).
    pub port: u16,
    /// Protocol of the service port that maps to it.
    pub protocol: Protocol,
}

/// The ports this sidecar's workload serves: target ports of every service
/// endpoint whose address is one of the proxy's, sorted and unique by port.
/// When two services disagree on a port's protocol, HTTP wins: it still
/// carries opaque bytes it cannot parse. Listeners and clusters share this
/// list so `inbound|<port>||` always exists for every inbound filter chain.
pub fn inbound_ports(scope: &ProxyScope<'_>) -> Vec<InboundPort> {
    let registry = &scope.snapshot.registry;
    let mut ports: std::collections::BTreeMap<u16, Protocol> = std::collections::BTreeMap::new();
    for ip in &scope.proxy.ip_addresses {
        for (host, ep) in scope.snapshot.endpoints_at(ip) {
            let Some(service) = registry.service(host) else {
                continue;
            };
            if ep.port == 0 {
                continue;
            }
            let Some(sp) = service.port(ep.service_port) else {
                continue;
            };
            if sp.protocol == Protocol::Udp {
                continue;
            }
            let entry = ports.entry(ep.port).or_insert(sp.protocol);
            if sp.protocol.is_http() && !entry.is_http() {
                *entry = sp.protocol;
            }
        }
    }
    ports
        .into_iter()
        .map(|(port, protocol)| InboundPort { port, protocol })
        .collect()
}

/// `inbound|<port>||`: a STATIC cluster to `127.0.0.1:<port>`. Istio now
/// uses ORIGINAL_DST through `InboundPassthroughCluster` semantics; a
/// static loopback endpoint is the simpler equivalent for a sidecar whose
/// application listens on all interfaces or on loopback.
fn inbound_cluster(scope: &ProxyScope<'_>, port: InboundPort) -> Cluster {
    let name = inbound_cluster_name(port.port);
    let mut cluster = Cluster {
        name: name.clone(),
        connect_timeout: Some(connect_timeout(scope)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: Some(socket_address("127.0.0.1", u32::from(port.port))),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        circuit_breakers: Some(
            envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
                thresholds: vec![policy::default_thresholds()],
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    set_type(&mut cluster, DiscoveryType::Static);
    if port.protocol.is_http2() {
        policy::attach_http_options(&mut cluster, Some(policy::explicit_http2()));
    }
    cluster
}

/// `PassthroughCluster` / `InboundPassthroughCluster`: ORIGINAL_DST, the
/// upstream protocol following the downstream one.
fn passthrough_cluster(scope: &ProxyScope<'_>, name: &str, inbound: bool) -> Cluster {
    let mut cluster = Cluster {
        name: name.to_string(),
        connect_timeout: Some(connect_timeout(scope)),
        circuit_breakers: Some(
            envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
                thresholds: vec![policy::default_thresholds()],
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    policy::make_original_dst(&mut cluster);
    if inbound {
        cluster.upstream_bind_config = Some(BindConfig {
            source_address: Some(SocketAddress {
                address: INBOUND_PASSTHROUGH_BIND_ADDRESS.into(),
                port_specifier: Some(PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    policy::attach_http_options(
        &mut cluster,
        Some(HttpProtocolOptions {
            upstream_protocol_options: Some(policy::use_downstream_protocol()),
            ..Default::default()
        }),
    );
    cluster
}

/// `BlackHoleCluster`: STATIC with no endpoints; every request fails.
fn blackhole_cluster(scope: &ProxyScope<'_>) -> Cluster {
    let mut cluster = Cluster {
        name: BLACKHOLE_CLUSTER.into(),
        connect_timeout: Some(connect_timeout(scope)),
        ..Default::default()
    };
    set_type(&mut cluster, DiscoveryType::Static);
    cluster
}

// === Route-side hash policy ===

/// The route hash policies that go with a consistent-hash DestinationRule
/// for `host` (subset `subset`, empty for none, on `port`): the route
/// builder adds them to routes whose destination is that cluster. Empty
/// when the merged policy is not consistent hashing.
pub fn hash_policy_for(
    scope: &ProxyScope<'_>,
    host: &str,
    subset: &str,
    port: u16,
) -> Vec<HashPolicy> {
    let dr = scope.destination_rule(host);
    let subset = if subset.is_empty() {
        None
    } else {
        find_subset(dr, subset)
    };
    let policy = Policy::effective(dr, subset, port);
    let Some(ch) = policy
        .load_balancer
        .and_then(|lb| lb.consistent_hash.as_ref())
    else {
        return Vec::new();
    };
    use hash_policy::PolicySpecifier;
    let specifier = if let Some(header) = ch.http_header_name.as_ref().filter(|h| !h.is_empty()) {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: header.clone(),
            ..Default::default()
        })
    } else if let Some(cookie) = ch.http_cookie.as_ref().filter(|c| !c.name.is_empty()) {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.as_ref().map(pb_duration),
            path: cookie.path.clone().unwrap_or_default(),
            attributes: cookie
                .attributes
                .iter()
                .map(|a| hash_policy::CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone().unwrap_or_default(),
                })
                .collect(),
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    } else if let Some(name) = ch
        .http_query_parameter_name
        .as_ref()
        .filter(|q| !q.is_empty())
    {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.clone() })
    } else {
        return Vec::new();
    };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    }]
}

// === Helpers ===

/// DNS settings as Istio writes them: IPv4 lookups, the mesh refresh rate
/// (60s by default), TTLs respected. Envoy deprecates these cluster fields
/// in favour of the `envoy.clusters.dns` extension but still honours them,
/// and Istio and existing tooling read them here.
#[allow(deprecated)]
fn set_dns_options(cluster: &mut Cluster, mesh: &mesh_api::mesh_config::MeshConfig) {
    cluster.dns_lookup_family = DnsLookupFamily::V4Only as i32;
    cluster.respect_dns_ttl = true;
    cluster.dns_refresh_rate = Some(mesh.dns_refresh_rate.as_ref().map(pb_duration).unwrap_or(
        PbDuration {
            seconds: DEFAULT_DNS_REFRESH_SECS,
            nanos: 0,
        },
    ));
}

fn set_type(cluster: &mut Cluster, t: DiscoveryType) {
    cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(t as i32));
}

/// MeshConfig `connectTimeout`, else Istio's 10s.
fn connect_timeout(scope: &ProxyScope<'_>) -> PbDuration {
    scope
        .snapshot
        .mesh
        .connect_timeout
        .as_ref()
        .map(pb_duration)
        .unwrap_or(PbDuration {
            seconds: DEFAULT_CONNECT_TIMEOUT_SECS,
            nanos: 0,
        })
}

/// `{ads: {}, resource_api_version: V3}`.
pub(crate) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// An Istio duration as a protobuf one (Istio durations are validated to
/// fit; anything larger saturates rather than wrapping).
pub(crate) fn pb_duration(d: &mesh_api::common::Duration) -> PbDuration {
    let d = d.as_std();
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A `UInt32Value` wrapper.
pub(crate) fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}

/// A TCP socket address (an IP, or a host name for DNS clusters).
pub(crate) fn socket_address(address: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests;
