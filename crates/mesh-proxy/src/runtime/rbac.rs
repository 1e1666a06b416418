//! Role-based access control: Envoy's RBAC filters
//! (`envoy.filters.http.rbac` per request, `envoy.filters.network.rbac`
//! per connection), which is what Istio's AuthorizationPolicy becomes.
//!
//! A filter has an action and named policies; a policy matches when any of
//! its permissions (what is done) and any of its principals (who does it)
//! match. ALLOW lets through only what some policy matches (no policy: deny
//! everything), DENY refuses what some policy matches, LOG only records.
//! Filters run in order and the first refusal wins, so Istio's DENY filter
//! placed before its ALLOW filter gives DENY precedence.
//!
//! Conditions this proxy cannot evaluate are refused at compile time with
//! the field named (CEL `condition`s, custom matchers), never ignored: a
//! policy that silently matched less would open a hole. Metadata matchers
//! read the request's dynamic metadata: the payload of a token the JWT
//! filter verified (Istio's `requestPrincipals`, `request.auth.*`). The
//! network filter sees no metadata, so there they match as on a request
//! without a token.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission as PbPermission, Principal as PbPrincipal, Rbac as PbRbac, permission, principal,
    rbac,
};
use envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher;

use super::listener::Cidr;
use super::matcher::{HeaderMatcher, RequestView, StringMatcher};
use super::metadata::{Metadata, MetadataMatcher};
use super::{FieldResult, invalid, join};

/// Nesting allowed in one permission or principal; deeper is refused so a
/// crafted config cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

/// A compiled RBAC filter.
#[derive(Clone, Debug)]
pub struct Rbac {
    /// What a match does.
    pub action: Action,
    /// Policies by name, sorted by name (the name reported on a match).
    pub policies: Vec<(String, Policy)>,
}

/// What an RBAC filter does with a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Only matches pass.
    Allow,
    /// Matches are refused.
    Deny,
    /// Matches are recorded; everything passes.
    Log,
}

/// One policy: any permission and any principal.
#[derive(Clone, Debug)]
pub struct Policy {
    permissions: Vec<Permission>,
    principals: Vec<Principal>,
}

#[derive(Clone, Debug)]
enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
    DestinationIp(Cidr),
    DestinationPort(u16),
    DestinationPortRange(i32, i32),
    RequestedServerName(StringMatcher),
    Metadata(MetadataMatcher),
}

#[derive(Clone, Debug)]
enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// A verified client certificate, optionally with a matching name.
    Authenticated(Option<StringMatcher>),
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
    Metadata(MetadataMatcher),
}

/// What the policies look at: the connection, and the request on the HTTP
/// filter (`None` on the network filter, where request conditions never
/// match, as in Envoy).
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The peer of the connection.
    pub direct_remote: SocketAddr,
    /// The original client (from `x-forwarded-for` when trusted; else the
    /// peer).
    pub remote: IpAddr,
    /// The (original) destination of the connection.
    pub destination: SocketAddr,
    /// SNI.
    pub server_name: Option<&'a str>,
    /// The verified client certificate's names, if one was presented.
    pub peer: Option<&'a crate::tls::PeerNames>,
    /// The request.
    pub request: Option<RequestView<'a>>,
    /// The request's dynamic metadata (`None` on the network filter).
    pub metadata: Option<&'a Metadata>,
}

/// The outcome of one filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through (with the policy that matched, if any).
    Allowed(Option<String>),
    /// Refuse it (with the policy that matched a DENY, if any).
    Denied(Option<String>),
}

/// Compiles the `rules` of an RBAC filter found at `at`. Missing rules
/// mean the filter does nothing (Envoy's behaviour).
pub(crate) fn compile(rules: Option<&PbRbac>, at: &str) -> FieldResult<Option<Rbac>> {
    let Some(rules) = rules else {
        return Ok(None);
    };
    let action = match rbac::Action::try_from(rules.action) {
        Ok(rbac::Action::Allow) => Action::Allow,
        Ok(rbac::Action::Deny) => Action::Deny,
        Ok(rbac::Action::Log) => Action::Log,
        Err(_) => {
            return invalid(
                join(at, "rules.action"),
                format!("unknown action {}", rules.action),
            );
        }
    };
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        let policy = &rules.policies[name];
        let field = join(at, &format!("rules.policies[{name}]"));
        if policy.condition.is_some() || policy.checked_condition.is_some() {
            return invalid(
                join(&field, "condition"),
                "CEL conditions are not supported",
            );
        }
        let permissions = policy
            .permissions
            .iter()
            .enumerate()
            .map(|(i, p)| compile_permission(p, &join(&field, &format!("permissions[{i}]")), 0))
            .collect::<FieldResult<Vec<_>>>()?;
        let principals = policy
            .principals
            .iter()
            .enumerate()
            .map(|(i, p)| compile_principal(p, &join(&field, &format!("principals[{i}]")), 0))
            .collect::<FieldResult<Vec<_>>>()?;
        policies.push((
            name.clone(),
            Policy {
                permissions,
                principals,
            },
        ));
    }
    Ok(Some(Rbac { action, policies }))
}

fn depth_check(at: &str, depth: usize) -> FieldResult<()> {
    if depth > MAX_DEPTH {
        return invalid(at, format!("nested more than {MAX_DEPTH} levels deep"));
    }
    Ok(())
}

fn path_matcher(m: &PathMatcher, at: &str) -> FieldResult<StringMatcher> {
    match &m.rule {
        Some(path_matcher::Rule::Path(s)) => StringMatcher::compile(s, &join(at, "path")),
        None => invalid(join(at, "path"), "is required"),
    }
}

fn cidr(r: &CidrRange, at: &str) -> FieldResult<Cidr> {
    Cidr::compile(r, at)
}

fn compile_permission(p: &PbPermission, at: &str, depth: usize) -> FieldResult<Permission> {
    use permission::Rule;
    depth_check(at, depth)?;
    let set = |rules: &[PbPermission], field: &str| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                compile_permission(r, &join(at, &format!("{field}.rules[{i}]")), depth + 1)
            })
            .collect::<FieldResult<Vec<_>>>()
    };
    Ok(match &p.rule {
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::Any(false)) => return invalid(join(at, "any"), "must be true"),
        Some(Rule::AndRules(s)) => Permission::And(set(&s.rules, "and_rules")?),
        Some(Rule::OrRules(s)) => Permission::Or(set(&s.rules, "or_rules")?),
        Some(Rule::NotRule(r)) => Permission::Not(Box::new(compile_permission(
            r,
            &join(at, "not_rule"),
            depth + 1,
        )?)),
        Some(Rule::Header(h)) => {
            Permission::Header(HeaderMatcher::compile(h, &join(at, "header"))?)
        }
        Some(Rule::UrlPath(m)) => Permission::UrlPath(path_matcher(m, &join(at, "url_path"))?),
        Some(Rule::DestinationIp(r)) => {
            Permission::DestinationIp(cidr(r, &join(at, "destination_ip"))?)
        }
        Some(Rule::DestinationPort(port)) => match u16::try_from(*port) {
            Ok(port) => Permission::DestinationPort(port),
            Err(_) => {
                return invalid(
                    join(at, "destination_port"),
                    format!("{port} is not a port"),
                );
            }
        },
        Some(Rule::DestinationPortRange(r)) => Permission::DestinationPortRange(r.start, r.end),
        Some(Rule::RequestedServerName(s)) => Permission::RequestedServerName(
            StringMatcher::compile(s, &join(at, "requested_server_name"))?,
        ),
        // Deprecated in Envoy for `sourced_metadata`, still what Istio sends.
        #[allow(deprecated)]
        Some(Rule::Metadata(m)) => {
            Permission::Metadata(MetadataMatcher::compile(m, &join(at, "metadata"))?)
        }
        Some(Rule::Matcher(_)) => return invalid(join(at, "matcher"), "is not supported"),
        Some(Rule::UriTemplate(_)) => {
            return invalid(
                join(at, "uri_template"),
                "is not supported; use url_path with safe_regex",
            );
        }
        Some(Rule::SourcedMetadata(_)) => {
            return invalid(join(at, "sourced_metadata"), "is not supported");
        }
        None => return invalid(at, "a rule is required"),
    })
}

fn compile_principal(p: &PbPrincipal, at: &str, depth: usize) -> FieldResult<Principal> {
    use principal::Identifier;
    depth_check(at, depth)?;
    let set = |ids: &[PbPrincipal], field: &str| {
        ids.iter()
            .enumerate()
            .map(|(i, r)| compile_principal(r, &join(at, &format!("{field}.ids[{i}]")), depth + 1))
            .collect::<FieldResult<Vec<_>>>()
    };
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => Principal::Any,
        Some(Identifier::Any(false)) => return invalid(join(at, "any"), "must be true"),
        Some(Identifier::AndIds(s)) => Principal::And(set(&s.ids, "and_ids")?),
        Some(Identifier::OrIds(s)) => Principal::Or(set(&s.ids, "or_ids")?),
        Some(Identifier::NotId(id)) => Principal::Not(Box::new(compile_principal(
            id,
            &join(at, "not_id"),
            depth + 1,
        )?)),
        Some(Identifier::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| StringMatcher::compile(m, &join(at, "authenticated.principal_name")))
                .transpose()?,
        ),
        // `source_ip` is the deprecated name of `direct_remote_ip`.
        #[allow(deprecated)]
        Some(Identifier::SourceIp(r)) => {
            Principal::DirectRemoteIp(cidr(r, &join(at, "source_ip"))?)
        }
        Some(Identifier::DirectRemoteIp(r)) => {
            Principal::DirectRemoteIp(cidr(r, &join(at, "direct_remote_ip"))?)
        }
        Some(Identifier::RemoteIp(r)) => Principal::RemoteIp(cidr(r, &join(at, "remote_ip"))?),
        Some(Identifier::Header(h)) => {
            Principal::Header(HeaderMatcher::compile(h, &join(at, "header"))?)
        }
        Some(Identifier::UrlPath(m)) => Principal::UrlPath(path_matcher(m, &join(at, "url_path"))?),
        #[allow(deprecated)]
        Some(Identifier::Metadata(m)) => {
            Principal::Metadata(MetadataMatcher::compile(m, &join(at, "metadata"))?)
        }
        Some(Identifier::FilterState(_)) => {
            return invalid(join(at, "filter_state"), "is not supported");
        }
        Some(Identifier::SourcedMetadata(_)) => {
            return invalid(join(at, "sourced_metadata"), "is not supported");
        }
        Some(Identifier::Custom(_)) => return invalid(join(at, "custom"), "is not supported"),
        None => return invalid(at, "an identifier is required"),
    })
}

// === impl Rbac ===

impl Rbac {
    /// The first policy (by name) matching `input`.
    pub fn matching(&self, input: &Input<'_>) -> Option<&str> {
        self.policies
            .iter()
            .find(|(_, p)| p.matches(input))
            .map(|(name, _)| name.as_str())
    }

    /// This filter's decision on `input`, without the audit log line.
    fn evaluate_quiet(&self, input: &Input<'_>) -> Verdict {
        let matched = self.matching(input).map(str::to_string);
        match (self.action, matched) {
            (Action::Allow, Some(name)) => Verdict::Allowed(Some(name)),
            (Action::Allow, None) => Verdict::Denied(None),
            (Action::Deny, Some(name)) => Verdict::Denied(Some(name)),
            (Action::Deny, None) | (Action::Log, None) => Verdict::Allowed(None),
            (Action::Log, Some(name)) => Verdict::Allowed(Some(name)),
        }
    }

    /// This filter's decision on `input`.
    pub fn evaluate(&self, input: &Input<'_>) -> Verdict {
        let verdict = self.evaluate_quiet(input);
        if self.action == Action::Log
            && let Verdict::Allowed(Some(name)) = &verdict
        {
            tracing::info!(policy = %name, peer = %input.direct_remote, "RBAC audit: policy matched");
        }
        verdict
    }
}

/// An HTTP RBAC filter: its enforced `rules` and its `shadow_rules`,
/// which are only evaluated and reported (Istio's dry-run policies, and the
/// CUSTOM policies choosing which requests the external authorizer sees).
#[derive(Clone, Debug)]
pub struct RbacFilter {
    /// Enforced (`None`: everything passes).
    pub rules: Option<Rbac>,
    /// Evaluated, never enforced.
    pub shadow: Option<ShadowRules>,
}

/// `shadow_rules` with their `shadow_rules_stat_prefix`.
#[derive(Clone, Debug)]
pub struct ShadowRules {
    /// The rules.
    pub rules: Rbac,
    /// Prefix of the metadata keys and counters.
    pub prefix: String,
}

/// The outcome of a filter's shadow rules: written into the request's
/// dynamic metadata as Envoy does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowResult {
    /// The matched policy, if any (`<prefix>shadow_effective_policy_id`).
    pub policy: Option<String>,
    /// What the rules would have decided (`<prefix>shadow_engine_result`).
    pub allowed: bool,
}

impl RbacFilter {
    /// The shadow rules' outcome on `input`, if there are shadow rules.
    pub fn shadow(&self, input: &Input<'_>) -> Option<ShadowResult> {
        let shadow = self.shadow.as_ref()?;
        let (allowed, policy) = match shadow.rules.evaluate_quiet(input) {
            Verdict::Allowed(p) => (true, p),
            Verdict::Denied(p) => (false, p),
        };
        Some(ShadowResult { policy, allowed })
    }

    /// Writes `result` into `metadata` under `namespace`, Envoy's keys.
    pub fn record_shadow(&self, result: &ShadowResult, namespace: &str, metadata: &mut Metadata) {
        let Some(shadow) = &self.shadow else {
            return;
        };
        if let Some(policy) = &result.policy {
            metadata.insert(
                namespace,
                &format!("{}shadow_effective_policy_id", shadow.prefix),
                serde_json::Value::String(policy.clone()),
            );
        }
        let engine = if result.allowed { "allowed" } else { "denied" };
        metadata.insert(
            namespace,
            &format!("{}shadow_engine_result", shadow.prefix),
            serde_json::Value::String(engine.to_string()),
        );
    }
}

/// Compiles an RBAC filter's `rules` and `shadow_rules` found at `at`.
pub(crate) fn compile_filter(
    rules: Option<&PbRbac>,
    shadow: Option<&PbRbac>,
    shadow_prefix: &str,
    at: &str,
) -> FieldResult<RbacFilter> {
    let rules = compile(rules, at)?;
    let shadow = match shadow {
        None => None,
        Some(s) => {
            compile(Some(s), &join(at, "shadow_rules"))
                .map_err(|mut e| {
                    // `compile` names fields under `rules`; these are the
                    // shadow rules.
                    e.field = e.field.replacen("shadow_rules.rules.", "shadow_rules.", 1);
                    e
                })?
                .map(|rules| ShadowRules {
                    rules,
                    prefix: shadow_prefix.to_string(),
                })
        }
    };
    Ok(RbacFilter { rules, shadow })
}

/// Runs `filters` in order: the first refusal, or allowed.
pub fn check(filters: &[std::sync::Arc<Rbac>], input: &Input<'_>) -> Verdict {
    for filter in filters {
        if let denied @ Verdict::Denied(_) = filter.evaluate(input) {
            return denied;
        }
    }
    Verdict::Allowed(None)
}

// === impl Policy ===

impl Policy {
    fn matches(&self, input: &Input<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(input))
            && self.principals.iter().any(|p| p.matches(input))
    }
}

/// The request path without query string or fragment.
fn url_path<'a>(input: &Input<'a>) -> Option<&'a str> {
    let path = input.request?.path;
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

// === impl Permission ===

impl Permission {
    fn matches(&self, input: &Input<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(all) => all.iter().all(|p| p.matches(input)),
            Self::Or(any) => any.iter().any(|p| p.matches(input)),
            Self::Not(p) => !p.matches(input),
            Self::Header(h) => input.request.is_some_and(|r| h.matches(&r)),
            Self::UrlPath(m) => url_path(input).is_some_and(|p| m.matches(p)),
            Self::DestinationIp(c) => c.contains(input.destination.ip()),
            Self::DestinationPort(port) => input.destination.port() == *port,
            Self::DestinationPortRange(start, end) => {
                let port = i32::from(input.destination.port());
                port >= *start && port < *end
            }
            Self::RequestedServerName(m) => m.matches(input.server_name.unwrap_or("")),
            Self::Metadata(m) => m.matches(input.metadata),
        }
    }
}

// === impl Principal ===

impl Principal {
    fn matches(&self, input: &Input<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(all) => all.iter().all(|p| p.matches(input)),
            Self::Or(any) => any.iter().any(|p| p.matches(input)),
            Self::Not(p) => !p.matches(input),
            Self::Authenticated(name) => match (input.peer, name) {
                (None, _) => false,
                (Some(_), None) => true,
                // Envoy: the URI SANs, else the DNS SANs, else the subject.
                (Some(peer), Some(m)) => {
                    if !peer.uris.is_empty() {
                        peer.uris.iter().any(|u| m.matches(u))
                    } else if !peer.dns.is_empty() {
                        peer.dns.iter().any(|d| m.matches(d))
                    } else {
                        m.matches(&peer.subject)
                    }
                }
            },
            Self::DirectRemoteIp(c) => c.contains(input.direct_remote.ip()),
            Self::RemoteIp(c) => c.contains(input.remote),
            Self::Header(h) => input.request.is_some_and(|r| h.matches(&r)),
            Self::UrlPath(m) => url_path(input).is_some_and(|p| m.matches(p)),
            Self::Metadata(m) => m.matches(input.metadata),
        }
    }
}

#[cfg(test)]
#[path = "rbac_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "rbac_istio_tests.rs"]
mod istio_tests;
