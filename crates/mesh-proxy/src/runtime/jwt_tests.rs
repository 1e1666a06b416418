use super::*;
use mesh_test_support::jwt::{self as tj, Issuer};
use serde_json::{Value, json};

const ISS: &str = "https://issuer.example";
const OTHER: &str = "https://other.example";

/// What mesh-control emits for one RequestAuthentication with two
/// issuers: providers reading `Authorization: Bearer`, payload in
/// metadata, "any provider, or no token at all".
fn filter(a: &Issuer, b: &Issuer, extra: Value) -> JwtAuthn {
    let mut p0 = json!({"issuer": a.iss, "localJwks": {"inlineString": a.jwks()},
        "payloadInMetadata": "payload",
        "normalizePayloadInMetadata": {"spaceDelimitedClaims": ["scope"]}});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            p0[k] = v;
        }
    }
    let config = json!({
        "providers": {
            "origins-0": p0,
            "origins-1": {"issuer": b.iss, "localJwks": {"inlineString": b.jwks()},
                          "fromHeaders": [{"name": "x-token"}], "payloadInMetadata": "payload"},
        },
        "rules": [{"match": {"prefix": "/"}, "requires": {"requiresAny": {"requirements": [
            {"providerName": "origins-0"}, {"providerName": "origins-1"}, {"allowMissing": {}}]}}}],
        "bypassCorsPreflight": true,
    });
    let pb: JwtAuthentication = mesh_api::xds::json::from_json(&config).unwrap();
    compile(&pb, "jwt").unwrap()
}

struct Req {
    method: Method,
    path: String,
    headers: HeaderMap,
}

fn get(path: &str, headers: &[(&'static str, String)]) -> Req {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    Req {
        method: Method::GET,
        path: path.into(),
        headers: h,
    }
}

fn run(f: &JwtAuthn, r: &Req) -> Result<Passed, Refused> {
    let view = RequestView {
        method: &r.method,
        scheme: "http",
        authority: "shop",
        path: &r.path,
        headers: &r.headers,
    };
    f.authenticate(&view, tj::now() as u64)
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

#[test]
fn missing_passes_good_passes_bad_is_refused() {
    let (a, b) = (Issuer::new(ISS), Issuer::new(OTHER));
    let f = filter(&a, &b, json!({}));
    let passed = run(&f, &get("/", &[])).unwrap();
    assert!(passed.metadata.is_empty());
    let passed = run(&f, &get("/", &[bearer(&a.token("alice"))])).unwrap();
    let md = passed
        .metadata
        .get(JWT_AUTHN_FILTER, &["payload".into()])
        .unwrap();
    assert_eq!(md["sub"], "alice");
    assert_eq!(md["iss"], ISS);
    // The token is not forwarded: its header goes.
    assert!(passed.remove.contains(&header::AUTHORIZATION));
    // The second issuer's tokens come in their own header.
    let passed = run(&f, &get("/", &[("x-token", b.token("bob"))])).unwrap();
    assert_eq!(
        passed
            .metadata
            .get(JWT_AUTHN_FILTER, &["payload".into(), "sub".into()]),
        Some(&json!("bob"))
    );
    // ... and not in the first one's.
    let refused = run(&f, &get("/", &[bearer(&b.token("bob"))])).unwrap_err();
    assert_eq!(refused.error, JwtError::UnknownIssuer);
    let refused = run(&f, &get("/", &[bearer("garbage")])).unwrap_err();
    assert_eq!(refused.error, JwtError::BadFormat);
    assert_eq!(refused.error.status(), 401);
    assert_eq!(
        refused.www_authenticate,
        "Bearer realm=\"http://shop/\", error=\"invalid_token\""
    );
}

#[test]
fn the_most_specific_reason_wins() {
    let (a, b) = (Issuer::new(ISS), Issuer::new(OTHER));
    let f = filter(&a, &b, json!({}));
    let expired = a.rs256(&json!({"iss": ISS, "sub": "a", "exp": tj::now() - 3600}));
    // origins-0 says expired, origins-1 says missing, allow_missing sees a
    // bad token: the client is told it is expired.
    let refused = run(&f, &get("/", &[bearer(&expired)])).unwrap_err();
    assert_eq!(refused.error, JwtError::Expired);
    assert_eq!(refused.error.to_string(), "Jwt is expired");
}

#[test]
fn tokens_in_query_and_cookies_and_header_prefixes() {
    let (a, b) = (Issuer::new(ISS), Issuer::new(OTHER));
    // Default locations: Authorization Bearer and access_token.
    let f = filter(&a, &b, json!({}));
    let path = format!("/items?access_token={}", a.token("alice"));
    assert!(run(&f, &get(&path, &[])).is_ok());
    let bad = format!("/items?access_token={}", tj::unsigned(&a.claims("alice")));
    assert_eq!(
        run(&f, &get(&bad, &[])).unwrap_err().error,
        JwtError::BadFormat
    );
    let f = filter(
        &a,
        &b,
        json!({"fromHeaders": [{"name": "x-jwt", "valuePrefix": "Token "}], "fromCookies": ["session"]}),
    );
    let passed = run(
        &f,
        &get("/", &[("x-jwt", format!("Token {}", a.token("carol")))]),
    )
    .unwrap();
    assert!(passed.remove.contains(&HeaderName::from_static("x-jwt")));
    let cookie = ("cookie", format!("theme=dark; session={}", a.token("dave")));
    let passed = run(&f, &get("/", &[cookie])).unwrap();
    assert_eq!(
        passed
            .metadata
            .get(JWT_AUTHN_FILTER, &["payload".into(), "sub".into()]),
        Some(&json!("dave"))
    );
    // Without the prefix the header holds no token for this provider; the
    // default Authorization header is not read once locations are set.
    assert!(
        run(&f, &get("/", &[("x-jwt", a.token("carol"))]))
            .unwrap()
            .metadata
            .is_empty()
    );
    assert!(
        run(&f, &get("/", &[bearer(&a.token("carol"))]))
            .unwrap()
            .metadata
            .is_empty()
    );
}

#[test]
fn forwarding_payload_and_claims_to_headers() {
    let (a, b) = (Issuer::new(ISS), Issuer::new(OTHER));
    let f = filter(
        &a,
        &b,
        json!({"forward": true, "forwardPayloadHeader": "x-jwt-payload",
               "claimToHeaders": [{"headerName": "x-user", "claimName": "sub"},
                                  {"headerName": "x-group", "claimName": "org.group"}]}),
    );
    let mut claims = a.claims("alice");
    claims["org"] = json!({"group": "dev"});
    claims["scope"] = json!("read write");
    let token = a.rs256(&claims);
    let passed = run(&f, &get("/", &[bearer(&token)])).unwrap();
    assert!(!passed.remove.contains(&header::AUTHORIZATION));
    let set: HashMap<&str, &str> = passed
        .set
        .iter()
        .map(|(h, v)| (h.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(set["x-user"], "alice");
    assert_eq!(set["x-group"], "dev");
    assert_eq!(set["x-jwt-payload"], token.split('.').nth(1).unwrap());
    // Space-delimited claims become lists in the metadata.
    assert_eq!(
        passed
            .metadata
            .get(JWT_AUTHN_FILTER, &["payload".into(), "scope".into()]),
        Some(&json!(["read", "write"]))
    );
    // A client cannot send what the filter writes, token or not.
    let passed = run(&f, &get("/", &[("x-user", "admin".into())])).unwrap();
    assert!(passed.remove.contains(&HeaderName::from_static("x-user")));
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("admin"));
    passed.apply(&mut headers);
    assert!(headers.get("x-user").is_none());
}

#[test]
fn requirements_any_all_required_and_cors_preflight() {
    let (a, b) = (Issuer::new(ISS), Issuer::new(OTHER));
    let config = |requires: Value| {
        let pb: JwtAuthentication = mesh_api::xds::json::from_json(&json!({
            "providers": {
                "a": {"issuer": a.iss, "localJwks": {"inlineString": a.jwks()}},
                "b": {"issuer": b.iss, "localJwks": {"inlineString": b.jwks()}, "fromHeaders": [{"name": "x-b"}]},
            },
            "rules": [
                {"match": {"prefix": "/public"}},
                {"match": {"prefix": "/"}, "requires": requires},
            ],
            "bypassCorsPreflight": true,
        }))
        .unwrap();
        compile(&pb, "jwt").unwrap()
    };
    let required = config(json!({"providerName": "a"}));
    assert_eq!(
        run(&required, &get("/", &[])).unwrap_err().error,
        JwtError::Missing
    );
    assert_eq!(
        run(&required, &get("/", &[])).unwrap_err().www_authenticate,
        "Bearer realm=\"http://shop/\""
    );
    // A rule without requirement turns verification off.
    assert!(run(&required, &get("/public/x", &[bearer("junk")])).is_ok());
    let mut preflight = get(
        "/",
        &[
            ("origin", "http://a".into()),
            ("access-control-request-method", "GET".into()),
        ],
    );
    preflight.method = Method::OPTIONS;
    assert!(run(&required, &preflight).is_ok());
    let both = config(
        json!({"requiresAll": {"requirements": [{"providerName": "a"}, {"providerName": "b"}]}}),
    );
    let ta = bearer(&a.token("alice"));
    let tb = ("x-b", b.token("bob"));
    assert!(run(&both, &get("/", &[ta.clone(), tb.clone()])).is_ok());
    assert_eq!(
        run(&both, &get("/", std::slice::from_ref(&ta)))
            .unwrap_err()
            .error,
        JwtError::Missing
    );
    let audience =
        config(json!({"providerAndAudiences": {"providerName": "a", "audiences": ["shop"]}}));
    assert_eq!(
        run(&audience, &get("/", &[ta])).unwrap_err().error,
        JwtError::AudienceNotAllowed
    );
    let lenient = config(json!({"allowMissingOrFailed": {}}));
    assert!(run(&lenient, &get("/", &[bearer("junk")])).is_ok());
    let passed = run(&lenient, &get("/", &[tb])).unwrap();
    assert!(passed.remove.contains(&HeaderName::from_static("x-b")));
}

#[test]
fn unsupported_or_broken_config_is_refused_by_field() {
    let a = Issuer::new(ISS);
    let refuse = |config: Value| {
        let pb: JwtAuthentication = mesh_api::xds::json::from_json(&config).unwrap();
        compile(&pb, "jwt").unwrap_err()
    };
    let e = refuse(json!({"providers": {"p": {"issuer": ISS,
        "remoteJwks": {"httpUri": {"uri": "https://x/jwks", "cluster": "c", "timeout": "1s"}}}}}));
    assert_eq!(e.field, "jwt.providers[p].remote_jwks");
    let e =
        refuse(json!({"providers": {"p": {"issuer": ISS, "localJwks": {"inlineString": "{}"}}}}));
    assert_eq!(e.field, "jwt.providers[p].local_jwks");
    assert!(e.reason.contains("keys"), "{}", e.reason);
    let e = refuse(
        json!({"providers": {"p": {"issuer": ISS, "localJwks": {"inlineString": a.jwks()}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"providerName": "q"}}]}),
    );
    assert_eq!(e.field, "jwt.rules[0].requires.provider_name");
    let e = refuse(
        json!({"providers": {"p": {"issuer": ISS, "localJwks": {"inlineString": a.jwks()},
        "subjects": {"prefix": "x"}}}}),
    );
    assert_eq!(e.field, "jwt.providers[p].subjects");
}
