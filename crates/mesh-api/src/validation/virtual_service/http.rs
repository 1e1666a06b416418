//! HTTP route rules of a VirtualService: the action conflicts (route vs
//! redirect vs directResponse vs delegate), matches, header operations,
//! CORS, faults, mirrors, redirects, rewrites, retries and timeouts.

use super::super::destination_rule::check_duration;
use super::super::{Path, Report, check_labels, check_port, check_regex};
use super::headers::{check_authority_rewrite, check_header_operations};
use super::{check_destination, check_gateway_names, check_source_namespace, check_weights};
use crate::common::{Percent, StringMatch};
use crate::networking::virtual_service::{
    CorsPolicy, FaultAbort, FaultDelay, HttpDirectResponse, HttpMatchRequest, HttpRedirect,
    HttpRetry, HttpRewrite, HttpRoute,
};

/// Envoy refuses longer regexes by default (its RE2 program size limit is
/// reached well before), and Istio caps them at this length.
const MAX_REGEX_LEN: usize = 1024;

/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` policies.
const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// HTTP methods allowed in `corsPolicy.allowMethods` (Go's net/http set, plus `*`).
const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

/// gRPC status names accepted by `fault.abort.grpcStatus`.
const GRPC_STATUSES: &[&str] = &crate::common::GRPC_STATUS_NAMES;

/// Redirect codes Envoy can send; other 3xx codes are accepted by Istio but
/// the redirect is then dropped at translation.
const ENVOY_REDIRECT_CODES: &[u32] = &[301, 302, 303, 307, 308];

const PSEUDO_HEADERS: &[&str] = &[":method", ":scheme", ":authority", ":path", ":status"];

const KB: usize = 1024;
const MB: usize = 1024 * KB;

pub(super) fn validate_http_route(
    route: &HttpRoute,
    in_delegate: bool,
    at_gateway: bool,
    path: &Path,
    report: &mut Report,
) {
    check_conflicts(route, in_delegate, path, report);
    if let Some(d) = &route.delegate {
        let p = path.field("delegate");
        if d.name.is_empty() {
            report.error(
                &p.field("name"),
                "delegate name is required: the name of the delegate VirtualService",
            );
        }
        if let Some(ns) = d
            .namespace
            .as_deref()
            .filter(|ns| !super::is_dns1123_label(ns))
        {
            report.error(
                &p.field("namespace"),
                format!("delegate namespace {ns:?} is not a valid namespace name"),
            );
        }
    }
    for (i, m) in route.r#match.iter().enumerate() {
        validate_match(m, at_gateway, &path.field("match").index(i), report);
    }
    if let Some(h) = &route.headers {
        check_header_operations(h, &path.field("headers"), report);
    }
    if let Some(c) = &route.cors_policy {
        validate_cors(c, &path.field("corsPolicy"), report);
    }
    if let Some(f) = &route.fault {
        let p = path.field("fault");
        if f.abort.is_none() && f.delay.is_none() {
            report.error(&p, "HTTP fault injection must have an abort and/or a delay");
        }
        if let Some(a) = &f.abort {
            validate_abort(a, &p.field("abort"), report);
        }
        if let Some(d) = &f.delay {
            validate_delay(d, &p.field("delay"), report);
        }
    }
    if let Some(v) = route.mirror_percent {
        let p = path.field("mirrorPercent");
        if v > 100 {
            report.error(
                &p,
                format!("mirrorPercent must have a max value of 100 (it has {v})"),
            );
        }
        report.warn(
            &p,
            "mirrorPercent is deprecated; use mirrorPercentage instead",
        );
    }
    if let Some(pct) = &route.mirror_percentage {
        check_mirror_percentage(pct, &path.field("mirrorPercentage"), report);
    }
    if let Some(m) = &route.mirror {
        check_destination(m, &path.field("mirror"), report);
    }
    for (i, m) in route.mirrors.iter().enumerate() {
        let p = path.field("mirrors").index(i);
        check_destination(&m.destination, &p.field("destination"), report);
        if let Some(pct) = &m.percentage {
            check_mirror_percentage(pct, &p.field("percentage"), report);
        }
    }
    if let Some(r) = &route.redirect {
        validate_redirect(r, &route.r#match, &path.field("redirect"), report);
    }
    if let Some(d) = &route.direct_response {
        validate_direct_response(d, &path.field("directResponse"), report);
    }
    if let Some(r) = &route.retries {
        validate_retries(r, &path.field("retries"), report);
    }
    if let Some(r) = &route.rewrite {
        validate_rewrite(r, &path.field("rewrite"), report);
    }
    check_authority_rewrite(route, path, report);
    let dests = path.field("route");
    for (i, d) in route.route.iter().enumerate() {
        let p = dests.index(i);
        check_destination(&d.destination, &p.field("destination"), report);
        if let Some(h) = &d.headers {
            check_header_operations(h, &p.field("headers"), report);
        }
    }
    check_weights(
        &route.route.iter().map(|d| d.weight).collect::<Vec<_>>(),
        &dests,
        report,
    );
    if let Some(t) = &route.timeout {
        check_duration(t, &path.field("timeout"), report);
    }
    let per_try = route.retries.as_ref().and_then(|r| r.per_try_timeout);
    if let (Some(t), Some(pt)) = (route.timeout, per_try)
        && pt > t
    {
        report.warn(
            &path.field("retries").field("perTryTimeout"),
            format!("perTryTimeout {pt} is longer than the route timeout {t}, so no retry can happen in time"),
        );
    }
}

/// A route does one thing: forward (`route`), redirect, answer directly, or
/// delegate; some extras (fault, rewrite) make no sense without forwarding.
fn check_conflicts(route: &HttpRoute, in_delegate: bool, path: &Path, report: &mut Report) {
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        report.error(
            &path.field("mirrors"),
            "HTTP route cannot contain both mirror and mirrors; move mirror into mirrors",
        );
    }
    if route.delegate.is_some() && !in_delegate {
        if route.redirect.is_some() {
            report.error(
                &path.field("redirect"),
                "root HTTP route with a delegate must not specify redirect",
            );
        }
        if !route.route.is_empty() {
            report.error(
                &path.field("route"),
                "root HTTP route with a delegate must not specify route",
            );
        }
        return;
    }
    if in_delegate && route.delegate.is_some() {
        report.error(
            &path.field("delegate"),
            "delegate HTTP route cannot contain delegate: delegation is one level deep",
        );
    }
    let action = if route.redirect.is_some() {
        "redirect"
    } else if route.direct_response.is_some() {
        "directResponse"
    } else {
        if route.route.is_empty() {
            report.error(
                &path.field("route"),
                "HTTP route, redirect or directResponse is required",
            );
        }
        return;
    };
    if !route.route.is_empty() {
        report.error(
            &path.field(action),
            format!("HTTP route cannot contain both route and {action}"),
        );
    }
    if route.fault.is_some() {
        report.error(
            &path.field("fault"),
            format!("HTTP route cannot contain both fault and {action}"),
        );
    }
    if route.rewrite.is_some() {
        report.error(
            &path.field("rewrite"),
            format!("HTTP route cannot contain both rewrite and {action}"),
        );
    }
    if route.redirect.is_some() && route.direct_response.is_some() {
        report.error(
            &path.field("directResponse"),
            "HTTP route cannot contain both directResponse and redirect",
        );
    }
}

fn is_jwt_claim(name: &str) -> bool {
    name.strip_prefix("@request.auth.claims")
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// RFC 7230 `token` characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_match_header_name(name: &str, at_gateway: bool, path: &Path, report: &mut Report) {
    if name.is_empty() {
        report.error(path, "header name cannot be empty");
    } else if is_jwt_claim(name) {
        if !at_gateway {
            report.error(
                path,
                format!("JWT claim based routing (key: {name}) is only supported for gateways; bind the VirtualService to a gateway"),
            );
        }
    } else if !PSEUDO_HEADERS.contains(&name) && !is_header_name(name) {
        report.error(
            path,
            format!("header name {name:?} is not a valid header name"),
        );
    } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
        report.warn(
            path,
            format!(
                "header name {name:?} should be lowercase: header names are matched in lowercase"
            ),
        );
    }
}

/// Istio's `validateStringMatch`: no empty prefix, and a regex that compiles.
fn check_match(m: &StringMatch, empty_prefix_ok: bool, path: &Path, report: &mut Report) {
    match m {
        StringMatch::Prefix(p) if p.is_empty() && !empty_prefix_ok => {
            report.error(
                &path.field("prefix"),
                "prefix string match should not be empty",
            );
        }
        StringMatch::Regex(r) => check_route_regex(r, &path.field("regex"), report),
        _ => {}
    }
}

fn check_route_regex(re: &str, path: &Path, report: &mut Report) {
    if re.len() > MAX_REGEX_LEN {
        report.error(
            path,
            format!(
                "regex is too large: {} characters, at most {MAX_REGEX_LEN} are allowed",
                re.len()
            ),
        );
    } else {
        check_regex(re, path, report);
    }
}

fn validate_match(m: &HttpMatchRequest, at_gateway: bool, path: &Path, report: &mut Report) {
    for (name, sm) in &m.headers {
        let p = path.field("headers").key(name);
        check_match_header_name(name, at_gateway, &p, report);
        check_match(sm, false, &p, report);
    }
    for (name, sm) in &m.without_headers {
        let p = path.field("withoutHeaders").key(name);
        check_match_header_name(name, at_gateway, &p, report);
        // `regex: "*"` is Istio's historical "header present" spelling.
        if sm != &StringMatch::Regex("*".into()) {
            check_match(sm, false, &p, report);
        }
    }
    if let Some(uri) = &m.uri {
        check_match(uri, true, &path.field("uri"), report);
    }
    for (field, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            check_match(sm, false, &path.field(field), report);
        }
    }
    for (name, sm) in &m.query_params {
        check_match(sm, false, &path.field("queryParams").key(name), report);
    }
    if let Some(port) = m.port.filter(|p| *p != 0) {
        check_port(port, &path.field("port"), report);
    }
    check_labels(&m.source_labels, &path.field("sourceLabels"), report);
    check_gateway_names(&m.gateways, &path.field("gateways"), report);
    if let Some(ns) = &m.source_namespace {
        check_source_namespace(ns, &path.field("sourceNamespace"), report);
    }
}

fn validate_cors(c: &CorsPolicy, path: &Path, report: &mut Report) {
    for (i, o) in c.allow_origins.iter().enumerate() {
        let p = path.field("allowOrigins").index(i);
        if o.value().is_empty() {
            report.error(&p, "CORS allowOrigins match must not be empty; use {exact: \"*\"} or {prefix: \"https://\"}");
        } else if let StringMatch::Regex(r) = o {
            check_route_regex(r, &p.field("regex"), report);
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            report.error(
                &path.field("allowMethods").index(i),
                format!(
                    "{m:?} is not a supported HTTP method; use one of {}",
                    CORS_METHODS.join(", ")
                ),
            );
        }
    }
    for (field, names) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            if name != "*" && !is_header_name(name) {
                report.error(
                    &path.field(field).index(i),
                    format!("header name {name:?} is not a valid header name"),
                );
            }
        }
    }
    if let Some(age) = &c.max_age {
        let p = path.field("maxAge");
        check_duration(age, &p, report);
        if age.0.subsec_nanos() > 0 {
            report.error(
                &p,
                "maxAge is accurate only to seconds precision; use whole seconds",
            );
        }
    }
}

/// Istio's `validatePercentage`: 0, or within [0.0001, 100].
fn check_fault_percentage(p: &Percent, path: &Path, report: &mut Report) {
    let v = p.value;
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        report.error(
            path,
            format!("percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"),
        );
    }
}

fn check_mirror_percentage(p: &Percent, path: &Path, report: &mut Report) {
    if !(0.0..=100.0).contains(&p.value) {
        report.error(
            path,
            format!("mirror percentage {} must be in the range 0..100", p.value),
        );
    }
}

fn validate_abort(a: &FaultAbort, path: &Path, report: &mut Report) {
    if let Some(p) = &a.percentage {
        check_fault_percentage(p, &path.field("percentage"), report);
    }
    let kinds = [
        a.http_status.is_some(),
        a.grpc_status.is_some(),
        a.http2_error.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => report.warn(
            path,
            "abort configured, but error type not set: add httpStatus or grpcStatus",
        ),
        1 => {}
        _ => report.error(
            path,
            "only one of httpStatus, grpcStatus and http2Error may be set",
        ),
    }
    if let Some(s) = a.http_status
        && !(200..=599).contains(&s)
    {
        report.error(
            &path.field("httpStatus"),
            format!("HTTP status {s} is not in range 200-599"),
        );
    }
    if let Some(s) = &a.grpc_status
        && !GRPC_STATUSES.contains(&s.as_str())
    {
        report.error(
            &path.field("grpcStatus"),
            format!("gRPC status {s:?} is not supported; use a code name such as \"UNAVAILABLE\" or \"NOT_FOUND\""),
        );
    }
    if a.http2_error.is_some() {
        report.error(
            &path.field("http2Error"),
            "HTTP/2 abort fault injection is not supported yet",
        );
    }
}

fn validate_delay(d: &FaultDelay, path: &Path, report: &mut Report) {
    if let Some(p) = &d.percentage {
        check_fault_percentage(p, &path.field("percentage"), report);
    }
    if let Some(p) = d.percent
        && !(0..=100).contains(&p)
    {
        report.error(
            &path.field("percent"),
            format!("percentage {p} is not in range 0..100"),
        );
    }
    if d.fixed_delay.is_some() && d.exponential_delay.is_some() {
        report.error(
            path,
            "only one of fixedDelay and exponentialDelay may be set",
        );
    }
    if let Some(f) = &d.fixed_delay {
        check_duration(f, &path.field("fixedDelay"), report);
    }
    if let Some(e) = &d.exponential_delay {
        check_duration(e, &path.field("exponentialDelay"), report);
        report.error(
            &path.field("exponentialDelay"),
            "exponentialDelay is not supported yet; use fixedDelay",
        );
    }
}

fn validate_redirect(
    r: &HttpRedirect,
    matches: &[HttpMatchRequest],
    path: &Path,
    report: &mut Report,
) {
    let set = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    if set(&r.uri) && set(&r.prefix_rewrite) {
        report.error(
            path,
            "redirect may only specify one of uri and prefixRewrite",
        );
    }
    if set(&r.prefix_rewrite)
        && matches.iter().any(|m| {
            m.uri
                .as_ref()
                .is_some_and(|u| !matches!(u, StringMatch::Prefix(_)))
        })
    {
        report.error(
            &path.field("prefixRewrite"),
            "redirect prefixRewrite requires all URI matches to use prefix match type",
        );
    }
    if !set(&r.uri)
        && !set(&r.prefix_rewrite)
        && !set(&r.authority)
        && r.port.is_none()
        && r.derive_port.is_none()
        && !set(&r.scheme)
    {
        report.error(
            path,
            "redirect must specify uri, prefixRewrite, authority, scheme, or port",
        );
    }
    if r.port.is_some() && r.derive_port.is_some() {
        report.error(path, "only one of port and derivePort may be set");
    }
    if let Some(code) = r.redirect_code.filter(|c| *c != 0) {
        if !(300..=399).contains(&code) {
            report.error(
                &path.field("redirectCode"),
                format!("{code} is not a valid redirect code, must be 3xx"),
            );
        } else if !ENVOY_REDIRECT_CODES.contains(&code) {
            report.warn(
                &path.field("redirectCode"),
                format!("redirect code {code} is not supported by the proxy and the redirect is dropped; use 301, 302, 303, 307 or 308"),
            );
        }
    }
    if let Some(s) = r.scheme.as_deref().filter(|s| !s.is_empty())
        && s != "http"
        && s != "https"
    {
        report.error(
            &path.field("scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
    }
    if let Some(port) = r.port.filter(|p| *p > 0) {
        check_port(port, &path.field("port"), report);
    }
}

fn validate_direct_response(d: &HttpDirectResponse, path: &Path, report: &mut Report) {
    if let Some(body) = &d.body {
        let p = path.field("body");
        if body.string.is_some() && body.bytes.is_some() {
            report.error(&p, "only one of string and bytes may be set");
        }
        // `bytes` is base64 text; its decoded size is three quarters of it.
        let size = body
            .string
            .as_ref()
            .map_or(0, String::len)
            .max(body.bytes.as_ref().map_or(0, |b| b.len() / 4 * 3));
        if size > MB {
            report.error(&p, "large directResponse bodies may impact control plane performance, must be less than 1MB");
        } else if size > 100 * KB {
            report.warn(
                &p,
                "large directResponse bodies may impact control plane performance",
            );
        }
    }
    if !(200..=599).contains(&d.status) {
        report.error(
            &path.field("status"),
            format!("HTTP status {} is not in range 200-599", d.status),
        );
    }
}

fn validate_retries(r: &HttpRetry, path: &Path, report: &mut Report) {
    let attempts = r.attempts.unwrap_or(0);
    if attempts < 0 {
        report.error(&path.field("attempts"), "attempts cannot be negative");
    }
    if attempts == 0
        && (r.per_try_timeout.is_some()
            || r.retry_on.is_some()
            || r.retry_remote_localities.is_some())
    {
        report.error(
            &path.field("attempts"),
            "http retry policy configured when attempts are set to 0 (disabled); set attempts or remove the other retry fields",
        );
    }
    if let Some(t) = &r.per_try_timeout {
        check_duration(t, &path.field("perTryTimeout"), report);
    }
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.is_empty()) {
        for policy in on.split(',') {
            let status = policy
                .parse::<u16>()
                .ok()
                .filter(|c| is_known_http_status(*c));
            if status.is_none() && !RETRY_ON_POLICIES.contains(&policy) {
                report.error(
                    &path.field("retryOn"),
                    format!("{policy:?} is not a valid retryOn policy; use Envoy retry conditions such as 5xx, gateway-error, connect-failure or an HTTP status code"),
                );
            }
        }
    }
    if let Some(b) = &r.backoff {
        check_duration(b, &path.field("backoff"), report);
    }
}

/// Status codes Go's `net/http.StatusText` knows, which is what Istio accepts in `retryOn`.
fn is_known_http_status(c: u16) -> bool {
    matches!(c,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

fn validate_rewrite(r: &HttpRewrite, path: &Path, report: &mut Report) {
    let uri = r.uri.as_deref().is_some_and(|u| !u.is_empty());
    let authority = r.authority.as_deref().is_some_and(|a| !a.is_empty());
    if uri && r.uri_regex_rewrite.is_some() {
        report.error(
            path,
            "rewrite may only contain one of uri and uriRegexRewrite",
        );
    }
    if !uri && r.uri_regex_rewrite.is_none() && !authority {
        report.error(
            path,
            "rewrite must specify at least one of uri, uriRegexRewrite or authority",
        );
    }
    if let Some(rr) = &r.uri_regex_rewrite {
        let p = path.field("uriRegexRewrite");
        if rr.r#match.is_empty() || rr.rewrite.is_empty() {
            report.error(
                &p,
                "uriRegexRewrite requires both match and rewrite to be specified",
            );
        } else {
            check_route_regex(&rr.r#match, &p.field("match"), report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("5xx,gateway-error,connect-failure", true ; "envoy")]
    #[test_case("503,retriable-status-codes", true ; "status code")]
    #[test_case("cancelled,unavailable", true ; "grpc")]
    #[test_case("5xx,bogus", false ; "unknown")]
    #[test_case("599", false ; "unknown status")]
    fn retry_on(on: &str, ok: bool) {
        let r = HttpRetry {
            attempts: Some(3),
            retry_on: Some(on.into()),
            ..HttpRetry::default()
        };
        let mut report = Report::default();
        validate_retries(&r, &Path::root("r"), &mut report);
        assert_eq!(!report.has_errors(), ok, "{report:?}");
    }

    #[test]
    fn jwt_claims_are_only_for_gateways() {
        let m: HttpMatchRequest =
            serde_saphyr::from_str("headers:\n  '@request.auth.claims.group': {exact: admin}\n")
                .unwrap();
        let mut r = Report::default();
        validate_match(&m, true, &Path::root("m"), &mut r);
        assert!(!r.has_errors(), "{r:?}");
        validate_match(&m, false, &Path::root("m"), &mut r);
        assert!(r.has_errors());
    }

    #[test]
    fn abort_kinds_are_exclusive() {
        let a = FaultAbort {
            http_status: Some(503),
            grpc_status: Some("UNAVAILABLE".into()),
            ..FaultAbort::default()
        };
        let mut r = Report::default();
        validate_abort(&a, &Path::root("a"), &mut r);
        assert_eq!(r.errors().count(), 1, "{r:?}");
    }

    #[test]
    fn bytes_bodies_are_sized_decoded() {
        let d = HttpDirectResponse {
            status: 200,
            body: Some(crate::networking::virtual_service::HttpBody {
                bytes: Some("A".repeat(140 * 1024)),
                string: None,
            }),
        };
        let mut r = Report::default();
        validate_direct_response(&d, &Path::root("d"), &mut r);
        assert!(!r.has_errors());
        assert_eq!(r.warnings().count(), 1);
    }
}
