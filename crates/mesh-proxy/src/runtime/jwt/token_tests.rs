use super::*;
use mesh_test_support::jwt::{self as tj, Issuer};
use serde_json::{Value, json};

const ISS: &str = "https://issuer.example";

fn checks() -> Checks {
    Checks {
        issuer: ISS.into(),
        audiences: vec![],
        clock_skew: 60,
        require_expiration: false,
    }
}

fn verify(issuer: &Issuer, token: &str, checks: &Checks) -> Result<(), JwtError> {
    let keys = key_set(&issuer.jwks()).unwrap();
    parse(token)?.verify(checks, &keys, tj::now() as u64)
}

#[test]
fn good_tokens_of_both_key_types_verify() {
    let issuer = Issuer::new(ISS);
    assert_eq!(verify(&issuer, &issuer.token("alice"), &checks()), Ok(()));
    assert_eq!(
        verify(&issuer, &issuer.es256(&issuer.claims("bob")), &checks()),
        Ok(())
    );
    // A header changed after signing (here: its kid dropped) breaks the
    // signature.
    let token = issuer.es256(&issuer.claims("carol"));
    let (_, rest) = token.split_once('.').unwrap();
    let no_kid = format!("{}.{rest}", tj::b64(br#"{"alg":"ES256"}"#));
    // The header changed, so the signature no longer covers it.
    assert_eq!(
        verify(&issuer, &no_kid, &checks()),
        Err(JwtError::VerificationFails)
    );
}

#[test]
fn each_attack_is_refused_with_envoys_reason() {
    let issuer = Issuer::new(ISS);
    let now = tj::now();
    let claims = issuer.claims("alice");
    let other_keys = Issuer::new(ISS);
    let mut big = issuer.claims("alice");
    big["pad"] = json!("x".repeat(40_000));
    let cases: Vec<(&str, String, JwtError)> = vec![
        ("alg none", tj::unsigned(&claims), JwtError::BadFormat),
        (
            "alg none with a signature",
            format!("{}c2ln", tj::unsigned(&claims)),
            JwtError::HeaderUnsupportedAlg,
        ),
        (
            "HS256 with the RSA public key",
            issuer.hs256_with_public_key(&claims),
            JwtError::NoMatchingKey,
        ),
        (
            "expired",
            issuer.rs256(&json!({"iss": ISS, "sub": "a", "exp": now - 120})),
            JwtError::Expired,
        ),
        (
            "not yet valid",
            issuer.rs256(&json!({"iss": ISS, "sub": "a", "nbf": now + 120, "exp": now + 600})),
            JwtError::NotYetValid,
        ),
        (
            "wrong issuer",
            issuer.rs256(&json!({"iss": "https://evil.example", "sub": "a"})),
            JwtError::UnknownIssuer,
        ),
        (
            "unknown kid",
            issuer.with_kid(&claims, "nobody"),
            JwtError::NoMatchingKey,
        ),
        (
            "tampered payload",
            tj::tampered(&issuer.token("alice"), &issuer.claims("admin")),
            JwtError::VerificationFails,
        ),
        (
            "signed by another key with the same kid",
            other_keys.es256(&claims),
            JwtError::VerificationFails,
        ),
        (
            "oversized",
            tj::tampered(&issuer.token("alice"), &big),
            JwtError::VerificationFails,
        ),
        ("two sections", "abc.def".into(), JwtError::BadFormat),
        ("four sections", "a.b.c.d".into(), JwtError::BadFormat),
        (
            "header not base64",
            "***.e30.sig".into(),
            JwtError::HeaderBadBase64,
        ),
        (
            "header not JSON",
            format!("{}.e30.c2ln", tj::b64(b"nope")),
            JwtError::HeaderBadJson,
        ),
        (
            "alg not a string",
            format!("{}.e30.c2ln", tj::b64(br#"{"alg":1}"#)),
            JwtError::HeaderBadAlg,
        ),
        (
            "payload not JSON",
            format!("{}.{}.c2ln", tj::b64(br#"{"alg":"RS256"}"#), tj::b64(b"[1")),
            JwtError::PayloadBadJson,
        ),
        (
            "exp not a number",
            format!(
                "{}.{}.c2ln",
                tj::b64(br#"{"alg":"RS256"}"#),
                tj::b64(br#"{"exp":"soon"}"#)
            ),
            JwtError::PayloadBadClaim("exp", "an integer"),
        ),
        (
            "signature not base64",
            format!("{}.e30.%%%", tj::b64(br#"{"alg":"RS256"}"#)),
            JwtError::SignatureBadBase64,
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(verify(&issuer, &token, &checks()), Err(want), "{name}");
    }
}

#[test]
fn audiences_and_expiration_requirements() {
    let issuer = Issuer::new(ISS);
    let mut with_aud = checks();
    with_aud.audiences = vec!["https://shop.example/".into()];
    let token = |aud: Value| {
        let mut c = issuer.claims("alice");
        c["aud"] = aud;
        issuer.rs256(&c)
    };
    // Scheme and trailing slash do not count, as in Envoy.
    assert_eq!(
        verify(&issuer, &token(json!("shop.example")), &with_aud),
        Ok(())
    );
    assert_eq!(
        verify(
            &issuer,
            &token(json!(["x", "https://shop.example"])),
            &with_aud
        ),
        Ok(())
    );
    assert_eq!(
        verify(&issuer, &token(json!("other")), &with_aud),
        Err(JwtError::AudienceNotAllowed)
    );
    assert_eq!(
        verify(&issuer, &issuer.token("alice"), &with_aud),
        Err(JwtError::AudienceNotAllowed)
    );
    assert_eq!(JwtError::AudienceNotAllowed.status(), 403);
    let mut strict = checks();
    strict.require_expiration = true;
    let no_exp = issuer.rs256(&json!({"iss": ISS, "sub": "a"}));
    assert_eq!(
        verify(&issuer, &no_exp, &strict),
        Err(JwtError::ExpirationRequired)
    );
    // Within the clock skew an expired token still passes.
    let just_expired = issuer.rs256(&json!({"iss": ISS, "sub": "a", "exp": tj::now() - 10}));
    assert_eq!(verify(&issuer, &just_expired, &checks()), Ok(()));
}

#[test]
fn key_sets_keep_usable_keys_and_explain_the_rest() {
    let issuer = Issuer::new(ISS);
    assert_eq!(key_set(&issuer.jwks()).unwrap().len(), 2);
    let mixed = json!({"keys": [
        {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "weird"},
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        serde_json::from_str::<Value>(&issuer.jwks()).unwrap()["keys"][1].clone(),
    ]});
    assert_eq!(key_set(&mixed.to_string()).unwrap().len(), 1);
    assert!(
        key_set("not json")
            .unwrap_err()
            .contains("not a JSON Web Key Set")
    );
    assert!(key_set("{}").unwrap_err().contains("no \"keys\" list"));
    assert!(
        key_set(r#"{"keys": [{"kty": "weird"}]}"#)
            .unwrap_err()
            .contains("no usable key")
    );
}
