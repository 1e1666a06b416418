//! MeshNetworks: the `meshNetworks` key of Istio's `istio` ConfigMap, the
//! networks of a multi-network mesh. Each network lists where its
//! endpoints come from (`fromCidr` ranges or a `fromRegistry` cluster)
//! and the gateways that reach it.
//!
//! istiod also reads the `fromCidr` ranges as the addresses Envoy treats
//! as internal (`internal_address_config`) on connection managers that use
//! the remote address, which is what the control plane uses them for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validation::{Path, Report};

/// Parses the `meshNetworks` value of the `istio` ConfigMap. Returns the
/// networks when they decoded, plus every decode error, unknown-field
/// warning and malformed `fromCidr` (paths relative to the root).
pub fn parse_mesh_networks(yaml: &str) -> (Option<MeshNetworks>, Report) {
    let mut report = Report::default();
    let value: serde_json::Value = match serde_saphyr::from_str(yaml) {
        Ok(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Ok(v) => v,
        Err(e) => {
            report.error(&Path::root(""), format!("malformed YAML: {e}"));
            return (None, report);
        }
    };
    let networks: Option<MeshNetworks> = crate::object::decode(value, &mut report, true);
    if let Some(n) = &networks {
        for (name, net) in &n.networks {
            for (i, ep) in net.endpoints.iter().enumerate() {
                if let Some(cidr) = ep.from_cidr.as_ref().filter(|c| parse_cidr(c).is_none()) {
                    report.error(
                        &Path::root(&format!("networks.{name}.endpoints[{i}].fromCidr")),
                        format!("{cidr:?} is not an address range (ADDRESS/LENGTH)"),
                    );
                }
            }
        }
    }
    (networks, report)
}

/// `address/length` (or a bare address, its full length) as the address
/// text and the prefix length; `None` when malformed.
pub fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u32)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: std::net::IpAddr = addr.trim().parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u32>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((addr, len))
}

/// The networks of the mesh.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshNetworks {
    /// Network name -> network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
}

/// One network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Where the network's endpoints come from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<NetworkEndpoints>,
    /// Gateways into the network (kept as written; not used yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<serde_json::Value>,
}

/// One source of a network's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkEndpoints {
    /// An address range whose endpoints are in the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<String>,
    /// A registry (cluster) whose endpoints are in the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_registry: Option<String>,
}

impl MeshNetworks {
    /// Every well-formed `fromCidr` range, as address and prefix length,
    /// sorted by address then length (istiod sorts them for stable
    /// config), duplicates removed.
    pub fn cidr_ranges(&self) -> Vec<(std::net::IpAddr, u32)> {
        let mut out: Vec<_> = self
            .networks
            .values()
            .flat_map(|n| &n.endpoints)
            .filter_map(|e| e.from_cidr.as_deref())
            .filter_map(parse_cidr)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn from_cidr_ranges_are_sorted_and_bad_ones_named() {
        let (n, report) = parse_mesh_networks(
            "networks:\n  b: {endpoints: [{fromCidr: 192.168.0.0/16}, {fromRegistry: Kubernetes}]}\n  a: {endpoints: [{fromCidr: 10.0.0.0/8}, {fromCidr: \"10.1/16\"}]}\n",
        );
        let n = n.unwrap();
        assert_eq!(
            n.cidr_ranges(),
            vec![
                ("10.0.0.0".parse().unwrap(), 8),
                ("192.168.0.0".parse().unwrap(), 16)
            ]
        );
        let errors: Vec<_> = report.errors().map(|d| d.path.clone()).collect();
        assert_eq!(errors, vec!["networks.a.endpoints[1].fromCidr".to_string()]);
        assert_eq!(parse_cidr("::1"), Some(("::1".parse().unwrap(), 128)));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
