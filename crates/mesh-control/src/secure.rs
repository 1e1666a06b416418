//! The secure port (Istio's 15012): the embedded certificate authority
//! (`IstioCertificateService/CreateCertificate`) and ADS, both gRPC over
//! TLS on one listener, as istiod serves them. The server certificate is
//! issued by the mesh CA for istiod's names, so a proxy that trusts the
//! mesh root (`root-cert.pem` in the CA directory, Istio's
//! `istio-ca-root-cert`) can verify the control plane before it has an
//! identity of its own. Callers of the CA prove who they are with a token
//! (local mode: a JWT signed with the key in the CA directory, issued by
//! `mesh-control token`); the CA signs only the identity the token proves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_api::spiffe::SpiffeId;
use mesh_ca::auth::Authenticator;
use mesh_ca::auth::local::{DEFAULT_AUDIENCE, LocalTokenAuthority};
use mesh_ca::metrics::CaMetrics;
use mesh_ca::service::{CaService, IstioCertificateServiceServer, TlsIncoming};
use mesh_ca::{Authority, AuthorityConfig};
use prometheus_client::registry::Registry;

use crate::ads::AdsServer;

/// File in the CA directory holding the local-token signing key.
pub const TOKEN_KEY_FILE: &str = "local-token-key.pem";

/// Lifetime of the control plane's own serving certificate; it is
/// reissued on every start.
const SERVING_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Names istiod's certificate carries, so clients configured for Istio
/// (`istiod.istio-system.svc:15012`) verify ours.
const ISTIOD_NAMES: [&str; 4] = [
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "istiod",
    "localhost",
];

/// Settings of the secure port.
#[derive(Clone, Debug)]
pub struct SecureConfig {
    /// Istio's `cacerts` directory: loaded, or a self-signed root is
    /// generated there on first start.
    pub ca_dir: PathBuf,
    /// Trust domain.
    pub trust_domain: String,
    /// Extra names (DNS names or IP addresses) for the serving certificate.
    pub extra_names: Vec<String>,
}

/// The CA and TLS material of the secure port.
pub struct Secure {
    authority: Arc<Authority>,
    tokens: Arc<LocalTokenAuthority>,
    /// Who may prove an identity to the CA: the local token authority, or
    /// (in a cluster) Kubernetes TokenReview.
    authenticators: Vec<Arc<dyn Authenticator>>,
    tls: Arc<rustls::ServerConfig>,
}

// === impl Secure ===

impl Secure {
    /// Loads (or creates) the CA and the token key in `config.ca_dir` and
    /// issues the serving certificate.
    pub fn load(config: &SecureConfig) -> anyhow::Result<Self> {
        let authority_config = AuthorityConfig {
            trust_domain: config.trust_domain.clone(),
            ..AuthorityConfig::default()
        };
        let authority = Authority::load_or_generate(&config.ca_dir, authority_config)
            .with_context(|| format!("CA directory {}", config.ca_dir.display()))?;
        let tokens = load_or_generate_token_key(&config.ca_dir, &config.trust_domain)?;
        let mut names: Vec<String> = ISTIOD_NAMES.iter().map(|s| s.to_string()).collect();
        names.extend(config.extra_names.iter().cloned());
        let serving = authority
            .issue_serving_certificate(&names, SERVING_TTL)
            .context("issuing the control plane's serving certificate")?;
        let tls =
            mesh_ca::tls::ca_server_config(&serving).context("TLS config of the secure port")?;
        let tokens = Arc::new(tokens);
        Ok(Self {
            authority: Arc::new(authority),
            authenticators: vec![tokens.clone()],
            tokens,
            tls,
        })
    }

    /// Replaces the local token check with `authenticators` (in a cluster:
    /// [`mesh_ca::auth::kube::TokenReviewAuthenticator`]).
    pub fn set_authenticators(&mut self, authenticators: Vec<Arc<dyn Authenticator>>) {
        self.authenticators = authenticators;
    }

    /// The trust bundle (PEM), what proxies verify the control plane and
    /// each other with.
    pub fn root_pem(&self) -> String {
        self.authority.trust_bundle().to_pem()
    }

    /// The TLS config of the injection webhook: the same serving
    /// certificate (istiod's names), HTTP/1.1, no client certificate (the
    /// API server is verified by the network path, as Istio's is).
    pub fn webhook_tls(&self) -> Arc<rustls::ServerConfig> {
        let mut config = (*self.tls).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A local-mode token proving `identity`, valid for `ttl`.
    pub fn issue_token(&self, identity: &SpiffeId, ttl: Duration) -> anyhow::Result<String> {
        Ok(self.tokens.issue(identity, ttl)?)
    }

    /// Serves the CA and `ads` on `listener` until `shutdown`; CA metrics
    /// go into `registry`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        ads: AdsServer,
        metrics: CaMetrics,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let ca = Arc::new(CaService::new(self.authority, self.authenticators, metrics));
        let incoming = TlsIncoming::new(listener, self.tls);
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(ca))
            .add_service(ads.into_service())
            .serve_with_incoming_shutdown(incoming.stream, shutdown)
            .await
            .context("secure port")
    }
}

/// Registers the CA's metrics (`citadel_server_*`) in `registry`.
pub fn register_metrics(registry: &mut Registry) -> CaMetrics {
    CaMetrics::register(registry)
}

/// Binds the secure port.
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot bind the secure (CA + xDS over TLS) address {address}"))
}

fn load_or_generate_token_key(
    dir: &Path,
    trust_domain: &str,
) -> anyhow::Result<LocalTokenAuthority> {
    let path = dir.join(TOKEN_KEY_FILE);
    if path.exists() {
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return LocalTokenAuthority::from_key_pem(&pem, trust_domain, DEFAULT_AUDIENCE)
            .with_context(|| format!("{}", path.display()));
    }
    let tokens = LocalTokenAuthority::generate(trust_domain, DEFAULT_AUDIENCE)?;
    write_private(&path, tokens.key_pem())?;
    Ok(tokens)
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
