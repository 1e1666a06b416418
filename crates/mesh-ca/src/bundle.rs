//! The trust bundle: the root certificates every proxy trusts.
//!
//! Normally one root. During a root rotation the bundle holds the old and the
//! new root side by side, so certificates chained to either verify while
//! workloads move over; the authority signs under one of them. The bundle is
//! what goes out as Istio's `istio-ca-root-cert` ConfigMap and the SDS
//! `ROOTCA` secret.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a bundle cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The PEM text holds no certificate.
    #[error("trust bundle: no PEM CERTIFICATE block found")]
    Empty,
    /// A PEM block is not well formed.
    #[error("trust bundle: certificate #{index} is not valid PEM")]
    Pem {
        /// Position in the bundle, from 0.
        index: usize,
    },
    /// A root is not usable as a trust anchor.
    #[error("trust bundle: certificate #{index} is not a usable trust anchor: {detail}")]
    Anchor {
        /// Position in the bundle, from 0.
        index: usize,
        /// What webpki said.
        detail: String,
    },
}

/// The mesh's root certificates, in the order they should be presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

// === impl TrustBundle ===

impl TrustBundle {
    /// A bundle of the given DER roots (duplicates removed, order kept).
    pub fn new(
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        let mut out: Vec<CertificateDer<'static>> = Vec::new();
        for root in roots {
            if !out.contains(&root) {
                out.push(root);
            }
        }
        if out.is_empty() {
            return Err(BundleError::Empty);
        }
        let bundle = Self { roots: out };
        bundle.root_store()?;
        Ok(bundle)
    }

    /// Parses every `CERTIFICATE` block of `pem`.
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let mut roots = Vec::new();
        for (index, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            roots.push(cert.map_err(|_| BundleError::Pem { index })?);
        }
        Self::new(roots)
    }

    /// The bundle with `root` added (root rotation: old and new side by side).
    pub fn with_root(&self, root: CertificateDer<'static>) -> Result<Self, BundleError> {
        Self::new(self.roots.iter().cloned().chain(std::iter::once(root)))
    }

    /// The bundle without `root` (end of a rotation). Refuses to become empty.
    pub fn without_root(&self, root: &CertificateDer<'_>) -> Result<Self, BundleError> {
        Self::new(
            self.roots
                .iter()
                .filter(|r| r.as_ref() != root.as_ref())
                .cloned(),
        )
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// True if `cert` is one of the roots.
    pub fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.roots.iter().any(|r| r.as_ref() == cert.as_ref())
    }

    /// The roots as one PEM text (for `root-cert.pem`, the ConfigMap, SDS).
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| pem_cert(r)).collect()
    }

    /// A rustls root store of the bundle.
    pub fn root_store(&self) -> Result<RootCertStore, BundleError> {
        let mut store = RootCertStore::empty();
        for (index, root) in self.roots.iter().enumerate() {
            store.add(root.clone()).map_err(|e| BundleError::Anchor {
                index,
                detail: e.to_string(),
            })?;
        }
        Ok(store)
    }
}

/// PEM text of one DER certificate.
pub fn pem_cert(der: &CertificateDer<'_>) -> String {
    // LF line endings, like openssl and rcgen on Unix (pem's default is CRLF).
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.as_ref()), config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn root() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn rotation_keeps_two_roots_then_drops_the_old() {
        let (old, new) = (root(), root());
        let bundle = TrustBundle::new([old.clone()]).unwrap();
        let rotating = bundle.with_root(new.clone()).unwrap();
        assert_eq!(rotating.roots().len(), 2);
        let reparsed = TrustBundle::from_pem(&rotating.to_pem()).unwrap();
        assert_eq!(reparsed, rotating);
        assert_eq!(reparsed.root_store().unwrap().len(), 2);
        let done = rotating.without_root(&old).unwrap();
        assert_eq!(done.roots(), std::slice::from_ref(&new));
        assert_eq!(done.without_root(&new), Err(BundleError::Empty));
    }

    #[test]
    fn refuses_empty_and_garbage() {
        assert_eq!(TrustBundle::from_pem(""), Err(BundleError::Empty));
        assert!(
            TrustBundle::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
