//! `internal_address_config` of the HTTP connection managers, as istiod
//! sets it: on a manager that uses the remote address (gateways), the
//! `fromCidr` ranges of MeshNetworks, sorted; nothing when MeshNetworks
//! has none.
//!
//! Envoy treats a request as internal only when its downstream address is
//! in these ranges (since 1.36 there is no RFC 1918 default any more: no
//! config, no internal request), and only internal requests keep the
//! `x-envoy-*` control headers, `x-envoy-force-trace` among them. istiod
//! additionally sets the ranges on every manager when its
//! `ENABLE_HCM_INTERNAL_NETWORKS` feature is on; mesh-control has no such
//! switch.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::InternalAddressConfig;
use envoy_types::pb::google::protobuf::UInt32Value;
use mesh_api::mesh_networks::MeshNetworks;

/// The `internal_address_config` for `networks`, if it has ranges.
pub(crate) fn internal_address_config(networks: &MeshNetworks) -> Option<InternalAddressConfig> {
    let ranges = networks.cidr_ranges();
    (!ranges.is_empty()).then(|| InternalAddressConfig {
        cidr_ranges: ranges
            .into_iter()
            .map(|(addr, len)| CidrRange {
                address_prefix: addr.to_string(),
                prefix_len: Some(UInt32Value { value: len }),
            })
            .collect(),
        ..Default::default()
    })
}

/// Sets the internal addresses on every connection manager of
/// `listeners` that uses the remote address.
pub(crate) fn apply(networks: &MeshNetworks, listeners: &mut [Listener]) {
    let Some(config) = internal_address_config(networks) else {
        return;
    };
    super::for_each_hcm(listeners, |_, hcm| {
        if !hcm.use_remote_address.is_some_and(|b| b.value) {
            return false;
        }
        hcm.internal_address_config = Some(config.clone());
        true
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::xds::listener::{build_hcm, hcm_filter};
    use envoy_types::pb::envoy::config::listener::v3::filter;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::Message;
    use envoy_types::pb::envoy::config::listener::v3::FilterChain;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;

    fn listeners() -> Vec<Listener> {
        [true, false]
            .into_iter()
            .map(|remote| Listener {
                filter_chains: vec![FilterChain {
                    filters: vec![hcm_filter(build_hcm(
                        "s",
                        RouteSpecifier::Rds(Default::default()),
                        remote,
                    ))],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect()
    }

    fn config(l: &Listener) -> Option<InternalAddressConfig> {
        let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no typed config");
        };
        HttpConnectionManager::decode(any.value.as_slice())
            .unwrap()
            .internal_address_config
    }

    #[test]
    fn mesh_networks_ranges_become_internal_addresses_of_remote_address_managers() {
        let (networks, _) = mesh_api::mesh_networks::parse_mesh_networks(
            "networks: {n1: {endpoints: [{fromCidr: 192.168.0.0/16}, {fromCidr: 10.0.0.0/8}]}}",
        );
        let mut ls = listeners();
        apply(&networks.unwrap(), &mut ls);
        let c = config(&ls[0]).expect("the gateway-like manager gets the ranges");
        let ranges: Vec<_> = c
            .cidr_ranges
            .iter()
            .map(|r| format!("{}/{}", r.address_prefix, r.prefix_len.unwrap().value))
            .collect();
        assert_eq!(ranges, ["10.0.0.0/8", "192.168.0.0/16"]);
        assert_eq!(config(&ls[1]), None, "a sidecar-like manager is left alone");

        let mut ls = listeners();
        apply(&MeshNetworks::default(), &mut ls);
        assert_eq!(config(&ls[0]), None, "no networks, no internal addresses");
    }
}
