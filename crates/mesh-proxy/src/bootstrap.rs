//! The static bootstrap: an Envoy bootstrap file (YAML or JSON) read into
//! `envoy.config.bootstrap.v3.Bootstrap`, so a file written for Envoy
//! configures this proxy too.
//!
//! What is read: `node` (who the proxy is), `admin.address`,
//! `static_resources` (listeners, clusters, secrets: checked like xDS
//! resources and held with `Origin::Static`), and `dynamic_resources`
//! (`ads_config` naming a static cluster or a Google gRPC target, `cds_config`
//! / `lds_config`, `api_type` GRPC or DELTA_GRPC). With no
//! `dynamic_resources` the proxy runs from the file alone.
//!
//! Everything is checked before the proxy starts; a broken file is refused
//! with the file's name and the path of the offending field, as Envoy
//! refuses to start on one.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, ConfigSource, Node};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use prost::{Message, Name};
use prost_reflect::DynamicMessage;

use crate::resources::{Origin, Resource, Resources};
use crate::runtime::{self, ConfigError};
use crate::xds::Protocol;

/// What a bootstrap file says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StaticConfig {
    /// The file read (`None` for the empty default).
    pub path: Option<PathBuf>,
    /// The file as read, for the config dump's `BootstrapConfigDump`.
    pub bootstrap: Bootstrap,
    /// The static listeners, clusters and secrets, all checked.
    pub resources: Resources,
    /// `node`, if the file has one.
    pub node: Option<Node>,
    /// `admin.address`, if the file has one.
    pub admin_address: Option<SocketAddr>,
    /// `dynamic_resources`, if the file uses a control plane.
    pub ads: Option<AdsSource>,
}

/// Where `dynamic_resources` says config comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdsSource {
    /// The control plane (`http://host:port`).
    pub address: String,
    /// `GRPC` / `AGGREGATED_GRPC` or `DELTA_GRPC` / `AGGREGATED_DELTA_GRPC`.
    pub protocol: Protocol,
    /// `cds_config` is set.
    pub cds: bool,
    /// `lds_config` is set.
    pub lds: bool,
}

/// Why a bootstrap file was refused. Each names the file, and where it
/// applies the field.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file could not be read.
    #[error("bootstrap {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid YAML or JSON.
    #[error("bootstrap {path}: not valid {format}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// `YAML` or `JSON`.
        format: &'static str,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// A field does not fit Envoy's bootstrap schema.
    #[error("bootstrap {path}: field {field}: {reason}")]
    Field {
        /// The file.
        path: String,
        /// The field path, e.g. `static_resources.listeners[0].address`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A static resource failed the same check xDS resources pass.
    #[error("bootstrap {path}: {field}: {error}")]
    Resource {
        /// The file.
        path: String,
        /// Which resource, e.g. `static_resources.clusters[1]`.
        field: String,
        /// The check's error (resource, field, reason).
        error: Box<ConfigError>,
    },
}

// === impl StaticConfig ===

impl StaticConfig {
    /// Reads and checks a bootstrap file; `.json` files are JSON, anything
    /// else YAML.
    pub fn load(path: &Path) -> Result<Self, BootstrapError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
            path: shown.clone(),
            source,
        })?;
        let json = path.extension().is_some_and(|e| e == "json");
        let mut config = Self::parse(&text, &shown, json)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses bootstrap text; `name` is how errors call the file.
    pub fn parse(text: &str, name: &str, json: bool) -> Result<Self, BootstrapError> {
        let value: serde_json::Value = if json {
            serde_json::from_str(text).map_err(|e| BootstrapError::Syntax {
                path: name.into(),
                format: "JSON",
                reason: e.to_string(),
            })?
        } else {
            serde_saphyr::from_str(text).map_err(|e| BootstrapError::Syntax {
                path: name.into(),
                format: "YAML",
                reason: e.to_string(),
            })?
        };
        let bootstrap = to_bootstrap(value, name)?;
        Self::from_bootstrap(bootstrap, name)
    }

    /// Checks a decoded bootstrap.
    pub fn from_bootstrap(bootstrap: Bootstrap, name: &str) -> Result<Self, BootstrapError> {
        let mut resources = Resources::default();
        let statics = bootstrap.static_resources.clone().unwrap_or_default();
        let all = statics
            .listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    format!("static_resources.listeners[{i}]"),
                    Resource::Listener(Box::new(l)),
                )
            })
            .chain(statics.clusters.into_iter().enumerate().map(|(i, c)| {
                (
                    format!("static_resources.clusters[{i}]"),
                    Resource::Cluster(Box::new(c)),
                )
            }))
            .chain(statics.secrets.into_iter().enumerate().map(|(i, s)| {
                (
                    format!("static_resources.secrets[{i}]"),
                    Resource::Secret(s),
                )
            }));
        for (field, resource) in all {
            let refuse = |error: ConfigError| BootstrapError::Resource {
                path: name.into(),
                field: field.clone(),
                error: Box::new(error),
            };
            let kind = crate::xds::decode::kind(resource.resource_type());
            if resource.name().is_empty() {
                return Err(refuse(ConfigError {
                    kind,
                    name: String::new(),
                    field: "name".into(),
                    reason: "must not be empty".into(),
                }));
            }
            if resources
                .names(resource.resource_type())
                .iter()
                .any(|n| n == resource.name())
            {
                return Err(refuse(ConfigError {
                    kind,
                    name: resource.name().into(),
                    field: "name".into(),
                    reason: "used twice; static resource names must be unique".into(),
                }));
            }
            runtime::check(&resource).map_err(refuse)?;
            resources.insert(resource, Origin::Static);
        }
        let admin_address = bootstrap
            .admin
            .as_ref()
            .and_then(|a| a.address.as_ref())
            .map(|a| socket_addr(a, name, "admin.address"))
            .transpose()?;
        let ads = ads_source(&bootstrap, &resources, name)?;
        Ok(Self {
            path: None,
            node: bootstrap.node.clone(),
            bootstrap,
            resources,
            admin_address,
            ads,
        })
    }
}

/// proto3 JSON value to `Bootstrap`, naming the field that does not fit.
fn to_bootstrap(value: serde_json::Value, name: &str) -> Result<Bootstrap, BootstrapError> {
    let field_error = |field: String, reason: String| BootstrapError::Field {
        path: name.into(),
        field,
        reason,
    };
    let pool = mesh_api::xds::json::pool()
        .map_err(|e| field_error("(descriptors)".into(), e.to_string()))?;
    let desc = pool
        .get_message_by_name(&Bootstrap::full_name())
        .ok_or_else(|| field_error("(descriptors)".into(), "Bootstrap type missing".into()))?;
    let mut track = serde_path_to_error::Track::new();
    let result = DynamicMessage::deserialize(
        desc,
        serde_path_to_error::Deserializer::new(value, &mut track),
    );
    let dynamic = match result {
        Ok(d) => d,
        Err(e) => {
            let path = track.path().to_string();
            let field = if path.is_empty() || path == "." {
                "(top level)".to_string()
            } else {
                path
            };
            return Err(field_error(field, e.to_string()));
        }
    };
    Bootstrap::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| field_error("(top level)".into(), e.to_string()))
}

fn socket_addr(addr: &Address, name: &str, field: &str) -> Result<SocketAddr, BootstrapError> {
    let bad = |reason: String| BootstrapError::Field {
        path: name.into(),
        field: field.into(),
        reason,
    };
    let Some(AddressKind::SocketAddress(sa)) = &addr.address else {
        return Err(bad("only socket_address is supported".into()));
    };
    let ip: IpAddr = sa
        .address
        .parse()
        .map_err(|_| bad(format!("{:?} is not an IP address", sa.address)))?;
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => {
            u16::try_from(p).map_err(|_| bad(format!("port {p} is out of range")))?
        }
        _ => return Err(bad("port_value is required".into())),
    };
    Ok(SocketAddr::new(ip, port))
}

/// `dynamic_resources`, if any, as the control plane to reach.
fn ads_source(
    bootstrap: &Bootstrap,
    resources: &Resources,
    name: &str,
) -> Result<Option<AdsSource>, BootstrapError> {
    let Some(dynamic) = &bootstrap.dynamic_resources else {
        return Ok(None);
    };
    let bad = |field: &str, reason: String| BootstrapError::Field {
        path: name.into(),
        field: field.into(),
        reason,
    };
    for (field, source) in [
        ("dynamic_resources.cds_config", &dynamic.cds_config),
        ("dynamic_resources.lds_config", &dynamic.lds_config),
    ] {
        if let Some(ConfigSource {
            config_source_specifier: Some(spec),
            ..
        }) = source
            && !matches!(spec, ConfigSourceSpecifier::Ads(_))
        {
            return Err(bad(
                field,
                "only the aggregated source is supported; write `ads: {}`".into(),
            ));
        }
    }
    let cds = dynamic.cds_config.is_some();
    let lds = dynamic.lds_config.is_some();
    let Some(ads) = &dynamic.ads_config else {
        if cds || lds {
            return Err(bad(
                "dynamic_resources.ads_config",
                "cds_config/lds_config use ADS but ads_config is missing".into(),
            ));
        }
        return Ok(None);
    };
    let protocol = match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc | ApiType::AggregatedGrpc) => Protocol::Sotw,
        Ok(ApiType::DeltaGrpc | ApiType::AggregatedDeltaGrpc) => Protocol::Delta,
        _ => {
            return Err(bad(
                "dynamic_resources.ads_config.api_type",
                "must be GRPC or DELTA_GRPC".into(),
            ));
        }
    };
    let field = "dynamic_resources.ads_config.grpc_services[0]";
    let service = ads
        .grpc_services
        .first()
        .ok_or_else(|| bad(field, "one gRPC service is required".into()))?;
    let address = match &service.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(g)) => {
            let cluster = resources.clusters.get(&g.cluster_name).ok_or_else(|| {
                bad(
                    &format!("{field}.envoy_grpc.cluster_name"),
                    format!(
                        "no static cluster named {:?}; add it to static_resources.clusters",
                        g.cluster_name
                    ),
                )
            })?;
            cluster_address(&cluster.resource).ok_or_else(|| {
                bad(
                    &format!("{field}.envoy_grpc.cluster_name"),
                    format!(
                        "static cluster {:?} has no load_assignment endpoint with a socket address",
                        g.cluster_name
                    ),
                )
            })?
        }
        Some(TargetSpecifier::GoogleGrpc(g)) if !g.target_uri.is_empty() => g.target_uri.clone(),
        _ => {
            return Err(bad(
                field,
                "envoy_grpc.cluster_name or google_grpc.target_uri is required".into(),
            ));
        }
    };
    Ok(Some(AdsSource {
        address,
        protocol,
        cds,
        lds,
    }))
}

/// `http://host:port` of a cluster's first endpoint.
fn cluster_address(cluster: &Cluster) -> Option<String> {
    let endpoint = cluster
        .load_assignment
        .as_ref()?
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .find_map(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
            _ => None,
        })?;
    let Some(AddressKind::SocketAddress(sa)) = &endpoint.address else {
        return None;
    };
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return None;
    };
    let host = if sa.address.contains(':') {
        format!("[{}]", sa.address)
    } else {
        sa.address.clone()
    };
    Some(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway bootstrap the integration tests use too, with its
    /// control plane (tests/fixtures/).
    const GATEWAY: &str = concat!(
        include_str!("../tests/fixtures/bootstrap.yaml"),
        include_str!("../tests/fixtures/bootstrap_ads.yaml")
    );

    #[test]
    fn reads_an_envoy_bootstrap() {
        let c = StaticConfig::parse(GATEWAY, "gw.yaml", false).unwrap();
        assert_eq!(
            c.ads,
            Some(AdsSource {
                address: "http://127.0.0.1:15010".into(),
                protocol: Protocol::Delta,
                cds: true,
                lds: true,
            })
        );
        assert_eq!(c.admin_address, Some("127.0.0.1:15000".parse().unwrap()));
        assert_eq!(
            c.resources.names(mesh_api::xds::ResourceType::Listener),
            vec!["static_http"]
        );
        assert_eq!(c.resources.clusters["xds-grpc"].origin, Origin::Static);
        assert!(c.node.unwrap().id.starts_with("router~"));
    }

    #[test]
    fn a_wrong_field_is_named_with_the_file() {
        let text = GATEWAY.replace("port_value: 18080", "port_value: eighty");
        let err = StaticConfig::parse(&text, "gw.yaml", false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("bootstrap gw.yaml: field "), "{msg}");
        assert!(
            msg.contains("static_resources.listeners[0].address"),
            "{msg}"
        );
    }

    #[test]
    fn an_ads_cluster_that_does_not_exist_is_refused() {
        let text = GATEWAY.replace("cluster_name: xds-grpc}", "cluster_name: nowhere}");
        let err = StaticConfig::parse(&text, "gw.yaml", false).unwrap_err();
        assert!(err.to_string().contains("\"nowhere\""), "{err}");
        assert!(err.to_string().contains("envoy_grpc.cluster_name"), "{err}");
    }

    #[test]
    fn yaml_syntax_errors_say_where() {
        let err = StaticConfig::parse("node: [", "x.yaml", false).unwrap_err();
        assert!(matches!(err, BootstrapError::Syntax { .. }), "{err}");
    }

    #[test]
    fn no_dynamic_resources_means_no_control_plane() {
        let c = StaticConfig::parse("static_resources: {}", "s.yaml", false).unwrap();
        assert_eq!(c.ads, None);
    }
}
