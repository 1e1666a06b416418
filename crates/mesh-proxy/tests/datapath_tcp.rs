//! The TCP data path on loopback: plain TCP proxying, TLS passthrough
//! chosen by SNI, and a server-first protocol that must not wait for the
//! client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_test_support::tls::client_hello;
use serde_json::json;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn address(addr: SocketAddr) -> serde_json::Value {
    json!({"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}})
}

async fn read_some(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn tcp_proxy_carries_bytes_both_ways() {
    bounded(20, async {
        let upstream = tcp_backend("echo", None).await;
        let addr = free_addr();
        let proxy = Proxy::start(
            vec![
                listener(json!({"name": "tcp", "address": address(addr), "filterChains": [{"filters": [tcp_proxy("echo")]}]})),
                static_cluster("echo", &[upstream]),
            ],
            addr,
        )
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        assert_eq!(read_some(&mut s).await, b"echo:hello");
        s.write_all(b"again").await.unwrap();
        assert_eq!(read_some(&mut s).await, b"echo:again");
        drop(s);
        // (The readiness probe made a connection of its own, without bytes.)
        let record = eventually(Duration::from_secs(5), || async {
            proxy.records.connections.lock().unwrap().iter().find(|r| r.bytes_received > 0).cloned()
        })
        .await
        .unwrap();
        assert_eq!(record.bytes_received, 10);
        assert_eq!(record.bytes_sent, 20);
        assert_eq!(record.cluster.as_deref(), Some("echo"));
    })
    .await;
}

#[tokio::test]
async fn tls_passthrough_routes_by_server_name() {
    bounded(20, async {
        let (a, b) = (tcp_backend("a", None).await, tcp_backend("b", None).await);
        let addr = free_addr();
        let proxy_listener = listener(json!({
            "name": "passthrough",
            "address": address(addr),
            "listenerFilters": [{"name": "envoy.filters.listener.tls_inspector", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
            "filterChains": [
                {"name": "a", "filterChainMatch": {"serverNames": ["a.example.com"]}, "filters": [tcp_proxy("a")]},
                {"name": "b", "filterChainMatch": {"serverNames": ["*.b.example.com"]}, "filters": [tcp_proxy("b")]},
            ],
        }));
        let _proxy = Proxy::start(
            vec![proxy_listener, static_cluster("a", &[a]), static_cluster("b", &[b])],
            addr,
        )
        .await;
        for (sni, expected) in [("a.example.com", "a"), ("x.b.example.com", "b"), ("A.EXAMPLE.COM", "a")] {
            let hello = client_hello(sni, &[]);
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&hello).await.unwrap();
            let reply = read_some(&mut s).await;
            // The upstream got the ClientHello untouched.
            let mut expect = format!("{expected}:").into_bytes();
            expect.extend_from_slice(&hello);
            assert_eq!(reply, expect, "{sni}");
        }
        // No chain for this name: the connection is closed.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&client_hello("c.example.com", &[])).await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0);
    })
    .await;
}

#[tokio::test]
async fn a_server_first_protocol_is_not_held_up() {
    bounded(10, async {
        let mysql = tcp_backend("mysql", Some("greeting")).await;
        let web = tcp_backend("web", None).await;
        let addr = free_addr();
        // Connections to this port never need the ClientHello: its chain
        // matches on the destination port only.
        let l = listener(json!({
            "name": "inbound",
            "address": address(addr),
            "listenerFilters": [{"name": "envoy.filters.listener.tls_inspector", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
            "filterChains": [
                {"name": "mysql", "filterChainMatch": {"destinationPort": addr.port()}, "filters": [tcp_proxy("mysql")]},
                {"name": "web", "filterChainMatch": {"destinationPort": 1, "serverNames": ["web"]}, "filters": [tcp_proxy("web")]},
            ],
        }));
        let _proxy = Proxy::start(vec![l, static_cluster("mysql", &[mysql]), static_cluster("web", &[web])], addr).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The client says nothing; the server's greeting still arrives.
        assert_eq!(read_some(&mut s).await, b"greeting");
    })
    .await;
}
