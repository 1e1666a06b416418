//! The TCP proxy filter: picks a cluster (or a weighted one) and an
//! endpoint, connects within the cluster's connect timeout (retrying up
//! to `max_connect_attempts`), then splices bytes both ways until both
//! sides have closed, or until no byte has moved either way for the
//! proxy's `idle_timeout` (1 h by default), when both are closed (flag
//! `SI`). TLS passthrough is this too: the ClientHello was only peeked,
//! so it reaches the upstream untouched. A connection that would take the
//! cluster past its `max_connections` circuit breaker is closed at once
//! (flag `UO`), as Envoy's TCP proxy does.
//!
//! Istio's TCP metadata exchange runs on both ends, only where ALPN
//! `istio-peer-exchange` was negotiated (so never toward a proxy that does
//! not speak it): as the server, when the chain has
//! `istio.metadata_exchange` and the downstream negotiated it; as the
//! client, when the cluster has the upstream filter (only then is the ALPN
//! offered) and the upstream selected it. Each side writes its header
//! first and strips the peer's from the first bytes it reads
//! ([`crate::telemetry::peer::exchange`]); the record then names the
//! other side's workload.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use mesh_ca::tls::MeshTls;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::proxy::pool::UpstreamError;
use crate::proxy::record::{Reported, ResponseFlags, TcpRecord};
use crate::proxy::{ConnInfo, Generation, Shared, Stream, outlier, pick_endpoint, upstream_tls};
use crate::runtime::listener::{Direction, TcpProxy};
use crate::telemetry::peer::exchange::{self, PeerReader};

/// How often an open connection's TCP metrics are reported (Istio's
/// stats filter default, `tcp_reporting_duration`).
const TCP_REPORTING_INTERVAL: Duration = Duration::from_secs(5);

/// Time allowed for writing this proxy's exchange header.
const HEADER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Proxies `downstream` by `tcp`.
pub(crate) async fn proxy(
    downstream: Stream,
    conn: Arc<ConnInfo>,
    tcp: &TcpProxy,
    generation: Arc<Generation>,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    let cluster_name = tcp.target.pick().to_string();
    let mut record = record(&conn, tcp);
    record.cluster = Some(cluster_name.clone());
    let identity = shared.identity();
    // Counted for as long as the upstream connection lives.
    let counted = generation
        .upstreams
        .get(&cluster_name)
        .map(|p| p.tcp_slot());
    if let Some(None) = counted {
        tracing::debug!(cluster = %cluster_name, "max_connections reached; closing the connection");
        record.flags.insert(ResponseFlags::UPSTREAM_OVERFLOW);
        record.duration = started.elapsed();
        shared.observer.connection(&record);
        crate::telemetry::access_log::log_connection(&tcp.access_logs, &record);
        return;
    }
    let local = shared.peer_metadata.as_deref();
    let negotiated = conn.session.as_ref().and_then(|s| s.alpn.as_deref());
    let mut downstream = if tcp.peer_exchange && negotiated == Some(exchange::ALPN) {
        let mut downstream = downstream;
        if let Some(local) = local
            && !write_header(&mut downstream, local).await
        {
            record
                .flags
                .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            record.duration = started.elapsed();
            shared.observer.connection(&record);
            crate::telemetry::access_log::log_connection(&tcp.access_logs, &record);
            return;
        }
        PeerReader::exchanging(downstream)
    } else {
        PeerReader::plain(downstream)
    };
    let upstream = connect(
        &conn,
        &cluster_name,
        tcp,
        &generation,
        identity.as_ref(),
        &mut record,
    )
    .await;
    if let Some(upstream) = upstream {
        let upstream = match upstream {
            Upstream::Exchanging(mut s) => match local {
                Some(local) if !write_header(&mut s, local).await => None,
                _ => Some(PeerReader::exchanging(s)),
            },
            Upstream::Plain(s) => Some(PeerReader::plain(s)),
        };
        match upstream {
            Some(mut upstream) => {
                // The side whose exchange header names the peer.
                let peer = match conn.listener.direction {
                    Direction::Inbound => downstream.peer_slot(),
                    _ => upstream.peer_slot(),
                };
                let observer = &shared.observer;
                splice(
                    &mut downstream,
                    &mut upstream,
                    tcp.idle_timeout,
                    &mut record,
                    |record| {
                        record.peer = peer.get().cloned();
                        observer.connection_progress(record);
                    },
                )
                .await;
                record.peer = peer.get().cloned();
            }
            None => record
                .flags
                .insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE),
        }
    }
    drop(counted);
    record.duration = started.elapsed();
    shared.observer.connection(&record);
    crate::telemetry::access_log::log_connection(&tcp.access_logs, &record);
}

/// Logs a connection of this TCP proxy's chain that a network filter
/// before it closed, as Envoy's TCP proxy logs it: its cluster, the
/// filter's `flags`, and `details` (`%CONNECTION_TERMINATION_DETAILS%`)
/// saying why. Envoy's filters judge on the first bytes, by when its TCP
/// proxy has often connected upstream already; here the filters judge
/// before any upstream connection is made, so the upstream host and local
/// address stay `-`. Only the access logs hear of it; the connection
/// metrics count proxied connections only.
pub(crate) fn refused(
    conn: &ConnInfo,
    tcp: &TcpProxy,
    flags: ResponseFlags,
    details: Option<String>,
) {
    let mut record = record(conn, tcp);
    record.cluster = Some(tcp.target.pick().to_string());
    record.flags = flags;
    record.termination_details = details;
    crate::telemetry::access_log::log_connection(&tcp.access_logs, &record);
}

/// The record of a connection on `conn`, before the proxy did anything.
fn record(conn: &ConnInfo, tcp: &TcpProxy) -> TcpRecord {
    TcpRecord {
        start: SystemTime::now(),
        listener: conn.listener.name.clone(),
        direction: conn.listener.direction,
        filter_chain: conn.chain.clone(),
        downstream_remote: conn.peer,
        downstream_local: conn.destination,
        server_name: conn.server_name.clone(),
        cluster: None,
        upstream_host: None,
        upstream_local: None,
        upstream_transport_failure: None,
        termination_details: None,
        flags: ResponseFlags::default(),
        bytes_received: 0,
        bytes_sent: 0,
        duration: Duration::ZERO,
        downstream_security: conn.security(),
        downstream_peer_principal: conn.peer_principal(),
        upstream_peer_principal: None,
        local_principal: if conn.listener.direction == Direction::Inbound {
            conn.local_principal()
        } else {
            None
        },
        stats: tcp.stats.clone(),
        peer: None,
        reported: Default::default(),
    }
}

/// An upstream connection, and whether it exchanges peer metadata.
enum Upstream {
    /// ALPN `istio-peer-exchange` was negotiated for a cluster that runs
    /// the exchange.
    Exchanging(Stream),
    /// Anything else.
    Plain(Stream),
}

/// Writes this proxy's exchange header to `stream`, before any byte of the
/// application; whether it went out in time.
async fn write_header(stream: &mut Stream, local: &crate::telemetry::peer::LocalMetadata) -> bool {
    let write = async {
        stream.write_all(local.tcp_header()).await?;
        stream.flush().await
    };
    match tokio::time::timeout(HEADER_WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "writing the peer exchange header failed");
            false
        }
        Err(_) => {
            tracing::debug!(timeout = ?HEADER_WRITE_TIMEOUT, "writing the peer exchange header timed out");
            false
        }
    }
}

/// Copies bytes both ways until both directions end (each end's EOF is
/// passed on as a half close), one fails, or nothing moved for `idle`.
async fn splice<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    idle: Option<Duration>,
    record: &mut TcpRecord,
    mut report: impl FnMut(&mut TcpRecord),
) where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity {
        base: Instant::now(),
        last: AtomicU64::new(0),
        received: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    };
    let (down_read, mut down_write) = tokio::io::split(downstream);
    let (up_read, mut up_write) = tokio::io::split(upstream);
    let mut from_client = Touching::new(down_read, &activity, &activity.received);
    let mut to_client = Touching::new(up_read, &activity, &activity.sent);
    let copies = async {
        let client_to_upstream = async {
            tokio::io::copy(&mut from_client, &mut up_write).await?;
            up_write.shutdown().await
        };
        let upstream_to_client = async {
            tokio::io::copy(&mut to_client, &mut down_write).await?;
            down_write.shutdown().await
        };
        tokio::try_join!(client_to_upstream, upstream_to_client).map(drop)
    };
    tokio::pin!(copies);
    let idle_timeout = activity.idle(idle);
    tokio::pin!(idle_timeout);
    let mut reports = tokio::time::interval_at(
        Instant::now() + TCP_REPORTING_INTERVAL,
        TCP_REPORTING_INTERVAL,
    );
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            r = &mut copies => break r,
            () = &mut idle_timeout => {
                tracing::debug!(timeout = ?idle, "no bytes either way for the idle timeout; closing both sides");
                record.flags.insert(ResponseFlags::STREAM_IDLE_TIMEOUT);
                break Ok(());
            }
            _ = reports.tick() => {
                record.bytes_received = activity.received.load(Ordering::Relaxed);
                record.bytes_sent = activity.sent.load(Ordering::Relaxed);
                report(record);
                record.reported = Reported {
                    opened: true,
                    bytes_received: record.bytes_received,
                    bytes_sent: record.bytes_sent,
                };
            }
        }
    };
    record.bytes_received = activity.received.load(Ordering::Relaxed);
    record.bytes_sent = activity.sent.load(Ordering::Relaxed);
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "proxied connection ended with an error");
        record
            .flags
            .insert(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
    }
}

/// When a byte last moved on a proxied connection, and how many.
struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last: AtomicU64,
    /// Bytes read from the downstream.
    received: AtomicU64,
    /// Bytes read from the upstream (sent to the downstream).
    sent: AtomicU64,
}

/// A read half that counts its bytes and marks the connection active.
struct Touching<'a, R> {
    inner: R,
    activity: &'a Activity,
    bytes: &'a AtomicU64,
}

// === impl Activity ===

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `timeout` (never when `None`).
    async fn idle(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let at = self.base + last + timeout;
            if at <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

// === impl Touching ===

impl<'a, R> Touching<'a, R> {
    fn new(inner: R, activity: &'a Activity, bytes: &'a AtomicU64) -> Self {
        Self {
            inner,
            activity,
            bytes,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Touching<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.bytes.fetch_add(read as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        poll
    }
}

async fn connect(
    conn: &ConnInfo,
    cluster_name: &str,
    tcp: &TcpProxy,
    generation: &Generation,
    identity: Option<&Arc<MeshTls>>,
    record: &mut TcpRecord,
) -> Option<Upstream> {
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
        let Some((address, endpoint)) =
            pick_endpoint(generation, cluster, conn, None, None, &tried, true, 5)
        else {
            record.flags.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
            return None;
        };
        record.upstream_host = Some(address.to_string());
        let attempt = match upstream_tls(generation, identity, cluster, endpoint.as_deref()) {
            Ok(tls) => {
                // Only a cluster that runs the exchange offers its ALPN.
                let tls = match tls {
                    Some(t) if cluster.config.peer_exchange && t.exchange.is_some() => {
                        let mut with = (*t).clone();
                        with.config = t.exchange.clone().unwrap_or_else(|| t.config.clone());
                        Some(Arc::new(with))
                    }
                    other => other,
                };
                let attempt = pool.connect_tcp(&address, tls.as_deref()).await;
                if let (Ok(Stream::ClientTls(s)), Some(tls)) = (&attempt, &tls) {
                    record.local_principal = tls.local_uri.clone();
                    record.upstream_peer_principal = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| crate::tls::PeerNames::of(c).uris.into_iter().next())
                        .map(Arc::from);
                }
                attempt
            }
            Err(e) => Err(e),
        };
        if let Some(detector) = generation.outliers.get(cluster_name) {
            match &attempt {
                Ok(_) => detector.report(&address, outlier::Outcome::ConnectSuccess),
                Err(UpstreamError::Overflow) => {}
                Err(_) => detector.report(&address, outlier::Outcome::ConnectFailed),
            }
        }
        record.upstream_transport_failure = attempt
            .as_ref()
            .err()
            .and_then(UpstreamError::transport_failure);
        match attempt {
            Ok(s) => {
                record.upstream_local = crate::proxy::pool::local_address(&s);
                let exchanging = cluster.config.peer_exchange
                    && matches!(&s, Stream::ClientTls(t)
                        if t.get_ref().1.alpn_protocol() == Some(exchange::ALPN.as_bytes()));
                return Some(if exchanging {
                    Upstream::Exchanging(s)
                } else {
                    Upstream::Plain(s)
                });
            }
            Err(e) => {
                tracing::debug!(upstream = %address, error = %e, "TCP proxy connect failed");
                tried.push(address);
            }
        }
    }
    // As Envoy's TCP proxy: the connect attempts are used up (`URX`, even
    // when only one is allowed).
    record
        .flags
        .insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
    record
        .flags
        .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
    None
}
