//! Validation of RequestAuthentication, as Istio's admission webhook
//! (`ValidateRequestAuthentication` / `validateJwtRule`) and the CRD's schema
//! rules do it: how the policy picks workloads, then each JWT rule's issuer,
//! key set, token locations, claim-to-header copies and fetch timeout.

use serde_json::Value;

use super::{Context, Path, Report, Validate, check_duration_at_least, check_policy_targets};
use crate::common::Duration;
use crate::security::RequestAuthenticationSpec;
use crate::security::request_authentication::JwtRule;

/// Istio's CRD caps `jwtRules` at 4096 entries.
const MAX_JWT_RULES: usize = 4096;

impl Validate for RequestAuthenticationSpec {
    fn validate(&self, ctx: &Context<'_>, path: &Path, report: &mut Report) {
        check_policy_targets(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
            ctx,
            path,
            report,
        );
        let rules = path.field("jwtRules");
        if self.jwt_rules.len() > MAX_JWT_RULES {
            report.error(
                &rules,
                format!(
                    "{} jwtRules given; at most {MAX_JWT_RULES} are allowed",
                    self.jwt_rules.len()
                ),
            );
        }
        for (i, rule) in self.jwt_rules.iter().enumerate() {
            check_jwt_rule(rule, &rules.index(i), report);
        }
    }
}

fn check_jwt_rule(rule: &JwtRule, path: &Path, report: &mut Report) {
    let issuer = rule.issuer.as_deref().unwrap_or("");
    let jwks_uri = rule.jwks_uri.as_deref().unwrap_or("");
    if rule.issuer.as_deref() == Some("") && !jwks_uri.is_empty() {
        // The CRD schema refuses an explicitly empty issuer (minLength 1).
        report.error(
            &path.field("issuer"),
            "issuer must not be empty; remove it or give the expected `iss` claim",
        );
    } else if issuer.is_empty() && jwks_uri.is_empty() {
        report.error(
            &path.field("issuer"),
            "issuer must be set (the expected `iss` claim, e.g. \"https://accounts.example.com\")",
        );
    }
    for (k, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            report.error(
                &path.field("audiences").index(k),
                "audience must be a non-empty string; remove it",
            );
        }
    }
    if rule.jwks_uri.is_some() && rule.jwks.is_some() {
        report.error(
            &path.field("jwks"),
            "only one of jwks or jwksUri can be set; keep the inline key set or the URL, not both",
        );
    }
    if let Some(uri) = &rule.jwks_uri
        && let Err(e) = check_jwks_uri(uri)
    {
        report.error(&path.field("jwksUri"), e);
    }
    if let Some(jwks) = &rule.jwks {
        check_jwks(jwks, &path.field("jwks"), report);
    }
    for (k, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            report.error(
                &path.field("fromHeaders").index(k).field("name"),
                "header name is required, e.g. `name: x-jwt-assertion`",
            );
        }
    }
    let names: [(&str, &[String], &str); 3] = [
        ("fromParams", &rule.from_params, "query parameter name"),
        ("fromCookies", &rule.from_cookies, "cookie name"),
        (
            "spaceDelimitedClaims",
            &rule.space_delimited_claims,
            "claim name",
        ),
    ];
    for (field, values, what) in names {
        for (k, v) in values.iter().enumerate() {
            if v.is_empty() {
                report.error(
                    &path.field(field).index(k),
                    format!("{what} must be a non-empty string; remove it"),
                );
            }
        }
    }
    if rule.space_delimited_claims.len() > 64 {
        report.error(
            &path.field("spaceDelimitedClaims"),
            format!(
                "{} claims given; at most 64 are allowed",
                rule.space_delimited_claims.len()
            ),
        );
    }
    if let Some(h) = &rule.output_payload_to_header {
        // Istio does not check this header name, but Envoy cannot add a
        // header whose name is not an HTTP token.
        if !h.is_empty() && !is_http_token(h) {
            report.warn(
                &path.field("outputPayloadToHeader"),
                format!("{h:?} is not a valid HTTP header name; use letters, digits and '-'"),
            );
        }
    }
    let claims = path.field("outputClaimToHeaders");
    for (k, c) in rule.output_claim_to_headers.iter().enumerate() {
        let p = claims.index(k);
        if c.header.is_empty() {
            report.error(
                &p.field("header"),
                "header must be a non-empty header name, e.g. x-jwt-claim-group",
            );
        } else if !c
            .header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            report.error(
                &p.field("header"),
                format!("header name {:?} is not valid: use only letters, digits, '-' and '_' (no ':' pseudo headers)", c.header),
            );
        }
        if c.claim.is_empty() {
            report.error(
                &p.field("claim"),
                "claim must be a non-empty claim name, e.g. groups or nested.key.group",
            );
        }
    }
    if let Some(t) = &rule.timeout {
        let p = path.field("timeout");
        check_duration_at_least(t, Duration::from_millis(1), &p, report);
        if t.0 >= std::time::Duration::from_millis(1)
            && !t.0.subsec_nanos().is_multiple_of(1_000_000)
        {
            report.error(&p, format!("timeout {t} has sub-millisecond precision; only whole milliseconds are supported"));
        }
    }
}

/// An RFC 7230 token: the characters allowed in a header name.
fn is_http_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a JWKS URL: `http` or `https` scheme (Istio derives the fetch
/// cluster's TLS and default port from it), a host, a numeric port if any.
fn check_jwks_uri(uri: &str) -> Result<(), String> {
    if uri.is_empty() {
        return Err("jwksUri must not be empty; remove it or give the key set URL".into());
    }
    if uri.len() > 2048 {
        return Err("jwksUri is longer than 2048 characters".into());
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "jwksUri {uri:?} is not a valid URL: it contains whitespace"
        ));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "jwksUri {uri:?} must be an absolute URL with scheme http:// or https://"
        ));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "jwksUri scheme {scheme:?} is not supported; use http:// or https://"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => return Err(format!("jwksUri {uri:?} has an unterminated IPv6 address")),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(format!("jwksUri {uri:?} has no host"));
    }
    let bad_port = |p: &str| {
        (!p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit()))
            || p.parse::<u32>().is_ok_and(|n| n > 65_535)
    };
    if let Some(p) = port
        && bad_port(p)
    {
        return Err(format!("jwksUri {uri:?} has an invalid port {p:?}"));
    }
    Ok(())
}

/// Checks an inline JWKS the way Istio's JWK parser does: a JSON key set
/// (`{"keys": [...]}`) or a single key, each with a known `kty` and the
/// members that type needs. Private key material is accepted but warned
/// about, as Istio does: only public keys are needed to verify tokens.
fn check_jwks(jwks: &str, path: &Path, report: &mut Report) {
    let value: Value = match serde_json::from_str(jwks) {
        Ok(v) => v,
        Err(e) => {
            report.error(
                path,
                format!(
                    "jwks parse error: not valid JSON ({e}); paste the JSON Web Key Set document"
                ),
            );
            return;
        }
    };
    let keys: Vec<&Value> = match value.get("keys") {
        Some(Value::Array(keys)) => keys.iter().collect(),
        Some(_) => {
            report.error(
                path,
                "jwks parse error: \"keys\" must be an array of JSON Web Keys",
            );
            return;
        }
        None => vec![&value],
    };
    for (i, key) in keys.into_iter().enumerate() {
        let Some(obj) = key.as_object() else {
            report.error(
                path,
                format!("jwks parse error: key {i} is not a JSON object"),
            );
            continue;
        };
        let kty = obj.get("kty").and_then(Value::as_str).unwrap_or("");
        let required: &[&str] = match kty {
            "RSA" => &["n", "e"],
            "EC" => &["crv", "x", "y"],
            "OKP" => &["crv", "x"],
            "oct" => &["k"],
            "" => {
                report.error(path, format!("jwks parse error: key {i} has no \"kty\""));
                continue;
            }
            other => {
                report.error(path, format!("jwks parse error: key {i} has unsupported kty {other:?}; use RSA, EC, OKP or oct"));
                continue;
            }
        };
        for member in required {
            if !obj.get(*member).is_some_and(Value::is_string) {
                report.error(
                    path,
                    format!("jwks parse error: {kty} key {i} is missing {member:?}"),
                );
            }
        }
        if kty == "oct" || obj.contains_key("d") {
            report.warn(
                path,
                format!("jwks key at index {i} contains private key material; only public keys are used for verification, remove the private parts"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_jwks_uri;
    use crate::security::RequestAuthenticationSpec;
    use crate::validation::{Context, Report, validate_spec};
    use test_case::test_case;

    fn validate(yaml: &str) -> Report {
        let spec: RequestAuthenticationSpec = serde_saphyr::from_str(yaml).unwrap();
        validate_spec(&spec, &Context::default())
    }

    fn error_paths(r: &Report) -> Vec<&str> {
        r.errors().map(|d| d.path.as_str()).collect()
    }

    #[test_case("https://example.com/.well-known/jwks.json", true ; "https")]
    #[test_case("http://keys.local:8080/jwks", true ; "http with port")]
    #[test_case("https://[::1]:8443/jwks", true ; "ipv6")]
    #[test_case("ftp://example.com/jwks", false ; "other scheme")]
    #[test_case("example.com/jwks", false ; "no scheme")]
    #[test_case("https:///jwks", false ; "no host")]
    #[test_case("https://example.com:http/jwks", false ; "named port")]
    fn jwks_uris(uri: &str, ok: bool) {
        assert_eq!(check_jwks_uri(uri).is_ok(), ok, "{uri}");
    }

    #[test]
    fn issuer_or_jwks_uri_is_required() {
        assert_eq!(
            error_paths(&validate("jwtRules: [{audiences: [a]}]")),
            ["spec.jwtRules[0].issuer"]
        );
        assert!(!validate("jwtRules: [{jwksUri: \"https://e.com/k\"}]").has_errors());
    }

    #[test]
    fn jwks_and_jwks_uri_are_exclusive() {
        let r = validate(
            "jwtRules:\n- issuer: a\n  jwksUri: https://e.com/k\n  jwks: '{\"keys\":[{\"kty\":\"RSA\",\"n\":\"x\",\"e\":\"AQAB\"}]}'\n",
        );
        assert_eq!(error_paths(&r), ["spec.jwtRules[0].jwks"]);
    }

    #[test]
    fn inline_jwks_is_parsed_and_private_keys_warned() {
        let r = validate("jwtRules:\n- issuer: a\n  jwks: 'not json'\n");
        assert_eq!(error_paths(&r), ["spec.jwtRules[0].jwks"]);
        let r = validate(
            "jwtRules:\n- issuer: a\n  jwks: '{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}'\n",
        );
        assert!(!r.has_errors());
        assert_eq!(r.warnings().count(), 1);
    }

    #[test]
    fn claim_headers_and_timeout() {
        let r = validate(
            "jwtRules:\n- issuer: a\n  outputClaimToHeaders: [{header: ':path', claim: sub}, {header: x-a}]\n  timeout: 0.5ms\n",
        );
        assert_eq!(
            error_paths(&r),
            [
                "spec.jwtRules[0].outputClaimToHeaders[0].header",
                "spec.jwtRules[0].outputClaimToHeaders[1].claim",
                "spec.jwtRules[0].timeout",
            ]
        );
    }
}
