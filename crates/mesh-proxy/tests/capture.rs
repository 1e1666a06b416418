//! Transparent capture end to end in network namespaces: `mesh-proxy
//! iptables` rules applied, a client that knows nothing about the proxy, and
//! a capture listener that finds out where the client wanted to go with
//! [`socket::original_dst`].
//!
//! The capture listener here is a plain `copy_bidirectional` (or a fixed
//! answer), standing in for the proxy's 15001/15006 listeners, so these tests
//! prove the rules and the socket option, not the HTTP data path. They need
//! root, `ip`, iptables, `setpriv` and `curl` (CI has all of them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::Arc;
use std::time::Duration;

use mesh_proxy::iptables::{self, Args};
use mesh_proxy::socket;
use mesh_test_support::netns::{Namespace, require_program, run_bounded, veth_pair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const VIP: &str = "10.96.0.10";

fn require_tools() {
    for (program, package) in [
        ("iptables-restore", "iptables"),
        ("iptables-save", "iptables"),
        ("setpriv", "util-linux"),
        ("curl", "curl"),
    ] {
        require_program(program, package);
    }
}

fn apply(ns: &Namespace, argv: &[&str]) {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }
    let argv = std::iter::once("iptables").chain(argv.iter().copied());
    let args = <Cli as clap::Parser>::try_parse_from(argv).unwrap().args;
    ns.run_in(|| iptables::run(&args))
        .unwrap_or_else(|e| panic!("applying capture rules in {}: {e}", ns.name()));
}

/// A tokio listener bound inside `ns`.
fn listen_in(ns: &Namespace, addr: &str) -> TcpListener {
    let listener = ns
        .run_in(|| StdListener::bind(addr))
        .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()));
    listener.set_nonblocking(true).unwrap();
    TcpListener::from_std(listener).unwrap()
}

/// A tokio stream connected from inside `ns`. The connect completes in
/// the kernel (listen backlog), so nobody needs to be accepting yet.
fn connect_in(ns: &Namespace, addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().unwrap();
    let stream = ns.run_in(|| StdStream::connect_timeout(&addr, CONNECT_TIMEOUT))?;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Answers every connection on `listener` with a minimal HTTP response
/// whose body is `body`, after reading the request head.
fn serve_text(listener: TcpListener, body: &'static str) {
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
}

/// Sends a GET over `stream` and returns the response body.
async fn get(mut stream: TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or(response)
}

/// `curl` inside `ns` as the proxy's UID/GID 1337; its stdout, or its
/// error.
fn curl_as_proxy_user(ns: &Namespace, url: &str) -> Result<String, String> {
    let mut command = ns.exec("setpriv");
    command.args([
        "--reuid=1337",
        "--regid=1337",
        "--clear-groups",
        "curl",
        "-sS",
        "--max-time",
        "5",
        url,
    ]);
    let output = run_bounded(&mut command, Duration::from_secs(10));
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_connection_to_a_service_vip_reaches_the_capture_listener() {
    require_tools();
    let ns = Arc::new(Namespace::create("capout"));
    ns.add_dummy("dummy0", "10.244.0.5/24");
    ns.add_default_route("dummy0");
    apply(&ns, &[]);

    let capture = listen_in(&ns, "0.0.0.0:15001");
    let backend = listen_in(&ns, "127.0.0.1:0");
    let backend_addr = backend.local_addr().unwrap();
    serve_text(backend, "hello from the backend");

    // The stand-in proxy: learn the original destination, then splice the
    // connection to the backend (dialled from inside the namespace).
    let (dst_tx, mut dst_rx) = mpsc::unbounded_channel();
    let proxy_ns = ns.clone();
    tokio::spawn(async move {
        let (mut downstream, _) = capture.accept().await.unwrap();
        dst_tx.send(socket::original_dst(&downstream)).unwrap();
        let upstream = tokio::task::spawn_blocking(move || {
            proxy_ns.run_in(|| StdStream::connect_timeout(&backend_addr, CONNECT_TIMEOUT))
        })
        .await
        .unwrap()
        .unwrap();
        upstream.set_nonblocking(true).unwrap();
        let mut upstream = TcpStream::from_std(upstream).unwrap();
        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    });

    tokio::time::timeout(TEST_TIMEOUT, async {
        let client = connect_in(&ns, &format!("{VIP}:80")).unwrap();
        // The client believes it talks to the VIP.
        assert_eq!(client.peer_addr().unwrap().to_string(), format!("{VIP}:80"));
        let body = get(client).await;
        assert_eq!(body, "hello from the backend");
        let original = dst_rx.recv().await.unwrap().unwrap();
        assert_eq!(original.to_string(), format!("{VIP}:80"));
    })
    .await
    .expect("capture round trip timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connection_is_redirected_to_15006_with_its_original_destination() {
    require_tools();
    let pod = Namespace::create("capin");
    let client = Namespace::create("capcl");
    veth_pair(&pod, "10.0.0.1/24", &client, "10.0.0.2/24");
    apply(&pod, &[]);

    let inbound = listen_in(&pod, "0.0.0.0:15006");

    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut stream = connect_in(&client, "10.0.0.1:8080").unwrap();
        let (mut accepted, peer) = inbound.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "10.0.0.2");
        assert_eq!(
            socket::original_dst(&accepted).unwrap().to_string(),
            "10.0.0.1:8080"
        );
        // Bytes flow through the redirected connection both ways.
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        accepted.write_all(b"pong").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // The proxy's own health port is excluded: nothing listens on it,
        // so the client is refused instead of landing on 15006.
        let err = connect_in(&client, "10.0.0.1:15021").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    })
    .await
    .expect("inbound capture timed out");
}

/// A pod namespace whose default route leads to a "remote" namespace that
/// really owns the service VIP and answers "direct" on ports 80 and 9999;
/// the pod's 15001 capture listener answers "captured".
struct OutboundWorld {
    pod: Namespace,
    _remote: Namespace,
}

fn outbound_world(prefix: &str, argv: &[&str]) -> OutboundWorld {
    require_tools();
    let pod = Namespace::create(prefix);
    let remote = Namespace::create("capremote");
    veth_pair(&pod, "10.0.1.1/24", &remote, "10.0.1.2/24");
    pod.add_default_route_via("10.0.1.2");
    remote.add_address("lo", &format!("{VIP}/32"));
    serve_text(listen_in(&remote, &format!("{VIP}:80")), "direct");
    serve_text(listen_in(&remote, &format!("{VIP}:9999")), "direct");
    apply(&pod, argv);
    serve_text(listen_in(&pod, "0.0.0.0:15001"), "captured");
    OutboundWorld {
        pod,
        _remote: remote,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_users_connections_are_not_captured() {
    let world = outbound_world("capuid", &[]);
    tokio::time::timeout(TEST_TIMEOUT, async {
        // An app (root here) is captured...
        let app = connect_in(&world.pod, &format!("{VIP}:80")).unwrap();
        assert_eq!(get(app).await, "captured");
        // ...the proxy's UID goes straight to the real destination.
        let pod = &world.pod;
        let direct =
            tokio::task::block_in_place(|| curl_as_proxy_user(pod, &format!("http://{VIP}:80/")));
        assert_eq!(direct.as_deref(), Ok("direct"));
    })
    .await
    .expect("uid exclusion check timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_outbound_ports_are_not_captured() {
    let world = outbound_world("capport", &["--exclude-outbound-ports", "9999"]);
    tokio::time::timeout(TEST_TIMEOUT, async {
        let excluded = connect_in(&world.pod, &format!("{VIP}:9999")).unwrap();
        assert_eq!(get(excluded).await, "direct");
        let captured = connect_in(&world.pod, &format!("{VIP}:80")).unwrap();
        assert_eq!(get(captured).await, "captured");
    })
    .await
    .expect("port exclusion check timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_capture_listener_sees_ipv4_and_ipv6_original_destinations() {
    require_tools();
    require_program("ip6tables-restore", "iptables");
    let ns = Namespace::create("cap6");
    ns.add_dummy("dummy0", "10.244.0.5/24");
    // nodad: usable at once as a source address, no duplicate detection wait.
    ns.ip(&["addr", "add", "fd00:244::5/64", "dev", "dummy0", "nodad"]);
    ns.add_default_route("dummy0");
    ns.ip(&["-6", "route", "add", "default", "dev", "dummy0"]);
    apply(&ns, &["--ipv6", "always"]);

    // One [::] listener takes both families, as a proxy binding [::]:15001
    // would; IPv4 connections arrive with IPv4-mapped addresses.
    let capture = listen_in(&ns, "[::]:15001");

    tokio::time::timeout(TEST_TIMEOUT, async {
        for vip in [format!("{VIP}:80"), "[fd00:96::10]:8080".to_string()] {
            let _client = connect_in(&ns, &vip).unwrap();
            let (accepted, _) = capture.accept().await.unwrap();
            assert_eq!(socket::original_dst(&accepted).unwrap().to_string(), vip);
        }
    })
    .await
    .expect("dual-stack capture timed out");
}
