//! Istio's TCP metadata exchange configuration
//! (`envoy.tcp.metadataexchange.config.MetadataExchange`), the typed config
//! of the listener filter `istio.metadata_exchange` (server side, before
//! `tcp_proxy`) and of the upstream cluster filter
//! `envoy.filters.network.upstream.metadata_exchange` (client side), with
//! Istio's field numbers so that an Istio proxy reads the same bytes.
//!
//! mesh-control writes it for mesh-proxy nodes only (a stock Envoy has
//! neither filter and would refuse the resource); mesh-proxy reads it.
//! It travels in an `xds.type.v3.TypedStruct` (as the stats filter's
//! config does), which Envoy accepts for any extension config and which
//! prints in `/config_dump` without this message's descriptor; the packed
//! message is read too.

use envoy_types::pb::google::protobuf::{Any, Value, value::Kind};
use prost::{Message, Name};

use super::istio_stats::{TypedStruct, Unpacked};

/// The listener (downstream) filter's name.
pub const LISTENER_FILTER: &str = "istio.metadata_exchange";
/// The cluster (upstream) filter's name.
pub const CLUSTER_FILTER: &str = "envoy.filters.network.upstream.metadata_exchange";
/// The one protocol the exchange speaks: also the ALPN that turns it on.
pub const PROTOCOL: &str = "istio-peer-exchange";

/// The filters' configuration.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataExchange {
    /// The ALPN protocol that, once negotiated, starts the exchange.
    #[prost(string, tag = "1")]
    pub protocol: String,
}

impl Name for MetadataExchange {
    const NAME: &'static str = "MetadataExchange";
    const PACKAGE: &'static str = "envoy.tcp.metadataexchange.config";

    fn type_url() -> String {
        "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange".into()
    }
}

impl MetadataExchange {
    /// Istio's configuration, `protocol: istio-peer-exchange`, in a
    /// `TypedStruct`.
    pub fn istio() -> Any {
        let protocol = Value {
            kind: Some(Kind::StringValue(PROTOCOL.into())),
        };
        TypedStruct::wrap::<Self>([("protocol".to_string(), protocol)].into())
    }

    /// The config in `any`: the packed message or a `TypedStruct` of it.
    /// `Ok(None)` for another type; `Err` says what is malformed.
    pub fn from_any(any: &Any) -> Result<Option<Self>, String> {
        let fields = match TypedStruct::unpack::<Self>(any)? {
            None => return Ok(None),
            Some(Unpacked::Message(bytes)) => {
                return Self::decode(bytes).map(Some).map_err(|e| {
                    format!("not an envoy.tcp.metadataexchange.config.MetadataExchange: {e}")
                });
            }
            Some(Unpacked::Fields(fields)) => fields,
        };
        let mut out = Self::default();
        for (key, value) in &fields.fields {
            match (key.as_str(), &value.kind) {
                ("protocol", Some(Kind::StringValue(p))) => out.protocol = p.clone(),
                ("protocol", _) => return Err("protocol: must be a string".into()),
                // Fields of newer Istio versions this mesh does not act on.
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
    fn packs_istios_bytes_and_reads_them_back() {
        let packed = super::super::pack_any(MetadataExchange {
            protocol: PROTOCOL.into(),
        });
        assert_eq!(
            packed.type_url,
            "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"
        );
        // Field 1, length-delimited, then "istio-peer-exchange".
        assert_eq!(packed.value[0], (1 << 3) | 2);
        assert_eq!(&packed.value[2..], PROTOCOL.as_bytes());
        for any in [&packed, &MetadataExchange::istio()] {
            let back = MetadataExchange::from_any(any).unwrap().unwrap();
            assert_eq!(back.protocol, PROTOCOL);
        }
        let typed = MetadataExchange::istio();
        assert_eq!(typed.type_url, TypedStruct::type_url());
        let json = super::super::json::to_json(&typed);
        assert!(json.is_ok(), "{json:?}");
        let bad = Any {
            type_url: packed.type_url.clone(),
            value: vec![0x0a, 0x20, b'x'],
        };
        assert!(MetadataExchange::from_any(&bad).is_err());
        let other = Any {
            type_url: "type.googleapis.com/google.protobuf.Empty".into(),
            value: vec![],
        };
        assert_eq!(MetadataExchange::from_any(&other).unwrap(), None);
    }
}
