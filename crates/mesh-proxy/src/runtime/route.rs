//! Route tables compiled from `RouteConfiguration`: virtual hosts found by
//! `Host`/`:authority` the way Envoy finds them, and routes matched in
//! order, first match wins.
//!
//! Domain search order (Envoy's): exact name, then the longest `*.suffix`
//! wildcard, then the longest `prefix.*` wildcard, then `*`. A domain may
//! carry a port (`reviews:9080`), and Istio's gateway domains use a port
//! wildcard (`example.com:*`), which is a prefix wildcard.

// Envoy still honours the deprecated fields it replaced, so they are read too.
#![allow(deprecated)]

use std::collections::HashMap;

use envoy_types::pb::envoy::config::route::v3::route::Action as PbAction;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{
    Route as PbRoute, RouteConfiguration, RouteMatch as PbRouteMatch, VirtualHost as PbVirtualHost,
};
use http::HeaderName;
use regex::Regex;

use super::action::{self, Action, BufferLimit, FilterConfigs, Mirror, RetryPolicy};
use super::convert::{Fraction, HeaderOps, header_name, runtime_fraction};
use super::matcher::{HeaderMatcher, QueryMatcher, RequestView, full_regex};
use super::metadata::{Metadata, MetadataMatcher};
use super::{FieldResult, invalid, join};

/// A compiled `RouteConfiguration`.
#[derive(Debug)]
pub struct RouteTable {
    /// The route configuration's name.
    pub name: String,
    /// Virtual hosts in configuration order.
    pub virtual_hosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    suffixes: Vec<(String, usize)>,
    prefixes: Vec<(String, usize)>,
    default: Option<usize>,
    /// Request header changes for every route.
    pub request_headers: HeaderOps,
    /// Response header changes for every route.
    pub response_headers: HeaderOps,
    /// Whether route-level header changes win over less specific levels.
    pub most_specific_header_mutations_wins: bool,
    /// Whether a port in `Host` is ignored when finding the virtual host.
    pub ignore_port_in_host_matching: bool,
    /// Headers only the proxy may set: removed from every request.
    pub internal_only_headers: Vec<HeaderName>,
    /// Per-filter configs for every route.
    pub filters: FilterConfigs,
}

/// A compiled `VirtualHost`.
#[derive(Debug)]
pub struct VirtualHost {
    /// Name.
    pub name: String,
    /// Routes, matched in order.
    pub routes: Vec<Route>,
    /// Request header changes.
    pub request_headers: HeaderOps,
    /// Response header changes.
    pub response_headers: HeaderOps,
    /// Whether plaintext requests are redirected to HTTPS.
    pub require_tls: TlsRequirement,
    /// Per-filter configs.
    pub filters: FilterConfigs,
    /// Upstream requests carry `x-envoy-attempt-count`
    /// (`include_request_attempt_count`; Istio sets it everywhere).
    pub attempt_count_in_request: bool,
    /// Responses carry `x-envoy-attempt-count`
    /// (`include_attempt_count_in_response`).
    pub attempt_count_in_response: bool,
    /// Request body kept for retries and mirrors, unless the route says.
    pub buffer_limit: Option<BufferLimit>,
}

/// A virtual host's `require_tls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRequirement {
    /// No requirement.
    None,
    /// Only requests from outside the mesh must use TLS.
    ExternalOnly,
    /// Every request must use TLS.
    All,
}

/// A compiled `Route`.
#[derive(Debug)]
pub struct Route {
    /// Name (may be empty).
    pub name: String,
    /// The match.
    pub matcher: RouteMatch,
    /// What to do.
    pub action: Action,
    /// Request header changes.
    pub request_headers: HeaderOps,
    /// Response header changes.
    pub response_headers: HeaderOps,
    /// Per-filter configs.
    pub filters: FilterConfigs,
    /// Request body kept for retries and mirrors.
    pub buffer_limit: Option<BufferLimit>,
}

/// A compiled `RouteMatch`.
#[derive(Debug)]
pub struct RouteMatch {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryMatcher>,
    grpc: bool,
    connect: bool,
    fraction: Option<Fraction>,
    /// Against the request's dynamic metadata (the payload the JWT filter
    /// verified: Istio's `@request.auth.claims` header matches).
    metadata: Vec<MetadataMatcher>,
}

#[derive(Debug)]
enum PathMatch {
    /// Against `:path` including the query, as Envoy does.
    Prefix(String),
    /// Against the path without the query.
    Exact(String),
    Regex(Regex),
    SeparatedPrefix(String),
    Any,
}

// === impl RouteTable ===

/// Compiles a route configuration.
pub(crate) fn compile(rc: &RouteConfiguration) -> FieldResult<RouteTable> {
    if rc.vhds.is_some() {
        return invalid("vhds", "on-demand virtual hosts are not supported");
    }
    let filters = action::filter_configs(&rc.typed_per_filter_config, "typed_per_filter_config")?;
    let default_mirrors = action::mirrors(&rc.request_mirror_policies, "request_mirror_policies")?;
    let mut table = RouteTable {
        name: rc.name.clone(),
        virtual_hosts: Vec::with_capacity(rc.virtual_hosts.len()),
        exact: HashMap::new(),
        suffixes: Vec::new(),
        prefixes: Vec::new(),
        default: None,
        request_headers: HeaderOps::compile(
            "",
            "request_headers_to_add",
            &rc.request_headers_to_add,
            "request_headers_to_remove",
            &rc.request_headers_to_remove,
        )?,
        response_headers: HeaderOps::compile(
            "",
            "response_headers_to_add",
            &rc.response_headers_to_add,
            "response_headers_to_remove",
            &rc.response_headers_to_remove,
        )?,
        most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
        internal_only_headers: rc
            .internal_only_headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_name(h, &format!("internal_only_headers[{i}]")))
            .collect::<FieldResult<_>>()?,
        filters,
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let at = format!("virtual_hosts[{i}]");
        if vh.domains.is_empty() {
            return invalid(join(&at, "domains"), "at least one domain is required");
        }
        for (j, domain) in vh.domains.iter().enumerate() {
            let field = join(&at, &format!("domains[{j}]"));
            let domain = domain.to_ascii_lowercase();
            if let Some(other) = seen.insert(domain.clone(), i) {
                return invalid(
                    field,
                    format!(
                        "domain {domain:?} is also in virtual_hosts[{other}]; domains must be unique"
                    ),
                );
            }
            if domain == "*" {
                table.default = Some(i);
            } else if let Some(suffix) = domain.strip_prefix('*') {
                check_wildcard(suffix, &field)?;
                table.suffixes.push((suffix.to_string(), i));
            } else if let Some(prefix) = domain.strip_suffix('*') {
                check_wildcard(prefix, &field)?;
                table.prefixes.push((prefix.to_string(), i));
            } else if domain.contains('*') {
                return invalid(field, "a wildcard may only be the first or last character");
            } else {
                table.exact.insert(domain, i);
            }
        }
        table
            .virtual_hosts
            .push(virtual_host(vh, &at, &default_mirrors)?);
    }
    // Longest wildcard first; the stable sort keeps config order on ties.
    table
        .suffixes
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    table
        .prefixes
        .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    Ok(table)
}

fn check_wildcard(rest: &str, field: &str) -> FieldResult<()> {
    if rest.contains('*') {
        return invalid(field, "only one wildcard is allowed");
    }
    Ok(())
}

impl RouteTable {
    /// The virtual host for a `Host`/`:authority` value.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let mut host = host.to_ascii_lowercase();
        if self.ignore_port_in_host_matching {
            host = strip_port(&host).to_string();
        }
        let index = self
            .exact
            .get(&host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(self.default)?;
        self.virtual_hosts.get(index)
    }
}

/// `host` without a trailing `:port` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i + 1..].is_empty() && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            let h = &host[..i];
            // `::1` without brackets has no port.
            if h.contains(':') && !h.ends_with(']') {
                host
            } else {
                h
            }
        }
        _ => host,
    }
}

// === impl VirtualHost ===

fn virtual_host(
    vh: &PbVirtualHost,
    at: &str,
    default_mirrors: &[Mirror],
) -> FieldResult<VirtualHost> {
    if vh.matcher.is_some() {
        return invalid(
            join(at, "matcher"),
            "the generic matcher API is not supported; use routes",
        );
    }
    let mut filters = action::filter_configs(
        &vh.typed_per_filter_config,
        &join(at, "typed_per_filter_config"),
    )?;
    if filters.cors.is_none()
        && let Some(c) = &vh.cors
    {
        filters.cors = Some(std::sync::Arc::new(action::legacy_cors(
            c,
            &join(at, "cors"),
        )?));
    }
    let retry = vh
        .retry_policy
        .as_ref()
        .map(|r| {
            // Compiled through a route action so the field names line up.
            action::forward(
                &envoy_types::pb::envoy::config::route::v3::RouteAction {
                    cluster_specifier: Some(
                        envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster("-".into()),
                    ),
                    retry_policy: Some(r.clone()),
                    ..Default::default()
                },
                at,
            )
            .map(|f| f.retry)
        })
        .transpose()?
        .flatten();
    let mut mirrors = action::mirrors(
        &vh.request_mirror_policies,
        &join(at, "request_mirror_policies"),
    )?;
    if mirrors.is_empty() {
        mirrors = default_mirrors.to_vec();
    }
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            route(
                r,
                &join(at, &format!("routes[{i}]")),
                retry.as_ref(),
                &mirrors,
            )
        })
        .collect::<FieldResult<_>>()?;
    let require_tls = match TlsRequirementType::try_from(vh.require_tls) {
        Ok(TlsRequirementType::All) => TlsRequirement::All,
        Ok(TlsRequirementType::ExternalOnly) => TlsRequirement::ExternalOnly,
        _ => TlsRequirement::None,
    };
    Ok(VirtualHost {
        name: vh.name.clone(),
        routes,
        request_headers: HeaderOps::compile(
            at,
            "request_headers_to_add",
            &vh.request_headers_to_add,
            "request_headers_to_remove",
            &vh.request_headers_to_remove,
        )?,
        response_headers: HeaderOps::compile(
            at,
            "response_headers_to_add",
            &vh.response_headers_to_add,
            "response_headers_to_remove",
            &vh.response_headers_to_remove,
        )?,
        require_tls,
        filters,
        attempt_count_in_request: vh.include_request_attempt_count,
        attempt_count_in_response: vh.include_attempt_count_in_response,
        buffer_limit: action::buffer_limit(
            vh.request_body_buffer_limit.as_ref().map(|v| v.value),
            vh.per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
            at,
        )?,
    })
}

impl VirtualHost {
    /// The first route matching the request.
    pub fn route(&self, req: &RequestView<'_>, metadata: Option<&Metadata>) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(req, metadata))
    }
}

// === impl Route ===

fn route(
    r: &PbRoute,
    at: &str,
    vh_retry: Option<&RetryPolicy>,
    vh_mirrors: &[Mirror],
) -> FieldResult<Route> {
    let Some(m) = &r.r#match else {
        return invalid(join(at, "match"), "is required");
    };
    let matcher = route_match(m, &join(at, "match"))?;
    let action = match &r.action {
        Some(PbAction::Route(a)) => {
            let mut f = action::forward(a, &join(at, "route"))?;
            if f.retry.is_none() {
                f.retry = vh_retry.cloned();
            }
            if f.mirrors.is_empty() {
                f.mirrors = vh_mirrors.to_vec();
            }
            Action::Forward(Box::new(f))
        }
        Some(PbAction::Redirect(rd)) => {
            Action::Redirect(Box::new(action::redirect(rd, &join(at, "redirect"))?))
        }
        Some(PbAction::DirectResponse(d)) => {
            Action::Direct(action::direct(d, &join(at, "direct_response"))?)
        }
        Some(PbAction::FilterAction(_)) => {
            return invalid(join(at, "filter_action"), "is not supported");
        }
        Some(PbAction::NonForwardingAction(_)) => {
            return invalid(join(at, "non_forwarding_action"), "is not supported");
        }
        None => {
            return invalid(
                at,
                "a route needs an action: route, redirect or direct_response",
            );
        }
    };
    let mut filters = action::filter_configs(
        &r.typed_per_filter_config,
        &join(at, "typed_per_filter_config"),
    )?;
    if filters.cors.is_none()
        && let Some(PbAction::Route(a)) = &r.action
        && let Some(c) = &a.cors
    {
        filters.cors = Some(std::sync::Arc::new(action::legacy_cors(
            c,
            &join(at, "route.cors"),
        )?));
    }
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        request_headers: HeaderOps::compile(
            at,
            "request_headers_to_add",
            &r.request_headers_to_add,
            "request_headers_to_remove",
            &r.request_headers_to_remove,
        )?,
        response_headers: HeaderOps::compile(
            at,
            "response_headers_to_add",
            &r.response_headers_to_add,
            "response_headers_to_remove",
            &r.response_headers_to_remove,
        )?,
        filters,
        buffer_limit: action::buffer_limit(
            r.request_body_buffer_limit.as_ref().map(|v| v.value),
            r.per_request_buffer_limit_bytes.as_ref().map(|v| v.value),
            at,
        )?,
    })
}

pub(crate) fn route_match(m: &PbRouteMatch, at: &str) -> FieldResult<RouteMatch> {
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_ascii_lowercase()
        }
    };
    let mut connect = false;
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) if p.is_empty() => PathMatch::Any,
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(fold(p)),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(fold(p)),
        // Envoy ignores `case_sensitive` for regexes.
        Some(PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(full_regex(r, &join(at, "safe_regex"))?)
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            if p.ends_with('/') || p.contains(['?', '#']) {
                return invalid(
                    join(at, "path_separated_prefix"),
                    "must not end with '/' or contain '?' or '#'",
                );
            }
            PathMatch::SeparatedPrefix(fold(p))
        }
        Some(PathSpecifier::ConnectMatcher(_)) => {
            connect = true;
            PathMatch::Any
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return invalid(join(at, "path_match_policy"), "is not supported");
        }
        None => {
            return invalid(
                at,
                "one of prefix, path, safe_regex, path_separated_prefix, connect_matcher is required",
            );
        }
    };
    for (field, unsupported) in [
        ("tls_context", m.tls_context.is_some()),
        ("filter_state", !m.filter_state.is_empty()),
        ("cookies", !m.cookies.is_empty()),
    ] {
        if unsupported {
            return invalid(join(at, field), "is not supported");
        }
    }
    Ok(RouteMatch {
        path,
        case_sensitive,
        headers: m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::compile(h, &join(at, &format!("headers[{i}]"))))
            .collect::<FieldResult<_>>()?,
        query: m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| QueryMatcher::compile(q, &join(at, &format!("query_parameters[{i}]"))))
            .collect::<FieldResult<_>>()?,
        grpc: m.grpc.is_some(),
        connect,
        fraction: m
            .runtime_fraction
            .as_ref()
            .map(|f| runtime_fraction(Some(f), Fraction::ALWAYS)),
        metadata: m
            .dynamic_metadata
            .iter()
            .enumerate()
            .map(|(i, d)| MetadataMatcher::compile(d, &join(at, &format!("dynamic_metadata[{i}]"))))
            .collect::<FieldResult<_>>()?,
    })
}

impl RouteMatch {
    /// Whether the request (with its dynamic metadata) matches.
    pub fn matches(&self, req: &RequestView<'_>, metadata: Option<&Metadata>) -> bool {
        let (path, query) = req.path.split_once('?').unwrap_or((req.path, ""));
        let eq = |a: &str, b: &str| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        let starts = |s: &str, p: &str| {
            s.len() >= p.len() && s.is_char_boundary(p.len()) && eq(&s[..p.len()], p)
        };
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => starts(req.path, p),
            PathMatch::Exact(p) => eq(path, p),
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::SeparatedPrefix(p) => {
                starts(path, p) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        };
        if !path_ok {
            return false;
        }
        if self.connect && req.method != http::Method::CONNECT {
            return false;
        }
        if self.grpc
            && !req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"))
        {
            return false;
        }
        self.headers.iter().all(|h| h.matches(req))
            && self.query.iter().all(|q| q.matches(query))
            && self.metadata.iter().all(|m| m.matches(metadata))
            && self.fraction.is_none_or(|f| f.sample())
    }
}

// === impl Route (rewrites) ===

impl Route {
    /// The part of the path that `prefix_rewrite` replaces.
    pub fn rewritable_prefix_len(&self, path: &str) -> usize {
        match &self.matcher.path {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => p.len().min(path.len()),
            PathMatch::Exact(p) => p.len().min(path.len()),
            PathMatch::Any | PathMatch::Regex(_) => 0,
        }
    }
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
