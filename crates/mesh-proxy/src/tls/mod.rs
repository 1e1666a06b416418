//! TLS on the data path: rustls configs built from the compiled settings
//! ([`crate::runtime::tls`]), the runtime's secrets and the workload
//! identity, and the handshakes that use them.
//!
//! Configs are built on first use and cached per runtime generation (the
//! settings they come from are immutable there), keyed by the settings'
//! address, and rebuilt when the workload certificate rotates: a new
//! connection always presents the newest certificate, an open one keeps
//! the one it started with.
//!
//! A server offering ALPN protocols none of which the client offers goes
//! on without ALPN, as Envoy does (rustls alone would refuse the
//! handshake): a mesh client offering only `istio` still reaches an
//! inbound chain that speaks `h2` and `http/1.1`.

pub mod identity;
mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_ca::tls::MeshTls;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use crate::runtime::Runtime;
use crate::runtime::tls::{
    CaSource, CertSource, CompiledSecret, DownstreamTls, SanMatcher, SecretRef, UpstreamTls,
    Validation,
};
pub use verify::PeerNames;

/// Why a TLS config cannot be built for a connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The secret is neither in the bootstrap nor received over SDS.
    #[error("secret {0:?} is not known (not in the bootstrap, not received over SDS)")]
    MissingSecret(String),
    /// The secret holds the other kind of material.
    #[error("secret {name:?} is not a {expected}")]
    WrongKind {
        /// The secret.
        name: String,
        /// What was needed.
        expected: &'static str,
    },
    /// The workload identity has no certificate (no CA configured, or none
    /// obtained yet).
    #[error("secret {0:?} comes from the workload identity, which has no certificate yet")]
    NoIdentity(String),
    /// rustls refused the material.
    #[error("building the TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("building the client certificate verifier: {0}")]
    Verifier(String),
}

/// The server side of one filter chain's TLS.
#[derive(Debug)]
pub struct ServerConfigs {
    /// With the chain's ALPN protocols.
    pub alpn: Arc<ServerConfig>,
    /// Without ALPN, for clients offering none of them.
    pub no_alpn: Arc<ServerConfig>,
    /// The names of the certificate presented (`By=` of XFCC).
    pub local: PeerNames,
}

/// The client side of one upstream TLS setting.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The rustls config. It never offers ALPN `istio-peer-exchange`:
    /// only a TCP proxy that runs the exchange may (see `exchange`).
    pub config: Arc<ClientConfig>,
    /// The same config offering the settings' ALPN list in full, when it
    /// names `istio-peer-exchange`.
    pub exchange: Option<Arc<ClientConfig>>,
    /// SNI to send (empty: none).
    pub sni: String,
    /// Changes whenever the settings or the material do: connections made
    /// with another fingerprint are not reused.
    pub fingerprint: u64,
    /// The first URI SAN of the client certificate presented, if any
    /// (Envoy's `%UPSTREAM_LOCAL_URI_SAN%`... as Istio reads it).
    pub local_uri: Option<Arc<str>>,
}

type Cached<T> = (Option<Arc<MeshTls>>, Arc<T>);

/// The configs of one runtime generation.
#[derive(Debug, Default)]
pub struct Configs {
    server: Mutex<HashMap<usize, Cached<ServerConfigs>>>,
    client: Mutex<HashMap<usize, Cached<ClientTls>>>,
}

/// A downstream TLS connection.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
/// An upstream TLS connection.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

// === impl Configs ===

impl Configs {
    /// The server configs of `tls` (a chain of a listener of `runtime`).
    pub fn server(
        &self,
        runtime: &Runtime,
        identity: Option<&Arc<MeshTls>>,
        tls: &DownstreamTls,
    ) -> Result<Arc<ServerConfigs>, TlsError> {
        let key = std::ptr::from_ref(tls) as usize;
        if let Some(hit) = cached(&self.server, key, identity) {
            return Ok(hit);
        }
        let built = Arc::new(build_server(runtime, identity, tls)?);
        store(&self.server, key, identity, &built);
        Ok(built)
    }

    /// The client config of `tls` (a cluster's, or a transport socket
    /// match's, of `runtime`).
    pub fn client(
        &self,
        runtime: &Runtime,
        identity: Option<&Arc<MeshTls>>,
        tls: &UpstreamTls,
    ) -> Result<Arc<ClientTls>, TlsError> {
        let key = std::ptr::from_ref(tls) as usize;
        if let Some(hit) = cached(&self.client, key, identity) {
            return Ok(hit);
        }
        let built = Arc::new(build_client(runtime, identity, tls)?);
        store(&self.client, key, identity, &built);
        Ok(built)
    }
}

fn cached<T>(
    map: &Mutex<HashMap<usize, Cached<T>>>,
    key: usize,
    identity: Option<&Arc<MeshTls>>,
) -> Option<Arc<T>> {
    let map = map.lock().ok()?;
    let (id, config) = map.get(&key)?;
    let same = match (id, identity) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    same.then(|| config.clone())
}

fn store<T>(
    map: &Mutex<HashMap<usize, Cached<T>>>,
    key: usize,
    identity: Option<&Arc<MeshTls>>,
    config: &Arc<T>,
) {
    if let Ok(mut map) = map.lock() {
        map.insert(key, (identity.cloned(), config.clone()));
    }
}

fn build_server(
    runtime: &Runtime,
    identity: Option<&Arc<MeshTls>>,
    tls: &DownstreamTls,
) -> Result<ServerConfigs, TlsError> {
    let provider = mesh_ca::crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let trust = tls
        .validation
        .as_ref()
        .map(|v| trust(runtime, identity, v))
        .transpose()?;
    let builder = match trust {
        Some((Some(roots), sans)) => {
            let mut b = WebPkiClientVerifier::builder_with_provider(roots, provider);
            if !tls.require_client_certificate {
                b = b.allow_unauthenticated();
            }
            let inner = b.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(verify::ClientVerifier { inner, sans }))
        }
        _ => builder.with_no_client_auth(),
    };
    let Some(source) = &tls.certificate else {
        // Compilation refuses a chain without a certificate.
        return Err(TlsError::MissingSecret(String::new()));
    };
    let (chain, key) = certificate(runtime, identity, source)?;
    let local = chain.first().map(PeerNames::of).unwrap_or_default();
    let mut config = builder.with_single_cert(chain, key)?;
    let mut no_alpn = config.clone();
    no_alpn.alpn_protocols.clear();
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(ServerConfigs {
        alpn: Arc::new(config),
        no_alpn: Arc::new(no_alpn),
        local,
    })
}

fn build_client(
    runtime: &Runtime,
    identity: Option<&Arc<MeshTls>>,
    tls: &UpstreamTls,
) -> Result<ClientTls, TlsError> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{tls:?}").hash(&mut hasher);
    identity
        .map(|id| Arc::as_ptr(id) as usize)
        .hash(&mut hasher);
    let provider = mesh_ca::crypto_provider();
    let (roots, sans) = match &tls.validation {
        Some(v) => trust(runtime, identity, v)?,
        None => (None, Vec::new()),
    };
    if let Some(r) = &roots {
        for anchor in r.roots.iter() {
            anchor.subject_public_key_info.as_ref().hash(&mut hasher);
        }
    }
    let verifier = verify::ServerVerifier {
        roots,
        sans,
        provider: provider.clone(),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut local_uri = None;
    let mut config = match &tls.certificate {
        Some(source) => {
            let (chain, key) = certificate(runtime, identity, source)?;
            chain.hash(&mut hasher);
            local_uri = chain
                .first()
                .and_then(|c| PeerNames::of(c).uris.into_iter().next())
                .map(Arc::from);
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.enable_sni = !tls.sni.is_empty();
    let exchange_alpn = crate::telemetry::peer::exchange::ALPN;
    let exchange = tls.alpn.iter().any(|p| p == exchange_alpn).then(|| {
        let mut with = config.clone();
        with.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(with)
    });
    // Offering it without running the exchange would let a mesh server
    // select it and write its header into the application's bytes.
    config.alpn_protocols = tls
        .alpn
        .iter()
        .filter(|p| *p != exchange_alpn)
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(ClientTls {
        config: Arc::new(config),
        exchange,
        sni: tls.sni.clone(),
        fingerprint: hasher.finish(),
        local_uri,
    })
}

type Chain = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn certificate(
    runtime: &Runtime,
    identity: Option<&Arc<MeshTls>>,
    source: &CertSource,
) -> Result<Chain, TlsError> {
    match source {
        CertSource::Inline(ck) => Ok((ck.chain.clone(), ck.key.clone_key())),
        CertSource::Sds(SecretRef::Resource(name)) => match runtime.secret(name) {
            Some(CompiledSecret::Certificate(ck)) => Ok((ck.chain.clone(), ck.key.clone_key())),
            Some(CompiledSecret::Validation(_)) => Err(TlsError::WrongKind {
                name: name.clone(),
                expected: "TLS certificate",
            }),
            None => Err(TlsError::MissingSecret(name.clone())),
        },
        CertSource::Sds(SecretRef::Workload(name)) => {
            let id = identity.ok_or_else(|| TlsError::NoIdentity(name.clone()))?;
            Ok((id.chain().to_vec(), id.private_key().clone_key()))
        }
    }
}

type Trust = (Option<Arc<RootCertStore>>, Vec<SanMatcher>);

fn trust(
    runtime: &Runtime,
    identity: Option<&Arc<MeshTls>>,
    v: &Validation,
) -> Result<Trust, TlsError> {
    let mut sans = v.sans.clone();
    let roots = match &v.ca {
        None => None,
        Some(CaSource::Inline(ders)) => Some(root_store(ders)?),
        Some(CaSource::Sds(SecretRef::Resource(name))) => match runtime.secret(name) {
            Some(CompiledSecret::Validation(inner)) => {
                sans.extend(inner.sans.iter().cloned());
                match &inner.ca {
                    Some(CaSource::Inline(ders)) => Some(root_store(ders)?),
                    _ => None,
                }
            }
            Some(CompiledSecret::Certificate(_)) => {
                return Err(TlsError::WrongKind {
                    name: name.clone(),
                    expected: "validation context",
                });
            }
            None => return Err(TlsError::MissingSecret(name.clone())),
        },
        Some(CaSource::Sds(SecretRef::Workload(name))) => {
            let id = identity.ok_or_else(|| TlsError::NoIdentity(name.clone()))?;
            Some(id.roots().clone())
        }
    };
    Ok((roots, sans))
}

fn root_store(ders: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for der in ders {
        store.add(der.clone())?;
    }
    Ok(Arc::new(store))
}

// === handshakes ===

/// Terminates TLS on `stream` with `configs`, choosing the ALPN-less
/// config when the client offers none of the chain's protocols.
pub async fn accept(stream: TcpStream, configs: &ServerConfigs) -> std::io::Result<ServerStream> {
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = acceptor.await?;
    let hello = start.client_hello();
    let overlap = match hello.alpn() {
        None => true,
        Some(mut offered) => offered.any(|p| {
            configs
                .alpn
                .alpn_protocols
                .iter()
                .any(|ours| ours.as_slice() == p)
        }),
    };
    let config = if overlap {
        configs.alpn.clone()
    } else {
        configs.no_alpn.clone()
    };
    start.into_stream(config).await
}

/// Originates TLS on `stream`. No SNI is sent when `tls.sni` is empty;
/// `fallback` names the server then (rustls needs a name, and never sends
/// an IP address as SNI).
pub async fn connect(
    stream: TcpStream,
    tls: &ClientTls,
    fallback: std::net::IpAddr,
) -> std::io::Result<ClientStream> {
    let sni = tls.sni.as_str();
    let name = if sni.is_empty() {
        ServerName::IpAddress(fallback.into())
    } else {
        ServerName::try_from(sni.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("SNI {sni:?} is not a valid server name: {e}"),
            )
        })?
    };
    tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(name, stream)
        .await
}

/// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%` for a failed upstream
/// connection: when `e` is a TLS error (rustls', as [`connect`] returns
/// it), its text between Envoy's markers, e.g.
/// `TLS_error:|invalid peer certificate: UnknownIssuer:TLS_error_end`
/// (Envoy puts BoringSSL's error there instead). `None` for anything else
/// (a refused or timed out TCP connection, a handshake the peer cut short
/// without an alert). A certificate refused by this proxy's own checks
/// (SANs, SPIFFE rules) is told by its reason, e.g. `invalid peer
/// certificate: no subject alternative name of the peer certificate
/// matches the configured matchers`.
pub fn failure_reason(e: &std::io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(why)) => {
            format!(
                "TLS_error:|invalid peer certificate: {}:TLS_error_end",
                why.0
            )
        }
        tls => format!("TLS_error:|{tls}:TLS_error_end"),
    })
}

/// What a terminated connection knows about its peer and itself.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// The peer's certificate names, if it presented one.
    pub peer: Option<PeerNames>,
    /// SHA-256 of the peer's leaf certificate, lowercase hex.
    pub peer_hash: Option<String>,
    /// The names of the certificate presented here.
    pub local: PeerNames,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
}

impl Session {
    /// The session of an accepted connection.
    pub fn of(stream: &ServerStream, local: &PeerNames) -> Self {
        let conn = stream.get_ref().1;
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        Self {
            peer: leaf.map(PeerNames::of),
            peer_hash: leaf.map(|c| hex(ring::digest::digest(&ring::digest::SHA256, c).as_ref())),
            local: local.clone(),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
