//! Clusters compiled from CDS: how endpoints are discovered, the
//! load-balancing policy, connect timeout, circuit-breaker thresholds, the
//! upstream HTTP protocol and connection-pool settings, and the upstream
//! TLS settings (compiled and kept; TLS origination is not served yet, so
//! such clusters are reached in plaintext).

// Envoy still honours the deprecated fields it replaced, so they are read too.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, ClusterProtocolSelection, DiscoveryType, DnsLookupFamily, LbConfig,
    LbPolicy as PbLbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;

use super::convert::{decode_any, opt_duration, string_fields, tls_context};
use super::endpoint::Assignment;
use super::lb::{Balancer, Endpoint, LbPolicy, maglev, ring};
pub use super::tls::UpstreamTls;
use super::{FieldResult, invalid, join};

/// The key of the upstream HTTP options in `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A compiled cluster: its settings and the selector over its endpoints.
#[derive(Debug)]
pub struct Cluster {
    /// Settings.
    pub config: ClusterConfig,
    /// The endpoints it was built from.
    pub assignment: Assignment,
    /// The load balancer.
    pub balancer: Balancer,
}

/// A cluster's settings, compiled from the `Cluster` resource alone.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// Name.
    pub name: String,
    /// How endpoints are found.
    pub discovery: Discovery,
    /// Load-balancing policy.
    pub lb_policy: LbPolicy,
    /// Whether localities are weighted (`locality_weighted_lb_config`).
    pub locality_weighted: bool,
    /// TCP connect timeout (Envoy's default: 5 s).
    pub connect_timeout: Duration,
    /// Circuit-breaker thresholds at default priority.
    pub thresholds: Thresholds,
    /// The HTTP version spoken upstream.
    pub protocol: UpstreamProtocol,
    /// Idle upstream connections are closed after this long (default 1 h).
    pub idle_timeout: Option<Duration>,
    /// Requests per upstream connection before it is retired.
    pub max_requests_per_connection: Option<u32>,
    /// The cluster-wide transport socket.
    pub tls: Option<UpstreamTls>,
    /// Transport sockets chosen by endpoint metadata, first match wins.
    pub tls_matches: Vec<TlsMatch>,
    /// The inline `load_assignment`, for non-EDS clusters.
    pub inline_assignment: Option<Assignment>,
    /// The local address upstream connections are made from
    /// (`upstream_bind_config.source_address`). Istio sets 127.0.0.6 on
    /// inbound clusters: the capture rules let that source through, where
    /// any other connection of the proxy to its own pod IP is captured
    /// again (a loop until file descriptors run out).
    pub source_address: Option<SocketAddr>,
    /// How often the hostnames of a STRICT_DNS or LOGICAL_DNS cluster are
    /// resolved again (`dns_refresh_rate`, Envoy's default 5 s).
    pub dns_refresh_rate: Duration,
    /// Which address families resolution keeps.
    pub dns_lookup_family: LookupFamily,
    /// Passive health checking (`outlier_detection`).
    pub outlier: Option<super::outlier::OutlierConfig>,
    /// Below this percentage of available hosts a priority level balances
    /// over all its hosts (`healthy_panic_threshold`, default 50).
    pub panic_threshold: f64,
    /// Istio's upstream metadata exchange filter is configured: TCP proxy
    /// connections offer ALPN `istio-peer-exchange` and, when the server
    /// selects it, exchange peer metadata
    /// ([`crate::telemetry::peer::exchange`]).
    pub peer_exchange: bool,
}

/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);

/// A cluster's `dns_lookup_family`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LookupFamily {
    /// IPv6 addresses if there are any, else IPv4 (Envoy's default).
    #[default]
    Auto,
    /// IPv4 only.
    V4Only,
    /// IPv6 only.
    V6Only,
    /// IPv4 addresses if there are any, else IPv6.
    V4Preferred,
    /// Both.
    All,
}

/// How a cluster finds its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// Inline endpoints.
    Static,
    /// Inline DNS names; every address they resolve to is an endpoint.
    StrictDns,
    /// Inline DNS name; resolved every refresh, new connections go to its
    /// first address.
    LogicalDns,
    /// EDS, under this service name.
    Eds {
        /// The `ClusterLoadAssignment` name.
        service_name: String,
    },
    /// The downstream connection's original destination.
    OriginalDst {
        /// Take the host from a request header instead (HTTP only).
        header: Option<String>,
        /// Replace the port.
        port_override: Option<u16>,
    },
}

/// Circuit-breaker thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Connections to the cluster.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
    /// When set, bounds retries in flight instead of `max_retries`.
    pub retry_budget: Option<RetryBudget>,
}

/// `thresholds[].retry_budget`: retries in flight may be
/// `max(min_retry_concurrency, budget_percent × (active + pending requests))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Share of the active and pending requests, in percent (default 20).
    pub budget_percent: f64,
    /// Retries always allowed (default 3).
    pub min_retry_concurrency: u32,
}

/// The HTTP version spoken to a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (h2c prior knowledge on plaintext).
    Http2,
    /// Whatever the downstream request used.
    UseDownstream,
}

/// A `transport_socket_matches` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMatch {
    /// Name.
    pub name: String,
    /// Endpoint metadata that must all be present.
    pub criteria: BTreeMap<String, String>,
    /// The socket; `None` is plaintext.
    pub tls: Option<UpstreamTls>,
}

/// Envoy's upper bound for `maglev_lb_config.table_size`.
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

// === impl Thresholds ===

impl Default for Thresholds {
    /// Envoy's defaults.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

impl Thresholds {
    /// Compiles the DEFAULT-priority entry of `circuit_breakers.thresholds`
    /// (`index` is its place in the list, for error paths).
    fn compile(
        t: &envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds,
        index: usize,
    ) -> FieldResult<Self> {
        let d = Self::default();
        let at = format!("circuit_breakers.thresholds[{index}]");
        let retry_budget = t
            .retry_budget
            .as_ref()
            .map(|b| {
                let budget_percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
                if !(0.0..=100.0).contains(&budget_percent) {
                    return invalid(
                        join(&at, "retry_budget.budget_percent"),
                        format!("{budget_percent} is not a percentage (0 to 100)"),
                    );
                }
                // `budget_interval` only widens the window of requests the
                // budget is a share of; the present ones are counted.
                opt_duration(
                    b.budget_interval.as_ref(),
                    &join(&at, "retry_budget.budget_interval"),
                )?;
                Ok(RetryBudget {
                    budget_percent,
                    min_retry_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
                })
            })
            .transpose()?;
        Ok(Self {
            max_connections: t
                .max_connections
                .as_ref()
                .map_or(d.max_connections, |v| v.value),
            max_pending_requests: t
                .max_pending_requests
                .as_ref()
                .map_or(d.max_pending_requests, |v| v.value),
            max_requests: t.max_requests.as_ref().map_or(d.max_requests, |v| v.value),
            max_retries: t.max_retries.as_ref().map_or(d.max_retries, |v| v.value),
            retry_budget,
        })
    }

    /// Retries allowed in flight with `requests` active or pending.
    pub fn retries_allowed(&self, requests: u64) -> u64 {
        match self.retry_budget {
            None => u64::from(self.max_retries),
            Some(b) => {
                // Truncated, as Envoy's `static_cast<uint64_t>`.
                let share = (b.budget_percent / 100.0 * requests as f64) as u64;
                share.max(u64::from(b.min_retry_concurrency))
            }
        }
    }
}

// === impl ClusterConfig ===

/// `upstream_bind_config.source_address`: an IP and a port (0 for any).
fn source_address(
    s: &envoy_types::pb::envoy::config::core::v3::SocketAddress,
) -> FieldResult<SocketAddr> {
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    let field = "upstream_bind_config.source_address";
    let Ok(ip) = s.address.parse::<IpAddr>() else {
        return invalid(
            join(field, "address"),
            format!("{:?} is not an IP address", s.address),
        );
    };
    let port = match &s.port_specifier {
        None => 0,
        Some(PortSpecifier::PortValue(p)) => u16::try_from(*p)
            .or_else(|_| invalid(join(field, "port_value"), "must be below 65536"))?,
        Some(PortSpecifier::NamedPort(_)) => {
            return invalid(
                join(field, "named_port"),
                "is not supported; use port_value",
            );
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Whether the cluster's `filters` run Istio's upstream metadata exchange
/// for its protocol. Other upstream filters are ignored, as before.
fn peer_exchange(c: &PbCluster) -> FieldResult<bool> {
    use mesh_api::xds::metadata_exchange::{
        CLUSTER_FILTER, LISTENER_FILTER, MetadataExchange, PROTOCOL,
    };
    let mut on = false;
    for (i, f) in c.filters.iter().enumerate() {
        // Newer istiods name the upstream filter like the listener one.
        if f.name != CLUSTER_FILTER && f.name != LISTENER_FILTER {
            continue;
        }
        let Some(any) = &f.typed_config else {
            return invalid(format!("filters[{i}].typed_config"), "is required");
        };
        match MetadataExchange::from_any(any) {
            Ok(Some(mx)) => on |= mx.protocol == PROTOCOL,
            Ok(None) => {}
            Err(e) => return invalid(format!("filters[{i}].typed_config"), e),
        }
    }
    Ok(on)
}

impl ClusterConfig {
    /// Compiles a cluster's settings (and its inline endpoints).
    pub(crate) fn compile(c: &PbCluster) -> FieldResult<Self> {
        let kind = match &c.cluster_discovery_type {
            None => DiscoveryType::Static,
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
                .or_else(|_| invalid("type", format!("unknown cluster type {t}")))?,
            Some(ClusterDiscoveryType::ClusterType(custom)) => {
                return invalid(
                    "cluster_type",
                    format!("custom cluster type {:?} is not supported", custom.name),
                );
            }
        };
        let mut header = None;
        let mut port_override = None;
        if let Some(LbConfig::OriginalDstLbConfig(o)) = &c.lb_config {
            if o.use_http_header {
                header = Some(if o.http_header_name.is_empty() {
                    "x-envoy-original-dst-host".to_string()
                } else {
                    o.http_header_name.to_ascii_lowercase()
                });
            }
            port_override = o
                .upstream_port_override
                .as_ref()
                .map(|p| {
                    u16::try_from(p.value).or_else(|_| {
                        invalid(
                            "original_dst_lb_config.upstream_port_override",
                            "must be below 65536",
                        )
                    })
                })
                .transpose()?;
        }
        let discovery = match kind {
            DiscoveryType::Static => Discovery::Static,
            DiscoveryType::StrictDns => Discovery::StrictDns,
            DiscoveryType::LogicalDns => Discovery::LogicalDns,
            DiscoveryType::Eds => Discovery::Eds {
                service_name: c
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| c.name.clone()),
            },
            DiscoveryType::OriginalDst => Discovery::OriginalDst {
                header,
                port_override,
            },
        };
        let lb_policy = lb_policy(c, &discovery)?;
        if c.lb_subset_config.is_some() {
            return invalid("lb_subset_config", "subset load balancing is not supported");
        }
        let locality_weighted = matches!(
            c.common_lb_config
                .as_ref()
                .and_then(|l| l.locality_config_specifier.as_ref()),
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        );
        let thresholds = c
            .circuit_breakers
            .as_ref()
            .and_then(|cb| {
                cb.thresholds
                    .iter()
                    .enumerate()
                    .find(|(_, t)| t.priority == RoutingPriority::Default as i32)
            })
            .map(|(i, t)| Thresholds::compile(t, i))
            .transpose()?
            .unwrap_or_default();
        let (protocol, idle_timeout, max_requests_per_connection) = http_options(c)?;
        let tls = c
            .transport_socket
            .as_ref()
            .map(|t| upstream_tls(t, "transport_socket"))
            .transpose()?
            .flatten();
        let tls_matches = c
            .transport_socket_matches
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let field = format!("transport_socket_matches[{i}]");
                Ok(TlsMatch {
                    name: m.name.clone(),
                    criteria: m.r#match.as_ref().map(string_fields).unwrap_or_default(),
                    tls: m
                        .transport_socket
                        .as_ref()
                        .map(|t| upstream_tls(t, &join(&field, "transport_socket")))
                        .transpose()?
                        .flatten(),
                })
            })
            .collect::<FieldResult<_>>()?;
        let inline_assignment = match (&discovery, &c.load_assignment) {
            (Discovery::Eds { .. } | Discovery::OriginalDst { .. }, _) | (_, None) => None,
            (_, Some(la)) => Some(Assignment::compile(la).map_err(|e| super::FieldError {
                field: join("load_assignment", &e.field),
                reason: e.reason,
            })?),
        };
        if matches!(discovery, Discovery::LogicalDns)
            && inline_assignment
                .as_ref()
                .is_some_and(|a| a.endpoints().count() > 1)
        {
            return invalid(
                "load_assignment",
                "a LOGICAL_DNS cluster takes exactly one endpoint",
            );
        }
        let dns_refresh_rate = opt_duration(c.dns_refresh_rate.as_ref(), "dns_refresh_rate")?
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_DNS_REFRESH_RATE);
        let dns_lookup_family = match DnsLookupFamily::try_from(c.dns_lookup_family) {
            Ok(DnsLookupFamily::Auto) => LookupFamily::Auto,
            Ok(DnsLookupFamily::V4Only) => LookupFamily::V4Only,
            Ok(DnsLookupFamily::V6Only) => LookupFamily::V6Only,
            Ok(DnsLookupFamily::V4Preferred) => LookupFamily::V4Preferred,
            Ok(DnsLookupFamily::All) => LookupFamily::All,
            Err(_) => {
                return invalid(
                    "dns_lookup_family",
                    format!("unknown DNS lookup family {}", c.dns_lookup_family),
                );
            }
        };
        let source_address = c
            .upstream_bind_config
            .as_ref()
            .and_then(|b| b.source_address.as_ref())
            .map(source_address)
            .transpose()?;
        Ok(Self {
            name: c.name.clone(),
            discovery,
            lb_policy,
            locality_weighted,
            connect_timeout: opt_duration(c.connect_timeout.as_ref(), "connect_timeout")?
                .unwrap_or(Duration::from_secs(5)),
            thresholds,
            protocol,
            idle_timeout,
            max_requests_per_connection,
            tls,
            tls_matches,
            inline_assignment,
            source_address,
            dns_refresh_rate,
            dns_lookup_family,
            outlier: super::outlier::OutlierConfig::compile(c)?,
            panic_threshold: super::outlier::panic_threshold(c)?,
            peer_exchange: peer_exchange(c)?,
        })
    }

    /// The EDS service name, for EDS clusters.
    pub fn eds_service_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }

    /// The transport socket for `endpoint`: the first
    /// `transport_socket_matches` entry whose criteria its metadata has,
    /// else the cluster's own (always the cluster's own for an address
    /// that is not an endpoint of it, like an original destination).
    pub fn tls_for(&self, endpoint: Option<&Endpoint>) -> Option<&UpstreamTls> {
        let Some(endpoint) = endpoint else {
            return self.tls.as_ref();
        };
        self.tls_matches
            .iter()
            .find(|m| {
                m.criteria
                    .iter()
                    .all(|(k, v)| endpoint.tls_match.get(k) == Some(v))
            })
            .map_or(self.tls.as_ref(), |m| m.tls.as_ref())
    }
}

fn lb_policy(c: &PbCluster, discovery: &Discovery) -> FieldResult<LbPolicy> {
    let policy = PbLbPolicy::try_from(c.lb_policy).or_else(|_| {
        invalid(
            "lb_policy",
            format!("unknown load-balancing policy {}", c.lb_policy),
        )
    })?;
    let original_dst = matches!(discovery, Discovery::OriginalDst { .. });
    Ok(match policy {
        _ if original_dst && policy != PbLbPolicy::ClusterProvided => {
            return invalid(
                "lb_policy",
                "an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED",
            );
        }
        PbLbPolicy::ClusterProvided if !original_dst => {
            return invalid(
                "lb_policy",
                "CLUSTER_PROVIDED is only valid for ORIGINAL_DST clusters",
            );
        }
        PbLbPolicy::ClusterProvided => LbPolicy::ClusterProvided,
        PbLbPolicy::RoundRobin => LbPolicy::RoundRobin,
        PbLbPolicy::Random => LbPolicy::Random,
        PbLbPolicy::LeastRequest => LbPolicy::LeastRequest {
            choices: match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(l)) => {
                    l.choice_count.as_ref().map_or(2, |v| v.value.max(2))
                }
                _ => 2,
            },
        },
        PbLbPolicy::RingHash => {
            let (min, max) = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => (
                    r.minimum_ring_size
                        .as_ref()
                        .map_or(ring::DEFAULT_MIN_RING_SIZE, |v| v.value),
                    r.maximum_ring_size
                        .as_ref()
                        .map_or(ring::MAX_RING_SIZE, |v| v.value),
                ),
                _ => (ring::DEFAULT_MIN_RING_SIZE, ring::MAX_RING_SIZE),
            };
            if min > max {
                return invalid(
                    "ring_hash_lb_config.minimum_ring_size",
                    "must not exceed maximum_ring_size",
                );
            }
            LbPolicy::RingHash {
                min_size: min,
                max_size: max,
            }
        }
        PbLbPolicy::Maglev => {
            let table_size = match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => m
                    .table_size
                    .as_ref()
                    .map_or(maglev::DEFAULT_TABLE_SIZE, |v| v.value),
                _ => maglev::DEFAULT_TABLE_SIZE,
            };
            // Maglev's permutations cover the table only when its size is
            // prime; Envoy refuses other sizes, and so do we (a composite
            // size can make the table fill loop forever).
            if table_size > MAX_MAGLEV_TABLE_SIZE || !is_prime(table_size) {
                return invalid(
                    "maglev_lb_config.table_size",
                    format!(
                        "{table_size} must be a prime number no larger than {MAX_MAGLEV_TABLE_SIZE}"
                    ),
                );
            }
            LbPolicy::Maglev { table_size }
        }
        PbLbPolicy::LoadBalancingPolicyConfig => {
            return invalid(
                "load_balancing_policy",
                "extension load-balancing policies are not supported; use lb_policy",
            );
        }
    })
}

type HttpSettings = (UpstreamProtocol, Option<Duration>, Option<u32>);

fn http_options(c: &PbCluster) -> FieldResult<HttpSettings> {
    let mut protocol = if c.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    if c.protocol_selection == ClusterProtocolSelection::UseDownstreamProtocol as i32 {
        protocol = UpstreamProtocol::UseDownstream;
    }
    let mut common = c.common_http_protocol_options;
    if let Some(any) = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        let field = format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS:?}]");
        let options: HttpProtocolOptions = decode_any(any, &field)?;
        protocol = match &options.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return invalid(
                        join(&field, "explicit_http_config.http3_protocol_options"),
                        "HTTP/3 is not supported",
                    );
                }
                _ => UpstreamProtocol::Http1,
            },
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) => {
                if d.http2_protocol_options.is_some() {
                    UpstreamProtocol::UseDownstream
                } else {
                    UpstreamProtocol::Http1
                }
            }
            // Auto picks by ALPN, which plaintext connections do not have.
            Some(UpstreamProtocolOptions::AutoConfig(_)) | None => UpstreamProtocol::Http1,
        };
        if options.common_http_protocol_options.is_some() {
            common = options.common_http_protocol_options;
        }
    }
    let idle_timeout = match common.as_ref().and_then(|c| c.idle_timeout.as_ref()) {
        None => Some(Duration::from_secs(3600)),
        Some(d) => Some(super::convert::duration(
            d,
            "common_http_protocol_options.idle_timeout",
        )?)
        .filter(|d| !d.is_zero()),
    };
    let max_requests = common
        .as_ref()
        .and_then(|c| c.max_requests_per_connection.as_ref())
        .or(c.max_requests_per_connection.as_ref())
        .map(|v| v.value)
        .filter(|v| *v > 0);
    Ok((protocol, idle_timeout, max_requests))
}

fn upstream_tls(t: &TransportSocket, at: &str) -> FieldResult<Option<UpstreamTls>> {
    let Some(ctx) = tls_context::<UpstreamTlsContext>(t, at)? else {
        return Ok(None);
    };
    super::tls::upstream(&ctx, &join(at, "typed_config")).map(Some)
}

// === impl Cluster ===

impl Cluster {
    /// A cluster over `assignment` (EDS) or its inline endpoints.
    pub fn new(config: ClusterConfig, assignment: Assignment) -> Self {
        let assignment = if config.eds_service_name().is_some() {
            assignment
        } else {
            config.inline_assignment.clone().unwrap_or_default()
        };
        let balancer = Balancer::build(&assignment, config.lb_policy, config.locality_weighted);
        Self {
            config,
            assignment,
            balancer,
        }
    }

    /// A cluster over exactly `assignment` (a DNS cluster's endpoints once
    /// their names are resolved).
    pub fn with_assignment(config: ClusterConfig, assignment: Assignment) -> Self {
        let balancer = Balancer::build(&assignment, config.lb_policy, config.locality_weighted);
        Self {
            config,
            assignment,
            balancer,
        }
    }

    /// Whether its endpoints are hostnames to resolve (STRICT_DNS,
    /// LOGICAL_DNS).
    pub fn is_dns(&self) -> bool {
        matches!(
            self.config.discovery,
            Discovery::StrictDns | Discovery::LogicalDns
        )
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::test_support::golden;
    use serde_json::json;
    use test_case::test_case;

    fn cluster(value: serde_json::Value) -> FieldResult<ClusterConfig> {
        let c: PbCluster = mesh_api::xds::json::from_json(&value).unwrap();
        ClusterConfig::compile(&c)
    }

    #[test_case(json!({"name": "c", "type": "EDS", "lbPolicy": "CLUSTER_PROVIDED"}), "lb_policy"; "cluster provided on eds")]
    #[test_case(json!({"name": "c", "type": "ORIGINAL_DST", "lbPolicy": "ROUND_ROBIN"}), "lb_policy"; "round robin on original dst")]
    #[test_case(json!({"name": "c", "clusterType": {"name": "envoy.clusters.aggregate"}}), "cluster_type"; "custom type")]
    #[test_case(json!({"name": "c", "type": "STATIC", "loadAssignment": {"clusterName": "c", "endpoints": [{"lbEndpoints": [{"endpoint": {}}]}]}}), "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address"; "bad inline endpoint")]
    #[test_case(json!({"name": "c", "type": "EDS", "lbSubsetConfig": {}}), "lb_subset_config"; "subsets")]
    fn refuses_with_field_path(value: serde_json::Value, field: &str) {
        assert_eq!(cluster(value).unwrap_err().field, field);
    }

    #[test]
    fn settings_and_defaults() {
        let c = cluster(json!({"name": "outbound|9080|v2|reviews", "type": "EDS",
            "edsClusterConfig": {"serviceName": "svc"},
            "lbPolicy": "RING_HASH", "ringHashLbConfig": {"minimumRingSize": 2048},
            "circuitBreakers": {"thresholds": [{"maxConnections": 100, "maxRetries": 2}]},
            "typedExtensionProtocolOptions": {HTTP_PROTOCOL_OPTIONS: {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "commonHttpProtocolOptions": {"idleTimeout": "30s", "maxRequestsPerConnection": 5},
                "explicitHttpConfig": {"http2ProtocolOptions": {}}}}}))
        .unwrap();
        assert_eq!(c.eds_service_name(), Some("svc"));
        assert_eq!(
            c.lb_policy,
            LbPolicy::RingHash {
                min_size: 2048,
                max_size: ring::MAX_RING_SIZE
            }
        );
        assert_eq!(c.thresholds.max_connections, 100);
        assert_eq!(c.thresholds.max_requests, 1024);
        assert_eq!(c.thresholds.max_retries, 2);
        assert_eq!(c.protocol, UpstreamProtocol::Http2);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.max_requests_per_connection, Some(5));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn istios_upstream_metadata_exchange_filter_turns_the_exchange_on() {
        use envoy_types::pb::envoy::config::cluster::v3::Filter;
        use envoy_types::pb::google::protobuf::Any;
        use mesh_api::xds::metadata_exchange::{CLUSTER_FILTER, MetadataExchange};
        let with = |filters: Vec<Filter>| {
            ClusterConfig::compile(&PbCluster {
                name: "c".into(),
                filters,
                ..Default::default()
            })
        };
        let mx = |name: &str, any: Option<Any>| Filter {
            name: name.into(),
            typed_config: any,
            ..Default::default()
        };
        assert!(!with(vec![]).unwrap().peer_exchange);
        assert!(
            with(vec![mx(CLUSTER_FILTER, Some(MetadataExchange::istio()))])
                .unwrap()
                .peer_exchange
        );
        assert!(
            with(vec![mx(
                "istio.metadata_exchange",
                Some(MetadataExchange::istio())
            )])
            .unwrap()
            .peer_exchange
        );
        // Another protocol is not spoken; other filters are ignored as before.
        let other = mesh_api::xds::pack_any(MetadataExchange {
            protocol: "something-else".into(),
        });
        assert!(
            !with(vec![mx(CLUSTER_FILTER, Some(other))])
                .unwrap()
                .peer_exchange
        );
        let unknown = Any {
            type_url: "type.googleapis.com/some.Filter".into(),
            value: vec![1, 2],
        };
        assert!(
            !with(vec![mx("some.filter", Some(unknown))])
                .unwrap()
                .peer_exchange
        );
        // A config that does not decode is refused with its field.
        let bad = Any {
            type_url: MetadataExchange::istio().type_url,
            value: vec![0x0a, 0x40],
        };
        let e = with(vec![mx("x", None), mx(CLUSTER_FILTER, Some(bad))]).unwrap_err();
        assert_eq!(e.field, "filters[1].typed_config");
        let e = with(vec![mx(CLUSTER_FILTER, None)]).unwrap_err();
        assert_eq!(e.field, "filters[0].typed_config");
    }

    #[test]
    fn retry_budget_replaces_max_retries() {
        let c = cluster(json!({"name": "c", "circuitBreakers": {"thresholds": [
            {"priority": "HIGH", "maxRetries": 9},
            {"maxRetries": 1, "retryBudget": {"budgetPercent": {"value": 25.0}, "minRetryConcurrency": 2}}]}}))
        .unwrap();
        assert_eq!(
            c.thresholds.retry_budget,
            Some(RetryBudget {
                budget_percent: 25.0,
                min_retry_concurrency: 2
            })
        );
        assert_eq!(c.thresholds.retries_allowed(0), 2);
        assert_eq!(c.thresholds.retries_allowed(100), 25);
        // Istio's defaults when the DestinationRule gives a bare retryBudget.
        let c =
            cluster(json!({"name": "c", "circuitBreakers": {"thresholds": [{"retryBudget": {}}]}}))
                .unwrap();
        assert_eq!(c.thresholds.retries_allowed(10), 3);
        assert_eq!(c.thresholds.retries_allowed(100), 20);
        // No budget: max_retries.
        let c = cluster(json!({"name": "c"})).unwrap();
        assert_eq!(c.thresholds.retries_allowed(1000), 3);
    }

    #[test_case(json!({"budgetPercent": {"value": 120.0}}), "circuit_breakers.thresholds[1].retry_budget.budget_percent"; "over 100")]
    #[test_case(json!({"budgetPercent": {"value": -1.0}}), "circuit_breakers.thresholds[1].retry_budget.budget_percent"; "negative")]
    #[test_case(json!({"budgetInterval": "-1s"}), "circuit_breakers.thresholds[1].retry_budget.budget_interval"; "negative interval")]
    fn bad_retry_budgets_are_refused_with_field_path(budget: serde_json::Value, field: &str) {
        let e = cluster(json!({"name": "c", "circuitBreakers": {"thresholds": [
            {"priority": "HIGH"}, {"retryBudget": budget}]}}))
        .unwrap_err();
        assert_eq!(e.field, field);
    }

    #[test]
    fn upstream_bind_config_gives_the_source_address() {
        let bound = |address: serde_json::Value| {
            cluster(
                json!({"name": "InboundPassthroughCluster", "type": "ORIGINAL_DST",
                "lbPolicy": "CLUSTER_PROVIDED",
                "upstreamBindConfig": {"sourceAddress": address}}),
            )
        };
        let c = bound(json!({"address": "127.0.0.6", "portValue": 0})).unwrap();
        assert_eq!(c.source_address, Some("127.0.0.6:0".parse().unwrap()));
        let e = bound(json!({"address": "localhost"})).unwrap_err();
        assert_eq!(e.field, "upstream_bind_config.source_address.address");
    }

    #[test]
    fn golden_clusters_compile() {
        for (path, c) in golden("clusters") {
            cluster(c).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        }
        for (path, e) in golden("endpoints") {
            let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
                mesh_api::xds::json::from_json(&e).unwrap();
            Assignment::compile(&cla).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        }
    }

    #[test]
    fn transport_socket_match_by_endpoint_metadata() {
        let c = cluster(json!({"name": "c", "type": "EDS", "transportSocketMatches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transportSocket": {"name": "envoy.transport_sockets.tls",
                "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": "outbound_.80_._.svc"}}},
            {"name": "tlsMode-disabled", "match": {}, "transportSocket": {"name": "envoy.transport_sockets.raw_buffer",
                "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}
        ]}))
        .unwrap();
        let mut a = Assignment::default();
        a.localities
            .push(crate::runtime::endpoint::LocalityEndpoints {
                endpoints: vec![
                    crate::runtime::endpoint::EndpointSpec {
                        address: crate::runtime::convert::HostAddress::Ip(
                            "10.0.0.1:80".parse().unwrap(),
                        ),
                        weight: 1,
                        hostname: String::new(),
                        tls_match: [("tlsMode".to_string(), "istio".to_string())].into(),
                    },
                    crate::runtime::endpoint::EndpointSpec {
                        address: crate::runtime::convert::HostAddress::Ip(
                            "10.0.0.2:80".parse().unwrap(),
                        ),
                        weight: 1,
                        hostname: String::new(),
                        tls_match: BTreeMap::new(),
                    },
                ],
                ..Default::default()
            });
        let cluster = Cluster::new(c, a);
        let tls: Vec<_> = cluster
            .balancer
            .endpoints
            .iter()
            .map(|e| cluster.config.tls_for(Some(e)).map(|t| t.sni.clone()))
            .collect();
        assert_eq!(tls, vec![Some("outbound_.80_._.svc".to_string()), None]);
    }
}
