//! The connection manager's authentication and authorization filters on
//! one request, in their configured order: JWT filters (the verified
//! payload goes into the request's dynamic metadata), RBAC filters
//! (enforced rules, and shadow rules whose outcome goes into the metadata
//! too) and external authorization filters (which read the metadata to
//! decide whether they apply). The first refusal answers the request.

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes};

use super::body::{Prefixed, ProxyBody, boxed, empty, full};
use super::{HttpCtx, local};
use crate::proxy::Generation;
use crate::proxy::ext_authz::{self, Decision, RequestFacts, Subject};
use crate::proxy::record::{AuthzEvent, RequestRecord, ResponseFlags};
use crate::runtime::ext_authz::{BodySettings, ExtAuthz, Service};
use crate::runtime::listener::HttpAuthz;
use crate::runtime::matcher::RequestView;
use crate::runtime::metadata::Metadata;
use crate::runtime::rbac::{Input, RbacFilter, Verdict};

/// Namespace of the RBAC filters' dynamic metadata.
const RBAC_NAMESPACE: &str = "envoy.filters.http.rbac";
/// Namespace of the external authorization filter's dynamic metadata.
const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// Runs the filters: `Ok` with headers to add to the response, or the
/// refusal.
pub(super) async fn authorize(
    req: &mut Request<ProxyBody>,
    authority: &str,
    ctx: &HttpCtx,
    generation: &Generation,
    metadata: &mut Metadata,
    rec: &mut RequestRecord,
) -> Result<Vec<(HeaderName, HeaderValue)>, Box<Response<ProxyBody>>> {
    let mut response_headers = Vec::new();
    let mut enforced = false;
    for filter in &ctx.hcm.authz {
        let step = match filter {
            HttpAuthz::Jwt(f) => super::authenticate(f, req, authority, ctx, rec).map(|verified| {
                metadata.merge(verified);
                Vec::new()
            }),
            HttpAuthz::Rbac(f) => {
                enforced |= f.rules.is_some();
                rbac(f, req, authority, ctx, metadata, rec).map(|()| Vec::new())
            }
            HttpAuthz::ExtAuthz(f) => {
                external(f, req, authority, ctx, generation, metadata, rec).await
            }
        };
        match step {
            Ok(added) => response_headers.extend(added),
            // Headers an earlier check added for the client go on any
            // response, a later filter's refusal too (as Envoy's encoder
            // path adds them).
            Err(mut refused) => {
                for (name, value) in response_headers {
                    refused.headers_mut().append(name, value);
                }
                return Err(refused);
            }
        }
    }
    if enforced {
        ctx.shared.observer.rbac(Some(&ctx.hcm.stat_prefix), true);
    }
    Ok(response_headers)
}

fn rbac<B>(
    filter: &RbacFilter,
    req: &Request<B>,
    authority: &str,
    ctx: &HttpCtx,
    metadata: &mut Metadata,
    rec: &mut RequestRecord,
) -> Result<(), Box<Response<ProxyBody>>> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let peer = ctx.conn.peer;
    // Without use_remote_address the client is the last x-forwarded-for
    // entry, as Envoy takes it (no trusted hops).
    let remote = if ctx.hcm.use_remote_address {
        peer.ip()
    } else {
        req.headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .last()
            .and_then(|ip| ip.trim().parse().ok())
            .unwrap_or(peer.ip())
    };
    let (verdict, shadow) = {
        let input = Input {
            direct_remote: peer,
            remote,
            destination: ctx.conn.destination,
            server_name: ctx.conn.server_name.as_deref(),
            peer: ctx.conn.session.as_ref().and_then(|s| s.peer.as_ref()),
            request: Some(RequestView {
                method: req.method(),
                scheme: if ctx.conn.tls { "https" } else { "http" },
                authority,
                path,
                headers: req.headers(),
            }),
            metadata: Some(metadata),
        };
        (
            filter.rules.as_ref().map(|r| r.evaluate(&input)),
            filter.shadow(&input),
        )
    };
    let observer = &ctx.shared.observer;
    if let (Some(result), Some(rules)) = (shadow, &filter.shadow) {
        tracing::debug!(%peer, path, prefix = %rules.prefix, policy = ?result.policy, allowed = result.allowed, "RBAC shadow rules evaluated");
        observer.authz(
            Some(&ctx.hcm.stat_prefix),
            AuthzEvent::Shadow(&rules.prefix, result.allowed),
        );
        filter.record_shadow(&result, RBAC_NAMESPACE, metadata);
    }
    let Some(Verdict::Denied(policy)) = verdict else {
        return Ok(());
    };
    observer.rbac(Some(&ctx.hcm.stat_prefix), false);
    let policy = policy.as_deref().unwrap_or("none");
    tracing::debug!(%peer, path, policy, "request refused by RBAC");
    let resp = local::error(
        rec,
        StatusCode::FORBIDDEN,
        ResponseFlags::default(),
        "rbac_access_denied",
        "RBAC: access denied",
    );
    // Envoy's details name the policy, so the access log does.
    rec.details = Some(format!("rbac_access_denied_matched_policy[{policy}]").into());
    Err(Box::new(resp))
}

/// One external authorization filter: the check when it applies, and
/// what its answer does to the request.
async fn external(
    filter: &ExtAuthz,
    req: &mut Request<ProxyBody>,
    authority: &str,
    ctx: &HttpCtx,
    generation: &Generation,
    metadata: &mut Metadata,
    rec: &mut RequestRecord,
) -> Result<Vec<(HeaderName, HeaderValue)>, Box<Response<ProxyBody>>> {
    let observer = &ctx.shared.observer;
    let prefix = Some(ctx.hcm.stat_prefix.as_str());
    if !filter.applies(metadata) {
        observer.authz(prefix, AuthzEvent::ExtAuthzDisabled);
        return Ok(Vec::new());
    }
    let body = match filter.with_body {
        Some(settings) => match buffer(req, settings).await {
            Ok(b) => b,
            Err(resp) => {
                rec.details = Some("request_payload_too_large".into());
                return Err(resp);
            }
        },
        None => None,
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let scheme = if ctx.conn.tls { "https" } else { "http" };
    let grpc = matches!(filter.service, Service::Grpc(_));
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    let method_str = method.as_str();
    // The pseudo-headers Envoy's header map carries, then the rest.
    for (name, value) in [
        (":authority", authority),
        (":method", method_str),
        (":path", path.as_str()),
        (":scheme", scheme),
    ] {
        if grpc && filter.sends_header(name) {
            headers.push((name, value.as_bytes()));
        }
    }
    for (name, value) in req.headers() {
        // `Host` is `:authority` in Envoy's header map.
        if name != header::HOST && filter.sends_header(name.as_str()) {
            headers.push((name.as_str(), value.as_bytes()));
        }
    }
    // Envoy tells the service whether the body was cut.
    if let Some((_, partial)) = &body {
        headers.push((
            "x-envoy-auth-partial-body",
            if *partial { b"true" } else { b"false" },
        ));
    }
    let body_slice = body.as_ref().map(|(b, _)| &b[..]);
    let facts = RequestFacts {
        method: &method,
        path: &path,
        authority,
        scheme,
        version: req.version(),
        headers,
        body: body_slice,
        raw_body: filter.with_body.is_some_and(|s| s.pack_as_bytes),
    };
    let identity = ctx.shared.identity();
    let decision = match &filter.service {
        Service::Http(service) => {
            ext_authz::check_http(service, facts, generation, identity, &ctx.conn).await
        }
        Service::Grpc(target) => {
            let subject = Subject {
                conn: &ctx.conn,
                request: Some(facts),
                metadata: Some((metadata, &filter.metadata_context_namespaces)),
                include_tls_session: filter.include_tls_session,
            };
            ext_authz::check_grpc(target, subject, generation, identity).await
        }
    };
    match decision {
        Decision::Allowed(allowed) => {
            observer.authz(prefix, AuthzEvent::ExtAuthzOk);
            let h = req.headers_mut();
            for name in &allowed.remove {
                h.remove(name);
            }
            for (name, value) in allowed.set {
                h.insert(name, value);
            }
            for (name, value) in allowed.append {
                h.append(name, value);
            }
            for (name, value) in allowed.add {
                if !h.contains_key(&name) {
                    h.insert(name, value);
                }
            }
            if let Some(fields) = allowed.metadata {
                for (k, v) in fields {
                    metadata.insert(EXT_AUTHZ_NAMESPACE, &k, v);
                }
            }
            Ok(allowed.response)
        }
        Decision::Denied(denied) => {
            observer.authz(prefix, AuthzEvent::ExtAuthzDenied);
            tracing::debug!(peer = %ctx.conn.peer, path, status = %denied.status, "request refused by external authorization");
            rec.flags
                .insert(ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE);
            rec.details = Some("ext_authz_denied".into());
            let mut resp = Response::new(if denied.body.is_empty() {
                empty()
            } else {
                full(denied.body)
            });
            *resp.status_mut() = denied.status;
            for (name, value) in denied.headers {
                resp.headers_mut().append(name, value);
            }
            resp.extensions_mut().insert(local::LocalReply);
            Err(Box::new(resp))
        }
        Decision::Error(why) => {
            tracing::debug!(peer = %ctx.conn.peer, path, error = %why, "external authorization check failed");
            // Counted as an error either way, as Envoy counts it.
            observer.authz(prefix, AuthzEvent::ExtAuthzError);
            if filter.failure_mode_allow {
                observer.authz(prefix, AuthzEvent::ExtAuthzFailureModeAllowed);
                if filter.failure_mode_allow_header_add {
                    req.headers_mut().insert(
                        "x-envoy-auth-failure-mode-allowed",
                        HeaderValue::from_static("true"),
                    );
                }
                return Ok(Vec::new());
            }
            let resp = local::error(
                rec,
                filter.status_on_error,
                ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
                "ext_authz_error",
                "",
            );
            Err(Box::new(resp))
        }
    }
}

/// Reads the request body up to the limit for the check, leaving the
/// request with a body that replays what was read and then streams the
/// rest: the body sent (at most the limit) and whether it is partial. A
/// longer body is refused with 413 unless partial messages are allowed.
async fn buffer(
    req: &mut Request<ProxyBody>,
    settings: BodySettings,
) -> Result<Option<(Bytes, bool)>, Box<Response<ProxyBody>>> {
    let too_large = || {
        let mut resp = local::reply(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
        resp.extensions_mut().insert(local::LocalReply);
        Box::new(resp)
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > settings.max_bytes) && !settings.allow_partial {
        return Err(too_large());
    }
    if req.body().is_end_stream() {
        // Nothing to wait for (Envoy checks at the headers then).
        return Ok(None);
    }
    let mut body = std::mem::replace(req.body_mut(), empty());
    let mut read = Vec::new();
    let mut data = Vec::new();
    let mut ended = true;
    while data.len() < settings.max_bytes {
        match body.frame().await {
            None => break,
            Some(Err(_)) => break,
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    data.extend_from_slice(d);
                }
                read.push(frame);
            }
        }
        if data.len() >= settings.max_bytes {
            ended = body.is_end_stream() || declared == Some(data.len());
            break;
        }
    }
    let partial = !ended || data.len() > settings.max_bytes;
    if partial && !settings.allow_partial {
        return Err(too_large());
    }
    data.truncate(settings.max_bytes);
    let rest = (!body.is_end_stream()).then_some(body);
    *req.body_mut() = boxed(Prefixed::new(read, rest));
    Ok(Some((Bytes::from(data), partial)))
}
