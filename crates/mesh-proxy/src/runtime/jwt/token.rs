//! One JSON Web Token: parsing (RFC 7519 compact form), the claim checks
//! and the signature check against a key set (RFC 7517), in the order and
//! with the messages of Envoy's `jwt_verify_lib`, so a client sees the same
//! 401 body from either data plane.
//!
//! The algorithm is never taken from the token alone: a key is a
//! candidate only if its type (and curve) fits the token's `alg` and its
//! own `alg`, if any, is the same. An RSA key set therefore never verifies
//! an HS256 token signed with the public key as secret (key confusion),
//! and `alg: none` is not an algorithm at all.

use std::str::FromStr;

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

/// Why a token was refused: Envoy's status, whose `Display` is the body
/// of the 401 (or 403) reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No token where the provider looks.
    #[error("Jwt is missing")]
    Missing,
    /// Not three base64url sections.
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    /// The header is not base64url.
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBadBase64,
    /// The header is not a JSON object.
    #[error("Jwt header is an invalid JSON")]
    HeaderBadJson,
    /// `alg` missing or not a string.
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderBadAlg,
    /// `alg` names no supported algorithm (`none` included).
    #[error("Jwt header [alg] is not supported")]
    HeaderUnsupportedAlg,
    /// `kid` not a string.
    #[error("Jwt header [kid] field is not a string")]
    HeaderBadKid,
    /// The payload is not base64url.
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBadBase64,
    /// The payload is not a JSON object.
    #[error("Jwt payload is an invalid JSON")]
    PayloadBadJson,
    /// A registered claim of the wrong type.
    #[error("Jwt payload [{0}] field is not {1}")]
    PayloadBadClaim(&'static str, &'static str),
    /// The signature is not base64url.
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBadBase64,
    /// `iss` is not the provider's issuer.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// `exp` has passed (beyond the clock skew).
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` is still ahead (beyond the clock skew).
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// The provider requires `exp` and the token has none.
    #[error("Jwt expiration is required")]
    ExpirationRequired,
    /// No `aud` the provider accepts.
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    /// No key of the set fits the token's `kid` and `alg`.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    /// Some key fits, none verifies the signature.
    #[error("Jwt verification fails")]
    VerificationFails,
}

/// base64url as Envoy decodes JWT sections: padding optional, stray
/// trailing bits ignored.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A parsed, not yet verified token.
#[derive(Debug)]
pub struct Token<'a> {
    /// `alg`.
    pub alg: Algorithm,
    /// `kid`.
    pub kid: Option<String>,
    /// The claims.
    pub payload: Map<String, Value>,
    /// The payload section as sent (base64url).
    pub payload_b64: &'a str,
    /// `header.payload`, what the signature covers.
    signing_input: &'a str,
    /// The signature section (base64url).
    signature: &'a str,
}

/// One usable key of a key set.
pub struct Key {
    kid: Option<String>,
    /// The key's own `alg`, when it names one.
    alg: Option<Algorithm>,
    /// The algorithms the key's type and curve allow.
    allowed: &'static [Algorithm],
    key: DecodingKey,
}

/// The claim checks of one provider.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    /// Required `iss`; empty accepts any.
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any.
    pub audiences: Vec<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub clock_skew: u64,
    /// Whether `exp` must be present.
    pub require_expiration: bool,
}

// === impl JwtError ===

impl JwtError {
    /// The HTTP status of the local reply: 403 for an audience Envoy does
    /// not accept, 401 for everything else.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::AudienceNotAllowed => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// How much a failure says: when several providers refuse a request,
    /// Envoy reports the most specific reason, not "missing" or "another
    /// issuer" from the providers the token was never meant for.
    pub(crate) fn specificity(&self) -> u8 {
        match self {
            Self::Missing => 0,
            Self::UnknownIssuer => 1,
            _ => 2,
        }
    }
}

// === impl Token ===

/// Parses `raw` (header, payload and signature in base64url).
pub fn parse(raw: &str) -> Result<Token<'_>, JwtError> {
    let mut parts = raw.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    // Envoy: an empty section (an unsigned `alg: none` token ends with a
    // dot) is not a JWT at all.
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(JwtError::BadFormat);
    }
    let header = object(header, JwtError::HeaderBadBase64, JwtError::HeaderBadJson)?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => {
            Algorithm::from_str(alg).map_err(|_| JwtError::HeaderUnsupportedAlg)?
        }
        _ => return Err(JwtError::HeaderBadAlg),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::HeaderBadKid),
    };
    let claims = object(
        payload,
        JwtError::PayloadBadBase64,
        JwtError::PayloadBadJson,
    )?;
    check_claim_types(&claims)?;
    if BASE64URL.decode(signature).is_err() {
        return Err(JwtError::SignatureBadBase64);
    }
    let signing_input = &raw[..header_len(raw, payload)];
    Ok(Token {
        alg,
        kid,
        payload: claims,
        payload_b64: payload,
        signing_input,
        signature,
    })
}

/// The length of `header.payload` in `raw`.
fn header_len(raw: &str, payload: &str) -> usize {
    raw.find('.').map_or(0, |dot| dot + 1 + payload.len())
}

fn object(
    section: &str,
    bad_base64: JwtError,
    bad_json: JwtError,
) -> Result<Map<String, Value>, JwtError> {
    let bytes = BASE64URL.decode(section).map_err(|_| bad_base64)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_json),
    }
}

fn check_claim_types(claims: &Map<String, Value>) -> Result<(), JwtError> {
    for name in ["iss", "sub"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(JwtError::PayloadBadClaim(name, "a string"));
        }
    }
    for name in ["exp", "nbf", "iat"] {
        if claims.get(name).is_some_and(|v| v.as_f64().is_none()) {
            return Err(JwtError::PayloadBadClaim(name, "an integer"));
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => Ok(()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(JwtError::PayloadBadClaim(
            "aud",
            "a string or a list of strings",
        )),
    }
}

impl Token<'_> {
    /// A string claim.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.payload.get(name).and_then(Value::as_str)
    }

    /// The claim checks, then the signature against `keys`, in Envoy's
    /// order: issuer, time, audience, key, signature. `now` is seconds
    /// since the Unix epoch.
    pub fn verify(&self, checks: &Checks, keys: &[Key], now: u64) -> Result<(), JwtError> {
        if !checks.issuer.is_empty() && self.claim_str("iss") != Some(checks.issuer.as_str()) {
            return Err(JwtError::UnknownIssuer);
        }
        let time = |name| self.payload.get(name).and_then(Value::as_f64);
        let now_f = now as f64;
        let skew = checks.clock_skew as f64;
        match time("exp") {
            Some(exp) if now_f > exp + skew => return Err(JwtError::Expired),
            None if checks.require_expiration => return Err(JwtError::ExpirationRequired),
            _ => {}
        }
        if time("nbf").is_some_and(|nbf| now_f + skew < nbf) {
            return Err(JwtError::NotYetValid);
        }
        if !checks.audiences.is_empty() && !self.audience_allowed(&checks.audiences) {
            return Err(JwtError::AudienceNotAllowed);
        }
        let candidates: Vec<&Key> = keys.iter().filter(|k| k.fits(self)).collect();
        if candidates.is_empty() {
            return Err(JwtError::NoMatchingKey);
        }
        let verified = candidates.iter().any(|k| {
            jsonwebtoken::crypto::verify(
                self.signature.trim_end_matches('='),
                self.signing_input.as_bytes(),
                &k.key,
                self.alg,
            )
            .unwrap_or(false)
        });
        if verified {
            Ok(())
        } else {
            Err(JwtError::VerificationFails)
        }
    }

    fn audience_allowed(&self, allowed: &[String]) -> bool {
        let aud: Vec<&str> = match self.payload.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        aud.iter().any(|a| {
            allowed
                .iter()
                .any(|b| normalise_audience(a) == normalise_audience(b))
        })
    }
}

/// Audiences compare without scheme and trailing slash, as in Envoy.
fn normalise_audience(aud: &str) -> &str {
    let aud = aud
        .strip_prefix("https://")
        .or_else(|| aud.strip_prefix("http://"))
        .unwrap_or(aud);
    aud.strip_suffix('/').unwrap_or(aud)
}

// === impl Key ===

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Key {
    fn fits(&self, token: &Token<'_>) -> bool {
        if let (Some(want), Some(have)) = (&token.kid, &self.kid)
            && want != have
        {
            return false;
        }
        self.alg.is_none_or(|a| a == token.alg) && self.allowed.contains(&token.alg)
    }
}

/// The usable keys of a JSON Web Key Set. Keys of unknown types or
/// algorithms, encryption keys and broken keys are skipped (a key set
/// may carry keys for other uses); a set that is not JSON, has no `keys`
/// list or no usable key at all is an error saying which.
pub fn key_set(jwks: &str) -> Result<Vec<Key>, String> {
    let value: Value =
        serde_json::from_str(jwks).map_err(|e| format!("is not a JSON Web Key Set: {e}"))?;
    let Some(entries) = value.get("keys").and_then(Value::as_array) else {
        return Err("is not a JSON Web Key Set: no \"keys\" list".into());
    };
    let keys: Vec<Key> = entries.iter().filter_map(key).collect();
    if keys.is_empty() {
        return Err(format!(
            "has no usable key ({} entries; supported: RSA, EC P-256/P-384, OKP Ed25519, oct)",
            entries.len()
        ));
    }
    Ok(keys)
}

fn key(entry: &Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).ok()?;
    if entry.get("use").and_then(Value::as_str) == Some("enc") {
        return None;
    }
    let allowed: &'static [Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKeyPair(_) => return None,
        AlgorithmParameters::OctetKey(_) => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
    };
    let alg = match entry.get("alg").and_then(Value::as_str) {
        None => None,
        Some(name) => Some(Algorithm::from_str(name).ok()?),
    };
    if alg.is_some_and(|a| !allowed.contains(&a)) {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        allowed,
        key: DecodingKey::from_jwk(&jwk).ok()?,
    })
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
