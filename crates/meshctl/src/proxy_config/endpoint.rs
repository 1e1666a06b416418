//! `proxy-config endpoint`: every upstream host of every cluster with its
//! health, from `/clusters?format=json` (`envoy.admin.v3.Clusters`), which
//! is what the proxy actually balances over, not what EDS said.

use serde_json::Value;

use super::dump::{array, field, path, str_field, u64_field};
use super::table::Table;

/// `--address`, `--port`, `--cluster`, `--status`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EndpointFilter {
    /// Only endpoints with this address.
    #[arg(long)]
    pub address: Option<String>,
    /// Only endpoints on this port.
    #[arg(long)]
    pub port: Option<u32>,
    /// Only endpoints of this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only endpoints with this status (HEALTHY, UNHEALTHY, ...).
    #[arg(long)]
    pub status: Option<String>,
}

/// One row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Host {
    address: String,
    port: u64,
    cluster: String,
    status: String,
    failed_outlier_check: bool,
}

// === impl EndpointFilter ===

impl EndpointFilter {
    fn matches(&self, host: &Host) -> bool {
        let eq = |want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| w.eq_ignore_ascii_case(have))
        };
        eq(&self.address, &host.address)
            && self.port.is_none_or(|p| u64::from(p) == host.port)
            && eq(&self.cluster, &host.cluster)
            && eq(&self.status, &host.status)
    }
}

/// The `cluster_statuses` of a `/clusters?format=json` body that have at
/// least one host passing `filter` (what `-o json` prints).
pub fn select<'a>(clusters: &'a Value, filter: &EndpointFilter) -> Vec<&'a Value> {
    array(clusters, "cluster_statuses")
        .iter()
        .filter(|c| hosts_of(c).iter().any(|h| filter.matches(h)))
        .collect()
}

/// The endpoint table.
pub fn table(clusters: &Value, filter: &EndpointFilter) -> Table {
    let mut hosts: Vec<Host> = array(clusters, "cluster_statuses")
        .iter()
        .flat_map(hosts_of)
        .filter(|h| filter.matches(h))
        .collect();
    hosts.sort();
    let mut table = Table::new(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"], 5);
    for h in hosts {
        let endpoint = if h.port == 0 {
            h.address
        } else {
            format!("{}:{}", h.address, h.port)
        };
        let outlier = if h.failed_outlier_check {
            "FAILED"
        } else {
            "OK"
        };
        table.push(vec![endpoint, h.status, outlier.into(), h.cluster]);
    }
    table
}

fn hosts_of(cluster: &Value) -> Vec<Host> {
    let name = str_field(cluster, "name");
    array(cluster, "host_statuses")
        .iter()
        .map(|host| {
            let health = field(host, "health_status");
            Host {
                address: host_address(host),
                port: path(host, &["address", "socket_address"])
                    .and_then(|sa| u64_field(sa, "port_value"))
                    .unwrap_or(0),
                cluster: name.to_string(),
                // proto3 JSON leaves out the default, UNKNOWN.
                status: health
                    .and_then(|h| field(h, "eds_health_status"))
                    .and_then(Value::as_str)
                    .unwrap_or("UNKNOWN")
                    .to_string(),
                failed_outlier_check: health
                    .and_then(|h| field(h, "failed_outlier_check"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        })
        .collect()
}

fn host_address(host: &Value) -> String {
    let Some(addr) = field(host, "address") else {
        return "unknown".into();
    };
    if let Some(sa) = field(addr, "socket_address") {
        return str_field(sa, "address").into();
    }
    if let Some(pipe) = path(addr, &["pipe", "path"]).and_then(Value::as_str) {
        return format!("unix://{pipe}");
    }
    if let Some(internal) = field(addr, "envoy_internal_address") {
        return format!(
            "envoy://{}/{}",
            str_field(internal, "server_listener_name"),
            str_field(internal, "endpoint_id")
        );
    }
    "unknown".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_sorted_by_address_port_cluster() {
        let clusters = json!({"cluster_statuses": [
            {"name": "outbound|9080|v2|reviews.default.svc.cluster.local", "host_statuses": [
                {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 9080}},
                 "health_status": {"eds_health_status": "HEALTHY"}}]},
            {"name": "outbound|9080||reviews.default.svc.cluster.local", "host_statuses": [
                {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 9080}},
                 "health_status": {"eds_health_status": "HEALTHY", "failed_outlier_check": true}},
                {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 9080}},
                 "health_status": {}}]}
        ]});
        let t = table(&clusters, &EndpointFilter::default());
        let rows: Vec<Vec<&str>> = t
            .rows
            .iter()
            .map(|r| r.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            rows,
            [
                [
                    "10.0.0.1:9080",
                    "UNKNOWN",
                    "OK",
                    "outbound|9080||reviews.default.svc.cluster.local"
                ],
                // Byte order, as istioctl: `v` sorts before `|`.
                [
                    "10.0.0.2:9080",
                    "HEALTHY",
                    "OK",
                    "outbound|9080|v2|reviews.default.svc.cluster.local"
                ],
                [
                    "10.0.0.2:9080",
                    "HEALTHY",
                    "FAILED",
                    "outbound|9080||reviews.default.svc.cluster.local"
                ],
            ]
        );
        let only_v2 = EndpointFilter {
            cluster: Some("outbound|9080|v2|reviews.default.svc.cluster.local".into()),
            ..Default::default()
        };
        assert_eq!(select(&clusters, &only_v2).len(), 1);
    }
}
