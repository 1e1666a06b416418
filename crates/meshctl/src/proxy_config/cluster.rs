//! `proxy-config cluster`: one row per cluster, Istio's cluster name
//! (`outbound|9080|v1|reviews.default.svc.cluster.local`) split into
//! service, port, subset and direction, with the DestinationRule the
//! control plane recorded in the cluster's metadata.

use serde_json::Value;

use super::dump::{field, istio_config, str_field};
use super::table::Table;

/// `--fqdn`, `--port`, `--subset`, `--direction` (substring matches on the
/// cluster name, as istioctl).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterFilter {
    /// Only clusters whose name contains this host.
    #[arg(long)]
    pub fqdn: Option<String>,
    /// Only clusters of this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only clusters whose name contains this subset.
    #[arg(long)]
    pub subset: Option<String>,
    /// Only `inbound` or `outbound` clusters.
    #[arg(long)]
    pub direction: Option<String>,
}

/// The parts of an Istio cluster name; `None` for other names
/// (`BlackHoleCluster`, `xds-grpc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetKey<'a> {
    /// `inbound` or `outbound`.
    pub direction: &'a str,
    /// Service port.
    pub port: u16,
    /// Subset name, empty for the whole service.
    pub subset: &'a str,
    /// Service host.
    pub fqdn: &'a str,
}

// === impl ClusterFilter ===

impl ClusterFilter {
    /// Whether the cluster named `name` passes.
    pub fn matches(&self, name: &str) -> bool {
        let contains = |f: &Option<String>| f.as_deref().is_none_or(|f| name.contains(f));
        contains(&self.fqdn)
            && contains(&self.direction)
            && contains(&self.subset)
            && self.port.is_none_or(|p| name.contains(&format!("|{p}|")))
    }
}

// === impl SubsetKey ===

impl<'a> SubsetKey<'a> {
    /// Splits `direction|port|subset|fqdn`.
    pub fn parse(name: &'a str) -> Option<Self> {
        let mut parts = name.splitn(4, '|');
        let (direction, port, subset, fqdn) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        Some(Self {
            direction,
            port: port.parse().unwrap_or(0),
            subset,
            fqdn,
        })
    }
}

/// The clusters that pass `filter`, in istioctl's order (service, subset,
/// port, direction).
pub fn select<'a>(clusters: &[&'a Value], filter: &ClusterFilter) -> Vec<&'a Value> {
    let mut selected: Vec<&Value> = clusters
        .iter()
        .copied()
        .filter(|c| filter.matches(str_field(c, "name")))
        .collect();
    selected.sort_by_key(|c| {
        let name = str_field(c, "name");
        match SubsetKey::parse(name) {
            Some(k) => (k.fqdn, k.subset, k.port, k.direction),
            None => (name, "", 0, ""),
        }
    });
    selected
}

/// The cluster table.
pub fn table(clusters: &[&Value], filter: &ClusterFilter) -> Table {
    let mut table = Table::new(
        &[
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE",
        ],
        5,
    );
    for cluster in select(clusters, filter) {
        let name = str_field(cluster, "name");
        let kind = cluster_type(cluster);
        let rule = istio_config(cluster);
        table.push(match SubsetKey::parse(name) {
            Some(k) => vec![
                k.fqdn.into(),
                k.port.to_string(),
                if k.subset.is_empty() { "-" } else { k.subset }.into(),
                k.direction.into(),
                kind,
                rule,
            ],
            None => vec![name.into(), "-".into(), "-".into(), "-".into(), kind, rule],
        });
    }
    table
}

/// The discovery type; `STATIC` when the field is absent (proto3 JSON
/// omits the default), the extension's name for a custom cluster type.
fn cluster_type(cluster: &Value) -> String {
    if let Some(kind) = field(cluster, "type").and_then(Value::as_str) {
        return kind.into();
    }
    match field(cluster, "cluster_type") {
        Some(custom) => str_field(custom, "name").into(),
        None => "STATIC".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_keys() {
        assert_eq!(
            SubsetKey::parse("outbound|9080|v1|reviews.default.svc.cluster.local"),
            Some(SubsetKey {
                direction: "outbound",
                port: 9080,
                subset: "v1",
                fqdn: "reviews.default.svc.cluster.local"
            })
        );
        assert_eq!(SubsetKey::parse("inbound|9080||").unwrap().fqdn, "");
        assert_eq!(SubsetKey::parse("BlackHoleCluster"), None);
    }

    #[test]
    fn filters_are_substring_matches_like_istioctl() {
        let name = "outbound|9080|v1|reviews.default.svc.cluster.local";
        let f = |fqdn: Option<&str>, port: Option<u16>| ClusterFilter {
            fqdn: fqdn.map(Into::into),
            port,
            ..Default::default()
        };
        assert!(f(Some("reviews"), None).matches(name));
        assert!(f(None, Some(9080)).matches(name));
        assert!(!f(None, Some(908)).matches(name));
        assert!(!f(Some("ratings"), None).matches(name));
    }
}
