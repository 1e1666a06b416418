//! Proto3 JSON for xDS messages, as Envoy prints them in `/config_dump`.
//!
//! `envoy-types` has no serde support, so messages are converted through
//! `prost-reflect` with the descriptor set `envoy-types` was generated from
//! (`proto/envoy-types-<version>.descriptors.bin`, copied from that release
//! and pinned with it). `Any` fields are expanded by type URL, so a Listener
//! shows its HttpConnectionManager inline, as in Envoy's own dumps.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static DESCRIPTORS: &[u8] = include_bytes!("../../proto/envoy-types-0.7.7.descriptors.bin");

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The embedded descriptor set could not be read (a build problem).
    #[error("embedded Envoy descriptor set is unreadable: {0}")]
    Descriptors(String),
    /// The message type is not in the descriptor set.
    #[error("unknown protobuf message type {0:?}")]
    UnknownType(String),
    /// The bytes or JSON did not match the type.
    #[error("cannot convert {type_name}: {reason}")]
    Convert {
        /// Full protobuf name of the message.
        type_name: String,
        /// What went wrong.
        reason: String,
    },
}

/// The descriptor pool of every Envoy API message, decoded once, plus the
/// few messages the mesh sends that `envoy-types` does not describe.
pub fn pool() -> Result<&'static DescriptorPool, JsonError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string())?;
        pool.add_file_descriptor_protos(extra_files())
            .map_err(|e| e.to_string())?;
        Ok(pool)
    })
    .as_ref()
    .map_err(|e| JsonError::Descriptors(e.clone()))
}

/// `xds.type.v3.TypedStruct` (how extension configs of other types travel)
/// and Istio's `envoy.tcp.metadataexchange.config.MetadataExchange`, so
/// that a config carrying them still prints in `/config_dump`.
fn extra_files() -> Vec<prost_reflect::prost_types::FileDescriptorProto> {
    use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
    use prost_reflect::prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
    let field = |name: &str, number: i32, ty: Type, type_name: Option<&str>| FieldDescriptorProto {
        name: Some(name.into()),
        json_name: None,
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(str::to_string),
        ..Default::default()
    };
    let file = |name: &str, package: &str, deps: Vec<String>, message: DescriptorProto| {
        FileDescriptorProto {
            name: Some(name.into()),
            package: Some(package.into()),
            dependency: deps,
            message_type: vec![message],
            syntax: Some("proto3".into()),
            ..Default::default()
        }
    };
    let struct_file = "google/protobuf/struct.proto".to_string();
    vec![
        file(
            "mesh/xds/type/v3/typed_struct.proto",
            "xds.type.v3",
            vec![struct_file],
            DescriptorProto {
                name: Some("TypedStruct".into()),
                field: vec![
                    field("type_url", 1, Type::String, None),
                    field("value", 2, Type::Message, Some(".google.protobuf.Struct")),
                ],
                ..Default::default()
            },
        ),
        file(
            "mesh/istio/metadata_exchange.proto",
            "envoy.tcp.metadataexchange.config",
            Vec::new(),
            DescriptorProto {
                name: Some("MetadataExchange".into()),
                field: vec![field("protocol", 1, Type::String, None)],
                ..Default::default()
            },
        ),
    ]
}

/// Converts any Envoy message to its proto3 JSON value (camelCase field
/// names, default values omitted, `Any` expanded with `@type`).
pub fn to_json<M: Message + prost::Name>(msg: &M) -> Result<serde_json::Value, JsonError> {
    let full_name = M::full_name();
    let desc = pool()?
        .get_message_by_name(&full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.clone()))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).map_err(|e| {
        JsonError::Convert {
            type_name: full_name.clone(),
            reason: e.to_string(),
        }
    })?;
    let options = SerializeOptions::new().stringify_64_bit_integers(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| JsonError::Convert {
            type_name: full_name,
            reason: e.to_string(),
        })
}

/// Parses proto3 JSON (as found in an Envoy `/config_dump`) into a message.
pub fn from_json<M: Message + prost::Name + Default>(
    value: &serde_json::Value,
) -> Result<M, JsonError> {
    let full_name = M::full_name();
    let desc = pool()?
        .get_message_by_name(&full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.clone()))?;
    let convert = |reason: String| JsonError::Convert {
        type_name: full_name.clone(),
        reason,
    };
    let dynamic =
        DynamicMessage::deserialize(desc, value.clone()).map_err(|e| convert(e.to_string()))?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| convert(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::pack_any;
    use crate::xds::pb::envoy::config::cluster::v3::Cluster;
    use crate::xds::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use crate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use crate::xds::pb::google::protobuf::Duration;

    #[test]
    fn renders_like_envoy_config_dump() {
        let cluster = Cluster {
            name: "outbound|9080|v1|reviews.default.svc.cluster.local".into(),
            connect_timeout: Some(Duration {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json = to_json(&cluster).unwrap();
        assert_eq!(
            json["name"],
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(json["connectTimeout"], "10s");
        let back: Cluster = from_json(&json).unwrap();
        assert_eq!(back, cluster);
    }

    #[test]
    fn expands_any_by_type_url() {
        let hcm = HttpConnectionManager {
            stat_prefix: "outbound_0.0.0.0_9080".into(),
            ..Default::default()
        };
        let listener = Listener {
            name: "0.0.0.0_9080".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json(&listener).unwrap();
        let typed = &json["filterChains"][0]["filters"][0]["typedConfig"];
        assert_eq!(
            typed["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        assert_eq!(typed["statPrefix"], "outbound_0.0.0.0_9080");
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        let err = from_json::<Cluster>(&serde_json::json!({"connectTimeout": "soon"})).unwrap_err();
        assert!(
            err.to_string().contains("envoy.config.cluster.v3.Cluster"),
            "{err}"
        );
    }
}
