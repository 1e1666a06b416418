//! Certificates made at test time: a root CA that signs leaves with the
//! SANs, key usage and validity a test needs, and self-signed leaves no
//! CA vouches for, as PEM (for configs and Secrets) and DER (for rustls).

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
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
    pub fn leaf(&self, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        self.sign(leaf_params(sans, usage))
    }

    /// A leaf as [`TestCa::leaf`], valid only from `not_before` to
    /// `not_after` (each `(year, month, day)`, midnight UTC): in the past
    /// for an expired certificate, in the future for one not yet valid.
    ///
    /// # Panics
    /// If a date does not exist, or rcgen cannot make the leaf (a bug in
    /// the test).
    pub fn leaf_valid(
        &self,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Leaf {
        let mut params = leaf_params(sans, usage);
        params.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
        self.sign(params)
    }

    #[allow(clippy::expect_used)]
    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.0).expect("signed leaf");
        Leaf::new(&cert, key)
    }
}

/// The parameters of a leaf with `sans` for `usage` (see [`TestCa::leaf`]).
#[allow(clippy::expect_used)]
fn leaf_params(sans: &[&str], usage: ExtendedKeyUsagePurpose) -> CertificateParams {
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
    params
}

impl Leaf {
    /// A leaf with these SANs for `usage` (as [`TestCa::leaf`]) signed by
    /// its own key: no CA vouches for it.
    ///
    /// # Panics
    /// If rcgen cannot make it (a bug in the test).
    #[allow(clippy::expect_used)]
    pub fn self_signed(sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Self {
        let key = KeyPair::generate().expect("leaf key");
        let cert = leaf_params(sans, usage)
            .self_signed(&key)
            .expect("self-signed leaf");
        Self::new(&cert, key)
    }

    fn new(cert: &Certificate, key: KeyPair) -> Self {
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key,
        }
    }

    /// The private key, for rustls.
    ///
    /// # Panics
    /// Never for a key rcgen made.
    #[allow(clippy::expect_used)]
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key.serialize_der()).expect("PKCS#8 key")
    }
}
