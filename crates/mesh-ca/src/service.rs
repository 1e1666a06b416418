//! Istio's `istio.v1.auth.IstioCertificateService` over gRPC and TLS.
//!
//! The two messages are declared with prost derives (field numbers as in
//! Istio's `security/v1alpha1/ca.proto`) and the tonic server and client are
//! written by hand, so no protoc is needed. A call flows: bearer token ->
//! [`Authenticator`]s (first success wins) -> [`Authority::sign`] with the
//! proven identity -> chain leaf..root. Every refusal is a precise gRPC
//! status and a metric; nothing on the request path panics, so a bad caller
//! never stops the CA.
//!
//! The server runs its own accept loop (TCP, then a rustls handshake with a
//! timeout, per connection in its own task) and hands finished TLS streams
//! to tonic, so a slow or broken handshake never blocks other callers.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_api::spiffe::SpiffeId;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError, http};
use tonic::server::NamedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::auth::{AuthError, Authenticator, bearer_token};
use crate::authority::Authority;
use crate::bundle::TrustBundle;
use crate::error::SignError;
use crate::metrics::CaMetrics;

/// Fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
/// Path of the `CreateCertificate` method.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The protobuf messages of `IstioCertificateService`.
pub mod pb {
    /// `istio.v1.auth.IstioCertificateRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IstioCertificateRequest {
        /// PEM-encoded certificate request.
        #[prost(string, tag = "1")]
        pub csr: String,
        /// Requested lifetime in seconds; 0 means the CA's default.
        #[prost(int64, tag = "3")]
        pub validity_duration: i64,
        /// Optional metadata (accepted, currently unused).
        #[prost(message, optional, tag = "4")]
        pub metadata: Option<prost_types::Struct>,
    }

    /// `istio.v1.auth.IstioCertificateResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IstioCertificateResponse {
        /// PEM certificates: leaf, intermediates, root.
        #[prost(string, repeated, tag = "1")]
        pub cert_chain: Vec<String>,
    }
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("CA gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The CA service: authenticators, authority and metrics.
pub struct CaService {
    authority: Arc<Authority>,
    authenticators: Vec<Arc<dyn Authenticator>>,
    metrics: CaMetrics,
}

impl std::fmt::Debug for CaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService")
            .field("authority", &self.authority)
            .field(
                "authenticators",
                &self
                    .authenticators
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

// === impl CaService ===

impl CaService {
    /// A service signing with `authority` for callers any of
    /// `authenticators` accepts.
    pub fn new(
        authority: Arc<Authority>,
        authenticators: Vec<Arc<dyn Authenticator>>,
        metrics: CaMetrics,
    ) -> Self {
        Self {
            authority,
            authenticators,
            metrics,
        }
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &CaMetrics {
        &self.metrics
    }

    /// Handles one `CreateCertificate` call.
    pub async fn create_certificate(
        &self,
        request: Request<pb::IstioCertificateRequest>,
    ) -> Result<Response<pb::IstioCertificateResponse>, Status> {
        self.metrics.received.inc();
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(str::to_string);
        let identity = match token {
            Some(token) => self.authenticate(&token).await?,
            None => return Err(self.auth_status(&AuthError::MissingToken)),
        };
        let req = request.into_inner();
        let ttl = match req.validity_duration {
            0 => None,
            s if s > 0 => Some(Duration::from_secs(s.unsigned_abs())),
            s => {
                return Err(Status::invalid_argument(format!(
                    "field validity_duration: {s} is negative; send seconds > 0, or 0 for the default"
                )));
            }
        };
        match self.authority.sign(&req.csr, &identity, ttl) {
            Ok(issued) => {
                self.metrics.issued.inc();
                tracing::debug!(identity = %identity, "issued workload certificate");
                Ok(Response::new(pb::IstioCertificateResponse {
                    cert_chain: issued.chain_pem,
                }))
            }
            Err(err) => Err(self.sign_status(&identity, err)),
        }
    }

    async fn authenticate(&self, token: &str) -> Result<SpiffeId, Status> {
        let mut first_error = None;
        for authenticator in &self.authenticators {
            match authenticator.authenticate(token).await {
                Ok(id) => return Ok(id),
                Err(err) => {
                    tracing::debug!(authenticator = authenticator.name(), error = %err, "authentication failed");
                    first_error.get_or_insert(err);
                }
            }
        }
        let err = first_error.unwrap_or(AuthError::Rejected {
            backend: "ca",
            reason: "no authenticator is configured".into(),
        });
        Err(self.auth_status(&err))
    }

    fn auth_status(&self, err: &AuthError) -> Status {
        self.metrics.fail_auth(err.reason());
        tracing::info!(reason = err.reason(), error = %err, "CA caller not authenticated");
        match err {
            AuthError::Unavailable { .. } => Status::unavailable(err.to_string()),
            _ => Status::unauthenticated(err.to_string()),
        }
    }

    fn sign_status(&self, identity: &SpiffeId, err: SignError) -> Status {
        match &err {
            SignError::Csr(csr) => {
                tracing::info!(identity = %identity, reason = csr.reason(), error = %csr, "CSR refused");
                let code = if csr.is_policy_refusal() {
                    self.metrics.refuse_csr(csr.reason());
                    Code::PermissionDenied
                } else {
                    self.metrics.parse_errors.inc();
                    Code::InvalidArgument
                };
                Status::new(code, err.to_string())
            }
            SignError::ForeignIdentity { .. } => {
                self.metrics.refuse_csr("trust_domain");
                Status::permission_denied(err.to_string())
            }
            SignError::CaExpiring { .. } | SignError::Internal(_) => {
                self.metrics.sign_errors.inc();
                tracing::error!(identity = %identity, error = %err, "signing failed");
                Status::internal(err.to_string())
            }
        }
    }
}

/// The tonic server of [`CaService`] (what protoc would have generated).
#[derive(Clone, Debug)]
pub struct IstioCertificateServiceServer {
    inner: Arc<CaService>,
}

impl IstioCertificateServiceServer {
    /// Wraps the service.
    pub fn new(inner: Arc<CaService>) -> Self {
        Self { inner }
    }
}

impl NamedService for IstioCertificateServiceServer {
    const NAME: &'static str = SERVICE_NAME;
}

struct CreateCertificateSvc(Arc<CaService>);

impl tonic::server::UnaryService<pb::IstioCertificateRequest> for CreateCertificateSvc {
    type Response = pb::IstioCertificateResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<pb::IstioCertificateRequest>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.create_certificate(request).await })
    }
}

impl<B> Service<http::Request<B>> for IstioCertificateServiceServer
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == CREATE_CERTIFICATE_PATH {
            let inner = Arc::clone(&self.inner);
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(CreateCertificateSvc(inner), req).await)
            })
        } else {
            Box::pin(async move {
                Ok(Status::unimplemented("no such method on IstioCertificateService").into_http())
            })
        }
    }
}

/// Serves `service` on `listener` over TLS with `tls` until `shutdown`
/// completes.
pub async fn serve_tls(
    listener: TcpListener,
    service: Arc<CaService>,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let incoming = TlsIncoming::new(listener, tls);
    let result = tonic::transport::Server::builder()
        .add_service(IstioCertificateServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming.stream, shutdown)
        .await;
    Ok(result?)
}

/// TLS connections accepted on a listener, for tonic's
/// `serve_with_incoming`: each handshake runs on its own task with a
/// timeout, so a slow or silent client never holds up the others. The
/// accept loop stops when this is dropped.
pub struct TlsIncoming {
    /// The handshaken connections.
    pub stream: tokio_stream::wrappers::ReceiverStream<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >,
    _accept_loop: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TlsIncoming {
    /// Starts accepting on `listener` with `tls`.
    pub fn new(listener: TcpListener, tls: Arc<rustls::ServerConfig>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        let acceptor = TlsAcceptor::from(tls);
        let accept_loop = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %err, "TLS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self {
            stream: tokio_stream::wrappers::ReceiverStream::new(rx),
            _accept_loop: AbortOnDrop(accept_loop),
        }
    }
}

/// Why a CA client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// The endpoint URI or TLS settings are invalid.
    #[error("CA endpoint {endpoint}: {source}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// A gRPC client of `IstioCertificateService`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CaClient {
    channel: Channel,
}

// === impl CaClient ===

impl CaClient {
    /// A client of the CA at `endpoint` (`https://host:port`), trusting
    /// `roots` for the CA's serving certificate, which must carry the DNS
    /// name `server_name`. Connects lazily, so a CA that is down is reported
    /// by the calls, not here.
    pub fn new(
        endpoint: &str,
        roots: &TrustBundle,
        server_name: &str,
    ) -> Result<Self, ClientBuildError> {
        let err = |source| ClientBuildError::Endpoint {
            endpoint: endpoint.to_string(),
            source,
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(roots.to_pem()))
            .domain_name(server_name);
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(err)?
            .tls_config(tls)
            .map_err(err)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self { channel })
    }

    /// Calls `CreateCertificate` with `token` as bearer credential.
    pub async fn create_certificate(
        &self,
        csr_pem: &str,
        validity: Option<Duration>,
        token: &str,
    ) -> Result<Vec<String>, Status> {
        let seconds = validity
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.create_certificate_raw(csr_pem, seconds, token).await
    }

    /// Calls `CreateCertificate` with the wire value of `validity_duration`
    /// (seconds; 0 for the CA's default).
    pub async fn create_certificate_raw(
        &self,
        csr_pem: &str,
        validity_duration: i64,
        token: &str,
    ) -> Result<Vec<String>, Status> {
        let message = pb::IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration,
            metadata: None,
        };
        let mut request = Request::new(message);
        let value = format!("Bearer {token}").parse().map_err(|_| {
            Status::invalid_argument("token contains characters not allowed in metadata")
        })?;
        request.metadata_mut().insert("authorization", value);
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("CA not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH);
        let response: Response<pb::IstioCertificateResponse> = grpc
            .unary(request, path, tonic_prost::ProstCodec::default())
            .await?;
        Ok(response.into_inner().cert_chain)
    }
}
