//! AuthorizationPolicy: the Envoy RBAC and ext_authz filters of a
//! sidecar's `virtualInbound` and of a gateway's listeners, built as
//! Istio's `pilot/pkg/security/authz` builds them.
//!
//! Which policies apply ([`AppliedPolicies`]): a policy without selector in
//! the root namespace applies to every workload of the mesh, one without
//! selector in namespace N to every workload in N, and one with a selector
//! to the workloads whose labels include its `matchLabels`, in its own
//! namespace or, from the root namespace, in every namespace (Istio's
//! `ShouldAttachPolicy`). Policies with `targetRef(s)` pick Gateways,
//! Services or ServiceEntries, which a sidecar does not enforce: ignored.
//!
//! What they become ([`InboundRbac`]), in Istio's order: the CUSTOM
//! filters (see `custom`: a shadow-only RBAC filter marking the requests
//! the CUSTOM rules match, then ext_authz sending those to the MeshConfig
//! provider), then JWT authentication, then one RBAC filter per action,
//! AUDIT (action LOG, so that requests the other filters deny are audited
//! too), DENY, ALLOW. HTTP chains get `envoy.filters.http.*` filters first
//! in their connection manager; TCP chains (passthrough included) get
//! `envoy.filters.network.*` filters before `tcp_proxy`. Every rule
//! becomes a policy `ns[<ns>]-policy[<name>]-rule[<i>]` whose permissions
//! are the rule's `to` entries (any one of them) and whose principals are
//! its `from` entries, each the AND of its fields, each field the OR of
//! its values plus the NOT of the OR of its `not` values; `when`
//! conditions join every permission or every principal, by attribute. An
//! ALLOW filter exists as soon as an ALLOW policy applies, even one without
//! rules (deny all); DENY and AUDIT filters without rules are left out
//! (they would do nothing).
//!
//! Dry-run policies (`istio.io/dry-run: "true"`) go into the
//! `shadow_rules` of their action's filter, which Envoy evaluates and
//! counts (stat prefix `istio_dry_run_allow_` / `istio_dry_run_deny_`,
//! also the prefix of the `shadow_effective_policy_id` and
//! `shadow_engine_result` metadata it writes) without enforcing them. A
//! filter with only dry-run policies has no `rules`, so it enforces
//! nothing. Unlike Istio, a filter without dry-run policies carries no
//! `shadow_rules_stat_prefix` (Istio writes `istio_dry_run_allow_` on
//! every one, reading the action of absent shadow rules as ALLOW; it has
//! no effect). Dry-run CUSTOM policies are not evaluated (see `custom`).
//!
//! Where a rule cannot be translated exactly, the result errs on the safe
//! side, as in Istio: a TCP chain has no HTTP attributes, so an ALLOW rule
//! naming one is dropped (it allows nothing there) while a DENY, AUDIT or
//! CUSTOM rule loses those attributes (it matches more); an invalid value
//! (a bad CIDR or port, which validation normally refuses) drops an ALLOW
//! rule and is skipped in the others.
//!
//! Request-authentication attributes (`requestPrincipals`,
//! `request.auth.*`) match the payload Envoy's `jwt_authn` filter writes
//! to dynamic metadata once it verified a token (see
//! [`crate::xds::authn`]); Istio's principal `<iss>/<sub>` is matched on
//! the two claims (see `rule`), so both data planes enforce it natively.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::{Policy, rbac};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::google::protobuf::Any;
use mesh_api::common::WorkloadSelector;
use mesh_api::security::AuthorizationPolicy;
use mesh_api::security::authorization_policy::Action;
use prost::{Message, Name};

use crate::proxy::ProxyInfo;
use crate::snapshot::{Snapshot, name_of, namespace_of};

mod custom;
mod ext_authz;
mod matcher;
mod rule;

use custom::custom_filters;
pub use ext_authz::{HTTP_EXT_AUTHZ_FILTER, NETWORK_EXT_AUTHZ_FILTER, ProviderError};
use rule::policies_for;

/// Name of the HTTP RBAC filter.
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// Name of the network RBAC filter.
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// Istio's stat prefix of the network RBAC filter.
const TCP_STAT_PREFIX: &str = "tcp.";
/// Istio's annotation for a policy to evaluate without enforcing.
const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// Istio's `shadow_rules_stat_prefix` of dry-run ALLOW policies.
const DRY_RUN_ALLOW_STAT_PREFIX: &str = "istio_dry_run_allow_";
/// Istio's `shadow_rules_stat_prefix` of dry-run DENY policies.
const DRY_RUN_DENY_STAT_PREFIX: &str = "istio_dry_run_deny_";

/// Why a value or a rule cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// An HTTP attribute in a rule for a TCP chain, which has no requests.
    #[error("{0} is HTTP only")]
    HttpOnly(String),
    /// An IP block that is neither an address nor a CIDR block.
    #[error("{value:?} is not an IP address or CIDR block")]
    BadCidr {
        /// The value as written.
        value: String,
    },
    /// A port that is not a number in 1..=65535.
    #[error("{value:?} is not a port number")]
    BadPort {
        /// The value as written.
        value: String,
    },
    /// A `when` key that names no known attribute, or a map attribute
    /// without its `[name]`.
    #[error("unknown or malformed attribute {key:?}")]
    BadKey {
        /// The key as written.
        key: String,
    },
}

/// The AuthorizationPolicies that apply to one workload, as positions in
/// `snapshot.authorization_policies`. Part of the inbound shape key: equal
/// positions mean equal policies, since the ADS server only reuses a
/// translation across snapshots whose policies are all the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AppliedPolicies(Vec<usize>);

/// The authorization filters every chain of a sidecar's `virtualInbound`
/// (and of a gateway's listeners) starts with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundRbac {
    /// For each HTTP chain, first in its connection manager: the CUSTOM
    /// filters (RBAC in shadow mode, ext_authz), JWT authentication (see
    /// [`crate::xds::authn`]) when a RequestAuthentication applies, then
    /// the RBAC filters, which read what it verified.
    pub http: Vec<HttpFilter>,
    /// For each TCP chain, before `tcp_proxy`: the CUSTOM filters (gRPC
    /// providers only), then the RBAC filters.
    pub network: Vec<Filter>,
}

// === impl AppliedPolicies ===

impl AppliedPolicies {
    /// The policies that apply to `proxy`'s workload, in snapshot order
    /// (namespace, then name), CUSTOM and dry-run ones included.
    pub fn of(snapshot: &Snapshot, proxy: &ProxyInfo) -> Self {
        let root = snapshot.root_namespace();
        Self(
            snapshot
                .authorization_policies
                .iter()
                .enumerate()
                .filter(|(_, p)| applies(p, root, proxy))
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// Whether no policy applies.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The policies themselves.
    pub fn policies<'a>(
        &'a self,
        snapshot: &'a Snapshot,
    ) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
        self.0
            .iter()
            .filter_map(|&i| snapshot.authorization_policies.get(i))
            .map(AsRef::as_ref)
    }
}

fn applies(policy: &AuthorizationPolicy, root: &str, proxy: &ProxyInfo) -> bool {
    let spec = &policy.spec;
    let targeted = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    selects(
        namespace_of(policy),
        spec.selector.as_ref(),
        targeted,
        root,
        proxy,
    )
}

/// Whether a security policy (AuthorizationPolicy, RequestAuthentication)
/// in `namespace` with `selector` applies to `proxy`'s workload: without
/// selector to its whole namespace (the whole mesh from the root
/// namespace), with one to the workloads carrying its labels, in its own
/// namespace or, from the root namespace, everywhere (Istio's
/// `ShouldAttachPolicy`). `targeted` policies (`targetRef(s)`) pick
/// Gateways, Services or ServiceEntries instead, never a workload here.
pub(crate) fn selects(
    namespace: &str,
    selector: Option<&WorkloadSelector>,
    targeted: bool,
    root: &str,
    proxy: &ProxyInfo,
) -> bool {
    if targeted || (namespace != root && namespace != proxy.namespace) {
        return false;
    }
    selector.is_none_or(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| proxy.labels.get(k) == Some(v))
    })
}

// === impl InboundRbac ===

impl InboundRbac {
    /// The filters for `proxy`'s workload.
    pub fn of(snapshot: &Snapshot, proxy: &ProxyInfo) -> Self {
        let applied = AppliedPolicies::of(snapshot, proxy);
        let policies: Vec<&AuthorizationPolicy> = applied.policies(snapshot).collect();
        let custom = custom_filters(snapshot, &policies);
        warn_unreachable(snapshot, proxy, &custom.hosts);
        let local = Self::build(&policies);
        // Istio's order: CUSTOM, then authentication, then AUDIT, DENY,
        // ALLOW (which read what authentication verified).
        let mut http = custom.http;
        http.extend(crate::xds::authn::jwt_filter(snapshot, proxy));
        http.extend(local.http);
        let mut network = custom.network;
        network.extend(local.network);
        Self { http, network }
    }

    /// The AUDIT, DENY and ALLOW filters for `policies`, all of which apply
    /// to the workload (CUSTOM policies are left to `custom`). A filter
    /// enforces the policies of its action in `rules` and evaluates the
    /// dry-run ones in `shadow_rules`, whose results Envoy only counts
    /// (stats and metadata under `istio_dry_run_allow_` /
    /// `istio_dry_run_deny_`). With only dry-run policies for an action,
    /// the filter has no `rules` at all: Envoy then enforces nothing (an
    /// ALLOW `rules` without policies would deny everything).
    pub fn build(policies: &[&AuthorizationPolicy]) -> Self {
        let mut groups: [(rbac::Action, ActionPolicies<'_>); 3] = [
            (rbac::Action::Log, ActionPolicies::default()),
            (rbac::Action::Deny, ActionPolicies::default()),
            (rbac::Action::Allow, ActionPolicies::default()),
        ];
        for &p in policies {
            let slot = match p.spec.action() {
                Action::Audit => 0,
                Action::Deny => 1,
                Action::Allow => 2,
                Action::Custom => continue,
            };
            let group = &mut groups[slot].1;
            if is_dry_run(p) {
                group.dry_run.push(p);
            } else {
                group.enforced.push(p);
            }
        }
        let mut out = Self::default();
        for (action, group) in &groups {
            let prefix = shadow_stat_prefix(*action);
            // HTTP first: invalid values are reported on that pass only.
            let (rules, shadow) = group.rules(*action, false);
            if rules.is_some() || shadow.is_some() {
                out.http.push(http_rbac_filter(rules, shadow, prefix));
            }
            let (rules, shadow) = group.rules(*action, true);
            if rules.is_some() || shadow.is_some() {
                out.network.push(network_rbac_filter(rules, shadow, prefix));
            }
        }
        out
    }
}

/// The AUDIT, DENY or ALLOW policies of a workload.
#[derive(Default)]
struct ActionPolicies<'a> {
    enforced: Vec<&'a AuthorizationPolicy>,
    dry_run: Vec<&'a AuthorizationPolicy>,
}

impl ActionPolicies<'_> {
    /// `rules` and `shadow_rules` of the filter for `action`. An ALLOW set
    /// exists as soon as one ALLOW policy does, even without rules (deny
    /// all, or in the shadow, "would deny all"); DENY and AUDIT sets
    /// without rules are left out (they would match nothing).
    fn rules(&self, action: rbac::Action, tcp: bool) -> (Option<RbacWire>, Option<RbacWire>) {
        let set = |policies: &[&AuthorizationPolicy]| {
            if policies.is_empty() {
                return None;
            }
            let rules = policies_for(action, policies, tcp, "");
            (action == rbac::Action::Allow || !rules.is_empty())
                .then(|| RbacWire::new(action, rules))
        };
        (set(&self.enforced), set(&self.dry_run))
    }
}

/// Istio's `shadow_rules_stat_prefix` for dry-run policies of `action`
/// (none for AUDIT, whose filter only logs).
fn shadow_stat_prefix(action: rbac::Action) -> &'static str {
    match action {
        rbac::Action::Allow => DRY_RUN_ALLOW_STAT_PREFIX,
        rbac::Action::Deny => DRY_RUN_DENY_STAT_PREFIX,
        rbac::Action::Log => "",
    }
}

/// Warns when the proxy cannot reach an ext_authz service its filters
/// send to: Istio does not add the cluster to a sidecar whose `Sidecar`
/// egress hosts (or the service's `exportTo`) leave it out, so every check
/// would fail (and `statusOnError`, 403 by default, would answer).
fn warn_unreachable(snapshot: &Snapshot, proxy: &ProxyInfo, hosts: &[String]) {
    if hosts.is_empty() {
        return;
    }
    let scope = crate::xds::ProxyScope::new(snapshot, proxy);
    for host in hosts {
        if scope.service(host).is_none() {
            tracing::warn!(
                proxy = %proxy.id,
                service = %host,
                "the ext_authz service of a CUSTOM AuthorizationPolicy is not visible to this proxy (Sidecar egress hosts or the service's exportTo), so it has no cluster for it and checks fail; add the service to the Sidecar's egress hosts"
            );
        }
    }
}

/// Whether the policy carries `istio.io/dry-run` with a true value, read as
/// Go's `strconv.ParseBool` (as Istio does): `1`, `t`, `T`, `true`,
/// `TRUE`, `True` are true. Any value it does not take is reported and
/// the policy enforced, as in Istio.
fn is_dry_run(policy: &AuthorizationPolicy) -> bool {
    let Some(value) = policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
    else {
        return false;
    };
    match value.as_str() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
        other => {
            tracing::warn!(
                policy = %format!("{}/{}", namespace_of(policy), name_of(policy)),
                "annotation {DRY_RUN_ANNOTATION} has value {other:?}, which is neither true nor false; the policy is enforced (write \"true\" to evaluate it without enforcing)"
            );
            false
        }
    }
}

// === Filters ===

/// An HTTP filter with `config` as its typed config.
fn http_filter<M: Message + Name>(name: &str, config: &M) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: M::type_url(),
            value: config.encode_to_vec(),
        })),
        ..Default::default()
    }
}

/// A network filter with `config` as its typed config.
fn network_filter<M: Message + Name>(name: &str, config: &M) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(Any {
            type_url: M::type_url(),
            value: config.encode_to_vec(),
        })),
    }
}

fn http_rbac_filter(
    rules: Option<RbacWire>,
    shadow_rules: Option<RbacWire>,
    shadow_prefix: &str,
) -> HttpFilter {
    let config = HttpRbacWire {
        shadow_rules_stat_prefix: shadow_rules
            .as_ref()
            .map(|_| shadow_prefix.to_string())
            .unwrap_or_default(),
        rules,
        shadow_rules,
    };
    HttpFilter {
        name: HTTP_RBAC_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: HttpRbac::type_url(),
            value: config.encode_to_vec(),
        })),
        ..Default::default()
    }
}

fn network_rbac_filter(
    rules: Option<RbacWire>,
    shadow_rules: Option<RbacWire>,
    shadow_prefix: &str,
) -> Filter {
    let config = NetworkRbacWire {
        shadow_rules_stat_prefix: shadow_rules
            .as_ref()
            .map(|_| shadow_prefix.to_string())
            .unwrap_or_default(),
        rules,
        shadow_rules,
        stat_prefix: TCP_STAT_PREFIX.into(),
    };
    Filter {
        name: NETWORK_RBAC_FILTER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(Any {
            type_url: NetworkRbac::type_url(),
            value: config.encode_to_vec(),
        })),
    }
}

/// `envoy.config.rbac.v3.RBAC` (`action`, `policies`) as it goes on the
/// wire, with the policies in name order. A proto `map` is a repeated
/// key/value message on the wire, but prost encodes the generated type's
/// `HashMap` in its random order, and translation must give the same bytes
/// every time (filters are packed in `Any`s, compared and hashed as bytes).
#[derive(Clone, PartialEq, Message)]
struct RbacWire {
    /// `RBAC.Action`.
    #[prost(int32, tag = "1")]
    action: i32,
    #[prost(message, repeated, tag = "2")]
    policies: Vec<PolicyEntry>,
}

/// One entry of `RBAC.policies`.
#[derive(Clone, PartialEq, Message)]
struct PolicyEntry {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    policy: Option<Policy>,
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC` with `rules`,
/// `shadow_rules` and `shadow_rules_stat_prefix`.
#[derive(Clone, PartialEq, Message)]
struct HttpRbacWire {
    #[prost(message, optional, tag = "1")]
    rules: Option<RbacWire>,
    #[prost(message, optional, tag = "2")]
    shadow_rules: Option<RbacWire>,
    #[prost(string, tag = "3")]
    shadow_rules_stat_prefix: String,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC` with `rules`,
/// `shadow_rules`, `stat_prefix` and `shadow_rules_stat_prefix`.
#[derive(Clone, PartialEq, Message)]
struct NetworkRbacWire {
    #[prost(message, optional, tag = "1")]
    rules: Option<RbacWire>,
    #[prost(message, optional, tag = "2")]
    shadow_rules: Option<RbacWire>,
    #[prost(string, tag = "3")]
    stat_prefix: String,
    #[prost(string, tag = "5")]
    shadow_rules_stat_prefix: String,
}

impl RbacWire {
    fn new(action: rbac::Action, policies: BTreeMap<String, Policy>) -> Self {
        Self {
            action: action as i32,
            policies: policies
                .into_iter()
                .map(|(name, policy)| PolicyEntry {
                    name,
                    policy: Some(policy),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "authz/dry_run_tests.rs"]
mod dry_run_tests;

#[cfg(test)]
#[path = "authz/ext_authz_tests.rs"]
mod ext_authz_tests;
