//! The TCP proxy filter: picks a cluster (or a weighted one) and an
//! endpoint, connects within the cluster's connect timeout (retrying up
//! to `max_connect_attempts`), then splices bytes both ways until either
//! side closes. TLS passthrough is this too: the ClientHello was only
//! peeked, so it reaches the upstream untouched.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::net::TcpStream;

use crate::proxy::record::{ResponseFlags, TcpRecord};
use crate::proxy::{ConnInfo, Generation, Shared, pick_endpoint};
use crate::runtime::listener::TcpProxy;

/// Proxies `downstream` by `tcp`.
pub(crate) async fn proxy(
    mut downstream: TcpStream,
    conn: Arc<ConnInfo>,
    tcp: &TcpProxy,
    generation: Arc<Generation>,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    let cluster_name = tcp.target.pick().to_string();
    let mut record = TcpRecord {
        start: SystemTime::now(),
        listener: conn.listener.name.clone(),
        direction: conn.listener.direction,
        filter_chain: conn.chain.clone(),
        downstream_remote: conn.peer,
        downstream_local: conn.destination,
        server_name: conn.server_name.clone(),
        cluster: Some(cluster_name.clone()),
        upstream_host: None,
        flags: ResponseFlags::default(),
        bytes_received: 0,
        bytes_sent: 0,
        duration: std::time::Duration::ZERO,
    };
    let upstream = connect(&conn, &cluster_name, tcp, &generation, &mut record).await;
    if let Some(mut upstream) = upstream {
        // The TCP proxy's idle timeout is not enforced yet: connections
        // live until either side closes.
        let result = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        match result {
            Ok((from_client, to_client)) => {
                record.bytes_received = from_client;
                record.bytes_sent = to_client;
            }
            Err(e) => {
                tracing::debug!(error = %e, "proxied connection ended with an error");
                record
                    .flags
                    .insert(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
            }
        }
    }
    record.duration = started.elapsed();
    shared.observer.connection(&record);
}

async fn connect(
    conn: &ConnInfo,
    cluster_name: &str,
    tcp: &TcpProxy,
    generation: &Generation,
    record: &mut TcpRecord,
) -> Option<TcpStream> {
    let (Some(cluster), Some(pool)) = (
        generation.runtime.cluster(cluster_name),
        generation.upstreams.get(cluster_name),
    ) else {
        record.flags.insert(ResponseFlags::NO_CLUSTER_FOUND);
        tracing::debug!(cluster = cluster_name, "TCP proxy cluster not found");
        return None;
    };
    let mut tried = Vec::new();
    for _ in 0..tcp.max_connect_attempts {
        let Some((address, _endpoint)) = pick_endpoint(cluster, conn, None, None, &tried, true, 5)
        else {
            record.flags.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
            return None;
        };
        record.upstream_host = Some(address.to_string());
        match pool.connect_tcp(&address).await {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::debug!(upstream = %address, error = %e, "TCP proxy connect failed");
                tried.push(address);
            }
        }
    }
    record
        .flags
        .insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
    None
}
