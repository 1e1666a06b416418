//! The SDS resources, named the way Istio's agent names them.
//!
//! `default` is the workload SVID (leaf and intermediates, with its private
//! key) and `ROOTCA` the trust bundle. Both are built from one [`Snapshot`]
//! of the published certificate and roots, so a response never mixes two
//! generations. Everything here is pure: the stream code decides when to
//! ask, this module only says what the answer is.

use std::sync::Arc;

use mesh_api::xds::pack_any;
use mesh_api::xds::pb::envoy::config::core::v3::DataSource;
use mesh_api::xds::pb::envoy::config::core::v3::data_source::Specifier;
use mesh_api::xds::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use mesh_api::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate,
};
use mesh_api::xds::pb::google::protobuf::Any;
use rustls::pki_types::PrivateKeyDer;

use crate::bundle::{TrustBundle, pem_cert};
use crate::tls::MeshTls;

/// SDS name of the workload certificate and key (Istio's
/// `WorkloadKeyCertResourceName`).
pub const DEFAULT_SECRET: &str = "default";
/// SDS name of the trust bundle (Istio's `RootCertReqResourceName`).
pub const ROOT_SECRET: &str = "ROOTCA";

/// What the server can say about one requested name.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The resource, ready to send.
    Ready(Any),
    /// A known name with nothing to serve yet (`default` before the first
    /// certificate): Envoy keeps waiting, as with Istio's agent.
    Pending,
    /// A name this server does not serve.
    Unknown,
}

/// The certificate and roots in force at one instant.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    /// The workload's configs, once a certificate was obtained.
    pub cert: Option<Arc<MeshTls>>,
    /// The mesh roots.
    pub roots: TrustBundle,
}

// === impl Snapshot ===

impl Snapshot {
    /// The resource named `name`, packed in an `Any`.
    pub fn lookup(&self, name: &str) -> Lookup {
        match name {
            DEFAULT_SECRET => match &self.cert {
                Some(tls) => match workload_secret(tls, &self.roots) {
                    Some(secret) => Lookup::Ready(pack_any(secret)),
                    None => {
                        tracing::error!(
                            identity = %tls.identity,
                            "workload private key is in a format SDS cannot encode; not serving `default`"
                        );
                        Lookup::Pending
                    }
                },
                None => Lookup::Pending,
            },
            ROOT_SECRET => Lookup::Ready(pack_any(root_secret(&self.roots))),
            _ => Lookup::Unknown,
        }
    }
}

/// The `default` secret: the leaf and its intermediates (roots are left out,
/// a peer gets them from its own `ROOTCA`) and the private key, both inline
/// PEM. `None` if the key type has no PEM label we know.
pub fn workload_secret(tls: &MeshTls, roots: &TrustBundle) -> Option<Secret> {
    let chain = tls.chain();
    let chain_pem: String = chain
        .iter()
        .enumerate()
        .filter(|(i, cert)| *i == 0 || !roots.contains(cert))
        .map(|(_, cert)| pem_cert(cert))
        .collect();
    let key_pem = private_key_pem(tls.private_key())?;
    Some(Secret {
        name: DEFAULT_SECRET.to_string(),
        r#type: Some(Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain_pem.into_bytes())),
            private_key: Some(inline(key_pem.into_bytes())),
            ..Default::default()
        })),
    })
}

/// The `ROOTCA` secret: every root of the bundle (two during a root
/// rotation), inline PEM.
pub fn root_secret(roots: &TrustBundle) -> Secret {
    Secret {
        name: ROOT_SECRET.to_string(),
        r#type: Some(Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(inline(roots.to_pem().into_bytes())),
            ..Default::default()
        })),
    }
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..Default::default()
    }
}

/// PEM text of a private key, with the label matching its encoding.
fn private_key_pem(key: &PrivateKeyDer<'_>) -> Option<String> {
    let (label, der) = match key {
        PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
        PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
        PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        _ => return None,
    };
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    Some(pem::encode_config(&pem::Pem::new(label, der), config))
}
