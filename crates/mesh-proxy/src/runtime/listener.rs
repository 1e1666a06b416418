//! Listeners compiled from LDS: the socket address, how connections are
//! inspected (original destination, TLS ClientHello), filter chains with
//! Envoy's `filter_chain_match` selection, and each chain's terminal
//! network filter: the HTTP connection manager or the TCP proxy.
//!
//! Selection follows Envoy's order of criteria: destination port,
//! destination IP, server name, transport protocol, application protocols,
//! direct source IP, source type, source IP, source port. At each step the
//! chains with the most specific matching value stay; when no chain names
//! a matching value, the chains that leave the criterion empty stay; when
//! none is left, the default filter chain (if any) serves the connection.

// Envoy still honours the deprecated fields it replaced, so they are read too.
#![allow(deprecated)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::core::v3::socket_address::Protocol;
use envoy_types::pb::envoy::config::core::v3::{CidrRange, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::filter_chain_match::ConnectionSourceType;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain as PbFilterChain, FilterChainMatch, Listener as PbListener,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;

use super::convert::{ip_address, opt_duration, tls_context};
use super::ext_authz::{EXT_AUTHZ_NETWORK_FILTER, NetworkExtAuthz};
use super::rbac::RbacFilter;
pub use super::tls::DownstreamTls;
use super::{FieldResult, invalid, join};

mod network;

pub use network::{
    Codec, ForwardClientCert, HttpAuthz, HttpManager, RouteSource, TcpProxy, TcpTarget, Xfcc,
};

/// Envoy's default `listener_filters_timeout`.
pub const DEFAULT_INSPECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A compiled `Listener`.
#[derive(Debug)]
pub struct Listener {
    /// Name.
    pub name: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// Whether it owns a socket (`bind_to_port: false` listeners only get
    /// connections handed over by a `use_original_dst` listener).
    pub bind_to_port: bool,
    /// Hands connections to the listener of their original destination.
    pub use_original_dst: bool,
    /// Reads the original destination (listener filter `original_dst`).
    pub original_dst_filter: bool,
    /// Whether the listener asks for TLS inspection (`tls_inspector`).
    pub tls_inspector: bool,
    /// Whether the listener asks for HTTP sniffing (`http_inspector`).
    pub http_inspector: bool,
    /// How long inspection may wait for the client's first bytes.
    pub inspect_timeout: Option<Duration>,
    /// Whether a timed-out inspection still picks a chain.
    pub continue_on_inspect_timeout: bool,
    /// Inbound or outbound, for access logs and metrics.
    pub direction: Direction,
    /// Filter chains, in configuration order.
    pub filter_chains: Vec<FilterChain>,
    /// The chain for connections no other chain matches.
    pub default_chain: Option<FilterChain>,
    /// `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB): bounds
    /// the request body kept for retries and mirrors.
    pub buffer_limit: u32,
}

/// A listener's traffic direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Not said.
    Unspecified,
    /// Into the workload.
    Inbound,
    /// Out of the workload.
    Outbound,
}

/// A compiled `FilterChain`.
#[derive(Debug)]
pub struct FilterChain {
    /// Name.
    pub name: String,
    /// When it is chosen.
    pub matcher: ChainMatch,
    /// What serves the connection.
    pub filter: NetworkFilter,
    /// TLS termination settings.
    pub tls: Option<DownstreamTls>,
    /// Network authorization filters (RBAC, external authorization), run
    /// in order once per connection before the terminal filter.
    pub authz: Vec<NetworkAuthz>,
}

/// One authorization filter of a filter chain.
#[derive(Clone, Debug)]
pub enum NetworkAuthz {
    /// `envoy.filters.network.rbac`.
    Rbac(Arc<RbacFilter>),
    /// `envoy.filters.network.ext_authz`.
    ExtAuthz(Arc<NetworkExtAuthz>),
}

/// The terminal network filter of a chain.
#[derive(Debug)]
pub enum NetworkFilter {
    /// `envoy.filters.network.http_connection_manager`.
    Http(Arc<HttpManager>),
    /// `envoy.filters.network.tcp_proxy`.
    Tcp(TcpProxy),
}

/// A compiled `FilterChainMatch`, with list fields sorted so that two
/// chains matching the same connections compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainMatch {
    destination_port: Option<u16>,
    prefix_ranges: Vec<Cidr>,
    server_names: Vec<String>,
    transport_protocol: Option<String>,
    application_protocols: Vec<String>,
    direct_source_prefix_ranges: Vec<Cidr>,
    source_type: SourceType,
    source_prefix_ranges: Vec<Cidr>,
    source_ports: Vec<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SourceType {
    #[default]
    Any,
    Local,
    External,
}

/// An IP prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// What chain selection knows about a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo<'a> {
    /// The (original) destination.
    pub destination: SocketAddr,
    /// The peer.
    pub source: SocketAddr,
    /// SNI from the ClientHello.
    pub server_name: Option<&'a str>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: &'a str,
    /// ALPN from the ClientHello, or the sniffed HTTP protocol.
    pub application_protocols: &'a [String],
}

enum Fit {
    Unspecified,
    Match(u32),
    Mismatch,
}

// === impl Listener ===

/// Compiles a listener.
pub(crate) fn compile(l: &PbListener) -> FieldResult<Listener> {
    if l.address.is_none() {
        return invalid("address", "a listener needs an address");
    }
    let address = ip_address(l.address.as_ref(), "address")?;
    if let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) =
        l.address.as_ref().and_then(|a| a.address.as_ref())
        && s.protocol == Protocol::Udp as i32
    {
        return invalid(
            "address.socket_address.protocol",
            "UDP listeners are not supported",
        );
    }
    for (field, unsupported) in [
        ("additional_addresses", !l.additional_addresses.is_empty()),
        ("filter_chain_matcher", l.filter_chain_matcher.is_some()),
        ("fcds_config", l.fcds_config.is_some()),
        ("api_listener", l.api_listener.is_some()),
        ("udp_listener_config", l.udp_listener_config.is_some()),
        ("internal_listener", l.listener_specifier.is_some()),
    ] {
        if unsupported {
            return invalid(field, "is not supported");
        }
    }
    let (mut tls_inspector, mut http_inspector, mut original_dst_filter) = (false, false, false);
    for (i, f) in l.listener_filters.iter().enumerate() {
        match f.name.as_str() {
            "envoy.filters.listener.tls_inspector" => tls_inspector = true,
            "envoy.filters.listener.http_inspector" => http_inspector = true,
            "envoy.filters.listener.original_dst" => original_dst_filter = true,
            other => {
                return invalid(
                    format!("listener_filters[{i}].name"),
                    format!(
                        "listener filter {other:?} is not supported (supported: tls_inspector, http_inspector, original_dst)"
                    ),
                );
            }
        }
    }
    let mut filter_chains: Vec<FilterChain> = Vec::with_capacity(l.filter_chains.len());
    for (i, c) in l.filter_chains.iter().enumerate() {
        let at = format!("filter_chains[{i}]");
        let chain = filter_chain(c, &at)?;
        if let Some(j) = filter_chains
            .iter()
            .position(|o| o.matcher == chain.matcher)
        {
            return invalid(
                join(&at, "filter_chain_match"),
                format!(
                    "matches the same connections as filter_chains[{j}]; each chain needs a distinct match"
                ),
            );
        }
        filter_chains.push(chain);
    }
    let default_chain = l
        .default_filter_chain
        .as_ref()
        .map(|c| filter_chain(c, "default_filter_chain"))
        .transpose()?;
    if filter_chains.is_empty() && default_chain.is_none() {
        return invalid(
            "filter_chains",
            "a listener needs a filter chain or a default_filter_chain",
        );
    }
    let inspect_timeout = match opt_duration(
        l.listener_filters_timeout.as_ref(),
        "listener_filters_timeout",
    )? {
        None => Some(DEFAULT_INSPECT_TIMEOUT),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let direction = match TrafficDirection::try_from(l.traffic_direction) {
        Ok(TrafficDirection::Inbound) => Direction::Inbound,
        Ok(TrafficDirection::Outbound) => Direction::Outbound,
        _ => Direction::Unspecified,
    };
    Ok(Listener {
        name: l.name.clone(),
        address,
        bind_to_port: l.bind_to_port.as_ref().is_none_or(|b| b.value)
            && l.deprecated_v1
                .as_ref()
                .and_then(|d| d.bind_to_port.as_ref())
                .is_none_or(|b| b.value),
        use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
        original_dst_filter,
        tls_inspector,
        http_inspector,
        inspect_timeout,
        continue_on_inspect_timeout: l.continue_on_listener_filters_timeout,
        direction,
        filter_chains,
        default_chain,
        buffer_limit: l
            .per_connection_buffer_limit_bytes
            .as_ref()
            .map_or(1024 * 1024, |v| v.value),
    })
}

impl Listener {
    /// Whether choosing a chain for a connection to `destination` depends on the ClientHello (SNI, ALPN, TLS or not). When it
    /// does not, the connection is not inspected, so a server-first
    /// protocol (MySQL's greeting) is never held up waiting for the client.
    pub fn needs_tls_inspection(&self, destination: SocketAddr) -> bool {
        self.narrow_by_address(destination).iter().any(|c| {
            !c.matcher.server_names.is_empty()
                || c.matcher.transport_protocol.is_some()
                || !c.matcher.application_protocols.is_empty()
        })
    }

    /// Whether some chain left after the address criteria matches on a
    /// sniffed HTTP protocol (`http/1.1`, `h2c`) of a plaintext connection.
    pub fn needs_http_inspection(&self, destination: SocketAddr) -> bool {
        self.narrow_by_address(destination).iter().any(|c| {
            c.matcher
                .application_protocols
                .iter()
                .any(|p| p.starts_with("http/") || p == "h2c")
        })
    }

    fn narrow_by_address(&self, destination: SocketAddr) -> Vec<&FilterChain> {
        let c = self.filter_chains.iter().collect();
        let c = narrow(c, |m| match m.destination_port {
            None => Fit::Unspecified,
            Some(p) if p == destination.port() => Fit::Match(0),
            Some(_) => Fit::Mismatch,
        });
        narrow(c, |m| cidr_fit(&m.prefix_ranges, destination.ip()))
    }

    /// The chain that serves a connection, as Envoy chooses it.
    pub fn select(&self, conn: &ConnectionInfo<'_>) -> Option<&FilterChain> {
        let c = self.narrow_by_address(conn.destination);
        let c = narrow(c, |m| server_name_fit(&m.server_names, conn.server_name));
        let c = narrow(c, |m| match &m.transport_protocol {
            None => Fit::Unspecified,
            Some(p) if p == conn.transport_protocol => Fit::Match(0),
            Some(_) => Fit::Mismatch,
        });
        let c = narrow(c, |m| {
            if m.application_protocols.is_empty() {
                Fit::Unspecified
            } else if m
                .application_protocols
                .iter()
                .any(|p| conn.application_protocols.contains(p))
            {
                Fit::Match(0)
            } else {
                Fit::Mismatch
            }
        });
        // The proxy takes no PROXY protocol, so the direct source is the source.
        let c = narrow(c, |m| {
            cidr_fit(&m.direct_source_prefix_ranges, conn.source.ip())
        });
        let c = narrow(c, |m| {
            let local = conn.source.ip().is_loopback() || conn.source.ip() == conn.destination.ip();
            match (m.source_type, local) {
                (SourceType::Any, _) => Fit::Unspecified,
                (SourceType::Local, true) | (SourceType::External, false) => Fit::Match(0),
                _ => Fit::Mismatch,
            }
        });
        let c = narrow(c, |m| cidr_fit(&m.source_prefix_ranges, conn.source.ip()));
        let c = narrow(c, |m| {
            if m.source_ports.is_empty() {
                Fit::Unspecified
            } else if m.source_ports.contains(&conn.source.port()) {
                Fit::Match(0)
            } else {
                Fit::Mismatch
            }
        });
        c.into_iter().next().or(self.default_chain.as_ref())
    }
}

/// Keeps the best-matching chains for one criterion.
fn narrow(chains: Vec<&FilterChain>, fit: impl Fn(&ChainMatch) -> Fit) -> Vec<&FilterChain> {
    let mut best: Option<u32> = None;
    let mut matched = Vec::new();
    let mut unspecified = Vec::new();
    for c in chains {
        match fit(&c.matcher) {
            Fit::Match(score) => {
                if best.is_none_or(|b| score > b) {
                    best = Some(score);
                    matched.clear();
                }
                if best == Some(score) {
                    matched.push(c);
                }
            }
            Fit::Unspecified => unspecified.push(c),
            Fit::Mismatch => {}
        }
    }
    if matched.is_empty() {
        unspecified
    } else {
        matched
    }
}

fn cidr_fit(ranges: &[Cidr], ip: IpAddr) -> Fit {
    if ranges.is_empty() {
        return Fit::Unspecified;
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| u32::from(r.len))
        .max()
        .map_or(Fit::Mismatch, Fit::Match)
}

fn server_name_fit(names: &[String], sni: Option<&str>) -> Fit {
    if names.is_empty() {
        return Fit::Unspecified;
    }
    let Some(sni) = sni.map(str::to_ascii_lowercase) else {
        return Fit::Mismatch;
    };
    // An exact name beats every wildcard; longer wildcards beat shorter.
    let mut best = None;
    for n in names {
        let score = if *n == sni {
            Some(u32::MAX)
        } else if let Some(suffix) = n.strip_prefix('*')
            && sni.len() > suffix.len()
            && sni.ends_with(suffix)
        {
            Some(u32::try_from(suffix.len()).unwrap_or(0))
        } else {
            None
        };
        best = best.max(score);
    }
    best.map_or(Fit::Mismatch, Fit::Match)
}

// === impl FilterChain ===

fn filter_chain(c: &PbFilterChain, at: &str) -> FieldResult<FilterChain> {
    let matcher = c
        .filter_chain_match
        .as_ref()
        .map(|m| chain_match(m, &join(at, "filter_chain_match")))
        .transpose()?
        .unwrap_or_default();
    if c.use_proxy_proto.as_ref().is_some_and(|b| b.value) {
        return invalid(
            join(at, "use_proxy_proto"),
            "the PROXY protocol is not supported",
        );
    }
    let tls = c
        .transport_socket
        .as_ref()
        .map(|t| transport_socket(t, &join(at, "transport_socket")))
        .transpose()?
        .flatten();
    let (authz, filter) = network_filters(&c.filters, &join(at, "filters"))?;
    Ok(FilterChain {
        name: c.name.clone(),
        matcher,
        filter,
        tls,
        authz,
    })
}

fn transport_socket(t: &TransportSocket, at: &str) -> FieldResult<Option<DownstreamTls>> {
    let Some(ctx) = tls_context::<DownstreamTlsContext>(t, at)? else {
        return Ok(None);
    };
    super::tls::downstream(&ctx, &join(at, "typed_config")).map(Some)
}

fn chain_match(m: &FilterChainMatch, at: &str) -> FieldResult<ChainMatch> {
    let ranges = |rs: &[CidrRange], field: &str| -> FieldResult<Vec<Cidr>> {
        let mut out = rs
            .iter()
            .enumerate()
            .map(|(i, r)| Cidr::compile(r, &join(at, &format!("{field}[{i}]"))))
            .collect::<FieldResult<Vec<_>>>()?;
        out.sort();
        Ok(out)
    };
    if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
        return invalid(join(at, "address_suffix"), "is not supported");
    }
    let port = |p: u32, field: &str| -> FieldResult<u16> {
        u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .map_or_else(|| invalid(join(at, field), "must be in [1, 65535]"), Ok)
    };
    let mut server_names: Vec<String> = m
        .server_names
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    server_names.sort();
    let mut application_protocols = m.application_protocols.clone();
    application_protocols.sort();
    let mut source_ports = m
        .source_ports
        .iter()
        .map(|p| port(*p, "source_ports"))
        .collect::<FieldResult<Vec<_>>>()?;
    source_ports.sort_unstable();
    Ok(ChainMatch {
        destination_port: m
            .destination_port
            .as_ref()
            .map(|p| port(p.value, "destination_port"))
            .transpose()?,
        prefix_ranges: ranges(&m.prefix_ranges, "prefix_ranges")?,
        server_names,
        transport_protocol: (!m.transport_protocol.is_empty())
            .then(|| m.transport_protocol.clone()),
        application_protocols,
        direct_source_prefix_ranges: ranges(
            &m.direct_source_prefix_ranges,
            "direct_source_prefix_ranges",
        )?,
        source_type: match ConnectionSourceType::try_from(m.source_type) {
            Ok(ConnectionSourceType::SameIpOrLoopback) => SourceType::Local,
            Ok(ConnectionSourceType::External) => SourceType::External,
            _ => SourceType::Any,
        },
        source_prefix_ranges: ranges(&m.source_prefix_ranges, "source_prefix_ranges")?,
        source_ports,
    })
}

/// The authorization filters (in order) and the terminal filter of a chain.
fn network_filters(
    filters: &[Filter],
    at: &str,
) -> FieldResult<(Vec<NetworkAuthz>, NetworkFilter)> {
    let Some((last, rest)) = filters.split_last() else {
        return invalid(
            at,
            "a filter chain needs a terminal filter: http_connection_manager or tcp_proxy",
        );
    };
    let mut authz = Vec::new();
    let mut stats = None;
    let mut peer_exchange = false;
    for (i, f) in rest.iter().enumerate() {
        let field = format!("{at}[{i}].typed_config");
        let typed = || match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => Ok(any),
            _ => invalid(field.clone(), "is required"),
        };
        match f.name.as_str() {
            mesh_api::xds::istio_stats::FILTER_NAME => {
                let any = match &f.config_type {
                    Some(ConfigType::TypedConfig(any)) => Some(any),
                    _ => None,
                };
                stats = network::istio_stats(any, &field)?;
            }
            mesh_api::xds::metadata_exchange::LISTENER_FILTER => {
                let any = match &f.config_type {
                    Some(ConfigType::TypedConfig(any)) => Some(any),
                    _ => None,
                };
                peer_exchange = network::metadata_exchange(any, &field)?;
            }
            network::RBAC_NETWORK_FILTER => {
                let filter = network::network_rbac(typed()?, &field)?;
                if filter.rules.is_some() || filter.shadow.is_some() {
                    authz.push(NetworkAuthz::Rbac(Arc::new(filter)));
                }
            }
            EXT_AUTHZ_NETWORK_FILTER => {
                let filter = network::network_ext_authz(typed()?, &field)?;
                authz.push(NetworkAuthz::ExtAuthz(Arc::new(filter)));
            }
            other => {
                return invalid(
                    format!("{at}[{i}].name"),
                    format!(
                        "network filter {other:?} is not supported before the terminal filter (supported: rbac, ext_authz)"
                    ),
                );
            }
        }
    }
    let at = format!("{at}[{}]", filters.len() - 1);
    let Some(ConfigType::TypedConfig(any)) = &last.config_type else {
        return invalid(join(&at, "typed_config"), "is required");
    };
    let mut terminal = network::terminal(&last.name, any, &join(&at, "typed_config"))?;
    if let NetworkFilter::Tcp(tcp) = &mut terminal {
        tcp.stats = stats;
        tcp.peer_exchange = peer_exchange;
    }
    Ok((authz, terminal))
}

// === impl Cidr ===

impl Cidr {
    pub(crate) fn compile(r: &CidrRange, field: &str) -> FieldResult<Self> {
        let Ok(addr) = r.address_prefix.parse::<IpAddr>() else {
            return invalid(
                join(field, "address_prefix"),
                format!("{:?} is not an IP address", r.address_prefix),
            );
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = r.prefix_len.as_ref().map_or(max, |l| l.value);
        if len > max {
            return invalid(join(field, "prefix_len"), format!("must be at most {max}"));
        }
        Ok(Self {
            addr,
            len: u8::try_from(len).unwrap_or(0),
        })
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
