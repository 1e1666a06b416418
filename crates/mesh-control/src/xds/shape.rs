//! What a proxy's translation depends on besides the snapshot, so that
//! proxies with the same dependencies share one translation.
//!
//! A sidecar's outbound part depends on its namespace (exportTo, the
//! DestinationRule lookup order, short host names in routes), on the
//! `Sidecar` that selects it, on the VirtualService matches whose
//! `sourceLabels` select it, on the DestinationRules whose
//! `workloadSelector` selects it, and on its locality (locality load
//! balancing weighs endpoints relative to it). Its inbound part depends only
//! on the ports its workload serves and on the PeerAuthentication modes and
//! AuthorizationPolicies that apply to its workload (which read its labels
//! and namespace). Every pod of a deployment therefore
//! shares both parts, and usually every pod of a namespace shares the
//! outbound part, which is almost all of the bytes.
//!
//! A gateway's key is its whole identity: gateways are few, and Gateway
//! selectors read any label.
//!
//! When a new translation input reads another property of the proxy, it
//! must be added here, or proxies that differ in it would share a
//! translation. The tests in `ads` compare shared and unshared output.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use mesh_api::networking::destination_rule::TrafficPolicy;

use super::authn::AppliedAuthn;
use super::authz::AppliedPolicies;
use super::cluster::{InboundPort, inbound_ports};
use super::peer_auth::InboundMtls;
use super::{Part, ProxyScope};
use crate::model::Locality;
use crate::proxy::{ProxyInfo, ProxyRole};
use crate::snapshot::{Snapshot, name_of, namespace_of};

/// The dependencies of one part of one proxy's translation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ShapeKey {
    /// A sidecar's outbound part.
    Outbound(OutboundShape),
    /// A sidecar's inbound part: its ports, the PeerAuthentication modes
    /// that apply to them and the AuthorizationPolicies and
    /// RequestAuthentications that apply to it.
    Inbound(
        Vec<InboundPort>,
        InboundMtls,
        AppliedPolicies,
        AppliedAuthn,
        super::tracing::TraceKey,
        super::listener::access_log::AccessLogKey,
        super::listener::stats::StatsKey,
        /// mesh-proxy: TCP chains run Istio's metadata exchange.
        bool,
    ),
    /// Everything of a gateway (or of a proxy translated whole).
    Whole(WholeShape),
}

/// What a sidecar's outbound translation reads of the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OutboundShape {
    namespace: String,
    /// `namespace/name` of the Sidecar that applies.
    sidecar: Option<String>,
    /// For every VirtualService match with `sourceLabels`, in snapshot
    /// order, whether the labels select this proxy.
    source_matches: Vec<bool>,
    /// Positions of the DestinationRules whose workloadSelector selects it.
    selected_rules: Vec<usize>,
    locality: Locality,
    /// The proxy's labels when some locality setting uses
    /// `failoverPriority` (which compares arbitrary labels); else empty.
    priority_labels: BTreeMap<String, String>,
    /// The tracing that applies (it reads the canonical service).
    tracing: super::tracing::TraceKey,
    /// The access logs that apply (Telemetry selects by labels).
    access_log: super::listener::access_log::AccessLogKey,
    /// The metrics overrides that apply.
    stats: super::listener::stats::StatsKey,
    /// mesh-proxy: TCP clusters run Istio's metadata exchange.
    mesh_proxy: bool,
}

/// A proxy's whole identity, as far as translation reads it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WholeShape {
    role: ProxyRole,
    namespace: String,
    labels: BTreeMap<String, String>,
    ips: Vec<IpAddr>,
    locality: Option<Locality>,
    /// mesh-proxy gets filters a stock Envoy would refuse.
    mesh_proxy: bool,
}

// === impl ShapeKey ===

impl ShapeKey {
    /// The key of `part` of `proxy`'s translation of `snapshot`. `Part::All`
    /// gives the whole identity.
    pub fn of(snapshot: &Snapshot, proxy: &ProxyInfo, part: Part) -> Self {
        if proxy.role == ProxyRole::Router || part == Part::All {
            return Self::Whole(WholeShape::of(proxy));
        }
        let scope = ProxyScope::new(snapshot, proxy);
        match part {
            Part::Inbound => Self::Inbound(
                inbound_ports(&scope),
                InboundMtls::of(snapshot, proxy),
                AppliedPolicies::of(snapshot, proxy),
                AppliedAuthn::of(snapshot, proxy),
                super::tracing::TraceKey::of(snapshot, proxy),
                super::listener::access_log::AccessLogKey::of(snapshot, proxy),
                super::listener::stats::StatsKey::of(snapshot, proxy),
                proxy.mesh_proxy,
            ),
            _ => Self::Outbound(OutboundShape::of(&scope)),
        }
    }
}

impl WholeShape {
    fn of(proxy: &ProxyInfo) -> Self {
        let mut ips = proxy.ip_addresses.clone();
        ips.sort();
        Self {
            role: proxy.role,
            namespace: proxy.namespace.clone(),
            labels: proxy.labels.clone(),
            ips,
            locality: proxy.locality.clone(),
            mesh_proxy: proxy.mesh_proxy,
        }
    }
}

impl OutboundShape {
    fn of(scope: &ProxyScope<'_>) -> Self {
        let (snapshot, proxy) = (scope.snapshot, scope.proxy);
        let selects = |labels: &BTreeMap<String, String>| {
            labels.iter().all(|(k, v)| proxy.labels.get(k) == Some(v))
        };
        let mut source_matches = Vec::new();
        for vs in &snapshot.virtual_services {
            let spec = &vs.spec;
            let http = spec
                .http
                .iter()
                .flat_map(|r| &r.r#match)
                .map(|m| &m.source_labels);
            let tls = spec
                .tls
                .iter()
                .flat_map(|r| &r.r#match)
                .map(|m| &m.source_labels);
            let tcp = spec
                .tcp
                .iter()
                .flat_map(|r| &r.r#match)
                .map(|m| &m.source_labels);
            source_matches.extend(
                http.chain(tls)
                    .chain(tcp)
                    .filter(|labels| !labels.is_empty())
                    .map(selects),
            );
        }
        let selected_rules = snapshot
            .destination_rules
            .iter()
            .enumerate()
            .filter(|(_, dr)| {
                dr.spec.workload_selector.as_ref().is_some_and(|ws| {
                    namespace_of(dr.as_ref()) == proxy.namespace && selects(&ws.match_labels)
                })
            })
            .map(|(i, _)| i)
            .collect();
        let priority_labels = if uses_failover_priority(snapshot) {
            proxy.labels.clone()
        } else {
            BTreeMap::new()
        };
        Self {
            namespace: proxy.namespace.clone(),
            sidecar: scope
                .sidecar
                .map(|s| format!("{}/{}", namespace_of(s), name_of(s))),
            source_matches,
            selected_rules,
            locality: scope
                .locality_with(|| super::endpoint::proxy_locality(scope))
                .clone(),
            priority_labels,
            tracing: super::tracing::TraceKey::of(snapshot, proxy),
            access_log: super::listener::access_log::AccessLogKey::of(snapshot, proxy),
            stats: super::listener::stats::StatsKey::of(snapshot, proxy),
            mesh_proxy: proxy.mesh_proxy,
        }
    }
}

/// Whether any locality setting (mesh-wide or in a DestinationRule, at any
/// level) lists `failoverPriority` labels.
fn uses_failover_priority(snapshot: &Snapshot) -> bool {
    let in_policy = |p: &TrafficPolicy| {
        let lb_uses =
            |lb: Option<&mesh_api::networking::destination_rule::LoadBalancerSettings>| {
                lb.and_then(|lb| lb.locality_lb_setting.as_ref())
                    .is_some_and(|l| !l.failover_priority.is_empty())
            };
        lb_uses(p.load_balancer.as_ref())
            || p.port_level_settings
                .iter()
                .any(|pl| lb_uses(pl.load_balancer.as_ref()))
    };
    let mesh = snapshot
        .mesh
        .locality_lb_setting
        .as_ref()
        .is_some_and(|l| !l.failover_priority.is_empty());
    mesh || snapshot
        .destination_rules
        .iter()
        .map(Arc::as_ref)
        .any(|dr| {
            dr.spec.traffic_policy.as_ref().is_some_and(in_policy)
                || dr
                    .spec
                    .subsets
                    .iter()
                    .filter_map(|s| s.traffic_policy.as_ref())
                    .any(in_policy)
        })
}
