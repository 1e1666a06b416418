//! Reading Envoy's `/config_dump` generically, as JSON values: mesh-proxy
//! and a stock Envoy both print `envoy.admin.v3.ConfigDump` in proto3 JSON
//! (one `configs[]` entry per tracker, told apart by `@type`), and a tool
//! that decoded it into typed messages would refuse the fields a newer
//! Envoy adds. Every accessor here tolerates missing fields, and accepts
//! lowerCamelCase names too (proto3 JSON allows both; Envoy prints the
//! proto names, other tools the camel ones).

use serde_json::Value;

/// Why a config dump could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The body is not JSON.
    #[error("the config dump is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// JSON without a `configs` list.
    #[error("the JSON is not an Envoy config dump (no `configs` list)")]
    NotConfigDump,
}

/// One `/config_dump`.
#[derive(Debug, Clone)]
pub struct ConfigDump {
    configs: Vec<Value>,
}

// === impl ConfigDump ===

impl ConfigDump {
    /// Parses the body of `/config_dump`.
    pub fn parse(bytes: &[u8]) -> Result<Self, DumpError> {
        let value: Value = serde_json::from_slice(bytes).map_err(DumpError::NotJson)?;
        Self::from_value(value)
    }

    /// A parsed dump.
    pub fn from_value(value: Value) -> Result<Self, DumpError> {
        match field(&value, "configs") {
            Some(Value::Array(configs)) => Ok(Self {
                configs: configs.clone(),
            }),
            _ => Err(DumpError::NotConfigDump),
        }
    }

    /// The tracker dump whose `@type` is `envoy.admin.v3.<kind>`.
    pub fn section(&self, kind: &str) -> Option<&Value> {
        self.configs.iter().find(|c| {
            str_field(c, "@type")
                .rsplit('.')
                .next()
                .is_some_and(|t| t == kind)
        })
    }

    /// Active clusters: dynamic then static (as istioctl lists them).
    pub fn clusters(&self) -> Vec<&Value> {
        let mut all = self.dynamic_clusters();
        all.extend(self.items("ClustersConfigDump", "static_clusters", &["cluster"]));
        all
    }

    /// Clusters delivered over xDS (the proxy's own static ones left out).
    pub fn dynamic_clusters(&self) -> Vec<&Value> {
        self.items(
            "ClustersConfigDump",
            "dynamic_active_clusters",
            &["cluster"],
        )
    }

    /// Active listeners: dynamic (their `active_state`) then static.
    pub fn listeners(&self) -> Vec<&Value> {
        let mut all = self.dynamic_listeners();
        all.extend(self.items("ListenersConfigDump", "static_listeners", &["listener"]));
        all
    }

    /// Listeners delivered over xDS and active (warming ones left out).
    pub fn dynamic_listeners(&self) -> Vec<&Value> {
        self.items(
            "ListenersConfigDump",
            "dynamic_listeners",
            &["active_state", "listener"],
        )
    }

    /// Route configurations: dynamic (RDS) then static (inline).
    pub fn routes(&self) -> Vec<&Value> {
        let mut all = self.dynamic_routes();
        all.extend(self.items(
            "RoutesConfigDump",
            "static_route_configs",
            &["route_config"],
        ));
        all
    }

    /// Route configurations delivered over RDS.
    pub fn dynamic_routes(&self) -> Vec<&Value> {
        self.items(
            "RoutesConfigDump",
            "dynamic_route_configs",
            &["route_config"],
        )
    }

    /// Endpoint assignments (present with `?include_eds`).
    pub fn endpoints(&self) -> Vec<&Value> {
        let mut all = self.items(
            "EndpointsConfigDump",
            "dynamic_endpoint_configs",
            &["endpoint_config"],
        );
        all.extend(self.items(
            "EndpointsConfigDump",
            "static_endpoint_configs",
            &["endpoint_config"],
        ));
        all
    }

    /// `section.list[].inner...` for every entry that has it.
    fn items(&self, section: &str, list: &str, inner: &[&str]) -> Vec<&Value> {
        let Some(dump) = self.section(section) else {
            return Vec::new();
        };
        array(dump, list)
            .iter()
            .filter_map(|entry| path(entry, inner))
            .collect()
    }

    /// The whole dump, as it came.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ "configs": self.configs })
    }
}

/// Field `snake_name` of a JSON object, also found under its lowerCamelCase
/// spelling.
pub fn field<'a>(value: &'a Value, snake_name: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    object
        .get(snake_name)
        .or_else(|| object.get(&camel(snake_name)))
}

/// A string field, `""` when missing or not a string.
pub fn str_field<'a>(value: &'a Value, snake_name: &str) -> &'a str {
    field(value, snake_name)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// An array field, empty when missing.
pub fn array<'a>(value: &'a Value, snake_name: &str) -> &'a [Value] {
    field(value, snake_name)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// An unsigned number field (proto3 JSON may quote 64-bit ones), or a
/// wrapper such as `UInt32Value`, which prints as the bare number.
pub fn u64_field(value: &Value, snake_name: &str) -> Option<u64> {
    match field(value, snake_name)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Follows a path of fields.
pub fn path<'a>(value: &'a Value, fields: &[&str]) -> Option<&'a Value> {
    fields.iter().try_fold(value, |v, f| field(v, f))
}

/// The strings of an array field.
pub fn strings<'a>(value: &'a Value, snake_name: &str) -> Vec<&'a str> {
    array(value, snake_name)
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// `name.namespace` of the Istio object named in a resource's
/// `metadata.filter_metadata.istio.config`
/// (`/apis/networking.istio.io/v1/namespaces/<ns>/<kind>/<name>`), as
/// istioctl shows it; `-` when the resource names none.
pub fn istio_config(resource: &Value) -> String {
    let config = path(
        resource,
        &["metadata", "filter_metadata", "istio", "config"],
    )
    .and_then(Value::as_str);
    match config {
        None => "-".into(),
        Some(p) if p.starts_with("/apis/networking.istio.io/") => {
            let pieces: Vec<&str> = p.split('/').collect();
            match pieces.as_slice() {
                [_, _, _, _, _, ns, _, name] => format!("{name}.{ns}"),
                _ => "-".into(),
            }
        }
        Some(_) => "<unknown>".into(),
    }
}

/// The `@type` of an `Any`'s JSON (`type.googleapis.com/envoy...`), its
/// last path segment.
pub fn type_name(any: &Value) -> &str {
    str_field(any, "@type")
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

/// A resource as istioctl's `-o json` prints it: the message alone, without
/// the `@type` of the `Any` it was packed in.
pub fn unpacked(resource: &Value) -> Value {
    let mut v = resource.clone();
    if let Some(object) = v.as_object_mut() {
        object.remove("@type");
    }
    v
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_in_either_spelling() {
        let v = json!({"filterChains": [1], "dynamic_listeners": [2]});
        assert_eq!(array(&v, "filter_chains").len(), 1);
        assert_eq!(array(&v, "dynamic_listeners").len(), 1);
        assert!(field(&v, "missing").is_none());
    }

    #[test]
    fn istio_config_metadata_renders_as_name_dot_namespace() {
        let md = |p: &str| json!({"metadata": {"filter_metadata": {"istio": {"config": p}}}});
        assert_eq!(
            istio_config(&md(
                "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews"
            )),
            "reviews.default"
        );
        assert_eq!(istio_config(&md("/other/thing")), "<unknown>");
        assert_eq!(istio_config(&json!({"name": "x"})), "-");
    }

    #[test]
    fn sections_by_type() {
        let dump = ConfigDump::from_value(json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
             "dynamic_active_clusters": [{"cluster": {"name": "a"}}],
             "static_clusters": [{"cluster": {"name": "b"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "dynamic_listeners": [{"name": "l", "active_state": {"listener": {"name": "l"}}},
                                   {"name": "warming-only", "warming_state": {}}]}
        ]}))
        .unwrap();
        let names: Vec<&str> = dump
            .clusters()
            .iter()
            .map(|c| str_field(c, "name"))
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(dump.listeners().len(), 1);
        assert!(dump.routes().is_empty());
        assert!(matches!(
            ConfigDump::parse(b"{}"),
            Err(DumpError::NotConfigDump)
        ));
    }
}
