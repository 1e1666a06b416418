//! Bad input from clients, upstreams and the control plane, as the proxy
//! must take it: a malformed request gets 400, oversized headers 431, a
//! slow client is disconnected, an upstream speaking garbage gives 502
//! with Envoy's `UPE`, one bad connection never disturbs another, and
//! nothing panics. Clients here write raw bytes on TCP sockets.
//!
//! Two property tests (proptest; cargo-fuzz needs a nightly toolchain)
//! fuzz the two parsers that face untrusted input: arbitrary request
//! heads against the real listener here, and arbitrary well-typed xDS
//! resources through the config compiler in `bad_config.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{StatusCode, Version};
use mesh_proxy::proxy::ResponseFlags;
use mesh_proxy::resources::Resource;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP listener on `addr` (route configuration `80`) whose connection
/// manager has the `extra` settings.
fn listener_with(addr: SocketAddr, extra: Value) -> Resource {
    http_listener_with(&format!("http_{}", addr.port()), addr, "80", extra)
}

/// Every path to the cluster `echo`.
fn to_echo() -> Resource {
    route_config(
        "80",
        json!([{"match": {"prefix": "/"}, "route": {"cluster": "echo", "timeout": "5s"}}]),
    )
}

/// Writes `bytes` on a new connection (then half-closes when `close`)
/// while reading until the proxy closes; what it answered, bounded in
/// time. Reading while writing matters: a proxy that answers before
/// reading everything (400, 431) resets the connection when it closes,
/// and a reset can take an unread answer with it. A reset counts as a
/// close.
async fn exchange(addr: SocketAddr, bytes: &[u8], close: bool) -> Vec<u8> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = s.into_split();
    let writer = async {
        // The proxy may answer and close before reading everything.
        let _ = write.write_all(bytes).await;
        if close {
            let _ = write.shutdown().await;
        }
        write
    };
    let (reply, _write) = tokio::join!(read_until_closed(&mut read), writer);
    reply
}

async fn read_until_closed(s: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the proxy kept the connection open; it sent {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

fn status_line(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn malformed_requests_get_400_and_are_recorded_as_dpe() {
    bounded(30, async {
        let backend = echo("echo", "v1").await;
        let addr = free_addr();
        let proxy = Proxy::start(
            vec![
                listener_with(addr, json!({})),
                to_echo(),
                static_cluster("echo", &[backend.addr]),
            ],
            addr,
        )
        .await;
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            // HTTP/1.0 without a Host: parsed, but there is nothing to route by.
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            let reply = exchange(addr, bad, false).await;
            assert!(
                status_line(&reply).starts_with("HTTP/1.1 400")
                    || status_line(&reply).starts_with("HTTP/1.0 400"),
                "{:?} got {:?}",
                String::from_utf8_lossy(bad),
                String::from_utf8_lossy(&reply)
            );
        }
        assert!(
            backend.log.lock().unwrap().is_empty(),
            "no bad request reached the backend"
        );
        let records = eventually(Duration::from_secs(5), || async {
            let r = proxy.records.requests.lock().unwrap().clone();
            (r.len() == 7).then_some(r)
        })
        .await
        .unwrap_or_else(|| panic!("{:#?}", proxy.records.requests.lock().unwrap()));
        for r in &records {
            assert_eq!(r.response_code, 400, "{r:?}");
            assert!(
                r.flags.contains(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR),
                "{r:?}"
            );
        }
        assert_eq!(
            records.iter().filter(|r| r.method.as_str() == "-").count(),
            6,
            "requests that did not parse have no method"
        );
        // The proxy still serves.
        assert_eq!(get(&h1(), addr, "a", "/").await.status, StatusCode::OK);
    })
    .await;
}

fn with_header(bytes: usize) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "x".repeat(bytes)
    )
    .into_bytes()
}

#[tokio::test]
async fn oversized_headers_get_431_at_the_listeners_limit_or_envoys_default() {
    bounded(30, async {
        let backend = echo("echo", "v1").await;
        let (small, default) = (free_addr(), free_addr());
        let proxy = Proxy::start(
            vec![
                listener_with(small, json!({"maxRequestHeadersKb": 16})),
                listener_with(default, json!({})),
                to_echo(),
                static_cluster("echo", &[backend.addr]),
            ],
            small,
        )
        .await;
        wait_listening(default).await;
        for (addr, size, expected) in [
            (small, 10 * 1024, "200"),
            (small, 20 * 1024, "431"),
            // Envoy's default limit is 60 KiB.
            (default, 50 * 1024, "200"),
            (default, 70 * 1024, "431"),
        ] {
            let reply = exchange(addr, &with_header(size), false).await;
            let line = status_line(&reply);
            assert!(
                line.starts_with(&format!("HTTP/1.1 {expected}")),
                "{size} bytes to {addr}: {line}"
            );
        }
        let r = proxy.records.requests.lock().unwrap().clone();
        assert!(
            r.iter().any(|r| r.response_code == 431
                && r.details.as_deref() == Some("http1.headers_too_large")),
            "{r:#?}"
        );
    })
    .await;
}

#[tokio::test]
async fn slow_and_bad_clients_are_disconnected_without_disturbing_others() {
    bounded(60, async {
        let backend = echo("echo", "v1").await;
        let addr = free_addr();
        let _proxy = Proxy::start(
            vec![
                // A silent connection is idle, not slow: the idle timeout
                // closes it.
                listener_with(
                    addr,
                    json!({"requestHeadersTimeout": "0.5s",
                           "commonHttpProtocolOptions": {"idleTimeout": "1s"}}),
                ),
                to_echo(),
                static_cluster("echo", &[backend.addr]),
            ],
            addr,
        )
        .await;
        // Bad connections first, all held open.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let mut preface = TcpStream::connect(addr).await.unwrap();
        preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let mut trickle = TcpStream::connect(addr).await.unwrap();
        let trickler = tokio::spawn(async move {
            // One header byte at a time, never finishing.
            for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "
                .iter()
                .cycle()
                .take(200)
            {
                if trickle.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        });
        let garbage = tokio::spawn(async move {
            exchange(addr, &[0xde, 0xad, 0xbe, 0xef].repeat(4096), false).await
        });

        // Meanwhile every good request is served, HTTP/1.1 and HTTP/2.
        let h1 = h1();
        let h2 = client(Version::HTTP_2);
        let good = (0..20).map(|i| {
            let c = if i % 2 == 0 { h1.clone() } else { h2.clone() };
            async move { get(&c, addr, "a", &format!("/good/{i}")).await.status }
        });
        for status in futures_join(good).await {
            assert_eq!(status, StatusCode::OK);
        }

        // The slow ones are closed by the proxy (no answer for a head that
        // never finished), the garbage one gets 400.
        for (name, s) in [
            ("silent", &mut silent),
            ("partial head", &mut partial),
            ("partial preface", &mut preface),
        ] {
            let reply = read_until_closed(s).await;
            assert!(
                reply.is_empty() || status_line(&reply).contains(" 408"),
                "{name}: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        assert!(
            trickler.await.unwrap(),
            "a client trickling its headers was never disconnected"
        );
        // 400, unless the reset of the closed connection overtook it.
        let reply = garbage.await.unwrap();
        assert!(
            reply.is_empty() || status_line(&reply).starts_with("HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
        // A new client: the idle timeout may be closing the pooled ones.
        assert_eq!(
            get(&support::h1(), addr, "a", "/after").await.status,
            StatusCode::OK
        );
    })
    .await;
}

/// Runs the futures concurrently; their outputs in order.
async fn futures_join<F: Future<Output = T> + Send + 'static, T: Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// An upstream that reads a request and answers `answer` (then closes).
async fn bad_upstream(answer: &'static [u8]) -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = socket.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_protocol_errors_give_502_upe_and_closes_503_uc() {
    bounded(30, async {
        let garbage = bad_upstream(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
        let silent_close = bad_upstream(b"").await;
        let addr = free_addr();
        let proxy = Proxy::start(
            vec![
                listener_with(addr, json!({})),
                route_config(
                    "80",
                    json!([
                        {"match": {"prefix": "/garbage"}, "route": {"cluster": "garbage"}},
                        {"match": {"prefix": "/closed"}, "route": {"cluster": "closed"}},
                    ]),
                ),
                static_cluster("garbage", &[garbage]),
                static_cluster("closed", &[silent_close]),
            ],
            addr,
        )
        .await;
        let c = h1();
        let r = get(&c, addr, "a", "/garbage").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert!(
            r.text().ends_with("reset reason: protocol error"),
            "{}",
            r.text()
        );
        let rec = proxy.last_request().await;
        assert!(
            rec.flags.contains(ResponseFlags::UPSTREAM_PROTOCOL_ERROR),
            "{rec:?}"
        );
        assert_eq!(rec.upstream_host, Some(garbage.to_string()));

        let r = get(&c, addr, "a", "/closed").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        let rec = eventually(Duration::from_secs(5), || async {
            proxy.records.requests.lock().unwrap().get(1).cloned()
        })
        .await
        .unwrap();
        assert!(
            rec.flags
                .contains(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION),
            "{rec:?}"
        );
    })
    .await;
}

// --- fuzzing the request head ---

/// Panics seen on the threads of the runtime the fuzzed proxy runs on.
static PANICS: AtomicUsize = AtomicUsize::new(0);
const PROXY_THREAD: &str = "proxy-under-fuzz";

/// A proxy shared by every fuzz case, on a runtime of its own.
struct FuzzTarget {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    _proxy: Proxy,
    _backend: Backend,
}

static TARGET: LazyLock<FuzzTarget> = LazyLock::new(|| {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(PROXY_THREAD) {
            PANICS.fetch_add(1, Ordering::Relaxed);
        }
        previous(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(PROXY_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let addr = free_addr();
    let (proxy, backend) = runtime.block_on(async {
        let backend = echo("echo", "v1").await;
        let proxy = Proxy::start(
            vec![
                listener_with(
                    addr,
                    json!({"requestHeadersTimeout": "1s", "maxRequestHeadersKb": 4}),
                ),
                to_echo(),
                static_cluster("echo", &[backend.addr]),
            ],
            addr,
        )
        .await;
        (proxy, backend)
    });
    FuzzTarget {
        runtime,
        addr,
        _proxy: proxy,
        _backend: backend,
    }
});

/// Request heads that look like HTTP/1 with random parts in it.
fn request_head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("CONNECT".to_string()),
        Just("PRI".to_string()),
        "[A-Z]{0,8}",
        "\\PC{0,6}",
    ];
    let target = prop_oneof![
        Just("/".to_string()),
        Just("*".to_string()),
        "/[!-~]{0,40}",
        "[ -~]{0,30}",
        "http://[a-z.]{1,12}(:[0-9]{1,6})?/[a-z%]{0,8}",
    ];
    let version = prop_oneof![
        Just("HTTP/1.1".to_string()),
        Just("HTTP/1.0".to_string()),
        Just("HTTP/2.0".to_string()),
        "HTTP/[0-9]\\.[0-9]",
        "[ -~]{0,10}",
    ];
    let header = prop_oneof![
        ("[A-Za-z-]{1,12}", "[ -~]{0,30}").prop_map(|(n, v)| format!("{n}: {v}")),
        "[0-9]{0,25}".prop_map(|v| format!("Content-Length: {v}")),
        prop_oneof![
            Just("chunked"),
            Just("gzip, chunked"),
            Just("identity"),
            Just("chunked, chunked")
        ]
        .prop_map(|v| format!("Transfer-Encoding: {v}")),
        "[a-z0-9.:\\[\\]-]{0,20}".prop_map(|v| format!("Host: {v}")),
        Just("Expect: 100-continue".to_string()),
        Just("Connection: Upgrade\r\nUpgrade: websocket".to_string()),
        "\\PC{0,20}",
    ];
    let end = prop_oneof![Just("\r\n"), Just("\n"), Just("\r")];
    (
        method,
        target,
        version,
        vec(header, 0..8),
        end,
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(method, target, version, headers, end, body)| {
            let mut head = format!("{method} {target} {version}{end}");
            for h in headers {
                head.push_str(&h);
                head.push_str(end);
            }
            head.push_str(end);
            let mut bytes = head.into_bytes();
            bytes.extend(body);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever a client sends, it gets an HTTP answer or a close, the
    /// proxy never panics and keeps serving others.
    #[test]
    fn any_request_head_gets_an_answer_or_a_close(
        bytes in prop_oneof![vec(any::<u8>(), 0..1024), request_head()],
    ) {
        let target = &*TARGET;
        let (reply, good) = target.runtime.block_on(async {
            let reply = exchange(target.addr, &bytes, true).await;
            let good = try_send(&h1(), http::Method::GET, target.addr, "a", "/", &[]).await;
            (reply, good)
        });
        prop_assert!(
            reply.is_empty() || reply.starts_with(b"HTTP/1.1 ") || reply.starts_with(b"HTTP/1.0 "),
            "answer: {:?}", String::from_utf8_lossy(&reply)
        );
        prop_assert_eq!(PANICS.load(Ordering::Relaxed), 0);
        prop_assert_eq!(good.map(|r| r.status), Ok(StatusCode::OK));
    }
}
