//! The SDS server of the agent: serves the workload SVID and the trust
//! bundle to a stock Envoy over gRPC on a Unix socket, as istio-agent does.
//!
//! Data flow: the [`CertClient`](crate::client::CertClient) publishes each
//! new certificate through its [`CertWatch`]; every SDS stream watches that
//! channel (and the roots) and pushes a new `Secret` version when what its
//! subscribed names resolve to changes, so a rotation reaches Envoy without
//! a restart. The private key is generated in this process and only ever
//! leaves it over the local socket to the Envoy beside it, never through the
//! control plane; the socket is created mode 0600 for that reason.
//!
//! - [`resources`]: what `default` and `ROOTCA` contain (pure).
//! - `stream`: the state-of-the-world protocol state of one stream (pure).
//! - this file: the tonic service, the per-stream driver and the Unix socket
//!   server.
//!
//! `StreamSecrets` and `FetchSecrets` are served; `DeltaSecrets` answers
//! `Unimplemented` (Envoy uses it only with `api_type: DELTA_GRPC`, which
//! Istio's bootstrap does not).

pub mod resources;
mod stream;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use mesh_api::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use mesh_api::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use mesh_api::xds::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Name;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

pub use resources::{DEFAULT_SECRET, ROOT_SECRET, root_secret, workload_secret};

use crate::bundle::TrustBundle;
use crate::client::CertWatch;
use crate::tls::MeshTls;
use resources::{Lookup, Snapshot};
use stream::{RequestKind, StreamState};

/// Where Istio's agent serves SDS (relative to the proxy's working
/// directory, `/` in Istio's images); our bootstraps use the same path.
pub const ISTIO_SDS_SOCKET: &str = "./var/run/secrets/workload-spiffe-uds/socket";
/// Name of the bootstrap's static cluster pointing at the socket.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// Responses buffered per stream before the driver waits for Envoy.
const STREAM_BUFFER: usize = 4;

/// Why the SDS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    /// Something that is not a socket sits where the socket goes; it is left
    /// alone rather than deleted.
    #[error("SDS socket path {path}: exists and is not a Unix socket")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// A stale socket from an earlier run could not be removed.
    #[error("SDS socket path {path}: removing the stale socket: {source}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The socket could not be bound.
    #[error("SDS socket path {path}: bind: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The socket's mode could not be set to 0600.
    #[error("SDS socket path {path}: chmod 0600: {source}")]
    Permissions {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("SDS gRPC server on {path}: {source}")]
    Transport {
        /// The socket path.
        path: PathBuf,
        /// The tonic error.
        source: tonic::transport::Error,
    },
}

/// Label set naming one SDS resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// The resource name (`default`, `ROOTCA`).
    pub resource: String,
}

/// Counters of the SDS server. Cheap to clone (shared atomics).
#[derive(Clone, Debug, Default)]
pub struct SdsMetrics {
    /// Resources pushed (one per resource per response), by name.
    pub pushes: Family<ResourceLabels, Counter>,
    /// Responses Envoy rejected, by resource name.
    pub nacks: Family<ResourceLabels, Counter>,
    /// Requests for names this server does not serve, by name.
    pub unknown: Family<ResourceLabels, Counter>,
    /// Open `StreamSecrets` streams.
    pub streams: Gauge,
}

/// The SDS service. Clone it freely; clones share sources and metrics.
#[derive(Clone, Debug)]
pub struct SdsServer {
    certs: watch::Receiver<Option<Arc<MeshTls>>>,
    roots: watch::Receiver<TrustBundle>,
    metrics: SdsMetrics,
}

// === impl SdsMetrics ===

impl SdsMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "sds_pushes",
            "SDS resources pushed to the local Envoy, by resource name",
            metrics.pushes.clone(),
        );
        registry.register(
            "sds_nacks",
            "SDS responses rejected by the local Envoy, by resource name",
            metrics.nacks.clone(),
        );
        registry.register(
            "sds_unknown_resources",
            "SDS requests for resource names this agent does not serve",
            metrics.unknown.clone(),
        );
        registry.register("sds_streams", "Open SDS streams", metrics.streams.clone());
        metrics
    }

    /// Pushes of `resource` so far (for tests and debug pages).
    pub fn pushed(&self, resource: &str) -> u64 {
        self.pushes.get_or_create(&label(resource)).get()
    }

    /// NACKs of `resource` so far.
    pub fn nacked(&self, resource: &str) -> u64 {
        self.nacks.get_or_create(&label(resource)).get()
    }
}

fn label(resource: &str) -> ResourceLabels {
    ResourceLabels {
        resource: resource.to_string(),
    }
}

// === impl SdsServer ===

impl SdsServer {
    /// Serves `certs` as `default` and a fixed `roots` as `ROOTCA`.
    pub fn new(certs: &CertWatch, roots: TrustBundle) -> Self {
        // The sender is dropped: the roots never change, and the stream
        // driver stops watching a closed channel.
        let (_, roots) = watch::channel(roots);
        Self::with_roots_watch(certs, roots)
    }

    /// Serves `certs` as `default` and the roots published on `roots` as
    /// `ROOTCA` (root rotation: a new bundle is pushed to open streams).
    pub fn with_roots_watch(certs: &CertWatch, roots: watch::Receiver<TrustBundle>) -> Self {
        Self {
            certs: certs.receiver(),
            roots,
            metrics: SdsMetrics::default(),
        }
    }

    /// Counts into `metrics` (e.g. ones registered with
    /// [`SdsMetrics::register`]) instead of private counters.
    pub fn with_metrics(mut self, metrics: SdsMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters this server updates.
    pub fn metrics(&self) -> &SdsMetrics {
        &self.metrics
    }

    /// The tonic service, for callers that run their own gRPC server.
    pub fn into_service(self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self)
    }

    /// Serves on a Unix socket at `path` until `shutdown` completes, then
    /// removes the socket. A stale socket left by an earlier run is removed
    /// first (any other file there is an error); the socket is made 0600 so
    /// only the proxy's user (Envoy runs as the same user, as with Istio)
    /// can fetch the private key.
    pub async fn serve_uds(
        self,
        path: &Path,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SdsError> {
        let listener = bind_uds(path)?;
        tracing::info!(path = %path.display(), "SDS server listening");
        let result = tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .await;
        // Best effort: a leftover socket is removed on the next start anyway.
        let _ = std::fs::remove_file(path);
        result.map_err(|source| SdsError::Transport {
            path: path.to_path_buf(),
            source,
        })
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            cert: self.certs.borrow().clone(),
            roots: self.roots.borrow().clone(),
        }
    }
}

/// Serves the SDS resources of `certs` and `roots` on a Unix socket at
/// `path` until `shutdown` completes. See [`SdsServer::serve_uds`].
pub async fn serve_uds(
    path: &Path,
    certs: &CertWatch,
    roots: TrustBundle,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SdsError> {
    SdsServer::new(certs, roots).serve_uds(path, shutdown).await
}

fn bind_uds(path: &Path) -> Result<UnixListener, SdsError> {
    let path_buf = || path.to_path_buf();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| SdsError::RemoveStale {
                path: path_buf(),
                source,
            })?;
        }
        Ok(_) => return Err(SdsError::NotASocket { path: path_buf() }),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| SdsError::Bind {
        path: path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        SdsError::Permissions {
            path: path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsServer {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "delta SDS is not served; configure the SDS config source with api_type: GRPC (state of the world), as Istio's bootstrap does",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let driver = StreamDriver {
            server: self.clone(),
            tx,
            state: StreamState::default(),
        };
        tokio::spawn(driver.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let request = request.into_inner();
        let mut state = StreamState::default();
        state
            .on_request(&request)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let snapshot = self.snapshot();
        for name in state.newly_unknown(&snapshot) {
            self.warn_unknown(&name);
        }
        if request
            .resource_names
            .iter()
            .any(|n| matches!(snapshot.lookup(n), Lookup::Pending))
        {
            return Err(Status::unavailable(
                "no workload certificate obtained yet; retry later",
            ));
        }
        let response = state
            .respond(&snapshot)
            .unwrap_or_else(|| DiscoveryResponse {
                type_url: Secret::type_url(),
                ..Default::default()
            });
        self.count_push(&response, "fetch");
        Ok(Response::new(response))
    }
}

impl SdsServer {
    fn warn_unknown(&self, name: &str) {
        tracing::warn!(
            resource = name,
            "SDS request for a resource this agent does not serve (only `default` and `ROOTCA`); not answering it"
        );
        self.metrics.unknown.get_or_create(&label(name)).inc();
    }

    fn count_push(&self, response: &DiscoveryResponse, via: &str) {
        let names = response_names(response);
        for name in &names {
            self.metrics.pushes.get_or_create(&label(name)).inc();
        }
        tracing::info!(
            resources = ?names,
            version = %response.version_info,
            nonce = %response.nonce,
            via,
            "SDS push"
        );
    }
}

/// The secret names inside a response (for logs and metrics).
fn response_names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .filter_map(|any| <Secret as prost::Message>::decode(any.value.as_slice()).ok())
        .map(|s| s.name)
        .collect()
}

/// Drives one `StreamSecrets` stream: requests in, pushes out.
struct StreamDriver {
    server: SdsServer,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    state: StreamState,
}

/// What woke the driver up.
enum Event {
    Request(Box<DiscoveryRequest>),
    SourceChanged,
}

// === impl StreamDriver ===

impl StreamDriver {
    async fn run(mut self, mut requests: Streaming<DiscoveryRequest>) {
        let metrics = self.server.metrics.clone();
        metrics.streams.inc();
        let mut certs = self.server.certs.clone();
        let mut roots = self.server.roots.clone();
        let (mut certs_open, mut roots_open) = (true, true);
        loop {
            let event = tokio::select! {
                msg = requests.message() => match msg {
                    Ok(Some(req)) => Event::Request(Box::new(req)),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "SDS stream ended with an error");
                        break;
                    }
                },
                changed = certs.changed(), if certs_open => {
                    certs_open = changed.is_ok();
                    Event::SourceChanged
                }
                changed = roots.changed(), if roots_open => {
                    roots_open = changed.is_ok();
                    Event::SourceChanged
                }
                _ = self.tx.closed() => break,
            };
            if let Event::Request(req) = event
                && !self.on_request(&req).await
            {
                break;
            }
            let snapshot = Snapshot {
                cert: certs.borrow_and_update().clone(),
                roots: roots.borrow_and_update().clone(),
            };
            for name in self.state.newly_unknown(&snapshot) {
                self.server.warn_unknown(&name);
            }
            if let Some(response) = self.state.respond(&snapshot) {
                self.server.count_push(&response, "stream");
                if self.tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        }
        metrics.streams.dec();
    }

    /// Handles one request; false if the stream must end.
    async fn on_request(&mut self, req: &DiscoveryRequest) -> bool {
        match self.state.on_request(req) {
            Ok(RequestKind::Nack { version, detail }) => {
                for name in &req.resource_names {
                    self.server.metrics.nacks.get_or_create(&label(name)).inc();
                }
                tracing::warn!(
                    resources = ?req.resource_names,
                    %version,
                    %detail,
                    "Envoy rejected an SDS push; keeping it until the certificate or roots change"
                );
                true
            }
            Ok(RequestKind::Ack { version }) => {
                tracing::debug!(resources = ?req.resource_names, %version, "SDS push accepted");
                true
            }
            Ok(RequestKind::Initial) => {
                let node = req.node.as_ref().map(|n| n.id.as_str()).unwrap_or("");
                tracing::debug!(resources = ?req.resource_names, node, "SDS subscription");
                true
            }
            Ok(RequestKind::Stale) => true,
            Err(err) => {
                let _ = self
                    .tx
                    .send(Err(Status::invalid_argument(err.to_string())))
                    .await;
                false
            }
        }
    }
}
