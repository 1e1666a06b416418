//! MeshConfig `extensionProviders` of kind `envoyExtAuthzHttp` and
//! `envoyExtAuthzGrpc` as Envoy ext_authz filter configs, checked and
//! resolved as Istio's `authz/builder/extauthz.go` does.
//!
//! [`Providers::resolve`] reads every such provider once per translation:
//! its name (non-empty, unique, a lowercase DNS label: it goes into policy
//! names and metadata keys), its port, `statusOnError`, `pathPrefix` and
//! header lists, and its `service`, looked up in the registry (`ns/host`
//! or a plain host, Istio's `LookupCluster`) to name the cluster
//! `outbound|<port>||<host>`. A provider with any problem keeps its errors
//! instead of a config: CUSTOM policies naming it then deny what they
//! match (see `custom`). Other provider kinds (tracing, logging)
//! are not authorization providers and are left out, as in Istio.
//!
//! Two checks go beyond Istio's, for values stock Envoy would NACK (which
//! would block the whole listener): `statusOnError: "0"` and
//! `includeRequestBodyInCheck` without a positive `maxRequestBytes`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, HeaderValue, HttpUri, grpc_service, http_uri,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    AuthorizationRequest, AuthorizationResponse, BufferSettings, ExtAuthz as HttpExtAuthz,
    HttpService, ext_authz,
};
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetworkExtAuthz;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, MetadataMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use mesh_api::common::Duration;
use mesh_api::mesh_config::{EnvoyExtAuthzGrpc, EnvoyExtAuthzHttp, ExtensionProvider, RequestBody};

use super::matcher::{matcher_of, metadata, string_value};
use super::{HTTP_RBAC_FILTER, NETWORK_RBAC_FILTER};
use crate::snapshot::Snapshot;
use crate::xds::cluster::pb_duration;
use crate::xds::outbound_cluster_name;

/// Start of every CUSTOM policy name and of what the ext_authz filter
/// looks for in the RBAC filter's metadata.
pub(super) const EXT_AUTHZ_MATCH_PREFIX: &str = "istio-ext-authz";
/// Shadow-rule stat prefix of the RBAC filter in front of ext_authz; Envoy
/// also prefixes the metadata keys it writes with it.
pub(super) const EXT_AUTHZ_SHADOW_STAT_PREFIX: &str = "istio_ext_authz_";
/// Metadata key (after the stat prefix) of the shadow policy that matched.
const SHADOW_EFFECTIVE_POLICY_ID: &str = "shadow_effective_policy_id";
/// Istio's default timeout of a check request.
const DEFAULT_TIMEOUT_SECS: i64 = 600;
/// Istio's stat prefix of the network ext_authz filter.
const TCP_STAT_PREFIX: &str = "tcp.";

/// Name of the HTTP ext_authz filter.
pub const HTTP_EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
/// Name of the network ext_authz filter.
pub const NETWORK_EXT_AUTHZ_FILTER: &str = "envoy.filters.network.ext_authz";

/// Why an authorization provider cannot be used. Each names the field of
/// the `extensionProviders` entry and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The entry has no name.
    #[error("name must not be empty (entry {index} of extensionProviders)")]
    EmptyName {
        /// Position in `extensionProviders`.
        index: usize,
    },
    /// An earlier authorization provider has the same name.
    #[error("name {name:?} is used by another extension provider; names must be unique")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// The name is not a lowercase DNS label.
    #[error(
        "name {name:?} is invalid: {reason}; use lowercase letters, digits and '-' (at most 63)"
    )]
    BadName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Both kinds are set on one entry.
    #[error("sets both envoyExtAuthzHttp and envoyExtAuthzGrpc; keep one")]
    TwoKinds,
    /// The port is missing or out of range.
    #[error("{kind}.port must be in 1..=65535, found {port}")]
    BadPort {
        /// `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`.
        kind: &'static str,
        /// The port (0 when unset).
        port: u32,
    },
    /// No service.
    #[error("{kind}.service must not be empty; write \"<namespace>/<hostname>\" or a hostname")]
    NoService {
        /// `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`.
        kind: &'static str,
    },
    /// The service is not in the registry.
    #[error(
        "{kind}.service {service:?} is not in the service registry; declare it (Service or ServiceEntry) or fix the name"
    )]
    UnknownService {
        /// `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`.
        kind: &'static str,
        /// The service as written.
        service: String,
    },
    /// `statusOnError` is not an HTTP status Envoy knows.
    #[error(
        "{kind}.statusOnError {value:?} is not a supported HTTP status code; write e.g. \"403\" or \"503\""
    )]
    BadStatus {
        /// `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`.
        kind: &'static str,
        /// The value as written.
        value: String,
    },
    /// `pathPrefix` does not start with `/` or is not a URL path.
    #[error("envoyExtAuthzHttp.pathPrefix {value:?} must be a URL path beginning with '/'")]
    BadPathPrefix {
        /// The value as written.
        value: String,
    },
    /// A header list holds a lone `*`.
    #[error(
        "envoyExtAuthzHttp.{field} has a single wildcard \"*\", which is not supported; use a prefix (\"x-*\") or suffix (\"*-id\") match"
    )]
    Wildcard {
        /// The list.
        field: &'static str,
    },
    /// `includeRequestBodyInCheck` without a body limit (Envoy requires one).
    #[error("{kind}.includeRequestBodyInCheck.maxRequestBytes must be greater than 0")]
    NoBodyLimit {
        /// `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`.
        kind: &'static str,
    },
}

/// One usable provider: its filter configs, without the metadata matcher
/// (which names the provider, see [`ExtAuthz::http_filter_config`]).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ExtAuthz {
    /// The resolved service host (for the visibility check).
    pub(super) host: String,
    /// The cluster check requests go to.
    pub(super) cluster: String,
    http: HttpExtAuthz,
    /// gRPC providers only: HTTP providers do not apply to TCP chains.
    tcp: Option<NetworkExtAuthz>,
}

/// A provider as resolved: usable, or its problems.
pub(super) type Resolved = Result<ExtAuthz, Vec<ProviderError>>;

/// Every authorization provider of the mesh config, by name.
#[derive(Debug, Default)]
pub(super) struct Providers(BTreeMap<String, (usize, Resolved)>);

// === impl Providers ===

impl Providers {
    /// Checks and resolves every `envoyExtAuthzHttp` and `envoyExtAuthzGrpc`
    /// provider of `snapshot.mesh` against its registry.
    pub(super) fn resolve(snapshot: &Snapshot) -> Self {
        let mut out: BTreeMap<String, (usize, Resolved)> = BTreeMap::new();
        for (index, p) in snapshot.mesh.extension_providers.iter().enumerate() {
            if p.envoy_ext_authz_http.is_none() && p.envoy_ext_authz_grpc.is_none() {
                continue;
            }
            let name = p.name.clone().unwrap_or_default();
            let mut errors = Vec::new();
            if name.is_empty() {
                errors.push(ProviderError::EmptyName { index });
            } else {
                if out.contains_key(&name) {
                    errors.push(ProviderError::Duplicate { name: name.clone() });
                }
                if let Err(reason) = check_name(&name) {
                    errors.push(ProviderError::BadName {
                        name: name.clone(),
                        reason,
                    });
                }
            }
            let built = build(snapshot, p);
            let resolved = match built {
                Ok(ext) if errors.is_empty() => Ok(ext),
                Ok(_) => Err(errors),
                Err(more) => {
                    errors.extend(more);
                    Err(errors)
                }
            };
            // A later duplicate replaces the first, with its error: every
            // policy naming it then denies (Istio's map assignment).
            out.insert(name, (index, resolved));
        }
        Self(out)
    }

    /// The provider named `name`, with its position in `extensionProviders`.
    pub(super) fn get(&self, name: &str) -> Option<(usize, &Resolved)> {
        self.0.get(name).map(|(i, r)| (*i, r))
    }

    /// The names of every authorization provider, sorted.
    pub(super) fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Istio's `validateProviderName`: a lowercase DNS label.
fn check_name(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err(format!("too long ({} characters, at most 63)", name.len()));
    }
    if let Some((i, c)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(if c.is_ascii_uppercase() {
            format!("uppercase letter {c:?} at position {i}")
        } else {
            format!("character {c:?} at position {i}")
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("starts or ends with '-'".into());
    }
    Ok(())
}

/// The provider's filter configs, or every problem found in it.
fn build(snapshot: &Snapshot, p: &ExtensionProvider) -> Result<ExtAuthz, Vec<ProviderError>> {
    match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
        (Some(_), Some(_)) => Err(vec![ProviderError::TwoKinds]),
        (Some(http), None) => build_http(snapshot, http),
        (None, Some(grpc)) => build_grpc(snapshot, grpc),
        (None, None) => Err(Vec::new()),
    }
}

/// What both kinds share: the cluster, the status on error, the body.
struct Common {
    host: String,
    cluster: String,
    status: Option<HttpStatus>,
    body: Option<BufferSettings>,
}

fn common(
    snapshot: &Snapshot,
    kind: &'static str,
    service: Option<&str>,
    port: Option<u32>,
    status: Option<&str>,
    body: Option<&RequestBody>,
    errors: &mut Vec<ProviderError>,
) -> Option<Common> {
    let port = port.unwrap_or(0);
    let port = match u16::try_from(port) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errors.push(ProviderError::BadPort { kind, port });
            None
        }
    };
    let host = match service.filter(|s| !s.is_empty()) {
        None => {
            errors.push(ProviderError::NoService { kind });
            None
        }
        Some(s) => {
            let found = lookup_service(snapshot, s);
            if found.is_none() {
                errors.push(ProviderError::UnknownService {
                    kind,
                    service: s.to_string(),
                });
            }
            found
        }
    };
    let status = match status.filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match status_code(s) {
            Some(code) => Some(HttpStatus { code: code as i32 }),
            None => {
                errors.push(ProviderError::BadStatus {
                    kind,
                    value: s.to_string(),
                });
                None
            }
        },
    };
    let body = body.map(|b| BufferSettings {
        max_request_bytes: b.max_request_bytes.unwrap_or(0),
        allow_partial_message: b.allow_partial_message.unwrap_or(false),
        pack_as_bytes: b.pack_as_bytes.unwrap_or(false),
    });
    if body.as_ref().is_some_and(|b| b.max_request_bytes == 0) {
        errors.push(ProviderError::NoBodyLimit { kind });
    }
    let (port, host) = (port?, host?);
    Some(Common {
        cluster: outbound_cluster_name(port, "", &host),
        host,
        status,
        body,
    })
}

/// Istio's `LookupCluster`: `<namespace>/<hostname>` must be declared in
/// that namespace; a plain hostname anywhere. The registry holds one
/// service per hostname, so a plain name is never ambiguous here.
fn lookup_service(snapshot: &Snapshot, service: &str) -> Option<String> {
    let parts: Vec<&str> = service.split('/').collect();
    let (namespace, host) = match parts.as_slice() {
        [ns, host] => (Some(*ns), *host),
        _ => (None, service),
    };
    snapshot
        .registry
        .service(host)
        .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
        .map(|s| s.hostname.clone())
}

/// A status code of Envoy's `StatusCode` enum. `0` (`Empty`) is in the
/// enum, and Istio takes it, but Envoy refuses it in `HttpStatus`.
fn status_code(value: &str) -> Option<StatusCode> {
    let code: i32 = value.parse().ok()?;
    StatusCode::try_from(code)
        .ok()
        .filter(|c| *c != StatusCode::Empty)
}

fn build_http(snapshot: &Snapshot, p: &EnvoyExtAuthzHttp) -> Result<ExtAuthz, Vec<ProviderError>> {
    const KIND: &str = "envoyExtAuthzHttp";
    let mut errors = Vec::new();
    let common = common(
        snapshot,
        KIND,
        p.service.as_deref(),
        p.port,
        p.status_on_error.as_deref(),
        p.include_request_body_in_check.as_ref(),
        &mut errors,
    );
    let path_prefix = p.path_prefix.clone().unwrap_or_default();
    if !path_prefix.is_empty() && !is_url_path(&path_prefix) {
        errors.push(ProviderError::BadPathPrefix {
            value: path_prefix.clone(),
        });
    }
    for (field, list) in [
        (
            "includeRequestHeadersInCheck",
            &p.include_request_headers_in_check,
        ),
        ("includeHeadersInCheck", &p.include_headers_in_check),
        (
            "headersToDownstreamOnDeny",
            &p.headers_to_downstream_on_deny,
        ),
        (
            "headersToDownstreamOnAllow",
            &p.headers_to_downstream_on_allow,
        ),
        ("headersToUpstreamOnAllow", &p.headers_to_upstream_on_allow),
    ] {
        if list.iter().any(|h| h == "*") {
            errors.push(ProviderError::Wildcard { field });
        }
    }
    let common = match common {
        Some(c) if errors.is_empty() => c,
        _ => return Err(errors),
    };
    let headers_to_add: Vec<HeaderValue> = p
        .include_additional_headers_in_check
        .iter()
        .map(|(key, value)| HeaderValue {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        })
        .collect();
    let has_response_headers = !(p.headers_to_upstream_on_allow.is_empty()
        && p.headers_to_downstream_on_deny.is_empty()
        && p.headers_to_downstream_on_allow.is_empty());
    let service = HttpService {
        server_uri: Some(HttpUri {
            // Required by Envoy, but the filter only uses the cluster.
            uri: format!("http://{}", common.host),
            timeout: Some(timeout_or_default(p.timeout.as_ref())),
            http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(common.cluster.clone())),
        }),
        path_prefix,
        authorization_request: (!headers_to_add.is_empty()).then(|| AuthorizationRequest {
            headers_to_add,
            ..Default::default()
        }),
        authorization_response: has_response_headers.then(|| AuthorizationResponse {
            allowed_upstream_headers: header_list(&p.headers_to_upstream_on_allow),
            allowed_client_headers: header_list(&p.headers_to_downstream_on_deny),
            allowed_client_headers_on_success: header_list(&p.headers_to_downstream_on_allow),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The deprecated list counts only when the new one is empty.
    let allowed_headers = header_list(&p.include_request_headers_in_check)
        .or_else(|| header_list(&p.include_headers_in_check));
    let http = HttpExtAuthz {
        status_on_error: common.status,
        failure_mode_allow: p.fail_open.unwrap_or(false),
        transport_api_version: ApiVersion::V3 as i32,
        services: Some(ext_authz::Services::HttpService(service)),
        with_request_body: common.body,
        allowed_headers,
        ..Default::default()
    };
    Ok(ExtAuthz {
        host: common.host,
        cluster: common.cluster,
        http,
        tcp: None,
    })
}

fn build_grpc(snapshot: &Snapshot, p: &EnvoyExtAuthzGrpc) -> Result<ExtAuthz, Vec<ProviderError>> {
    const KIND: &str = "envoyExtAuthzGrpc";
    let mut errors = Vec::new();
    let common = common(
        snapshot,
        KIND,
        p.service.as_deref(),
        p.port,
        p.status_on_error.as_deref(),
        p.include_request_body_in_check.as_ref(),
        &mut errors,
    );
    let common = match common {
        Some(c) if errors.is_empty() => c,
        _ => return Err(errors),
    };
    let grpc = GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: common.cluster.clone(),
                authority: common.host.clone(),
                ..Default::default()
            },
        )),
        timeout: Some(timeout_or_default(p.timeout.as_ref())),
        ..Default::default()
    };
    let fail_open = p.fail_open.unwrap_or(false);
    let http = HttpExtAuthz {
        status_on_error: common.status,
        failure_mode_allow: fail_open,
        transport_api_version: ApiVersion::V3 as i32,
        services: Some(ext_authz::Services::GrpcService(grpc.clone())),
        with_request_body: common.body,
        ..Default::default()
    };
    let tcp = NetworkExtAuthz {
        stat_prefix: TCP_STAT_PREFIX.into(),
        grpc_service: Some(grpc),
        failure_mode_allow: fail_open,
        transport_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    };
    Ok(ExtAuthz {
        host: common.host,
        cluster: common.cluster,
        http,
        tcp: Some(tcp),
    })
}

/// What Go's `url.Parse` accepts as a path, starting with `/`: no control
/// characters, `%` only before two hex digits.
fn is_url_path(value: &str) -> bool {
    let bytes = value.as_bytes();
    value.starts_with('/')
        && !bytes.iter().any(|b| b.is_ascii_control())
        && bytes.iter().enumerate().all(|(i, &b)| {
            b != b'%'
                || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        })
}

fn timeout_or_default(t: Option<&Duration>) -> PbDuration {
    t.map(pb_duration).unwrap_or(PbDuration {
        seconds: DEFAULT_TIMEOUT_SECS,
        nanos: 0,
    })
}

/// Header names as case-insensitive matchers: `*abc` suffix, `abc*`
/// prefix, else exact (Istio's `generateHeaders`); `None` when empty.
fn header_list(headers: &[String]) -> Option<ListStringMatcher> {
    use string_matcher::MatchPattern as P;
    if headers.is_empty() {
        return None;
    }
    let patterns = headers
        .iter()
        .map(|h| {
            let pattern = if let Some(suffix) = h.strip_prefix('*') {
                P::Suffix(suffix.into())
            } else if let Some(prefix) = h.strip_suffix('*') {
                P::Prefix(prefix.into())
            } else {
                P::Exact(h.clone())
            };
            matcher_of(pattern, true)
        })
        .collect();
    Some(ListStringMatcher { patterns })
}

// === impl ExtAuthz ===

impl ExtAuthz {
    /// The HTTP filter config for `provider`: it runs only when the RBAC
    /// filter before it matched one of the provider's policies.
    pub(super) fn http_filter_config(&self, provider: &str) -> HttpExtAuthz {
        HttpExtAuthz {
            filter_enabled_metadata: Some(enabled_by(HTTP_RBAC_FILTER, provider)),
            ..self.http.clone()
        }
    }

    /// The network filter config for `provider`; `None` for HTTP providers.
    pub(super) fn network_filter_config(&self, provider: &str) -> Option<NetworkExtAuthz> {
        self.tcp.as_ref().map(|tcp| NetworkExtAuthz {
            filter_enabled_metadata: Some(enabled_by(NETWORK_RBAC_FILTER, provider)),
            ..tcp.clone()
        })
    }
}

/// Matches the policy name the RBAC filter `filter` wrote when one of
/// `provider`'s shadow policies matched (Istio's
/// `generateFilterMatcherForProvider`).
fn enabled_by(filter: &str, provider: &str) -> MetadataMatcher {
    let key = format!("{EXT_AUTHZ_SHADOW_STAT_PREFIX}{SHADOW_EFFECTIVE_POLICY_ID}");
    metadata(
        filter,
        &[&key],
        string_value(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Prefix(format!(
                "{EXT_AUTHZ_MATCH_PREFIX}-{provider}"
            ))),
            ignore_case: false,
        }),
    )
}
