//! Istio's stats filter configuration (`stats.PluginConfig`, the typed
//! config of the `istio.stats` HTTP and network filters that istiod writes
//! for Telemetry `metrics` overrides), with Istio's field numbers so that
//! an Istio proxy reads the same bytes.
//!
//! mesh-control writes it; mesh-proxy reads it. A stock Envoy has no such
//! filter: the HTTP filter is sent `is_optional`, so Envoy skips it. The
//! config travels as istiod sends it, in an `xds.type.v3.TypedStruct`
//! (the message as a JSON Struct under its type URL), which Envoy can
//! print in `/config_dump` without knowing the type; the packed message
//! itself is read too.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::{Any, ListValue, Struct, Value, value::Kind};
use prost::{Message, Name};

/// Envoy's filter name for Istio's stats filter (HTTP and network).
pub const FILTER_NAME: &str = "istio.stats";

/// One override of a metric (or of every metric).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricConfig {
    /// Tags to add or replace: tag name to CEL expression.
    #[prost(btree_map = "string, string", tag = "1")]
    pub dimensions: BTreeMap<String, String>,
    /// The metric, without the `istio_` prefix (`requests_total`); empty
    /// for every metric.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Tags to leave out.
    #[prost(string, repeated, tag = "3")]
    pub tags_to_remove: Vec<String>,
    /// Not implemented by Istio either: a condition for the override.
    #[prost(string, tag = "4")]
    pub r#match: String,
    /// Do not report the metric at all.
    #[prost(bool, tag = "5")]
    pub drop: bool,
}

/// The stats filter's configuration.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginConfig {
    /// Do not fall back to the Host header for the destination service.
    #[prost(bool, tag = "6")]
    pub disable_host_header_fallback: bool,
    /// Metric overrides, applied in order (a later one wins per tag).
    #[prost(message, repeated, tag = "8")]
    pub metrics: Vec<MetricConfig>,
}

impl Name for PluginConfig {
    const NAME: &'static str = "PluginConfig";
    const PACKAGE: &'static str = "stats";

    fn type_url() -> String {
        "type.googleapis.com/stats.PluginConfig".into()
    }
}

/// Istio's standard metrics by the name overrides use, HTTP first.
pub const STANDARD_METRICS: [&str; 8] = [
    "requests_total",
    "request_duration_milliseconds",
    "request_bytes",
    "response_bytes",
    "tcp_connections_opened_total",
    "tcp_connections_closed_total",
    "tcp_sent_bytes_total",
    "tcp_received_bytes_total",
];

/// `xds.type.v3.TypedStruct`: a message of any type as a JSON Struct.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedStruct {
    /// The type URL of the message the Struct holds.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The message, in its proto3 JSON form.
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

impl Name for TypedStruct {
    const NAME: &'static str = "TypedStruct";
    const PACKAGE: &'static str = "xds.type.v3";

    fn type_url() -> String {
        "type.googleapis.com/xds.type.v3.TypedStruct".into()
    }
}

/// What an `Any` holding Istio extension config of one type carries.
#[derive(Debug)]
pub enum Unpacked<'a> {
    /// The message itself, still encoded.
    Message(&'a [u8]),
    /// The fields of a `TypedStruct` of it (proto3 JSON names).
    Fields(Struct),
}

impl TypedStruct {
    /// `Any` of a `TypedStruct` holding `fields` as a message of type
    /// `M`: how istiod sends Istio's own extension config.
    pub fn wrap<M: Name>(fields: BTreeMap<String, Value>) -> Any {
        let ts = TypedStruct {
            type_url: M::type_url(),
            value: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
        };
        Any {
            type_url: Self::type_url(),
            value: ts.encode_to_vec(),
        }
    }

    /// What `any` carries of message type `M`: the packed message, or
    /// the fields of a `TypedStruct` (xds or udpa) of it. `Ok(None)` for
    /// another type; `Err` when the TypedStruct itself is malformed.
    pub fn unpack<M: Name>(any: &Any) -> Result<Option<Unpacked<'_>>, String> {
        if any.type_url == M::type_url() {
            return Ok(Some(Unpacked::Message(any.value.as_slice())));
        }
        if any.type_url != Self::type_url()
            && any.type_url != "type.googleapis.com/udpa.type.v1.TypedStruct"
        {
            return Ok(None);
        }
        let ts =
            Self::decode(any.value.as_slice()).map_err(|e| format!("not a TypedStruct: {e}"))?;
        if ts.type_url != M::type_url() {
            return Ok(None);
        }
        Ok(Some(Unpacked::Fields(ts.value.unwrap_or_default())))
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn list(items: impl IntoIterator<Item = Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue {
            values: items.into_iter().collect(),
        })),
    }
}

fn object(fields: BTreeMap<String, Value>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: fields.into_iter().collect(),
        })),
    }
}

impl MetricConfig {
    fn to_value(&self) -> Value {
        let mut f = BTreeMap::new();
        if !self.name.is_empty() {
            f.insert("name".to_string(), string(&self.name));
        }
        if !self.dimensions.is_empty() {
            let dims = self.dimensions.iter().map(|(k, v)| (k.clone(), string(v)));
            f.insert("dimensions".to_string(), object(dims.collect()));
        }
        if !self.tags_to_remove.is_empty() {
            let tags = self.tags_to_remove.iter().map(|t| string(t));
            f.insert("tagsToRemove".to_string(), list(tags));
        }
        if self.drop {
            let yes = Value {
                kind: Some(Kind::BoolValue(true)),
            };
            f.insert("drop".to_string(), yes);
        }
        object(f)
    }

    fn from_value(v: &Value, at: &str) -> Result<Self, String> {
        let Some(Kind::StructValue(s)) = &v.kind else {
            return Err(format!("{at}: must be an object"));
        };
        let mut out = Self::default();
        for (key, value) in &s.fields {
            let field = format!("{at}.{key}");
            match (key.as_str(), &value.kind) {
                ("name", Some(Kind::StringValue(n))) => out.name = n.clone(),
                ("drop", Some(Kind::BoolValue(b))) => out.drop = *b,
                ("dimensions", Some(Kind::StructValue(d))) => {
                    for (tag, expr) in &d.fields {
                        let Some(Kind::StringValue(expr)) = &expr.kind else {
                            return Err(format!(
                                "{field}[{tag:?}]: must be a string (a CEL expression)"
                            ));
                        };
                        out.dimensions.insert(tag.clone(), expr.clone());
                    }
                }
                ("tagsToRemove" | "tags_to_remove", Some(Kind::ListValue(l))) => {
                    for (i, t) in l.values.iter().enumerate() {
                        let Some(Kind::StringValue(t)) = &t.kind else {
                            return Err(format!("{field}[{i}]: must be a string"));
                        };
                        out.tags_to_remove.push(t.clone());
                    }
                }
                ("match", Some(Kind::StringValue(m))) => out.r#match = m.clone(),
                (
                    "name" | "drop" | "dimensions" | "tagsToRemove" | "tags_to_remove" | "match",
                    _,
                ) => {
                    return Err(format!("{field}: wrong type"));
                }
                _ => return Err(format!("{field}: unknown field")),
            }
        }
        Ok(out)
    }
}

impl PluginConfig {
    /// The config as istiod sends it: a `TypedStruct` of its JSON form.
    pub fn to_typed_struct(&self) -> Any {
        let mut fields = BTreeMap::new();
        if !self.metrics.is_empty() {
            let metrics = self.metrics.iter().map(MetricConfig::to_value);
            fields.insert("metrics".to_string(), list(metrics));
        }
        if self.disable_host_header_fallback {
            let yes = Value {
                kind: Some(Kind::BoolValue(true)),
            };
            fields.insert("disableHostHeaderFallback".to_string(), yes);
        }
        TypedStruct::wrap::<Self>(fields)
    }

    /// The config in `any`: the packed message or a `TypedStruct` of it.
    /// `Ok(None)` for another type (Istio's older Wasm configuration);
    /// `Err` names what is malformed.
    pub fn from_any(any: &Any) -> Result<Option<Self>, String> {
        let fields = match TypedStruct::unpack::<Self>(any)? {
            None => return Ok(None),
            Some(Unpacked::Message(bytes)) => {
                return Self::decode(bytes)
                    .map(Some)
                    .map_err(|e| format!("not a stats.PluginConfig: {e}"));
            }
            Some(Unpacked::Fields(fields)) => fields,
        };
        let mut out = Self::default();
        for (key, value) in &fields.fields {
            match (key.as_str(), &value.kind) {
                ("metrics", Some(Kind::ListValue(l))) => {
                    for (i, m) in l.values.iter().enumerate() {
                        out.metrics
                            .push(MetricConfig::from_value(m, &format!("metrics[{i}]"))?);
                    }
                }
                (
                    "disableHostHeaderFallback" | "disable_host_header_fallback",
                    Some(Kind::BoolValue(b)),
                ) => out.disable_host_header_fallback = *b,
                // Fields this mesh does not act on (reporter, definitions,
                // tcp_reporting_duration, ...).
                _ => {}
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_under_istios_type_url_and_round_trips() {
        let cfg = PluginConfig {
            metrics: vec![MetricConfig {
                name: "requests_total".into(),
                dimensions: [("request_host".to_string(), "request.host".to_string())].into(),
                tags_to_remove: vec!["request_protocol".into()],
                drop: false,
                ..Default::default()
            }],
            ..Default::default()
        };
        let any = super::super::pack_any(cfg.clone());
        assert_eq!(any.type_url, PluginConfig::type_url());
        assert_eq!(PluginConfig::decode(any.value.as_slice()).unwrap(), cfg);
        // Field 8 (metrics), length-delimited: Istio's wire layout.
        assert_eq!(any.value[0], (8 << 3) | 2);
    }

    #[test]
    fn typed_struct_round_trips_and_malformed_fields_are_named() {
        let cfg = PluginConfig {
            metrics: vec![
                MetricConfig {
                    name: "requests_total".into(),
                    dimensions: [("h".to_string(), "request.host".to_string())].into(),
                    tags_to_remove: vec!["response_flags".into()],
                    ..Default::default()
                },
                MetricConfig {
                    name: "request_bytes".into(),
                    drop: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let any = cfg.to_typed_struct();
        assert_eq!(any.type_url, "type.googleapis.com/xds.type.v3.TypedStruct");
        assert_eq!(PluginConfig::from_any(&any).unwrap(), Some(cfg.clone()));
        let packed = super::super::pack_any(cfg.clone());
        assert_eq!(PluginConfig::from_any(&packed).unwrap(), Some(cfg));
        let mut bad = TypedStruct::decode(any.value.as_slice()).unwrap();
        let metrics = bad
            .value
            .as_mut()
            .unwrap()
            .fields
            .get_mut("metrics")
            .unwrap();
        if let Some(Kind::ListValue(l)) = &mut metrics.kind
            && let Some(Kind::StructValue(m)) = &mut l.values[1].kind
        {
            m.fields.insert("drop".into(), string("yes"));
        }
        let bad = Any {
            type_url: TypedStruct::type_url(),
            value: bad.encode_to_vec(),
        };
        assert_eq!(
            PluginConfig::from_any(&bad).unwrap_err(),
            "metrics[1].drop: wrong type"
        );
        let other = Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm".into(),
            value: vec![],
        };
        assert_eq!(PluginConfig::from_any(&other).unwrap(), None);
    }
}
