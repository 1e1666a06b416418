//! The HTTP data path end to end on loopback: a compiled runtime served by
//! `proxy::run`, mesh-echo backends, real hyper clients (HTTP/1.1 and
//! HTTP/2 prior knowledge).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use mesh_proxy::proxy::ResponseFlags;
use mesh_proxy::resources::Resource;
use serde_json::{Value, json};
use support::resources::*;
use support::*;
use tokio::net::TcpStream;

/// A proxy with one HTTP listener (route config "80") over `routes`, and
/// the given clusters.
async fn proxy(routes: Value, clusters: Vec<Resource>) -> (Proxy, SocketAddr) {
    let addr = free_addr();
    let mut list = vec![
        http_listener("http", addr, "80"),
        route_config("80", routes),
    ];
    list.extend(clusters);
    (Proxy::start(list, addr).await, addr)
}

fn to(cluster: &str, m: Value) -> Value {
    json!({"match": m, "route": {"cluster": cluster}})
}

#[tokio::test]
async fn routes_by_host_path_and_header() {
    bounded(30, async {
        let (v1, v2) = (echo("reviews-v1", "v1").await, echo("reviews-v2", "v2").await);
        let addr = free_addr();
        let routes = json!({"name": "80", "virtualHosts": [
            {"name": "reviews", "domains": ["reviews", "reviews:9080"], "routes": [
                {"match": {"prefix": "/", "headers": [{"name": "end-user", "stringMatch": {"exact": "jason"}}]}, "route": {"cluster": "v2"}},
                {"match": {"prefix": "/v2/"}, "route": {"cluster": "v2"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "v1"}},
            ]},
            {"name": "ratings", "domains": ["ratings"], "routes": [to("v2", json!({"prefix": "/"}))]},
        ]});
        let mut list = vec![http_listener("http", addr, "80"), route(routes), static_cluster("v1", &[v1.addr])];
        list.extend(eds_cluster("v2", &[v2.addr]));
        let proxy = Proxy::start(list, addr).await;
        let c = h1();
        assert_eq!(get(&c, addr, "reviews", "/").await.echo().version, "v1");
        assert_eq!(get(&c, addr, "reviews:9080", "/x").await.echo().version, "v1");
        assert_eq!(get(&c, addr, "reviews", "/v2/x").await.echo().version, "v2");
        assert_eq!(get(&c, addr, "ratings", "/").await.echo().version, "v2");
        let jason = send(&c, Method::GET, addr, "reviews", "/", &[("end-user", "jason")]).await;
        assert_eq!(jason.echo().version, "v2");
        // The backend sees the original host and proxy headers.
        let e = get(&c, addr, "reviews", "/hello?x=1").await.echo();
        assert_eq!(e.host, "reviews");
        assert_eq!(e.path, "/hello?x=1");
        assert!(e.headers.contains_key("x-request-id"), "{:?}", e.headers);
        assert_eq!(e.headers["x-forwarded-proto"], "http");
        // HTTP/2 by :authority.
        let r = send_h2(addr, "ratings", "/", &[]).await;
        assert_eq!(r.echo().version, "v2");
        let r = send_h2(addr, "reviews", "/", &[("end-user", "jason")]).await;
        assert_eq!(r.echo().version, "v2");
        // No virtual host: NR.
        let r = get(&c, addr, "unknown", "/").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let rec = proxy.last_request().await;
        assert!(rec.flags.contains(ResponseFlags::NO_ROUTE_FOUND), "{rec:?}");
    })
    .await;
}

#[tokio::test]
async fn weighted_clusters_split_90_10() {
    bounded(60, async {
        let (v1, v2) = (echo("r-v1", "v1").await, echo("r-v2", "v2").await);
        let routes = json!([{"match": {"prefix": "/"}, "route": {"weightedClusters": {"clusters": [
            {"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}]}}}]);
        let (_proxy, addr) = proxy(
            routes,
            vec![
                static_cluster("v1", &[v1.addr]),
                static_cluster("v2", &[v2.addr]),
            ],
        )
        .await;
        let c = h1();
        let mut names = Vec::new();
        for _ in 0..1000 {
            names.push(get(&c, addr, "reviews", "/").await.echo().version);
        }
        let t = tally(names);
        // Binomial(1000, 0.1): mean 100, sd 9.5; bounds at about five sd.
        let v2 = t.get("v2").copied().unwrap_or(0);
        assert!((53..=147).contains(&v2), "{t:?}");
        assert_eq!(t.values().sum::<usize>(), 1000);
    })
    .await;
}

#[tokio::test]
async fn mirror_gets_a_shadow_host_and_never_reaches_the_client() {
    bounded(12, async {
        let (primary, shadow) = (echo("primary", "v1").await, echo("shadow", "v2").await);
        // A mirror backend that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let routes = json!([
            {"match": {"prefix": "/dead"}, "route": {"cluster": "primary", "requestMirrorPolicies": [{"cluster": "dead"}]}},
            {"match": {"prefix": "/silent"}, "route": {"cluster": "primary", "requestMirrorPolicies": [{"cluster": "silent"}]}},
            {"match": {"prefix": "/"}, "route": {"cluster": "primary", "requestMirrorPolicies": [
                {"cluster": "shadow", "runtimeFraction": {"defaultValue": {"numerator": 100}}}]}},
        ]);
        let (_proxy, addr) = proxy(routes, vec![
            static_cluster("primary", &[primary.addr]),
            static_cluster("shadow", &[shadow.addr]),
            static_cluster("dead", &[dead_addr()]),
            static_cluster("silent", &[silent_addr]),
        ])
        .await;
        let c = h1();
        let r = get(&c, addr, "reviews:9080", "/mirrored").await;
        assert_eq!(r.echo().name, "primary");
        let seen = eventually(Duration::from_secs(5), || async {
            shadow.log.lock().unwrap().iter().find(|(_, p)| p == "/mirrored").cloned()
        })
        .await;
        assert_eq!(seen.unwrap().0, "reviews-shadow:9080");
        // A dead or silent mirror changes nothing for the client (the test's
        // time bound is shorter than the mirror's 15 s timeout).
        for path in ["/dead", "/silent", "/silent", "/dead"] {
            let r = get(&c, addr, "reviews", path).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.echo().name, "primary");
        }
    })
    .await;
}

#[tokio::test]
async fn faults_redirects_direct_responses_and_rewrites() {
    bounded(30, async {
        let v1 = echo("v1", "v1").await;
        let fault = |abort: Value| json!({"envoy.filters.http.fault": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault", "abort": abort}});
        let routes = json!([
            {"match": {"prefix": "/broken"}, "route": {"cluster": "v1"}, "typedPerFilterConfig": fault(json!({"httpStatus": 418, "percentage": {"numerator": 100}}))},
            {"match": {"prefix": "/grpc-broken"}, "route": {"cluster": "v1"}, "typedPerFilterConfig": fault(json!({"grpcStatus": 14, "percentage": {"numerator": 100}}))},
            {"match": {"path": "/old"}, "redirect": {"hostRedirect": "reviews.example.com", "pathRedirect": "/new", "responseCode": "PERMANENT_REDIRECT"}},
            {"match": {"prefix": "/moved"}, "redirect": {"prefixRewrite": "/here", "schemeRedirect": "https", "portRedirect": 8443}},
            {"match": {"prefix": "/teapot"}, "directResponse": {"status": 418, "body": {"inlineString": "I'm a teapot"}}},
            {"match": {"prefix": "/legacy"},
             "requestHeadersToAdd": [{"header": {"key": "x-added", "value": "1"}}],
             "requestHeadersToRemove": ["x-remove"],
             "responseHeadersToAdd": [{"header": {"key": "cache-control", "value": "no-store"}, "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"}],
             "route": {"cluster": "v1", "prefixRewrite": "/v2", "hostRewriteLiteral": "reviews.internal"}},
            {"match": {"prefix": "/re/"}, "route": {"cluster": "v1", "regexRewrite": {"pattern": {"regex": "^/re/(.*)$"}, "substitution": "/\\1"}}},
        ]);
        let (proxy, addr) = proxy(routes, vec![static_cluster("v1", &[v1.addr])]).await;
        let c = h1();

        let r = get(&c, addr, "reviews", "/broken").await;
        assert_eq!(r.status.as_u16(), 418);
        assert_eq!(r.text(), "fault filter abort");
        assert!(proxy.last_request().await.flags.contains(ResponseFlags::FAULT_INJECTED));
        let r = get(&c, addr, "reviews", "/grpc-broken").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["grpc-status"], "14");
        assert!(v1.log.lock().unwrap().is_empty(), "aborted requests never reach the backend");

        let r = get(&c, addr, "reviews:9080", "/old?q=1").await;
        assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers["location"], "http://reviews.example.com/new?q=1");
        let r = get(&c, addr, "reviews:9080", "/moved/a").await;
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.headers["location"], "https://reviews:8443/here/a");

        let r = get(&c, addr, "reviews", "/teapot").await;
        assert_eq!(r.status.as_u16(), 418);
        assert_eq!(r.text(), "I'm a teapot");

        let r = send(&c, Method::GET, addr, "reviews", "/legacy/x?y=1", &[("x-remove", "1")]).await;
        assert_eq!(r.headers["cache-control"], "no-store");
        let e = r.echo();
        assert_eq!(e.path, "/v2/x?y=1");
        assert_eq!(e.host, "reviews.internal");
        assert_eq!(e.headers["x-added"], "1");
        assert_eq!(e.headers["x-envoy-original-path"], "/legacy/x?y=1");
        assert!(!e.headers.contains_key("x-remove"));

        assert_eq!(get(&c, addr, "reviews", "/re/a/b").await.echo().path, "/a/b");
    })
    .await;
}

#[tokio::test]
async fn retries_reach_the_endpoint_that_accepts_connections() {
    bounded(30, async {
        let live = echo("live", "v1").await;
        let dead = dead_addr();
        let mixed = |name: &str| {
            cluster(json!({"name": name, "type": "STATIC", "connectTimeout": "1s", "lbPolicy": "ROUND_ROBIN",
                "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [
                    {"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": dead.port()}}}},
                    {"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": live.addr.port()}}}},
                ]}]}}))
        };
        let routes = json!([
            {"match": {"prefix": "/no-retry"}, "route": {"cluster": "plain"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "retried", "retryPolicy": {
                "retryOn": "connect-failure,refused-stream", "numRetries": 2,
                "retryHostPredicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                    "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                "hostSelectionRetryMaxAttempts": 5}}},
        ]);
        let (proxy, addr) = proxy(routes, vec![mixed("retried"), mixed("plain")]).await;
        let c = h1();
        for _ in 0..20 {
            let r = get(&c, addr, "reviews", "/").await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.echo().name, "live");
        }
        // Without a retry policy, half the requests meet the dead endpoint.
        let mut failures = 0;
        for _ in 0..10 {
            let r = get(&c, addr, "reviews", "/no-retry").await;
            if r.status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(r.text().contains("connection failure"), "{}", r.text());
                failures += 1;
            }
        }
        assert_eq!(failures, 5);
        let records = proxy.records.requests.lock().unwrap().clone();
        assert!(records.iter().any(|r| r.flags.contains(ResponseFlags::UPSTREAM_CONNECTION_FAILURE)));
        assert!(records.iter().any(|r| r.attempts == 2 && r.response_code == 200));
    })
    .await;
}

#[tokio::test]
async fn route_timeout_answers_504() {
    bounded(20, async {
        let v1 = echo("v1", "v1").await;
        let routes =
            json!([{"match": {"prefix": "/"}, "route": {"cluster": "v1", "timeout": "0.2s"}}]);
        let (proxy, addr) = proxy(routes, vec![static_cluster("v1", &[v1.addr])]).await;
        let r = get(&h1(), addr, "reviews", "/?delay=3s").await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(r.text(), "upstream request timeout");
        assert!(
            proxy
                .last_request()
                .await
                .flags
                .contains(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT)
        );
    })
    .await;
}

#[tokio::test]
async fn local_replies_for_no_route_no_cluster_and_no_healthy_upstream() {
    bounded(20, async {
        let routes = json!([
            to("missing", json!({"prefix": "/nc"})),
            to("empty", json!({"prefix": "/uh"})),
        ]);
        let mut clusters = eds_cluster("empty", &[]);
        clusters.push(static_cluster("unused", &[]));
        let (proxy, addr) = proxy(routes, clusters).await;
        let c = h1();
        let cases = [
            (
                "/nr",
                StatusCode::NOT_FOUND,
                ResponseFlags::NO_ROUTE_FOUND,
                "",
            ),
            (
                "/nc",
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::NO_CLUSTER_FOUND,
                "",
            ),
            (
                "/uh",
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::NO_HEALTHY_UPSTREAM,
                "no healthy upstream",
            ),
        ];
        for (path, status, flag, body) in cases {
            let before = proxy.records.requests.lock().unwrap().len();
            let r = get(&c, addr, "reviews", path).await;
            assert_eq!(r.status, status, "{path}");
            assert_eq!(r.text(), body, "{path}");
            let rec = eventually(Duration::from_secs(5), || async {
                proxy.records.requests.lock().unwrap().get(before).cloned()
            })
            .await
            .unwrap_or_else(|| panic!("{path}: no request record"));
            assert!(rec.flags.contains(flag), "{path}: {rec:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_new_runtime_reroutes_while_an_in_flight_request_completes() {
    bounded(30, async {
        let mut slow = held("slow").await;
        let v2 = echo("v2", "v2").await;
        let addr = free_addr();
        let config = |cluster: &str| {
            vec![
                http_listener("http", addr, "80"),
                route_config("80", json!([to(cluster, json!({"prefix": "/"}))])),
                static_cluster("slow", &[slow.addr]),
                static_cluster("v2", &[v2.addr]),
            ]
        };
        let proxy = Proxy::start(config("slow"), addr).await;
        let in_flight =
            tokio::spawn(async move { get(&h1(), addr, "reviews", "/in-flight").await });
        assert_eq!(slow.arrived.recv().await.unwrap(), "/in-flight");
        proxy.update(config("v2"));
        let c = h1();
        let rerouted = eventually(Duration::from_secs(10), || async {
            let r = get(&c, addr, "reviews", "/").await;
            (r.status == StatusCode::OK && r.text().contains("v2")).then_some(())
        })
        .await;
        assert!(rerouted.is_some());
        slow.release.add_permits(100);
        let r = in_flight.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "slow");
    })
    .await;
}

#[tokio::test]
async fn drain_finishes_the_in_flight_request_then_run_returns() {
    bounded(30, async {
        let mut slow = held("slow").await;
        let routes = json!([to("slow", json!({"prefix": "/"}))]);
        let (mut proxy, addr) = proxy(routes, vec![static_cluster("slow", &[slow.addr])]).await;
        let in_flight =
            tokio::spawn(async move { get(&h1(), addr, "reviews", "/in-flight").await });
        assert_eq!(slow.arrived.recv().await.unwrap(), "/in-flight");
        let release = slow.release.clone();
        let drained = proxy.drain(Duration::from_secs(10));
        let finish = async move {
            // Let the drain start, then let the answer go.
            tokio::time::sleep(Duration::from_millis(100)).await;
            release.add_permits(1);
        };
        let (drained, (), r) = tokio::join!(drained, finish, in_flight);
        assert!(drained);
        let r = r.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "slow");
        (&mut proxy.task).await.unwrap().unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still accepting after the drain"
        );
    })
    .await;
}

#[tokio::test]
async fn a_listener_that_cannot_bind_is_skipped() {
    bounded(20, async {
        let v1 = echo("v1", "v1").await;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap();
        let addr = free_addr();
        let list = vec![
            http_listener("taken", taken_addr, "80"),
            http_listener("free", addr, "80"),
            route_config("80", json!([to("v1", json!({"prefix": "/"}))])),
            static_cluster("v1", &[v1.addr]),
        ];
        let _proxy = Proxy::start(list, addr).await;
        assert_eq!(
            get(&h1(), addr, "reviews", "/").await.status,
            StatusCode::OK
        );
    })
    .await;
}

/// A backend that accepts WebSocket upgrades and echoes the raw bytes.
async fn upgrade_backend() -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |mut req: http::Request<hyper::body::Incoming>| async move {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = on.await {
                                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            }
                        });
                        let resp = http::Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_upgrades_are_spliced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(20, async {
        let upstream = upgrade_backend().await;
        let routes = json!([to("ws", json!({"prefix": "/"}))]);
        let (_proxy, addr) = proxy(routes, vec![static_cluster("ws", &[upstream])]).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /chat HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed before the response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    })
    .await;
}

#[tokio::test]
async fn a_virtual_host_requiring_tls_redirects_even_without_routes() {
    bounded(20, async {
        // Istio's gateway for an `httpsRedirect` server no VirtualService
        // serves: a virtual host with `requireTls: ALL` and no routes.
        let addr = free_addr();
        let list = vec![
            http_listener("http", addr, "80"),
            route(json!({"name": "80", "virtualHosts": [
                {"name": "login", "domains": ["login.example.com"], "requireTls": "ALL"},
                {"name": "rest", "domains": ["*"], "routes": []},
            ]})),
        ];
        let _proxy = Proxy::start(list, addr).await;
        let c = h1();
        let r = get(&c, addr, "login.example.com", "/sign-in?next=/").await;
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            r.headers["location"],
            "https://login.example.com/sign-in?next=/"
        );
        // Other hosts still get no route.
        let r = get(&c, addr, "other.example.com", "/sign-in").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    })
    .await;
}
