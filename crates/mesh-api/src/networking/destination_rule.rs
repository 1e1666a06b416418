//! `networking.istio.io` DestinationRule.
//!
//! TODO(issue 2): full field set and validation are being filled in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::IstioStatus;

/// Policies applied to traffic for a service after routing has occurred.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "dr",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {}
