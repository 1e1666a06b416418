//! Circuit breaking and retries on loopback, against a backend that
//! behaves on cue (slow, failing, flagging its answers): `max_connections`
//! with `max_pending_requests` and `max_requests` answer 503 `UO` with
//! `x-envoy-overloaded` at once; the TCP proxy closes a connection over
//! `max_connections`; a retry budget stops retries past its share;
//! `x-envoy-attempt-count` goes up with each attempt; a caller's
//! `x-envoy-max-retries` is honoured only when the connection manager
//! counts it internal, and never reaches the upstream; bodies over the
//! buffer limit are not retried; `retriable-headers` and
//! `retriable_request_headers`. Envoy's counters are read from the
//! telemetry observer's Prometheus registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::drain;
use mesh_proxy::proxy::{Observer, Options, RequestRecord, ResponseFlags, TcpRecord};
use mesh_proxy::resources::Resource;
use mesh_proxy::runtime;
use mesh_proxy::telemetry::{LocalIdentity, Metrics, Telemetry};
use mesh_proxy::xds::{NodeConfig, Role};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use support::data_plane::Records;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The body of every overflow answer, Envoy's.
const OVERFLOW: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

// === the backend ===

/// A backend whose paths say how to behave: `/slow/<ms>` answers 200
/// after `ms`, `/fail/<ms>` 503 after `ms`, `/busy` 200 with
/// `x-upstream-busy`, anything else 200. It reads every request body to
/// the end first, and keeps the headers of every request it got.
struct Cued {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    connections: Arc<Mutex<usize>>,
}

async fn cued() -> Cued {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(0));
    let (s, c) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            *c.lock().unwrap() += 1;
            let s = s.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        s.lock()
                            .unwrap()
                            .push((path.clone(), req.headers().clone()));
                        let _ = req.into_body().collect().await;
                        let mut parts = path.trim_start_matches('/').split('/');
                        let (kind, ms) = (parts.next().unwrap_or(""), parts.next());
                        let wait = ms.and_then(|m| m.parse().ok()).unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(path.clone())));
                        match kind {
                            "fail" => *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
                            "busy" => {
                                resp.headers_mut()
                                    .insert("x-upstream-busy", "true".parse().unwrap());
                            }
                            _ => {}
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Cued {
        addr,
        seen,
        connections,
    }
}

impl Cued {
    /// The requests that reached it for `path`.
    fn hits(&self, path: &str) -> Vec<HeaderMap> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .collect()
    }
}

// === the proxy, with Envoy's counters ===

/// The data path with both the test's record keeper and the telemetry
/// observer (whose Envoy counters land in `registry`).
struct Resilient {
    records: Arc<Records>,
    registry: Registry,
    _runtime: watch::Sender<Arc<runtime::Runtime>>,
    _trigger: drain::Trigger,
}

struct Both {
    records: Arc<Records>,
    telemetry: Telemetry,
}

impl Observer for Both {
    fn request(&self, record: &RequestRecord) {
        self.records.request(record);
        self.telemetry.request(record);
    }
    fn connection(&self, record: &TcpRecord) {
        self.records.connection(record);
        self.telemetry.connection(record);
    }
}

impl Resilient {
    async fn start(list: Vec<Resource>, ready: SocketAddr) -> Self {
        let node = NodeConfig {
            role: Some(Role::Sidecar),
            pod_name: Some("productpage-v1-7d9f".into()),
            pod_namespace: Some("bookinfo".into()),
            ..Default::default()
        };
        let metrics = Metrics::new(LocalIdentity::from_node(&node.build(None)));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let records = Arc::new(Records::default());
        let observer = Arc::new(Both {
            records: records.clone(),
            telemetry: Telemetry::new(Some(metrics), None),
        });
        let (tx, rx) = watch::channel(Arc::new(runtime::compile(&resources(list))));
        let (trigger, watch) = drain::channel();
        tokio::spawn(mesh_proxy::proxy::run_with(
            rx,
            watch,
            Options {
                observer,
                ..Options::default()
            },
        ));
        wait_listening(ready).await;
        Self {
            records,
            registry,
            _runtime: tx,
            _trigger: trigger,
        }
    }

    /// Envoy's counter `name` for cluster `backend` (0 when absent).
    fn counter(&self, name: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        let prefix = format!("{name}{{envoy_cluster_name=\"backend\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
    }

    /// The records of the requests for `path`, once `n` were written.
    async fn requests(&self, path: &str, n: usize) -> Vec<RequestRecord> {
        eventually(Duration::from_secs(3), || async {
            let all: Vec<_> = self
                .records
                .requests
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.path == path)
                .cloned()
                .collect();
            (all.len() >= n).then_some(all)
        })
        .await
        .unwrap_or_else(|| panic!("fewer than {n} records for {path}"))
    }
}

/// An HTTP listener on `addr` over the route `80` with the connection
/// manager's `extra` fields.
fn listener_on(addr: SocketAddr, extra: Value) -> Resource {
    http_listener_with("http", addr, "80", extra)
}

/// The route `80`: one virtual host (with the `vh` fields) whose only
/// route goes to `backend` with `action` fields added.
fn routes(vh: Value, action: Value) -> Resource {
    let mut r = json!({"cluster": "backend", "timeout": "5s"});
    for (k, v) in action.as_object().unwrap() {
        r[k] = v.clone();
    }
    let mut host = json!({"name": "all", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": r}]});
    for (k, v) in vh.as_object().unwrap() {
        host[k] = v.clone();
    }
    route(json!({"name": "80", "virtualHosts": [host]}))
}

/// The cluster `backend` with these DEFAULT-priority thresholds.
fn breakers(addr: SocketAddr, thresholds: Value) -> Resource {
    static_cluster_with(
        "backend",
        &[addr],
        json!({"circuitBreakers": {"thresholds": [thresholds]}}),
    )
}

/// One request on its own connection; the reply and how long it took.
async fn timed(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (Result<Reply, String>, Duration) {
    let started = Instant::now();
    let reply = get_in(None, addr, Version::HTTP_11, "a", path, headers).await;
    (reply, started.elapsed())
}

/// A POST of `body` on its own connection.
async fn post(addr: SocketAddr, path: &str, body: Vec<u8>) -> StatusCode {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", "a")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

/// A retry policy on 5xx with a back-off too short to matter.
fn retry(extra: Value) -> Value {
    let mut p = json!({"retryOn": "5xx", "numRetries": 1,
        "retryBackOff": {"baseInterval": "0.001s"}});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    json!({"retryPolicy": p})
}

fn assert_overflow(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["x-envoy-overloaded"], "true");
    assert_eq!(reply.text(), OVERFLOW);
}

// === circuit breakers ===

#[tokio::test]
async fn a_request_past_max_pending_requests_is_refused_at_once_while_one_waits_for_the_connection()
{
    bounded(30, async {
        let backend = cued().await;
        let addr = free_addr();
        let proxy = Resilient::start(
            vec![
                listener_on(addr, json!({})),
                routes(json!({}), json!({})),
                breakers(
                    backend.addr,
                    json!({"maxConnections": 1, "maxPendingRequests": 1}),
                ),
            ],
            addr,
        )
        .await;
        // The first takes the only connection for 800 ms; the second waits
        // for it (pending); the third finds the pending queue full.
        let first = tokio::spawn(timed(addr, "/slow/800", &[]));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let second = tokio::spawn(timed(addr, "/slow/800", &[]));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (third, took) = timed(addr, "/slow/800", &[]).await;
        let third = third.unwrap();
        assert_overflow(&third);
        assert!(took < Duration::from_millis(300), "overflow took {took:?}");
        let (first, _) = first.await.unwrap();
        let (second, second_took) = second.await.unwrap();
        assert_eq!(first.unwrap().status, StatusCode::OK);
        assert_eq!(second.unwrap().status, StatusCode::OK);
        // It waited for the first to end, then reused its connection.
        assert!(
            second_took >= Duration::from_millis(1200),
            "{second_took:?}"
        );
        assert_eq!(*backend.connections.lock().unwrap(), 1);
        let records = proxy.requests("/slow/800", 3).await;
        let refused: Vec<_> = records
            .iter()
            .filter(|r| r.flags.contains(ResponseFlags::UPSTREAM_OVERFLOW))
            .collect();
        assert_eq!(refused.len(), 1, "{records:?}");
        assert_eq!(refused[0].response_code, 503);
        assert_eq!(
            proxy.counter("envoy_cluster_upstream_rq_pending_overflow"),
            1
        );
        // The one that waited found the cluster at max_connections; the
        // one refused never tried to connect (stock Envoy counts the same).
        assert_eq!(proxy.counter("envoy_cluster_upstream_cx_overflow"), 1);
    })
    .await;
}

#[tokio::test]
async fn a_request_past_max_requests_is_refused_at_once() {
    bounded(30, async {
        let backend = cued().await;
        let addr = free_addr();
        let proxy = Resilient::start(
            vec![
                listener_on(addr, json!({})),
                routes(json!({}), json!({})),
                breakers(backend.addr, json!({"maxRequests": 1})),
            ],
            addr,
        )
        .await;
        let first = tokio::spawn(timed(addr, "/slow/600", &[]));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (second, took) = timed(addr, "/slow/600", &[]).await;
        assert_overflow(&second.unwrap());
        assert!(took < Duration::from_millis(300), "overflow took {took:?}");
        assert_eq!(first.await.unwrap().0.unwrap().status, StatusCode::OK);
        // Once the first is done there is room again.
        let (third, _) = timed(addr, "/slow/0", &[]).await;
        assert_eq!(third.unwrap().status, StatusCode::OK);
        assert_eq!(backend.hits("/slow/600").len(), 1);
        assert_eq!(
            proxy.counter("envoy_cluster_upstream_rq_pending_overflow"),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn the_tcp_proxy_closes_a_connection_past_max_connections() {
    bounded(30, async {
        let upstream = tcp_backend("up", Some("hello\n")).await;
        let addr = free_addr();
        let proxy = Resilient::start(
            vec![
                listener(json!({
                    "name": "tcp",
                    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": addr.port()}},
                    "filterChains": [{"filters": [tcp_proxy("backend")]}],
                })),
                breakers(upstream, json!({"maxConnections": 1})),
            ],
            addr,
        )
        .await;
        // wait_listening's probe connection may still hold the slot.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut greeting = [0u8; 6];
        first.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hello\n");
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf))
            .await
            .expect("the second connection was left open")
            .unwrap_or(0);
        assert_eq!(n, 0, "the second connection got {:?}", &buf[..n]);
        // The first still works.
        first.write_all(b"ping").await.unwrap();
        let n = first.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"up:ping");
        let refused = eventually(Duration::from_secs(2), || async {
            proxy
                .records
                .connections
                .lock()
                .unwrap()
                .iter()
                .find(|c| c.flags.contains(ResponseFlags::UPSTREAM_OVERFLOW))
                .cloned()
        })
        .await
        .expect("no UO connection record");
        assert!(refused.upstream_host.is_none());
        assert_eq!(proxy.counter("envoy_cluster_upstream_cx_overflow"), 1);
    })
    .await;
}

// === retries ===

#[tokio::test]
async fn a_retry_budget_stops_retries_past_its_share() {
    bounded(30, async {
        let backend = cued().await;
        let addr = free_addr();
        let proxy = Resilient::start(
            vec![
                listener_on(addr, json!({})),
                routes(json!({}), retry(json!({}))),
                // 0 % of the requests: only min_retry_concurrency (1)
                // retry at a time.
                breakers(
                    backend.addr,
                    json!({"maxRetries": 100, "retryBudget": {
                        "budgetPercent": {"value": 0.0}, "minRetryConcurrency": 1}}),
                ),
            ],
            addr,
        )
        .await;
        let requests: Vec<_> = (0..4)
            .map(|_| tokio::spawn(timed(addr, "/fail/600", &[])))
            .collect();
        for r in requests {
            let (reply, _) = r.await.unwrap();
            let reply = reply.unwrap();
            // Retried or not, the client gets the upstream's 503.
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(reply.text(), "/fail/600");
            assert!(!reply.headers.contains_key("x-envoy-overloaded"));
        }
        // Four first attempts, and the one retry the budget allowed (stock
        // Envoy 1.40, same config: 5 upstream requests, retry_overflow 3).
        assert_eq!(backend.hits("/fail/600").len(), 5);
        let records = proxy.requests("/fail/600", 4).await;
        let not_retried = records
            .iter()
            .filter(|r| r.attempts == 1 && r.flags.contains(ResponseFlags::UPSTREAM_OVERFLOW))
            .count();
        assert_eq!(not_retried, 3, "{records:?}");
        assert_eq!(proxy.counter("envoy_cluster_upstream_rq_retry_overflow"), 3);
        assert_eq!(proxy.counter("envoy_cluster_upstream_rq_retry"), 1);
    })
    .await;
}

#[tokio::test]
async fn max_retries_without_a_budget_lets_every_request_retry() {
    bounded(30, async {
        let backend = cued().await;
        let addr = free_addr();
        let proxy = Resilient::start(
            vec![
                listener_on(addr, json!({})),
                routes(json!({}), retry(json!({}))),
                breakers(backend.addr, json!({"maxRetries": 4})),
            ],
            addr,
        )
        .await;
        let requests: Vec<_> = (0..4)
            .map(|_| tokio::spawn(timed(addr, "/fail/300", &[])))
            .collect();
        for r in requests {
            assert_eq!(
                r.await.unwrap().0.unwrap().status,
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
        assert_eq!(backend.hits("/fail/300").len(), 8);
        assert_eq!(proxy.counter("envoy_cluster_upstream_rq_retry_overflow"), 0);
    })
    .await;
}

#[tokio::test]
async fn the_attempt_count_goes_up_with_each_attempt() {
    bounded(30, async {
        let backend = cued().await;
        let addr = free_addr();
        let proxy = Resilient::start(
            vec![
                listener_on(addr, json!({})),
                routes(
                    json!({"includeRequestAttemptCount": true, "includeAttemptCountInResponse": true}),
                    retry(json!({"numRetries": 2})),
                ),
                static_cluster("backend", &[backend.addr]),
            ],
            addr,
        )
        .await;
        let (reply, _) = timed(addr, "/fail/0", &[("x-envoy-attempt-count", "9")]).await;
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers["x-envoy-attempt-count"], "3");
        let counts: Vec<_> = backend
            .hits("/fail/0")
            .iter()
            .map(|h| h["x-envoy-attempt-count"].to_str().unwrap().to_string())
            .collect();
        assert_eq!(counts, ["1", "2", "3"]);
        // Each attempt is told the time left (the route's 5 s).
        let expected: u64 = backend.hits("/fail/0")[0]["x-envoy-expected-rq-timeout-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((4000..=5000).contains(&expected), "{expected}");
        let records = proxy.requests("/fail/0", 1).await;
        assert!(records[0]
            .flags
            .contains(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED));
        assert_eq!(
            proxy.counter("envoy_cluster_upstream_rq_retry_limit_exceeded"),
            1
        );
        // A request answered at its first attempt says 1.
        let (ok, _) = timed(addr, "/slow/0", &[]).await;
        assert_eq!(ok.unwrap().headers["x-envoy-attempt-count"], "1");
    })
    .await;
}

#[tokio::test]
async fn a_failure_the_proxy_answers_carries_the_attempt_count() {
    bounded(30, async {
        let addr = free_addr();
        let _proxy = Resilient::start(
            vec![
                listener_on(addr, json!({})),
                routes(
                    json!({"includeAttemptCountInResponse": true}),
                    retry(json!({"retryOn": "connect-failure", "numRetries": 2})),
                ),
                static_cluster("backend", &[dead_addr()]),
            ],
            addr,
        )
        .await;
        let (reply, _) = timed(addr, "/", &[]).await;
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers["x-envoy-attempt-count"], "3");
    })
    .await;
}

#[tokio::test]
async fn x_envoy_controls_are_honoured_from_internal_callers_only_and_never_forwarded() {
    bounded(30, async {
        let backend = cued().await;
        let (trusted, external, sidecar) = (free_addr(), free_addr(), free_addr());
        let internal = json!({"useRemoteAddress": true,
            "internalAddressConfig": {"cidrRanges": [{"addressPrefix": "127.0.0.0", "prefixLen": 8}]}});
        let list = vec![
            http_listener_with("trusted", trusted, "80", internal),
            // Envoy 1.40 has no internal addresses by default: nobody is.
            http_listener_with("external", external, "80", json!({"useRemoteAddress": true})),
            // Without use_remote_address only a single internal
            // x-forwarded-for address is internal.
            http_listener_with("sidecar", sidecar, "80", json!({})),
            routes(json!({}), retry(json!({}))),
            static_cluster("backend", &[backend.addr]),
        ];
        let _proxy = Resilient::start(list, trusted).await;
        wait_listening(external).await;
        wait_listening(sidecar).await;
        let asks = [("x-envoy-max-retries", "3")];
        for (addr, path, attempts) in [
            (trusted, "/fail/1", 4),
            (external, "/fail/2", 2),
            (sidecar, "/fail/3", 2),
        ] {
            let (reply, _) = timed(addr, path, &asks).await;
            assert_eq!(reply.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
            let hits = backend.hits(path);
            assert_eq!(hits.len(), attempts, "{path}");
            for h in &hits {
                assert!(!h.contains_key("x-envoy-max-retries"), "{path}: {h:?}");
            }
            assert_eq!(
                hits[0].get("x-envoy-internal").is_some(),
                addr == trusted,
                "{path}"
            );
        }
        // The timeout header too: 200 ms instead of the route's 5 s.
        let timeout = [("x-envoy-upstream-rq-timeout-ms", "200")];
        let (reply, took) = timed(trusted, "/slow/1500", &timeout).await;
        assert_eq!(reply.unwrap().status, StatusCode::GATEWAY_TIMEOUT);
        assert!(took < Duration::from_millis(1000), "{took:?}");
        // And the per-try timeout: each of the two tries gives up after
        // 150 ms, instead of waiting for the slow answer.
        let per_try = [("x-envoy-upstream-rq-per-try-timeout-ms", "150")];
        let (reply, took) = timed(trusted, "/slow/1200", &per_try).await;
        assert_eq!(reply.unwrap().status, StatusCode::GATEWAY_TIMEOUT);
        assert!(took < Duration::from_millis(900), "{took:?}");
        assert_eq!(backend.hits("/slow/1200").len(), 2);
        let (reply, _) = timed(external, "/slow/600", &timeout).await;
        assert_eq!(reply.unwrap().status, StatusCode::OK);
        assert!(
            !backend.hits("/slow/600")[0].contains_key("x-envoy-upstream-rq-timeout-ms")
        );
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_buffer_limit_is_not_retried() {
    bounded(30, async {
        let backend = cued().await;
        let addr = free_addr();
        let _proxy = Resilient::start(
            vec![
                listener_on(addr, json!({})),
                routes(
                    json!({"requestBodyBufferLimit": 1024}),
                    retry(json!({"numRetries": 2})),
                ),
                static_cluster("backend", &[backend.addr]),
            ],
            addr,
        )
        .await;
        assert_eq!(
            post(addr, "/fail/small", vec![b'x'; 512]).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(backend.hits("/fail/small").len(), 3);
        assert_eq!(
            post(addr, "/fail/large", vec![b'x'; 4096]).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(backend.hits("/fail/large").len(), 1);
    })
    .await;
}

#[tokio::test]
async fn the_listeners_buffer_limit_bounds_retried_bodies_when_the_route_sets_none() {
    bounded(30, async {
        let backend = cued().await;
        let addr = free_addr();
        let _proxy = Resilient::start(
            vec![
                listener(json!({
                    "name": "http",
                    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": addr.port()}},
                    "perConnectionBufferLimitBytes": 2048,
                    "filterChains": [{"filters": [hcm(json!({"rds": {"routeConfigName": "80"}}))]}],
                })),
                // The deprecated per-request limit is capped by the listener's.
                routes(
                    json!({"perRequestBufferLimitBytes": 100000}),
                    retry(json!({})),
                ),
                static_cluster("backend", &[backend.addr]),
            ],
            addr,
        )
        .await;
        post(addr, "/fail/small", vec![b'x'; 1500]).await;
        assert_eq!(backend.hits("/fail/small").len(), 2);
        post(addr, "/fail/large", vec![b'x'; 3000]).await;
        assert_eq!(backend.hits("/fail/large").len(), 1);
    })
    .await;
}

#[tokio::test]
async fn retriable_headers_and_retriable_request_headers() {
    bounded(30, async {
        let backend = cued().await;
        let (on_headers, on_request) = (free_addr(), free_addr());
        let flagged = json!({"retryPolicy": {"retryOn": "retriable-headers", "numRetries": 1,
            "retriableHeaders": [{"name": "x-upstream-busy", "presentMatch": true}]}});
        let only_marked = retry(json!({
            "retriableRequestHeaders": [{"name": "x-retry-ok", "presentMatch": true}]}));
        let mut flagged_route = json!({"name": "80", "virtualHosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]});
        flagged_route["virtualHosts"][0]["routes"][0]["route"]["retryPolicy"] =
            flagged["retryPolicy"].clone();
        let mut marked_route = flagged_route.clone();
        marked_route["name"] = json!("81");
        marked_route["virtualHosts"][0]["routes"][0]["route"]["retryPolicy"] =
            only_marked["retryPolicy"].clone();
        let _proxy = Resilient::start(
            vec![
                http_listener("headers", on_headers, "80"),
                http_listener("request", on_request, "81"),
                route(flagged_route),
                route(marked_route),
                static_cluster("backend", &[backend.addr]),
            ],
            on_headers,
        )
        .await;
        wait_listening(on_request).await;
        // A 200 carrying the flag is retried; a 503 without it is not.
        let (reply, _) = timed(on_headers, "/busy", &[]).await;
        assert_eq!(reply.unwrap().status, StatusCode::OK);
        assert_eq!(backend.hits("/busy").len(), 2);
        let (reply, _) = timed(on_headers, "/fail/10", &[]).await;
        assert_eq!(reply.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(backend.hits("/fail/10").len(), 1);
        // Only requests with x-retry-ok are retried.
        let _ = timed(on_request, "/fail/20", &[]).await;
        assert_eq!(backend.hits("/fail/20").len(), 1);
        let _ = timed(on_request, "/fail/30", &[("x-retry-ok", "1")]).await;
        assert_eq!(backend.hits("/fail/30").len(), 2);
    })
    .await;
}
