//! Certificates made at test time: a root CA that signs leaves with the
//! SANs and key usage a test needs, as PEM (for configs and Secrets) and
//! DER (for rustls).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A root CA that signs leaves.
pub struct TestCa(CertifiedIssuer<'static, KeyPair>);

/// A certificate and its key.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER.
    pub chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
}

impl TestCa {
    /// A new self-signed root named `name`.
    ///
    /// # Panics
    /// If rcgen cannot make it (a bug in the test).
    #[allow(clippy::expect_used)]
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Self(CertifiedIssuer::self_signed(params, key).expect("self-signed CA"))
    }

    /// The root certificate, PEM.
    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// The root certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    /// A leaf with these SANs (`spiffe://...` and other URIs become URI
    /// SANs, the rest DNS names) for `usage` (server or client auth).
    ///
    /// # Panics
    /// If rcgen cannot make it (a bug in the test).
    #[allow(clippy::expect_used)]
    pub fn leaf(&self, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.subject_alt_names = sans
            .iter()
            .map(|s| {
                if s.contains("://") {
                    SanType::URI(s.to_string().try_into().expect("URI SAN"))
                } else {
                    SanType::DnsName(s.to_string().try_into().expect("DNS SAN"))
                }
            })
            .collect();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.0).expect("signed leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key,
        }
    }
}

impl Leaf {
    /// The private key, for rustls.
    ///
    /// # Panics
    /// Never for a key rcgen made.
    #[allow(clippy::expect_used)]
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key.serialize_der()).expect("PKCS#8 key")
    }
}
