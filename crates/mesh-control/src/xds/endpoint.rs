//! EDS: one ClusterLoadAssignment per EDS cluster, and the inline load
//! assignments of DNS clusters.
//!
//! Endpoints of the service port are filtered by the subset's labels and
//! grouped by locality; every endpoint is sent with its health status
//! (Envoy skips unhealthy ones). Endpoints of workloads that run a mesh
//! proxy carry `tlsMode: istio` metadata, which the cluster's auto-mTLS
//! transport socket matches on. The DestinationRule's (or the mesh's)
//! locality settings then reweight localities (`distribute`) or assign
//! failover priorities (`failover`, `failoverPriority`, only with outlier
//! detection, as Istio requires), relative to the proxy's own locality.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality as EnvoyLocality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use mesh_api::networking::destination_rule::LocalityLoadBalancerSetting;
use mesh_api::wellknown::{
    LABEL_ISTIO_LOCALITY, LABEL_TOPOLOGY_REGION, LABEL_TOPOLOGY_SUBZONE, LABEL_TOPOLOGY_ZONE,
};

use super::ProxyScope;
use super::cluster::{Policy, find_subset, socket_address, tls_mode_struct, u32_value};
use crate::model::{Endpoint, Locality, Resolution, Service};

/// Endpoint metadata namespace Envoy reads for transport socket matches.
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// Endpoint metadata namespace of Istio's own keys.
const ISTIO_METADATA: &str = "istio";
/// Priorities one locality comparison can produce (Istio's 0..=4).
const LOCALITY_PRIORITIES: u32 = 5;

/// Which endpoints a cluster holds.
pub(crate) struct EndpointFilter<'a> {
    /// The service.
    pub service: &'a Service,
    /// The service port.
    pub port: u16,
    /// Labels a subset requires, `None` for the default cluster.
    pub subset_labels: Option<&'a BTreeMap<String, String>>,
}

/// One ClusterLoadAssignment per EDS cluster in `clusters`, named after the
/// cluster, in the clusters' order. Clusters whose name is not an outbound
/// cluster of a visible service get an empty assignment, so Envoy never
/// waits for one.
pub fn build_endpoints(scope: &ProxyScope<'_>, clusters: &[Cluster]) -> Vec<ClusterLoadAssignment> {
    let eds = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
    clusters
        .iter()
        .filter(|c| c.cluster_discovery_type == eds)
        .map(|c| {
            let name = c.eds_cluster_config.as_ref().map_or(c.name.as_str(), |e| {
                if e.service_name.is_empty() {
                    c.name.as_str()
                } else {
                    e.service_name.as_str()
                }
            });
            cluster_load_assignment(scope, name)
        })
        .collect()
}

/// The assignments of the named EDS clusters, in the given order.
pub fn build_endpoints_named<'n>(
    scope: &ProxyScope<'_>,
    names: impl IntoIterator<Item = &'n str>,
) -> Vec<ClusterLoadAssignment> {
    names
        .into_iter()
        .map(|n| cluster_load_assignment(scope, n))
        .collect()
}

/// The assignment for `outbound|<port>|<subset>|<host>`.
fn cluster_load_assignment(scope: &ProxyScope<'_>, name: &str) -> ClusterLoadAssignment {
    let empty = || ClusterLoadAssignment {
        cluster_name: name.to_string(),
        ..Default::default()
    };
    let Some((port, subset, host)) = parse_outbound_name(name) else {
        return empty();
    };
    let Some(service) = scope.service(host) else {
        return empty();
    };
    let dr = scope.destination_rule(host);
    let subset = if subset.is_empty() {
        None
    } else {
        find_subset(dr, subset)
    };
    let policy = Policy::effective(dr, subset, port);
    let filter = EndpointFilter {
        service,
        port,
        subset_labels: subset.map(|s| &s.labels),
    };
    load_assignment(scope, name, &filter, &policy)
}

/// Splits `outbound|<port>|<subset>|<host>`.
fn parse_outbound_name(name: &str) -> Option<(u16, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    Some((port, parts.next()?, parts.next()?))
}

/// The endpoints of one cluster, grouped by locality, with the locality
/// policy applied. Used for EDS and for the inline assignment of DNS
/// clusters (whose endpoints may be host names).
pub(crate) fn load_assignment(
    scope: &ProxyScope<'_>,
    cluster_name: &str,
    filter: &EndpointFilter<'_>,
    policy: &Policy<'_>,
) -> ClusterLoadAssignment {
    let needs_ip = filter.service.resolution == Resolution::ClientSideLb;
    let mut groups: BTreeMap<(u32, &Locality), Vec<&Endpoint>> = BTreeMap::new();
    for ep in scope
        .snapshot
        .registry
        .endpoints_for(&filter.service.hostname, filter.port)
    {
        let selected = filter
            .subset_labels
            .is_none_or(|want| want.iter().all(|(k, v)| ep.labels.get(k) == Some(v)));
        // EDS hosts must be IPs; a name here would make Envoy reject the whole assignment.
        if !selected || ep.port == 0 || (needs_ip && ep.address.parse::<IpAddr>().is_err()) {
            continue;
        }
        groups.entry((0, &ep.locality)).or_default().push(ep);
    }
    let mesh = scope.snapshot.mesh.as_ref();
    let setting = policy.locality_setting(mesh);
    let proxy_locality = scope.locality_with(|| proxy_locality(scope)).clone();
    if let Some(setting) = &setting
        && setting.distribute.is_empty()
        && policy.outlier_detection.is_some()
        && !setting.failover_priority.is_empty()
    {
        groups =
            failover_priority_groups(groups, scope, &proxy_locality, &setting.failover_priority);
    }
    let mut localities: Vec<(u32, LocalityLbEndpoints)> = groups
        .into_iter()
        .map(|((prio, locality), eps)| (prio, locality_endpoints(locality, &eps)))
        .collect();
    if let Some(setting) = &setting {
        if !setting.distribute.is_empty() {
            apply_distribute(&mut localities, &proxy_locality, setting);
        } else if policy.outlier_detection.is_some()
            && (setting.failover_priority.is_empty() || !setting.failover.is_empty())
        {
            apply_locality_failover(&mut localities, &proxy_locality, setting);
        }
    }
    renumber_priorities(&mut localities);
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: localities.into_iter().map(|(_, l)| l).collect(),
        ..Default::default()
    }
}

fn locality_endpoints(locality: &Locality, eps: &[&Endpoint]) -> LocalityLbEndpoints {
    let mut lb_endpoints: Vec<(&str, u16, LbEndpoint)> = eps
        .iter()
        .map(|e| (e.address.as_str(), e.port, lb_endpoint(e)))
        .collect();
    lb_endpoints.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    lb_endpoints.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
    let weight: u32 = eps
        .iter()
        .fold(0u32, |acc, e| acc.saturating_add(e.weight.max(1)));
    LocalityLbEndpoints {
        locality: Some(EnvoyLocality {
            region: locality.region.clone(),
            zone: locality.zone.clone(),
            sub_zone: locality.subzone.clone(),
        }),
        lb_endpoints: lb_endpoints.into_iter().map(|(_, _, e)| e).collect(),
        load_balancing_weight: Some(u32_value(weight.max(1))),
        ..Default::default()
    }
}

fn lb_endpoint(ep: &Endpoint) -> LbEndpoint {
    let health = if ep.healthy {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unhealthy
    };
    let metadata = ep.has_proxy.then(|| Metadata {
        filter_metadata: HashMap::from([
            (TRANSPORT_SOCKET_MATCH.to_string(), tls_mode_struct()),
            (ISTIO_METADATA.to_string(), tls_mode_struct()),
        ]),
        ..Default::default()
    });
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(&ep.address, u32::from(ep.port))),
            ..Default::default()
        })),
        health_status: health as i32,
        metadata,
        load_balancing_weight: Some(u32_value(ep.weight.max(1))),
    }
}

// === Locality ===

/// The proxy's locality: what its node reports, else its `istio-locality`
/// or topology labels, else the locality of the registry endpoint at its
/// address.
pub(crate) fn proxy_locality(scope: &ProxyScope<'_>) -> Locality {
    if let Some(l) = &scope.proxy.locality {
        return l.clone();
    }
    let labels = &scope.proxy.labels;
    if let Some(l) = labels.get(LABEL_ISTIO_LOCALITY) {
        let mut parts = l.splitn(3, '.');
        return Locality {
            region: parts.next().unwrap_or_default().to_string(),
            zone: parts.next().unwrap_or_default().to_string(),
            subzone: parts.next().unwrap_or_default().to_string(),
        };
    }
    if let Some(region) = labels.get(LABEL_TOPOLOGY_REGION) {
        return Locality {
            region: region.clone(),
            zone: labels.get(LABEL_TOPOLOGY_ZONE).cloned().unwrap_or_default(),
            subzone: labels
                .get(LABEL_TOPOLOGY_SUBZONE)
                .cloned()
                .unwrap_or_default(),
        };
    }
    scope
        .proxy
        .ip_addresses
        .iter()
        .find_map(|ip| scope.snapshot.endpoints_at(ip).next())
        .map(|(_, e)| e.locality.clone())
        .unwrap_or_default()
}

/// Istio's `LocalityMatch`: `region/zone/subzone`, `*` or a missing part
/// matching anything (the region must be given).
fn locality_matches(locality: &Locality, pattern: &str) -> bool {
    let mut parts = pattern.splitn(3, '/');
    let region = parts.next().unwrap_or_default();
    let zone = parts.next().unwrap_or("*");
    let subzone = parts.next().unwrap_or("*");
    let part = |rule: &str, value: &str| rule == "*" || rule == value;
    part(region, &locality.region)
        && (zone.is_empty() || part(zone, &locality.zone))
        && (subzone.is_empty() || part(subzone, &locality.subzone))
}

/// `distribute`: the first rule whose `from` matches the proxy sets each
/// destination locality's weight (split among the groups a wildcard
/// matches, in proportion to their size); localities it does not name get
/// no traffic.
fn apply_distribute(
    localities: &mut Vec<(u32, LocalityLbEndpoints)>,
    proxy: &Locality,
    setting: &LocalityLoadBalancerSetting,
) {
    let Some(rule) = setting
        .distribute
        .iter()
        .find(|d| locality_matches(proxy, &d.from))
    else {
        return;
    };
    let of = |l: &LocalityLbEndpoints| {
        let e = l.locality.clone().unwrap_or_default();
        Locality {
            region: e.region,
            zone: e.zone,
            subzone: e.sub_zone,
        }
    };
    // Exact destinations claim their localities before wildcards do.
    let mut targets: Vec<(&String, &u32)> = rule.to.iter().collect();
    targets.sort_by_key(|(k, _)| (k.contains('*'), k.as_str()));
    let mut assigned: Vec<Option<u32>> = vec![None; localities.len()];
    for (pattern, weight) in targets {
        let matched: Vec<usize> = (0..localities.len())
            .filter(|i| assigned[*i].is_none() && locality_matches(&of(&localities[*i].1), pattern))
            .collect();
        let original = |i: usize| {
            localities[i]
                .1
                .load_balancing_weight
                .as_ref()
                .map_or(1, |w| w.value)
        };
        let total: u64 = matched.iter().map(|i| u64::from(original(*i))).sum();
        for i in matched {
            let share = (u64::from(original(i)) * u64::from(*weight)).div_ceil(total.max(1));
            assigned[i] = Some(u32::try_from(share).unwrap_or(u32::MAX));
        }
    }
    let mut kept = Vec::new();
    for ((prio, mut l), weight) in localities.drain(..).zip(assigned) {
        if let Some(w) = weight.filter(|w| *w > 0) {
            l.load_balancing_weight = Some(u32_value(w));
            kept.push((prio, l));
        }
    }
    *localities = kept;
}

/// Istio's locality failover: priority 0 for the proxy's own subzone, 1 for
/// its zone, 2 for its region, 3 for other regions, and when a `failover`
/// rule names the proxy's region, 4 for regions other than its target.
/// Combined with any failover-priority level already assigned.
fn apply_locality_failover(
    localities: &mut [(u32, LocalityLbEndpoints)],
    proxy: &Locality,
    setting: &LocalityLoadBalancerSetting,
) {
    for (prio, l) in localities.iter_mut() {
        let e = l.locality.clone().unwrap_or_default();
        let mut p = if e.region != proxy.region {
            3
        } else if e.zone != proxy.zone {
            2
        } else if e.sub_zone != proxy.subzone {
            1
        } else {
            0
        };
        if p == 3
            && let Some(rule) = setting.failover.iter().find(|f| f.from == proxy.region)
            && rule.to != e.region
        {
            p = 4;
        }
        *prio = prio.saturating_mul(LOCALITY_PRIORITIES).saturating_add(p);
    }
}

/// `failoverPriority`: within each locality, endpoints matching the proxy
/// on all listed labels get priority 0; the first mismatching label at
/// index `j` gives `n - j`. A `label=value` entry compares with that value
/// instead of the proxy's. Topology labels fall back to localities.
fn failover_priority_groups<'e>(
    groups: BTreeMap<(u32, &'e Locality), Vec<&'e Endpoint>>,
    scope: &ProxyScope<'_>,
    proxy_locality: &Locality,
    labels: &[String],
) -> BTreeMap<(u32, &'e Locality), Vec<&'e Endpoint>> {
    let n = u32::try_from(labels.len()).unwrap_or(u32::MAX);
    let mut out: BTreeMap<(u32, &Locality), Vec<&Endpoint>> = BTreeMap::new();
    for ((_, locality), eps) in groups {
        for ep in eps {
            let mut prio = 0;
            for (j, entry) in labels.iter().enumerate() {
                let (label, want) = match entry.split_once('=') {
                    Some((l, v)) => (l, Some(v.to_string())),
                    None => (
                        entry.as_str(),
                        label_value(&scope.proxy.labels, proxy_locality, entry),
                    ),
                };
                if want.is_none() || want != label_value(&ep.labels, &ep.locality, label) {
                    prio = n.saturating_sub(u32::try_from(j).unwrap_or(u32::MAX));
                    break;
                }
            }
            out.entry((prio, locality)).or_default().push(ep);
        }
    }
    out
}

fn label_value(
    labels: &BTreeMap<String, String>,
    locality: &Locality,
    label: &str,
) -> Option<String> {
    if let Some(v) = labels.get(label) {
        return Some(v.clone());
    }
    let v = match label {
        LABEL_TOPOLOGY_REGION => &locality.region,
        LABEL_TOPOLOGY_ZONE => &locality.zone,
        LABEL_TOPOLOGY_SUBZONE => &locality.subzone,
        _ => return None,
    };
    (!v.is_empty()).then(|| v.clone())
}

/// Envoy wants priorities 0..N without gaps; keeps the relative order and
/// sorts the groups by (priority, locality).
fn renumber_priorities(localities: &mut [(u32, LocalityLbEndpoints)]) {
    let mut distinct: Vec<u32> = localities.iter().map(|(p, _)| *p).collect();
    distinct.sort_unstable();
    distinct.dedup();
    for (p, l) in localities.iter_mut() {
        let rank = distinct.binary_search(p).unwrap_or(0);
        *p = u32::try_from(rank).unwrap_or(0);
        l.priority = *p;
    }
    localities.sort_by(|(pa, a), (pb, b)| {
        let key = |l: &LocalityLbEndpoints| {
            l.locality
                .as_ref()
                .map(|l| (l.region.clone(), l.zone.clone(), l.sub_zone.clone()))
        };
        (pa, key(a)).cmp(&(pb, key(b)))
    });
}
