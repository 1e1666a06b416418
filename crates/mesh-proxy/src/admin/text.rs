//! `/clusters`, `/listeners` and `/server_info` in Envoy's formats: the
//! `name::field::value` text lines scripts grep, and with `?format=json`
//! the `envoy.admin.v3.Clusters` / `Listeners` messages tools parse.
//!
//! Host health comes from EDS (`health_status`) and from outlier
//! detection (`/failed_outlier_check` while a host is ejected); there is
//! no active health checking.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use envoy_types::pb::envoy::admin::v3::{
    ClusterStatus, Clusters, HostHealthStatus, HostStatus, ListenerStatus, Listeners, ServerInfo,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::google::protobuf::Duration;
use prost::Message;

use super::AdminState;
use crate::resources::{Origin, Resources};
use crate::xds::decode::eds_name;

/// One upstream host as `/clusters` shows it.
struct Host {
    address: Address,
    health: i32,
    weight: u32,
    priority: u32,
    locality: Option<Locality>,
    hostname: String,
}

fn wants_json(query: &HashMap<String, String>) -> bool {
    query.get("format").is_some_and(|f| f == "json")
}

fn json_response<M: Message + prost::Name>(msg: &M) -> Response {
    match super::config_dump::envoy_json(msg, true) {
        Ok(v) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&v).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `ip:port` of a socket address (`[v6]:port` for IPv6), or the pipe path.
pub(super) fn address_text(address: &Address) -> String {
    match &address.address {
        Some(AddressKind::SocketAddress(sa)) => {
            let port = match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => p.to_string(),
                Some(PortSpecifier::NamedPort(ref n)) => n.clone(),
                None => "0".into(),
            };
            if sa.address.contains(':') {
                format!("[{}]:{port}", sa.address)
            } else {
                format!("{}:{port}", sa.address)
            }
        }
        Some(AddressKind::Pipe(p)) => format!("unix://{}", p.path),
        Some(AddressKind::EnvoyInternalAddress(_)) => "envoy://internal".into(),
        None => String::new(),
    }
}

/// The hosts of a cluster: its EDS assignment, else its inline one.
fn hosts(resources: &Resources, cluster: &Cluster) -> Vec<Host> {
    let cla: Option<&ClusterLoadAssignment> = match eds_name(cluster) {
        Some(name) => resources.endpoints.get(name).map(|e| &e.resource),
        None => cluster.load_assignment.as_ref(),
    };
    let Some(cla) = cla else {
        return Vec::new();
    };
    cla.endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter().map(move |e| (l, e)))
        .filter_map(|(l, e)| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                return None;
            };
            Some(Host {
                address: ep.address.clone()?,
                health: e.health_status,
                weight: e.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                priority: l.priority,
                locality: l.locality.clone(),
                hostname: ep.hostname.clone(),
            })
        })
        .collect()
}

/// Envoy's `health_flags` text for an EDS health status.
fn health_flags(status: i32) -> &'static str {
    match HealthStatus::try_from(status) {
        Ok(HealthStatus::Unhealthy | HealthStatus::Timeout) => "/failed_eds_health",
        Ok(HealthStatus::Draining) => "/eds_status_draining",
        Ok(HealthStatus::Degraded) => "/degraded_eds_health",
        _ => "healthy",
    }
}

pub(super) async fn clusters(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let resources = state.config.resources.borrow().clone();
    if wants_json(&query) {
        let statuses = resources
            .clusters
            .iter()
            .map(|(name, e)| ClusterStatus {
                name: name.clone(),
                added_via_api: matches!(e.origin, Origin::Dynamic { .. }),
                observability_name: observability_name(&e.resource),
                eds_service_name: eds_name(&e.resource)
                    .filter(|s| *s != name)
                    .unwrap_or_default()
                    .to_string(),
                host_statuses: hosts(&resources, &e.resource)
                    .into_iter()
                    .map(|h| HostStatus {
                        health_status: Some(HostHealthStatus {
                            eds_health_status: h.health,
                            failed_outlier_check: state
                                .outliers
                                .ejected(name)
                                .contains(&address_text(&h.address)),
                            ..Default::default()
                        }),
                        address: Some(h.address),
                        weight: h.weight,
                        hostname: h.hostname,
                        priority: h.priority,
                        locality: h.locality,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        return json_response(&Clusters {
            cluster_statuses: statuses,
        });
    }
    let mut out = String::new();
    for (name, e) in &resources.clusters {
        let _ = writeln!(
            out,
            "{name}::observability_name::{}",
            observability_name(&e.resource)
        );
        let _ = writeln!(
            out,
            "{name}::added_via_api::{}",
            matches!(e.origin, Origin::Dynamic { .. })
        );
        let ejected = state.outliers.ejected(name);
        for h in hosts(&resources, &e.resource) {
            let addr = address_text(&h.address);
            let locality = h.locality.unwrap_or_default();
            let _ = writeln!(out, "{name}::{addr}::hostname::{}", h.hostname);
            let flags = match (health_flags(h.health), ejected.contains(&addr)) {
                (_, false) => health_flags(h.health).to_string(),
                ("healthy", true) => "/failed_outlier_check".to_string(),
                (eds, true) => format!("/failed_outlier_check{eds}"),
            };
            let _ = writeln!(out, "{name}::{addr}::health_flags::{flags}");
            let _ = writeln!(out, "{name}::{addr}::weight::{}", h.weight);
            let _ = writeln!(out, "{name}::{addr}::region::{}", locality.region);
            let _ = writeln!(out, "{name}::{addr}::zone::{}", locality.zone);
            let _ = writeln!(out, "{name}::{addr}::sub_zone::{}", locality.sub_zone);
            let _ = writeln!(out, "{name}::{addr}::canary::false");
            let _ = writeln!(out, "{name}::{addr}::priority::{}", h.priority);
        }
    }
    out.into_response()
}

fn observability_name(cluster: &Cluster) -> String {
    if cluster.alt_stat_name.is_empty() {
        cluster.name.clone()
    } else {
        cluster.alt_stat_name.clone()
    }
}

pub(super) async fn listeners(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let resources = state.config.resources.borrow().clone();
    if wants_json(&query) {
        return json_response(&Listeners {
            listener_statuses: resources
                .listeners
                .iter()
                .map(|(name, e)| ListenerStatus {
                    name: name.clone(),
                    local_address: e.resource.address.clone(),
                    additional_local_addresses: e
                        .resource
                        .additional_addresses
                        .iter()
                        .filter_map(|a| a.address.clone())
                        .collect(),
                })
                .collect(),
        });
    }
    let mut out = String::new();
    for (name, e) in &resources.listeners {
        let addr = e.resource.address.as_ref().map(address_text);
        let _ = writeln!(out, "{name}::{}", addr.unwrap_or_default());
    }
    out.into_response()
}

pub(super) async fn server_info(State(state): State<AdminState>) -> Response {
    let uptime = state.started.0.elapsed();
    let uptime = Duration {
        seconds: i64::try_from(uptime.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    };
    json_response(&ServerInfo {
        version: format!("mesh-proxy/{}", env!("CARGO_PKG_VERSION")),
        state: state.server_state() as i32,
        uptime_current_epoch: Some(uptime),
        uptime_all_epochs: Some(uptime),
        hot_restart_version: "disabled".into(),
        node: state.bootstrap.node.clone(),
        ..Default::default()
    })
}
