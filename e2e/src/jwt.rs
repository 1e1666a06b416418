//! A JWT issuer for authentication tests: fresh RSA (RS256) and P-256
//! (ES256) keys, their JSON Web Key Set as a RequestAuthentication's
//! `jwks` carries it, good tokens with any claims, and the tokens an
//! attacker would try (`alg: none`, HS256 signed with the public key,
//! tampered payloads, unknown key ids, oversized tokens).

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

/// The key id of the RSA key in [`Issuer::jwks`].
pub const RSA_KID: &str = "rsa-1";
/// The key id of the EC key.
pub const EC_KID: &str = "ec-1";

/// One issuer's keys.
pub struct Issuer {
    /// The `iss` of its tokens.
    pub iss: String,
    rsa_der: Vec<u8>,
    rsa_public_pem: String,
    rsa_n: String,
    rsa_e: String,
    ec_pem: String,
    ec_x: String,
    ec_y: String,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The base64url form of `bytes`, as JWT sections are.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Issuer {
    /// An issuer with fresh keys. RSA key generation is slow in debug
    /// builds, so the RSA key is made once per test process and shared by
    /// every issuer (the `iss` tells them apart).
    pub fn new(iss: &str) -> Self {
        static RSA: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        let key = RSA.get_or_init(|| {
            rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key")
        });
        let public = key.to_public_key();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let point = ec.public_key_raw();
        Self {
            iss: iss.to_string(),
            rsa_der: key.to_pkcs1_der().expect("DER").as_bytes().to_vec(),
            rsa_public_pem: public.to_public_key_pem(LineEnding::LF).expect("PEM"),
            rsa_n: b64(&public.n().to_bytes_be()),
            rsa_e: b64(&public.e().to_bytes_be()),
            ec_pem: ec.serialize_pem(),
            ec_x: b64(&point[1..33]),
            ec_y: b64(&point[33..65]),
        }
    }

    /// The public keys as a JSON Web Key Set.
    pub fn jwks(&self) -> String {
        json!({"keys": [
            {"kty": "RSA", "kid": RSA_KID, "alg": "RS256", "use": "sig", "n": self.rsa_n, "e": self.rsa_e},
            {"kty": "EC", "kid": EC_KID, "crv": "P-256", "x": self.ec_x, "y": self.ec_y},
        ]})
        .to_string()
    }

    /// The claims of a good token for `sub`: this issuer, valid for an hour.
    pub fn claims(&self, sub: &str) -> Value {
        json!({"iss": self.iss, "sub": sub, "iat": now(), "exp": now() + 3600})
    }

    /// `claims` signed RS256 with the RSA key.
    pub fn rs256(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(RSA_KID.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(&self.rsa_der))
            .expect("RS256 token")
    }

    /// `claims` signed ES256 with the EC key.
    pub fn es256(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(EC_KID.into());
        let key = EncodingKey::from_ec_pem(self.ec_pem.as_bytes()).expect("EC PEM");
        jsonwebtoken::encode(&header, claims, &key).expect("ES256 token")
    }

    /// A good RS256 token for `sub`.
    pub fn token(&self, sub: &str) -> String {
        self.rs256(&self.claims(sub))
    }

    /// The key-confusion attack: HS256 with the RSA public key (PEM) as
    /// the HMAC secret, as a verifier that trusts `alg` would accept.
    pub fn hs256_with_public_key(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(RSA_KID.into());
        let key = EncodingKey::from_secret(self.rsa_public_pem.as_bytes());
        jsonwebtoken::encode(&header, claims, &key).expect("HS256 token")
    }

    /// A token with an RS256 signature but the key id `kid`.
    pub fn with_kid(&self, claims: &Value, kid: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(&self.rsa_der))
            .expect("RS256 token")
    }
}

/// `alg: none`: unsigned claims with an empty signature.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// `token` with its payload replaced by `claims` (signature kept).
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}
