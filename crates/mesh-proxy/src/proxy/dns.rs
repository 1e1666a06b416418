//! DNS discovery for STRICT_DNS and LOGICAL_DNS clusters: their hostnames
//! are resolved with the system resolver when they first appear and again
//! every `dns_refresh_rate`, and the data path serves the clusters over
//! the addresses found (STRICT_DNS: every address is an endpoint;
//! LOGICAL_DNS: the first one).
//!
//! [`run`] owns the lookups and publishes a [`DnsTable`]; [`effective`] is
//! the pure step that rebuilds a runtime's DNS clusters over that table.
//! A name not resolved yet (or whose lookup failed before it ever
//! succeeded) stays a hostname, resolved per connection, so the first
//! requests after a config change are served; a failed refresh keeps the
//! last addresses, as Envoy does. TTLs are not read (`respect_dns_ttl`):
//! the system resolver does not report them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::runtime::Runtime;
use crate::runtime::cluster::{Cluster, Discovery, LookupFamily};
use crate::runtime::convert::HostAddress;
use crate::runtime::endpoint::{Assignment, EndpointSpec};

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One name to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsName {
    /// The hostname.
    pub host: String,
    /// The port the endpoints get.
    pub port: u16,
    /// Which addresses to keep.
    pub family: LookupFamily,
}

/// The addresses each name resolved to, last successful lookup.
pub type DnsTable = HashMap<DnsName, Vec<SocketAddr>>;

/// Resolves the names of `runtime`'s DNS clusters, again every refresh
/// rate and whenever the runtime changes, publishing on `table`. Returns
/// when the runtime channel closes.
pub async fn run(mut runtime: watch::Receiver<Arc<Runtime>>, table: watch::Sender<Arc<DnsTable>>) {
    let mut due: HashMap<DnsName, Instant> = HashMap::new();
    loop {
        let current = runtime.borrow_and_update().clone();
        let wanted = names(&current);
        due.retain(|n, _| wanted.contains_key(n));
        let mut next = (**table.borrow()).clone();
        next.retain(|n, _| wanted.contains_key(n));
        for (name, refresh) in &wanted {
            if due.get(name).is_some_and(|at| *at > Instant::now()) {
                continue;
            }
            match lookup(name).await {
                Some(addresses) => {
                    next.insert(name.clone(), addresses);
                }
                None => {
                    tracing::debug!(host = %name.host, "DNS lookup failed; keeping the last addresses")
                }
            }
            due.insert(name.clone(), Instant::now() + *refresh);
        }
        if next != **table.borrow() {
            table.send_replace(Arc::new(next));
        }
        let wake = due.values().min().copied();
        tokio::select! {
            changed = runtime.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// The names of `runtime`'s DNS clusters, with how often each is
/// refreshed (the shortest rate of the clusters that share it).
fn names(runtime: &Runtime) -> HashMap<DnsName, Duration> {
    let mut out: HashMap<DnsName, Duration> = HashMap::new();
    for cluster in runtime.clusters.values().filter(|c| c.is_dns()) {
        for e in endpoints(&cluster.assignment) {
            if let HostAddress::Dns { host, port } = &e.address {
                let name = DnsName {
                    host: host.clone(),
                    port: *port,
                    family: cluster.config.dns_lookup_family,
                };
                let rate = cluster.config.dns_refresh_rate;
                out.entry(name)
                    .and_modify(|r| *r = (*r).min(rate))
                    .or_insert(rate);
            }
        }
    }
    out
}

fn endpoints(a: &Assignment) -> impl Iterator<Item = &EndpointSpec> {
    a.localities.iter().flat_map(|l| l.endpoints.iter())
}

/// One lookup; `None` when it failed or found no address of the family.
async fn lookup(name: &DnsName) -> Option<Vec<SocketAddr>> {
    let found = tokio::time::timeout(
        LOOKUP_TIMEOUT,
        tokio::net::lookup_host((name.host.as_str(), name.port)),
    )
    .await
    .ok()?
    .ok()?;
    let kept = by_family(found.collect(), name.family);
    (!kept.is_empty()).then_some(kept)
}

/// The addresses `family` keeps, in the resolver's order, without repeats.
pub fn by_family(found: Vec<SocketAddr>, family: LookupFamily) -> Vec<SocketAddr> {
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(found.len());
    for a in found {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    let (v4, v6): (Vec<_>, Vec<_>) = unique.into_iter().partition(SocketAddr::is_ipv4);
    match family {
        LookupFamily::V4Only => v4,
        LookupFamily::V6Only => v6,
        LookupFamily::Auto if v6.is_empty() => v4,
        LookupFamily::Auto => v6,
        LookupFamily::V4Preferred if v4.is_empty() => v6,
        LookupFamily::V4Preferred => v4,
        LookupFamily::All => v4.into_iter().chain(v6).collect(),
    }
}

/// `runtime` with its DNS clusters over the addresses in `table`; the
/// same runtime when there is nothing to change.
pub fn effective(runtime: &Arc<Runtime>, table: &DnsTable) -> Arc<Runtime> {
    let mut clusters = None;
    for (name, cluster) in runtime.clusters.iter().filter(|(_, c)| c.is_dns()) {
        let Some(assignment) = resolved(cluster, table) else {
            continue;
        };
        clusters
            .get_or_insert_with(|| runtime.clusters.clone())
            .insert(
                name.clone(),
                Arc::new(Cluster::with_assignment(cluster.config.clone(), assignment)),
            );
    }
    match clusters {
        None => runtime.clone(),
        Some(clusters) => Arc::new(Runtime {
            listeners: runtime.listeners.clone(),
            routes: runtime.routes.clone(),
            clusters,
            secrets: runtime.secrets.clone(),
        }),
    }
}

/// `cluster`'s endpoints with resolved names replaced by their addresses
/// (all of them for STRICT_DNS, the first for LOGICAL_DNS); `None` when no
/// name of it is resolved.
fn resolved(cluster: &Cluster, table: &DnsTable) -> Option<Assignment> {
    let logical = matches!(cluster.config.discovery, Discovery::LogicalDns);
    let family = cluster.config.dns_lookup_family;
    let mut any = false;
    let mut assignment = cluster.assignment.clone();
    for locality in &mut assignment.localities {
        let mut endpoints = Vec::with_capacity(locality.endpoints.len());
        for e in locality.endpoints.drain(..) {
            let addresses = match &e.address {
                HostAddress::Dns { host, port } => table.get(&DnsName {
                    host: host.clone(),
                    port: *port,
                    family,
                }),
                HostAddress::Ip(_) => None,
            };
            match addresses {
                Some(addresses) if !addresses.is_empty() => {
                    any = true;
                    let take = if logical { 1 } else { addresses.len() };
                    endpoints.extend(addresses.iter().take(take).map(|a| EndpointSpec {
                        address: HostAddress::Ip(*a),
                        hostname: match &e.address {
                            HostAddress::Dns { host, .. } if e.hostname.is_empty() => host.clone(),
                            _ => e.hostname.clone(),
                        },
                        ..e.clone()
                    }));
                }
                _ => endpoints.push(e),
            }
        }
        locality.endpoints = endpoints;
    }
    any.then_some(assignment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Origin, Resource, Resources};
    use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
    use serde_json::json;
    use test_case::test_case;

    fn runtime(kind: &str) -> Arc<Runtime> {
        let c: PbCluster = mesh_api::xds::json::from_json(&json!({
            "name": "db", "type": kind, "dnsLookupFamily": "V4_ONLY", "dnsRefreshRate": "1s",
            "loadAssignment": {"clusterName": "db", "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": {"socketAddress": {"address": "db.example", "portValue": 3306}}}}]}]}}))
        .unwrap();
        let mut r = Resources::default();
        r.insert(Resource::Cluster(Box::new(c)), Origin::Static);
        Arc::new(crate::runtime::compile(&r))
    }

    fn addresses(rt: &Runtime) -> Vec<String> {
        endpoints(&rt.clusters["db"].assignment)
            .map(|e| e.address.to_string())
            .collect()
    }

    #[test_case("STRICT_DNS", &["10.0.0.1:3306", "10.0.0.2:3306"]; "strict: every address")]
    #[test_case("LOGICAL_DNS", &["10.0.0.1:3306"]; "logical: the first")]
    fn dns_clusters_serve_the_resolved_addresses(kind: &str, expected: &[&str]) {
        let rt = runtime(kind);
        let name = DnsName {
            host: "db.example".into(),
            port: 3306,
            family: LookupFamily::V4Only,
        };
        assert_eq!(names(&rt).get(&name), Some(&Duration::from_secs(1)));
        // Not resolved yet: the hostname stays.
        let same = effective(&rt, &DnsTable::new());
        assert!(Arc::ptr_eq(&same, &rt));
        assert_eq!(addresses(&same), ["db.example:3306"]);
        let table = DnsTable::from([(
            name,
            vec![
                "10.0.0.1:3306".parse().unwrap(),
                "10.0.0.2:3306".parse().unwrap(),
            ],
        )]);
        let resolved = effective(&rt, &table);
        assert_eq!(addresses(&resolved), expected);
        let e = endpoints(&resolved.clusters["db"].assignment)
            .next()
            .unwrap();
        assert_eq!(e.hostname, "db.example");
    }

    #[test_case(LookupFamily::V4Only, &["127.0.0.1:1"]; "v4 only")]
    #[test_case(LookupFamily::V6Only, &["[::1]:1"]; "v6 only")]
    #[test_case(LookupFamily::Auto, &["[::1]:1"]; "auto prefers v6")]
    #[test_case(LookupFamily::V4Preferred, &["127.0.0.1:1"]; "v4 preferred")]
    #[test_case(LookupFamily::All, &["127.0.0.1:1", "[::1]:1"]; "all")]
    fn families(family: LookupFamily, expected: &[&str]) {
        let found = vec![
            "[::1]:1".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
        ];
        let got: Vec<String> = by_family(found, family)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn resolves_and_follows_the_runtime() {
        let rt = runtime("STRICT_DNS");
        let mut localhost = Runtime {
            listeners: rt.listeners.clone(),
            routes: rt.routes.clone(),
            clusters: rt.clusters.clone(),
            secrets: rt.secrets.clone(),
        };
        let (rt_tx, rt_rx) = watch::channel(rt);
        let (table_tx, mut table_rx) = watch::channel(Arc::new(DnsTable::new()));
        let task = tokio::spawn(run(rt_rx, table_tx));
        // db.example does not resolve: nothing published. Point the
        // cluster at localhost instead.
        let c = localhost.clusters.remove("db").unwrap();
        let mut a = c.assignment.clone();
        a.localities[0].endpoints[0].address = HostAddress::Dns {
            host: "localhost".into(),
            port: 3306,
        };
        localhost.clusters.insert(
            "db".into(),
            Arc::new(Cluster::with_assignment(c.config.clone(), a)),
        );
        rt_tx.send_replace(Arc::new(localhost));
        let table = tokio::time::timeout(
            Duration::from_secs(10),
            table_rx.wait_for(|t| !t.is_empty()),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        let got: Vec<_> = table.values().flatten().copied().collect();
        assert_eq!(got, ["127.0.0.1:3306".parse::<SocketAddr>().unwrap()]);
        drop(rt_tx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
}
