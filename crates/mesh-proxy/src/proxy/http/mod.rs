//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 (prior
//! knowledge) on one connection, and runs each request through the
//! pipeline: request normalisation (`x-request-id`, `x-forwarded-*`) ->
//! JWT authentication -> RBAC (reading what JWT verified) ->
//! virtual host and route match -> CORS -> fault injection -> the route's
//! action (direct response, redirect, or forwarding upstream) -> response
//! header changes. Every request ends with a [`RequestRecord`] handed to
//! the observer.
//!
//! Bad input is refused at the connection: a malformed HTTP/1 request
//! gets 400, request headers over `max_request_headers_kb` (Envoy's
//! default 60 KiB) get 431, and a client that does not finish its request
//! headers within `request_headers_timeout` of their first byte is
//! disconnected (so is one that stalls inside the HTTP/2 preface). Each of
//! these stays on its own connection; nothing in it can panic the proxy.
//! Connection and stream idle timeouts are kept by [`idle`].

mod authz;
pub mod body;
mod forward;
pub(crate) use forward::{upstream_request, wire_for};
mod idle;
mod local;
mod xfcc;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use super::Stream;

use crate::drain;
use crate::proxy::record::{RequestRecord, ResponseFlags};
use crate::proxy::{ConnInfo, Generation, Shared};
use crate::runtime::action::{Action, WeightedTarget};
use crate::runtime::convert::HeaderOps;
use crate::runtime::jwt::JwtAuthn;
use crate::runtime::listener::{Codec, Direction, HttpManager, NetworkFilter, RouteSource};
use crate::runtime::matcher::RequestView;
use crate::runtime::metadata::Metadata;
use crate::runtime::route::{Route, RouteTable, TlsRequirement, VirtualHost, strip_port};
use body::{Counted, Finish, Observed, ProxyBody, boxed};

/// Envoy's default `max_request_headers_kb`.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
/// Envoy's largest `max_request_headers_kb`.
pub const MAX_REQUEST_HEADERS_KB: u32 = 8192;
/// The request headers timeout of connection managers that set none.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait between peeks while a client is inside the HTTP/2
/// preface.
const PEEK_INTERVAL: Duration = Duration::from_millis(5);
/// How long an idle connection's close may take (HTTP/2 GOAWAY).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Process-wide defaults, set once from the command line. They live here
// rather than in `proxy::Options` so connection managers read them
// without a lock and embedders that build `Options` are unaffected.
static DEFAULT_HEADERS_TIMEOUT_MS: AtomicU64 = AtomicU64::new(10_000);
static DEFAULT_HEADERS_KB: AtomicU32 = AtomicU32::new(DEFAULT_MAX_REQUEST_HEADERS_KB);

/// Limits for HTTP connection managers that do not set their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Time a client has to send a request's headers, from its first byte
    /// (HCM request_headers_timeout when the listener sets none). An idle
    /// keep-alive connection is kept until the HCM's idle_timeout.
    #[arg(long = "request-headers-timeout", default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub request_headers_timeout: Duration,
    /// Largest request headers in KiB (HCM max_request_headers_kb when the
    /// listener sets none); larger ones get 431.
    #[arg(long = "max-request-headers-kb", default_value_t = DEFAULT_MAX_REQUEST_HEADERS_KB,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_REQUEST_HEADERS_KB)))]
    pub max_request_headers_kb: u32,
}

/// What a request's handling shares with its connection.
pub(crate) struct HttpCtx {
    pub conn: Arc<ConnInfo>,
    pub hcm: Arc<HttpManager>,
    pub shared: Arc<Shared>,
    /// The connection's timers.
    pub activity: Arc<idle::Activity>,
}

/// What outlives the response head: guards released when the response
/// body ends, and the deadline the body must finish by.
#[derive(Default)]
pub(crate) struct Outcome {
    pub deadline: Option<Instant>,
    pub guards: Vec<Box<dyn Send>>,
    /// Added to the response (an external authorizer's
    /// `allowed_client_headers_on_success`).
    pub response_headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The request's span, when it is sampled.
    pub span: Option<Box<crate::telemetry::trace::HopSpan>>,
}

/// The route a request matched, with where it was found.
pub(crate) struct Matched<'a> {
    pub table: &'a RouteTable,
    pub vh: &'a VirtualHost,
    pub route: &'a Route,
    pub authority: &'a str,
}

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_headers_timeout: DEFAULT_REQUEST_HEADERS_TIMEOUT,
            max_request_headers_kb: DEFAULT_MAX_REQUEST_HEADERS_KB,
        }
    }
}

impl Limits {
    /// The defaults in force.
    pub fn current() -> Self {
        Self {
            request_headers_timeout: Duration::from_millis(
                DEFAULT_HEADERS_TIMEOUT_MS.load(Ordering::Relaxed),
            ),
            max_request_headers_kb: DEFAULT_HEADERS_KB.load(Ordering::Relaxed),
        }
    }

    /// Makes these the defaults of connection managers that set none.
    pub fn apply(&self) {
        let millis = u64::try_from(self.request_headers_timeout.as_millis()).unwrap_or(u64::MAX);
        DEFAULT_HEADERS_TIMEOUT_MS.store(millis.max(1), Ordering::Relaxed);
        DEFAULT_HEADERS_KB.store(
            self.max_request_headers_kb.clamp(1, MAX_REQUEST_HEADERS_KB),
            Ordering::Relaxed,
        );
    }
}

/// Serves one downstream connection until it closes, until it is idle
/// for the connection manager's idle timeout, or until a drain asks it to
/// finish (HTTP/1 closes after the current response, HTTP/2 sends GOAWAY).
pub(crate) async fn serve(
    stream: Stream,
    conn: Arc<ConnInfo>,
    hcm: Arc<HttpManager>,
    shared: Arc<Shared>,
    mut drain: drain::Watch,
) {
    let defaults = Limits::current();
    let headers_timeout = hcm
        .request_headers_timeout
        .unwrap_or(defaults.request_headers_timeout);
    let headers_kb = hcm
        .max_request_headers_kb
        .unwrap_or(defaults.max_request_headers_kb)
        .clamp(1, MAX_REQUEST_HEADERS_KB);
    let first = match &stream {
        Stream::Tcp(tcp) => tokio::select! {
            f = first_bytes(tcp, hcm.idle_timeout, headers_timeout) => f,
            () = drain.signaled() => return,
        },
        // The handshake is done, so the client is there; ALPN says which
        // protocol it speaks (hyper still detects a preface without it).
        _ => match conn.session.as_ref().and_then(|s| s.alpn.as_deref()) {
            Some("h2") => FirstBytes::Http2,
            _ => FirstBytes::Other,
        },
    };
    let h2 = match first {
        FirstBytes::Http2 => true,
        FirstBytes::Other => false,
        FirstBytes::Idle => {
            tracing::debug!(timeout = ?hcm.idle_timeout, "idle connection; closing");
            return;
        }
        FirstBytes::Slow => {
            tracing::debug!(timeout = ?headers_timeout, "no request from the client in time; closing");
            return;
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match hcm.codec {
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
        Codec::Auto => builder,
    };
    let headers_bytes = headers_kb as usize * 1024;
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own timer would also run while the connection is idle
        // between requests; `idle::expired` starts it at a request's first
        // byte instead.
        .header_read_timeout(None)
        // hyper answers 431 once the request head outgrows its buffer
        // (which must be at least 8 KiB).
        .max_buf_size(headers_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(headers_bytes).unwrap_or(u32::MAX));
    let observer = shared.observer.clone();
    let activity = idle::Activity::new();
    let ctx = Arc::new(HttpCtx {
        conn: conn.clone(),
        hcm: hcm.clone(),
        shared,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, ctx).await) }
    });
    let io = idle::Tracked::new(stream, activity.clone());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    // HTTP/2 frames arrive between requests (PING, SETTINGS) and requests
    // start with a whole HEADERS frame, so only HTTP/1 has a head to time.
    let head_timeout = (!h2).then_some(headers_timeout);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        () = drain.signaled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        expired = idle::expired(&activity, hcm.idle_timeout, head_timeout) => {
            match expired {
                idle::Expired::Headers => {
                    tracing::debug!(timeout = ?headers_timeout, "request headers not received in time; closing");
                }
                idle::Expired::Idle => {
                    tracing::debug!(timeout = ?hcm.idle_timeout, "idle connection; closing");
                    // Nothing is in flight: HTTP/1 closes at once, HTTP/2
                    // after its GOAWAY.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, connection.as_mut()).await;
                }
            }
            return;
        }
    };
    if let Err(e) = result {
        match codec_error(e.as_ref()) {
            Some((status, details)) => {
                tracing::debug!(error = %e, status = status.as_u16(), "refused a bad request");
                let mut rec = base_record(&conn);
                rec.response_code = status.as_u16();
                rec.flags.insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
                rec.details = Some(details.into());
                observer.request(&rec);
            }
            None => tracing::debug!(error = %e, "downstream connection ended with an error"),
        }
    }
}

/// What the first bytes of a connection said.
enum FirstBytes {
    /// The HTTP/2 connection preface.
    Http2,
    /// Anything else (HTTP/1, or garbage hyper will refuse).
    Other,
    /// Nothing within the idle timeout (or the client closed).
    Idle,
    /// A first byte, then a stall inside the HTTP/2 preface.
    Slow,
}

/// Waits until the client has sent enough to tell its protocol: its first
/// byte within `idle` (`None`: no limit), the rest of an HTTP/2 preface
/// within `headers` of that, where hyper would wait forever. Only peeks:
/// the bytes stay for hyper.
async fn first_bytes(stream: &TcpStream, idle: Option<Duration>, headers: Duration) -> FirstBytes {
    let mut buf = [0u8; H2_PREFACE.len()];
    let first = stream.peek(&mut buf[..1]);
    let first = match idle {
        Some(idle) => tokio::time::timeout(idle, first).await.ok(),
        None => Some(first.await),
    };
    match first {
        None | Some(Ok(0) | Err(_)) => return FirstBytes::Idle,
        Some(Ok(_)) => {}
    }
    let deadline = tokio::time::Instant::now() + headers;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return FirstBytes::Slow,
        };
        if n == 0 {
            return FirstBytes::Idle;
        }
        if n == H2_PREFACE.len() {
            return FirstBytes::Http2;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return FirstBytes::Other;
        }
        if tokio::time::Instant::now() + PEEK_INTERVAL >= deadline {
            return FirstBytes::Slow;
        }
        tokio::time::sleep(PEEK_INTERVAL).await;
    }
}

/// The status hyper answered a request it could not parse with, and
/// Envoy's response code details for it; `None` for other errors.
fn codec_error(e: &(dyn std::error::Error + 'static)) -> Option<(StatusCode, &'static str)> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_parse_too_large() {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "http1.headers_too_large",
        ));
    }
    if !e.is_parse() {
        return None;
    }
    // hyper's parse kinds are not public; these two it answers
    // differently (414) or not at all (an HTTP/2 preface on HTTP/1 only).
    let kind = format!("{e:?}");
    if kind.contains("UriTooLong") {
        Some((StatusCode::URI_TOO_LONG, "http1.codec_error"))
    } else if kind.contains("VersionH2") {
        None
    } else {
        Some((StatusCode::BAD_REQUEST, "http1.codec_error"))
    }
}

/// The connection manager's JWT filter on this request: the metadata of
/// the tokens it verified (the request's headers changed as the providers
/// say), or Envoy's local reply (401, or 403 for an audience not allowed).
pub(super) fn authenticate<B>(
    jwt: &JwtAuthn,
    req: &mut Request<B>,
    authority: &str,
    ctx: &HttpCtx,
    rec: &mut RequestRecord,
) -> Result<Metadata, Box<Response<ProxyBody>>> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let view = RequestView {
        method: req.method(),
        scheme: if ctx.conn.tls { "https" } else { "http" },
        authority,
        path,
        headers: req.headers(),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let outcome = jwt.authenticate(&view, now);
    ctx.shared.observer.authz(
        Some(&ctx.hcm.stat_prefix),
        crate::proxy::record::AuthzEvent::Jwt(outcome.is_ok()),
    );
    match outcome {
        Ok(passed) => {
            passed.apply(req.headers_mut());
            Ok(passed.metadata)
        }
        Err(refused) => {
            tracing::debug!(peer = %ctx.conn.peer, path, reason = %refused.error, "request refused by JWT authentication");
            let body = if refused.strip_body {
                String::new()
            } else {
                refused.error.to_string()
            };
            let mut resp = local::error(
                rec,
                refused.error.status(),
                ResponseFlags::default(),
                "jwt_authn_access_denied",
                &body,
            );
            // Envoy's details carry the reason, spaces as underscores.
            rec.details = Some(
                format!(
                    "jwt_authn_access_denied{{{}}}",
                    refused.error.to_string().replace(' ', "_")
                )
                .into(),
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, refused.www_authenticate);
            Err(Box::new(resp))
        }
    }
}

/// The request's context with the connection manager its filter chain has
/// in the newest configuration: a change of routes or policies (an
/// AuthorizationPolicy above all) applies to the next request on an open
/// keep-alive connection, not only to new connections. A chain that is
/// gone, unnamed or no longer HTTP keeps the connection's own.
fn current_ctx(ctx: Arc<HttpCtx>, generation: &Generation) -> Arc<HttpCtx> {
    if ctx.conn.chain.is_empty() {
        return ctx;
    }
    let newest = generation
        .runtime
        .listeners
        .get(&ctx.conn.listener.name)
        .and_then(|l| {
            l.filter_chains
                .iter()
                .chain(l.default_chain.as_ref())
                .find(|c| c.name == ctx.conn.chain)
        })
        .and_then(|c| match &c.filter {
            NetworkFilter::Http(hcm) => Some(hcm),
            NetworkFilter::Tcp(_) => None,
        });
    match newest {
        Some(hcm) if !Arc::ptr_eq(hcm, &ctx.hcm) => Arc::new(HttpCtx {
            conn: ctx.conn.clone(),
            hcm: hcm.clone(),
            shared: ctx.shared.clone(),
            activity: ctx.activity.clone(),
        }),
        _ => ctx,
    }
}

async fn handle(req: Request<Incoming>, ctx: Arc<HttpCtx>) -> Response<ProxyBody> {
    let started = Instant::now();
    let generation = ctx.shared.current();
    let ctx = current_ctx(ctx, &generation);
    let received = Arc::new(AtomicU64::new(0));
    let mut rec = record(&ctx, &req);
    let req = req.map(|b| boxed(Counted::new(boxed(b), received.clone())));
    let mut out = Outcome::default();
    out.guards
        .push(Box::new(idle::InFlight::new(&ctx.activity)));
    let stream_idle = ctx.hcm.stream_idle_timeout;
    let processing = process(req, &ctx, &generation, &mut rec, &mut out, started);
    let resp = match idle::stream_idle(processing, stream_idle, &received).await {
        Some(resp) => resp,
        None => local::error(
            &mut rec,
            StatusCode::REQUEST_TIMEOUT,
            ResponseFlags::STREAM_IDLE_TIMEOUT,
            "stream_idle_timeout",
            "stream timeout",
        ),
    };
    let mut resp = resp;
    for (name, value) in std::mem::take(&mut out.response_headers) {
        resp.headers_mut().append(name, value);
    }
    // The answer to a mesh peer that said who it is says who we are.
    if rec.peer.is_some()
        && rec.direction == Direction::Inbound
        && let Some(local) = &ctx.shared.peer_metadata
    {
        local.insert(resp.headers_mut());
    }
    rec.response_code = resp.status().as_u16();
    // A trailers-only gRPC response carries its status in the headers;
    // otherwise the trailers will (read by the observed body).
    rec.grpc_status = grpc_status(resp.headers());
    let (parts, body) = resp.into_parts();
    let finish = Finish {
        record: rec,
        observer: ctx.shared.observer.clone(),
        access_logs: ctx.hcm.access_logs.clone(),
        received,
        started,
        guards: out.guards,
        span: out.span,
    };
    Response::from_parts(
        parts,
        boxed(Observed::new(body, out.deadline, stream_idle, finish)),
    )
}

fn record(ctx: &HttpCtx, req: &Request<Incoming>) -> RequestRecord {
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    RequestRecord {
        protocol: req.version(),
        method: req.method().clone(),
        authority: authority_of(req).unwrap_or_default(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string()),
        user_agent: header(header::USER_AGENT),
        grpc,
        stats: ctx.hcm.stats.clone(),
        ..base_record(&ctx.conn)
    }
}

/// A record of a request on `conn` before anything of the request is
/// known (Envoy prints `-` for the method of a request it could not
/// parse).
fn base_record(conn: &ConnInfo) -> RequestRecord {
    RequestRecord {
        start: SystemTime::now(),
        listener: conn.listener.name.clone(),
        direction: conn.listener.direction,
        filter_chain: conn.chain.clone(),
        downstream_remote: conn.peer,
        downstream_local: conn.destination,
        protocol: Version::HTTP_11,
        method: Method::from_bytes(b"-").unwrap_or_default(),
        authority: String::new(),
        path: String::new(),
        server_name: conn.server_name.clone(),
        forwarded_for: None,
        grpc: false,
        grpc_status: None,
        request_id: None,
        user_agent: None,
        virtual_host: None,
        route_name: None,
        cluster: None,
        upstream_host: None,
        upstream_local: None,
        upstream_transport_failure: None,
        response_code: 0,
        flags: ResponseFlags::default(),
        bytes_received: 0,
        bytes_sent: 0,
        duration: Duration::ZERO,
        upstream_service_time: None,
        attempts: 0,
        breakers: Default::default(),
        failures: Default::default(),
        details: None,
        downstream_security: conn.security(),
        downstream_peer_principal: conn.peer_principal(),
        upstream_peer_principal: None,
        local_principal: conn.local_principal(),
        peer: None,
        trace_id: None,
        stats: None,
    }
}

/// `grpc-status` as a number.
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
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
    if let Some(config) = &ctx.hcm.tracing {
        let xff = rec.forwarded_for.as_deref();
        let info = crate::telemetry::trace::RequestInfo {
            direction: ctx.conn.listener.direction,
            internal: ctx.hcm.is_internal(ctx.conn.peer.ip(), xff),
            runtime: &generation.runtime,
        };
        out.span = crate::telemetry::trace::start(config, req.headers_mut(), info).map(Box::new);
        rec.trace_id = out.span.as_ref().map(|s| s.trace_id());
    }
    let mut metadata = Metadata::default();
    if !ctx.hcm.authz.is_empty() {
        match authz::authorize(&mut req, &authority, ctx, generation, &mut metadata, rec).await {
            Ok(added) => out.response_headers = added,
            Err(refused) => return *refused,
        }
    }
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
    // As Envoy: a virtual host requiring TLS redirects plaintext requests
    // before any route is looked at (it may have none).
    let tls_required = match vh.require_tls {
        TlsRequirement::None => false,
        TlsRequirement::All => true,
        TlsRequirement::ExternalOnly => ctx.hcm.use_remote_address,
    };
    if tls_required && !ctx.conn.tls {
        return local::to_https(&authority, &path);
    }
    let Some(route) = vh.route(&view, Some(&metadata)) else {
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
        let preflight = req.method() == Method::OPTIONS
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
        Action::Direct(d) => {
            rec.details = Some("direct_response".into());
            local::direct(d)
        }
        Action::Redirect(r) => {
            rec.details = Some("direct_response".into());
            local::redirect(r, "http", &authority, &path, route)
        }
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
                    rec.details = Some("fault_filter_abort".into());
                    // As Envoy, the route's cluster is known once the route
                    // is (weighted clusters are picked by the router).
                    if let crate::runtime::action::Target::Cluster(c) = &f.target {
                        rec.cluster = Some(c.clone());
                    }
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

/// `x-forwarded-for`, `x-forwarded-proto`, `x-forwarded-client-cert` and
/// `x-request-id`, as Envoy sets them.
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
    xfcc::apply(headers, &ctx.hcm.xfcc, ctx.conn.session.as_ref());
    // Istio's metadata exchange: a mesh peer (over mutual TLS) says who it
    // is; the headers never reach the app, nor go on from here.
    if ctx.conn.listener.direction == Direction::Inbound
        && rec.downstream_security == crate::proxy::record::Security::MutualTls
    {
        rec.peer = crate::telemetry::peer::take(headers);
    } else {
        crate::telemetry::peer::strip(headers);
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
    rec.forwarded_for = headers
        .get("x-forwarded-for")
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
