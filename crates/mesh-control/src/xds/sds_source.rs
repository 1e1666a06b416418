//! Where Envoy fetches the workload's own certificate (`default`) and trust
//! bundle (`ROOTCA`): like Istio, from the proxy agent's SDS server through
//! the bootstrap cluster `sds-grpc`, never from the control plane, because
//! the agent holds the private key. Gateway credentials
//! (`kubernetes://...`) still come over ADS (see [`crate::xds::secret`]).

use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService, api_config_source::ApiType,
    config_source::ConfigSourceSpecifier, grpc_service,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use mesh_api::wellknown::SDS_GRPC_CLUSTER;

/// An SDS reference to `name` served by the agent over `sds-grpc`, exactly
/// as Istio writes it: node sent once, no initial fetch timeout (the
/// listener or cluster waits for its certificate rather than serving
/// without it).
pub(crate) fn workload_sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    set_node_on_first_message_only: true,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: SDS_GRPC_CLUSTER.to_string(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            resource_api_version: ApiVersion::V3 as i32,
            initial_fetch_timeout: Some(PbDuration {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::xds::json::to_json;
    use serde_json::json;

    use super::*;

    #[test]
    fn workload_sds_points_at_the_agent_like_istio() {
        assert_eq!(
            to_json(&workload_sds("default")).unwrap(),
            json!({
                "name": "default",
                "sdsConfig": {
                    "apiConfigSource": {
                        "apiType": "GRPC",
                        "transportApiVersion": "V3",
                        "setNodeOnFirstMessageOnly": true,
                        "grpcServices": [{"envoyGrpc": {"clusterName": "sds-grpc"}}]
                    },
                    "resourceApiVersion": "V3",
                    "initialFetchTimeout": "0s"
                }
            })
        );
    }
}
