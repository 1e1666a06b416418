//! mesh-echo over real loopback sockets: identity and headers echoed over
//! HTTP/1.1 and h2c, misbehaviour on cue, and outbound calls.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::echo::{Behaviour, EchoConfig, EchoResponse};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioExecutor;

async fn start(name: &str, behaviour: Behaviour) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Arc::new(EchoConfig {
        name: name.into(),
        version: "v2".into(),
        namespace: "default".into(),
        behaviour,
        log: None,
    });
    tokio::spawn(e2e::echo::serve(listener, config));
    addr
}

async fn get(url: &str, http2: bool) -> (u16, EchoResponse) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http::<Empty<Bytes>>();
    let req = http::Request::get(url)
        .header("x-test", "yes")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn answers_with_identity_and_headers_on_h1_and_h2c() {
    let addr = start("reviews-v2", Behaviour::default()).await;
    for http2 in [false, true] {
        let (status, body) = get(&format!("http://{addr}/reviews/1?x=1"), http2).await;
        assert_eq!(status, 200);
        assert_eq!(body.name, "reviews-v2");
        assert_eq!(body.version, "v2");
        assert_eq!(body.path, "/reviews/1?x=1");
        assert_eq!(body.headers.get("x-test").map(String::as_str), Some("yes"));
        assert_eq!(body.protocol, if http2 { "HTTP/2.0" } else { "HTTP/1.1" });
        assert_eq!(body.host, addr.to_string());
    }
}

#[tokio::test]
async fn misbehaves_on_cue() {
    let addr = start("ratings", Behaviour::default()).await;
    let (status, _) = get(&format!("http://{addr}/?status=503"), false).await;
    assert_eq!(status, 503);
    let started = Instant::now();
    let (status, _) = get(&format!("http://{addr}/?delay=200ms"), false).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let failing = start(
        "broken",
        Behaviour {
            status: 500,
            delay: None,
        },
    )
    .await;
    let (status, body) = get(&format!("http://{failing}/"), false).await;
    assert_eq!((status, body.name.as_str()), (500, "broken"));
}

#[tokio::test]
async fn calls_other_services_on_request() {
    let backend = start("details", Behaviour::default()).await;
    let front = start("productpage", Behaviour::default()).await;
    let (status, body) = get(
        &format!("http://{front}/?call=http://{backend}/details"),
        false,
    )
    .await;
    assert_eq!(status, 200);
    let upstream = body.upstream.unwrap();
    assert_eq!(upstream["status"], 200);
    assert_eq!(upstream["body"]["name"], "details");
    assert_eq!(upstream["body"]["path"], "/details");
}
