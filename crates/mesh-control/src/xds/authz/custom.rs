//! CUSTOM AuthorizationPolicies: external authorization, built as Istio's
//! `authz/builder` does with its CUSTOM builder.
//!
//! The policies of a workload are grouped by `provider.name`. For a usable
//! provider (see `ext_authz`) every chain gets two filters: an
//! RBAC filter with the policies' rules as DENY *shadow* rules only (it
//! never refuses anything; stat prefix `istio_ext_authz_`, so Envoy writes
//! the matched policy's name under `istio_ext_authz_shadow_effective_policy_id`
//! in the `envoy.filters.{http,network}.rbac` metadata), then the ext_authz
//! filter, enabled only when that name starts with
//! `istio-ext-authz-<provider>`: requests no CUSTOM rule matches are never
//! sent to the provider. Policy names are
//! `istio-ext-authz-<provider>-ns[<ns>]-policy[<name>]-rule[<i>]`
//! (Istio 1.30 and later). TCP chains get the pair for gRPC providers
//! only; an HTTP provider leaves them alone.
//!
//! When the provider is unknown or invalid, or a workload has CUSTOM
//! policies for several providers (Istio allows one unless
//! `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS` is set, which this mesh
//! does not offer), nothing is sent anywhere: an enforcing DENY filter per
//! provider refuses exactly what the rules match, with the policies
//! renamed `...-deny-due-to-bad-CUSTOM-action`, and a warning names the
//! policies and the field.
//!
//! Dry-run CUSTOM policies (`istio.io/dry-run: "true"`) are not evaluated
//! and never reach the provider; their provider still counts for the
//! checks above. Istio up to 1.29 dropped them the same way; Istio 1.30
//! puts them in the RBAC filter's enforcing `rules` with action DENY,
//! which refuses what they match — the opposite of a dry run — so that is
//! not copied.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::{Policy, rbac};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use mesh_api::security::AuthorizationPolicy;
use mesh_api::security::authorization_policy::Action;

use super::ext_authz::{
    EXT_AUTHZ_MATCH_PREFIX, EXT_AUTHZ_SHADOW_STAT_PREFIX, HTTP_EXT_AUTHZ_FILTER,
    NETWORK_EXT_AUTHZ_FILTER, Providers,
};
use super::rule::policies_for;
use super::{
    RbacWire, http_filter, http_rbac_filter, is_dry_run, network_filter, network_rbac_filter,
};
use crate::snapshot::{Snapshot, name_of, namespace_of};

/// Suffix of the policies that deny in place of a provider that cannot be
/// used.
const BAD_CUSTOM_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";

/// The CUSTOM filters of one workload.
#[derive(Debug, Default)]
pub(super) struct CustomFilters {
    /// First among an HTTP chain's filters (Istio puts them before JWT
    /// authentication).
    pub(super) http: Vec<HttpFilter>,
    /// First among a TCP chain's filters.
    pub(super) network: Vec<Filter>,
    /// The hosts of the ext_authz services the filters send to.
    pub(super) hosts: Vec<String>,
}

/// The CUSTOM policies for one provider.
#[derive(Default)]
struct ProviderPolicies<'a> {
    enforced: Vec<&'a AuthorizationPolicy>,
    dry_run: Vec<&'a AuthorizationPolicy>,
}

/// The filters for the CUSTOM policies among `policies`, all of which
/// apply to the workload.
pub(super) fn custom_filters(
    snapshot: &Snapshot,
    policies: &[&AuthorizationPolicy],
) -> CustomFilters {
    let mut by_provider: BTreeMap<&str, ProviderPolicies<'_>> = BTreeMap::new();
    for &p in policies {
        if p.spec.action() != Action::Custom {
            continue;
        }
        let provider = p.spec.provider.as_ref().map_or("", |p| p.name.as_str());
        let entry = by_provider.entry(provider).or_default();
        if is_dry_run(p) {
            tracing::warn!(
                policy = %id(p),
                "dry-run CUSTOM AuthorizationPolicy is not evaluated: requests it matches are not sent to provider {provider:?}"
            );
            entry.dry_run.push(p);
        } else {
            entry.enforced.push(p);
        }
    }
    let mut out = CustomFilters::default();
    if by_provider.is_empty() {
        return out;
    }
    if by_provider.len() > 1 {
        let names: Vec<&str> = by_provider.keys().copied().collect();
        let policies: Vec<String> = by_provider
            .values()
            .flat_map(|p| p.enforced.iter().chain(&p.dry_run))
            .map(|p| id(p))
            .collect();
        tracing::warn!(
            policies = ?policies,
            providers = ?names,
            "CUSTOM AuthorizationPolicies of one workload name several providers in spec.provider.name; one provider per workload is supported: the requests their rules match are denied until they name the same provider"
        );
        for (provider, group) in &by_provider {
            out.deny_instead(provider, &group.enforced);
        }
        return out;
    }
    let providers = Providers::resolve(snapshot);
    for (provider, group) in &by_provider {
        let policy_ids = || -> Vec<String> {
            group
                .enforced
                .iter()
                .chain(&group.dry_run)
                .map(|p| id(p))
                .collect()
        };
        match providers.get(provider) {
            None => {
                tracing::warn!(
                    policies = ?policy_ids(),
                    available = ?providers.names(),
                    "spec.provider.name {provider:?} names no envoyExtAuthzHttp or envoyExtAuthzGrpc entry of MeshConfig extensionProviders; the requests the CUSTOM rules match are denied"
                );
                out.deny_instead(provider, &group.enforced);
            }
            Some((index, Err(errors))) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    policies = ?policy_ids(),
                    "MeshConfig extensionProviders[{index}] ({provider:?}) cannot be used: {}; the requests the CUSTOM rules match are denied",
                    errors.join("; ")
                );
                out.deny_instead(provider, &group.enforced);
            }
            Some((_, Ok(ext))) => {
                let prefix = policy_prefix(provider);
                let http = policies_for(rbac::Action::Deny, &group.enforced, false, &prefix);
                let tcp = policies_for(rbac::Action::Deny, &group.enforced, true, &prefix);
                out.http.push(http_rbac_filter(
                    None,
                    Some(RbacWire::new(rbac::Action::Deny, http)),
                    EXT_AUTHZ_SHADOW_STAT_PREFIX,
                ));
                out.http.push(http_filter(
                    HTTP_EXT_AUTHZ_FILTER,
                    &ext.http_filter_config(provider),
                ));
                if let Some(config) = ext.network_filter_config(provider) {
                    out.network.push(network_rbac_filter(
                        None,
                        Some(RbacWire::new(rbac::Action::Deny, tcp)),
                        EXT_AUTHZ_SHADOW_STAT_PREFIX,
                    ));
                    out.network
                        .push(network_filter(NETWORK_EXT_AUTHZ_FILTER, &config));
                }
                out.hosts.push(ext.host.clone());
            }
        }
    }
    out
}

impl CustomFilters {
    /// An enforcing DENY filter per chain kind for what `enforced` matches
    /// (Istio's `getBadCustomDenyRules`).
    fn deny_instead(&mut self, provider: &str, enforced: &[&AuthorizationPolicy]) {
        let prefix = policy_prefix(provider);
        let renamed = |policies: BTreeMap<String, Policy>| -> BTreeMap<String, Policy> {
            policies
                .into_iter()
                .map(|(name, p)| (name + BAD_CUSTOM_SUFFIX, p))
                .collect()
        };
        let http = renamed(policies_for(rbac::Action::Deny, enforced, false, &prefix));
        let tcp = renamed(policies_for(rbac::Action::Deny, enforced, true, &prefix));
        self.http.push(http_rbac_filter(
            Some(RbacWire::new(rbac::Action::Deny, http)),
            None,
            "",
        ));
        self.network.push(network_rbac_filter(
            Some(RbacWire::new(rbac::Action::Deny, tcp)),
            None,
            "",
        ));
    }
}

/// `istio-ext-authz-<provider>-`, the start of the provider's policy names.
fn policy_prefix(provider: &str) -> String {
    format!("{EXT_AUTHZ_MATCH_PREFIX}-{provider}-")
}

fn id(p: &AuthorizationPolicy) -> String {
    format!("{}/{}", namespace_of(p), name_of(p))
}
