//! From the wire to [`Resource`]: decoding each `Any` of a response on its
//! own (so one bad resource is refused alone), and reading the names a
//! resource makes the proxy subscribe to (EDS for EDS clusters, RDS for
//! HTTP connection managers that use RDS).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::service::discovery::v3::Resource as ResourceWrapper;
use envoy_types::pb::google::protobuf::Any;
use mesh_api::xds::ResourceType;
use prost::{Message, Name};

use crate::resources::Resource;
use crate::runtime::ConfigError;

/// The protobuf message name of a type, as errors and the config dump name it.
pub const fn kind(ty: ResourceType) -> &'static str {
    match ty {
        ResourceType::Cluster => "Cluster",
        ResourceType::Endpoint => "ClusterLoadAssignment",
        ResourceType::Listener => "Listener",
        ResourceType::Route => "RouteConfiguration",
        ResourceType::Secret => "Secret",
    }
}

/// Decodes one resource of a response for `ty`. `label` names it in errors
/// when its own name cannot be read (`resources[2]`, or the delta name).
pub fn decode(ty: ResourceType, any: &Any, label: &str) -> Result<Resource, ConfigError> {
    let refuse = |name: &str, field: &str, reason: String| ConfigError {
        kind: kind(ty),
        name: name.to_string(),
        field: field.to_string(),
        reason,
    };
    // Envoy accepts SotW resources wrapped in a discovery `Resource`.
    if any.type_url == ResourceWrapper::type_url() {
        let wrapper = ResourceWrapper::decode(any.value.as_slice())
            .map_err(|e| refuse(label, "value", format!("not a valid Resource wrapper: {e}")))?;
        let inner = wrapper.resource.ok_or_else(|| {
            refuse(
                name_or(&wrapper.name, label),
                "resource",
                "the Resource wrapper holds no resource".into(),
            )
        })?;
        return decode(ty, &inner, name_or(&wrapper.name, label));
    }
    if any.type_url != ty.type_url() {
        // Name the resource if it is one of ours sent under the wrong type.
        let name = ResourceType::from_type_url(&any.type_url)
            .and_then(|other| decode_as(other, &any.value).ok())
            .map(|r| r.name().to_string())
            .filter(|n| !n.is_empty());
        return Err(refuse(
            name.as_deref().unwrap_or(label),
            "type_url",
            format!(
                "expected {} in a {} response, got {:?}",
                ty.type_url(),
                ty.short_name(),
                any.type_url
            ),
        ));
    }
    let resource = decode_as(ty, &any.value)
        .map_err(|e| refuse(label, "value", format!("not a valid {}: {e}", kind(ty))))?;
    if resource.name().is_empty() {
        let field = if ty == ResourceType::Endpoint {
            "cluster_name"
        } else {
            "name"
        };
        return Err(refuse(label, field, "must not be empty".into()));
    }
    Ok(resource)
}

fn name_or<'a>(name: &'a str, fallback: &'a str) -> &'a str {
    if name.is_empty() { fallback } else { name }
}

fn decode_as(ty: ResourceType, bytes: &[u8]) -> Result<Resource, prost::DecodeError> {
    Ok(match ty {
        ResourceType::Cluster => Resource::Cluster(Box::new(Cluster::decode(bytes)?)),
        ResourceType::Endpoint => Resource::Endpoint(ClusterLoadAssignment::decode(bytes)?),
        ResourceType::Listener => Resource::Listener(Box::new(Listener::decode(bytes)?)),
        ResourceType::Route => Resource::Route(RouteConfiguration::decode(bytes)?),
        ResourceType::Secret => Resource::Secret(Secret::decode(bytes)?),
    })
}

/// The EDS name an EDS cluster subscribes to (`eds_cluster_config.service_name`,
/// else the cluster's name); `None` for other discovery types.
pub fn eds_name(cluster: &Cluster) -> Option<&str> {
    let eds = DiscoveryType::Eds as i32;
    if cluster.cluster_discovery_type != Some(ClusterDiscoveryType::Type(eds)) {
        return None;
    }
    let service = cluster
        .eds_cluster_config
        .as_ref()
        .map(|c| c.service_name.as_str())
        .filter(|s| !s.is_empty());
    Some(service.unwrap_or(&cluster.name))
}

/// The RDS route names a listener's HTTP connection managers load.
pub fn rds_names(listener: &Listener) -> impl Iterator<Item = String> + '_ {
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref())
        .flat_map(chain_rds_names)
}

fn chain_rds_names(chain: &FilterChain) -> impl Iterator<Item = String> + '_ {
    chain.filters.iter().filter_map(|f| {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return None;
        };
        if any.type_url != HttpConnectionManager::type_url() {
            return None;
        }
        // An undecodable HCM is the runtime check's to refuse; it asks for nothing.
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).ok()?;
        match hcm.route_specifier? {
            RouteSpecifier::Rds(rds) if !rds.route_config_name.is_empty() => {
                Some(rds.route_config_name)
            }
            _ => None,
        }
    })
}

/// The SDS names a listener's filter chains ask the control plane for
/// (those with an ADS `sds_config`; static secrets and the workload
/// identity's are served locally).
pub fn listener_sds_names(listener: &Listener) -> Vec<String> {
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref())
        .filter_map(|c| c.transport_socket.as_ref())
        .filter_map(typed::<DownstreamTlsContext>)
        .flat_map(|ctx| ads_secret_names(ctx.common_tls_context.as_ref()))
        .collect()
}

/// The SDS names a cluster's transport sockets ask the control plane for.
pub fn cluster_sds_names(cluster: &Cluster) -> Vec<String> {
    cluster
        .transport_socket
        .iter()
        .chain(
            cluster
                .transport_socket_matches
                .iter()
                .filter_map(|m| m.transport_socket.as_ref()),
        )
        .filter_map(typed::<UpstreamTlsContext>)
        .flat_map(|ctx| ads_secret_names(ctx.common_tls_context.as_ref()))
        .collect()
}

fn typed<T: Message + Name + Default>(t: &TransportSocket) -> Option<T> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &t.config_type else {
        return None;
    };
    (any.type_url == T::type_url())
        .then(|| T::decode(any.value.as_slice()).ok())
        .flatten()
}

fn ads_secret_names(common: Option<&CommonTlsContext>) -> Vec<String> {
    let Some(common) = common else {
        return Vec::new();
    };
    let validation = match &common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => Some(s),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            c.validation_context_sds_secret_config.as_ref()
        }
        _ => None,
    };
    common
        .tls_certificate_sds_secret_configs
        .iter()
        .chain(validation)
        .filter(|s| {
            matches!(
                s.sds_config
                    .as_ref()
                    .and_then(|c| c.config_source_specifier.as_ref()),
                Some(ConfigSourceSpecifier::Ads(_))
            )
        })
        .map(|s| s.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::listener::v3::Filter;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use mesh_api::xds::pack_any;

    use super::*;

    fn eds_cluster(name: &str, service: &str) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                service_name: service.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_and_names_resources() {
        let any = pack_any(eds_cluster("outbound|80||a", ""));
        let r = decode(ResourceType::Cluster, &any, "resources[0]").unwrap();
        assert_eq!(r.name(), "outbound|80||a");
    }

    #[test]
    fn a_resource_under_the_wrong_type_is_refused_by_its_name() {
        let any = pack_any(Listener {
            name: "0.0.0.0_80".into(),
            ..Default::default()
        });
        let err = decode(ResourceType::Cluster, &any, "resources[1]").unwrap_err();
        assert_eq!(err.name, "0.0.0.0_80");
        assert_eq!(err.field, "type_url");
        assert!(err.reason.contains("Listener"), "{err}");
    }

    #[test]
    fn undecodable_bytes_are_refused_by_position() {
        let any = Any {
            type_url: Cluster::type_url(),
            value: vec![0xff, 0xff, 0xff],
        };
        let err = decode(ResourceType::Cluster, &any, "resources[3]").unwrap_err();
        assert_eq!(err.name, "resources[3]");
        assert!(err.to_string().contains("not a valid Cluster"), "{err}");
    }

    #[test]
    fn wrapped_resources_are_unwrapped() {
        let any = pack_any(ResourceWrapper {
            name: "r".into(),
            resource: Some(pack_any(RouteConfiguration {
                name: "r".into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        assert_eq!(decode(ResourceType::Route, &any, "x").unwrap().name(), "r");
    }

    #[test]
    fn eds_name_prefers_the_service_name() {
        assert_eq!(eds_name(&eds_cluster("a", "svc")), Some("svc"));
        assert_eq!(eds_name(&eds_cluster("a", "")), Some("a"));
        assert_eq!(eds_name(&Cluster::default()), None);
    }

    #[test]
    fn rds_names_come_from_http_connection_managers() {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: "9080".into(),
                ..Default::default()
            })),
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
        assert_eq!(rds_names(&listener).collect::<Vec<_>>(), vec!["9080"]);
    }
}
