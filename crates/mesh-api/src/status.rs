//! The `status` subresource of Istio objects. Istio writes conditions and
//! validation messages there; the mesh keeps whatever it finds, untouched.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Free-form status, preserved as-is (`x-kubernetes-preserve-unknown-fields`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IstioStatus(pub serde_json::Value);

impl JsonSchema for IstioStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IstioStatus".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}
