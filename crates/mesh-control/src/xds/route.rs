//! RDS: route configurations from VirtualServices, named as the listeners
//! reference them: by port for sidecars (`9080`), `<fqdn>:<port>` for a
//! sidecar's sniffed (undeclared-protocol) port, `http.<port>` and
//! `https.<port>.<portName>.<gateway>.<ns>` for gateways.
//!
//! A sidecar's configuration for a port holds one virtual host per visible
//! HTTP service on that port, answering to every name a client in the
//! proxy's namespace may use (`reviews`, `reviews.default`, the VIP, with
//! and without the port), plus Istio's `allow_any` / `block_all` catch-all.
//! The routes of a virtual host come from the first VirtualService whose
//! hosts cover the service ([`http`] translates them), or a default route
//! to the service's cluster with Istio's default retry policy.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};
use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration};
use mesh_api::networking::Gateway;

use super::listener::{allow_any, rds_route_names};
use super::{PASSTHROUGH_CLUSTER, ProxyScope, outbound_cluster_name};
use crate::model::Service;
use crate::proxy::ProxyRole;
use crate::snapshot::{name_of, namespace_of};

mod gateway;
mod http;
mod matches;

#[cfg(test)]
pub(crate) mod tests;

pub(crate) use http::RouteContext;

/// Every route configuration the listeners reference, sorted by name.
pub fn build_routes(
    scope: &ProxyScope<'_>,
    listeners: &[Listener],
    clusters: &[Cluster],
) -> Vec<RouteConfiguration> {
    let known: BTreeSet<String> = clusters.iter().map(|c| c.name.clone()).collect();
    build_routes_known(scope, listeners, &known)
}

/// [`build_routes`] given the names of the proxy's clusters (routes never
/// point at a cluster the proxy lacks).
pub fn build_routes_known(
    scope: &ProxyScope<'_>,
    listeners: &[Listener],
    known: &BTreeSet<String>,
) -> Vec<RouteConfiguration> {
    rds_route_names(listeners)
        .into_iter()
        .filter_map(|name| match scope.proxy.role {
            ProxyRole::Sidecar => match name.parse::<u16>() {
                Ok(port) => Some(sidecar_route_config(scope, &name, port, known)),
                Err(_) => sniffed_route_config(scope, &name, known),
            },
            ProxyRole::Router => Some(gateway::gateway_route_config(scope, &name, known)),
        })
        .collect()
}

/// Whether a match's source conditions select this proxy: `sourceLabels`,
/// `sourceNamespace`, and match-level `gateways` (which must name `mesh`
/// for a sidecar, or the gateway being built).
pub(crate) fn source_matches(
    scope: &ProxyScope<'_>,
    labels: &std::collections::BTreeMap<String, String>,
    source_namespace: Option<&str>,
    gateways: &[String],
    gateway: Option<&Gateway>,
) -> bool {
    let labels_ok = labels
        .iter()
        .all(|(k, v)| scope.proxy.labels.get(k) == Some(v));
    let ns_ok = source_namespace.is_none_or(|ns| ns == scope.proxy.namespace);
    let gw_ok = gateways.is_empty()
        || match gateway {
            None => gateways.iter().any(|g| g == "mesh"),
            Some(gw) => {
                let full = format!("{}/{}", namespace_of(gw), name_of(gw));
                gateways.iter().any(|g| *g == full || g == name_of(gw))
            }
        };
    labels_ok && ns_ok && gw_ok
}

fn sidecar_route_config(
    scope: &ProxyScope<'_>,
    name: &str,
    port: u16,
    clusters: &BTreeSet<String>,
) -> RouteConfiguration {
    let ctx = RouteContext {
        scope,
        port,
        gateway: None,
        clusters,
    };
    let mut used_domains = BTreeSet::new();
    let mut virtual_hosts = Vec::new();
    for svc in scope.services() {
        if !svc.port(port).is_some_and(|p| p.protocol.is_http()) {
            continue;
        }
        // Envoy refuses a configuration that repeats a domain; the first
        // service (by host name) keeps it.
        let domains: Vec<String> = service_domains(svc, port, &scope.proxy.namespace)
            .into_iter()
            .filter(|d| used_domains.insert(d.clone()))
            .collect();
        if domains.is_empty() {
            continue;
        }
        let routes = service_routes(&ctx, svc, port);
        virtual_hosts.push(VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains,
            routes,
            ..Default::default()
        });
    }
    virtual_hosts.push(catch_all_virtual_host(allow_any(scope)));
    RouteConfiguration {
        name: name.into(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// The routes of a sniffed port (`<fqdn>:<port>`): its listener only sees
/// connections to that service's address and port, so one virtual host
/// answers every authority, routed by the service's VirtualService.
fn sniffed_route_config(
    scope: &ProxyScope<'_>,
    name: &str,
    known: &BTreeSet<String>,
) -> Option<RouteConfiguration> {
    let (host, port) = name.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let svc = scope.service(host)?;
    let ctx = RouteContext {
        scope,
        port,
        gateway: None,
        clusters: known,
    };
    let routes = service_routes(&ctx, svc, port);
    Some(RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: name.into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    })
}

/// The routes of `svc` on `port`: its first VirtualService with HTTP
/// routes, else the default route to the service.
fn service_routes(ctx: &RouteContext<'_, '_>, svc: &Service, port: u16) -> Vec<Route> {
    let vs = super::listener::virtual_services_for(ctx.scope, &svc.hostname)
        .into_iter()
        .find(|vs| !vs.spec.http.is_empty());
    match vs {
        Some(vs) => http::virtual_service_routes(ctx, vs),
        None => vec![default_route(ctx, svc, port)],
    }
}

/// The names clients use for a service, as Istio generates them: the
/// FQDN; for Kubernetes services `name.ns.svc`, `name.ns`, and `name` when
/// the client is in the same namespace; every VIP; each also with `:port`.
pub(crate) fn service_domains(svc: &Service, port: u16, proxy_ns: &str) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    let k8s_suffix = format!(".{}.svc.", svc.namespace);
    if let Some(idx) = svc.hostname.find(&k8s_suffix) {
        let short = &svc.hostname[..idx];
        if svc.namespace == proxy_ns {
            names.push(short.to_string());
        }
        names.push(format!("{short}.{}.svc", svc.namespace));
        names.push(format!("{short}.{}", svc.namespace));
    }
    names.extend(svc.addresses.iter().map(|a| match a {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }));
    names
        .into_iter()
        .flat_map(|n| [format!("{n}:{port}"), n].into_iter().rev())
        .collect()
}

/// `allow_any` (ALLOW_ANY: unknown hosts pass through) or `block_all`
/// (REGISTRY_ONLY: 502, as Istio answers).
fn catch_all_virtual_host(allow: bool) -> VirtualHost {
    let action = if allow {
        route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                PASSTHROUGH_CLUSTER.into(),
            )),
            timeout: Some(PbDuration::default()),
            ..Default::default()
        })
    } else {
        route::Action::DirectResponse(DirectResponseAction {
            status: 502,
            ..Default::default()
        })
    };
    VirtualHost {
        name: if allow { "allow_any" } else { "block_all" }.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: if allow { "allow_any" } else { "block_all" }.into(),
            r#match: Some(prefix_match("/")),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
        ..Default::default()
    }
}

/// The route of a service no VirtualService covers: everything to its
/// cluster, no timeout, Istio's default retries.
fn default_route(ctx: &RouteContext<'_, '_>, svc: &Service, port: u16) -> Route {
    let cluster = outbound_cluster_name(port, "", &svc.hostname);
    let action = ctx.single_cluster_action(
        cluster,
        Some(http::default_retry_policy()),
        None,
        Vec::new(),
    );
    Route {
        name: "default".into(),
        r#match: Some(prefix_match("/")),
        action: Some(action),
        ..Default::default()
    }
}
