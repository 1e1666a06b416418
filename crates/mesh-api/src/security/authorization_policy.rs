//! `security.istio.io` AuthorizationPolicy.
//!
//! TODO(issue 2): full field set and validation are being filled in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::IstioStatus;

/// Access control for workloads in the mesh.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "ap",
    category = "istio-io",
    category = "security-istio-io"
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {}
