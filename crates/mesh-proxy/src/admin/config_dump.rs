//! `/config_dump` in Envoy's `envoy.admin.v3.ConfigDump` shape: one
//! `configs[]` entry per config tracker (bootstrap, clusters, endpoints
//! with `?include_eds`, listeners, scoped routes, routes, secrets), static
//! and dynamic resources apart, each dynamic one with the version it came
//! with, when it was last updated, and, if its last update was refused,
//! `error_state`. `?resource=<field>` returns the items of one repeated
//! field (e.g. `dynamic_active_clusters`), each as its own `configs[]`
//! entry, as Envoy does. Private keys are redacted.

use std::collections::HashMap;
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use envoy_types::pb::envoy::admin::v3::{
    BootstrapConfigDump, ClustersConfigDump, ConfigDump, EndpointsConfigDump,
    ListenersConfigDump, RoutesConfigDump, ScopedRoutesConfigDump, SecretsConfigDump,
    UpdateFailureState, clusters_config_dump, endpoints_config_dump, listeners_config_dump,
    routes_config_dump, secrets_config_dump,
};
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use mesh_api::xds::json::JsonError;
use mesh_api::xds::{ResourceType, pack_any};
use prost::{Message, Name};
use prost_reflect::{DynamicMessage, SerializeOptions};

use super::AdminState;
use crate::resources::{Origin, Resources};
use crate::xds::XdsStatus;

/// Why a dump could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// `?resource=` names no repeated field of any dump.
    #[error(
        "{0} not found in config dump; try dynamic_active_clusters, static_clusters, dynamic_listeners, static_listeners, dynamic_route_configs, static_route_configs, dynamic_endpoint_configs, static_endpoint_configs, dynamic_active_secrets or static_secrets"
    )]
    UnknownResource(String),
    /// JSON encoding failed.
    #[error(transparent)]
    Json(#[from] JsonError),
}

/// The dumps of every tracker, built once per request.
struct Dumps {
    bootstrap: BootstrapConfigDump,
    clusters: ClustersConfigDump,
    endpoints: EndpointsConfigDump,
    listeners: ListenersConfigDump,
    routes: RoutesConfigDump,
    secrets: SecretsConfigDump,
}

/// The dump as JSON. `resource` narrows to one repeated field;
/// `include_eds` adds endpoints.
pub fn config_dump(
    state: &AdminState,
    resource: Option<&str>,
    include_eds: bool,
) -> Result<serde_json::Value, DumpError> {
    let resources = state.config.resources.borrow().clone();
    let status = state.config.status.borrow().clone();
    let dumps = Dumps::build(state, &resources, &status);
    let configs = match resource {
        Some(field) => dumps
            .items(field)
            .ok_or_else(|| DumpError::UnknownResource(field.to_string()))?,
        None => {
            let mut configs = vec![pack_any(dumps.bootstrap), pack_any(dumps.clusters)];
            if include_eds {
                configs.push(pack_any(dumps.endpoints));
            }
            configs.push(pack_any(dumps.listeners));
            configs.push(pack_any(ScopedRoutesConfigDump::default()));
            configs.push(pack_any(dumps.routes));
            configs.push(pack_any(dumps.secrets));
            configs
        }
    };
    envoy_json(&ConfigDump { configs }, false)
}

/// A message as Envoy's admin API prints it: proto3 JSON with the proto
/// field names (`dynamic_active_clusters`, not `dynamicActiveClusters`),
/// `Any` expanded with `@type`; `defaults` prints fields at their default
/// value too (Envoy does for `/server_info` and `?format=json` listings).
pub(super) fn envoy_json<M: Message + Name>(
    msg: &M,
    defaults: bool,
) -> Result<serde_json::Value, DumpError> {
    let full_name = M::full_name();
    let convert = |reason: String| JsonError::Convert {
        type_name: full_name.clone(),
        reason,
    };
    let desc = mesh_api::xds::json::pool()?
        .get_message_by_name(&full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.clone()))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| convert(e.to_string()))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(!defaults);
    Ok(dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| convert(e.to_string()))?)
}

pub(super) async fn handler(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let resource = query.get("resource").map(String::as_str);
    let include_eds = query.contains_key("include_eds");
    match config_dump(&state, resource, include_eds) {
        Ok(json) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
            .into_response(),
        Err(e @ DumpError::UnknownResource(_)) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

// === impl Dumps ===

impl Dumps {
    fn build(state: &AdminState, resources: &Resources, status: &XdsStatus) -> Self {
        let started = timestamp(state.started.1);
        let updated = |ty: ResourceType, name: &str| {
            status
                .types
                .get(&ty)
                .and_then(|t| t.updated.get(name))
                .map(|t| timestamp(*t))
                .or(Some(started))
        };
        let error_state = |ty: ResourceType, name: &str| {
            let r = status.types.get(&ty)?.rejected.get(name)?;
            Some(UpdateFailureState {
                failed_configuration: None,
                last_update_attempt: Some(timestamp(r.at)),
                details: r.details.clone(),
                version_info: r.version.clone(),
            })
        };
        let version = |ty: ResourceType| resources.versions.get(&ty).cloned().unwrap_or_default();

        let mut clusters = ClustersConfigDump {
            version_info: version(ResourceType::Cluster),
            ..Default::default()
        };
        let mut endpoints = EndpointsConfigDump::default();
        for (name, e) in &resources.clusters {
            match &e.origin {
                Origin::Static => {
                    clusters
                        .static_clusters
                        .push(clusters_config_dump::StaticCluster {
                            cluster: Some(pack_any(e.resource.clone())),
                            last_updated: Some(started),
                        });
                    if let Some(cla) = &e.resource.load_assignment {
                        endpoints.static_endpoint_configs.push(
                            endpoints_config_dump::StaticEndpointConfig {
                                endpoint_config: Some(pack_any(cla.clone())),
                                last_updated: Some(started),
                            },
                        );
                    }
                }
                Origin::Dynamic { version } => {
                    clusters
                        .dynamic_active_clusters
                        .push(clusters_config_dump::DynamicCluster {
                            version_info: version.clone(),
                            cluster: Some(pack_any(e.resource.clone())),
                            last_updated: updated(ResourceType::Cluster, name),
                            error_state: error_state(ResourceType::Cluster, name),
                            client_status: 0,
                        });
                }
            }
        }
        for (name, e) in &resources.endpoints {
            let any = Some(pack_any(e.resource.clone()));
            match &e.origin {
                Origin::Static => endpoints.static_endpoint_configs.push(
                    endpoints_config_dump::StaticEndpointConfig {
                        endpoint_config: any,
                        last_updated: Some(started),
                    },
                ),
                Origin::Dynamic { version } => endpoints.dynamic_endpoint_configs.push(
                    endpoints_config_dump::DynamicEndpointConfig {
                        version_info: version.clone(),
                        endpoint_config: any,
                        last_updated: updated(ResourceType::Endpoint, name),
                        error_state: error_state(ResourceType::Endpoint, name),
                        client_status: 0,
                    },
                ),
            }
        }

        let mut listeners = ListenersConfigDump {
            version_info: version(ResourceType::Listener),
            ..Default::default()
        };
        let mut routes = RoutesConfigDump::default();
        for (name, e) in &resources.listeners {
            match &e.origin {
                Origin::Static => {
                    listeners
                        .static_listeners
                        .push(listeners_config_dump::StaticListener {
                            listener: Some(pack_any(e.resource.clone())),
                            last_updated: Some(started),
                        });
                    for rc in inline_routes(&e.resource) {
                        routes
                            .static_route_configs
                            .push(routes_config_dump::StaticRouteConfig {
                                route_config: Some(pack_any(rc)),
                                last_updated: Some(started),
                            });
                    }
                }
                Origin::Dynamic { version } => {
                    listeners
                        .dynamic_listeners
                        .push(listeners_config_dump::DynamicListener {
                            name: name.clone(),
                            active_state: Some(listeners_config_dump::DynamicListenerState {
                                version_info: version.clone(),
                                listener: Some(pack_any(e.resource.clone())),
                                last_updated: updated(ResourceType::Listener, name),
                            }),
                            error_state: error_state(ResourceType::Listener, name),
                            ..Default::default()
                        });
                }
            }
        }
        for (name, e) in &resources.routes {
            let any = Some(pack_any(e.resource.clone()));
            match &e.origin {
                Origin::Static => {
                    routes
                        .static_route_configs
                        .push(routes_config_dump::StaticRouteConfig {
                            route_config: any,
                            last_updated: Some(started),
                        })
                }
                Origin::Dynamic { version } => {
                    routes
                        .dynamic_route_configs
                        .push(routes_config_dump::DynamicRouteConfig {
                            version_info: version.clone(),
                            route_config: any,
                            last_updated: updated(ResourceType::Route, name),
                            error_state: error_state(ResourceType::Route, name),
                            client_status: 0,
                        })
                }
            }
        }

        let mut secrets = SecretsConfigDump::default();
        for (name, e) in &resources.secrets {
            let any = Some(pack_any(redact(&e.resource)));
            match &e.origin {
                Origin::Static => secrets
                    .static_secrets
                    .push(secrets_config_dump::StaticSecret {
                        name: name.clone(),
                        last_updated: Some(started),
                        secret: any,
                    }),
                Origin::Dynamic { version } => {
                    secrets
                        .dynamic_active_secrets
                        .push(secrets_config_dump::DynamicSecret {
                            name: name.clone(),
                            version_info: version.clone(),
                            last_updated: updated(ResourceType::Secret, name),
                            secret: any,
                            error_state: error_state(ResourceType::Secret, name),
                            client_status: 0,
                        })
                }
            }
        }

        // The workload identity's secrets, as Envoy shows what its agent
        // served: dynamic, versioned by the certificate's fingerprint.
        for secret in state.workload_secrets() {
            let version = fingerprint(&secret);
            secrets
                .dynamic_active_secrets
                .push(secrets_config_dump::DynamicSecret {
                    name: secret.name.clone(),
                    version_info: version,
                    last_updated: None,
                    secret: Some(pack_any(redact(&secret))),
                    error_state: None,
                    client_status: 0,
                });
        }

        Self {
            bootstrap: BootstrapConfigDump {
                bootstrap: Some((*state.bootstrap).clone()),
                last_updated: Some(started),
            },
            clusters,
            endpoints,
            listeners,
            routes,
            secrets,
        }
    }

    /// The items of one repeated field, each packed on its own.
    fn items(&self, field: &str) -> Option<Vec<Any>> {
        fn each<T: Message + Name + Clone>(v: &[T]) -> Vec<Any> {
            v.iter().cloned().map(pack_any).collect()
        }
        Some(match field {
            "static_clusters" => each(&self.clusters.static_clusters),
            "dynamic_active_clusters" => each(&self.clusters.dynamic_active_clusters),
            "dynamic_warming_clusters" => each(&self.clusters.dynamic_warming_clusters),
            "static_endpoint_configs" => each(&self.endpoints.static_endpoint_configs),
            "dynamic_endpoint_configs" => each(&self.endpoints.dynamic_endpoint_configs),
            "static_listeners" => each(&self.listeners.static_listeners),
            "dynamic_listeners" => each(&self.listeners.dynamic_listeners),
            "static_route_configs" => each(&self.routes.static_route_configs),
            "dynamic_route_configs" => each(&self.routes.dynamic_route_configs),
            "static_secrets" => each(&self.secrets.static_secrets),
            "dynamic_active_secrets" => each(&self.secrets.dynamic_active_secrets),
            "dynamic_warming_secrets" => each(&self.secrets.dynamic_warming_secrets),
            _ => return None,
        })
    }
}

/// Route configurations written inline in a listener's HTTP connection
/// managers (Envoy lists them with the static route configs).
fn inline_routes(listener: &Listener) -> Vec<RouteConfiguration> {
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref())
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any))
                if any.type_url == HttpConnectionManager::type_url() =>
            {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => Some(rc),
            _ => None,
        })
        .collect()
}

/// A short hex digest of a secret's public content, as its version.
fn fingerprint(secret: &Secret) -> String {
    let public = match &secret.r#type {
        Some(secret::Type::TlsCertificate(c)) => c.certificate_chain.as_ref(),
        Some(secret::Type::ValidationContext(v)) => v.trusted_ca.as_ref(),
        _ => None,
    };
    let bytes = match public.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => b.as_slice(),
        Some(Specifier::InlineString(s)) => s.as_bytes(),
        _ => &[],
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A secret with its private material replaced by `[redacted]`, as Envoy
/// prints it.
fn redact(secret: &Secret) -> Secret {
    fn hide(source: &mut Option<DataSource>) {
        if let Some(ds) = source
            && matches!(
                ds.specifier,
                Some(Specifier::InlineBytes(_) | Specifier::InlineString(_))
            )
        {
            ds.specifier = Some(Specifier::InlineString("[redacted]".into()));
        }
    }
    let mut s = secret.clone();
    match &mut s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            hide(&mut c.private_key);
            hide(&mut c.password);
            hide(&mut c.pkcs12);
        }
        Some(secret::Type::SessionTicketKeys(k)) => {
            for key in &mut k.keys {
                let mut one = Some(key.clone());
                hide(&mut one);
                if let Some(one) = one {
                    *key = one;
                }
            }
        }
        Some(secret::Type::GenericSecret(g)) => hide(&mut g.secret),
        _ => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;

    use super::*;

    #[test]
    fn private_keys_are_redacted() {
        let secret = Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                private_key: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(b"KEY".to_vec())),
                    ..Default::default()
                }),
                certificate_chain: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(b"CERT".to_vec())),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let Some(secret::Type::TlsCertificate(c)) = redact(&secret).r#type else {
            panic!("type changed");
        };
        assert_eq!(
            c.private_key.unwrap().specifier,
            Some(Specifier::InlineString("[redacted]".into()))
        );
        assert_eq!(
            c.certificate_chain.unwrap().specifier,
            Some(Specifier::InlineBytes(b"CERT".to_vec()))
        );
    }
}
