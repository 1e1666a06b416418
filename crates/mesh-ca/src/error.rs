//! Errors of the authority itself: loading its signing material (generated
//! or plugged in from Istio's `cacerts` layout) and signing. CSR policy
//! errors live in [`crate::csr`], caller authentication errors in
//! [`crate::auth`]; each names the file, field or identity at fault.

use std::path::PathBuf;

use crate::csr::CsrError;

/// Why the CA's signing material cannot be used. Every variant names the
/// file so an operator knows which part of the `cacerts` plug-in to fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A file of the CA directory could not be read or written.
    #[error("CA file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file holds no PEM block of the expected kind.
    #[error("CA file {path}: no PEM {expected} block found")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM label that was expected, e.g. `CERTIFICATE`.
        expected: &'static str,
    },
    /// A certificate in the file is not valid X.509.
    #[error("CA file {path}: certificate #{index} cannot be parsed: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, from 0.
        index: usize,
        /// What the parser said.
        detail: String,
    },
    /// The private key cannot be used for signing.
    #[error(
        "CA key {path}: {detail}; use an unencrypted PKCS#8 key (\"PRIVATE KEY\"), e.g. convert with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    Key {
        /// The key file.
        path: PathBuf,
        /// What the key loader said.
        detail: String,
    },
    /// The private key does not belong to the signing certificate.
    #[error("CA key {key_path} does not match the public key of certificate {cert_path}")]
    KeyMismatch {
        /// The key file.
        key_path: PathBuf,
        /// The certificate file.
        cert_path: PathBuf,
    },
    /// The certificate is not a CA (no `basicConstraints CA:TRUE`, or its key
    /// usage forbids signing certificates).
    #[error("CA file {path}: certificate #{index} is not a CA certificate: {detail}")]
    NotCa {
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, from 0.
        index: usize,
        /// Which property is missing.
        detail: &'static str,
    },
    /// The certificate is outside its validity period.
    #[error(
        "CA file {path}: certificate #{index} is not valid now (valid from {not_before} to {not_after})"
    )]
    Expired {
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, from 0.
        index: usize,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// The signing certificate does not chain to any root of the bundle.
    #[error(
        "CA file {cert_path} does not chain to a root in {root_path} (through the intermediates of {chain_path})"
    )]
    NotChained {
        /// The signing certificate file.
        cert_path: PathBuf,
        /// The root bundle file.
        root_path: PathBuf,
        /// The chain file.
        chain_path: PathBuf,
    },
    /// The CA directory has some of the plug-in files but not all required ones.
    #[error(
        "CA directory {dir}: {missing} is missing; a plugged-in CA needs ca-cert.pem, ca-key.pem and root-cert.pem (cert-chain.pem optional)"
    )]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// The missing file name.
        missing: &'static str,
    },
    /// The configuration of the authority is inconsistent.
    #[error("CA config field {field}: {detail}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Certificate generation failed inside rcgen.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
}

/// Why a workload certificate was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The CSR is malformed or asks for something the policy refuses.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The proven identity belongs to another trust domain than the CA's.
    #[error("identity {identity} is outside the CA's trust domain {trust_domain:?}")]
    ForeignIdentity {
        /// The identity the caller proved.
        identity: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The signing CA expires before any useful certificate can be issued.
    #[error("the signing CA certificate expires at {not_after}; plug in a new CA")]
    CaExpiring {
        /// End of validity of the signing certificate.
        not_after: String,
    },
    /// Internal signing failure (should not happen with valid inputs).
    #[error("signing failed: {0}")]
    Internal(#[from] rcgen::Error),
}
