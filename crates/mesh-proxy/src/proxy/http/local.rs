//! Responses the proxy makes itself: Envoy's local replies (NR, NC, UH,
//! UF, UO, ...), direct responses, redirects, fault aborts and CORS preflight
//! answers.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::{ProxyBody, empty, full};
use crate::proxy::record::{RequestRecord, ResponseFlags};
use crate::runtime::action::{Abort, Cors, DirectResponse, PathRedirect, Redirect};
use crate::runtime::route::{Route, strip_port};

/// Marks a response as a local reply to an error, which gets no route
/// header changes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalReply;

/// A plain-text response.
pub(crate) fn reply(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(if text.is_empty() {
        empty()
    } else {
        full(text.to_string())
    });
    *resp.status_mut() = status;
    if !text.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

/// A local reply to an error, recorded with its flags and details.
pub(crate) fn error(
    rec: &mut RequestRecord,
    status: StatusCode,
    flags: ResponseFlags,
    details: &'static str,
    text: &str,
) -> Response<ProxyBody> {
    rec.flags.insert(flags);
    rec.details = Some(details.into());
    let mut resp = reply(status, text);
    resp.extensions_mut().insert(LocalReply);
    resp
}

/// Envoy's answer when a circuit breaker refuses a request
/// (`max_requests`, `max_pending_requests`): 503 `UO`, said at once, with
/// `x-envoy-overloaded` so a caller can tell it from an upstream's 503.
pub(crate) fn overflow(rec: &mut RequestRecord) -> Response<ProxyBody> {
    rec.breakers.rq_overflow = true;
    let mut resp = error(
        rec,
        StatusCode::SERVICE_UNAVAILABLE,
        ResponseFlags::UPSTREAM_OVERFLOW,
        "upstream_reset_before_response_started{overflow}",
        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
    );
    resp.headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    resp
}

/// A route's `direct_response`.
pub(crate) fn direct(d: &DirectResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(d.body.clone().map_or_else(empty, full));
    *resp.status_mut() = d.status;
    if d.body.is_some() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

/// A route's `redirect`, for a request to `scheme://authority` + `path`.
pub(crate) fn redirect(
    r: &Redirect,
    scheme: &str,
    authority: &str,
    path: &str,
    route: &Route,
) -> Response<ProxyBody> {
    let new_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let mut host = r.host.clone().unwrap_or_else(|| authority.to_string());
    if let Some(port) = r.port {
        host = format!("{}:{port}", strip_port(&host));
    } else if new_scheme != scheme {
        // A scheme change drops the old scheme's port.
        host = strip_port(&host).to_string();
    }
    let (only_path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut new_path = match &r.path {
        PathRedirect::Keep => only_path.to_string(),
        PathRedirect::Path(p) => p.clone(),
        PathRedirect::Prefix(p) => {
            let cut = route.rewritable_prefix_len(only_path);
            format!("{p}{}", &only_path[cut..])
        }
        PathRedirect::Regex(re) => re.apply(only_path),
    };
    if !new_path.contains('?')
        && !r.strip_query
        && let Some(q) = query
    {
        new_path = format!("{new_path}?{q}");
    }
    let location = format!("{new_scheme}://{host}{new_path}");
    let mut resp = Response::new(empty());
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A virtual host's `require_tls` redirect.
pub(crate) fn to_https(authority: &str, path: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{}{path}", strip_port(authority))) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A fault abort.
pub(crate) fn abort(abort: Abort) -> Response<ProxyBody> {
    let mut resp = match abort {
        Abort::Http(status) => reply(status, "fault filter abort"),
        Abort::Grpc(code) => {
            // A trailers-only gRPC response.
            let mut resp = Response::new(empty());
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(code));
            h.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            resp
        }
    };
    resp.extensions_mut().insert(LocalReply);
    resp
}

/// The answer to an allowed CORS preflight.
pub(crate) fn preflight(c: &Cors, origin: &str) -> Response<ProxyBody> {
    let mut resp = reply(StatusCode::OK, "");
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_METHODS, &c.allow_methods),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, &c.allow_headers),
        (header::ACCESS_CONTROL_MAX_AGE, &c.max_age),
    ] {
        if let Some(v) = value {
            h.insert(name, v.clone());
        }
    }
    if c.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    resp
}

/// CORS headers on the response to an allowed cross-origin request.
pub(crate) fn cors_headers(c: &Cors, origin: &str, h: &mut http::HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if c.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &c.expose_headers {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
}
