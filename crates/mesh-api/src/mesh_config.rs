//! MeshConfig: the `mesh` key of Istio's `istio` ConfigMap, the mesh-wide
//! defaults every component reads.
//!
//! TODO(issue 2): full field set is being filled in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Mesh-wide configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// SPIFFE trust domain of the mesh; `cluster.local` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Namespace whose policies apply mesh-wide; `istio-system` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
}
