//! JWT authentication: Envoy's `envoy.filters.http.jwt_authn`, which is
//! what Istio's RequestAuthentication becomes.
//!
//! A filter has named providers (an issuer, its audiences, its key set,
//! where its tokens are found and what a verified token leaves behind)
//! and rules: the first rule whose route match fits the request names the
//! requirement to meet (a provider, any or all of several, or "allow
//! missing", which lets a request without any token through but still
//! refuses a bad one). A refused request gets Envoy's local reply (401, or
//! 403 for an audience not allowed, body the reason); a verified token's
//! payload goes into the request's dynamic metadata under
//! [`JWT_AUTHN_FILTER`] (`payload_in_metadata`), where RBAC policies read
//! `iss`, `sub` and claims. Key sets are inline (`local_jwks`); mesh-control
//! fetches `jwksUri`s itself, as istiod does, so `remote_jwks` is refused
//! rather than silently never verifying.
//!
//! Headers the filter writes (`forward_payload_header`, `claim_to_headers`)
//! are removed from every request first, so a client cannot present them
//! as if a token had been verified.

mod token;

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider, JwtRequirement, jwt_provider, jwt_requirement, requirement_rule,
};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use token::{Checks, Token};
pub use token::{JwtError, Key, key_set};

use super::convert::header_name;
use super::matcher::{RequestView, query_param};
use super::metadata::Metadata;
use super::route::{self, RouteMatch};
use super::{FieldResult, invalid, join};

/// The filter's name, and the metadata namespace it writes.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Envoy's default clock skew on `exp` and `nbf`.
const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;
/// Where a provider without locations looks: `Authorization: Bearer`.
const DEFAULT_HEADER_PREFIX: &str = "Bearer ";
/// ... and the `access_token` query parameter.
const DEFAULT_PARAM: &str = "access_token";

/// A compiled `JwtAuthentication`.
#[derive(Debug)]
pub struct JwtAuthn {
    providers: Vec<Arc<Provider>>,
    /// `(match, requirement)`; `None`: the rule turns verification off.
    rules: Vec<(RouteMatch, Option<Requirement>)>,
    bypass_cors_preflight: bool,
    strip_failure_response: bool,
    /// Headers the providers write, removed from incoming requests.
    written: Vec<HeaderName>,
}

#[derive(Debug)]
struct Provider {
    checks: Checks,
    keys: Vec<Key>,
    locations: Vec<Location>,
    forward: bool,
    forward_payload_header: Option<HeaderName>,
    pad_forward_payload_header: bool,
    payload_in_metadata: Option<String>,
    space_delimited_claims: Vec<String>,
    claim_to_headers: Vec<(HeaderName, Vec<String>)>,
}

/// Where a token may be.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    /// A header, after a prefix (e.g. `Bearer `).
    Header(HeaderName, String),
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

#[derive(Clone, Debug)]
enum Requirement {
    /// A provider, with audiences replacing its own when given.
    Provider(usize, Option<Vec<String>>),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Passes without tokens; a token present must verify.
    AllowMissing,
    /// Always passes; tokens that verify still leave their payload.
    AllowMissingOrFailed,
}

/// What a request that passed carries on: the metadata verified tokens
/// left (RBAC reads it) and the header changes their providers ask for.
#[derive(Debug, Default)]
pub struct Passed {
    /// Dynamic metadata written.
    pub metadata: Metadata,
    /// Headers to remove: what the filter writes (a client may not send
    /// it) and tokens that are not forwarded.
    pub remove: Vec<HeaderName>,
    /// Headers to set, after the removals.
    pub set: Vec<(HeaderName, HeaderValue)>,
}

/// A refusal: Envoy's local reply.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: JwtError,
    /// The reply's `www-authenticate`.
    pub www_authenticate: HeaderValue,
    /// Whether the reply has no body (`strip_failure_response`).
    pub strip_body: bool,
}

/// A token found in a request, with where.
struct Found {
    location: Location,
    raw: String,
}

/// A token a provider verified.
struct Verified {
    provider: usize,
    location: Location,
    payload_b64: String,
    payload: serde_json::Map<String, Value>,
}

// === Compilation ===

/// Compiles a `JwtAuthentication` found at `at`.
pub(crate) fn compile(pb: &JwtAuthentication, at: &str) -> FieldResult<JwtAuthn> {
    if pb.filter_state_rules.is_some() {
        return invalid(join(at, "filter_state_rules"), "is not supported");
    }
    let mut names: Vec<&String> = pb.providers.keys().collect();
    names.sort();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let providers = names
        .iter()
        .map(|name| {
            provider(
                &pb.providers[*name],
                &join(at, &format!("providers[{name}]")),
            )
            .map(Arc::new)
        })
        .collect::<FieldResult<Vec<_>>>()?;
    let mut rules = Vec::with_capacity(pb.rules.len());
    for (i, rule) in pb.rules.iter().enumerate() {
        let field = join(at, &format!("rules[{i}]"));
        let Some(m) = &rule.r#match else {
            return invalid(join(&field, "match"), "is required");
        };
        let matcher = route::route_match(m, &join(&field, "match"))?;
        let requirement = match &rule.requirement_type {
            None => None,
            Some(requirement_rule::RequirementType::Requires(r)) => {
                Some(requirement(r, &index, &join(&field, "requires"), 0)?)
            }
            Some(requirement_rule::RequirementType::RequirementName(name)) => {
                let Some(r) = pb.requirement_map.get(name) else {
                    return invalid(
                        join(&field, "requirement_name"),
                        format!("{name:?} is not in requirement_map"),
                    );
                };
                Some(requirement(
                    r,
                    &index,
                    &join(at, &format!("requirement_map[{name}]")),
                    0,
                )?)
            }
        };
        rules.push((matcher, requirement));
    }
    let mut written: Vec<HeaderName> = providers
        .iter()
        .flat_map(|p| {
            p.forward_payload_header
                .iter()
                .chain(p.claim_to_headers.iter().map(|(h, _)| h))
                .cloned()
        })
        .collect();
    written.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    written.dedup();
    Ok(JwtAuthn {
        providers,
        rules,
        bypass_cors_preflight: pb.bypass_cors_preflight,
        strip_failure_response: pb.strip_failure_response,
        written,
    })
}

fn provider(p: &JwtProvider, at: &str) -> FieldResult<Provider> {
    for (field, set) in [
        ("subjects", p.subjects.is_some()),
        ("max_lifetime", p.max_lifetime.is_some()),
        ("header_in_metadata", !p.header_in_metadata.is_empty()),
        (
            "failed_status_in_metadata",
            !p.failed_status_in_metadata.is_empty(),
        ),
    ] {
        if set {
            return invalid(join(at, field), "is not supported");
        }
    }
    let keys = match &p.jwks_source_specifier {
        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(ds)) => {
            let at = join(at, "local_jwks");
            let text = match &ds.specifier {
                Some(data_source::Specifier::InlineString(s)) => s.clone(),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    String::from_utf8_lossy(b).into_owned()
                }
                Some(data_source::Specifier::Filename(f)) => match std::fs::read_to_string(f) {
                    Ok(s) => s,
                    Err(e) => return invalid(join(&at, "filename"), format!("{f}: {e}")),
                },
                _ => {
                    return invalid(at, "inline_string, inline_bytes or filename is required");
                }
            };
            key_set(&text).or_else(|reason| invalid(at, reason))?
        }
        Some(jwt_provider::JwksSourceSpecifier::RemoteJwks(_)) => {
            return invalid(
                join(at, "remote_jwks"),
                "is not supported; the control plane fetches key sets and sends them as local_jwks",
            );
        }
        None => return invalid(at, "local_jwks is required"),
    };
    let mut locations = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        let name = header_name(&h.name, &join(at, &format!("from_headers[{i}].name")))?;
        locations.push(Location::Header(name, h.value_prefix.clone()));
    }
    locations.extend(p.from_params.iter().cloned().map(Location::Param));
    locations.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        locations = vec![
            Location::Header(header::AUTHORIZATION, DEFAULT_HEADER_PREFIX.into()),
            Location::Param(DEFAULT_PARAM.into()),
        ];
    }
    let forward_payload_header = (!p.forward_payload_header.is_empty())
        .then(|| {
            header_name(
                &p.forward_payload_header,
                &join(at, "forward_payload_header"),
            )
        })
        .transpose()?;
    let claim_to_headers = p
        .claim_to_headers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let field = join(at, &format!("claim_to_headers[{i}]"));
            let header = header_name(&c.header_name, &join(&field, "header_name"))?;
            let path: Vec<String> = if c.claim_path.is_empty() {
                c.claim_name.split('.').map(str::to_string).collect()
            } else {
                c.claim_path.iter().map(|s| s.key.clone()).collect()
            };
            if path.iter().any(String::is_empty) {
                return invalid(join(&field, "claim_name"), "is required");
            }
            Ok((header, path))
        })
        .collect::<FieldResult<Vec<_>>>()?;
    Ok(Provider {
        checks: Checks {
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            clock_skew: if p.clock_skew_seconds == 0 {
                DEFAULT_CLOCK_SKEW_SECS
            } else {
                u64::from(p.clock_skew_seconds)
            },
            require_expiration: p.require_expiration,
        },
        keys,
        locations,
        forward: p.forward,
        forward_payload_header,
        pad_forward_payload_header: p.pad_forward_payload_header,
        payload_in_metadata: (!p.payload_in_metadata.is_empty())
            .then(|| p.payload_in_metadata.clone()),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        claim_to_headers,
    })
}

/// Nesting allowed in one requirement.
const MAX_DEPTH: usize = 16;

fn requirement(
    r: &JwtRequirement,
    index: &HashMap<&str, usize>,
    at: &str,
    depth: usize,
) -> FieldResult<Requirement> {
    use jwt_requirement::RequiresType as T;
    if depth > MAX_DEPTH {
        return invalid(at, format!("nested more than {MAX_DEPTH} levels deep"));
    }
    let provider = |name: &str, field: &str| {
        index.get(name).copied().map_or_else(
            || invalid(join(at, field), format!("no provider {name:?}")),
            Ok,
        )
    };
    let list = |items: &[JwtRequirement], field: &str| {
        items
            .iter()
            .enumerate()
            .map(|(i, r)| {
                requirement(
                    r,
                    index,
                    &join(at, &format!("{field}.requirements[{i}]")),
                    depth + 1,
                )
            })
            .collect::<FieldResult<Vec<_>>>()
    };
    Ok(match &r.requires_type {
        Some(T::ProviderName(name)) => {
            Requirement::Provider(provider(name, "provider_name")?, None)
        }
        Some(T::ProviderAndAudiences(p)) => Requirement::Provider(
            provider(&p.provider_name, "provider_and_audiences.provider_name")?,
            Some(p.audiences.clone()),
        ),
        Some(T::RequiresAny(l)) => Requirement::Any(list(&l.requirements, "requires_any")?),
        Some(T::RequiresAll(l)) => Requirement::All(list(&l.requirements, "requires_all")?),
        Some(T::AllowMissing(_)) => Requirement::AllowMissing,
        Some(T::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(T::ExtractOnlyWithoutValidation(_)) => {
            return invalid(
                join(at, "extract_only_without_validation"),
                "is not supported",
            );
        }
        None => return invalid(at, "a requirement is required"),
    })
}

// === impl JwtAuthn ===

impl JwtAuthn {
    /// Authenticates a request: the requirement of the first rule that
    /// matches `view`, checked against the tokens in its headers and the
    /// query of its path, at `now` (seconds since the epoch). What passes
    /// says which headers change ([`Passed::apply`]).
    pub fn authenticate(&self, view: &RequestView<'_>, now: u64) -> Result<Passed, Refused> {
        let untouched = || Passed {
            remove: self.written.clone(),
            ..Passed::default()
        };
        if self.bypass_cors_preflight && is_cors_preflight(view) {
            return Ok(untouched());
        }
        let Some((_, Some(requirement))) = self.rules.iter().find(|(m, _)| m.matches(view, None))
        else {
            return Ok(untouched());
        };
        let mut check = Check {
            filter: self,
            view,
            now,
            verified: Vec::new(),
        };
        match check.requirement(requirement) {
            Ok(()) => {
                let verified = std::mem::take(&mut check.verified);
                Ok(self.passed(verified, untouched()))
            }
            Err(error) => Err(self.refusal(error, view)),
        }
    }

    fn passed(&self, verified: Vec<Verified>, mut passed: Passed) -> Passed {
        for v in verified {
            let p = &self.providers[v.provider];
            if !p.forward
                && let Location::Header(name, _) = &v.location
            {
                passed.remove.push(name.clone());
            }
            if let Some(h) = &p.forward_payload_header {
                let mut value = v.payload_b64.trim_end_matches('=').to_string();
                if p.pad_forward_payload_header {
                    while value.len() % 4 != 0 {
                        value.push('=');
                    }
                }
                if let Ok(value) = HeaderValue::from_str(&value) {
                    passed.set.push((h.clone(), value));
                }
            }
            for (h, path) in &p.claim_to_headers {
                if let Some(value) =
                    claim_value(&v.payload, path).and_then(|s| HeaderValue::from_str(&s).ok())
                {
                    passed.set.push((h.clone(), value));
                }
            }
            if let Some(key) = &p.payload_in_metadata {
                let mut payload = v.payload;
                for claim in &p.space_delimited_claims {
                    if let Some(Value::String(s)) = payload.get(claim) {
                        let items = s
                            .split_whitespace()
                            .map(|w| Value::String(w.into()))
                            .collect();
                        payload.insert(claim.clone(), Value::Array(items));
                    }
                }
                passed
                    .metadata
                    .insert(JWT_AUTHN_FILTER, key, Value::Object(payload));
            }
        }
        passed
    }

    fn refusal(&self, error: JwtError, view: &RequestView<'_>) -> Refused {
        let path = view.path.split('?').next().unwrap_or(view.path);
        let realm = format!("{}://{}{}", view.scheme, view.authority, path);
        let value = match error {
            JwtError::Missing => format!("Bearer realm=\"{realm}\""),
            _ => format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
        };
        Refused {
            www_authenticate: HeaderValue::from_str(&value)
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
            error,
            strip_body: self.strip_failure_response,
        }
    }
}

// === impl Passed ===

impl Passed {
    /// Makes the header changes on the request going upstream.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for h in &self.remove {
            headers.remove(h);
        }
        for (h, v) in &self.set {
            headers.insert(h.clone(), v.clone());
        }
    }
}

fn is_cors_preflight(view: &RequestView<'_>) -> bool {
    view.method == Method::OPTIONS
        && view.headers.contains_key(header::ORIGIN)
        && view
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// A claim as a header value: strings as they are, numbers and booleans
/// printed; objects and lists are not copied (as in Envoy).
fn claim_value(payload: &serde_json::Map<String, Value>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut value = payload.get(first)?;
    for key in rest {
        value = value.get(key)?;
    }
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

// === Checking one request ===

/// One request's check, remembering what verified.
struct Check<'a> {
    filter: &'a JwtAuthn,
    view: &'a RequestView<'a>,
    now: u64,
    verified: Vec<Verified>,
}

impl Check<'_> {
    fn requirement(&mut self, r: &Requirement) -> Result<(), JwtError> {
        match r {
            Requirement::Provider(i, audiences) => self.provider(*i, audiences.as_deref()),
            Requirement::Any(any) => {
                let mut worst: Option<JwtError> = None;
                for r in any {
                    match self.requirement(r) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            if worst
                                .as_ref()
                                .is_none_or(|w| e.specificity() > w.specificity())
                            {
                                worst = Some(e);
                            }
                        }
                    }
                }
                Err(worst.unwrap_or(JwtError::Missing))
            }
            Requirement::All(all) => all.iter().try_for_each(|r| self.requirement(r)),
            Requirement::AllowMissing => self.any_issuer(),
            Requirement::AllowMissingOrFailed => {
                let _ = self.any_issuer();
                Ok(())
            }
        }
    }

    /// Every token in provider `i`'s locations must verify with it; there
    /// must be one.
    fn provider(&mut self, i: usize, audiences: Option<&[String]>) -> Result<(), JwtError> {
        let p = &self.filter.providers[i];
        let found = self.find(&p.locations);
        if found.is_empty() {
            return Err(JwtError::Missing);
        }
        for f in found {
            self.verify(i, f, audiences)?;
        }
        Ok(())
    }

    /// "Allow missing": no token anywhere a provider looks passes; each
    /// token found must verify with the provider of its issuer that looks
    /// there.
    fn any_issuer(&mut self) -> Result<(), JwtError> {
        let mut all: Vec<Location> = Vec::new();
        for p in &self.filter.providers {
            for l in &p.locations {
                if !all.contains(l) {
                    all.push(l.clone());
                }
            }
        }
        for f in self.find(&all) {
            let issuer = token::parse(&f.raw)?
                .claim_str("iss")
                .unwrap_or_default()
                .to_string();
            let provider = self.filter.providers.iter().position(|p| {
                (p.checks.issuer.is_empty() || p.checks.issuer == issuer)
                    && p.locations.contains(&f.location)
            });
            let Some(i) = provider else {
                return Err(JwtError::UnknownIssuer);
            };
            self.verify(i, f, None)?;
        }
        Ok(())
    }

    fn verify(&mut self, i: usize, f: Found, audiences: Option<&[String]>) -> Result<(), JwtError> {
        let p = &self.filter.providers[i];
        let token: Token<'_> = token::parse(&f.raw)?;
        let checks;
        let checks = match audiences {
            Some(a) => {
                checks = Checks {
                    audiences: a.to_vec(),
                    ..p.checks.clone()
                };
                &checks
            }
            None => &p.checks,
        };
        token.verify(checks, &p.keys, self.now)?;
        self.verified.push(Verified {
            provider: i,
            location: f.location,
            payload_b64: token.payload_b64.to_string(),
            payload: token.payload,
        });
        Ok(())
    }

    /// The tokens at `locations`, at most one per location.
    fn find(&self, locations: &[Location]) -> Vec<Found> {
        locations
            .iter()
            .filter_map(|l| {
                let raw = match l {
                    Location::Header(name, prefix) => {
                        header_token(self.view.headers.get(name)?.to_str().ok()?, prefix)?
                    }
                    Location::Param(name) => {
                        let query = self.view.path.split_once('?')?.1;
                        query_param(query, name).filter(|t| !t.is_empty())?
                    }
                    Location::Cookie(name) => cookie(self.view.headers, name)?,
                };
                Some(Found {
                    location: l.clone(),
                    raw,
                })
            })
            .collect()
    }
}

/// The token in a header value after `prefix` (compared without case, as
/// `Bearer` is a case-insensitive scheme), up to the next space or comma.
fn header_token(value: &str, prefix: &str) -> Option<String> {
    let value = value.trim();
    let rest = if prefix.is_empty() {
        value
    } else {
        let head = value.get(..prefix.len())?;
        if !head.eq_ignore_ascii_case(prefix) {
            return None;
        }
        &value[prefix.len()..]
    };
    let token: String = rest
        .trim_start()
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',')
        .collect();
    (!token.is_empty()).then_some(token)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
