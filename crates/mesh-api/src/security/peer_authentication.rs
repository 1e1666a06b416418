//! `security.istio.io/PeerAuthentication`: which mutual TLS mode a workload
//! accepts, mesh-wide (root namespace), per namespace, per workload and per port.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::WorkloadSelector;
use crate::status::IstioStatus;

/// Mutual TLS requirements for traffic arriving at a workload.
#[derive(
    kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io"
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads this policy applies to; absent means every workload in the
    /// namespace (or the whole mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Mutual TLS settings for the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Port-specific settings, keyed by the workload's (container) port,
    /// not the Service port. Only valid with a workload selector.
    // Published as a map of strings: schemars gives integer-keyed maps
    // `patternProperties`, which Kubernetes refuses in a CRD schema.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, MutualTls>")]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// A mutual TLS setting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MutualTls {
    /// Which traffic is accepted; UNSET (inherit) when not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

// === impl MutualTls ===

impl MutualTls {
    /// The effective mode as written: UNSET when `mode` is absent.
    pub fn mode(&self) -> MtlsMode {
        self.mode.unwrap_or_default()
    }
}

/// PeerAuthentication's mutual TLS modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent policy; PERMISSIVE when nothing is set.
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// Both plaintext and mutual TLS.
    Permissive,
    /// Mutual TLS only; plaintext is refused at the handshake.
    Strict,
}
