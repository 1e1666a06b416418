//! Istio's TCP metadata exchange configuration
//! (`envoy.tcp.metadataexchange.config.MetadataExchange`), the typed config
//! of the listener filter `istio.metadata_exchange` (server side, before
//! `tcp_proxy`) and of the upstream cluster filter
//! `envoy.filters.network.upstream.metadata_exchange` (client side), with
//! Istio's field numbers so that an Istio proxy reads the same bytes.
//!
//! mesh-control writes it for mesh-proxy nodes only (a stock Envoy has
//! neither filter and would refuse the resource); mesh-proxy reads it.

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

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
    /// Istio's configuration: `protocol: istio-peer-exchange`, packed.
    pub fn istio() -> Any {
        super::pack_any(Self {
            protocol: PROTOCOL.into(),
        })
    }

    /// The config in `any`. `Ok(None)` for another type; `Err` says why
    /// the bytes are not a `MetadataExchange`.
    pub fn from_any(any: &Any) -> Result<Option<Self>, String> {
        if any.type_url != Self::type_url() {
            return Ok(None);
        }
        Self::decode(any.value.as_slice())
            .map(Some)
            .map_err(|e| format!("not an envoy.tcp.metadataexchange.config.MetadataExchange: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_istios_bytes_and_reads_them_back() {
        let any = MetadataExchange::istio();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"
        );
        // Field 1, length-delimited, then "istio-peer-exchange".
        assert_eq!(any.value[0], (1 << 3) | 2);
        assert_eq!(&any.value[2..], PROTOCOL.as_bytes());
        let back = MetadataExchange::from_any(&any).unwrap().unwrap();
        assert_eq!(back.protocol, PROTOCOL);
        let bad = Any {
            type_url: any.type_url.clone(),
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
