//! Peer certificate checks with Envoy's semantics, which differ from a
//! browser's: a server certificate is checked against the trusted CAs and
//! the configured SAN matchers only (never against the SNI or hostname),
//! a missing validation context verifies nothing, and a client
//! certificate is checked against the CAs and the SAN matchers.
//!
//! One check is ours, not Envoy's: a certificate with a `spiffe://` URI
//! SAN must be an X.509 SVID, which carries exactly one URI SAN. Envoy
//! accepts a certificate if any SAN matches, so one certificate naming two
//! workloads would pass a matcher for either and hand RBAC the other;
//! certificates without SPIFFE ids keep Envoy's behaviour.

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

/// Why a peer certificate is refused after its chain verified: no SAN
/// matches the configured matchers.
#[derive(Debug, thiserror::Error)]
#[error("no subject alternative name of the peer certificate matches the configured matchers")]
struct SanMismatch;

/// Why a peer certificate is refused after its chain verified: it claims
/// a SPIFFE id but is no SVID, having more than one URI SAN.
#[derive(Debug, thiserror::Error)]
#[error("not a SPIFFE SVID: {uri_sans} URI SANs")]
struct NotAnSvid {
    /// How many URI SANs the certificate carries.
    uri_sans: usize,
}

/// Checks a server: chain to `roots` (if any), then that a SPIFFE id
/// comes as an SVID, then the SAN matchers (nothing without either).
#[derive(Debug)]
pub(super) struct ServerVerifier {
    pub roots: Option<Arc<RootCertStore>>,
    pub sans: Vec<SanMatcher>,
    pub provider: Arc<CryptoProvider>,
}

/// Checks a client: webpki client verification, then that a SPIFFE id
/// comes as an SVID, then the SAN matchers.
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

/// The checks after the chain verified: a certificate claiming a SPIFFE id
/// is an SVID, then the SAN matchers accept it.
fn check_names(cert: &CertificateDer<'_>, sans: &[SanMatcher]) -> Result<(), rustls::Error> {
    let names = PeerNames::of(cert);
    // The scheme is compared as URI schemes are, without case, so that
    // `SPIFFE://` cannot slip a second identity past the check.
    let claims_spiffe = names.uris.iter().any(|u| {
        u.get(..SPIFFE_SCHEME.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(SPIFFE_SCHEME))
    });
    if claims_spiffe && names.uris.len() > 1 {
        return Err(refused(NotAnSvid {
            uri_sans: names.uris.len(),
        }));
    }
    if names.accepted_by(sans) {
        Ok(())
    } else {
        Err(refused(SanMismatch))
    }
}

const SPIFFE_SCHEME: &str = "spiffe://";

fn refused(why: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(why))))
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
        if self.roots.is_none() && self.sans.is_empty() {
            // No validation context: Envoy verifies nothing, and neither
            // do we (a certificate nobody vouches for names nobody).
            return Ok(ServerCertVerified::assertion());
        }
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
        check_names(end_entity, &self.sans)?;
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
        check_names(end_entity, &self.sans)?;
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

#[cfg(test)]
mod tests {
    use mesh_test_support::certs::TestCa;
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    use rustls::server::WebPkiClientVerifier;
    use test_case::test_case;

    use super::*;

    const ID: &str = "spiffe://cluster.local/ns/web/sa/frontend";

    fn roots(ca: &TestCa) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        Arc::new(roots)
    }

    /// Why a verifier refused, as its error says.
    fn reason(result: Result<(), rustls::Error>) -> Result<(), String> {
        result.map_err(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(why)) => why.0.to_string(),
            other => other.to_string(),
        })
    }

    fn as_server(ca: &TestCa, sans: &[&str]) -> Result<(), String> {
        let verifier = ServerVerifier {
            roots: Some(roots(ca)),
            sans: Vec::new(),
            provider: mesh_ca::crypto_provider(),
        };
        let leaf = ca.leaf(sans, ServerAuth);
        reason(
            verifier
                .verify_server_cert(
                    &leaf.chain[0],
                    &[],
                    &ServerName::try_from("shop").unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .map(|_| ()),
        )
    }

    fn as_client(ca: &TestCa, sans: &[&str]) -> Result<(), String> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(roots(ca), mesh_ca::crypto_provider())
                .build()
                .unwrap();
        let verifier = ClientVerifier {
            inner,
            sans: Vec::new(),
        };
        let leaf = ca.leaf(sans, ClientAuth);
        reason(
            verifier
                .verify_client_cert(&leaf.chain[0], &[], UnixTime::now())
                .map(|_| ()),
        )
    }

    #[test_case(&[ID] => Ok(()); "an SVID")]
    #[test_case(&[ID, "shop.example.com"] => Ok(()); "an SVID with a DNS name")]
    #[test_case(&[ID, "spiffe://cluster.local/ns/shop/sa/admin"]
        => Err("not a SPIFFE SVID: 2 URI SANs".into()); "two SPIFFE ids")]
    #[test_case(&[ID, "https://example.com/x", "ftp://files.example/y"]
        => Err("not a SPIFFE SVID: 3 URI SANs".into()); "a SPIFFE id among other URIs")]
    #[test_case(&["SPIFFE://cluster.local/ns/web/sa/x", "https://example.com/x"]
        => Err("not a SPIFFE SVID: 2 URI SANs".into()); "the scheme in capitals")]
    #[test_case(&["https://a.example/", "https://b.example/"] => Ok(()); "URIs without SPIFFE ids, as Envoy")]
    fn only_an_svid_may_claim_a_spiffe_id(sans: &[&str]) -> Result<(), String> {
        let ca = TestCa::new("mesh root");
        let server = as_server(&ca, sans);
        assert_eq!(as_client(&ca, sans), server, "client and server disagree");
        server
    }

    #[test]
    fn without_a_validation_context_nothing_is_verified() {
        let ca = TestCa::new("anyone");
        let leaf = ca.leaf(&[ID, "spiffe://cluster.local/ns/shop/sa/admin"], ServerAuth);
        let verifier = ServerVerifier {
            roots: None,
            sans: Vec::new(),
            provider: mesh_ca::crypto_provider(),
        };
        let verified = verifier.verify_server_cert(
            &leaf.chain[0],
            &[],
            &ServerName::try_from("shop").unwrap(),
            &[],
            UnixTime::now(),
        );
        assert!(verified.is_ok(), "{verified:?}");
    }
}
