//! The ADS server: Envoy's aggregated discovery service, state-of-the-world
//! ([`sotw`]) and incremental ([`delta`]), over one gRPC service.
//!
//! ```text
//! watch<Arc<Snapshot>> --changed--> every connection task
//!     -> (semaphore permit) ShapeCache: generate(snapshot, proxy) once per shape
//!     -> per type, in order CDS, EDS, LDS, RDS: send if its version changed
//! proxy requests -> subscription / ACK / NACK bookkeeping -> respond only
//!     to a new subscription or a pending version, never to a plain ACK
//! ```
//!
//! Each stream is one task owning its state; the only shared mutable pieces
//! are the shape cache (a lock held to find a slot) and [`SyncState`] (a
//! lock held to copy a few strings). Versions are content hashes, so a new
//! snapshot that does not change a proxy's resources sends it nothing.
//! Nothing is served before the first real snapshot (version > 0): an empty
//! answer would make a reconnecting Envoy delete its clusters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_api::xds::ResourceType;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use crate::proxy::ProxyInfo;
use crate::snapshot::Snapshot;
use crate::xds::ProxyResources;

pub mod debug;
mod delta;
pub mod metrics;
mod resources;
mod sotw;
pub mod state;
mod stream;
mod wire;

pub use metrics::{Metrics, XdsMetrics};
pub use resources::TranslateError;
pub use state::{ProxySync, SyncState, TypeSync, XdsProtocol};
pub use wire::AdsService;

use metrics::TypeLabels;
use resources::{ShapeCache, Translation, View};
use state::SyncEntry;
use stream::StreamSession;

/// Translation used by the server: `crate::xds::generate` in production, a
/// fake in tests.
pub type Generator = Arc<dyn Fn(&Snapshot, &ProxyInfo) -> ProxyResources + Send + Sync>;

/// Pushes (translation + encoding) running at once across all connections.
pub const DEFAULT_PUSH_CONCURRENCY: usize = 100;

/// Responses queued per stream before the connection task waits for the
/// proxy to read.
const STREAM_BUFFER: usize = 16;

/// Why [`serve`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen for xDS on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("xDS server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// State shared by every stream.
struct Shared {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    translation: Translation,
    permits: Semaphore,
    cache: ShapeCache,
    name_sets: sotw::NameSets,
    sync: SyncState,
    metrics: Arc<Metrics>,
    closing: watch::Receiver<bool>,
    next_connection: AtomicU64,
}

/// The ADS service. Clone it freely; clones share state.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
    close: Arc<watch::Sender<bool>>,
}

// === impl AdsServer ===

impl AdsServer {
    /// A server that translates every snapshot published on `snapshots`
    /// with `generator`, once per proxy identity (tests use fakes).
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, generator: Generator) -> Self {
        Self::build(
            snapshots,
            Translation::Custom(generator),
            Arc::new(Metrics::new()),
            DEFAULT_PUSH_CONCURRENCY,
        )
    }

    /// A server using the standard translation, shared between proxies of
    /// the same shape (see [`crate::xds::shape`]).
    pub fn with_default_generator(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self::with_options(
            snapshots,
            Arc::new(Metrics::new()),
            DEFAULT_PUSH_CONCURRENCY,
        )
    }

    /// The standard translation, reporting into `metrics`, with at most
    /// `push_concurrency` translations at once.
    pub fn with_options(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
        push_concurrency: usize,
    ) -> Self {
        Self::build(snapshots, Translation::Split, metrics, push_concurrency)
    }

    fn build(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        translation: Translation,
        metrics: Arc<Metrics>,
        push_concurrency: usize,
    ) -> Self {
        let (close, closing) = watch::channel(false);
        Self {
            shared: Arc::new(Shared {
                snapshots,
                translation,
                permits: Semaphore::new(push_concurrency.max(1)),
                cache: ShapeCache::default(),
                name_sets: sotw::NameSets::default(),
                sync: SyncState::default(),
                metrics,
                closing,
                next_connection: AtomicU64::new(1),
            }),
            close: Arc::new(close),
        }
    }

    /// Per-proxy, per-type sync state.
    pub fn sync_state(&self) -> SyncState {
        self.shared.sync.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The snapshot channel the server reads.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.snapshots.clone()
    }

    /// The gRPC service, for tonic's server.
    pub fn into_service(self) -> AdsService {
        AdsService(self)
    }

    /// Ends every open stream (they return `UNAVAILABLE`, so proxies
    /// reconnect elsewhere) and refuses new ones. Graceful gRPC shutdown
    /// waits for streams, which never end on their own.
    pub fn close_streams(&self) {
        self.close.send_replace(true);
    }
}

/// Serves ADS on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    server: AdsServer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    serve_listener(listener, server, shutdown).await
}

/// Serves ADS on a bound listener (tests bind `127.0.0.1:0`).
pub async fn serve_listener(
    listener: TcpListener,
    server: AdsServer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let closer = server.clone();
    let signal = async move {
        shutdown.await;
        closer.close_streams();
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(server.into_service())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await?;
    Ok(())
}

impl AdsServer {
    /// Starts the task that serves one stream, unless the server is closing;
    /// returns where its responses come out.
    fn open_stream<S: StreamSession>(
        &self,
        requests: wire::Requests<S::Request>,
        peer: Option<SocketAddr>,
    ) -> Result<mpsc::Receiver<Result<S::Response, Status>>, Status> {
        if *self.shared.closing.borrow() {
            return Err(Status::unavailable("control plane is shutting down"));
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(stream::drive::<S>(self.shared.clone(), requests, tx, peer));
        Ok(rx)
    }
}

// === connection core ===

/// What both protocols keep per stream besides per-type state.
struct Conn {
    shared: Arc<Shared>,
    proxy: ProxyInfo,
    id: u64,
    /// Resources of the snapshot being served, once translated.
    current: Option<View>,
    /// When this connection first saw the snapshot it serves: the start of
    /// the convergence measurement.
    seen_at: Instant,
    nonces: u64,
    sync: SyncEntry,
    _connected: ConnectedGuard,
}

/// Keeps the connected-proxies gauge right however the task ends.
struct ConnectedGuard(Arc<Shared>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.metrics.xds().connected_proxies.dec();
    }
}

/// How a connection task learns what to do next.
enum Event<R> {
    Request(R),
    Snapshot,
    End,
}

impl Conn {
    fn new(shared: Arc<Shared>, proxy: ProxyInfo, protocol: XdsProtocol) -> Self {
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        shared.metrics.xds().connected_proxies.inc();
        let sync = shared.sync.register(&proxy, id, protocol);
        Self {
            _connected: ConnectedGuard(shared.clone()),
            shared,
            proxy,
            id,
            current: None,
            seen_at: Instant::now(),
            nonces: 0,
            sync,
        }
    }

    fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!("{:x}-{}", self.id, self.nonces)
    }

    /// Counts a NACK of `rejected` and keeps its message for `/debug/syncz`.
    fn record_nack(&self, ty: ResourceType, message: String, rejected: Option<String>) {
        self.shared
            .metrics
            .xds()
            .nacks
            .get_or_create(&TypeLabels::of(ty))
            .inc();
        self.sync.update(ty, |t| {
            t.last_nack = Some(message);
            t.last_nack_version = rejected;
            t.nacks += 1;
        });
    }

    /// The proxy ACKed a push of a snapshot this connection first saw at
    /// `seen_at`.
    fn observe_convergence(&self, seen_at: Instant) {
        self.shared
            .metrics
            .xds()
            .convergence
            .observe(seen_at.elapsed().as_secs_f64());
    }

    /// Counts a push of `ty` whose work began at `started`.
    fn record_push(&self, ty: ResourceType, started: Instant) {
        let xds = self.shared.metrics.xds();
        let labels = TypeLabels::of(ty);
        xds.pushes.get_or_create(&labels).inc();
        xds.push_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    /// The resources of the newest snapshot, translating if needed; `None`
    /// before the first real snapshot or when translation failed (the proxy
    /// then keeps what it has).
    async fn refresh(&mut self) -> Option<View> {
        let snapshot = self.shared.snapshots.borrow().clone();
        if snapshot.version == 0 {
            return None;
        }
        if let Some(cur) = &self.current
            && cur.snapshot_version == snapshot.version
        {
            return Some(cur.clone());
        }
        let _permit = self.shared.permits.acquire().await.ok()?;
        match self
            .shared
            .cache
            .get(&snapshot, &self.proxy, &self.shared.translation)
            .await
        {
            Ok(t) => {
                self.sync.set_snapshot_version(t.snapshot_version);
                self.current = Some(t.clone());
                Some(t)
            }
            Err(e) => {
                tracing::error!(proxy = %self.proxy.id, "{e}");
                self.current.clone()
            }
        }
    }

    /// Waits for the next request, snapshot or end of stream.
    async fn next_event<R: prost::Message + Default>(
        &mut self,
        inbound: &mut wire::Requests<R>,
        snapshots: &mut Option<watch::Receiver<Arc<Snapshot>>>,
        closing: &mut watch::Receiver<bool>,
    ) -> Event<R> {
        let snapshot_changed = async {
            match snapshots.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        enum Woke<R> {
            Closing,
            Message(Result<Option<R>, Status>),
            Snapshot(bool),
        }
        let woke = tokio::select! {
            biased;
            _ = closing.wait_for(|c| *c) => Woke::Closing,
            msg = inbound.message() => Woke::Message(msg),
            ok = snapshot_changed => Woke::Snapshot(ok),
        };
        match woke {
            Woke::Closing => Event::End,
            Woke::Message(Ok(Some(req))) => Event::Request(req),
            Woke::Message(Ok(None)) => Event::End,
            Woke::Message(Err(status)) => {
                tracing::debug!(proxy = %self.proxy.id, "stream ended: {status}");
                Event::End
            }
            Woke::Snapshot(ok) => {
                if ok {
                    self.seen_at = Instant::now();
                } else {
                    // The publisher is gone; keep serving what we have.
                    *snapshots = None;
                }
                Event::Snapshot
            }
        }
    }
}

/// The text of a NACK's `error_detail`.
fn nack_message(status: &envoy_types::pb::google::rpc::Status) -> String {
    if status.message.is_empty() {
        format!("code {}", status.code)
    } else {
        status.message.clone()
    }
}
