//! Forwarding a request upstream: cluster choice, header changes and
//! rewrites, consistent-hash input, circuit breaking, mirrors (spawned
//! and forgotten), then attempts with retries, per-try and route
//! timeouts, and WebSocket upgrades spliced once the upstream agrees.
//!
//! A caller's `x-envoy-*` controls (`x-envoy-max-retries`,
//! `x-envoy-retry-on`, `x-envoy-upstream-rq-timeout-ms`,
//! `x-envoy-upstream-rq-per-try-timeout-ms`) are honoured only on an
//! internal request (see `HttpManager::is_internal`), and removed before
//! the request goes upstream either way, as Envoy does. A retry needs a
//! retry slot of the cluster (`max_retries`, or the retry budget), held
//! from the decision until that retry's outcome is known; without one the
//! failed attempt's response goes to the client (flag UO).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use mesh_ca::tls::MeshTls;

use super::body::{ProxyBody, ReplayBody, boxed, empty, full};
use super::{HttpCtx, Matched, Outcome, is_upgrade, local, request_headers};
use crate::proxy::pool::ConnectionOverflowed;
use crate::proxy::pool::{UpstreamError, Wire};
use crate::proxy::record::{RequestRecord, ResponseFlags};
use crate::proxy::{ConnInfo, Generation, outlier, pick_endpoint, upstream_tls};
use crate::runtime::Cluster;
use crate::runtime::action::{Forward, HostRewrite, RetryOn, RetryPolicy, Target, WeightedTarget};
use crate::runtime::cluster::UpstreamProtocol;
use crate::runtime::convert::HostAddress;
use crate::runtime::lb::hash::{self, HashContext};
use crate::runtime::listener::Direction;
use crate::runtime::matcher::RequestView;

/// `x-envoy-attempt-count`.
const ATTEMPT_COUNT: &str = "x-envoy-attempt-count";

/// The `x-envoy-*` request headers that steer the router. An internal
/// caller's are read; everyone's are removed.
const CONTROL_HEADERS: [&str; 14] = [
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
];

/// What an internal caller asked for with `x-envoy-*` headers.
#[derive(Debug, Default, PartialEq)]
struct Controls {
    max_retries: Option<u32>,
    retry_on: Option<RetryOn>,
    /// `Some(None)`: no timeout (`0`).
    timeout: Option<Option<Duration>>,
    per_try_timeout: Option<Duration>,
}

/// How an attempt failed.
enum Failure {
    Upstream(UpstreamError),
    PerTryTimeout,
    GlobalTimeout,
}

/// Forwards `req` by `f`; returns the response and the weighted cluster
/// chosen (whose response header changes apply).
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward<'a>(
    req: Request<ProxyBody>,
    f: &'a Forward,
    m: &Matched<'a>,
    ctx: &HttpCtx,
    generation: &Generation,
    rec: &mut RequestRecord,
    out: &mut Outcome,
    started: Instant,
) -> (Response<ProxyBody>, Option<&'a WeightedTarget>) {
    let (cluster_name, weighted) = match &f.target {
        Target::Cluster(c) => (c.clone(), None),
        Target::Header(h) => match req.headers().get(h).and_then(|v| v.to_str().ok()) {
            Some(c) => (c.to_string(), None),
            None => {
                return (
                    local::error(
                        rec,
                        f.cluster_not_found,
                        ResponseFlags::NO_CLUSTER_FOUND,
                        "cluster_not_found",
                        "",
                    ),
                    None,
                );
            }
        },
        Target::Weighted(w) => match w.pick() {
            Some(t) => (t.name.clone(), Some(t)),
            None => {
                return (
                    local::error(
                        rec,
                        f.cluster_not_found,
                        ResponseFlags::NO_CLUSTER_FOUND,
                        "cluster_not_found",
                        "",
                    ),
                    None,
                );
            }
        },
    };
    rec.cluster = Some(cluster_name.clone());
    let (Some(cluster), Some(pool)) = (
        generation.runtime.cluster(&cluster_name),
        generation.upstreams.get(&cluster_name),
    ) else {
        return (
            local::error(
                rec,
                f.cluster_not_found,
                ResponseFlags::NO_CLUSTER_FOUND,
                "cluster_not_found",
                "",
            ),
            weighted,
        );
    };

    let (mut parts, body) = req.into_parts();
    let upgrade = is_upgrade(&parts);
    if upgrade && !f.websocket.unwrap_or(ctx.hcm.websocket) {
        return (
            local::error(
                rec,
                StatusCode::FORBIDDEN,
                ResponseFlags::default(),
                "upgrade_failed",
                "",
            ),
            weighted,
        );
    }
    request_headers(&mut parts.headers, weighted, m);
    rewrite_path(&mut parts, f, m);
    let mut authority = m.authority.to_string();
    let literal = weighted.and_then(|w| w.host_rewrite.clone());
    match (&literal, &f.host_rewrite) {
        (Some(v), _) | (None, HostRewrite::Literal(v)) => {
            authority = v.to_str().unwrap_or(m.authority).to_string()
        }
        (None, HostRewrite::Header(h)) => {
            if let Some(v) = parts.headers.get(h).and_then(|v| v.to_str().ok()) {
                authority = v.to_string();
            }
        }
        (None, HostRewrite::Auto | HostRewrite::Keep) => {}
    }
    let auto_host = literal.is_none() && matches!(f.host_rewrite, HostRewrite::Auto);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let hashed = hash::evaluate(
        &f.hash_policies,
        &RequestView {
            method: &parts.method,
            scheme: "http",
            authority: &authority,
            path: &path,
            headers: &parts.headers,
        },
        &HashContext {
            source: ctx.conn.peer,
            destination: ctx.conn.destination,
        },
    );
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let downstream_version = parts.version;
    let wire = wire_for(cluster, downstream_version, upgrade);

    let internal = ctx.hcm.is_internal(
        ctx.conn.peer.ip(),
        parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok()),
    );
    let controls = Controls::take(&mut parts.headers, internal);
    let Some(slot) = pool.request_slot() else {
        return (local::overflow(rec), weighted);
    };
    out.guards.push(Box::new(slot));
    let timeout = match (grpc_timeout(&parts.headers, f), controls.timeout) {
        (Some(t), _) => Some(t),
        (None, Some(t)) => t,
        (None, None) => f.timeout,
    };
    let deadline = timeout.map(|t| started + t);
    let limit = ctx.conn.listener.buffer_limit;
    let buffer = m
        .route
        .buffer_limit
        .or(m.vh.buffer_limit)
        .map_or(usize::try_from(limit).unwrap_or(usize::MAX), |b| {
            b.bytes(limit)
        });
    let replay = (!body.is_end_stream()).then(|| ReplayBody::new(body, buffer));

    for mirror in &f.mirrors {
        if mirror.fraction.sample() {
            spawn_mirror(
                &parts,
                &authority,
                mirror.shadow_suffix,
                &mirror.cluster,
                replay.as_ref(),
                generation,
                &ctx.conn,
                ctx.shared.identity(),
                timeout,
            );
        }
    }
    let downstream_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };

    let policy = controls.policy(f.retry.as_ref());
    let policy = policy.as_deref();
    // A request `retriable_request_headers` leaves out is never retried;
    // the policy's per-try timeout still bounds its one attempt.
    let retriable_request = policy.is_some_and(|p| {
        p.retriable_request_headers.is_empty()
            || p.retriable_request_headers.iter().any(|h| {
                h.matches(&RequestView {
                    method: &parts.method,
                    scheme: "http",
                    authority: &authority,
                    path: &path,
                    headers: &parts.headers,
                })
            })
    });
    let retries = match policy {
        Some(p) if retriable_request => p.num_retries,
        _ => 0,
    };
    let per_try_timeout = policy.and_then(|p| controls.per_try_timeout.or(p.per_try_timeout));
    let mut tried: Vec<HostAddress> = Vec::new();
    let mut attempt = 0u32;
    let mut retry_slot = None;
    let upstream_start = Instant::now();
    loop {
        let avoid = policy.is_some_and(|p| p.avoid_previous_hosts);
        let attempts = policy.map_or(1, |p| p.host_selection_attempts);
        let Some((address, endpoint)) = pick_endpoint(
            generation,
            cluster,
            &ctx.conn,
            hashed.hash,
            Some(&parts.headers),
            &tried,
            avoid,
            attempts,
        ) else {
            return (
                local::error(
                    rec,
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlags::NO_HEALTHY_UPSTREAM,
                    "no_healthy_upstream",
                    "no healthy upstream",
                ),
                weighted,
            );
        };
        rec.upstream_host = Some(address.to_string());
        rec.attempts = attempt + 1;
        tried.push(address.clone());
        let active = endpoint.as_ref().map(|e| e.track());
        let body = match &replay {
            None => empty(),
            Some(r) => match r.replay() {
                Some(b) => boxed(b),
                None => empty(),
            },
        };
        let host = if auto_host {
            address.to_string()
        } else {
            authority.clone()
        };
        let mut upstream_req = upstream_request(&parts, body, wire, &host);
        if m.vh.attempt_count_in_request {
            upstream_req
                .headers_mut()
                .insert(ATTEMPT_COUNT, HeaderValue::from(attempt + 1));
        }
        let per_try = per_try_timeout.map(|t| Instant::now() + t);
        let limit = match (deadline, per_try) {
            (Some(d), Some(p)) => Some(d.min(p)),
            (d, p) => d.or(p),
        };
        // What the upstream has to answer in, as Envoy tells it.
        if let Some(l) = limit {
            let ms = l.saturating_duration_since(Instant::now()).as_millis();
            if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
                upstream_req
                    .headers_mut()
                    .insert("x-envoy-expected-rq-timeout-ms", v);
            }
        }
        let tls = upstream_tls(
            generation,
            ctx.shared.identity().as_ref(),
            cluster,
            endpoint.as_deref(),
        );
        // Istio's metadata exchange goes only to mesh peers: over Istio
        // mutual TLS (ALPN `istio*`).
        let mesh_peer = matches!(&tls, Ok(Some(t)) if is_istio_mtls(t));
        if ctx.conn.listener.direction != Direction::Inbound {
            rec.local_principal = match &tls {
                Ok(Some(t)) => t.local_uri.clone(),
                _ => None,
            };
        }
        if mesh_peer
            && ctx.conn.listener.direction != Direction::Inbound
            && let Some(local) = &ctx.shared.peer_metadata
        {
            local.insert(upstream_req.headers_mut());
        }
        rec.upstream_local = None;
        let result = match tls {
            Err(e) => Err(Failure::Upstream(e)),
            Ok(tls) => {
                let send = pool.send(&address, tls, wire, upstream_req, &mut rec.upstream_local);
                match limit {
                    None => send.await.map_err(Failure::Upstream),
                    Some(limit) => match tokio::time::timeout_at(limit.into(), send).await {
                        Ok(r) => r.map_err(Failure::Upstream),
                        Err(_) if deadline.is_some_and(|d| d <= limit) => {
                            Err(Failure::GlobalTimeout)
                        }
                        Err(_) => Err(Failure::PerTryTimeout),
                    },
                }
            }
        };
        if let Some(detector) = generation.outliers.get(&cluster.config.name) {
            report_outlier(detector, &address, &result);
        }
        rec.upstream_transport_failure = match &result {
            Err(Failure::Upstream(e)) => e.transport_failure(),
            _ => None,
        };
        match &result {
            Err(Failure::PerTryTimeout) => rec.failures.per_try_timeout += 1,
            Err(Failure::GlobalTimeout) => rec.failures.route_timeout = true,
            Err(Failure::Upstream(
                UpstreamError::Connect(_)
                | UpstreamError::ConnectTimeout
                | UpstreamError::Handshake(_),
            )) => rec.failures.connect += 1,
            _ => {}
        }
        // As Envoy, the retry in flight ends when its outcome is known.
        drop(retry_slot.take());
        let retriable = match (&result, policy) {
            (_, None) => false,
            (Ok(resp), Some(p)) => retriable_response(p, resp),
            (Err(failure), Some(p)) => retriable_failure(p, failure),
        };
        let mut overflowed = false;
        if retriable && attempt < retries {
            let replayable = replay.as_ref().is_none_or(|r| r.is_replayable());
            let backoff = policy.map_or(Duration::ZERO, |p| backoff(p, attempt));
            let in_time = deadline.is_none_or(|d| Instant::now() + backoff < d);
            if replayable && in_time {
                match pool.retry_slot() {
                    Some(s) => {
                        retry_slot = Some(s);
                        drop(result);
                        drop(active);
                        tokio::time::sleep(backoff).await;
                        attempt += 1;
                        continue;
                    }
                    None => {
                        overflowed = true;
                        rec.breakers.retry_overflow = true;
                        rec.flags.insert(ResponseFlags::UPSTREAM_OVERFLOW);
                    }
                }
            }
        }
        if retriable && attempt > 0 && !overflowed {
            rec.flags
                .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        }
        if !retriable && attempt > 0 && result.is_ok() {
            rec.breakers.retry_success = true;
        }
        return match result {
            Ok(mut resp) => {
                if resp.extensions().get::<ConnectionOverflowed>().is_some() {
                    rec.breakers.cx_overflow = true;
                }
                rec.upstream_peer_principal = resp
                    .extensions()
                    .get::<crate::proxy::pool::UpstreamPeer>()
                    .map(|p| p.0.clone());
                // The destination's metadata, from a mesh peer; an app's
                // (or a non-mesh server's) headers of that name go no
                // further either.
                if mesh_peer && ctx.conn.listener.direction != Direction::Inbound {
                    rec.peer = crate::telemetry::peer::take(resp.headers_mut());
                } else {
                    crate::telemetry::peer::strip(resp.headers_mut());
                }
                if m.vh.attempt_count_in_response {
                    resp.headers_mut()
                        .insert(ATTEMPT_COUNT, HeaderValue::from(attempt + 1));
                }
                // What is left of the route timeout bounds the body too.
                out.deadline = deadline;
                let elapsed = upstream_start.elapsed();
                rec.upstream_service_time = Some(elapsed);
                if let Some(a) = active {
                    out.guards.push(Box::new(a));
                }
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    splice(&mut resp, downstream_upgrade);
                } else {
                    strip_hop_by_hop(resp.headers_mut(), false);
                }
                if let Ok(v) = HeaderValue::from_str(&elapsed.as_millis().to_string()) {
                    resp.headers_mut()
                        .insert("x-envoy-upstream-service-time", v);
                }
                if let Some(cookie) = &hashed.set_cookie
                    && let Ok(v) = HeaderValue::from_str(cookie)
                {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
                (resp, weighted)
            }
            Err(failure) => {
                let mut resp = failure_reply(rec, failure);
                if m.vh.attempt_count_in_response {
                    resp.headers_mut()
                        .insert(ATTEMPT_COUNT, HeaderValue::from(attempt + 1));
                }
                (resp, weighted)
            }
        };
    }
}

/// Tells the cluster's outlier detector how an attempt on `host` went
/// (overflows say nothing about the host).
fn report_outlier(
    detector: &outlier::Detector,
    host: &HostAddress,
    result: &Result<Response<ProxyBody>, Failure>,
) {
    let outcome = match result {
        Ok(resp) => outlier::Outcome::Response(resp.status().as_u16()),
        Err(Failure::Upstream(UpstreamError::Overflow)) => return,
        Err(Failure::PerTryTimeout | Failure::GlobalTimeout) => outlier::Outcome::Timeout,
        Err(Failure::Upstream(_)) => outlier::Outcome::ConnectFailed,
    };
    detector.report(host, outcome);
}

fn failure_reply(rec: &mut RequestRecord, failure: Failure) -> Response<ProxyBody> {
    const PREFIX: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: ";
    let (status, flags, details, reason) = match failure {
        Failure::Upstream(UpstreamError::Overflow) => return local::overflow(rec),
        Failure::GlobalTimeout | Failure::PerTryTimeout => {
            return local::error(
                rec,
                StatusCode::GATEWAY_TIMEOUT,
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                "upstream_response_timeout",
                "upstream request timeout",
            );
        }
        Failure::Upstream(
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout | UpstreamError::Handshake(_),
        ) => (
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            "upstream_reset_before_response_started{connection_failure}",
            "connection failure",
        ),
        Failure::Upstream(UpstreamError::Closed(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            "upstream_reset_before_response_started{connection_termination}",
            "connection termination",
        ),
        Failure::Upstream(UpstreamError::Reset(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlags::UPSTREAM_REMOTE_RESET,
            "upstream_reset_before_response_started{remote_reset}",
            "remote reset",
        ),
        Failure::Upstream(UpstreamError::Protocol(_)) => (
            StatusCode::BAD_GATEWAY,
            ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            "upstream_reset_before_response_started{protocol_error}",
            "protocol error",
        ),
    };
    local::error(rec, status, flags, details, &format!("{PREFIX}{reason}"))
}

fn retriable_response(p: &RetryPolicy, resp: &Response<ProxyBody>) -> bool {
    let status = resp.status().as_u16();
    if (p.on.intersects(RetryOn::FIVE_XX) && status >= 500)
        || (p.on.intersects(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
        || (p.on.intersects(RetryOn::RETRIABLE_4XX) && status == 409)
        || (p.on.intersects(RetryOn::RETRIABLE_STATUS_CODES)
            && p.retriable_status_codes.contains(&status))
        || (p.on.intersects(RetryOn::ENVOY_RATELIMITED)
            && resp.headers().contains_key("x-envoy-ratelimited"))
        || (p.on.intersects(RetryOn::RETRIABLE_HEADERS) && {
            let view = RequestView {
                method: &http::Method::GET,
                scheme: "http",
                authority: "",
                path: "",
                headers: resp.headers(),
            };
            p.retriable_headers.iter().any(|h| h.matches(&view))
        })
    {
        return true;
    }
    // A trailers-only gRPC error carries its status in the headers.
    let grpc = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    match grpc {
        Some(1) => p.on.intersects(RetryOn::GRPC_CANCELLED),
        Some(4) => p.on.intersects(RetryOn::GRPC_DEADLINE_EXCEEDED),
        Some(8) => p.on.intersects(RetryOn::GRPC_RESOURCE_EXHAUSTED),
        Some(13) => p.on.intersects(RetryOn::GRPC_INTERNAL),
        Some(14) => p.on.intersects(RetryOn::GRPC_UNAVAILABLE),
        _ => false,
    }
}

fn retriable_failure(p: &RetryPolicy, failure: &Failure) -> bool {
    let any_5xx = RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR;
    match failure {
        // Envoy never retries an overflow: it would only overflow again.
        Failure::GlobalTimeout | Failure::Upstream(UpstreamError::Overflow) => false,
        Failure::PerTryTimeout => p.on.intersects(any_5xx),
        Failure::Upstream(
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout | UpstreamError::Handshake(_),
        ) => p.on.intersects(any_5xx | RetryOn::CONNECT_FAILURE),
        Failure::Upstream(UpstreamError::Reset(e))
            if format!("{e:?}").contains("REFUSED_STREAM") =>
        {
            p.on.intersects(any_5xx | RetryOn::RESET | RetryOn::REFUSED_STREAM)
        }
        Failure::Upstream(_) => {
            p.on.intersects(any_5xx | RetryOn::RESET | RetryOn::RESET_BEFORE_REQUEST)
        }
    }
}

// === impl Controls ===

impl Controls {
    /// Reads an internal caller's controls, and removes every caller's.
    fn take(headers: &mut HeaderMap, internal: bool) -> Self {
        let mut c = Self::default();
        if internal {
            let number = |name: &str| -> Option<u64> {
                headers.get(name)?.to_str().ok()?.trim().parse().ok()
            };
            c.max_retries = number("x-envoy-max-retries").and_then(|n| u32::try_from(n).ok());
            c.timeout = number("x-envoy-upstream-rq-timeout-ms")
                .map(|ms| (ms > 0).then(|| Duration::from_millis(ms)));
            c.per_try_timeout = number("x-envoy-upstream-rq-per-try-timeout-ms")
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis);
            let on = ["x-envoy-retry-on", "x-envoy-retry-grpc-on"]
                .iter()
                .filter_map(|h| headers.get(*h)?.to_str().ok())
                .flat_map(|v| v.split(','))
                // Unknown conditions in a header are skipped, as Envoy does.
                .filter_map(|t| RetryOn::parse(t, "").ok())
                .fold(RetryOn::default(), |a, b| a | b);
            c.retry_on = (on != RetryOn::default()).then_some(on);
            headers.insert("x-envoy-internal", HeaderValue::from_static("true"));
        } else {
            headers.remove("x-envoy-internal");
        }
        for h in CONTROL_HEADERS {
            headers.remove(h);
        }
        c
    }

    /// The retry policy in force: the route's with the caller's
    /// conditions and count, or one made from the caller's conditions
    /// alone (Envoy's defaults: one retry, 25 ms back-off).
    fn policy<'p>(&self, route: Option<&'p RetryPolicy>) -> Option<Cow<'p, RetryPolicy>> {
        if self.retry_on.is_none() && self.max_retries.is_none() {
            // The common case borrows: no copy per request.
            return route.map(Cow::Borrowed);
        }
        let mut p = match (route, self.retry_on) {
            (Some(p), _) => p.clone(),
            (None, Some(on)) => RetryPolicy {
                on,
                num_retries: 1,
                per_try_timeout: None,
                retriable_status_codes: Vec::new(),
                base_interval: Duration::from_millis(25),
                max_interval: Duration::from_millis(250),
                avoid_previous_hosts: false,
                host_selection_attempts: 1,
                retriable_headers: Vec::new(),
                retriable_request_headers: Vec::new(),
            },
            (None, None) => return None,
        };
        if let Some(on) = self.retry_on {
            p.on = p.on | on;
        }
        if let Some(n) = self.max_retries {
            p.num_retries = n;
        }
        Some(Cow::Owned(p))
    }
}

/// Fully jittered exponential back-off, Envoy's: the `n`th retry waits
/// a random time below `base × 2ⁿ`, capped at `max_interval` (10 × base
/// unless set).
fn backoff(p: &RetryPolicy, attempt: u32) -> Duration {
    let cap = p
        .base_interval
        .saturating_mul(1u32 << attempt.min(16))
        .min(p.max_interval);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(fastrand::u64(0..millis))
}

/// The request timeout from a gRPC `grpc-timeout` header, when the route
/// says to honour it.
fn grpc_timeout(headers: &HeaderMap, f: &Forward) -> Option<Duration> {
    let max = f.grpc_timeout_max?;
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(if max.is_zero() { d } else { d.min(max) })
}

pub(crate) fn wire_for(cluster: &Cluster, downstream: Version, upgrade: bool) -> Wire {
    if upgrade {
        return Wire::Http1;
    }
    match cluster.config.protocol {
        UpstreamProtocol::Http1 => Wire::Http1,
        UpstreamProtocol::Http2 => Wire::Http2,
        UpstreamProtocol::UseDownstream if downstream == Version::HTTP_2 => Wire::Http2,
        UpstreamProtocol::UseDownstream => Wire::Http1,
    }
}

fn rewrite_path(parts: &mut Parts, f: &Forward, m: &Matched<'_>) {
    let original = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (path, query) = match original.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (original.clone(), None),
    };
    let new_path = if let Some(prefix) = &f.prefix_rewrite {
        let cut = m.route.rewritable_prefix_len(&path);
        let mut p = format!("{prefix}{}", &path[cut..]);
        if p.is_empty() {
            p.push('/');
        }
        p
    } else if let Some(r) = &f.regex_rewrite {
        r.apply(&path)
    } else {
        return;
    };
    let full = match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    if let Ok(uri) = full.parse::<Uri>() {
        if let Ok(v) = HeaderValue::from_str(&original) {
            parts.headers.insert("x-envoy-original-path", v);
        }
        parts.uri = uri;
    }
}

/// Removes hop-by-hop headers (keeping `te: trailers`, which gRPC needs,
/// and the upgrade headers of an upgrade).
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().to_ascii_lowercase().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        headers.remove(n);
    }
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == "trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The request as sent upstream: origin-form with `Host` on HTTP/1.1,
/// absolute-form (`:authority`) on HTTP/2.
pub(crate) fn upstream_request(
    parts: &Parts,
    body: ProxyBody,
    wire: Wire,
    authority: &str,
) -> Request<ProxyBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match wire {
        Wire::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            if let Ok(uri) = pq.parse() {
                *req.uri_mut() = uri;
            }
            if let Ok(v) = HeaderValue::from_str(authority) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        Wire::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            if let Ok(uri) = format!("http://{authority}{pq}").parse() {
                *req.uri_mut() = uri;
            }
            req.headers_mut().remove(header::HOST);
        }
    }
    req
}

/// Joins the two sides of an accepted upgrade (WebSocket).
fn splice(resp: &mut Response<ProxyBody>, downstream: Option<hyper::upgrade::OnUpgrade>) {
    let Some(downstream) = downstream else {
        return;
    };
    let upstream = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        match tokio::try_join!(downstream, upstream) {
            Ok((d, u)) => {
                let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}

/// Sends a shadow copy of the request; its response and failures are
/// dropped, and the client's request never waits for it.
#[allow(clippy::too_many_arguments)]
fn spawn_mirror(
    parts: &Parts,
    authority: &str,
    shadow_suffix: bool,
    cluster_name: &str,
    body: Option<&ReplayBody>,
    generation: &Generation,
    conn: &Arc<ConnInfo>,
    identity: Option<Arc<MeshTls>>,
    timeout: Option<Duration>,
) {
    let (Some(cluster), Some(pool)) = (
        generation.runtime.cluster(cluster_name).cloned(),
        generation.upstreams.get(cluster_name).cloned(),
    ) else {
        tracing::debug!(cluster = cluster_name, "mirror cluster not found");
        return;
    };
    let host = if shadow_suffix {
        shadow_host(authority)
    } else {
        authority.to_string()
    };
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.version_mut() = parts.version;
    *head.headers_mut() = parts.headers.clone();
    let (head, ()) = head.into_parts();
    let whole = body.map(ReplayBody::share);
    let Some((address, endpoint)) = pick_endpoint(
        generation,
        &cluster,
        conn,
        None,
        Some(&head.headers),
        &[],
        false,
        1,
    ) else {
        return;
    };
    let Ok(tls) = upstream_tls(generation, identity.as_ref(), &cluster, endpoint.as_deref()) else {
        return;
    };
    tokio::spawn(async move {
        let limit = timeout.unwrap_or(Duration::from_secs(15));
        let send = async {
            let body = match whole {
                None => empty(),
                Some(b) => match b.whole().await {
                    Some((chunks, _)) => full(chunks.concat()),
                    None => return,
                },
            };
            let wire = wire_for(&cluster, head.version, false);
            let req = upstream_request(&head, body, wire, &host);
            if let Ok(resp) = pool.send(&address, tls, wire, req, &mut None).await {
                // Read to the end so the connection goes back to the pool.
                let _ = resp.into_body().collect().await;
            }
        };
        let _ = tokio::time::timeout(limit, send).await;
    });
}

/// `host-shadow`, keeping a port: `reviews:9080` -> `reviews-shadow:9080`.
fn shadow_host(authority: &str) -> String {
    let host = crate::runtime::route::strip_port(authority);
    format!("{host}-shadow{}", &authority[host.len()..])
}

/// Whether `tls` is Istio's mutual TLS to a mesh proxy: it offers Istio's
/// ALPN markers (`istio`, `istio-peer-exchange`, `istio-http/1.1`, ...).
fn is_istio_mtls(tls: &crate::tls::ClientTls) -> bool {
    tls.config
        .alpn_protocols
        .iter()
        .any(|p| p.starts_with(b"istio"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("reviews", "reviews-shadow"; "no port")]
    #[test_case("reviews:9080", "reviews-shadow:9080"; "port")]
    #[test_case("10.0.0.1:80", "10.0.0.1-shadow:80"; "ip")]
    fn shadow_hosts(host: &str, expected: &str) {
        assert_eq!(shadow_host(host), expected);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["te", "x-keep"]);
        assert_eq!(h["te"], "trailers");
    }

    fn control_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-envoy-max-retries", "4"),
            ("x-envoy-retry-on", "connect-failure,no-such-thing"),
            ("x-envoy-upstream-rq-timeout-ms", "0"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "250"),
            ("x-envoy-internal", "true"),
            ("x-keep", "1"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn an_internal_callers_controls_are_read_then_removed() {
        let mut h = control_headers();
        let c = Controls::take(&mut h, true);
        assert_eq!(
            c,
            Controls {
                max_retries: Some(4),
                retry_on: Some(RetryOn::CONNECT_FAILURE),
                timeout: Some(None),
                per_try_timeout: Some(Duration::from_millis(250)),
            }
        );
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["x-envoy-internal", "x-keep"]);
        // Header conditions alone make a policy of one retry, which the
        // count then overrides.
        let p = c.policy(None).unwrap();
        assert_eq!((p.on, p.num_retries), (RetryOn::CONNECT_FAILURE, 4));
    }

    #[test]
    fn an_external_callers_controls_are_removed_unread() {
        let mut h = control_headers();
        let c = Controls::take(&mut h, false);
        assert_eq!(c, Controls::default());
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
        assert!(c.policy(None).is_none());
    }

    #[test_case("100m", Some(Duration::from_millis(100)); "millis")]
    #[test_case("2S", Some(Duration::from_secs(2)); "seconds")]
    #[test_case("bad", None; "invalid")]
    fn grpc_timeouts(value: &str, expected: Option<Duration>) {
        let f = Forward {
            target: Target::Cluster("c".into()),
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: HostRewrite::Keep,
            timeout: None,
            grpc_timeout_max: Some(Duration::ZERO),
            retry: None,
            mirrors: vec![],
            hash_policies: vec![],
            cluster_not_found: StatusCode::SERVICE_UNAVAILABLE,
            websocket: None,
        };
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_str(value).unwrap());
        assert_eq!(grpc_timeout(&h, &f), expected);
    }
}
