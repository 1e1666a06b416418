//! AuthorizationPolicy: the Envoy RBAC filters of a sidecar's
//! `virtualInbound`, built as Istio's `pilot/pkg/security/authz` builds them.
//!
//! Which policies apply ([`AppliedPolicies`]): a policy without selector in
//! the root namespace applies to every workload of the mesh, one without
//! selector in namespace N to every workload in N, and one with a selector
//! to the workloads whose labels include its `matchLabels`, in its own
//! namespace or, from the root namespace, in every namespace (Istio's
//! `ShouldAttachPolicy`). Policies with `targetRef(s)` pick Gateways,
//! Services or ServiceEntries, which a sidecar does not enforce: ignored.
//!
//! What they become ([`InboundRbac`]): one RBAC filter per action, in
//! Istio's order AUDIT (action LOG, so that requests the other filters deny
//! are audited too), DENY, ALLOW. HTTP chains get `envoy.filters.http.rbac`
//! first in their connection manager; TCP chains (passthrough included) get
//! `envoy.filters.network.rbac` before `tcp_proxy`. Every rule becomes a
//! policy `ns[<ns>]-policy[<name>]-rule[<i>]` whose permissions are the
//! rule's `to` entries (any one of them) and whose principals are its `from`
//! entries, each the AND of its fields, each field the OR of its values
//! plus the NOT of the OR of its `not` values; `when` conditions join every
//! permission or every principal, by attribute. An ALLOW filter exists as
//! soon as an ALLOW policy applies, even one without rules (deny all); DENY
//! and AUDIT filters without rules are left out (they would do nothing).
//!
//! Where a rule cannot be translated exactly, the result errs on the safe
//! side, as in Istio: a TCP chain has no HTTP attributes, so an ALLOW rule
//! naming one is dropped (it allows nothing there) while a DENY or AUDIT
//! rule loses those attributes (it matches more); an invalid value (a bad
//! CIDR or port, which validation normally refuses) drops an ALLOW rule and
//! is skipped in a DENY or AUDIT rule. CUSTOM policies (external
//! authorization) and dry-run policies (`istio.io/dry-run`, Istio's shadow
//! rules) are not supported yet: they are skipped with a warning.
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

mod matcher;
mod rule;

use rule::policies_for;

/// Name of the HTTP RBAC filter.
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// Name of the network RBAC filter.
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// Istio's stat prefix of the network RBAC filter.
const TCP_STAT_PREFIX: &str = "tcp.";
/// Istio's annotation for a policy to evaluate without enforcing.
const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

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

/// The RBAC filters every chain of a sidecar's `virtualInbound` starts with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundRbac {
    /// For each HTTP chain, first in its connection manager: JWT
    /// authentication (see [`crate::xds::authn`]) when a
    /// RequestAuthentication applies, then the RBAC filters, which read
    /// what it verified.
    pub http: Vec<HttpFilter>,
    /// For each TCP chain, before `tcp_proxy`.
    pub network: Vec<Filter>,
}

// === impl AppliedPolicies ===

impl AppliedPolicies {
    /// The policies that apply to `proxy`'s workload, in snapshot order
    /// (namespace, then name). CUSTOM and dry-run policies are included;
    /// the filter builder skips them, so the warning comes once per
    /// translation.
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
        let mut filters = Self::build(&policies);
        if let Some(jwt) = crate::xds::authn::jwt_filter(snapshot, proxy) {
            filters.http.insert(0, jwt);
        }
        filters
    }

    /// The filters for `policies`, all of which apply to the workload.
    pub fn build(policies: &[&AuthorizationPolicy]) -> Self {
        let mut audit = Vec::new();
        let mut deny = Vec::new();
        let mut allow = Vec::new();
        for &p in policies {
            if is_dry_run(p) {
                tracing::warn!(
                    policy = %format!("{}/{}", namespace_of(p), name_of(p)),
                    "dry-run AuthorizationPolicy (istio.io/dry-run) is not supported yet; policy not enforced"
                );
                continue;
            }
            match p.spec.action() {
                Action::Audit => audit.push(p),
                Action::Deny => deny.push(p),
                Action::Allow => allow.push(p),
                Action::Custom => tracing::warn!(
                    policy = %format!("{}/{}", namespace_of(p), name_of(p)),
                    "CUSTOM AuthorizationPolicy (external authorization) is not supported yet; policy ignored"
                ),
            }
        }
        let mut out = Self::default();
        for (action, group) in [
            (rbac::Action::Log, audit),
            (rbac::Action::Deny, deny),
            (rbac::Action::Allow, allow),
        ] {
            if group.is_empty() {
                continue;
            }
            // HTTP first: invalid values are reported on that pass only.
            let http = policies_for(action, &group, false);
            let tcp = policies_for(action, &group, true);
            let keep =
                |p: &BTreeMap<String, Policy>| action == rbac::Action::Allow || !p.is_empty();
            if keep(&http) {
                out.http.push(http_rbac_filter(action, http));
            }
            if keep(&tcp) {
                out.network.push(network_rbac_filter(action, tcp));
            }
        }
        out
    }
}

/// Whether the policy carries Istio's `istio.io/dry-run: "true"`: Istio
/// only evaluates it in shadow mode, so enforcing it here would refuse
/// traffic the user meant to test against.
fn is_dry_run(policy: &AuthorizationPolicy) -> bool {
    policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

// === Filters ===

fn http_rbac_filter(action: rbac::Action, policies: BTreeMap<String, Policy>) -> HttpFilter {
    let config = HttpRbacWire {
        rules: Some(RbacWire::new(action, policies)),
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

fn network_rbac_filter(action: rbac::Action, policies: BTreeMap<String, Policy>) -> Filter {
    let config = NetworkRbacWire {
        rules: Some(RbacWire::new(action, policies)),
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

/// `envoy.extensions.filters.http.rbac.v3.RBAC` with only `rules`.
#[derive(Clone, PartialEq, Message)]
struct HttpRbacWire {
    #[prost(message, optional, tag = "1")]
    rules: Option<RbacWire>,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC` with only `rules` and
/// `stat_prefix`.
#[derive(Clone, PartialEq, Message)]
struct NetworkRbacWire {
    #[prost(message, optional, tag = "1")]
    rules: Option<RbacWire>,
    #[prost(string, tag = "3")]
    stat_prefix: String,
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
