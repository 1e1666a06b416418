//! STRICT_DNS and LOGICAL_DNS clusters: their hostnames are resolved with
//! the system resolver (here `localhost`, from /etc/hosts) and requests go
//! to the addresses found, as the access log's upstream host shows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::resources::*;
use support::*;

#[tokio::test]
async fn dns_clusters_send_requests_to_the_addresses_their_hostnames_resolve_to() {
    bounded(30, async {
        let backend = echo("backend", "v1").await;
        let port = backend.addr.port();
        let addr = free_addr();
        let dns_cluster = |name: &str, kind: &str| {
            cluster(json!({"name": name, "type": kind, "connectTimeout": "1s",
                "dnsRefreshRate": "0.2s", "dnsLookupFamily": "V4_ONLY",
                "loadAssignment": {"clusterName": name, "endpoints": [{"lbEndpoints": [
                    {"endpoint": {"address": {"socketAddress": {"address": "localhost", "portValue": port}}}}]}]}}))
        };
        let proxy = Proxy::start(
            vec![
                http_listener("http", addr, "80"),
                route_config(
                    "80",
                    json!([
                        {"match": {"prefix": "/strict"}, "route": {"cluster": "strict"}},
                        {"match": {"prefix": "/logical"}, "route": {"cluster": "logical"}},
                    ]),
                ),
                dns_cluster("strict", "STRICT_DNS"),
                dns_cluster("logical", "LOGICAL_DNS"),
            ],
            addr,
        )
        .await;
        let resolved = format!("127.0.0.1:{port}");
        for path in ["/strict", "/logical"] {
            let upstream = eventually(Duration::from_secs(10), || async {
                let reply = get(&h1(), addr, "a", path).await;
                assert_eq!(reply.status, StatusCode::OK);
                let record = proxy.last_request().await;
                (record.upstream_host.as_deref() == Some(resolved.as_str())).then_some(())
            })
            .await;
            assert!(
                upstream.is_some(),
                "{path}: requests never went to the resolved address {resolved}: {:?}",
                proxy.last_request().await.upstream_host
            );
        }
        assert!(!backend.seen("/strict").is_empty());
    })
    .await;
}
