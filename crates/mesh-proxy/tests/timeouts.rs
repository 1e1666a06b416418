//! Idle timeouts on loopback, with short configured values: the HTTP
//! connection manager's idle timeout (an idle keep-alive connection is
//! kept past the request headers timeout, then closed) and stream idle
//! timeout, the upstream pool's idle timeout, and the TCP proxy's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::proxy::ResponseFlags;
use serde_json::json;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every path to the cluster `backend`, with the route `timeout`.
fn to_backend(timeout: &str) -> mesh_proxy::resources::Resource {
    route_config(
        "80",
        json!([{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": timeout}}]),
    )
}

/// An HTTP listener on `addr` whose connection manager times a request's
/// headers out after 200 ms and an idle connection after 1.5 s.
fn short_timeouts(addr: SocketAddr) -> mesh_proxy::resources::Resource {
    http_listener_with(
        "http",
        addr,
        "80",
        json!({"requestHeadersTimeout": "0.2s",
               "commonHttpProtocolOptions": {"idleTimeout": "1.5s"}}),
    )
}

fn get_request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "a")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn an_idle_http1_connection_outlives_the_headers_timeout_until_the_idle_timeout() {
    bounded(30, async {
        let backend = echo("backend", "v1").await;
        let addr = free_addr();
        let _proxy = Proxy::start(
            vec![
                short_timeouts(addr),
                to_backend("5s"),
                static_cluster("backend", &[backend.addr]),
            ],
            addr,
        )
        .await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let first = sender.send_request(get_request("/one")).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        drop(first);
        // Idle for several request headers timeouts: still open.
        tokio::time::sleep(Duration::from_millis(800)).await;
        sender.ready().await.unwrap();
        let second = sender.send_request(get_request("/two")).await.unwrap();
        assert_eq!(second.status(), StatusCode::OK);
        drop(second);
        // Then idle for good: the proxy closes it (the connection task
        // ends without the client closing anything).
        let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
        assert!(closed.is_ok(), "the idle connection was never closed");
        assert_eq!(backend.seen("/one").len() + backend.seen("/two").len(), 2);
    })
    .await;
}

#[tokio::test]
async fn an_idle_http2_connection_gets_a_goaway_after_the_idle_timeout() {
    bounded(30, async {
        let backend = echo("backend", "v1").await;
        let addr = free_addr();
        let _proxy = Proxy::start(
            vec![
                short_timeouts(addr),
                to_backend("5s"),
                static_cluster("backend", &[backend.addr]),
            ],
            addr,
        )
        .await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = |path: &str| {
            Request::get(format!("http://a{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        assert_eq!(
            sender.send_request(req("/one")).await.unwrap().status(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            sender.send_request(req("/two")).await.unwrap().status(),
            StatusCode::OK
        );
        let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
        assert!(closed.is_ok(), "the idle connection was never closed");
    })
    .await;
}

#[tokio::test]
async fn a_request_with_nothing_moving_ends_with_408_at_the_stream_idle_timeout() {
    bounded(30, async {
        // The upstream takes the request and never answers; the route
        // has no timeout of its own.
        let held = held("held").await;
        let addr = free_addr();
        let proxy = Proxy::start(
            vec![
                http_listener_with("http", addr, "80", json!({"streamIdleTimeout": "0.3s"})),
                to_backend("0s"),
                static_cluster("backend", &[held.addr]),
            ],
            addr,
        )
        .await;
        let reply = get(&h1(), addr, "a", "/stuck").await;
        assert_eq!(reply.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(reply.body, "stream timeout");
        let record = proxy.last_request().await;
        assert!(
            record.flags.contains(ResponseFlags::STREAM_IDLE_TIMEOUT),
            "{record:?}"
        );
    })
    .await;
}

/// The cluster `backend` over `addr`, HTTP/1.1 or HTTP/2, whose idle
/// upstream connections close after 0.5 s.
fn idle_cluster(addr: SocketAddr, h2: bool) -> mesh_proxy::resources::Resource {
    let protocol = if h2 {
        json!({"http2ProtocolOptions": {}})
    } else {
        json!({"httpProtocolOptions": {}})
    };
    static_cluster_with(
        "backend",
        &[addr],
        json!({"typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "commonHttpProtocolOptions": {"idleTimeout": "0.5s"},
                "explicitHttpConfig": protocol}}}),
    )
}

async fn idle_upstream_connections_are_closed(h2: bool) {
    bounded(30, async {
        let backend = counting().await;
        let addr = free_addr();
        let _proxy = Proxy::start(
            vec![
                http_listener("http", addr, "80"),
                to_backend("5s"),
                idle_cluster(backend.addr, h2),
            ],
            addr,
        )
        .await;
        assert_eq!(get(&h1(), addr, "a", "/one").await.status, StatusCode::OK);
        assert_eq!(backend.opened(), 1);
        // Nothing more to send: the proxy closes its pooled connection.
        let closed = eventually(Duration::from_secs(10), || async {
            (backend.closed() == 1).then_some(())
        })
        .await;
        assert!(
            closed.is_some(),
            "the idle upstream connection was never closed"
        );
        // The next request opens a new one.
        assert_eq!(get(&h1(), addr, "a", "/two").await.status, StatusCode::OK);
        assert_eq!(backend.opened(), 2);
    })
    .await;
}

#[tokio::test]
async fn idle_upstream_http1_connections_are_closed_after_the_clusters_idle_timeout() {
    idle_upstream_connections_are_closed(false).await;
}

#[tokio::test]
async fn idle_upstream_http2_connections_are_closed_after_the_clusters_idle_timeout() {
    idle_upstream_connections_are_closed(true).await;
}

#[tokio::test]
async fn a_tcp_connection_with_no_bytes_either_way_is_closed_on_both_sides() {
    bounded(30, async {
        // A TCP echo backend that reports when a connection that carried
        // bytes is closed (the readiness probe's carries none).
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = socket.local_addr().unwrap();
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = socket.accept().await {
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let (mut buf, mut echoed) = ([0u8; 1024], false);
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        echoed = true;
                        s.write_all(&buf[..n]).await.unwrap();
                    }
                    if echoed {
                        let _ = closed_tx.send(());
                    }
                });
            }
        });
        let addr = free_addr();
        let tcp = json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "statPrefix": "backend", "cluster": "backend", "idleTimeout": "0.5s"}});
        let proxy = Proxy::start(
            vec![
                listener(json!({"name": "tcp",
                    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": addr.port()}},
                    "filterChains": [{"filters": [tcp]}]})),
                static_cluster("backend", &[upstream]),
            ],
            addr,
        )
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        // Then silence: the proxy closes both sides.
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the client side was never closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        tokio::time::timeout(Duration::from_secs(10), closed_rx.recv())
            .await
            .expect("the upstream side was never closed")
            .unwrap();
        let record = eventually(Duration::from_secs(5), || async {
            let records = proxy.records.connections.lock().unwrap();
            records.iter().find(|r| r.bytes_received > 0).cloned()
        })
        .await
        .unwrap();
        assert!(record.flags.contains(ResponseFlags::STREAM_IDLE_TIMEOUT), "{record:?}");
        assert_eq!((record.bytes_received, record.bytes_sent), (5, 5));
    })
    .await;
}
