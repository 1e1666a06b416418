//! External authorization: Envoy's `envoy.filters.http.ext_authz` and
//! `envoy.filters.network.ext_authz`, which is what Istio's CUSTOM
//! AuthorizationPolicy becomes (with an RBAC filter's shadow rules deciding,
//! through `filter_enabled_metadata`, which requests are checked).
//!
//! This module compiles the filter config; the call itself (the HTTP or
//! gRPC `Check` to the authorization cluster) is in
//! `crate::proxy::ext_authz`. Fields this proxy cannot honour are refused
//! with their path, never ignored: a check silently skipped would open a
//! hole.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, HeaderValue as PbHeaderValue, grpc_service, http_uri,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    ExtAuthz as PbExtAuthz, HttpService as PbHttpService, ext_authz,
};
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as PbNetworkExtAuthz;
use envoy_types::pb::envoy::r#type::matcher::v3::{ListStringMatcher, MetadataMatcher as PbMeta};
use http::{HeaderName, HeaderValue, StatusCode};

use super::convert::{duration, header_name};
use super::matcher::StringMatcher;
use super::metadata::{Metadata, MetadataMatcher};
use super::{FieldResult, invalid, join};

/// Name of the HTTP filter.
pub const EXT_AUTHZ_HTTP_FILTER: &str = "envoy.filters.http.ext_authz";
/// Name of the network filter.
pub const EXT_AUTHZ_NETWORK_FILTER: &str = "envoy.filters.network.ext_authz";

/// Envoy's timeout for a check when the config gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// A compiled HTTP `ExtAuthz`.
#[derive(Debug)]
pub struct ExtAuthz {
    /// Where checks go.
    pub service: Service,
    /// Let requests through when the check fails (not when it denies).
    pub failure_mode_allow: bool,
    /// With `failure_mode_allow`, mark such requests with
    /// `x-envoy-auth-failure-mode-allowed: true`.
    pub failure_mode_allow_header_add: bool,
    /// The status of a request refused because the check failed (403 by
    /// default).
    pub status_on_error: StatusCode,
    /// Buffer the request body (up to a limit) and send it along.
    pub with_body: Option<BodySettings>,
    /// Check only requests whose dynamic metadata this matches.
    pub enabled: Option<MetadataMatcher>,
    /// Send the TLS SNI (gRPC).
    pub include_tls_session: bool,
    /// Request headers sent along (`None`: all for gRPC, the defaults
    /// only for HTTP).
    pub allowed_headers: Option<Vec<StringMatcher>>,
    /// Request headers never sent (wins over `allowed_headers`).
    pub disallowed_headers: Vec<StringMatcher>,
    /// Dynamic metadata namespaces sent along (gRPC).
    pub metadata_context_namespaces: Vec<String>,
}

/// `with_request_body`.
#[derive(Clone, Copy, Debug)]
pub struct BodySettings {
    /// Most bytes buffered.
    pub max_bytes: usize,
    /// Send the first `max_bytes` of a longer body instead of answering
    /// 413.
    pub allow_partial: bool,
    /// gRPC: the body as bytes (`raw_body`) rather than a string.
    pub pack_as_bytes: bool,
}

/// The authorization service.
#[derive(Debug)]
pub enum Service {
    /// `http_service`.
    Http(HttpService),
    /// `grpc_service` (Envoy's gRPC client: `envoy_grpc`).
    Grpc(GrpcTarget),
}

/// A gRPC `Check` target.
#[derive(Clone, Debug)]
pub struct GrpcTarget {
    /// The cluster.
    pub cluster: String,
    /// `:authority` of the call (the cluster name when unset, as Envoy).
    pub authority: String,
    /// Deadline of one check.
    pub timeout: Duration,
    /// Extra request metadata (`initial_metadata`).
    pub initial_metadata: Vec<(HeaderName, HeaderValue)>,
}

/// `http_service`.
#[derive(Debug)]
pub struct HttpService {
    /// The cluster.
    pub cluster: String,
    /// Deadline of one check.
    pub timeout: Duration,
    /// Prepended to the request's path.
    pub path_prefix: String,
    /// Replaces the request's path (when not empty).
    pub path_override: String,
    /// Headers set on every check request.
    pub headers_to_add: Vec<(HeaderName, HeaderValue)>,
    /// Check-response headers set on the upstream request when allowed.
    pub upstream: Vec<StringMatcher>,
    /// Check-response headers appended to the upstream request when
    /// allowed.
    pub upstream_append: Vec<StringMatcher>,
    /// Check-response headers passed to the client on a denial (`None`:
    /// all but `Host`).
    pub client: Option<Vec<StringMatcher>>,
    /// Check-response headers added to the client's response when allowed.
    pub client_on_success: Vec<StringMatcher>,
}

/// A compiled network `ExtAuthz` (gRPC only).
#[derive(Debug)]
pub struct NetworkExtAuthz {
    /// Where checks go.
    pub target: GrpcTarget,
    /// Stats prefix.
    pub stat_prefix: String,
    /// Let connections through when the check fails.
    pub failure_mode_allow: bool,
    /// Send the TLS SNI.
    pub include_tls_session: bool,
    /// Check only connections whose dynamic metadata this matches.
    pub enabled: Option<MetadataMatcher>,
}

// === impl ExtAuthz ===

impl ExtAuthz {
    /// Whether a request with `metadata` is checked.
    pub fn applies(&self, metadata: &Metadata) -> bool {
        self.enabled
            .as_ref()
            .is_none_or(|m| m.matches(Some(metadata)))
    }

    /// Whether request header `name` goes to the authorization service.
    pub fn sends_header(&self, name: &str) -> bool {
        if self.disallowed_headers.iter().any(|m| m.matches(name)) {
            return false;
        }
        let http = matches!(self.service, Service::Http(_));
        match &self.allowed_headers {
            None => !http || http_default_header(name),
            Some(allowed) => {
                (http && http_default_header(name)) || allowed.iter().any(|m| m.matches(name))
            }
        }
    }
}

/// The headers an HTTP authorization request always carries.
fn http_default_header(name: &str) -> bool {
    matches!(
        name,
        "host" | ":authority" | ":method" | ":path" | "content-length" | "authorization"
    )
}

impl NetworkExtAuthz {
    /// Whether a connection with `metadata` is checked.
    pub fn applies(&self, metadata: &Metadata) -> bool {
        self.enabled
            .as_ref()
            .is_none_or(|m| m.matches(Some(metadata)))
    }
}

/// Compiles the HTTP filter's config found at `at`.
pub(crate) fn compile(pb: &PbExtAuthz, at: &str) -> FieldResult<ExtAuthz> {
    refuse_unsupported(pb, at)?;
    let service = match &pb.services {
        Some(ext_authz::Services::GrpcService(g)) => {
            Service::Grpc(grpc_target(g, &join(at, "grpc_service"))?)
        }
        Some(ext_authz::Services::HttpService(h)) => {
            Service::Http(http_service(h, &join(at, "http_service"))?)
        }
        None => return invalid(at, "one of grpc_service, http_service is required"),
    };
    let status_on_error = match &pb.status_on_error {
        None => StatusCode::FORBIDDEN,
        Some(s) => match u16::try_from(s.code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            // Envoy falls back to 403 for a code outside the enum.
            Some(code) if code.as_u16() >= 100 => code,
            _ => StatusCode::FORBIDDEN,
        },
    };
    let with_body = pb.with_request_body.map(|b| BodySettings {
        max_bytes: b.max_request_bytes as usize,
        allow_partial: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    });
    // `authorization_request.allowed_headers` (deprecated) still counts
    // when the top-level field is unset.
    let legacy = match &pb.services {
        Some(ext_authz::Services::HttpService(h)) => {
            h.authorization_request.as_ref().and_then(|r| {
                #[allow(deprecated)]
                r.allowed_headers.as_ref()
            })
        }
        _ => None,
    };
    let allowed_headers = match (&pb.allowed_headers, legacy) {
        (Some(l), _) => Some(list(l, &join(at, "allowed_headers"))?),
        (None, Some(l)) => Some(list(
            l,
            &join(at, "http_service.authorization_request.allowed_headers"),
        )?),
        (None, None) => None,
    };
    let disallowed_headers = match &pb.disallowed_headers {
        Some(l) => list(l, &join(at, "disallowed_headers"))?,
        None => Vec::new(),
    };
    Ok(ExtAuthz {
        service,
        failure_mode_allow: pb.failure_mode_allow,
        failure_mode_allow_header_add: pb.failure_mode_allow_header_add,
        status_on_error,
        with_body,
        enabled: enabled(pb.filter_enabled_metadata.as_ref(), at)?,
        include_tls_session: pb.include_tls_session,
        allowed_headers,
        disallowed_headers,
        metadata_context_namespaces: pb.metadata_context_namespaces.clone(),
    })
}

/// Fields that change who gets through in ways this proxy does not
/// implement.
fn refuse_unsupported(pb: &PbExtAuthz, at: &str) -> FieldResult<()> {
    if let Some(f) = &pb.filter_enabled {
        let full = f.default_value.as_ref().is_none_or(|p| {
            let fraction = super::convert::fraction(p);
            fraction.as_per_million() >= 1_000_000
        });
        if !full {
            return invalid(
                join(at, "filter_enabled"),
                "checking a fraction of requests is not supported (use filter_enabled_metadata)",
            );
        }
    }
    let refused = [
        // The handshake's certificate is not kept after verification.
        ("include_peer_certificate", pb.include_peer_certificate),
        ("deny_at_disable", pb.deny_at_disable.is_some()),
        ("shadow_mode", pb.shadow_mode),
        (
            "route_metadata_context_namespaces",
            !pb.route_metadata_context_namespaces.is_empty(),
        ),
        (
            "typed_metadata_context_namespaces",
            !pb.typed_metadata_context_namespaces.is_empty(),
        ),
        (
            "route_typed_metadata_context_namespaces",
            !pb.route_typed_metadata_context_namespaces.is_empty(),
        ),
        (
            "decoder_header_mutation_rules",
            pb.decoder_header_mutation_rules.is_some(),
        ),
    ];
    for (field, set) in refused {
        if set {
            return invalid(join(at, field), "is not supported");
        }
    }
    Ok(())
}

/// Compiles the network filter's config found at `at`.
pub(crate) fn compile_network(pb: &PbNetworkExtAuthz, at: &str) -> FieldResult<NetworkExtAuthz> {
    let Some(g) = &pb.grpc_service else {
        return invalid(join(at, "grpc_service"), "is required");
    };
    if !pb.metadata_context_namespaces.is_empty() {
        return invalid(join(at, "metadata_context_namespaces"), "is not supported");
    }
    if pb.include_peer_certificate {
        return invalid(join(at, "include_peer_certificate"), "is not supported");
    }
    Ok(NetworkExtAuthz {
        target: grpc_target(g, &join(at, "grpc_service"))?,
        stat_prefix: pb.stat_prefix.clone(),
        failure_mode_allow: pb.failure_mode_allow,
        include_tls_session: pb.include_tls_session,
        enabled: enabled(pb.filter_enabled_metadata.as_ref(), at)?,
    })
}

fn enabled(m: Option<&PbMeta>, at: &str) -> FieldResult<Option<MetadataMatcher>> {
    m.map(|m| MetadataMatcher::compile(m, &join(at, "filter_enabled_metadata")))
        .transpose()
}

fn grpc_target(g: &GrpcService, at: &str) -> FieldResult<GrpcTarget> {
    let Some(grpc_service::TargetSpecifier::EnvoyGrpc(envoy)) = &g.target_specifier else {
        return invalid(
            at,
            "envoy_grpc is required (the Google gRPC client is not supported)",
        );
    };
    if envoy.cluster_name.is_empty() {
        return invalid(join(at, "envoy_grpc.cluster_name"), "is required");
    }
    let timeout = match &g.timeout {
        Some(t) => duration(t, &join(at, "timeout"))?,
        None => DEFAULT_TIMEOUT,
    };
    let initial_metadata = headers(&g.initial_metadata, &join(at, "initial_metadata"))?;
    Ok(GrpcTarget {
        cluster: envoy.cluster_name.clone(),
        authority: if envoy.authority.is_empty() {
            envoy.cluster_name.clone()
        } else {
            envoy.authority.clone()
        },
        timeout,
        initial_metadata,
    })
}

fn http_service(h: &PbHttpService, at: &str) -> FieldResult<HttpService> {
    let uri_at = join(at, "server_uri");
    let Some(uri) = &h.server_uri else {
        return invalid(uri_at, "is required");
    };
    let cluster = match &uri.http_upstream_type {
        Some(http_uri::HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
        _ => return invalid(join(&uri_at, "cluster"), "is required"),
    };
    let timeout = match &uri.timeout {
        Some(t) => duration(t, &join(&uri_at, "timeout"))?,
        None => return invalid(join(&uri_at, "timeout"), "is required"),
    };
    if !h.path_prefix.is_empty() && !h.path_override.is_empty() {
        return invalid(
            join(at, "path_override"),
            "only one of path_prefix and path_override may be set",
        );
    }
    if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
        return invalid(join(at, "path_prefix"), "must start with '/'");
    }
    let headers_to_add = match &h.authorization_request {
        Some(r) => headers(
            &r.headers_to_add,
            &join(at, "authorization_request.headers_to_add"),
        )?,
        None => Vec::new(),
    };
    let response = h.authorization_response.clone().unwrap_or_default();
    let rat = join(at, "authorization_response");
    let opt =
        |l: &Option<ListStringMatcher>, name: &str| -> FieldResult<Option<Vec<StringMatcher>>> {
            l.as_ref().map(|l| list(l, &join(&rat, name))).transpose()
        };
    if response.dynamic_metadata_from_headers.is_some() {
        return invalid(
            join(&rat, "dynamic_metadata_from_headers"),
            "is not supported",
        );
    }
    Ok(HttpService {
        cluster,
        timeout,
        path_prefix: h.path_prefix.clone(),
        path_override: h.path_override.clone(),
        headers_to_add,
        upstream: opt(
            &response.allowed_upstream_headers,
            "allowed_upstream_headers",
        )?
        .unwrap_or_default(),
        upstream_append: opt(
            &response.allowed_upstream_headers_to_append,
            "allowed_upstream_headers_to_append",
        )?
        .unwrap_or_default(),
        client: opt(&response.allowed_client_headers, "allowed_client_headers")?.map(|mut l| {
            // Named by Envoy as always passed once the list is set.
            for h in [
                "path",
                "status",
                "content-length",
                "www-authenticate",
                "location",
            ] {
                l.push(StringMatcher::exact(h));
            }
            l
        }),
        client_on_success: opt(
            &response.allowed_client_headers_on_success,
            "allowed_client_headers_on_success",
        )?
        .unwrap_or_default(),
    })
}

/// Header names are matched lower-cased, as Envoy keeps them.
fn list(l: &ListStringMatcher, at: &str) -> FieldResult<Vec<StringMatcher>> {
    l.patterns
        .iter()
        .enumerate()
        .map(|(i, m)| StringMatcher::compile(m, &join(at, &format!("patterns[{i}]"))))
        .collect()
}

fn headers(list: &[PbHeaderValue], at: &str) -> FieldResult<Vec<(HeaderName, HeaderValue)>> {
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let field = join(at, &format!("[{i}]"));
            let name = header_name(&h.key, &join(&field, "key"))?;
            let raw = if h.value.is_empty() {
                h.raw_value.as_slice()
            } else {
                h.value.as_bytes()
            };
            match HeaderValue::from_bytes(raw) {
                Ok(v) => Ok((name, v)),
                Err(_) => invalid(join(&field, "value"), "is not a valid HTTP header value"),
            }
        })
        .collect()
}
