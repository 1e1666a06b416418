//! Peer certificate checks with Envoy's semantics, which differ from a
//! browser's: a server certificate is checked against the trusted CAs and
//! the configured SAN matchers only (never against the SNI or hostname),
//! a missing validation context verifies nothing, and a client
//! certificate is checked against the CAs and the SAN matchers.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::runtime::tls::{SanKind, SanMatcher};

/// What a peer certificate says about who it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerNames {
    /// URI SANs (SPIFFE ids).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// Email SANs.
    pub emails: Vec<String>,
    /// IP SANs.
    pub ips: Vec<String>,
    /// The subject, RFC 2253 style.
    pub subject: String,
}

/// Why a peer certificate is refused after its chain verified.
#[derive(Debug, thiserror::Error)]
#[error("no subject alternative name of the peer certificate matches the configured matchers")]
struct SanMismatch;

/// Checks a server: chain to `roots` (if any), then the SAN matchers.
#[derive(Debug)]
pub(super) struct ServerVerifier {
    pub roots: Option<Arc<RootCertStore>>,
    pub sans: Vec<SanMatcher>,
    pub provider: Arc<CryptoProvider>,
}

/// Checks a client: webpki client verification, then the SAN matchers.
#[derive(Debug)]
pub(super) struct ClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub sans: Vec<SanMatcher>,
}

// === impl PeerNames ===

impl PeerNames {
    /// Reads the SANs and subject of a DER certificate (empty if it does
    /// not parse).
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let Ok((_, x509)) = X509Certificate::from_der(cert.as_ref()) else {
            return Self::default();
        };
        let mut names = Self {
            subject: x509.subject().to_string(),
            ..Self::default()
        };
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => names.uris.push((*u).to_string()),
                    GeneralName::DNSName(d) => names.dns.push((*d).to_string()),
                    GeneralName::RFC822Name(e) => names.emails.push((*e).to_string()),
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            names.ips.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        names
    }

    /// Whether any SAN is accepted by any matcher (no matchers: yes).
    pub fn accepted_by(&self, matchers: &[SanMatcher]) -> bool {
        if matchers.is_empty() {
            return true;
        }
        let all = [
            (SanKind::Uri, &self.uris),
            (SanKind::Dns, &self.dns),
            (SanKind::Email, &self.emails),
            (SanKind::Ip, &self.ips),
        ];
        matchers.iter().any(|m| {
            all.iter()
                .any(|(kind, values)| values.iter().any(|v| m.accepts(*kind, v)))
        })
    }
}

fn check_sans(cert: &CertificateDer<'_>, sans: &[SanMatcher]) -> Result<(), rustls::Error> {
    if sans.is_empty() || PeerNames::of(cert).accepted_by(sans) {
        return Ok(());
    }
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(SanMismatch)),
    )))
}

// === impl ServerVerifier ===

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        check_sans(end_entity, &self.sans)?;
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

// === impl ClientVerifier ===

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_sans(end_entity, &self.sans)?;
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
