//! What a matched route does: forward to a cluster (with its rewrites,
//! timeouts, retries, mirrors and hash policies), redirect, or answer
//! directly; plus the per-filter configs (fault injection, CORS) a route,
//! virtual host or weighted cluster may carry.

// Envoy still honours the deprecated fields it replaced, so they are read too.
#![allow(deprecated)]

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterNotFoundResponseCode, ClusterSpecifier, HostRewriteSpecifier,
    RequestMirrorPolicy as PbMirror,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, RetryPolicy as PbRetryPolicy, RouteAction,
    WeightedCluster,
};
use http::{HeaderName, HeaderValue, StatusCode};
use hyper::body::Bytes;

use super::convert::{Fraction, HeaderOps, header_name, opt_duration, runtime_fraction};
use super::matcher::{HeaderMatcher, RegexRewrite};
use super::{FieldResult, invalid, join};

pub use super::filters::{Abort, CORS_FILTER, Cors, FAULT_FILTER, Fault, FilterConfigs};
pub(crate) use super::filters::{fault, filter_configs, legacy_cors};

/// Envoy's default route timeout when `timeout` is unset.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// What a route does.
#[derive(Clone, Debug)]
pub enum Action {
    /// Forward upstream.
    Forward(Box<Forward>),
    /// Answer with a redirect.
    Redirect(Box<Redirect>),
    /// Answer with a fixed response.
    Direct(DirectResponse),
}

/// A `route` action: where and how to forward.
#[derive(Clone, Debug)]
pub struct Forward {
    /// Which cluster.
    pub target: Target,
    /// Replaces the matched prefix of the path.
    pub prefix_rewrite: Option<String>,
    /// Rewrites the path (without the query) by regex.
    pub regex_rewrite: Option<RegexRewrite>,
    /// What to do with `Host`.
    pub host_rewrite: HostRewrite,
    /// The whole-request timeout; `None` means none.
    pub timeout: Option<Duration>,
    /// When set, a gRPC request's `grpc-timeout` header sets the timeout,
    /// capped at this value (zero: uncapped).
    pub grpc_timeout_max: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
    /// Shadow copies.
    pub mirrors: Vec<Mirror>,
    /// Consistent-hashing inputs for ring hash and maglev clusters.
    pub hash_policies: Vec<HashPolicy>,
    /// Status of the local reply when the cluster does not exist.
    pub cluster_not_found: StatusCode,
    /// Route-level WebSocket upgrade override.
    pub websocket: Option<bool>,
}

/// The cluster (or clusters) a forward goes to.
#[derive(Clone, Debug)]
pub enum Target {
    /// One cluster.
    Cluster(String),
    /// The cluster named by a request header.
    Header(HeaderName),
    /// A weighted choice.
    Weighted(WeightedClusters),
}

/// Weighted clusters, weights as configured; a pick draws in `[0, total)`.
#[derive(Clone, Debug)]
pub struct WeightedClusters {
    /// The choices, each with a weight > 0.
    pub clusters: Vec<WeightedTarget>,
    total: u64,
}

/// One weighted choice.
#[derive(Clone, Debug)]
pub struct WeightedTarget {
    /// Cluster name.
    pub name: String,
    /// Weight.
    pub weight: u32,
    /// Request header changes when this cluster is chosen.
    pub request_headers: HeaderOps,
    /// Response header changes when this cluster is chosen.
    pub response_headers: HeaderOps,
    /// `host_rewrite_literal` for this cluster.
    pub host_rewrite: Option<HeaderValue>,
    /// Per-filter configs for this cluster.
    pub filters: FilterConfigs,
}

/// What to do with the `Host` header when forwarding.
#[derive(Clone, Debug)]
pub enum HostRewrite {
    /// Keep it.
    Keep,
    /// Replace it with a literal.
    Literal(HeaderValue),
    /// Replace it with the upstream host's address.
    Auto,
    /// Replace it with another request header's value.
    Header(HeaderName),
}

/// How much of a request body a route or virtual host lets the proxy
/// keep for retries and mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferLimit {
    /// `request_body_buffer_limit`: this many bytes.
    Body(u64),
    /// `per_request_buffer_limit_bytes` (deprecated): this many bytes, and
    /// no more than the listener's `per_connection_buffer_limit_bytes`.
    PerRequest(u32),
}

/// A compiled `RetryPolicy`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// When to retry.
    pub on: RetryOn,
    /// How many retries (Envoy's default is 1).
    pub num_retries: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Back-off base interval (default 25 ms).
    pub base_interval: Duration,
    /// Back-off cap (default 10 × base).
    pub max_interval: Duration,
    /// Whether retries avoid the hosts already tried
    /// (`envoy.retry_host_predicates.previous_hosts`).
    pub avoid_previous_hosts: bool,
    /// How many picks a retry may make to find a new host.
    pub host_selection_attempts: u32,
    /// Under `retriable-headers`: a response with a header matching one
    /// of these is retried.
    pub retriable_headers: Vec<HeaderMatcher>,
    /// When not empty, only requests matching one of these are retried.
    pub retriable_request_headers: Vec<HeaderMatcher>,
}

/// A set of `retry_on` conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

/// A compiled `RequestMirrorPolicy`.
#[derive(Clone, Debug)]
pub struct Mirror {
    /// Where the shadow copy goes.
    pub cluster: String,
    /// Which share of requests are mirrored.
    pub fraction: Fraction,
    /// Whether `-shadow` is appended to the host.
    pub shadow_suffix: bool,
}

/// One hash policy.
#[derive(Clone, Debug)]
pub struct HashPolicy {
    /// What is hashed.
    pub kind: HashKind,
    /// Stop at this policy when it produced a hash.
    pub terminal: bool,
}

/// The input of a hash policy.
#[derive(Clone, Debug)]
pub enum HashKind {
    /// A request header, optionally rewritten first.
    Header {
        /// Header name.
        name: String,
        /// Rewrite applied to the value before hashing.
        rewrite: Option<RegexRewrite>,
    },
    /// A cookie; when absent and `ttl` is set, the proxy makes one up and
    /// sets it on the response.
    Cookie {
        /// Cookie name.
        name: String,
        /// Lifetime of a generated cookie.
        ttl: Option<Duration>,
        /// Path of a generated cookie.
        path: String,
    },
    /// The downstream source IP.
    SourceIp,
    /// A query parameter.
    QueryParameter(String),
}

/// A compiled `RedirectAction`.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub host: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// New path.
    pub path: PathRedirect,
    /// Whether the query is dropped.
    pub strip_query: bool,
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
}

/// How a redirect changes the path.
#[derive(Clone, Debug)]
pub enum PathRedirect {
    /// Keep it.
    Keep,
    /// Replace the whole path.
    Path(String),
    /// Replace the matched prefix.
    Prefix(String),
    /// Rewrite by regex.
    Regex(RegexRewrite),
}

/// A compiled `DirectResponseAction`.
#[derive(Clone, Debug)]
pub struct DirectResponse {
    /// Status.
    pub status: StatusCode,
    /// Inline body.
    pub body: Option<Bytes>,
}

// === impl Action ===

/// Compiles a route's `route` action found at `at`.
pub(crate) fn forward(a: &RouteAction, at: &str) -> FieldResult<Forward> {
    let target = match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => Target::Cluster(name.clone()),
        Some(ClusterSpecifier::Cluster(_)) | None => {
            return invalid(
                join(at, "cluster_specifier"),
                "a route action needs a target: cluster, cluster_header or weighted_clusters",
            );
        }
        Some(ClusterSpecifier::ClusterHeader(h)) => {
            Target::Header(header_name(h, &join(at, "cluster_header"))?)
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            Target::Weighted(weighted(w, &join(at, "weighted_clusters"))?)
        }
        Some(ClusterSpecifier::ClusterSpecifierPlugin(_)) => {
            return invalid(join(at, "cluster_specifier_plugin"), "is not supported");
        }
        Some(ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
            return invalid(
                join(at, "inline_cluster_specifier_plugin"),
                "is not supported",
            );
        }
    };
    let host_rewrite = match &a.host_rewrite_specifier {
        None => HostRewrite::Keep,
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            HostRewrite::Literal(header_value(h, &join(at, "host_rewrite_literal"))?)
        }
        Some(HostRewriteSpecifier::AutoHostRewrite(b)) if b.value => HostRewrite::Auto,
        Some(HostRewriteSpecifier::AutoHostRewrite(_)) => HostRewrite::Keep,
        Some(HostRewriteSpecifier::HostRewriteHeader(h)) => {
            HostRewrite::Header(header_name(h, &join(at, "host_rewrite_header"))?)
        }
        Some(HostRewriteSpecifier::HostRewritePathRegex(_)) => {
            return invalid(join(at, "host_rewrite_path_regex"), "is not supported");
        }
        Some(HostRewriteSpecifier::HostRewrite(_)) => {
            return invalid(join(at, "host_rewrite"), "is not supported");
        }
    };
    if a.path_rewrite_policy.is_some() {
        return invalid(join(at, "path_rewrite_policy"), "is not supported");
    }
    if !a.path_rewrite.is_empty() {
        return invalid(
            join(at, "path_rewrite"),
            "is not supported; use prefix_rewrite or regex_rewrite",
        );
    }
    if a.internal_redirect_policy.is_some() {
        return invalid(join(at, "internal_redirect_policy"), "is not supported");
    }
    let timeout = match opt_duration(a.timeout.as_ref(), &join(at, "timeout"))? {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let grpc_timeout_max = match &a.max_stream_duration {
        Some(m) => opt_duration(
            m.grpc_timeout_header_max.as_ref(),
            &join(at, "max_stream_duration.grpc_timeout_header_max"),
        )?,
        None => opt_duration(a.max_grpc_timeout.as_ref(), &join(at, "max_grpc_timeout"))?,
    };
    let retry = a
        .retry_policy
        .as_ref()
        .map(|r| retry_policy(r, &join(at, "retry_policy")))
        .transpose()?;
    let mirrors = mirrors(
        &a.request_mirror_policies,
        &join(at, "request_mirror_policies"),
    )?;
    let mut hash_policies = Vec::new();
    for (i, h) in a.hash_policy.iter().enumerate() {
        let field = join(at, &format!("hash_policy[{i}]"));
        let kind = match &h.policy_specifier {
            Some(PolicySpecifier::Header(h)) => HashKind::Header {
                name: h.header_name.to_ascii_lowercase(),
                rewrite: h
                    .regex_rewrite
                    .as_ref()
                    .map(|r| RegexRewrite::compile(r, &join(&field, "header.regex_rewrite")))
                    .transpose()?,
            },
            Some(PolicySpecifier::Cookie(c)) => {
                if !c.attributes.is_empty() {
                    return invalid(join(&field, "cookie.attributes"), "are not supported");
                }
                HashKind::Cookie {
                    name: c.name.clone(),
                    ttl: opt_duration(c.ttl.as_ref(), &join(&field, "cookie.ttl"))?,
                    path: c.path.clone(),
                }
            }
            Some(PolicySpecifier::ConnectionProperties(p)) if p.source_ip => HashKind::SourceIp,
            // source_ip false hashes nothing.
            Some(PolicySpecifier::ConnectionProperties(_)) => continue,
            Some(PolicySpecifier::QueryParameter(q)) => HashKind::QueryParameter(q.name.clone()),
            Some(PolicySpecifier::FilterState(_)) => {
                return invalid(join(&field, "filter_state"), "is not supported");
            }
            None => {
                return invalid(
                    &field,
                    "one of header, cookie, connection_properties, query_parameter is required",
                );
            }
        };
        hash_policies.push(HashPolicy {
            kind,
            terminal: h.terminal,
        });
    }
    let cluster_not_found =
        match ClusterNotFoundResponseCode::try_from(a.cluster_not_found_response_code) {
            Ok(ClusterNotFoundResponseCode::NotFound) => StatusCode::NOT_FOUND,
            Ok(ClusterNotFoundResponseCode::InternalServerError) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
    let websocket = a
        .upgrade_configs
        .iter()
        .find(|u| u.upgrade_type.eq_ignore_ascii_case("websocket"))
        .map(|u| u.enabled.as_ref().is_none_or(|b| b.value));
    Ok(Forward {
        target,
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
        regex_rewrite: a
            .regex_rewrite
            .as_ref()
            .map(|r| RegexRewrite::compile(r, &join(at, "regex_rewrite")))
            .transpose()?,
        host_rewrite,
        timeout,
        grpc_timeout_max,
        retry,
        mirrors,
        hash_policies,
        cluster_not_found,
        websocket,
    })
}

/// The buffer limit of a route or virtual host, at `at`: only one of
/// `request_body_buffer_limit` and `per_request_buffer_limit_bytes` may be
/// set.
pub(crate) fn buffer_limit(
    body: Option<u64>,
    per_request: Option<u32>,
    at: &str,
) -> FieldResult<Option<BufferLimit>> {
    match (body, per_request) {
        (Some(_), Some(_)) => invalid(
            join(at, "request_body_buffer_limit"),
            "only one of request_body_buffer_limit and per_request_buffer_limit_bytes may be set",
        ),
        (Some(b), None) => Ok(Some(BufferLimit::Body(b))),
        (None, Some(p)) => Ok(Some(BufferLimit::PerRequest(p))),
        (None, None) => Ok(None),
    }
}

// === impl BufferLimit ===

impl BufferLimit {
    /// The bytes kept, on a listener whose connection limit is `listener`.
    pub fn bytes(self, listener: u32) -> usize {
        let n = match self {
            Self::Body(b) => b,
            Self::PerRequest(p) => u64::from(p.min(listener)),
        };
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

fn header_value(v: &str, field: &str) -> FieldResult<HeaderValue> {
    HeaderValue::from_str(v).or_else(|_| invalid(field, "is not a valid HTTP header value"))
}

fn weighted(w: &WeightedCluster, at: &str) -> FieldResult<WeightedClusters> {
    if w.clusters.is_empty() {
        return invalid(join(at, "clusters"), "at least one cluster is required");
    }
    let mut clusters = Vec::new();
    let mut total = 0u64;
    for (i, c) in w.clusters.iter().enumerate() {
        let field = join(at, &format!("clusters[{i}]"));
        if c.name.is_empty() {
            return invalid(
                join(&field, "name"),
                if c.cluster_header.is_empty() {
                    "is required"
                } else {
                    "cluster_header in weighted clusters is not supported"
                },
            );
        }
        let weight = c.weight.as_ref().map(|w| w.value).unwrap_or(0);
        total += u64::from(weight);
        let host_rewrite = match &c.host_rewrite_specifier {
            Some(
                envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h),
            ) => Some(header_value(h, &join(&field, "host_rewrite_literal"))?),
            None => None,
        };
        clusters.push(WeightedTarget {
            name: c.name.clone(),
            weight,
            request_headers: HeaderOps::compile(
                &field,
                "request_headers_to_add",
                &c.request_headers_to_add,
                "request_headers_to_remove",
                &c.request_headers_to_remove,
            )?,
            response_headers: HeaderOps::compile(
                &field,
                "response_headers_to_add",
                &c.response_headers_to_add,
                "response_headers_to_remove",
                &c.response_headers_to_remove,
            )?,
            host_rewrite,
            filters: filter_configs(
                &c.typed_per_filter_config,
                &join(&field, "typed_per_filter_config"),
            )?,
        });
    }
    if total == 0 {
        return invalid(
            join(at, "clusters"),
            "the weights add up to 0; at least one must be positive",
        );
    }
    if let Some(declared) = &w.total_weight
        && declared.value > 0
        && u64::from(declared.value) != total
    {
        return invalid(
            join(at, "total_weight"),
            format!("is {} but the weights add up to {total}", declared.value),
        );
    }
    clusters.retain(|c| c.weight > 0);
    Ok(WeightedClusters { clusters, total })
}

fn retry_policy(r: &PbRetryPolicy, at: &str) -> FieldResult<RetryPolicy> {
    let on = RetryOn::parse(&r.retry_on, &join(at, "retry_on"))?;
    let (base, max) = match &r.retry_back_off {
        Some(b) => {
            let base = opt_duration(
                b.base_interval.as_ref(),
                &join(at, "retry_back_off.base_interval"),
            )?
            .unwrap_or(Duration::from_millis(25));
            let max = opt_duration(
                b.max_interval.as_ref(),
                &join(at, "retry_back_off.max_interval"),
            )?
            .unwrap_or(base * 10);
            (base, max)
        }
        None => (Duration::from_millis(25), Duration::from_millis(250)),
    };
    let mut avoid_previous_hosts = false;
    for (i, p) in r.retry_host_predicate.iter().enumerate() {
        match p.name.as_str() {
            "envoy.retry_host_predicates.previous_hosts" => avoid_previous_hosts = true,
            // Omitting a host predicate only retries on the same hosts more often.
            other => tracing::debug!(predicate = other, index = i, "retry host predicate ignored"),
        }
    }
    Ok(RetryPolicy {
        on,
        num_retries: r.num_retries.as_ref().map(|n| n.value).unwrap_or(1),
        per_try_timeout: opt_duration(r.per_try_timeout.as_ref(), &join(at, "per_try_timeout"))?
            .filter(|d| !d.is_zero()),
        retriable_status_codes: r
            .retriable_status_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
        base_interval: base,
        max_interval: max.max(base),
        avoid_previous_hosts,
        host_selection_attempts: u32::try_from(r.host_selection_retry_max_attempts.max(1))
            .unwrap_or(1),
        retriable_headers: matchers(&r.retriable_headers, &join(at, "retriable_headers"))?,
        retriable_request_headers: matchers(
            &r.retriable_request_headers,
            &join(at, "retriable_request_headers"),
        )?,
    })
}

fn matchers(
    m: &[envoy_types::pb::envoy::config::route::v3::HeaderMatcher],
    at: &str,
) -> FieldResult<Vec<HeaderMatcher>> {
    m.iter()
        .enumerate()
        .map(|(i, h)| HeaderMatcher::compile(h, &format!("{at}[{i}]")))
        .collect()
}

/// Compiles `request_mirror_policies` found at `at`.
pub(crate) fn mirrors(m: &[PbMirror], at: &str) -> FieldResult<Vec<Mirror>> {
    m.iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("{at}[{i}]");
            if m.cluster.is_empty() {
                return invalid(
                    join(&field, "cluster"),
                    if m.cluster_header.is_empty() {
                        "is required"
                    } else {
                        "cluster_header mirrors are not supported"
                    },
                );
            }
            Ok(Mirror {
                cluster: m.cluster.clone(),
                fraction: runtime_fraction(m.runtime_fraction.as_ref(), Fraction::ALWAYS),
                shadow_suffix: !m.disable_shadow_host_suffix_append,
            })
        })
        .collect()
}

/// Compiles a `redirect` action found at `at`.
pub(crate) fn redirect(r: &RedirectAction, at: &str) -> FieldResult<Redirect> {
    let scheme = match &r.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
        Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        None => None,
    };
    let path = match &r.path_rewrite_specifier {
        None => PathRedirect::Keep,
        Some(PathRewriteSpecifier::PathRedirect(p)) => PathRedirect::Path(p.clone()),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => PathRedirect::Prefix(p.clone()),
        Some(PathRewriteSpecifier::RegexRewrite(r)) => {
            PathRedirect::Regex(RegexRewrite::compile(r, &join(at, "regex_rewrite"))?)
        }
        Some(PathRewriteSpecifier::PathRewrite(_)) => {
            return invalid(join(at, "path_rewrite"), "is not supported");
        }
    };
    let status = match RedirectResponseCode::try_from(r.response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
        Ok(RedirectResponseCode::Found) => StatusCode::FOUND,
        Ok(RedirectResponseCode::SeeOther) => StatusCode::SEE_OTHER,
        Ok(RedirectResponseCode::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
        Ok(RedirectResponseCode::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
        Err(_) => {
            return invalid(
                join(at, "response_code"),
                format!("unknown value {}", r.response_code),
            );
        }
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p)
                .or_else(|_| invalid(join(at, "port_redirect"), "must be below 65536"))?,
        ),
    };
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port,
        path,
        strip_query: r.strip_query,
        status,
    })
}

/// Compiles a `direct_response` action found at `at`.
pub(crate) fn direct(d: &DirectResponseAction, at: &str) -> FieldResult<DirectResponse> {
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok());
    let Some(status) = status else {
        return invalid(
            join(at, "status"),
            format!("{} is not an HTTP status in [200, 600)", d.status),
        );
    };
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(Specifier::InlineString(s)) => Some(Bytes::from(s.clone())),
        Some(Specifier::InlineBytes(b)) => Some(Bytes::from(b.clone())),
        Some(Specifier::Filename(_)) | Some(Specifier::EnvironmentVariable(_)) => {
            return invalid(
                join(at, "body"),
                "only inline_string and inline_bytes bodies are supported",
            );
        }
    };
    if d.body_format.is_some() {
        return invalid(join(at, "body_format"), "is not supported");
    }
    Ok(DirectResponse { status, body })
}

// === impl WeightedClusters ===

impl WeightedClusters {
    /// Picks a cluster for a draw in `[0, total)`.
    pub fn pick_with(&self, draw: u64) -> Option<&WeightedTarget> {
        let mut left = draw;
        for c in &self.clusters {
            let w = u64::from(c.weight);
            if left < w {
                return Some(c);
            }
            left -= w;
        }
        self.clusters.last()
    }

    /// Picks a cluster at random by weight.
    pub fn pick(&self) -> Option<&WeightedTarget> {
        self.pick_with(fastrand::u64(0..self.total.max(1)))
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.total
    }
}

// === impl RetryOn ===

impl RetryOn {
    /// Any 5xx, a reset or a connect failure.
    pub const FIVE_XX: RetryOn = RetryOn(1);
    /// 502, 503, 504, a reset or a connect failure.
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    /// A reset after the request started.
    pub const RESET: RetryOn = RetryOn(1 << 2);
    /// A connect failure.
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    /// 409.
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    /// An HTTP/2 REFUSED_STREAM.
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    /// A status in `retriable_status_codes`.
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    /// A reset before any byte was sent.
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 7);
    /// `x-envoy-ratelimited`.
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 8);
    /// gRPC CANCELLED (1).
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 9);
    /// gRPC DEADLINE_EXCEEDED (4).
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 10);
    /// gRPC RESOURCE_EXHAUSTED (8).
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 11);
    /// gRPC INTERNAL (13).
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 12);
    /// gRPC UNAVAILABLE (14).
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 13);
    /// A response header matching `retriable_headers`.
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 14);

    /// Parses Envoy's comma-separated `retry_on`.
    pub(crate) fn parse(s: &str, field: &str) -> FieldResult<Self> {
        let mut on = RetryOn::default();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            on.0 |= match token {
                "5xx" => Self::FIVE_XX.0,
                "gateway-error" => Self::GATEWAY_ERROR.0,
                "reset" => Self::RESET.0,
                "reset-before-request" => Self::RESET_BEFORE_REQUEST.0,
                "connect-failure" => Self::CONNECT_FAILURE.0,
                "retriable-4xx" => Self::RETRIABLE_4XX.0,
                "refused-stream" => Self::REFUSED_STREAM.0,
                "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES.0,
                "envoy-ratelimited" => Self::ENVOY_RATELIMITED.0,
                "cancelled" => Self::GRPC_CANCELLED.0,
                "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED.0,
                "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED.0,
                "internal" => Self::GRPC_INTERNAL.0,
                "unavailable" => Self::GRPC_UNAVAILABLE.0,
                "retriable-headers" => Self::RETRIABLE_HEADERS.0,
                // There is no HTTP/3 upstream, so this never triggers.
                "http3-post-connect-failure" => 0,
                other => {
                    return invalid(field, format!("unknown retry condition {other:?}"));
                }
            };
        }
        Ok(on)
    }

    /// Whether every condition of `other` is set.
    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any condition of `other` is set.
    pub fn intersects(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use test_case::test_case;

    fn weights(ws: &[u32]) -> WeightedCluster {
        WeightedCluster {
            clusters: ws
                .iter()
                .enumerate()
                .map(|(i, w)| ClusterWeight {
                    name: format!("c{i}"),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn weighted_clusters_pick_by_weight() {
        let w = weighted(&weights(&[90, 10]), "w").unwrap();
        assert_eq!(w.total(), 100);
        assert_eq!(w.pick_with(0).unwrap().name, "c0");
        assert_eq!(w.pick_with(89).unwrap().name, "c0");
        assert_eq!(w.pick_with(90).unwrap().name, "c1");
        assert_eq!(w.pick_with(99).unwrap().name, "c1");
    }

    #[test]
    fn zero_weights_leave_out_the_cluster() {
        let w = weighted(&weights(&[0, 3]), "w").unwrap();
        assert_eq!(w.clusters.len(), 1);
        assert_eq!(w.pick_with(2).unwrap().name, "c1");
    }

    #[test]
    fn all_zero_weights_are_refused() {
        let e = weighted(&weights(&[0, 0]), "route.weighted_clusters").unwrap_err();
        assert_eq!(e.field, "route.weighted_clusters.clusters");
    }

    #[test_case("5xx,connect-failure", RetryOn::FIVE_XX | RetryOn::CONNECT_FAILURE; "two")]
    #[test_case("gateway-error, retriable-status-codes", RetryOn::GATEWAY_ERROR | RetryOn::RETRIABLE_STATUS_CODES; "spaces")]
    #[test_case("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", RetryOn::CONNECT_FAILURE | RetryOn::REFUSED_STREAM | RetryOn::GRPC_UNAVAILABLE | RetryOn::GRPC_CANCELLED | RetryOn::RETRIABLE_STATUS_CODES; "istio default")]
    fn retry_on_parses(s: &str, expected: RetryOn) {
        assert_eq!(RetryOn::parse(s, "f").unwrap(), expected);
    }

    #[test]
    fn buffer_limits() {
        assert_eq!(BufferLimit::Body(4 << 20).bytes(1024), 4 << 20);
        assert_eq!(BufferLimit::PerRequest(4096).bytes(1024), 1024);
        assert_eq!(BufferLimit::PerRequest(512).bytes(1024), 512);
        assert_eq!(buffer_limit(None, None, "vh").unwrap(), None);
        let e = buffer_limit(Some(1), Some(1), "virtual_hosts[0]").unwrap_err();
        assert_eq!(e.field, "virtual_hosts[0].request_body_buffer_limit");
    }

    #[test]
    fn retriable_headers_compile_with_field_paths() {
        let r = PbRetryPolicy {
            retry_on: "retriable-headers".into(),
            retriable_headers: vec![Default::default()],
            ..Default::default()
        };
        let e = retry_policy(&r, "route.retry_policy").unwrap_err();
        assert!(
            e.field
                .starts_with("route.retry_policy.retriable_headers[0]"),
            "{}",
            e.field
        );
    }

    #[test]
    fn unknown_retry_condition_is_refused() {
        let e = RetryOn::parse("5xx,sometimes", "route.retry_policy.retry_on").unwrap_err();
        assert!(e.reason.contains("sometimes"), "{e:?}");
    }

    #[test]
    fn route_action_without_target_is_refused() {
        let e = forward(&RouteAction::default(), "virtual_hosts[0].routes[1].route").unwrap_err();
        assert_eq!(
            e.field,
            "virtual_hosts[0].routes[1].route.cluster_specifier"
        );
    }

    #[test_case(None, Some(DEFAULT_ROUTE_TIMEOUT); "envoy default")]
    #[test_case(Some(0), None; "zero disables")]
    #[test_case(Some(2), Some(Duration::from_secs(2)); "explicit")]
    fn route_timeouts(seconds: Option<i64>, expected: Option<Duration>) {
        let a = RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
            timeout: seconds
                .map(|seconds| envoy_types::pb::google::protobuf::Duration { seconds, nanos: 0 }),
            ..Default::default()
        };
        assert_eq!(forward(&a, "r").unwrap().timeout, expected);
    }
}
