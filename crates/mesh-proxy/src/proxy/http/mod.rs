//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 (prior
//! knowledge) on one connection, and runs each request through the
//! pipeline: request normalisation (`x-request-id`, `x-forwarded-*`) ->
//! virtual host and route match -> CORS -> fault injection -> the route's
//! action (direct response, redirect, or forwarding upstream) -> response
//! header changes. Every request ends with a [`RequestRecord`] handed to
//! the observer.

pub mod body;
mod forward;
mod local;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use crate::drain;
use crate::proxy::record::{RequestRecord, ResponseFlags};
use crate::proxy::{ConnInfo, Generation, Shared};
use crate::runtime::action::{Action, WeightedTarget};
use crate::runtime::convert::HeaderOps;
use crate::runtime::listener::{Codec, HttpManager, RouteSource};
use crate::runtime::matcher::RequestView;
use crate::runtime::route::{Route, RouteTable, TlsRequirement, VirtualHost, strip_port};
use body::{Counted, Finish, Observed, ProxyBody, boxed};

/// What a request's handling shares with its connection.
pub(crate) struct HttpCtx {
    pub conn: Arc<ConnInfo>,
    pub hcm: Arc<HttpManager>,
    pub shared: Arc<Shared>,
}

/// What outlives the response head: guards released when the response
/// body ends, and the deadline the body must finish by.
#[derive(Default)]
pub(crate) struct Outcome {
    pub deadline: Option<Instant>,
    pub guards: Vec<Box<dyn Send>>,
}

/// The route a request matched, with where it was found.
pub(crate) struct Matched<'a> {
    pub table: &'a RouteTable,
    pub vh: &'a VirtualHost,
    pub route: &'a Route,
    pub authority: &'a str,
}

/// Serves one downstream connection until it closes, or until a drain
/// asks it to finish (HTTP/1 closes after the current response, HTTP/2
/// sends GOAWAY).
pub(crate) async fn serve(
    stream: TcpStream,
    conn: Arc<ConnInfo>,
    hcm: Arc<HttpManager>,
    shared: Arc<Shared>,
    mut drain: drain::Watch,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match hcm.codec {
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
        Codec::Auto => builder,
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(
            hcm.request_headers_timeout
                .unwrap_or(Duration::from_secs(60)),
        );
    builder.http2().timer(TokioTimer::new());
    if let Some(kb) = hcm.max_request_headers_kb {
        builder.http1().max_buf_size((kb as usize * 1024).max(8192));
        builder
            .http2()
            .max_header_list_size(kb.saturating_mul(1024));
    }
    let ctx = Arc::new(HttpCtx { conn, hcm, shared });
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, ctx).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        () = drain.signaled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
}

async fn handle(req: Request<Incoming>, ctx: Arc<HttpCtx>) -> Response<ProxyBody> {
    let started = Instant::now();
    let generation = ctx.shared.current();
    let received = Arc::new(AtomicU64::new(0));
    let mut rec = record(&ctx, &req);
    let req = req.map(|b| boxed(Counted::new(boxed(b), received.clone())));
    let mut out = Outcome::default();
    let resp = process(req, &ctx, &generation, &mut rec, &mut out, started).await;
    rec.response_code = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let finish = Finish {
        record: rec,
        observer: ctx.shared.observer.clone(),
        received,
        started,
        guards: out.guards,
    };
    Response::from_parts(parts, boxed(Observed::new(body, out.deadline, finish)))
}

fn record(ctx: &HttpCtx, req: &Request<Incoming>) -> RequestRecord {
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    RequestRecord {
        start: SystemTime::now(),
        listener: ctx.conn.listener.name.clone(),
        direction: ctx.conn.listener.direction,
        filter_chain: ctx.conn.chain.clone(),
        downstream_remote: ctx.conn.peer,
        downstream_local: ctx.conn.destination,
        protocol: req.version(),
        method: req.method().clone(),
        authority: authority_of(req).unwrap_or_default(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string()),
        request_id: None,
        user_agent: header(header::USER_AGENT),
        virtual_host: None,
        route_name: None,
        cluster: None,
        upstream_host: None,
        response_code: 0,
        flags: ResponseFlags::default(),
        bytes_received: 0,
        bytes_sent: 0,
        duration: Duration::ZERO,
        upstream_service_time: None,
        attempts: 0,
        details: None,
    }
}

/// `:authority`, or `Host`.
fn authority_of<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .filter(|a| !a.is_empty())
}

async fn process(
    mut req: Request<ProxyBody>,
    ctx: &HttpCtx,
    generation: &Generation,
    rec: &mut RequestRecord,
    out: &mut Outcome,
    started: Instant,
) -> Response<ProxyBody> {
    let Some(mut authority) = authority_of(&req) else {
        return local::error(
            rec,
            StatusCode::BAD_REQUEST,
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "missing_host_header",
            "",
        );
    };
    let port = ctx.conn.destination.port().to_string();
    if ctx.hcm.strip_any_host_port
        || (ctx.hcm.strip_matching_host_port
            && authority.rsplit_once(':').is_some_and(|(_, p)| p == port))
    {
        authority = strip_port(&authority).to_string();
    }
    normalise(&mut req, ctx, rec);
    let table = match &ctx.hcm.routes {
        RouteSource::Inline(t) => t.clone(),
        RouteSource::Rds(name) => match generation.runtime.route_table(name) {
            Some(t) => t.clone(),
            None => {
                return local::error(
                    rec,
                    StatusCode::NOT_FOUND,
                    ResponseFlags::NO_ROUTE_FOUND,
                    "route_not_found",
                    "",
                );
            }
        },
    };
    for h in &table.internal_only_headers {
        req.headers_mut().remove(h);
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let Some(vh) = table.virtual_host(&authority) else {
        return local::error(
            rec,
            StatusCode::NOT_FOUND,
            ResponseFlags::NO_ROUTE_FOUND,
            "route_not_found",
            "",
        );
    };
    rec.virtual_host = Some(vh.name.clone());
    let view = RequestView {
        method: req.method(),
        scheme: "http",
        authority: &authority,
        path: &path,
        headers: req.headers(),
    };
    let Some(route) = vh.route(&view) else {
        return local::error(
            rec,
            StatusCode::NOT_FOUND,
            ResponseFlags::NO_ROUTE_FOUND,
            "route_not_found",
            "",
        );
    };
    rec.route_name = Some(route.name.clone());
    let matched = Matched {
        table: &table,
        vh,
        route,
        authority: &authority,
    };
    let tls_required = match vh.require_tls {
        TlsRequirement::None => false,
        TlsRequirement::All => true,
        TlsRequirement::ExternalOnly => ctx.hcm.use_remote_address,
    };
    if tls_required && !ctx.conn.tls {
        return local::to_https(&authority, &path);
    }

    let cors = if ctx.hcm.cors {
        route
            .filters
            .cors
            .as_ref()
            .or(vh.filters.cors.as_ref())
            .or(table.filters.cors.as_ref())
            .filter(|c| c.enabled.sample())
    } else {
        None
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let mut cors_allowed = None;
    if let (Some(c), Some(origin)) = (cors, origin.as_deref()) {
        let preflight = req.method() == http::Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            if c.allows(origin) {
                return local::preflight(c, origin);
            }
            if !c.forward_not_matching_preflights {
                return local::reply(StatusCode::OK, "");
            }
        } else if c.allows(origin) {
            cors_allowed = Some((c.clone(), origin.to_string()));
        }
    }

    let mut weighted: Option<&WeightedTarget> = None;
    let mut resp = match &route.action {
        Action::Direct(d) => local::direct(d),
        Action::Redirect(r) => local::redirect(r, "http", &authority, &path, route),
        Action::Forward(f) => {
            let fault = ctx.hcm.fault.as_ref().and(
                route
                    .filters
                    .fault
                    .as_ref()
                    .or(vh.filters.fault.as_ref())
                    .or(table.filters.fault.as_ref())
                    .or(ctx.hcm.fault.as_ref()),
            );
            if let Some(fault) = fault
                && fault.headers.iter().all(|h| h.matches(&view))
            {
                if let Some((delay, fraction)) = fault.delay
                    && fraction.sample()
                {
                    rec.flags.insert(ResponseFlags::DELAY_INJECTED);
                    tokio::time::sleep(delay).await;
                }
                if let Some((abort, fraction)) = fault.abort
                    && fraction.sample()
                {
                    rec.flags.insert(ResponseFlags::FAULT_INJECTED);
                    return local::abort(abort);
                }
            }
            let (resp, w) =
                forward::forward(req, f, &matched, ctx, generation, rec, out, started).await;
            weighted = w;
            resp
        }
    };
    if resp.extensions().get::<local::LocalReply>().is_none() {
        response_headers(resp.headers_mut(), weighted, &matched);
        if let Some((c, origin)) = cors_allowed {
            local::cors_headers(&c, &origin, resp.headers_mut());
        }
    }
    if ctx.hcm.always_set_request_id_in_response
        && let Some(id) = &rec.request_id
        && let Ok(v) = HeaderValue::from_str(id)
    {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// `x-forwarded-for`, `x-forwarded-proto` and `x-request-id`, as Envoy
/// sets them.
fn normalise(req: &mut Request<ProxyBody>, ctx: &HttpCtx, rec: &mut RequestRecord) {
    let edge = ctx.hcm.use_remote_address;
    let headers = req.headers_mut();
    if edge && !ctx.hcm.skip_xff_append {
        let peer = ctx.conn.peer.ip().to_canonical().to_string();
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.is_empty() => format!("{existing},{peer}"),
            _ => peer,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("x-forwarded-for", v);
        }
    }
    let scheme = if ctx.conn.tls { "https" } else { "http" };
    if edge || !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    }
    if ctx.hcm.generate_request_id {
        let keep =
            headers.contains_key("x-request-id") && (!edge || ctx.hcm.preserve_external_request_id);
        if !keep && let Ok(v) = HeaderValue::from_str(&request_id()) {
            headers.insert("x-request-id", v);
        }
    }
    rec.request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
}

/// A random version-4 UUID.
fn request_id() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// The header levels, most specific first, as Envoy applies them (later
/// levels override earlier ones unless the most specific wins).
fn levels<'a>(
    weighted: Option<&'a WeightedTarget>,
    m: &'a Matched<'a>,
    pick: impl Fn(&'a WeightedTarget) -> &'a HeaderOps,
    route: impl Fn(&'a Route) -> &'a HeaderOps,
    vh: impl Fn(&'a VirtualHost) -> &'a HeaderOps,
    table: impl Fn(&'a RouteTable) -> &'a HeaderOps,
) -> Vec<&'a HeaderOps> {
    let mut v: Vec<&HeaderOps> = weighted.map(pick).into_iter().collect();
    v.extend([route(m.route), vh(m.vh), table(m.table)]);
    if m.table.most_specific_header_mutations_wins {
        v.reverse();
    }
    v
}

/// Applies request header changes of every level.
pub(crate) fn request_headers(
    headers: &mut http::HeaderMap,
    weighted: Option<&WeightedTarget>,
    m: &Matched<'_>,
) {
    for ops in levels(
        weighted,
        m,
        |w| &w.request_headers,
        |r| &r.request_headers,
        |v| &v.request_headers,
        |t| &t.request_headers,
    ) {
        ops.apply(headers);
    }
}

fn response_headers(
    headers: &mut http::HeaderMap,
    weighted: Option<&WeightedTarget>,
    m: &Matched<'_>,
) {
    for ops in levels(
        weighted,
        m,
        |w| &w.response_headers,
        |r| &r.response_headers,
        |v| &v.response_headers,
        |t| &t.response_headers,
    ) {
        ops.apply(headers);
    }
}

/// Whether a downstream request asks for an HTTP/1.1 upgrade (WebSocket).
pub(crate) fn is_upgrade(parts: &http::request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(request_id(), id);
    }
}
