//! Istio's peer metadata exchange over HTTP: a mesh proxy sending a
//! request to another mesh proxy (over Istio mutual TLS) adds
//! `x-envoy-peer-metadata` (its node metadata: a `google.protobuf.Struct`,
//! protobuf-encoded, then base64) and `x-envoy-peer-metadata-id` (its node
//! id); the receiving proxy reads and removes them, so the app never sees
//! them, and answers with its own in the response headers, which the
//! sending proxy reads and removes in turn. Each side then knows the
//! workload on the other side for its metrics (`source_*` on the
//! destination, `destination_*` on the source).
//!
//! Nothing is sent to a peer that is not a mesh proxy: requests only carry
//! the headers over Istio mTLS, and responses only when the request came
//! with them.
//!
//! TCP connections exchange the same metadata in a header at the start of
//! the stream, under ALPN `istio-peer-exchange` ([`exchange`]).

pub mod exchange;

use std::sync::Arc;

use base64::Engine as _;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use http::{HeaderMap, HeaderValue};
use prost::Message;

use super::labels::{UNKNOWN, Workload};

/// The metadata header.
pub const METADATA: &str = "x-envoy-peer-metadata";
/// The node id header.
pub const METADATA_ID: &str = "x-envoy-peer-metadata-id";

/// Headers larger than this are ignored (Istio's are a few hundred bytes).
const MAX_HEADER: usize = 8 * 1024;

/// The node metadata keys sent to peers: what Istio's metrics need.
const KEYS: &[&str] = &[
    "NAME",
    "NAMESPACE",
    "WORKLOAD_NAME",
    "CLUSTER_ID",
    "MESH_ID",
    "SERVICE_ACCOUNT",
    "LABELS",
    "OWNER",
    "PLATFORM_METADATA",
    "APP_CONTAINERS",
    "INSTANCE_IPS",
    "ISTIO_VERSION",
];

/// What a peer said about itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerMetadata {
    /// Its node id.
    pub id: String,
    /// Its workload labels (the principal comes from its certificate, not
    /// from here).
    pub workload: Workload,
}

/// This proxy's own exchange headers, encoded once.
#[derive(Clone, Debug)]
pub struct LocalMetadata {
    metadata: HeaderValue,
    id: HeaderValue,
    /// The TCP exchange header ([`exchange::encode`]).
    tcp: Arc<[u8]>,
}

// === impl LocalMetadata ===

impl LocalMetadata {
    /// The headers of the proxy `node` (the metadata keys peers use).
    pub fn from_node(node: &envoy_types::pb::envoy::config::core::v3::Node) -> Option<Self> {
        let fields = &node.metadata.as_ref()?.fields;
        let kept = Struct {
            fields: fields
                .iter()
                .filter(|(k, _)| KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(kept.encode_to_vec());
        Some(Self {
            metadata: HeaderValue::from_str(&encoded).ok()?,
            id: HeaderValue::from_str(&node.id).ok()?,
            tcp: exchange::encode(&kept, &node.id).into(),
        })
    }

    /// The header this proxy writes first on a TCP connection that
    /// negotiated `istio-peer-exchange`.
    pub fn tcp_header(&self) -> &[u8] {
        &self.tcp
    }

    /// Adds the headers to `headers` (replacing any).
    pub fn insert(&self, headers: &mut HeaderMap) {
        headers.insert(METADATA, self.metadata.clone());
        headers.insert(METADATA_ID, self.id.clone());
    }
}

/// Removes the exchange headers from `headers` and returns what they said,
/// if they were well formed.
pub fn take(headers: &mut HeaderMap) -> Option<Arc<PeerMetadata>> {
    let metadata = headers.remove(METADATA);
    let id = headers.remove(METADATA_ID);
    let metadata = metadata?;
    if metadata.len() > MAX_HEADER {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(metadata.as_bytes())
        .ok()?;
    let decoded = Struct::decode(bytes.as_slice()).ok()?;
    let id = id
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .unwrap_or_default();
    Some(Arc::new(PeerMetadata {
        workload: workload_of(&decoded),
        id,
    }))
}

/// Removes the exchange headers without reading them.
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(METADATA);
    headers.remove(METADATA_ID);
}

/// A workload's labels from its node metadata, as Istio derives them.
pub fn workload_of(metadata: &Struct) -> Workload {
    let string = |s: &Struct, key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) if !v.is_empty() => Some(bounded(v)),
        _ => None,
    };
    let labels = match metadata.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => s.clone(),
        _ => Struct::default(),
    };
    let label = |key: &str| string(&labels, key);
    let name = string(metadata, "WORKLOAD_NAME")
        .or_else(|| string(metadata, "NAME"))
        .unwrap_or_else(|| UNKNOWN.into());
    let app = label("app").or_else(|| label("app.kubernetes.io/name"));
    let version = label("version").or_else(|| label("app.kubernetes.io/version"));
    Workload {
        canonical_service: label("service.istio.io/canonical-name")
            .or_else(|| app.clone())
            .unwrap_or_else(|| name.clone()),
        canonical_revision: label("service.istio.io/canonical-revision")
            .or_else(|| version.clone())
            .unwrap_or_else(|| "latest".into()),
        name,
        namespace: string(metadata, "NAMESPACE").unwrap_or_else(|| UNKNOWN.into()),
        principal: UNKNOWN.into(),
        app: app.unwrap_or_else(|| UNKNOWN.into()),
        version: version.unwrap_or_else(|| UNKNOWN.into()),
        cluster: string(metadata, "CLUSTER_ID").unwrap_or_else(|| UNKNOWN.into()),
    }
}

/// Label values from a peer are cut at a length no workload name reaches
/// (Kubernetes names are at most 253 bytes).
fn bounded(v: &str) -> String {
    const MAX: usize = 253;
    if v.len() <= MAX {
        return v.to_string();
    }
    let mut end = MAX;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

/// A string `Value`.
#[cfg(test)]
fn string_value(s: &str) -> envoy_types::pb::google::protobuf::Value {
    envoy_types::pb::google::protobuf::Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::{NodeConfig, Role};

    fn node() -> envoy_types::pb::envoy::config::core::v3::Node {
        let mut config = NodeConfig {
            role: Some(Role::Sidecar),
            pod_name: Some("reviews-v2-1".into()),
            pod_namespace: Some("bookinfo".into()),
            workload_name: Some("reviews-v2".into()),
            ..Default::default()
        };
        config.add_labels(["app=reviews", "version=v2"]).unwrap();
        config.build(None)
    }

    #[test]
    fn a_peer_reads_back_the_workload_sent() {
        let local = LocalMetadata::from_node(&node()).unwrap();
        let mut headers = HeaderMap::new();
        local.insert(&mut headers);
        headers.insert("x-other", HeaderValue::from_static("kept"));
        let peer = take(&mut headers).unwrap();
        assert_eq!(peer.workload.name, "reviews-v2");
        assert_eq!(peer.workload.namespace, "bookinfo");
        assert_eq!(peer.workload.app, "reviews");
        assert_eq!(peer.workload.version, "v2");
        assert_eq!(peer.workload.canonical_service, "reviews");
        assert_eq!(peer.workload.canonical_revision, "v2");
        assert_eq!(peer.workload.cluster, "Kubernetes");
        assert!(peer.id.starts_with("sidecar~"), "{}", peer.id);
        // Both headers are gone, the rest stays.
        assert!(!headers.contains_key(METADATA) && !headers.contains_key(METADATA_ID));
        assert_eq!(headers["x-other"], "kept");
    }

    #[test]
    fn the_tcp_header_says_what_the_http_headers_say() {
        let local = LocalMetadata::from_node(&node()).unwrap();
        let exchange::Parsed::Header { consumed, peer } = exchange::parse(local.tcp_header())
        else {
            panic!("the local TCP header does not parse");
        };
        assert_eq!(consumed, local.tcp_header().len());
        let mut headers = HeaderMap::new();
        local.insert(&mut headers);
        assert_eq!(peer, take(&mut headers));
    }

    #[test]
    fn malformed_metadata_is_dropped_and_still_stripped() {
        for bad in ["not base64!", "AAAA", ""] {
            let mut headers = HeaderMap::new();
            headers.insert(METADATA, HeaderValue::from_str(bad).unwrap());
            headers.insert(METADATA_ID, HeaderValue::from_static("x"));
            let got = take(&mut headers);
            assert!(
                got.as_ref().is_none_or(|p| p.workload.name == UNKNOWN),
                "{bad}: {got:?}"
            );
            assert!(headers.is_empty(), "{bad}");
        }
        let mut headers = HeaderMap::new();
        let huge = "A".repeat(MAX_HEADER + 4);
        headers.insert(METADATA, HeaderValue::from_str(&huge).unwrap());
        assert!(take(&mut headers).is_none());
        assert!(headers.is_empty());
    }

    #[test]
    fn long_values_are_bounded() {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("WORKLOAD_NAME".to_string(), string_value(&"é".repeat(400)));
        let w = workload_of(&Struct {
            fields: fields.into_iter().collect(),
        });
        assert!(w.name.len() <= 253 && w.name.starts_with('é'));
    }
}
