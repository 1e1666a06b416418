//! Who is calling the CA.
//!
//! An [`Authenticator`] turns the bearer token of a `CreateCertificate` call
//! into the one SPIFFE identity the caller has proven. The CA then signs only
//! that identity. Two implementations: [`local::LocalTokenAuthority`] (local
//! mode: the control plane issues a signed JWT per workload) and, in
//! Kubernetes, [`kube::TokenReviewAuthenticator`] (ServiceAccount tokens
//! checked by the API server with TokenReview).

use std::future::Future;
use std::pin::Pin;

use mesh_api::spiffe::SpiffeId;

pub mod kube;
pub mod local;

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Verifies a caller's credential.
pub trait Authenticator: Send + Sync + 'static {
    /// Short name for logs (`local-jwt`, `kube-tokenreview`).
    fn name(&self) -> &'static str;

    /// The identity `token` proves, or why it proves none.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<SpiffeId, AuthError>>;
}

/// Why a caller is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer <token>` metadata, or an empty token.
    #[error("no bearer token: send metadata \"authorization: Bearer <token>\"")]
    MissingToken,
    /// The token is not a well-formed JWT of the expected algorithm.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The token's signature does not verify against the issuer's key.
    #[error("token signature does not verify (issued by another control plane?)")]
    BadSignature,
    /// The token is past its `exp`.
    #[error("token has expired; request a new one from the control plane")]
    Expired,
    /// The token is not valid yet (`nbf` in the future).
    #[error("token is not valid yet (nbf in the future; check clocks)")]
    NotYetValid,
    /// The token was issued for another audience.
    #[error("token audience does not include {expected:?}")]
    WrongAudience {
        /// The audience this CA accepts.
        expected: String,
    },
    /// The token was issued by someone else.
    #[error("token issuer is not {expected:?}")]
    WrongIssuer {
        /// The issuer this CA accepts.
        expected: String,
    },
    /// The token's subject is not a mesh SPIFFE id.
    #[error("token subject {subject:?} is not a mesh SPIFFE id")]
    Subject {
        /// The `sub` claim.
        subject: String,
    },
    /// The identity belongs to another trust domain.
    #[error("identity {identity} is outside trust domain {trust_domain:?}")]
    ForeignTrustDomain {
        /// The identity proven by the token.
        identity: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The verifying backend (e.g. the Kubernetes API) rejected the token.
    #[error("token rejected by {backend}: {reason}")]
    Rejected {
        /// Which backend.
        backend: &'static str,
        /// What it said.
        reason: String,
    },
    /// The verifying backend could not be reached; the call may be retried.
    #[error("{backend} unavailable: {reason}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// What failed.
        reason: String,
    },
}

impl AuthError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired_token",
            AuthError::NotYetValid => "immature_token",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::WrongIssuer { .. } => "wrong_issuer",
            AuthError::Subject { .. } => "bad_subject",
            AuthError::ForeignTrustDomain { .. } => "trust_domain",
            AuthError::Rejected { .. } => "rejected",
            AuthError::Unavailable { .. } => "unavailable",
        }
    }
}

/// The token in an `authorization` header value: `Bearer <token>`
/// (scheme case-insensitive). `None` when absent or empty.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_header() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token(""), None);
    }
}
