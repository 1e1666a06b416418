//! The Envoy `Node` the proxy introduces itself with on every ADS stream,
//! built the way Istio's bootstrap builds it so the control plane reads it
//! the same way: id `sidecar~<ip>~<pod>.<ns>~<ns>.svc.<domain>` (or
//! `router~...` for gateways) and metadata `NAMESPACE`, `NAME`, `LABELS`,
//! `SERVICE_ACCOUNT`, `INSTANCE_IPS`, `CLUSTER_ID`, `WORKLOAD_NAME`, plus
//! every `ISTIO_META_<KEY>` environment variable as `<KEY>`.
//!
//! Values come from three layers, later ones winning: the bootstrap file's
//! `node`, then the environment and flags ([`NodeConfig`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{Node, node::UserAgentVersionType};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// Istio's default cluster id.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Istio's default DNS domain.
pub const DEFAULT_DNS_DOMAIN: &str = "cluster.local";

/// Sidecar or gateway, the first field of the node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// A workload's sidecar (captured inbound and outbound traffic).
    Sidecar,
    /// A gateway (ingress or egress), configured from Gateway resources.
    Router,
}

/// What the flags and environment say about the node; `None` keeps the
/// bootstrap's value (or Istio's default when there is no bootstrap node).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeConfig {
    /// `--role`.
    pub role: Option<Role>,
    /// `POD_NAME`.
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `INSTANCE_IP`.
    pub instance_ip: Option<IpAddr>,
    /// `SERVICE_ACCOUNT`.
    pub service_account: Option<String>,
    /// `CLUSTER_ID` (`Kubernetes` by default).
    pub cluster_id: Option<String>,
    /// `ISTIO_META_WORKLOAD_NAME` (the app label, else the pod name).
    pub workload_name: Option<String>,
    /// The cluster DNS domain (`cluster.local`).
    pub dns_domain: Option<String>,
    /// Workload labels (`--label k=v`, `ISTIO_METAJSON_LABELS`).
    pub labels: BTreeMap<String, String>,
    /// Extra string metadata (`ISTIO_META_<KEY>=v` gives `<KEY>: v`).
    pub metadata: BTreeMap<String, String>,
}

/// Why the environment could not be read into a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `ISTIO_METAJSON_LABELS` is not a JSON object of strings.
    #[error(
        "environment variable ISTIO_METAJSON_LABELS: {0}; expected a JSON object of strings such as {{\"app\":\"reviews\"}}"
    )]
    LabelsJson(String),
    /// A `--label` is not `key=value`.
    #[error("label {0:?}: expected key=value")]
    Label(String),
}

/// The parts of an Istio node id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProxyId {
    role: Role,
    ip: String,
    pod: String,
    namespace: String,
    domain: String,
}

// === impl Role ===

impl Role {
    /// The node-id spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sidecar => "sidecar",
            Self::Router => "router",
        }
    }
}

// === impl NodeConfig ===

impl NodeConfig {
    /// Reads Istio's `ISTIO_META_*` variables: `ISTIO_META_<KEY>=v` becomes
    /// metadata `<KEY>`, `ISTIO_METAJSON_LABELS` the labels (flags given
    /// with `--label` win over it), `ISTIO_META_WORKLOAD_NAME` the
    /// workload name and `ISTIO_META_CLUSTER_ID` the cluster id unless set
    /// otherwise.
    pub fn apply_istio_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), NodeError> {
        for (key, value) in vars {
            if key == "ISTIO_METAJSON_LABELS" {
                let labels: BTreeMap<String, String> = serde_json::from_str(&value)
                    .map_err(|e| NodeError::LabelsJson(e.to_string()))?;
                for (k, v) in labels {
                    self.labels.entry(k).or_insert(v);
                }
            } else if let Some(meta) = key.strip_prefix("ISTIO_META_") {
                match meta {
                    "WORKLOAD_NAME" => {
                        self.workload_name.get_or_insert(value);
                    }
                    "CLUSTER_ID" => {
                        self.cluster_id.get_or_insert(value);
                    }
                    _ => {
                        self.metadata.insert(meta.to_string(), value);
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds `key=value` labels (from `--label`).
    pub fn add_labels<'a>(
        &mut self,
        labels: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), NodeError> {
        for label in labels {
            let (k, v) = label
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| NodeError::Label(label.to_string()))?;
            self.labels.insert(k.to_string(), v.to_string());
        }
        Ok(())
    }

    /// The node to send: `base` (the bootstrap's node) with these values
    /// laid over it. A base id that is not in Istio's form is kept as is
    /// unless a flag changes one of its parts.
    pub fn build(&self, base: Option<&Node>) -> Node {
        let mut node = base.cloned().unwrap_or_default();
        let parsed = ProxyId::parse(&node.id);
        let overrides_id = self.role.is_some()
            || self.instance_ip.is_some()
            || self.pod_name.is_some()
            || self.pod_namespace.is_some()
            || self.dns_domain.is_some();
        let mut id = parsed.clone().unwrap_or_else(ProxyId::default_sidecar);
        if let Some(role) = self.role {
            id.role = role;
        }
        if let Some(ip) = self.instance_ip {
            id.ip = ip.to_string();
        }
        if let Some(pod) = &self.pod_name {
            id.pod.clone_from(pod);
        }
        if let Some(ns) = &self.pod_namespace {
            id.namespace.clone_from(ns);
        }
        if let Some(domain) = &self.dns_domain {
            id.domain = format!("{}.svc.{domain}", id.namespace);
        } else if self.pod_namespace.is_some() || parsed.is_none() {
            id.domain = format!("{}.svc.{DEFAULT_DNS_DOMAIN}", id.namespace);
        }
        if overrides_id || node.id.is_empty() {
            node.id = id.render();
        }

        let metadata = node.metadata.get_or_insert_with(Struct::default);
        let fields = &mut metadata.fields;
        let mut set = |key: &str, value: String, overridden: bool| {
            if overridden || !fields.contains_key(key) {
                fields.insert(key.to_string(), string_value(value));
            }
        };
        set(
            "NAMESPACE",
            id.namespace.clone(),
            self.pod_namespace.is_some(),
        );
        set("NAME", id.pod.clone(), self.pod_name.is_some());
        set("INSTANCE_IPS", id.ip.clone(), self.instance_ip.is_some());
        set(
            "SERVICE_ACCOUNT",
            self.service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            self.service_account.is_some(),
        );
        set(
            "CLUSTER_ID",
            self.cluster_id
                .clone()
                .unwrap_or_else(|| DEFAULT_CLUSTER_ID.into()),
            self.cluster_id.is_some(),
        );
        let workload = self
            .workload_name
            .clone()
            .or_else(|| self.labels.get("app").cloned())
            .unwrap_or_else(|| id.pod.clone());
        set(
            "WORKLOAD_NAME",
            workload.clone(),
            self.workload_name.is_some(),
        );
        for (k, v) in &self.metadata {
            set(k, v.clone(), true);
        }
        if !self.labels.is_empty() || !fields.contains_key("LABELS") {
            let mut labels = match fields.remove("LABELS").and_then(|v| v.kind) {
                Some(Kind::StructValue(s)) => s,
                _ => Struct::default(),
            };
            for (k, v) in &self.labels {
                labels.fields.insert(k.clone(), string_value(v.clone()));
            }
            fields.insert(
                "LABELS".into(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            );
        }
        if node.cluster.is_empty() {
            node.cluster = format!("{workload}.{}", id.namespace);
        }
        node.user_agent_name = "mesh-proxy".into();
        node.user_agent_version_type = Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        ));
        node
    }
}

fn string_value(s: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(s)),
    }
}

// === impl ProxyId ===

impl ProxyId {
    fn default_sidecar() -> Self {
        Self {
            role: Role::Sidecar,
            ip: "127.0.0.1".into(),
            pod: "mesh-proxy".into(),
            namespace: "default".into(),
            domain: format!("default.svc.{DEFAULT_DNS_DOMAIN}"),
        }
    }

    /// `role~ip~pod.namespace~domain`, or `None` for any other form.
    fn parse(id: &str) -> Option<Self> {
        let mut parts = id.split('~');
        let (role, ip, pod, domain) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let role = match role {
            "sidecar" => Role::Sidecar,
            "router" => Role::Router,
            _ => return None,
        };
        let (pod, namespace) = pod.split_once('.').unwrap_or((pod, "default"));
        Some(Self {
            role,
            ip: ip.into(),
            pod: pod.into(),
            namespace: namespace.into(),
            domain: domain.into(),
        })
    }

    fn render(&self) -> String {
        format!(
            "{}~{}~{}.{}~{}",
            self.role.as_str(),
            self.ip,
            self.pod,
            self.namespace,
            self.domain
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'a>(node: &'a Node, key: &str) -> Option<&'a Kind> {
        node.metadata.as_ref()?.fields.get(key)?.kind.as_ref()
    }

    fn string_field(node: &Node, key: &str) -> Option<String> {
        match field(node, key)? {
            Kind::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }

    #[test]
    fn builds_an_istio_sidecar_node_from_flags_and_env() {
        let mut config = NodeConfig {
            role: Some(Role::Sidecar),
            pod_name: Some("reviews-v1-abc".into()),
            pod_namespace: Some("bookinfo".into()),
            instance_ip: Some("10.1.0.7".parse().unwrap()),
            service_account: Some("bookinfo-reviews".into()),
            ..Default::default()
        };
        config.add_labels(["version=v1"]).unwrap();
        config
            .apply_istio_env([
                (
                    "ISTIO_METAJSON_LABELS".to_string(),
                    r#"{"app":"reviews","version":"v9"}"#.to_string(),
                ),
                ("ISTIO_META_MESH_ID".to_string(), "mesh1".to_string()),
                ("PATH".to_string(), "/bin".to_string()),
            ])
            .unwrap();
        let node = config.build(None);
        assert_eq!(
            node.id,
            "sidecar~10.1.0.7~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(string_field(&node, "NAMESPACE").unwrap(), "bookinfo");
        assert_eq!(
            string_field(&node, "SERVICE_ACCOUNT").unwrap(),
            "bookinfo-reviews"
        );
        assert_eq!(string_field(&node, "INSTANCE_IPS").unwrap(), "10.1.0.7");
        assert_eq!(string_field(&node, "CLUSTER_ID").unwrap(), "Kubernetes");
        assert_eq!(string_field(&node, "WORKLOAD_NAME").unwrap(), "reviews");
        assert_eq!(string_field(&node, "MESH_ID").unwrap(), "mesh1");
        let Some(Kind::StructValue(labels)) = field(&node, "LABELS") else {
            panic!("no labels");
        };
        // --label wins over the environment.
        assert_eq!(
            labels.fields["version"].kind,
            Some(Kind::StringValue("v1".into()))
        );
        assert_eq!(
            labels.fields["app"].kind,
            Some(Kind::StringValue("reviews".into()))
        );
        assert_eq!(node.cluster, "reviews.bookinfo");
    }

    #[test]
    fn flags_override_the_bootstrap_node_and_keep_the_rest() {
        let base = NodeConfig {
            role: Some(Role::Router),
            pod_name: Some("gw-0".into()),
            pod_namespace: Some("istio-system".into()),
            instance_ip: Some("10.0.0.1".parse().unwrap()),
            service_account: Some("gw-sa".into()),
            ..Default::default()
        }
        .build(None);
        let node = NodeConfig {
            instance_ip: Some("10.0.0.2".parse().unwrap()),
            ..Default::default()
        }
        .build(Some(&base));
        assert_eq!(
            node.id,
            "router~10.0.0.2~gw-0.istio-system~istio-system.svc.cluster.local"
        );
        assert_eq!(string_field(&node, "SERVICE_ACCOUNT").unwrap(), "gw-sa");
        assert_eq!(string_field(&node, "INSTANCE_IPS").unwrap(), "10.0.0.2");
    }

    #[test]
    fn a_foreign_node_id_is_kept_when_no_flag_changes_it() {
        let base = Node {
            id: "my-envoy".into(),
            ..Default::default()
        };
        assert_eq!(NodeConfig::default().build(Some(&base)).id, "my-envoy");
    }

    #[test]
    fn bad_labels_are_refused_with_the_fix() {
        let mut config = NodeConfig::default();
        assert!(config.add_labels(["novalue"]).is_err());
        let err = config
            .apply_istio_env([("ISTIO_METAJSON_LABELS".to_string(), "[1]".to_string())])
            .unwrap_err();
        assert!(err.to_string().contains("ISTIO_METAJSON_LABELS"), "{err}");
    }
}
