//! Per-filter configs a route, virtual host, route configuration or
//! weighted cluster may carry in `typed_per_filter_config`: fault
//! injection (`envoy.filters.http.fault`) and CORS
//! (`envoy.filters.http.cors`, or the deprecated in-route `cors` field).
//! The most specific level that has one wins.

// Envoy still honours the deprecated fields it replaced, so they are read too.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::FilterConfig;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::google::protobuf::Any;
use http::{HeaderValue, StatusCode};

use super::convert::{self, Fraction, decode_any, runtime_fraction};
use super::matcher::{HeaderMatcher, StringMatcher};
use super::{FieldResult, invalid, join};

/// The HTTP filter names whose per-route configs the proxy understands.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// See [`FAULT_FILTER`].
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Per-filter configs found at one level (route config, virtual host,
/// route, weighted cluster); the most specific level that has one wins.
#[derive(Clone, Debug, Default)]
pub struct FilterConfigs {
    /// `envoy.filters.http.fault`.
    pub fault: Option<Arc<Fault>>,
    /// `envoy.filters.http.cors`.
    pub cors: Option<Arc<Cors>>,
}

/// A compiled `HTTPFault`.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    /// Only requests matching every header matcher are faulted.
    pub headers: Vec<HeaderMatcher>,
    /// A fixed delay, for this share of requests.
    pub delay: Option<(Duration, Fraction)>,
    /// An abort, for this share of requests.
    pub abort: Option<(Abort, Fraction)>,
}

/// How a fault aborts.
#[derive(Clone, Copy, Debug)]
pub enum Abort {
    /// With an HTTP status.
    Http(StatusCode),
    /// With a gRPC status (HTTP 200, `grpc-status` set).
    Grpc(u32),
}

/// A compiled CORS policy.
#[derive(Clone, Debug)]
pub struct Cors {
    /// Whether the policy is enforced.
    pub enabled: Fraction,
    /// Allowed origins.
    pub allow_origins: Vec<StringMatcher>,
    /// `access-control-allow-methods`.
    pub allow_methods: Option<HeaderValue>,
    /// `access-control-allow-headers`.
    pub allow_headers: Option<HeaderValue>,
    /// `access-control-expose-headers`.
    pub expose_headers: Option<HeaderValue>,
    /// `access-control-max-age`.
    pub max_age: Option<HeaderValue>,
    /// `access-control-allow-credentials: true`.
    pub allow_credentials: bool,
    /// Whether a preflight from an origin not allowed is forwarded upstream
    /// (Envoy's default) instead of answered.
    pub forward_not_matching_preflights: bool,
}

// === impl FilterConfigs ===

/// Compiles the `typed_per_filter_config` map found at `at`.
pub(crate) fn filter_configs(map: &HashMap<String, Any>, at: &str) -> FieldResult<FilterConfigs> {
    let mut configs = FilterConfigs::default();
    for (name, any) in map {
        let field = format!("{at}[{name:?}]");
        // A `FilterConfig` wrapper may disable the filter or mark it optional.
        let (any, disabled) = if any.type_url == <FilterConfig as prost::Name>::type_url() {
            let wrapper: FilterConfig = decode_any(any, &field)?;
            match wrapper.config {
                Some(inner) => (std::borrow::Cow::Owned(inner), wrapper.disabled),
                None => (std::borrow::Cow::Borrowed(any), wrapper.disabled),
            }
        } else {
            (std::borrow::Cow::Borrowed(any), false)
        };
        match name.as_str() {
            FAULT_FILTER => {
                configs.fault = Some(Arc::new(if disabled {
                    Fault::default()
                } else {
                    fault(&decode_any(&any, &field)?, &field)?
                }));
            }
            CORS_FILTER => {
                configs.cors = Some(Arc::new(if disabled {
                    Cors::disabled()
                } else {
                    cors(&decode_any(&any, &field)?, &field)?
                }));
            }
            // Per-route configs of filters this proxy does not run change nothing here.
            _ => {}
        }
    }
    Ok(configs)
}

/// Compiles an `HTTPFault` found at `at`.
pub(crate) fn fault(f: &HttpFault, at: &str) -> FieldResult<Fault> {
    if f.response_rate_limit.is_some() {
        return invalid(join(at, "response_rate_limit"), "is not supported");
    }
    if !f.upstream_cluster.is_empty() {
        return invalid(join(at, "upstream_cluster"), "is not supported");
    }
    if !f.downstream_nodes.is_empty() {
        return invalid(join(at, "downstream_nodes"), "is not supported");
    }
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fixed)) => Some((
                convert::duration(fixed, &join(at, "delay.fixed_delay"))?,
                d.percentage
                    .as_ref()
                    .map(convert::fraction)
                    .unwrap_or(Fraction::ALWAYS),
            )),
            Some(FaultDelaySecifier::HeaderDelay(_)) => {
                return invalid(join(at, "delay.header_delay"), "is not supported");
            }
            None => return invalid(join(at, "delay"), "fixed_delay is required"),
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let kind = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) => {
                    let status = u16::try_from(*s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .and_then(|s| StatusCode::from_u16(s).ok());
                    match status {
                        Some(s) => Abort::Http(s),
                        None => {
                            return invalid(
                                join(at, "abort.http_status"),
                                format!("{s} is not an HTTP status in [200, 600)"),
                            );
                        }
                    }
                }
                Some(ErrorType::GrpcStatus(s)) => Abort::Grpc(*s),
                Some(ErrorType::HeaderAbort(_)) => {
                    return invalid(join(at, "abort.header_abort"), "is not supported");
                }
                None => {
                    return invalid(join(at, "abort"), "http_status or grpc_status is required");
                }
            };
            Some((
                kind,
                a.percentage
                    .as_ref()
                    .map(convert::fraction)
                    .unwrap_or(Fraction::ALWAYS),
            ))
        }
    };
    let headers = f
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| HeaderMatcher::compile(h, &join(at, &format!("headers[{i}]"))))
        .collect::<FieldResult<_>>()?;
    Ok(Fault {
        headers,
        delay,
        abort,
    })
}

/// Compiles a CORS policy found at `at`.
pub(crate) fn cors(c: &CorsPolicy, at: &str) -> FieldResult<Cors> {
    let allow_origins = c
        .allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(i, m)| {
            StringMatcher::compile(m, &join(at, &format!("allow_origin_string_match[{i}]")))
        })
        .collect::<FieldResult<_>>()?;
    let value = |s: &str, name: &str| -> FieldResult<Option<HeaderValue>> {
        if s.is_empty() {
            Ok(None)
        } else {
            header_value(s, &join(at, name)).map(Some)
        }
    };
    Ok(Cors {
        enabled: runtime_fraction(c.filter_enabled.as_ref(), Fraction::ALWAYS),
        allow_origins,
        allow_methods: value(&c.allow_methods, "allow_methods")?,
        allow_headers: value(&c.allow_headers, "allow_headers")?,
        expose_headers: value(&c.expose_headers, "expose_headers")?,
        max_age: value(&c.max_age, "max_age")?,
        allow_credentials: c.allow_credentials.as_ref().is_some_and(|b| b.value),
        forward_not_matching_preflights: c
            .forward_not_matching_preflights
            .as_ref()
            .is_none_or(|b| b.value),
    })
}

/// Compiles the deprecated in-route `cors` field (same meaning).
pub(crate) fn legacy_cors(
    c: &envoy_types::pb::envoy::config::route::v3::CorsPolicy,
    at: &str,
) -> FieldResult<Cors> {
    use envoy_types::pb::envoy::config::route::v3::cors_policy::EnabledSpecifier;
    let mut compiled = cors(
        &CorsPolicy {
            allow_origin_string_match: c.allow_origin_string_match.clone(),
            allow_methods: c.allow_methods.clone(),
            allow_headers: c.allow_headers.clone(),
            expose_headers: c.expose_headers.clone(),
            max_age: c.max_age.clone(),
            allow_credentials: c.allow_credentials,
            forward_not_matching_preflights: c.forward_not_matching_preflights,
            ..Default::default()
        },
        at,
    )?;
    if let Some(EnabledSpecifier::FilterEnabled(f)) = &c.enabled_specifier {
        compiled.enabled = runtime_fraction(Some(f), Fraction::ALWAYS);
    }
    Ok(compiled)
}

// === impl Cors ===

impl Cors {
    fn disabled() -> Self {
        Self {
            enabled: Fraction::NEVER,
            allow_origins: Vec::new(),
            allow_methods: None,
            allow_headers: None,
            expose_headers: None,
            max_age: None,
            allow_credentials: false,
            forward_not_matching_preflights: true,
        }
    }

    /// Whether `origin` is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|m| m.matches(origin))
    }
}

fn header_value(v: &str, field: &str) -> FieldResult<HeaderValue> {
    HeaderValue::from_str(v).or_else(|_| invalid(field, "is not a valid HTTP header value"))
}
