//! The workload certificate client (used by the proxy).
//!
//! It keeps one SVID current for one identity: generates a P-256 key in
//! memory (never written anywhere), sends a CSR to the CA with the
//! workload's token, checks the answer (our key, our identity, chains to the
//! mesh roots), and publishes the resulting rustls configs as one
//! [`MeshTls`] through a `tokio::sync::watch` channel. Connections read the
//! current value when they start, so a rotation takes no lock on the request
//! path and needs no restart.
//!
//! Lifecycle, as a loop: fetch -> publish -> sleep until half of the
//! remaining lifetime (or until [`CertWatch::rotate_now`]) -> fetch again.
//! A failed fetch is retried with exponential backoff and jitter; the
//! published certificate stays in place meanwhile, so traffic continues as
//! long as it is valid. The loop ends when every [`CertWatch`] is dropped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::spiffe::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{Notify, watch};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::TrustBundle;
use crate::service::CaClient;
use crate::tls::{MeshTls, PeerIdentities, TlsError, WorkloadIdentity};

/// Shortest wait between two successful fetches.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Why one certificate fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The key or CSR could not be generated.
    #[error("generating key/CSR for {identity}: {source}")]
    Generate {
        /// The identity.
        identity: String,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// The workload token could not be read.
    #[error("reading the workload token: {0}")]
    Token(#[source] std::io::Error),
    /// The CA refused or could not be reached.
    #[error("CA call failed: {0}")]
    Ca(#[from] tonic::Status),
    /// The CA answered with something that is not our certificate.
    #[error("CA response refused: {0}")]
    Response(String),
    /// The rustls configs could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Where the workload's bearer token comes from. Read on every fetch, since
/// projected Kubernetes tokens are rotated on disk.
pub trait TokenSource: Send + Sync + 'static {
    /// The current token.
    fn token(&self) -> std::io::Result<String>;
}

/// A fixed token (local mode: handed over by the control plane).
#[derive(Clone)]
pub struct StaticToken(pub String);

impl TokenSource for StaticToken {
    fn token(&self) -> std::io::Result<String> {
        Ok(self.0.clone())
    }
}

/// A token file re-read on every fetch (Kubernetes projected token).
#[derive(Clone, Debug)]
pub struct TokenFile(pub PathBuf);

impl TokenSource for TokenFile {
    fn token(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(&self.0)?.trim().to_string())
    }
}

/// Retry pacing when the CA is unreachable or refuses.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

/// Settings of a [`CertClient`].
pub struct CertClientConfig {
    /// The identity to obtain (must be what the token proves).
    pub identity: SpiffeId,
    /// The CA.
    pub ca: CaClient,
    /// The workload's credential.
    pub token: Arc<dyn TokenSource>,
    /// The mesh roots: the only trust anchors of the published configs.
    pub bundle: TrustBundle,
    /// Requested lifetime; `None` for the CA's default.
    pub ttl: Option<Duration>,
    /// Retry pacing.
    pub backoff: Backoff,
}

/// Keeps a workload certificate current. Run it with [`CertClient::run`].
pub struct CertClient {
    config: CertClientConfig,
    tx: watch::Sender<Option<Arc<MeshTls>>>,
    rotate: Arc<Notify>,
    rng: SystemRandom,
}

/// The reading side: current configs, change notification, rotation on demand.
#[derive(Clone, Debug)]
pub struct CertWatch {
    rx: watch::Receiver<Option<Arc<MeshTls>>>,
    rotate: Arc<Notify>,
}

// === impl CertWatch ===

impl CertWatch {
    /// The configs in force, if a certificate was obtained yet.
    pub fn current(&self) -> Option<Arc<MeshTls>> {
        self.rx.borrow().clone()
    }

    /// The underlying receiver (for `changed()` loops in the proxy).
    pub fn receiver(&self) -> watch::Receiver<Option<Arc<MeshTls>>> {
        self.rx.clone()
    }

    /// Waits until a certificate is available and returns it.
    pub async fn ready(&mut self) -> Option<Arc<MeshTls>> {
        self.rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone())
    }

    /// Asks the client to fetch a new certificate now (e.g. after a root
    /// rotation or a key compromise).
    pub fn rotate_now(&self) {
        self.rotate.notify_one();
    }
}

// === impl CertClient ===

impl CertClient {
    /// A client and its watch handle. Nothing happens until [`Self::run`].
    pub fn new(config: CertClientConfig) -> (Self, CertWatch) {
        let (tx, rx) = watch::channel(None);
        let rotate = Arc::new(Notify::new());
        let watch = CertWatch {
            rx,
            rotate: rotate.clone(),
        };
        (
            Self {
                config,
                tx,
                rotate,
                rng: SystemRandom::new(),
            },
            watch,
        )
    }

    /// Obtains one certificate and builds its configs (does not publish).
    pub async fn fetch(&self) -> Result<Arc<MeshTls>, ClientError> {
        let config = &self.config;
        let (key, csr) = generate_key_and_csr(&config.identity)?;
        let token = config.token.token().map_err(ClientError::Token)?;
        let chain_pem = config
            .ca
            .create_certificate(&csr, config.ttl, &token)
            .await?;
        let workload = check_response(&config.identity, &key, &chain_pem, &config.bundle)?;
        Ok(Arc::new(MeshTls::new(&workload, &config.bundle)?))
    }

    /// Keeps the certificate current until every [`CertWatch`] is dropped.
    pub async fn run(self) {
        let mut delay = self.config.backoff.initial;
        loop {
            let wait = match self.fetch().await {
                Ok(tls) => {
                    let remaining = tls
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tracing::info!(identity = %tls.identity, valid_for = ?remaining, "workload certificate rotated");
                    self.tx.send_replace(Some(tls));
                    delay = self.config.backoff.initial;
                    // Floor: a certificate that is (nearly) expired on
                    // arrival must not turn this into a busy loop.
                    (remaining / 2).max(MIN_REFRESH)
                }
                Err(err) => {
                    let current_valid = self
                        .tx
                        .borrow()
                        .as_ref()
                        .is_some_and(|tls| tls.not_after > SystemTime::now());
                    tracing::warn!(
                        identity = %self.config.identity,
                        error = %err,
                        retry_in = ?delay,
                        current_valid,
                        "workload certificate fetch failed"
                    );
                    let wait = self.jitter(delay);
                    delay = (delay * 2).min(self.config.backoff.max);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.rotate.notified() => {}
                _ = self.tx.closed() => return,
            }
        }
    }

    /// `d` scaled by a random factor in [0.8, 1.2), so many proxies that lost
    /// the CA together do not retry in lockstep.
    fn jitter(&self, d: Duration) -> Duration {
        let mut b = [0u8; 1];
        let r = if self.rng.fill(&mut b).is_ok() {
            f64::from(b[0]) / 256.0
        } else {
            0.5
        };
        d.mul_f64(0.8 + 0.4 * r)
    }
}

/// A fresh P-256 key and a CSR for `identity` (URI SAN only, empty subject).
pub fn generate_key_and_csr(identity: &SpiffeId) -> Result<(KeyPair, String), ClientError> {
    let generate = |source| ClientError::Generate {
        identity: identity.to_string(),
        source,
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        identity.to_string().try_into().map_err(generate)?,
    )];
    let csr = params
        .serialize_request(&key)
        .map_err(generate)?
        .pem()
        .map_err(generate)?;
    Ok((key, csr))
}

/// Checks a CA answer is a certificate for `identity` and `key`, chaining to
/// `bundle`, and pairs it with the key.
pub fn check_response(
    identity: &SpiffeId,
    key: &KeyPair,
    chain_pem: &[String],
    bundle: &TrustBundle,
) -> Result<WorkloadIdentity, ClientError> {
    let bad = |m: String| ClientError::Response(m);
    let mut chain = Vec::new();
    for pem in chain_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(cert.map_err(|e| bad(format!("chain is not PEM: {e}")))?);
        }
    }
    let leaf = chain
        .first()
        .ok_or_else(|| bad("empty certificate chain".into()))?;
    let (_, x509) =
        X509Certificate::from_der(leaf).map_err(|e| bad(format!("leaf does not parse: {e}")))?;
    if x509.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(bad("leaf certificate is not for our key".into()));
    }
    PeerIdentities::one_of([identity.clone()])
        .check(leaf)
        .map_err(|e| bad(format!("leaf certificate: {e}")))?;
    verify_chain(leaf, &chain[1..], bundle)
        .map_err(|e| bad(format!("leaf does not chain to the mesh roots: {e}")))?;
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let validity = x509.validity();
    let key_der = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(WorkloadIdentity {
        identity: identity.clone(),
        not_before: time(validity.not_before.timestamp()),
        not_after: time(validity.not_after.timestamp()),
        chain,
        key: key_der,
    })
}

fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
) -> Result<(), String> {
    let roots = bundle.root_store().map_err(|e| e.to_string())?;
    let provider = crate::crypto_provider();
    let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        intermediates,
        rustls::pki_types::UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| e.to_string())
}
