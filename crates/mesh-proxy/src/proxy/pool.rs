//! Upstream connection pools, one per cluster and endpoint: HTTP/1.1
//! connections kept alive and reused one request at a time, one HTTP/2
//! connection multiplexing every request, idle connections closed after
//! the cluster's idle timeout (`common_http_protocol_options.idle_timeout`,
//! 1 h by default): an HTTP/1 connection back in the pool for that long,
//! an HTTP/2 connection with no stream for that long. A reaper task runs
//! per endpoint while it has idle HTTP/1 connections, and per HTTP/2
//! connection; each holds the pool weakly, so a retired pool goes away.
//!
//! Pools outlive runtimes: when a new runtime arrives, a cluster whose
//! connection settings did not change keeps its pool (and its warm
//! connections); per-cluster counters for the circuit breakers live here
//! too, for the same reason.
//!
//! Circuit breaking follows Envoy's pools: a request that finds no idle
//! HTTP/1 connection is pending (refused at once past
//! `max_pending_requests`) until it has one; it opens a connection while
//! the cluster has fewer than `max_connections`, else waits for one to
//! come back to the pool or close. An endpoint with no connection at all
//! may always open one (counted as a connection overflow), so a request
//! never waits on an endpoint that has nothing to give back. An endpoint
//! has one HTTP/2 connection, which is therefore never refused; requests
//! waiting for it to be made are pending.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;

use crate::proxy::Stream;
use crate::proxy::http::body::{ProxyBody, boxed};
use crate::runtime::Runtime;
use crate::runtime::cluster::{ClusterConfig, Thresholds};
use crate::runtime::convert::HostAddress;
use crate::tls::ClientTls;

/// Every cluster's pool, for one runtime.
#[derive(Debug, Default)]
pub struct Upstreams {
    clusters: HashMap<String, Arc<ClusterPool>>,
}

/// One cluster's connections and counters.
#[derive(Debug)]
pub struct ClusterPool {
    settings: Settings,
    endpoints: RwLock<HashMap<HostAddress, Arc<EndpointPool>>>,
    /// Requests in flight (circuit breaker `max_requests`).
    pub active_requests: AtomicU64,
    /// Retries in flight (circuit breaker `max_retries` or the retry
    /// budget).
    pub active_retries: AtomicU64,
    circuit: Arc<Circuit>,
}

/// The connection and pending-request counts of a cluster, shared with
/// its endpoints' pools and the connections themselves.
#[derive(Debug)]
struct Circuit {
    thresholds: Thresholds,
    /// Open upstream connections (`max_connections`).
    connections: AtomicU64,
    /// Requests waiting for a connection (`max_pending_requests`).
    pending: AtomicU64,
    /// Woken when a connection goes back to a pool or closes.
    released: Notify,
}

/// Counts one open upstream connection of a cluster until dropped (the
/// connection's task, or the TCP proxy, holds it).
#[derive(Debug)]
pub struct ConnSlot {
    circuit: Arc<Circuit>,
    /// The endpoint's own count, when the connection is pooled.
    endpoint: Option<Arc<AtomicU64>>,
}

/// Counts one pending request until dropped.
#[derive(Debug)]
struct PendingSlot(Arc<Circuit>);

/// Marks a response whose request found the cluster at `max_connections`
/// (Envoy's `upstream_cx_overflow`) and waited for a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionOverflowed;

/// On a response over TLS originated here: the first URI SAN of the
/// certificate the upstream presented (Envoy's `%UPSTREAM_PEER_URI_SAN%`).
#[derive(Clone, Debug)]
pub struct UpstreamPeer(pub Arc<str>);

#[derive(Clone, Debug, PartialEq)]
struct Settings {
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_requests_per_connection: Option<u32>,
    thresholds: Thresholds,
    source_address: Option<SocketAddr>,
}

#[derive(Debug)]
struct EndpointPool {
    address: HostAddress,
    /// TLS originated on its connections (`None`: plaintext).
    tls: Option<Arc<ClientTls>>,
    idle_timeout: Option<Duration>,
    circuit: Arc<Circuit>,
    /// Open connections to this endpoint.
    open: Arc<AtomicU64>,
    idle: Mutex<Vec<Idle>>,
    /// Whether a reaper watches `idle` (read and written under its lock).
    reaping: AtomicBool,
    h2: tokio::sync::Mutex<Option<H2Conn>>,
    /// The upstream's identity, from its last TLS handshake (every
    /// connection of the pool verifies the same expected names).
    peer: Mutex<Option<Arc<str>>>,
}

/// The HTTP/2 connection of an endpoint.
#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<ProxyBody>,
    /// The connection's local address.
    local: Option<SocketAddr>,
    streams: Arc<H2Streams>,
}

/// Streams open on an HTTP/2 connection, and since when it has none.
#[derive(Debug)]
struct H2Streams {
    open: AtomicU64,
    base: Instant,
    /// Milliseconds after `base` when the last stream ended.
    idle_since: AtomicU64,
}

/// One open HTTP/2 stream, until dropped (with the response body).
#[derive(Debug)]
struct H2Stream(Arc<H2Streams>);

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    /// The connection's local address.
    local: Option<SocketAddr>,
    since: Instant,
    uses: u32,
}

/// The HTTP version of an upstream request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (prior knowledge).
    Http2,
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be made.
    #[error("connection failure: {0}")]
    Connect(#[source] std::io::Error),
    /// Connecting took longer than the cluster's connect timeout.
    #[error("connection timeout")]
    ConnectTimeout,
    /// The HTTP handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The connection closed before a response.
    #[error("connection termination: {0}")]
    Closed(#[source] hyper::Error),
    /// The stream was reset (or refused) before a response.
    #[error("remote reset: {0}")]
    Reset(#[source] hyper::Error),
    /// The response was not valid HTTP.
    #[error("protocol error: {0}")]
    Protocol(#[source] hyper::Error),
    /// A circuit breaker refused the request: `max_pending_requests`
    /// were already waiting for a connection. Never retried.
    #[error("overflow")]
    Overflow,
}

impl UpstreamError {
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: the TLS error of a
    /// handshake that failed (see [`crate::tls::failure_reason`]).
    pub fn transport_failure(&self) -> Option<Arc<str>> {
        match self {
            Self::Connect(e) => crate::tls::failure_reason(e).map(Arc::from),
            _ => None,
        }
    }
}

/// The local address of an upstream connection.
pub fn local_address(stream: &Stream) -> Option<SocketAddr> {
    match stream {
        Stream::Tcp(s) => s.local_addr().ok(),
        Stream::ClientTls(s) => s.get_ref().0.local_addr().ok(),
        Stream::ServerTls(s) => s.get_ref().0.local_addr().ok(),
    }
}

// === impl Upstreams ===

impl Upstreams {
    /// Pools for `runtime`'s clusters, keeping `previous` ones whose
    /// settings did not change.
    pub fn build(runtime: &Runtime, previous: Option<&Upstreams>) -> Self {
        let clusters = runtime
            .clusters
            .iter()
            .map(|(name, c)| {
                let settings = Settings::from(&c.config);
                let pool = previous
                    .and_then(|p| p.clusters.get(name))
                    .filter(|p| p.settings == settings)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(ClusterPool::new(settings)));
                (name.clone(), pool)
            })
            .collect();
        Self { clusters }
    }

    /// The pool of cluster `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ClusterPool>> {
        self.clusters.get(name)
    }
}

impl From<&ClusterConfig> for Settings {
    fn from(c: &ClusterConfig) -> Self {
        Self {
            connect_timeout: c.connect_timeout,
            idle_timeout: c.idle_timeout,
            max_requests_per_connection: c.max_requests_per_connection,
            thresholds: c.thresholds,
            source_address: c.source_address,
        }
    }
}

// === impl ClusterPool ===

/// Counts one unit of a circuit-breaker resource until dropped.
#[derive(Debug)]
pub struct Slot(Arc<ClusterPool>, fn(&ClusterPool) -> &AtomicU64);

impl Drop for Slot {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClusterPool {
    fn new(settings: Settings) -> Self {
        let circuit = Arc::new(Circuit {
            thresholds: settings.thresholds,
            connections: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            released: Notify::new(),
        });
        Self {
            settings,
            endpoints: RwLock::new(HashMap::new()),
            active_requests: AtomicU64::new(0),
            active_retries: AtomicU64::new(0),
            circuit,
        }
    }

    /// Takes a request slot, unless `max_requests` are in flight.
    pub fn request_slot(self: &Arc<Self>) -> Option<Slot> {
        take(self, self.settings.thresholds.max_requests, |p| {
            &p.active_requests
        })
    }

    /// Takes a retry slot, unless the retries allowed are in flight:
    /// `max_retries`, or with a retry budget its share of the requests
    /// active and pending.
    pub fn retry_slot(self: &Arc<Self>) -> Option<Slot> {
        let requests = self.active_requests.load(Ordering::Relaxed)
            + self.circuit.pending.load(Ordering::Relaxed);
        let allowed = self.settings.thresholds.retries_allowed(requests);
        let allowed = u32::try_from(allowed).unwrap_or(u32::MAX);
        take(self, allowed, |p| &p.active_retries)
    }

    /// Counts a TCP-proxied connection, unless the cluster already has
    /// `max_connections` (the TCP proxy then closes the downstream one).
    pub fn tcp_slot(&self) -> Option<ConnSlot> {
        self.circuit.connection(None, false)
    }

    /// Connects to `address` (TCP proxy) within the connect timeout,
    /// with TLS when `tls` says so.
    pub async fn connect_tcp(
        &self,
        address: &HostAddress,
        tls: Option<&ClientTls>,
    ) -> Result<Stream, UpstreamError> {
        connect(address, tls, &self.settings).await
    }

    /// The pool of `address` for connections with `tls`; one made for
    /// other TLS settings (or older material) is replaced.
    fn endpoint(&self, address: &HostAddress, tls: Option<Arc<ClientTls>>) -> Arc<EndpointPool> {
        let fingerprint = tls.as_ref().map(|t| t.fingerprint);
        let fits = |e: &EndpointPool| e.tls.as_ref().map(|t| t.fingerprint) == fingerprint;
        if let Ok(map) = self.endpoints.read()
            && let Some(e) = map.get(address)
            && fits(e)
        {
            return e.clone();
        }
        let idle_timeout = self.settings.idle_timeout;
        let new = || {
            Arc::new(EndpointPool::new(
                address.clone(),
                tls.clone(),
                idle_timeout,
                self.circuit.clone(),
            ))
        };
        let Ok(mut map) = self.endpoints.write() else {
            return new();
        };
        let entry = map.entry(address.clone()).or_insert_with(new);
        if !fits(entry) {
            *entry = new();
        }
        entry.clone()
    }

    /// Sends `req` to `address` (with TLS when `tls` says so), reusing a
    /// pooled connection when there is one. The request must already be in
    /// the form `wire` needs. `local` learns the local address of the
    /// connection the request went out on, once it has one (so also when
    /// the request then fails on it).
    pub async fn send(
        &self,
        address: &HostAddress,
        tls: Option<Arc<ClientTls>>,
        wire: Wire,
        req: Request<ProxyBody>,
        local: &mut Option<SocketAddr>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let endpoint = self.endpoint(address, tls);
        match wire {
            Wire::Http1 => endpoint.send_http1(&self.settings, req, local).await,
            Wire::Http2 => endpoint.send_http2(&self.settings, req, local).await,
        }
    }
}

fn take(
    pool: &Arc<ClusterPool>,
    max: u32,
    counter: fn(&ClusterPool) -> &AtomicU64,
) -> Option<Slot> {
    let c = counter(pool);
    let before = c.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(pool.clone(), counter);
    (before < u64::from(max)).then_some(slot)
}

// === impl Circuit ===

impl Circuit {
    /// Counts a new connection, unless `max_connections` are open; with
    /// `always`, counts it regardless (an endpoint with no connection).
    fn connection(
        self: &Arc<Self>,
        endpoint: Option<&Arc<AtomicU64>>,
        always: bool,
    ) -> Option<ConnSlot> {
        let max = u64::from(self.thresholds.max_connections);
        // A refusal changes nothing, so it wakes no waiter.
        self.connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (always || n < max).then_some(n + 1)
            })
            .ok()?;
        if let Some(e) = endpoint {
            e.fetch_add(1, Ordering::Relaxed);
        }
        Some(ConnSlot {
            circuit: self.clone(),
            endpoint: endpoint.cloned(),
        })
    }

    fn at_connection_limit(&self) -> bool {
        self.connections.load(Ordering::Relaxed) >= u64::from(self.thresholds.max_connections)
    }

    /// Counts a pending request, unless `max_pending_requests` wait.
    fn pending(self: &Arc<Self>) -> Option<PendingSlot> {
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        let slot = PendingSlot(self.clone());
        (before < u64::from(self.thresholds.max_pending_requests)).then_some(slot)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.circuit.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(e) = &self.endpoint {
            e.fetch_sub(1, Ordering::Relaxed);
        }
        self.circuit.released.notify_waiters();
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connects within the connect timeout, which covers the TLS handshake
/// too (a handshake failure is a connection failure, as in Envoy).
async fn connect(
    address: &HostAddress,
    tls: Option<&ClientTls>,
    settings: &Settings,
) -> Result<Stream, UpstreamError> {
    let attempt = async {
        let tcp = match (address, settings.source_address) {
            (HostAddress::Ip(a), None) => TcpStream::connect(a).await,
            (HostAddress::Ip(a), Some(source)) => connect_from(*a, source).await,
            (HostAddress::Dns { host, port }, _) => {
                TcpStream::connect((host.as_str(), *port)).await
            }
        }?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Stream::Tcp(tcp));
        };
        let peer = tcp.peer_addr()?.ip();
        let stream = crate::tls::connect(tcp, tls, peer).await?;
        Ok(Stream::ClientTls(Box::new(stream)))
    };
    match tokio::time::timeout(settings.connect_timeout, attempt).await {
        Err(_) => Err(UpstreamError::ConnectTimeout),
        Ok(Err(e)) => Err(UpstreamError::Connect(e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Connects to `to` from the local address `source` (the cluster's
/// `upstream_bind_config`); a source of the other address family is not
/// used, as Envoy only binds a source of the destination's family.
async fn connect_from(to: SocketAddr, source: SocketAddr) -> std::io::Result<TcpStream> {
    if source.is_ipv4() != to.is_ipv4() {
        return TcpStream::connect(to).await;
    }
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(source)?;
    socket.connect(to).await
}

fn classify(e: hyper::Error) -> UpstreamError {
    let text = format!("{e:?}");
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        UpstreamError::Protocol(e)
    } else if text.contains("REFUSED_STREAM") || text.contains("Reset") {
        UpstreamError::Reset(e)
    } else {
        UpstreamError::Closed(e)
    }
}

// === impl EndpointPool ===

impl EndpointPool {
    fn new(
        address: HostAddress,
        tls: Option<Arc<ClientTls>>,
        idle_timeout: Option<Duration>,
        circuit: Arc<Circuit>,
    ) -> Self {
        Self {
            address,
            tls,
            idle_timeout,
            circuit,
            open: Arc::new(AtomicU64::new(0)),
            idle: Mutex::new(Vec::new()),
            reaping: AtomicBool::new(false),
            h2: tokio::sync::Mutex::new(None),
            peer: Mutex::new(None),
        }
    }

    /// Remembers who answered the handshake of `stream`.
    fn learn_peer(&self, stream: &Stream) {
        let Stream::ClientTls(tls) = stream else {
            return;
        };
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let uri = leaf.and_then(|c| crate::tls::PeerNames::of(c).uris.into_iter().next());
        if let Ok(mut peer) = self.peer.lock() {
            *peer = uri.map(Arc::from);
        }
    }

    /// `resp`, marked when its request waited at `max_connections`, and
    /// with the upstream's identity when known.
    fn mark(&self, mut resp: Response<ProxyBody>, overflowed: bool) -> Response<ProxyBody> {
        if self.tls.is_some()
            && let Some(peer) = self.peer.lock().ok().and_then(|p| p.clone())
        {
            resp.extensions_mut().insert(UpstreamPeer(peer));
        }
        mark(resp, overflowed)
    }

    fn checkout(&self, settings: &Settings) -> Option<Idle> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.pop() {
            let expired = settings
                .idle_timeout
                .is_some_and(|t| i.since.elapsed() >= t);
            if !expired && !i.sender.is_closed() && i.sender.is_ready() {
                return Some(i);
            }
        }
        None
    }

    async fn send_http1(
        self: Arc<Self>,
        settings: &Settings,
        mut req: Request<ProxyBody>,
        local: &mut Option<SocketAddr>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let mut pending: Option<PendingSlot> = None;
        let mut overflowed = false;
        let (sender, conn_slot) = loop {
            // Registered before looking, so a release in between wakes us.
            let released = self.circuit.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            // A pooled connection the server closed meanwhile fails without
            // sending; the request then goes on another one.
            while let Some(mut idle) = self.checkout(settings) {
                *local = idle.local;
                match idle.sender.try_send_request(req).await {
                    Ok(resp) => {
                        let resp =
                            self.returning(resp, idle.sender, idle.uses + 1, idle.local, settings);
                        return Ok(self.mark(resp, overflowed));
                    }
                    Err(mut e) => match e.take_message() {
                        // Not sent on it: not its connection.
                        Some(r) => {
                            *local = None;
                            req = r;
                        }
                        None => return Err(classify(e.into_error())),
                    },
                }
            }
            // No idle connection: the request is pending until it has one.
            if pending.is_none() {
                // Refused before it tries to connect: as in Envoy, not a
                // connection overflow.
                pending = Some(self.circuit.pending().ok_or(UpstreamError::Overflow)?);
            }
            let none_here = self.open.load(Ordering::Relaxed) == 0;
            if self.circuit.at_connection_limit() {
                overflowed = true;
            }
            if let Some(slot) = self.circuit.connection(Some(&self.open), none_here) {
                break (
                    connect(&self.address, self.tls.as_deref(), settings).await,
                    slot,
                );
            }
            released.await;
        };
        drop(pending);
        let stream = sender?;
        self.learn_peer(&stream);
        let local_addr = local_address(&stream);
        *local = local_addr;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            let _counted = conn_slot;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
            }
        });
        match sender.send_request(req).await {
            Ok(resp) => {
                let resp = self.returning(resp, sender, 1, local_addr, settings);
                Ok(self.mark(resp, overflowed))
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// The response, with a body that puts the connection back in the pool
    /// once it has been read to the end.
    fn returning(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: http1::SendRequest<ProxyBody>,
        uses: u32,
        local: Option<SocketAddr>,
        settings: &Settings,
    ) -> Response<ProxyBody> {
        let reusable = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            && settings
                .max_requests_per_connection
                .is_none_or(|max| uses < max);
        resp.map(|body| {
            if reusable {
                boxed(ReturnOnEnd {
                    inner: body,
                    slot: Some((sender, Arc::downgrade(self), uses, local)),
                })
            } else {
                boxed(body)
            }
        })
    }

    fn put_back(
        self: &Arc<Self>,
        sender: http1::SendRequest<ProxyBody>,
        uses: u32,
        local: Option<SocketAddr>,
    ) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        idle.push(Idle {
            sender,
            local,
            since: Instant::now(),
            uses,
        });
        self.circuit.released.notify_waiters();
        if let Some(timeout) = self.idle_timeout
            && !self.reaping.swap(true, Ordering::Relaxed)
        {
            tokio::spawn(reap_http1(Arc::downgrade(self), timeout));
        }
    }

    async fn send_http2(
        self: Arc<Self>,
        settings: &Settings,
        req: Request<ProxyBody>,
        local: &mut Option<SocketAddr>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let mut overflowed = false;
        // Waiting for the connection (queued behind the request making it,
        // or making it) is pending, as in Envoy.
        let mut pending = None;
        let (mut sender, stream) = {
            let mut slot = match self.h2.try_lock() {
                Ok(slot) => slot,
                Err(_) => {
                    pending = Some(self.circuit.pending().ok_or(UpstreamError::Overflow)?);
                    self.h2.lock().await
                }
            };
            match slot.as_ref() {
                // The stream is counted under the lock, so the reaper never
                // retires a connection a request is about to use.
                Some(c) if !c.sender.is_closed() => {
                    *local = c.local;
                    (c.sender.clone(), H2Stream::open(&c.streams))
                }
                _ => {
                    // The endpoint's only HTTP/2 connection may always be
                    // made; past `max_connections` it counts as an overflow.
                    if pending.is_none() {
                        pending = Some(self.circuit.pending().ok_or(UpstreamError::Overflow)?);
                    }
                    overflowed = self.circuit.at_connection_limit();
                    let counted = self.circuit.connection(Some(&self.open), true);
                    let stream = connect(&self.address, self.tls.as_deref(), settings).await?;
                    self.learn_peer(&stream);
                    *local = local_address(&stream);
                    let mut builder = http2::Builder::new(TokioExecutor::new());
                    builder.timer(TokioTimer::new());
                    if let Some(idle) = settings.idle_timeout {
                        builder
                            .keep_alive_interval(idle.min(Duration::from_secs(300)))
                            .keep_alive_timeout(Duration::from_secs(20));
                    }
                    let (sender, conn) = builder
                        .handshake(TokioIo::new(stream))
                        .await
                        .map_err(UpstreamError::Handshake)?;
                    tokio::spawn(async move {
                        let _counted = counted;
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                        }
                    });
                    let streams = Arc::new(H2Streams {
                        open: AtomicU64::new(0),
                        base: Instant::now(),
                        idle_since: AtomicU64::new(0),
                    });
                    if let Some(timeout) = settings.idle_timeout {
                        tokio::spawn(reap_http2(Arc::downgrade(&self), streams.clone(), timeout));
                    }
                    let stream = H2Stream::open(&streams);
                    *slot = Some(H2Conn {
                        sender: sender.clone(),
                        local: *local,
                        streams,
                    });
                    (sender, stream)
                }
            }
        };
        drop(pending);
        sender.ready().await.map_err(classify)?;
        match sender.send_request(req).await {
            Ok(resp) => {
                let resp = resp.map(|body| {
                    boxed(Holding {
                        inner: body,
                        _held: stream,
                    })
                });
                Ok(self.mark(resp, overflowed))
            }
            Err(e) => Err(classify(e)),
        }
    }
}

/// `resp`, marked when its request waited at `max_connections`.
fn mark(mut resp: Response<ProxyBody>, overflowed: bool) -> Response<ProxyBody> {
    if overflowed {
        resp.extensions_mut().insert(ConnectionOverflowed);
    }
    resp
}

/// Closes the endpoint's HTTP/1 connections that stay in the pool for
/// `timeout` (dropping the last sender makes hyper close the socket);
/// stops once none is left.
async fn reap_http1(pool: Weak<EndpointPool>, timeout: Duration) {
    let mut wait = timeout;
    loop {
        tokio::time::sleep(wait).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let Ok(mut idle) = pool.idle.lock() else {
            return;
        };
        let before = idle.len();
        idle.retain(|i| i.since.elapsed() < timeout && !i.sender.is_closed());
        if idle.len() < before {
            tracing::debug!(upstream = %pool.address, closed = before - idle.len(), "idle upstream connections closed");
        }
        match idle.iter().map(|i| i.since).min() {
            Some(oldest) => wait = (oldest + timeout).saturating_duration_since(Instant::now()),
            None => {
                pool.reaping.store(false, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Retires the endpoint's HTTP/2 connection once it has had no stream for
/// `timeout`: the pool forgets it, and hyper closes it (GOAWAY) when the
/// last sender is gone.
async fn reap_http2(pool: Weak<EndpointPool>, streams: Arc<H2Streams>, timeout: Duration) {
    let mut wait = timeout;
    loop {
        tokio::time::sleep(wait).await;
        if streams.open.load(Ordering::Relaxed) > 0 {
            wait = timeout;
            continue;
        }
        let idle_for = streams.idle_for();
        if idle_for < timeout {
            wait = timeout - idle_for;
            continue;
        }
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut slot = pool.h2.lock().await;
        let ours = slot
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.streams, &streams));
        if ours && streams.open.load(Ordering::Relaxed) == 0 {
            tracing::debug!(upstream = %pool.address, "idle upstream HTTP/2 connection closed");
            *slot = None;
        }
        return;
    }
}

// === impl H2Streams ===

impl H2Streams {
    fn idle_for(&self) -> Duration {
        let since = Duration::from_millis(self.idle_since.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(since)
    }
}

impl H2Stream {
    fn open(streams: &Arc<H2Streams>) -> Self {
        streams.open.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let s = &self.0;
        let now = u64::try_from(s.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        s.idle_since.store(now, Ordering::Relaxed);
        s.open.fetch_sub(1, Ordering::Relaxed);
    }
}

// === Holding ===

/// A response body that keeps its HTTP/2 stream counted until it ends.
struct Holding {
    inner: Incoming,
    _held: H2Stream,
}

impl Body for Holding {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === ReturnOnEnd ===

/// An HTTP/1 response body that returns its connection to the pool when
/// read to the end (a body dropped early takes the connection with it).
struct ReturnOnEnd {
    inner: Incoming,
    slot: Option<ReturnSlot>,
}

/// What [`ReturnOnEnd`] puts back: the connection, its pool, how often
/// it was used and its local address.
type ReturnSlot = (
    http1::SendRequest<ProxyBody>,
    Weak<EndpointPool>,
    u32,
    Option<SocketAddr>,
);

impl ReturnOnEnd {
    fn give_back(&mut self) {
        let Some((mut sender, pool, uses, local)) = self.slot.take() else {
            return;
        };
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if sender.is_ready() {
            pool.put_back(sender, uses, local);
        } else {
            // The connection becomes ready once hyper has seen the end of
            // both messages; wait for that off the request path.
            tokio::spawn(async move {
                if tokio::time::timeout(Duration::from_secs(5), sender.ready())
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    pool.put_back(sender, uses, local);
                }
            });
        }
    }
}

impl Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.slot = None,
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
