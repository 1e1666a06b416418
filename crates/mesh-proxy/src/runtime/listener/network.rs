//! The two terminal network filters a filter chain may end with: the HTTP
//! connection manager (codec, where its routes come from, the HTTP filters
//! it runs and the request-id / forwarded-header policy) and the TCP proxy.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier, StripPortMode,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as PbTcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz as PbExtAuthz;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as PbHttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as PbNetworkExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as PbNetworkRbac;
use envoy_types::pb::google::protobuf::Any;
use prost::Name;

use super::super::action::{self, CORS_FILTER, FAULT_FILTER, Fault};
use super::super::convert::{decode_any, opt_duration};
use super::super::ext_authz::{self, EXT_AUTHZ_HTTP_FILTER, ExtAuthz, NetworkExtAuthz};
use super::super::jwt::{self, JWT_AUTHN_FILTER, JwtAuthn};
use super::super::rbac::{self, RbacFilter};
use super::super::route::{self, RouteTable};
use super::super::{FieldError, FieldResult, invalid, join};
use super::NetworkFilter;

/// Envoy's default idle timeout of HTTP connections and TCP proxies.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default `stream_idle_timeout`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A compiled `HttpConnectionManager`.
#[derive(Debug)]
pub struct HttpManager {
    /// Stats prefix.
    pub stat_prefix: String,
    /// Where each request is logged (`access_log`).
    pub access_logs: Arc<[crate::runtime::access_log::LogSink]>,
    /// Which HTTP versions the connection speaks.
    pub codec: Codec,
    /// Where the routes come from.
    pub routes: RouteSource,
    /// Whether the peer address is the client address (edge proxies):
    /// appended to `x-forwarded-for`, and `x-forwarded-proto` overwritten.
    pub use_remote_address: bool,
    /// Whether `x-forwarded-for` is left alone.
    pub skip_xff_append: bool,
    /// `internal_address_config.cidr_ranges`: the addresses whose requests
    /// are internal, so their `x-envoy-*` controls (retries, timeouts)
    /// are honoured. Envoy 1.40 has no default: unset, no request is
    /// internal.
    pub internal_addresses: Vec<super::Cidr>,
    /// Whether `x-request-id` is generated when absent.
    pub generate_request_id: bool,
    /// Metric overrides (Istio's `istio.stats` filter), if any.
    pub stats: Option<Arc<crate::telemetry::overrides::Overrides>>,
    /// Whether an edge proxy keeps a client's `x-request-id`.
    pub preserve_external_request_id: bool,
    /// Whether `x-request-id` is copied to the response.
    pub always_set_request_id_in_response: bool,
    /// The fault filter runs (with this default config, possibly empty).
    pub fault: Option<Arc<Fault>>,
    /// The CORS filter runs.
    pub cors: bool,
    /// WebSocket upgrades are allowed.
    pub websocket: bool,
    /// Strip the `Host` port when it is the listener's port.
    pub strip_matching_host_port: bool,
    /// Strip any `Host` port.
    pub strip_any_host_port: bool,
    /// Limit on the size of request headers.
    pub max_request_headers_kb: Option<u32>,
    /// Time allowed for a request's headers to arrive, counted from its
    /// first byte.
    pub request_headers_timeout: Option<Duration>,
    /// A connection with no request in flight for this long is closed
    /// (`common_http_protocol_options.idle_timeout`; Envoy's default 1 h,
    /// `None` when set to 0).
    pub idle_timeout: Option<Duration>,
    /// A request with no activity either way for this long ends with 408
    /// (or a reset once the response started) (`stream_idle_timeout`;
    /// Envoy's default 5 min, `None` when set to 0).
    pub stream_idle_timeout: Option<Duration>,
    /// What happens to `x-forwarded-client-cert`.
    pub xfcc: Xfcc,
    /// The authentication and authorization filters (JWT, RBAC, external
    /// authorization), in their configured order: the first refusal wins,
    /// and each reads the dynamic metadata the earlier ones wrote (RBAC
    /// the payload JWT verified, ext_authz the outcome of RBAC shadow
    /// rules).
    pub authz: Vec<HttpAuthz>,
    /// `tracing` with the OpenTelemetry tracer; `None`: no spans.
    pub tracing: Option<Arc<crate::telemetry::trace::TraceConfig>>,
}

/// One authentication or authorization filter of an HTTP connection
/// manager.
#[derive(Clone, Debug)]
pub enum HttpAuthz {
    /// `envoy.filters.http.jwt_authn`.
    Jwt(Arc<JwtAuthn>),
    /// `envoy.filters.http.rbac`.
    Rbac(Arc<RbacFilter>),
    /// `envoy.filters.http.ext_authz`.
    ExtAuthz(Arc<ExtAuthz>),
}

/// `forward_client_cert_details` and `set_current_client_cert_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Xfcc {
    /// The mode.
    pub mode: ForwardClientCert,
    /// Add the peer's subject.
    pub subject: bool,
    /// Add the peer's URI SANs.
    pub uri: bool,
    /// Add the peer's DNS SANs.
    pub dns: bool,
}

/// `forward_client_cert_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Drop the header (Envoy's default).
    #[default]
    Sanitize,
    /// Pass it on over mTLS, drop it otherwise.
    ForwardOnly,
    /// Over mTLS, append the current peer; drop it otherwise.
    AppendForward,
    /// Over mTLS, replace it with the current peer; drop it otherwise.
    SanitizeSet,
    /// Always pass it on unchanged.
    AlwaysForwardOnly,
}

/// The codec of an HTTP connection manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.1 and HTTP/2 (prior knowledge), detected per connection.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

/// Where an HTTP connection manager's routes come from.
#[derive(Debug)]
pub enum RouteSource {
    /// RDS, by route configuration name (looked up per request, so a new
    /// route configuration applies to open connections).
    Rds(String),
    /// Inline.
    Inline(Arc<RouteTable>),
}

/// A compiled `TcpProxy`.
#[derive(Debug)]
pub struct TcpProxy {
    /// Where each connection is logged (`access_log`).
    pub access_logs: Arc<[crate::runtime::access_log::LogSink]>,
    /// Stats prefix.
    pub stat_prefix: String,
    /// Where connections go.
    pub target: TcpTarget,
    /// Closes a connection idle for this long (Envoy's default: 1 hour).
    pub idle_timeout: Option<Duration>,
    /// Connect attempts before giving up.
    pub max_connect_attempts: u32,
    /// Metric overrides (Istio's `istio.stats` network filter before the
    /// TCP proxy), if any.
    pub stats: Option<Arc<crate::telemetry::overrides::Overrides>>,
    /// Istio's metadata exchange filter (`istio.metadata_exchange`) runs
    /// before the TCP proxy: a connection that negotiated ALPN
    /// `istio-peer-exchange` exchanges peer metadata
    /// ([`crate::telemetry::peer::exchange`]).
    pub peer_exchange: bool,
}

/// The cluster (or clusters) of a TCP proxy.
#[derive(Debug)]
pub enum TcpTarget {
    /// One cluster.
    Cluster(String),
    /// A weighted choice: `(cluster, weight)`, weights > 0.
    Weighted(Vec<(String, u32)>),
}

/// Name of the HTTP RBAC filter.
pub const RBAC_HTTP_FILTER: &str = "envoy.filters.http.rbac";
/// Name of the network RBAC filter.
pub const RBAC_NETWORK_FILTER: &str = "envoy.filters.network.rbac";

/// Compiles a network RBAC filter's config found at `at`.
pub(super) fn network_rbac(any: &Any, at: &str) -> FieldResult<RbacFilter> {
    let pb: PbNetworkRbac = decode_any(any, at)?;
    if pb.matcher.is_some() || pb.shadow_matcher.is_some() {
        return invalid(
            at,
            "only `rules` and `shadow_rules` are supported (not matcher, shadow_matcher)",
        );
    }
    rbac::compile_filter(
        pb.rules.as_ref(),
        pb.shadow_rules.as_ref(),
        &pb.shadow_rules_stat_prefix,
        at,
    )
}

/// Compiles a network `ExtAuthz` found at `at`.
pub(super) fn network_ext_authz(any: &Any, at: &str) -> FieldResult<NetworkExtAuthz> {
    let pb: PbNetworkExtAuthz = decode_any(any, at)?;
    ext_authz::compile_network(&pb, at)
}

/// Whether an `istio.metadata_exchange` network filter's config at `at`
/// runs the exchange: Istio's `MetadataExchange` with protocol
/// `istio-peer-exchange`. No config, or one of another type, changes
/// nothing (as before the exchange was implemented).
pub(super) fn metadata_exchange(typed: Option<&Any>, at: &str) -> FieldResult<bool> {
    use mesh_api::xds::metadata_exchange::{MetadataExchange, PROTOCOL};
    let Some(any) = typed else {
        return Ok(false);
    };
    match MetadataExchange::from_any(any) {
        Ok(mx) => Ok(mx.is_some_and(|mx| mx.protocol == PROTOCOL)),
        Err(e) => invalid(at, e),
    }
}

/// Compiles the terminal filter `name` configured by `any`, at `at`.
/// The metric overrides of an `istio.stats` filter's config at `at`:
/// `stats.PluginConfig`, packed or in a `TypedStruct`; a config of another
/// type (Istio's older Wasm configuration) changes nothing.
pub(super) fn istio_stats(
    typed: Option<&Any>,
    at: &str,
) -> FieldResult<Option<Arc<crate::telemetry::overrides::Overrides>>> {
    use mesh_api::xds::istio_stats::PluginConfig;
    let Some(any) = typed else {
        return Ok(None);
    };
    match PluginConfig::from_any(any) {
        Ok(Some(cfg)) => crate::telemetry::overrides::Overrides::compile(&cfg, at),
        Ok(None) => Ok(None),
        Err(e) => invalid(at, e),
    }
}

pub(super) fn terminal(name: &str, any: &Any, at: &str) -> FieldResult<NetworkFilter> {
    if any.type_url == HttpConnectionManager::type_url() {
        let hcm: HttpConnectionManager = decode_any(any, at)?;
        return Ok(NetworkFilter::Http(Arc::new(http_manager(&hcm, at)?)));
    }
    if any.type_url == PbTcpProxy::type_url() {
        let tcp: PbTcpProxy = decode_any(any, at)?;
        return Ok(NetworkFilter::Tcp(tcp_proxy(&tcp, at)?));
    }
    invalid(
        join(at, "type_url"),
        format!(
            "network filter {name:?} ({}) is not supported; a chain must end with http_connection_manager or tcp_proxy",
            any.type_url
        ),
    )
}

fn xfcc(h: &HttpConnectionManager, at: &str) -> FieldResult<Xfcc> {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ForwardClientCertDetails as Mode;
    let mode = match Mode::try_from(h.forward_client_cert_details) {
        Ok(Mode::Sanitize) => ForwardClientCert::Sanitize,
        Ok(Mode::ForwardOnly) => ForwardClientCert::ForwardOnly,
        Ok(Mode::AppendForward) => ForwardClientCert::AppendForward,
        Ok(Mode::SanitizeSet) => ForwardClientCert::SanitizeSet,
        Ok(Mode::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
        Err(_) => {
            return invalid(
                join(at, "forward_client_cert_details"),
                format!("unknown mode {}", h.forward_client_cert_details),
            );
        }
    };
    let set = h.set_current_client_cert_details.unwrap_or_default();
    Ok(Xfcc {
        mode,
        subject: set.subject.is_some_and(|b| b.value),
        uri: set.uri,
        dns: set.dns,
    })
}

fn http_manager(h: &HttpConnectionManager, at: &str) -> FieldResult<HttpManager> {
    let codec = match CodecType::try_from(h.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => {
            return invalid(
                join(at, "codec_type"),
                "only AUTO, HTTP1 and HTTP2 are supported",
            );
        }
    };
    let routes = match &h.route_specifier {
        Some(RouteSpecifier::Rds(rds)) if !rds.route_config_name.is_empty() => {
            RouteSource::Rds(rds.route_config_name.clone())
        }
        Some(RouteSpecifier::Rds(_)) => {
            return invalid(join(at, "rds.route_config_name"), "is required");
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            let prefix = join(at, "route_config");
            let table = route::compile(rc).map_err(|e| FieldError {
                field: join(&prefix, &e.field),
                reason: e.reason,
            })?;
            RouteSource::Inline(Arc::new(table))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return invalid(
                join(at, "scoped_routes"),
                "is not supported; use rds or route_config",
            );
        }
        None => return invalid(at, "rds or route_config is required"),
    };
    let mut fault = None;
    let mut cors = false;
    let mut router = false;
    let mut authz = Vec::new();
    let mut stats = None;
    for (i, f) in h.http_filters.iter().enumerate() {
        let field = join(at, &format!("http_filters[{i}]"));
        if router {
            return invalid(field, "no HTTP filter may follow the router");
        }
        let typed = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        match f.name.as_str() {
            "envoy.filters.http.router" => router = true,
            FAULT_FILTER => {
                fault = Some(Arc::new(match typed {
                    Some(any) if !any.value.is_empty() => {
                        let pb: HttpFault = decode_any(any, &join(&field, "typed_config"))?;
                        action::fault(&pb, &join(&field, "typed_config"))?
                    }
                    _ => Fault::default(),
                }));
            }
            CORS_FILTER => cors = true,
            JWT_AUTHN_FILTER => {
                let at = join(&field, "typed_config");
                let Some(any) = typed else {
                    return invalid(at, "is required");
                };
                let pb: JwtAuthentication = decode_any(any, &at)?;
                authz.push(HttpAuthz::Jwt(Arc::new(jwt::compile(&pb, &at)?)));
            }
            RBAC_HTTP_FILTER => {
                let at = join(&field, "typed_config");
                let Some(any) = typed else {
                    return invalid(at, "is required");
                };
                let pb: PbHttpRbac = decode_any(any, &at)?;
                if pb.matcher.is_some() || pb.shadow_matcher.is_some() {
                    return invalid(
                        at,
                        "only `rules` and `shadow_rules` are supported (not matcher, shadow_matcher)",
                    );
                }
                let filter = rbac::compile_filter(
                    pb.rules.as_ref(),
                    pb.shadow_rules.as_ref(),
                    &pb.shadow_rules_stat_prefix,
                    &at,
                )?;
                if filter.rules.is_some() || filter.shadow.is_some() {
                    authz.push(HttpAuthz::Rbac(Arc::new(filter)));
                }
            }
            EXT_AUTHZ_HTTP_FILTER => {
                let at = join(&field, "typed_config");
                let Some(any) = typed else {
                    return invalid(at, "is required");
                };
                let pb: PbExtAuthz = decode_any(any, &at)?;
                authz.push(HttpAuthz::ExtAuthz(Arc::new(ext_authz::compile(&pb, &at)?)));
            }
            mesh_api::xds::istio_stats::FILTER_NAME => {
                stats = istio_stats(typed, &join(&field, "typed_config"))?;
            }
            // Istio's telemetry and ALPN filters change nothing on this path.
            "istio.alpn" | "istio.metadata_exchange" | "envoy.filters.http.grpc_stats" => {}
            _ if f.is_optional => {}
            other => {
                return invalid(
                    join(&field, "name"),
                    format!(
                        "HTTP filter {other:?} is not supported (supported: router, fault, cors, jwt_authn, rbac, ext_authz)"
                    ),
                );
            }
        }
    }
    if !router {
        return invalid(
            join(at, "http_filters"),
            "the last HTTP filter must be envoy.filters.http.router",
        );
    }
    let websocket = h.upgrade_configs.iter().any(|u| {
        u.upgrade_type.eq_ignore_ascii_case("websocket")
            && u.enabled.as_ref().is_none_or(|b| b.value)
    });
    let xfcc = xfcc(h, at)?;
    let tracing = match &h.tracing {
        Some(t) => crate::telemetry::trace::compile(t, &join(at, "tracing"))?,
        None => None,
    };
    Ok(HttpManager {
        stats,
        tracing,
        access_logs: crate::runtime::access_log::compile(&h.access_log, &join(at, "access_log"))?,
        xfcc,
        authz,
        stat_prefix: h.stat_prefix.clone(),
        codec,
        routes,
        use_remote_address: h.use_remote_address.as_ref().is_some_and(|b| b.value),
        skip_xff_append: h.skip_xff_append,
        internal_addresses: h
            .internal_address_config
            .iter()
            .flat_map(|c| c.cidr_ranges.iter().enumerate())
            .map(|(i, r)| {
                super::Cidr::compile(
                    r,
                    &join(at, &format!("internal_address_config.cidr_ranges[{i}]")),
                )
            })
            .collect::<FieldResult<_>>()?,
        generate_request_id: h.generate_request_id.as_ref().is_none_or(|b| b.value),
        preserve_external_request_id: h.preserve_external_request_id,
        always_set_request_id_in_response: h.always_set_request_id_in_response,
        fault,
        cors,
        websocket,
        strip_matching_host_port: h.strip_matching_host_port,
        strip_any_host_port: matches!(
            h.strip_port_mode,
            Some(StripPortMode::StripAnyHostPort(true))
        ),
        max_request_headers_kb: h.max_request_headers_kb.as_ref().map(|v| v.value),
        request_headers_timeout: opt_duration(
            h.request_headers_timeout.as_ref(),
            &join(at, "request_headers_timeout"),
        )?
        .filter(|d| !d.is_zero()),
        idle_timeout: default_or_disabled(
            h.common_http_protocol_options
                .as_ref()
                .and_then(|c| c.idle_timeout.as_ref()),
            DEFAULT_IDLE_TIMEOUT,
            &join(at, "common_http_protocol_options.idle_timeout"),
        )?,
        stream_idle_timeout: default_or_disabled(
            h.stream_idle_timeout.as_ref(),
            DEFAULT_STREAM_IDLE_TIMEOUT,
            &join(at, "stream_idle_timeout"),
        )?,
    })
}

/// A timeout Envoy applies with `default` when unset and disables when 0.
fn default_or_disabled(
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    default: Duration,
    field: &str,
) -> FieldResult<Option<Duration>> {
    Ok(match opt_duration(d, field)? {
        None => Some(default),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    })
}

fn tcp_proxy(t: &PbTcpProxy, at: &str) -> FieldResult<TcpProxy> {
    if t.tunneling_config.is_some() {
        return invalid(join(at, "tunneling_config"), "is not supported");
    }
    if t.on_demand.is_some() {
        return invalid(join(at, "on_demand"), "is not supported");
    }
    let target = match &t.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => TcpTarget::Cluster(c.clone()),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut clusters = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                if c.name.is_empty() {
                    return invalid(
                        join(at, &format!("weighted_clusters.clusters[{i}].name")),
                        "is required",
                    );
                }
                if c.weight > 0 {
                    clusters.push((c.name.clone(), c.weight));
                }
            }
            if clusters.is_empty() {
                return invalid(
                    join(at, "weighted_clusters.clusters"),
                    "the weights add up to 0; at least one must be positive",
                );
            }
            TcpTarget::Weighted(clusters)
        }
        _ => {
            return invalid(
                join(at, "cluster_specifier"),
                "cluster or weighted_clusters is required",
            );
        }
    };
    let idle_timeout = default_or_disabled(
        t.idle_timeout.as_ref(),
        DEFAULT_IDLE_TIMEOUT,
        &join(at, "idle_timeout"),
    )?;
    Ok(TcpProxy {
        stats: None,
        peer_exchange: false,
        access_logs: crate::runtime::access_log::compile(&t.access_log, &join(at, "access_log"))?,
        stat_prefix: t.stat_prefix.clone(),
        target,
        idle_timeout,
        max_connect_attempts: t
            .max_connect_attempts
            .as_ref()
            .map_or(1, |v| v.value.max(1)),
    })
}

// === impl HttpManager ===

impl HttpManager {
    /// Whether a request is internal, Envoy's way: after `x-forwarded-for`
    /// is settled it holds exactly one address (with `use_remote_address`,
    /// the peer's, when the client sent none), and that address is in
    /// `internal_addresses`. A request that is not internal has its
    /// `x-envoy-*` controls removed unread.
    pub fn is_internal(&self, peer: std::net::IpAddr, xff: Option<&str>) -> bool {
        let single = match (self.use_remote_address, xff) {
            (true, None) => Some(peer),
            (true, Some(_)) if self.skip_xff_append => None,
            (_, Some(v)) if !v.contains(',') => v.trim().parse().ok(),
            _ => None,
        };
        let Some(ip) = single else {
            return false;
        };
        let ip = ip.to_canonical();
        self.internal_addresses.iter().any(|c| c.contains(ip))
    }
}

// === impl TcpTarget ===

impl TcpTarget {
    /// The cluster for a new connection.
    pub fn pick(&self) -> &str {
        match self {
            Self::Cluster(c) => c,
            Self::Weighted(clusters) => {
                let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
                let mut draw = fastrand::u64(0..total.max(1));
                for (name, w) in clusters {
                    if draw < u64::from(*w) {
                        return name;
                    }
                    draw -= u64::from(*w);
                }
                clusters.last().map_or("", |(n, _)| n.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use test_case::test_case;

    fn manager(extra: serde_json::Value) -> FieldResult<HttpManager> {
        let mut h = json!({"statPrefix": "t", "rds": {"routeConfigName": "80"},
            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        http_manager(&mesh_api::xds::json::from_json(&h).unwrap(), "hcm")
    }

    const LOOPBACK: &str = "127.0.0.1";

    #[test_case(true, None, true; "edge, no xff: the peer")]
    #[test_case(true, Some("127.0.0.1"), true; "edge, appended peer only")]
    #[test_case(true, Some("203.0.113.9,127.0.0.1"), false; "edge, client sent xff")]
    #[test_case(false, None, false; "sidecar, no xff")]
    #[test_case(false, Some("127.0.0.9"), true; "sidecar, one internal xff")]
    #[test_case(false, Some("10.0.0.1"), false; "sidecar, xff outside the ranges")]
    fn internal_requests(edge: bool, xff: Option<&str>, internal: bool) {
        let m = manager(json!({"useRemoteAddress": edge, "internalAddressConfig": {
            "cidrRanges": [{"addressPrefix": "127.0.0.0", "prefixLen": 8}]}}))
        .unwrap();
        assert_eq!(m.is_internal(LOOPBACK.parse().unwrap(), xff), internal);
    }

    #[test]
    fn istio_metadata_exchange_runs_only_for_its_protocol() {
        use mesh_api::xds::metadata_exchange::MetadataExchange;
        assert!(metadata_exchange(Some(&MetadataExchange::istio()), "f").unwrap());
        assert!(!metadata_exchange(None, "f").unwrap());
        let other = mesh_api::xds::pack_any(MetadataExchange {
            protocol: "istio2".into(),
        });
        assert!(!metadata_exchange(Some(&other), "f").unwrap());
        let bad = Any {
            type_url: MetadataExchange::istio().type_url,
            value: vec![0x0a, 0x09],
        };
        assert_eq!(
            metadata_exchange(Some(&bad), "filters[0].typed_config")
                .unwrap_err()
                .field,
            "filters[0].typed_config"
        );
    }

    #[test]
    fn no_internal_address_config_means_no_internal_request() {
        let m = manager(json!({"useRemoteAddress": true})).unwrap();
        assert!(!m.is_internal(LOOPBACK.parse().unwrap(), None));
    }

    #[test]
    fn a_bad_internal_range_is_refused_with_its_path() {
        let e = manager(json!({"internalAddressConfig": {
            "cidrRanges": [{"addressPrefix": "10.0.0.0", "prefixLen": 8}, {"addressPrefix": "nope"}]}}))
        .unwrap_err();
        assert_eq!(
            e.field,
            "hcm.internal_address_config.cidr_ranges[1].address_prefix"
        );
    }
}
