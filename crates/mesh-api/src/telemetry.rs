//! `telemetry.istio.io` Telemetry.
//!
//! TODO(issue 2): full field set and validation are being filled in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::IstioStatus;

/// Telemetry configuration for workloads: metrics, access logs, tracing.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "telemetry.istio.io",
    version = "v1",
    kind = "Telemetry",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "telemetry",
    category = "istio-io",
    category = "telemetry-istio-io"
)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {}
