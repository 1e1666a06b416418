//! Local-mode credentials: the control plane issues each workload a JWT
//! (ES256, P-256 key held by the control plane) whose `sub` is the
//! workload's SPIFFE id, with an audience and an expiry; the CA accepts it as
//! proof of that identity.
//!
//! Issuer and verifier are one object because the CA is embedded in the
//! control plane that issues the tokens; persist [`LocalTokenAuthority::key_pem`]
//! to keep tokens valid across restarts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mesh_api::spiffe::SpiffeId;
use serde::{Deserialize, Serialize};

use super::{AuthError, Authenticator, BoxFuture};

/// Audience Istio's CA expects in workload tokens.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// `iss` of tokens this control plane issues.
pub const ISSUER: &str = "mesh-control";

/// Why the token authority cannot be built or cannot issue.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    /// The signing key could not be generated or parsed.
    #[error("local token signing key: {0}")]
    Key(String),
    /// Encoding a token failed.
    #[error("issuing a token for {identity}: {detail}")]
    Issue {
        /// The identity the token was for.
        identity: String,
        /// What failed.
        detail: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// Issues and verifies local-mode workload tokens.
pub struct LocalTokenAuthority {
    key_pem: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    audience: String,
    trust_domain: String,
    leeway: Duration,
}

impl std::fmt::Debug for LocalTokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTokenAuthority")
            .field("audience", &self.audience)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

// === impl LocalTokenAuthority ===

impl LocalTokenAuthority {
    /// A new authority with a fresh P-256 key.
    pub fn generate(trust_domain: &str, audience: &str) -> Result<Self, TokenKeyError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TokenKeyError::Key(e.to_string()))?;
        Self::from_key_pem(&key.serialize_pem(), trust_domain, audience)
    }

    /// An authority over an existing PKCS#8 P-256 key.
    pub fn from_key_pem(
        key_pem: &str,
        trust_domain: &str,
        audience: &str,
    ) -> Result<Self, TokenKeyError> {
        let key =
            rcgen::KeyPair::from_pem(key_pem).map_err(|e| TokenKeyError::Key(e.to_string()))?;
        let encoding = EncodingKey::from_ec_pem(key_pem.as_bytes())
            .map_err(|e| TokenKeyError::Key(e.to_string()))?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
            .map_err(|e| TokenKeyError::Key(e.to_string()))?;
        Ok(Self {
            key_pem: key_pem.to_string(),
            encoding,
            decoding,
            audience: audience.to_string(),
            trust_domain: trust_domain.to_string(),
            leeway: Duration::from_secs(30),
        })
    }

    /// The signing key, PKCS#8 PEM, to persist.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A token proving `identity`, valid for `ttl`, for this CA's audience.
    pub fn issue(&self, identity: &SpiffeId, ttl: Duration) -> Result<String, TokenKeyError> {
        self.issue_with(identity, &self.audience, SystemTime::now() + ttl)
    }

    /// A token with an explicit audience and expiry (tests use it to make
    /// tokens the CA must refuse).
    pub fn issue_with(
        &self,
        identity: &SpiffeId,
        audience: &str,
        expires: SystemTime,
    ) -> Result<String, TokenKeyError> {
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let now = secs(SystemTime::now());
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: identity.to_string(),
            aud: audience.to_string(),
            iat: now,
            nbf: now.saturating_sub(self.leeway.as_secs()),
            exp: secs(expires),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding).map_err(|e| {
            TokenKeyError::Issue {
                identity: identity.to_string(),
                detail: e.to_string(),
            }
        })
    }

    fn verify(&self, token: &str) -> Result<SpiffeId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::WrongAudience {
                    expected: self.audience.clone(),
                },
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer {
                    expected: ISSUER.to_string(),
                },
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                other => AuthError::Malformed(format!("{other:?}")),
            },
        )?;
        let identity: SpiffeId = data.claims.sub.parse().map_err(|_| AuthError::Subject {
            subject: data.claims.sub.clone(),
        })?;
        if identity.trust_domain != self.trust_domain {
            return Err(AuthError::ForeignTrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        Ok(identity)
    }
}

impl Authenticator for LocalTokenAuthority {
    fn name(&self) -> &'static str {
        "local-jwt"
    }

    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<SpiffeId, AuthError>> {
        Box::pin(async move { self.verify(token) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sleep_id() -> SpiffeId {
        SpiffeId::new("cluster.local", "default", "sleep")
    }

    #[test]
    fn round_trips_an_identity() {
        let tokens = LocalTokenAuthority::generate("cluster.local", DEFAULT_AUDIENCE).unwrap();
        let token = tokens.issue(&sleep_id(), Duration::from_secs(600)).unwrap();
        assert_eq!(tokens.verify(&token), Ok(sleep_id()));
        // Reloaded from the persisted key, old tokens still verify.
        let reloaded =
            LocalTokenAuthority::from_key_pem(tokens.key_pem(), "cluster.local", DEFAULT_AUDIENCE)
                .unwrap();
        assert_eq!(reloaded.verify(&token), Ok(sleep_id()));
    }

    #[test]
    fn refuses_bad_tokens() {
        let tokens = LocalTokenAuthority::generate("cluster.local", DEFAULT_AUDIENCE).unwrap();
        let other = LocalTokenAuthority::generate("cluster.local", DEFAULT_AUDIENCE).unwrap();
        let hour = Duration::from_secs(3600);
        let expired = tokens
            .issue_with(&sleep_id(), DEFAULT_AUDIENCE, SystemTime::now() - hour)
            .unwrap();
        let wrong_aud = tokens
            .issue_with(&sleep_id(), "something-else", SystemTime::now() + hour)
            .unwrap();
        let foreign_key = other.issue(&sleep_id(), hour).unwrap();
        let foreign_td = tokens
            .issue(&SpiffeId::new("evil.local", "default", "sleep"), hour)
            .unwrap();
        assert_eq!(tokens.verify(""), Err(AuthError::MissingToken));
        assert!(matches!(
            tokens.verify("not.a.jwt"),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(tokens.verify(&expired), Err(AuthError::Expired));
        assert!(matches!(
            tokens.verify(&wrong_aud),
            Err(AuthError::WrongAudience { .. })
        ));
        assert_eq!(tokens.verify(&foreign_key), Err(AuthError::BadSignature));
        assert!(matches!(
            tokens.verify(&foreign_td),
            Err(AuthError::ForeignTrustDomain { .. })
        ));
    }
}
