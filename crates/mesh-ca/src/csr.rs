//! CSR parsing and the signing policy.
//!
//! A workload sends a PKCS#10 request; the CA takes only its public key and,
//! as a cross-check, its subject alternative names. Everything the issued
//! certificate says (SAN, key usages, validity) is decided by the authority
//! from the identity the caller *proved*, never copied from the request. The
//! request is refused when it asks for more than that identity: another SAN,
//! extra SANs, another trust domain, or `CA:TRUE`.
//!
//! Data flow: PEM -> DER -> signature check -> extension policy ->
//! [`CheckedCsr`] (just the public key), consumed by
//! [`crate::authority::Authority::sign`].

use mesh_api::spiffe::{SpiffeId, SpiffeIdError};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Smallest RSA modulus accepted in a CSR, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// The `csr` field holds no `CERTIFICATE REQUEST` PEM block.
    #[error("field csr: no PEM \"CERTIFICATE REQUEST\" block found")]
    Pem,
    /// The PEM block is not a valid PKCS#10 request.
    #[error("field csr: not a valid PKCS#10 request: {0}")]
    Malformed(String),
    /// The request's self-signature does not verify: whoever sent it does not
    /// hold the private key.
    #[error("field csr: the request signature does not verify")]
    BadSignature,
    /// The public key type or size is not accepted.
    #[error("field csr: unsupported public key: {0}")]
    UnsupportedKey(String),
    /// The request asks for a CA certificate.
    #[error("field csr: requests CA:TRUE; workloads may not obtain CA certificates")]
    CaRequested,
    /// The request carries more than one subject alternative name.
    #[error(
        "field csr: {count} subject alternative names requested; exactly one SPIFFE URI is allowed"
    )]
    ExtraSans {
        /// How many SANs the request has.
        count: usize,
    },
    /// The request asks for a SAN that is not a URI (DNS name, IP, e-mail...).
    #[error("field csr: subject alternative name {san} is not a SPIFFE URI")]
    NonUriSan {
        /// The SAN as text.
        san: String,
    },
    /// The URI SAN is not a mesh SPIFFE id.
    #[error("field csr: {0}")]
    NotSpiffe(#[from] SpiffeIdError),
    /// The URI SAN is in another trust domain than the CA's.
    #[error("field csr: trust domain {requested:?} requested, this CA signs only {expected:?}")]
    TrustDomain {
        /// The trust domain of the requested SAN.
        requested: String,
        /// The CA's trust domain.
        expected: String,
    },
    /// The URI SAN is another identity than the one the caller proved.
    #[error("field csr: identity {requested} requested, but the caller proved {proven}")]
    IdentityMismatch {
        /// The SPIFFE id in the CSR.
        requested: String,
        /// The SPIFFE id of the caller's credential.
        proven: String,
    },
}

impl CsrError {
    /// Short label for metrics (`reason` label of the refusal counter).
    pub fn reason(&self) -> &'static str {
        match self {
            CsrError::Pem | CsrError::Malformed(_) => "malformed",
            CsrError::BadSignature => "bad_signature",
            CsrError::UnsupportedKey(_) => "unsupported_key",
            CsrError::CaRequested => "ca_requested",
            CsrError::ExtraSans { .. } => "extra_sans",
            CsrError::NonUriSan { .. } | CsrError::NotSpiffe(_) => "foreign_san",
            CsrError::TrustDomain { .. } => "trust_domain",
            CsrError::IdentityMismatch { .. } => "identity_mismatch",
        }
    }

    /// True when the request was well formed but asked for something the
    /// caller may not have (maps to gRPC `PermissionDenied`); false when the
    /// request itself is broken (`InvalidArgument`).
    pub fn is_policy_refusal(&self) -> bool {
        !matches!(
            self,
            CsrError::Pem
                | CsrError::Malformed(_)
                | CsrError::BadSignature
                | CsrError::UnsupportedKey(_)
        )
    }
}

/// A request that passed parsing, signature verification and policy.
#[derive(Debug)]
pub struct CheckedCsr {
    /// DER `SubjectPublicKeyInfo` of the requester's key.
    pub spki_der: Vec<u8>,
}

/// Parses `pem`, verifies its signature and checks it asks for nothing more
/// than `proven` (the identity the caller authenticated as), inside
/// `trust_domain`. A request without any SAN is accepted: the certificate
/// gets the proven identity, as Istio's CA does.
pub fn check_csr(pem: &str, proven: &SpiffeId, trust_domain: &str) -> Result<CheckedCsr, CsrError> {
    let der =
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|_| CsrError::Pem)?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    check_key(&csr)?;

    let mut sans: Vec<String> = Vec::new();
    let mut uris: Vec<String> = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        sans.push(name.to_string());
                        if let GeneralName::URI(uri) = name {
                            uris.push((*uri).to_string());
                        } else {
                            return Err(CsrError::NonUriSan {
                                san: name.to_string(),
                            });
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CsrError::CaRequested);
                }
                ParsedExtension::ParseError { error } => {
                    return Err(CsrError::Malformed(error.to_string()));
                }
                // Key usages and any other requested extension are ignored:
                // the issued certificate's extensions come from policy.
                _ => {}
            }
        }
    }
    if sans.len() > 1 {
        return Err(CsrError::ExtraSans { count: sans.len() });
    }
    if let Some(uri) = uris.first() {
        let requested: SpiffeId = uri.parse()?;
        if requested.trust_domain != trust_domain {
            return Err(CsrError::TrustDomain {
                requested: requested.trust_domain,
                expected: trust_domain.to_string(),
            });
        }
        if &requested != proven {
            return Err(CsrError::IdentityMismatch {
                requested: requested.to_string(),
                proven: proven.to_string(),
            });
        }
    }
    Ok(CheckedCsr {
        spki_der: csr.certification_request_info.subject_pki.raw.to_vec(),
    })
}

fn check_key(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::EC(_)) | Ok(PublicKey::Unknown(_)) => Ok(()),
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= MIN_RSA_BITS => Ok(()),
        Ok(PublicKey::RSA(rsa)) => Err(CsrError::UnsupportedKey(format!(
            "RSA key of {} bits, at least {MIN_RSA_BITS} required",
            rsa.key_size()
        ))),
        Ok(_) => Err(CsrError::UnsupportedKey(
            "use ECDSA P-256/P-384, Ed25519 or RSA".into(),
        )),
        Err(e) => Err(CsrError::UnsupportedKey(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, SanType};

    use super::*;

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa)
    }

    fn csr_with(sans: Vec<SanType>, ca: bool) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn accepts_the_proven_identity() {
        let pem = csr_with(
            vec![uri("spiffe://cluster.local/ns/default/sa/sleep")],
            false,
        );
        assert!(check_csr(&pem, &id("default", "sleep"), "cluster.local").is_ok());
    }

    #[test]
    fn accepts_no_san_and_uses_proven_identity() {
        let pem = csr_with(vec![], false);
        assert!(check_csr(&pem, &id("default", "sleep"), "cluster.local").is_ok());
    }

    #[test]
    fn refuses_policy_violations() {
        let proven = id("default", "sleep");
        let cases: Vec<(String, &str)> = vec![
            (
                csr_with(
                    vec![uri("spiffe://cluster.local/ns/default/sa/admin")],
                    false,
                ),
                "identity_mismatch",
            ),
            (
                csr_with(
                    vec![uri("spiffe://other.domain/ns/default/sa/sleep")],
                    false,
                ),
                "trust_domain",
            ),
            (
                csr_with(
                    vec![
                        uri("spiffe://cluster.local/ns/default/sa/sleep"),
                        uri("spiffe://cluster.local/ns/default/sa/other"),
                    ],
                    false,
                ),
                "extra_sans",
            ),
            (
                csr_with(
                    vec![SanType::DnsName("evil.example.com".try_into().unwrap())],
                    false,
                ),
                "foreign_san",
            ),
            (
                csr_with(vec![uri("https://example.com/x")], false),
                "foreign_san",
            ),
            (
                csr_with(
                    vec![uri("spiffe://cluster.local/ns/default/sa/sleep")],
                    true,
                ),
                "ca_requested",
            ),
        ];
        for (pem, reason) in cases {
            let err = check_csr(&pem, &proven, "cluster.local").unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
            assert!(err.is_policy_refusal());
        }
    }

    #[test]
    fn refuses_garbage_and_tampered_requests() {
        let proven = id("default", "sleep");
        let err = check_csr("hello", &proven, "cluster.local").unwrap_err();
        assert_eq!(err, CsrError::Pem);
        let err = check_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &proven,
            "cluster.local",
        )
        .unwrap_err();
        assert!(matches!(err, CsrError::Malformed(_)), "{err}");

        // Flip one byte of the signature (the last bytes of the DER).
        let pem = csr_with(
            vec![uri("spiffe://cluster.local/ns/default/sa/sleep")],
            false,
        );
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let n = der.len();
        der[n - 3] ^= 0x55;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        let err = check_csr(&tampered, &proven, "cluster.local").unwrap_err();
        assert!(
            matches!(err, CsrError::BadSignature | CsrError::Malformed(_)),
            "{err}"
        );
        assert!(!err.is_policy_refusal());
    }
}
