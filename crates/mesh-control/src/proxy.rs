//! Who a connected proxy is, read from the Envoy `Node` it sends, in the
//! form Istio's bootstrap uses: id `sidecar~<ip>~<pod>.<ns>~<ns>.svc.<domain>`
//! (or `router~...` for gateways) and metadata `NAMESPACE`, `LABELS`,
//! `SERVICE_ACCOUNT`, `INSTANCE_IPS`, `CLUSTER_ID`, `WORKLOAD_NAME`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// Sidecar or gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum ProxyRole {
    /// A workload's sidecar: captured inbound and outbound traffic.
    Sidecar,
    /// A gateway (ingress/egress): listeners from Gateway resources.
    Router,
}

/// A proxy's identity and placement.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ProxyInfo {
    /// The node id as sent.
    pub id: String,
    /// Sidecar or gateway.
    pub role: ProxyRole,
    /// Workload addresses.
    pub ip_addresses: Vec<IpAddr>,
    /// Pod (or workload) name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
    /// Cluster id (`Kubernetes` by default, as Istio).
    pub cluster_id: String,
    /// The locality the proxy reports in its node (`node.locality`), which
    /// wins over labels and the registry when it names a region.
    pub locality: Option<crate::model::Locality>,
    /// Whether the proxy is mesh-proxy (`node.user_agent_name`), which
    /// reads Istio's own filters (the `istio.stats` network filter) that a
    /// stock Envoy would refuse.
    pub mesh_proxy: bool,
}

/// Why a node could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyInfoError {
    /// The request carried no node (first request on a stream must).
    #[error("the first discovery request carried no node")]
    MissingNode,
    /// The id is not `type~ip~name.namespace~domain`.
    #[error("node id {0:?} is not of the form <sidecar|router>~<ip>~<pod>.<namespace>~<domain>")]
    BadId(String),
}

fn string_field(md: Option<&Struct>, key: &str) -> Option<String> {
    match md?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    match v.and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .filter_map(|(k, v)| match v.kind.as_ref()? {
                Kind::StringValue(s) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

impl ProxyInfo {
    /// Reads a proxy's identity from its node.
    pub fn from_node(node: Option<&Node>) -> Result<Self, ProxyInfoError> {
        let node = node.ok_or(ProxyInfoError::MissingNode)?;
        let parts: Vec<&str> = node.id.split('~').collect();
        let [kind, ip, pod, _domain] = parts.as_slice() else {
            return Err(ProxyInfoError::BadId(node.id.clone()));
        };
        let role = match *kind {
            "sidecar" => ProxyRole::Sidecar,
            "router" => ProxyRole::Router,
            _ => return Err(ProxyInfoError::BadId(node.id.clone())),
        };
        let (pod_name, pod_ns) = pod.split_once('.').unwrap_or((pod, "default"));
        let md = node.metadata.as_ref();
        let namespace = string_field(md, "NAMESPACE").unwrap_or_else(|| pod_ns.to_string());
        let mut ip_addresses: Vec<IpAddr> = string_field(md, "INSTANCE_IPS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if ip_addresses.is_empty() {
            ip_addresses.extend(ip.parse::<IpAddr>().ok());
        }
        Ok(Self {
            id: node.id.clone(),
            role,
            ip_addresses,
            name: string_field(md, "NAME").unwrap_or_else(|| pod_name.to_string()),
            namespace,
            labels: string_map(md.and_then(|m| m.fields.get("LABELS"))),
            service_account: string_field(md, "SERVICE_ACCOUNT")
                .unwrap_or_else(|| "default".into()),
            cluster_id: string_field(md, "CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
            locality: node
                .locality
                .as_ref()
                .filter(|l| !l.region.is_empty())
                .map(|l| crate::model::Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    subzone: l.sub_zone.clone(),
                }),
            mesh_proxy: node.user_agent_name == "mesh-proxy",
        })
    }

    /// A sidecar identity, for tests and tools.
    pub fn sidecar(name: &str, namespace: &str, ip: IpAddr, labels: &[(&str, &str)]) -> Self {
        Self {
            id: format!("sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local"),
            role: ProxyRole::Sidecar,
            ip_addresses: vec![ip],
            name: name.into(),
            namespace: namespace.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".into(),
            cluster_id: "Kubernetes".into(),
            locality: None,
            mesh_proxy: false,
        }
    }

    /// A gateway identity, for tests and tools.
    pub fn router(name: &str, namespace: &str, ip: IpAddr, labels: &[(&str, &str)]) -> Self {
        Self {
            role: ProxyRole::Router,
            id: format!("router~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local"),
            ..Self::sidecar(name, namespace, ip, labels)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    #[test]
    fn reads_istio_style_nodes() {
        let labels = Struct {
            fields: [
                ("app".to_string(), s("reviews")),
                ("version".to_string(), s("v1")),
            ]
            .into(),
        };
        let node = Node {
            id: "sidecar~10.1.0.7~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local".into(),
            metadata: Some(Struct {
                fields: [
                    ("NAMESPACE".to_string(), s("bookinfo")),
                    ("SERVICE_ACCOUNT".to_string(), s("bookinfo-reviews")),
                    (
                        "LABELS".to_string(),
                        Value {
                            kind: Some(Kind::StructValue(labels)),
                        },
                    ),
                ]
                .into(),
            }),
            ..Default::default()
        };
        let p = ProxyInfo::from_node(Some(&node)).unwrap();
        assert_eq!(p.locality, None, "no locality in the node");
        let located = Node {
            locality: Some(envoy_types::pb::envoy::config::core::v3::Locality {
                region: "eu-west1".into(),
                zone: "eu-west1-b".into(),
                sub_zone: String::new(),
            }),
            ..node.clone()
        };
        let l = ProxyInfo::from_node(Some(&located))
            .unwrap()
            .locality
            .unwrap();
        assert_eq!(
            (l.region.as_str(), l.zone.as_str()),
            ("eu-west1", "eu-west1-b")
        );
        assert_eq!(p.role, ProxyRole::Sidecar);
        assert_eq!(p.namespace, "bookinfo");
        assert_eq!(p.name, "reviews-v1-abc");
        assert_eq!(p.labels["version"], "v1");
        assert_eq!(p.service_account, "bookinfo-reviews");
        assert_eq!(p.ip_addresses, vec!["10.1.0.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn refuses_malformed_ids() {
        let node = Node {
            id: "just-a-name".into(),
            ..Default::default()
        };
        assert!(matches!(
            ProxyInfo::from_node(Some(&node)),
            Err(ProxyInfoError::BadId(_))
        ));
        assert_eq!(ProxyInfo::from_node(None), Err(ProxyInfoError::MissingNode));
    }
}
