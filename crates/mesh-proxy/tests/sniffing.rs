//! Protocol sniffing on the listeners mesh-control emits for a sidecar's
//! outbound traffic (golden case `listeners_protocol_sniffing`): a service
//! port without a declared protocol gets the HTTP inspector, an HTTP chain
//! (ALPN `http/1.1`, `h2c`) and a TCP chain; a port declared TCP (mysql)
//! gets only the TCP chain. The listeners are taken from the golden file
//! as they are, bound on loopback instead of waiting for a capture
//! hand-off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use http::{StatusCode, Version};
use mesh_proxy::resources::Resource;
use serde_json::{Value, json};
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What mesh-control sends the `client` sidecar.
const GOLDEN: &str =
    include_str!("../../mesh-control/tests/golden/listeners_protocol_sniffing/client.json");
const LEGACY: &str = "legacy.default.svc.cluster.local";
const DB: &str = "db.default.svc.cluster.local";

/// The golden resource of `kind` (`listeners`, `routes`) named `name`.
fn golden(kind: &str, name: &str) -> Value {
    let all: Value = serde_json::from_str(GOLDEN).unwrap();
    all[kind]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the golden file"))
        .clone()
}

/// The golden outbound listener `name`, bound on `addr`.
fn bound_on(name: &str, addr: SocketAddr) -> Resource {
    let mut l = golden("listeners", name);
    l["address"] = json!({"socketAddress": {"address": "127.0.0.1", "portValue": addr.port()}});
    l["bindToPort"] = json!(true);
    listener(l)
}

/// Reads until `want` bytes arrived (or the stream ends).
async fn read_exactly(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while out.len() < want {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[tokio::test]
async fn sniffed_and_declared_ports_serve_http_tcp_and_server_first_protocols() {
    bounded(30, async {
        let (v1, v2) = (echo("legacy", "v1").await, echo("legacy", "v2").await);
        let legacy_tcp = tcp_backend("legacy-tcp", None).await;
        let mysql = tcp_backend("mysql", Some("greeting")).await;
        let (sniffed, declared) = (free_addr(), free_addr());
        let proxy = Proxy::start(
            vec![
                bound_on("10.96.3.10_8080", sniffed),
                bound_on("10.96.3.20_3306", declared),
                route(golden("routes", &format!("{LEGACY}:8080"))),
                static_cluster(&format!("outbound|8080|v1|{LEGACY}"), &[v1.addr]),
                static_cluster(&format!("outbound|8080|v2|{LEGACY}"), &[v2.addr]),
                static_cluster(&format!("outbound|8080||{LEGACY}"), &[legacy_tcp]),
                static_cluster(&format!("outbound|3306||{DB}"), &[mysql]),
            ],
            sniffed,
        )
        .await;
        wait_listening(declared).await;

        // HTTP/1.1 and h2c take the HTTP chain, where the VirtualService
        // routes (end-user: jason goes to v2).
        let reply = get(&h1(), sniffed, "legacy:8080", "/plain").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version(), "v1");
        let record = proxy.last_request().await;
        assert_eq!(record.filter_chain, format!("{LEGACY}:8080_http"));
        assert_eq!(record.protocol, Version::HTTP_11);
        let reply = send_h2(sniffed, "legacy:8080", "/h2c", &[("end-user", "jason")]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version(), "v2");
        assert_eq!(proxy.last_request().await.protocol, Version::HTTP_2);

        // A client-first protocol that is not HTTP (redis) falls to the
        // TCP chain, its bytes untouched.
        let mut s = TcpStream::connect(sniffed).await.unwrap();
        let ping = b"*1\r\n$4\r\nPING\r\n";
        s.write_all(ping).await.unwrap();
        let mut expected = b"legacy-tcp:".to_vec();
        expected.extend_from_slice(ping);
        assert_eq!(read_exactly(&mut s, expected.len()).await, expected);

        // On the port declared TCP nothing is sniffed: a server-first
        // protocol's greeting reaches a client that never writes.
        let mut s = TcpStream::connect(declared).await.unwrap();
        assert_eq!(read_exactly(&mut s, b"greeting".len()).await, b"greeting");
    })
    .await;
}
