//! The data path: binds the runtime's listeners and serves their
//! connections, following runtime updates and drains.
//!
//! [`run`] keeps one accept loop per bound listener (by name and
//! address). When a new runtime arrives, listeners that kept their name
//! and address keep their socket, new ones are bound, removed ones are
//! closed; connections already open keep going. Every new connection and
//! every new request reads the newest runtime, and a request finishes on
//! the runtime it started with. The runtime served is the one published
//! with its DNS clusters over the addresses [`dns`] last resolved. On
//! drain the accept loops stop, open
//! connections are asked to finish (HTTP/1 closes after the current
//! response, HTTP/2 sends GOAWAY), and `run` returns once they have.
//!
//! Per connection ([`accept`]): the original destination is read when the
//! listener captures traffic, a `use_original_dst` listener hands the
//! connection to the listener of that destination, the ClientHello (or
//! HTTP preface) is peeked only when the filter chain choice depends on
//! it, then the chosen chain's HTTP connection manager ([`http`]) or TCP
//! proxy ([`tcp`]) serves it.

mod accept;
pub mod dns;
mod ext_authz;
pub mod http;
mod inspect;
mod io;
pub mod outlier;
pub mod pool;
pub mod record;
mod tcp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_ca::client::CertWatch;
use mesh_ca::tls::MeshTls;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::drain;
use crate::runtime::cluster::Discovery;
use crate::runtime::convert::HostAddress;
use crate::runtime::lb::Endpoint;
use crate::runtime::listener::Listener;
use crate::runtime::{Cluster, Runtime};
pub use io::Stream;
use pool::Upstreams;
pub use record::{NoObserver, Observer, RequestRecord, ResponseFlags, TcpRecord};

/// Why the data path stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The runtime channel closed before any runtime was published.
    #[error("the runtime channel closed before the first runtime")]
    NoRuntime,
}

/// Options of [`run_with`].
#[derive(Clone)]
pub struct Options {
    /// Receives a record of every request and TCP connection.
    pub observer: Arc<dyn Observer>,
    /// The workload certificate, for SDS `default` and `ROOTCA`.
    pub identity: Option<CertWatch>,
    /// Outlier detectors, kept across runtimes and read by the admin.
    pub outliers: Arc<outlier::Outliers>,
    /// This proxy's peer metadata headers (Istio's metadata exchange);
    /// `None`: nothing is exchanged, and peers' headers are only stripped.
    pub peer_metadata: Option<Arc<crate::telemetry::peer::LocalMetadata>>,
}

/// A runtime with the connection pools that go with it.
#[derive(Debug)]
pub struct Generation {
    /// The compiled config.
    pub runtime: Arc<Runtime>,
    /// Upstream connection pools by cluster.
    pub upstreams: Arc<Upstreams>,
    /// TLS configs built for this runtime.
    pub tls: crate::tls::Configs,
    /// The outlier detectors of its clusters that have one.
    pub outliers: outlier::Detectors,
}

/// What every connection shares.
pub(crate) struct Shared {
    generation: watch::Receiver<Arc<Generation>>,
    pub observer: Arc<dyn Observer>,
    identity: Option<CertWatch>,
    pub peer_metadata: Option<Arc<crate::telemetry::peer::LocalMetadata>>,
}

/// What is known about a downstream connection once its listener and
/// filter chain are chosen.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// The listener serving it (after any hand-off).
    pub listener: Arc<Listener>,
    /// The chosen filter chain's name.
    pub chain: String,
    /// The client.
    pub peer: SocketAddr,
    /// The original destination (the local address if not redirected).
    pub destination: SocketAddr,
    /// SNI, if inspected.
    pub server_name: Option<String>,
    /// Whether the connection is TLS terminated here.
    pub tls: bool,
    /// The TLS session, when terminated here.
    pub session: Option<crate::tls::Session>,
}

struct Bound {
    task: JoinHandle<()>,
}

// === impl ConnInfo ===

impl ConnInfo {
    /// How the connection is secured: mutual TLS when the client
    /// presented a certificate (verified by the chain's TLS config).
    pub(crate) fn security(&self) -> record::Security {
        match &self.session {
            Some(s) if s.peer.is_some() => record::Security::MutualTls,
            _ if self.tls => record::Security::Tls,
            _ => record::Security::Plaintext,
        }
    }

    /// The first URI SAN of the client's certificate.
    pub(crate) fn peer_principal(&self) -> Option<Arc<str>> {
        let peer = self.session.as_ref()?.peer.as_ref()?;
        peer.uris.first().map(|u| Arc::from(u.as_str()))
    }

    /// The first URI SAN of this proxy's own certificate, on a mutual TLS
    /// connection (the identity the client verified).
    pub(crate) fn local_principal(&self) -> Option<Arc<str>> {
        let session = self.session.as_ref().filter(|s| s.peer.is_some())?;
        session.local.uris.first().map(|u| Arc::from(u.as_str()))
    }
}

// === impl Options ===

impl Default for Options {
    fn default() -> Self {
        Self {
            observer: Arc::new(NoObserver),
            identity: None,
            outliers: Arc::default(),
            peer_metadata: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options").finish_non_exhaustive()
    }
}

// === impl Shared ===

impl Shared {
    /// The newest generation.
    pub(crate) fn current(&self) -> Arc<Generation> {
        self.generation.borrow().clone()
    }

    /// The workload certificate in force, if any.
    pub(crate) fn identity(&self) -> Option<Arc<MeshTls>> {
        self.identity.as_ref().and_then(CertWatch::current)
    }
}

/// Serves the runtime's listeners until `drain` signals; see the module
/// docs.
pub async fn run(
    runtime: watch::Receiver<Arc<Runtime>>,
    drain: drain::Watch,
) -> Result<(), ProxyError> {
    run_with(runtime, drain, Options::default()).await
}

/// [`run`], with an observer for request and connection records.
pub async fn run_with(
    mut runtime: watch::Receiver<Arc<Runtime>>,
    mut drain: drain::Watch,
    options: Options,
) -> Result<(), ProxyError> {
    let mut raw = runtime.borrow_and_update().clone();
    let (raw_tx, raw_rx) = watch::channel(raw.clone());
    let (dns_tx, mut dns_table) = watch::channel(Arc::new(dns::DnsTable::new()));
    let resolver = tokio::spawn(dns::run(raw_rx, dns_tx));
    let first = dns::effective(&raw, &dns_table.borrow_and_update());
    let upstreams = Arc::new(Upstreams::build(&first, None));
    let outliers = options.outliers.clone();
    let (generation_tx, generation_rx) = watch::channel(Arc::new(Generation {
        outliers: outliers.update(&first),
        runtime: first,
        upstreams,
        tls: crate::tls::Configs::default(),
    }));
    let shared = Arc::new(Shared {
        generation: generation_rx,
        observer: options.observer,
        identity: options.identity,
        peer_metadata: options.peer_metadata,
    });
    // Every connection task holds a sender; when all are gone, so are the
    // connections.
    let (tracker, mut connections_done) = mpsc::channel::<()>(1);
    let mut bound: HashMap<(String, SocketAddr), Bound> = HashMap::new();
    let initial = generation_tx.borrow().runtime.clone();
    apply_listeners(&initial, &mut bound, &shared, &drain, &tracker).await;

    let (mut runtime_open, mut dns_open) = (true, true);
    loop {
        tokio::select! {
            () = drain.signaled() => break,
            changed = runtime.changed(), if runtime_open => {
                if changed.is_err() {
                    // The xDS side is gone: keep serving the last runtime.
                    runtime_open = false;
                    continue;
                }
                raw = runtime.borrow_and_update().clone();
                raw_tx.send_replace(raw.clone());
            }
            changed = dns_table.changed(), if dns_open => {
                if changed.is_err() {
                    dns_open = false;
                    continue;
                }
            }
        }
        let next = dns::effective(&raw, &dns_table.borrow_and_update());
        let previous = generation_tx.borrow().upstreams.clone();
        let upstreams = Arc::new(Upstreams::build(&next, Some(&previous)));
        generation_tx.send_replace(Arc::new(Generation {
            outliers: outliers.update(&next),
            runtime: next.clone(),
            upstreams,
            tls: crate::tls::Configs::default(),
        }));
        apply_listeners(&next, &mut bound, &shared, &drain, &tracker).await;
    }

    resolver.abort();
    tracing::info!(
        listeners = bound.len(),
        "draining: no longer accepting connections"
    );
    for (_, b) in bound.drain() {
        b.task.abort();
        let _ = b.task.await;
    }
    drop(tracker);
    // Returns None once every connection task has finished.
    let _ = connections_done.recv().await;
    tracing::info!("drained");
    Ok(())
}

/// Binds new listeners and closes removed ones.
async fn apply_listeners(
    runtime: &Runtime,
    bound: &mut HashMap<(String, SocketAddr), Bound>,
    shared: &Arc<Shared>,
    drain: &drain::Watch,
    tracker: &mpsc::Sender<()>,
) {
    let wanted: Vec<(String, SocketAddr)> = runtime
        .listeners
        .values()
        .filter(|l| l.bind_to_port)
        .map(|l| (l.name.clone(), l.address))
        .collect();
    let stale: Vec<_> = bound
        .keys()
        .filter(|k| !wanted.contains(k))
        .cloned()
        .collect();
    for key in stale {
        if let Some(b) = bound.remove(&key) {
            tracing::info!(listener = %key.0, address = %key.1, "listener removed");
            b.task.abort();
            // Wait for the socket to close so a new listener can take the address.
            let _ = b.task.await;
        }
    }
    for key in wanted {
        if bound.contains_key(&key) {
            continue;
        }
        match TcpListener::bind(key.1).await {
            Ok(socket) => {
                tracing::info!(listener = %key.0, address = %key.1, "listening");
                let task = tokio::spawn(accept::accept_loop(
                    socket,
                    key.0.clone(),
                    shared.clone(),
                    drain.clone(),
                    tracker.clone(),
                ));
                bound.insert(key, Bound { task });
            }
            Err(e) => {
                tracing::warn!(listener = %key.0, address = %key.1, error = %e, "cannot bind listener; skipped");
            }
        }
    }
}

/// The TLS to originate to `endpoint` of `cluster` (`None`: plaintext). A
/// config that cannot be built (a secret not received yet, no workload
/// certificate yet) fails the connection attempt, as Envoy's handshake
/// would.
pub(crate) fn upstream_tls(
    generation: &Generation,
    identity: Option<&Arc<MeshTls>>,
    cluster: &Cluster,
    endpoint: Option<&Endpoint>,
) -> Result<Option<Arc<crate::tls::ClientTls>>, pool::UpstreamError> {
    let Some(tls) = cluster.config.tls_for(endpoint) else {
        return Ok(None);
    };
    generation
        .tls
        .client(&generation.runtime, identity, tls)
        .map(Some)
        .map_err(|e| {
            tracing::debug!(cluster = %cluster.config.name, error = %e, "cannot originate TLS");
            pool::UpstreamError::Connect(std::io::Error::other(e))
        })
}

/// The upstream address for a request or connection to `cluster`: the
/// original destination for ORIGINAL_DST clusters (or the host in the
/// configured header), else the load balancer's pick, avoiding `tried`
/// when asked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pick_endpoint(
    generation: &Generation,
    cluster: &Arc<Cluster>,
    conn: &ConnInfo,
    hash: Option<u64>,
    headers: Option<&::http::HeaderMap>,
    tried: &[HostAddress],
    avoid_tried: bool,
    attempts: u32,
) -> Option<(HostAddress, Option<Arc<Endpoint>>)> {
    if let Discovery::OriginalDst {
        header,
        port_override,
    } = &cluster.config.discovery
    {
        let from_header = header
            .as_ref()
            .and_then(|h| headers?.get(h.as_str()))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<SocketAddr>().ok());
        let mut address = from_header.unwrap_or(conn.destination);
        if let Some(p) = port_override {
            address.set_port(*p);
        }
        return Some((HostAddress::Ip(address), None));
    }
    let balancer = match generation.outliers.get(&cluster.config.name) {
        Some(detector) => detector.balancer(cluster),
        None => outlier::Choice::Runtime(&cluster.balancer),
    };
    balancer
        .pick_avoiding(
            hash,
            |e| avoid_tried && tried.contains(&e.address),
            attempts,
        )
        .map(|e| (e.address.clone(), Some(e.clone())))
}
