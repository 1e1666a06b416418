//! rustls configurations of the mesh, with SPIFFE-aware peer verification.
//!
//! Mesh mTLS trusts only the mesh's roots (never the system store) and
//! identifies peers by the one URI SAN of their SVID, not by DNS name. Both
//! directions check the chain with webpki against the trust bundle, then the
//! peer's SPIFFE id against a [`PeerIdentities`] policy: any identity of the
//! trust domain, or one of an expected set (e.g. the service accounts behind
//! an upstream cluster). Every config is built with the *ring* provider named
//! explicitly.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use mesh_api::spiffe::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::ServingCertificate;
use crate::bundle::{BundleError, TrustBundle};

/// ALPN of gRPC over TLS.
const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate PEM text holds no certificate.
    #[error("{what}: no PEM CERTIFICATE block")]
    NoCertificate {
        /// Which certificate.
        what: &'static str,
    },
    /// A private key PEM text holds no usable key.
    #[error("{what}: no usable PEM private key: {detail}")]
    Key {
        /// Which key.
        what: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// The trust bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// rustls refused the configuration.
    #[error("building the TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("building the client certificate verifier: {0}")]
    Verifier(String),
}

/// Why a peer's certificate is refused after its chain verified.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The certificate has no single URI SAN holding a mesh SPIFFE id.
    #[error("peer certificate has no single SPIFFE URI SAN")]
    NoSpiffeId,
    /// The peer's identity is outside the trust domain.
    #[error("peer identity {identity} is outside trust domain {trust_domain:?}")]
    TrustDomain {
        /// The peer's identity.
        identity: String,
        /// The expected trust domain.
        trust_domain: String,
    },
    /// The peer's identity is not one of the expected ones.
    #[error("peer identity {identity} is not among the expected identities")]
    Unexpected {
        /// The peer's identity.
        identity: String,
    },
}

/// Which peer identities a connection accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentities {
    /// Any identity of the trust domain.
    AnyInTrustDomain(String),
    /// Exactly these identities.
    OneOf(Arc<BTreeSet<SpiffeId>>),
}

// === impl PeerIdentities ===

impl PeerIdentities {
    /// A policy accepting exactly `ids`.
    pub fn one_of(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self::OneOf(Arc::new(ids.into_iter().collect()))
    }

    /// Checks a verified peer certificate against the policy.
    pub fn check(&self, end_entity: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
        let id = peer_identity(end_entity).ok_or(IdentityError::NoSpiffeId)?;
        match self {
            PeerIdentities::AnyInTrustDomain(td) if &id.trust_domain == td => Ok(id),
            PeerIdentities::AnyInTrustDomain(td) => Err(IdentityError::TrustDomain {
                identity: id.to_string(),
                trust_domain: td.clone(),
            }),
            PeerIdentities::OneOf(set) if set.contains(&id) => Ok(id),
            PeerIdentities::OneOf(_) => Err(IdentityError::Unexpected {
                identity: id.to_string(),
            }),
        }
    }

    fn verify(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        self.check(end_entity).map(|_| ()).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })
    }
}

/// The SPIFFE id of a certificate: its only URI SAN, if that parses.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let first = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    first.parse().ok()
}

/// A workload's certificate chain and private key.
pub struct WorkloadIdentity {
    /// The identity of the leaf.
    pub identity: SpiffeId,
    /// Leaf, intermediates, root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (never leaves memory).
    pub key: PrivateKeyDer<'static>,
    /// Start of validity of the leaf.
    pub not_before: SystemTime,
    /// End of validity of the leaf.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentity {
    /// Builds one from PEM texts (a chain as returned by the CA).
    pub fn from_pem(
        identity: SpiffeId,
        chain_pem: &[String],
        key_pem: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self, TlsError> {
        let mut chain = Vec::new();
        for pem in chain_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|_| TlsError::NoCertificate {
                    what: "workload chain",
                })?);
            }
        }
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                what: "workload chain",
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key {
            what: "workload key",
            detail: e.to_string(),
        })?;
        Ok(Self {
            identity,
            chain,
            key,
            not_before,
            not_after,
        })
    }

    /// A copy (private keys are not `Clone` in rustls on purpose).
    pub fn clone_identity(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// The rustls configs of one workload identity at one point in time.
/// Published as a whole through a watch channel; connections take the
/// current `Arc` when they start and keep it.
#[derive(Clone, Debug)]
pub struct MeshTls {
    /// The identity presented.
    pub identity: SpiffeId,
    /// End of validity of the presented certificate.
    pub not_after: SystemTime,
    /// Inbound config: requires a client SVID of the trust domain.
    pub server: Arc<ServerConfig>,
    /// Outbound config: accepts any server SVID of the trust domain.
    pub client: Arc<ClientConfig>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
}

// === impl MeshTls ===

impl MeshTls {
    /// Configs presenting `workload`, trusting only `bundle`.
    pub fn new(workload: &WorkloadIdentity, bundle: &TrustBundle) -> Result<Self, TlsError> {
        let roots = Arc::new(bundle.root_store()?);
        let chain = workload.chain.clone();
        let key = Arc::new(workload.key.clone_key());
        let any = PeerIdentities::AnyInTrustDomain(workload.identity.trust_domain.clone());
        Ok(Self {
            identity: workload.identity.clone(),
            not_after: workload.not_after,
            server: build_server(&roots, &chain, &key, any.clone())?,
            client: build_client(&roots, &chain, &key, any)?,
            chain,
            key,
            roots,
        })
    }

    /// An inbound config accepting only `allowed` client identities.
    pub fn server_config_for(
        &self,
        allowed: PeerIdentities,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        build_server(&self.roots, &self.chain, &self.key, allowed)
    }

    /// An outbound config accepting only `expected` server identities. The
    /// `ServerName` passed at connect time is not checked (SVIDs carry no
    /// DNS names); any valid name will do.
    pub fn client_config_for(
        &self,
        expected: PeerIdentities,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        build_client(&self.roots, &self.chain, &self.key, expected)
    }

    /// The presented chain (leaf first), for proxies that build their own
    /// configs from it (SDS `default`).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key of the presented leaf. It stays on this host:
    /// callers build TLS configs with it; the only serialisation is the SDS
    /// `default` secret handed to the local Envoy over a 0600 Unix socket
    /// ([`crate::sds`]), never anything sent to the control plane.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The mesh roots these configs trust (SDS `ROOTCA`).
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }
}

fn build_server(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    allowed: PeerIdentities,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crate::crypto_provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(SpiffeClientVerifier { inner, allowed });
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())?;
    Ok(Arc::new(config))
}

fn build_client(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    expected: PeerIdentities,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crate::crypto_provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: roots.clone(),
        provider: provider.clone(),
        expected,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain.to_vec(), key.clone_key())?;
    Ok(Arc::new(config))
}

/// The TLS config of the CA's gRPC endpoint (server auth only: callers
/// prove who they are with a token, since a new workload has no SVID yet).
pub fn ca_server_config(serving: &ServingCertificate) -> Result<Arc<ServerConfig>, TlsError> {
    let mut chain = Vec::new();
    for pem in &serving.chain_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(cert.map_err(|_| TlsError::NoCertificate {
                what: "CA serving chain",
            })?);
        }
    }
    let key =
        PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).map_err(|e| TlsError::Key {
            what: "CA serving key",
            detail: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Verifies a server's SVID: chain to the mesh roots, then identity.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: PeerIdentities,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        self.expected.verify(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies a client's SVID: webpki client verification, then identity.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: PeerIdentities,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.verify(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
