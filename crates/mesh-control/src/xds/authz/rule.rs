//! One rule of an AuthorizationPolicy as one RBAC policy (Istio's
//! `authz/model`): its fields in Istio's order, `when` conditions sorted
//! to permissions or principals by attribute, and what happens to what
//! cannot be translated.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal, rbac,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, ValueMatcher, path_matcher, string_matcher, value_matcher,
};
use mesh_api::security::AuthorizationPolicy;
use mesh_api::security::authorization_policy::{Condition, Operation, Rule, Source};

use super::AuthzError;
use super::matcher::{
    Matcher, cidr, escape_regex, header, host_header, list_value, matcher_of, metadata, path, port,
    regex, string, string_value, wildcard_regex,
};
use crate::snapshot::{name_of, namespace_of};
use crate::xds::authn::{JWT_AUTHN_FILTER, JWT_PAYLOAD_KEY};

const SPIFFE_PREFIX: &str = "spiffe://";

/// Every rule of `policies` as an RBAC policy, by Istio's name:
/// `<prefix>ns[<ns>]-policy[<name>]-rule[<i>]`, the prefix empty except
/// for CUSTOM policies (`istio-ext-authz-<provider>-`).
pub(super) fn policies_for(
    action: rbac::Action,
    policies: &[&AuthorizationPolicy],
    tcp: bool,
    prefix: &str,
) -> BTreeMap<String, Policy> {
    let mut out = BTreeMap::new();
    for &p in policies {
        let (ns, name) = (namespace_of(p), name_of(p));
        for (i, rule) in p.spec.rules.iter().enumerate() {
            let id = format!("{prefix}ns[{ns}]-policy[{name}]-rule[{i}]");
            let ctx = RuleContext {
                id: &id,
                namespace: ns,
                action,
                tcp,
            };
            if let Some(policy) = ctx.policy(rule) {
                out.insert(id, policy);
            }
        }
    }
    out
}

// === Rules ===

/// What one rule is translated for.
struct RuleContext<'a> {
    /// `[<prefix>]ns[..]-policy[..]-rule[..]`, for logs.
    id: &'a str,
    /// The policy's namespace (the default of `serviceAccounts`).
    namespace: &'a str,
    action: rbac::Action,
    /// For a network filter: HTTP attributes do not exist.
    tcp: bool,
}

/// One field of a rule: an attribute with the values of which one must
/// match and the values of which none may.
struct Field<'a, A> {
    attr: A,
    /// The field as the user wrote it, for logs.
    label: &'a str,
    values: &'a [String],
    not_values: &'a [String],
}

/// The rule dropped: ALLOW rules that cannot be translated exactly.
struct Dropped;

impl RuleContext<'_> {
    /// The rule as a policy; `None` when an ALLOW rule must be dropped.
    fn policy(&self, rule: &Rule) -> Option<Policy> {
        let mut when_permissions = Vec::new();
        let mut when_principals = Vec::new();
        for c in &rule.when {
            match Attribute::of_condition(&c.key) {
                Ok(Attribute::Permission(attr)) => when_permissions.push(condition(attr, c)),
                Ok(Attribute::Principal(attr)) => when_principals.push(condition(attr, c)),
                // Istio skips a rule with an unknown key whatever the action.
                Err(e) => {
                    if !self.tcp {
                        tracing::warn!(rule = %self.id, error = %e, "AuthorizationPolicy rule skipped");
                    }
                    return None;
                }
            }
        }
        let mut permissions = Vec::new();
        for to in &rule.to {
            let mut fields = to
                .operation
                .as_ref()
                .map(operation_fields)
                .unwrap_or_default();
            fields.extend(when_permissions.iter().cloned());
            permissions.push(self.conjunction(&fields).ok()?);
        }
        if rule.to.is_empty() {
            permissions.push(self.conjunction(&when_permissions).ok()?);
        }
        let mut principals = Vec::new();
        for from in &rule.from {
            let mut fields = from.source.as_ref().map(source_fields).unwrap_or_default();
            fields.extend(when_principals.iter().cloned());
            principals.push(self.conjunction(&fields).ok()?);
        }
        if rule.from.is_empty() {
            principals.push(self.conjunction(&when_principals).ok()?);
        }
        Some(Policy {
            permissions,
            principals,
            ..Default::default()
        })
    }

    /// All of `fields`: `any` when there are none.
    fn conjunction<A: Attr>(&self, fields: &[Field<'_, A>]) -> Result<A::Out, Dropped> {
        let mut all = Vec::new();
        for f in fields {
            if self.tcp && f.attr.http_only() {
                let e = AuthzError::HttpOnly(f.label.to_string());
                if self.action == rbac::Action::Allow {
                    tracing::debug!(rule = %self.id, reason = %e, "ALLOW rule left out of the TCP filter");
                    return Err(Dropped);
                }
                tracing::debug!(rule = %self.id, reason = %e, "field ignored in the TCP filter");
                continue;
            }
            let values = self.matchers(f, f.values)?;
            if !values.is_empty() {
                all.push(A::Out::or(values));
            }
            let not_values = self.matchers(f, f.not_values)?;
            if !not_values.is_empty() {
                all.push(A::Out::not(A::Out::or(not_values)));
            }
        }
        Ok(if all.is_empty() {
            A::Out::any()
        } else {
            A::Out::and(all)
        })
    }

    fn matchers<A: Attr>(
        &self,
        f: &Field<'_, A>,
        values: &[String],
    ) -> Result<Vec<A::Out>, Dropped> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            match f.attr.matcher(v, self.namespace) {
                Ok(m) => out.push(m),
                Err(e) => {
                    let allow = self.action == rbac::Action::Allow;
                    if !self.tcp {
                        let outcome = if allow {
                            "rule dropped"
                        } else {
                            "value skipped"
                        };
                        tracing::warn!(rule = %self.id, field = %f.label, error = %e, "invalid AuthorizationPolicy value; {outcome}");
                    }
                    if allow {
                        return Err(Dropped);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A `when` condition as a field.
fn condition<A>(attr: A, c: &Condition) -> Field<'_, A> {
    Field {
        attr,
        label: &c.key,
        values: &c.values,
        not_values: &c.not_values,
    }
}

impl<A: Clone> Clone for Field<'_, A> {
    fn clone(&self) -> Self {
        Self {
            attr: self.attr.clone(),
            label: self.label,
            values: self.values,
            not_values: self.not_values,
        }
    }
}

/// An operation's fields, in Istio's order.
fn operation_fields(o: &Operation) -> Vec<Field<'_, PermissionAttr<'_>>> {
    let field = |attr, label, values, not_values| Field {
        attr,
        label,
        values,
        not_values,
    };
    [
        field(PermissionAttr::Host, "hosts", &o.hosts, &o.not_hosts),
        field(
            PermissionAttr::Method,
            "methods",
            &o.methods,
            &o.not_methods,
        ),
        field(PermissionAttr::Path, "paths", &o.paths, &o.not_paths),
        field(PermissionAttr::Port, "ports", &o.ports, &o.not_ports),
    ]
    .into_iter()
    .filter(|f| !f.values.is_empty() || !f.not_values.is_empty())
    .collect()
}

/// A source's fields, in Istio's order.
fn source_fields(s: &Source) -> Vec<Field<'_, PrincipalAttr<'_>>> {
    use PrincipalAttr as P;
    let field = |attr, label, values, not_values| Field {
        attr,
        label,
        values,
        not_values,
    };
    [
        field(P::Principal, "principals", &s.principals, &s.not_principals),
        field(
            P::RequestPrincipal,
            "requestPrincipals",
            &s.request_principals,
            &s.not_request_principals,
        ),
        field(
            P::ServiceAccount,
            "serviceAccounts",
            &s.service_accounts,
            &s.not_service_accounts,
        ),
        field(
            P::TrustDomain,
            "trustDomains",
            &s.trust_domains,
            &s.not_trust_domains,
        ),
        field(P::Namespace, "namespaces", &s.namespaces, &s.not_namespaces),
        field(
            P::RemoteIp,
            "remoteIpBlocks",
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
        ),
        field(P::SourceIp, "ipBlocks", &s.ip_blocks, &s.not_ip_blocks),
    ]
    .into_iter()
    .filter(|f| !f.values.is_empty() || !f.not_values.is_empty())
    .collect()
}

// === Attributes ===

/// What an attribute is matched by.
enum Attribute<'a> {
    Permission(PermissionAttr<'a>),
    Principal(PrincipalAttr<'a>),
}

/// Attributes of what is done (Envoy RBAC permissions).
#[derive(Clone, Debug)]
enum PermissionAttr<'a> {
    /// `hosts`: `:authority`, case-insensitive.
    Host,
    /// `methods`: `:method`.
    Method,
    /// `paths`.
    Path,
    /// `ports`, `destination.port`.
    Port,
    /// `destination.ip`.
    DestinationIp,
    /// `connection.sni`.
    Sni,
    /// `experimental.envoy.filters.<filter>[<key>]`: dynamic metadata.
    EnvoyFilter { filter: &'a str, key: &'a str },
}

/// Attributes of who does it (Envoy RBAC principals).
#[derive(Clone, Debug)]
enum PrincipalAttr<'a> {
    /// `principals`, `source.principal`: the peer certificate's SPIFFE id.
    Principal,
    /// `requestPrincipals`, `request.auth.principal`.
    RequestPrincipal,
    /// `serviceAccounts`, `source.serviceAccount`.
    ServiceAccount,
    /// `trustDomains`, `source.trustDomain`.
    TrustDomain,
    /// `namespaces`, `source.namespace`.
    Namespace,
    /// `remoteIpBlocks`, `remote.ip`.
    RemoteIp,
    /// `ipBlocks`, `source.ip`.
    SourceIp,
    /// `request.headers[<name>]`.
    Header(&'a str),
    /// `request.auth.audiences`, `.presenter`, `.claims[..]..`: a claim
    /// path in the verified payload, and whether the claim may be a list
    /// (then a list holding the value matches too).
    Jwt(Vec<&'a str>, bool),
}

impl<'a> Attribute<'a> {
    /// The attribute a `when` key names (Istio's `model.New`).
    fn of_condition(key: &'a str) -> Result<Self, AuthzError> {
        use PermissionAttr as Perm;
        use PrincipalAttr as Princ;
        let bad = || AuthzError::BadKey {
            key: key.to_string(),
        };
        Ok(match key {
            "destination.ip" => Self::Permission(Perm::DestinationIp),
            "destination.port" => Self::Permission(Perm::Port),
            "connection.sni" => Self::Permission(Perm::Sni),
            "source.ip" => Self::Principal(Princ::SourceIp),
            "remote.ip" => Self::Principal(Princ::RemoteIp),
            "source.namespace" => Self::Principal(Princ::Namespace),
            "source.serviceAccount" => Self::Principal(Princ::ServiceAccount),
            "source.trustDomain" => Self::Principal(Princ::TrustDomain),
            "source.principal" => Self::Principal(Princ::Principal),
            "request.auth.principal" => Self::Principal(Princ::RequestPrincipal),
            // `aud` is a string or a list of strings.
            "request.auth.audiences" => Self::Principal(Princ::Jwt(vec!["aud"], true)),
            "request.auth.presenter" => Self::Principal(Princ::Jwt(vec!["azp"], false)),
            k => {
                if let Some(rest) = k.strip_prefix("request.headers") {
                    let names = bracketed(rest).ok_or_else(bad)?;
                    let &[name] = names.as_slice() else {
                        return Err(bad());
                    };
                    Self::Principal(Princ::Header(name))
                } else if let Some(rest) = k.strip_prefix("request.auth.claims") {
                    Self::Principal(Princ::Jwt(bracketed(rest).ok_or_else(bad)?, true))
                } else if let Some(rest) = k.strip_prefix("experimental.") {
                    let (filter, key) = rest
                        .strip_suffix(']')
                        .and_then(|r| r.split_once('['))
                        .filter(|(f, k)| f.starts_with("envoy.filters.") && !k.is_empty())
                        .ok_or_else(bad)?;
                    Self::Permission(Perm::EnvoyFilter { filter, key })
                } else {
                    return Err(bad());
                }
            }
        })
    }
}

/// `[a][b]...` as `[a, b]`: `None` unless the whole string is non-empty
/// bracketed names.
pub(super) fn bracketed(s: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.strip_prefix('[')?.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name);
        rest = after;
    }
    (!out.is_empty()).then_some(out)
}

/// An attribute turned into RBAC matchers of one kind.
trait Attr {
    type Out: Matcher;
    /// Whether only HTTP requests have it.
    fn http_only(&self) -> bool;
    /// The matcher for one value; `namespace` is the policy's.
    fn matcher(&self, value: &str, namespace: &str) -> Result<Self::Out, AuthzError>;
}

impl Attr for PermissionAttr<'_> {
    type Out = Permission;

    fn http_only(&self) -> bool {
        matches!(self, Self::Host | Self::Method | Self::Path)
    }

    fn matcher(&self, value: &str, _namespace: &str) -> Result<Permission, AuthzError> {
        use permission::Rule;
        let rule = match self {
            Self::Host => Rule::Header(host_header(value)),
            Self::Method => Rule::Header(header(":method", value)),
            Self::Path => Rule::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(path(value))),
            }),
            Self::Port => Rule::DestinationPort(port(value)?),
            Self::DestinationIp => Rule::DestinationIp(cidr(value)?),
            Self::Sni => Rule::RequestedServerName(string(value, "", false)),
            // Deprecated in Envoy for `sourced_metadata`, which mesh-proxy
            // does not read; Istio sends this form too.
            #[allow(deprecated)]
            Self::EnvoyFilter { filter, key } => {
                let matcher = match value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                    Some(item) => list_value(string(item, "", false)),
                    None => string_value(string(value, "", false)),
                };
                Rule::Metadata(metadata(filter, &[key], matcher))
            }
        };
        Ok(Permission { rule: Some(rule) })
    }
}

impl Attr for PrincipalAttr<'_> {
    type Out = Principal;

    fn http_only(&self) -> bool {
        matches!(
            self,
            Self::RequestPrincipal | Self::Header(_) | Self::Jwt(..)
        )
    }

    fn matcher(&self, value: &str, namespace: &str) -> Result<Principal, AuthzError> {
        use principal::Identifier;
        let id = match self {
            Self::Principal => authenticated(string(value, SPIFFE_PREFIX, false)),
            Self::Namespace => {
                authenticated(regex(format!(".*/ns/{}/.*", wildcard_regex(value, ".*"))))
            }
            Self::ServiceAccount => {
                let (ns, sa) = value.split_once('/').unwrap_or((namespace, value));
                authenticated(regex(format!(
                    "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
                    escape_regex(ns),
                    escape_regex(sa)
                )))
            }
            Self::TrustDomain => authenticated(trust_domain(value)),
            Self::SourceIp => Identifier::DirectRemoteIp(cidr(value)?),
            Self::RemoteIp => Identifier::RemoteIp(cidr(value)?),
            Self::Header(name) => Identifier::Header(header(name, value)),
            Self::RequestPrincipal => return Ok(request_principal(value)),
            Self::Jwt(path, list) => {
                let m = string(value, "", false);
                let scalar = jwt_claim(path, string_value(m.clone()));
                if !*list {
                    return Ok(scalar);
                }
                return Ok(Principal::or(vec![scalar, jwt_claim(path, list_value(m))]));
            }
        };
        Ok(Principal {
            identifier: Some(id),
        })
    }
}

/// A match on the claim at `path` of the payload the JWT filter verified.
fn jwt_claim(path: &[&str], value: ValueMatcher) -> Principal {
    let mut full = vec![JWT_PAYLOAD_KEY];
    full.extend_from_slice(path);
    // Deprecated in Envoy for `sourced_metadata`, which mesh-proxy does not
    // read; Istio sends this form too.
    #[allow(deprecated)]
    let id = principal::Identifier::Metadata(metadata(JWT_AUTHN_FILTER, &full, value));
    Principal {
        identifier: Some(id),
    }
}

/// Istio's request principal `<iss>/<sub>`, matched on the two claims.
/// The issuer may contain `/` itself, so every way of splitting the value
/// at a `/` is an alternative: `a/b/c` is issuer `a` and subject `b/c`, or
/// issuer `a/b` and subject `c`. `*` is any verified token with both
/// claims (presence, where Istio's `*` elsewhere means non-empty); `P*` a
/// principal starting with P (an issuer starting with P, or a split of P
/// whose subject starts with the rest); `*S` one ending with S,
/// symmetrically. Istio builds the principal only when the token has both
/// `iss` and `sub`, so the alternative that constrains one claim alone
/// also requires the other to be present. A value without `/` or wildcard
/// matches nothing (`NOT any`).
fn request_principal(value: &str) -> Principal {
    use string_matcher::MatchPattern as P;
    let claim = |name: &str, pattern: Option<P>| {
        let value = match pattern {
            Some(p) => string_value(matcher_of(p, false)),
            None => present(),
        };
        jwt_claim(&[name], value)
    };
    // An empty prefix or suffix (which Envoy refuses) is just presence.
    let prefix = |s: &str| (!s.is_empty()).then(|| P::Prefix(s.into()));
    let suffix = |s: &str| (!s.is_empty()).then(|| P::Suffix(s.into()));
    let exact = |s: &str| Some(P::Exact(s.into()));
    let splits = |s: &str| -> Vec<(usize, usize)> {
        s.match_indices('/').map(|(i, _)| (i, i + 1)).collect()
    };
    let alternatives: Vec<Principal> = if value == "*" {
        vec![Principal::and(vec![claim("iss", None), claim("sub", None)])]
    } else if let Some(s) = value.strip_prefix('*') {
        let mut alts = vec![Principal::and(vec![
            claim("iss", None),
            claim("sub", suffix(s)),
        ])];
        alts.extend(splits(s).into_iter().map(|(i, j)| {
            Principal::and(vec![
                claim("iss", suffix(&s[..i])),
                claim("sub", exact(&s[j..])),
            ])
        }));
        alts
    } else if let Some(p) = value.strip_suffix('*') {
        let mut alts = vec![Principal::and(vec![
            claim("iss", prefix(p)),
            claim("sub", None),
        ])];
        alts.extend(splits(p).into_iter().map(|(i, j)| {
            Principal::and(vec![
                claim("iss", exact(&p[..i])),
                claim("sub", prefix(&p[j..])),
            ])
        }));
        alts
    } else {
        splits(value)
            .into_iter()
            .map(|(i, j)| {
                Principal::and(vec![
                    claim("iss", exact(&value[..i])),
                    claim("sub", exact(&value[j..])),
                ])
            })
            .collect()
    };
    match <[Principal; 1]>::try_from(alternatives) {
        Ok([only]) => only,
        // No split: never matches (Istio would need an issuer and a subject).
        Err(none) if none.is_empty() => Principal::any().not(),
        Err(alternatives) => Principal::or(alternatives),
    }
}

fn present() -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
    }
}

fn authenticated(name: StringMatcher) -> principal::Identifier {
    principal::Identifier::Authenticated(principal::Authenticated {
        principal_name: Some(name),
    })
}

/// A trust domain as a match on the SPIFFE id: `*` any, a leading or
/// trailing `*` any characters but `/`.
fn trust_domain(value: &str) -> StringMatcher {
    if value.contains('*') {
        let domain = if value == "*" {
            "[^/]+".to_string()
        } else {
            wildcard_regex(value, "[^/]*")
        };
        regex(format!("spiffe://{domain}/.*"))
    } else {
        matcher_of(
            string_matcher::MatchPattern::Prefix(format!("{SPIFFE_PREFIX}{value}/")),
            false,
        )
    }
}
