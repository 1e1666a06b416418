//! `networking.istio.io` Gateway.
//!
//! TODO(issue 2): full field set and validation are being filled in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::IstioStatus;

/// A load balancer at the edge of the mesh receiving incoming or outgoing HTTP/TCP connections.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "gw",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {}
