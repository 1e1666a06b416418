//! Gateway route configurations (`http.<port>`, `https.<port>.<portName>.
//! <gateway>.<ns>`): one virtual host per host served, where a host is a
//! VirtualService host that overlaps a server host (the more specific of
//! the two). Requests for any other host get Envoy's 404; there is no
//! default route on a gateway. The hosts of an `httpsRedirect` server get
//! a redirecting virtual host whether or not a VirtualService serves them.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteConfiguration, VirtualHost, virtual_host,
};
use envoy_types::pb::google::protobuf::BoolValue;

use super::http::{RouteContext, virtual_service_routes};
use crate::snapshot::{name_of, namespace_of};
use crate::xds::ProxyScope;
use crate::xds::listener::{ServerKind, gateway_route_name, server_host, server_kind, server_port};
use crate::xds::scope::host_matches;

struct HostEntry {
    routes: Vec<Route>,
    seen: BTreeSet<(String, String)>,
    require_tls: bool,
}

pub(super) fn gateway_route_config(
    scope: &ProxyScope<'_>,
    name: &str,
    clusters: &BTreeSet<String>,
) -> RouteConfiguration {
    let mut hosts: BTreeMap<String, HostEntry> = BTreeMap::new();
    let mut vhost_port = 0;
    for gw in scope.gateways() {
        for server in &gw.spec.servers {
            let Some(port) = server_port(server) else {
                continue;
            };
            if !matches!(
                server_kind(server),
                ServerKind::Http | ServerKind::HttpsTerminated
            ) || gateway_route_name(gw, server, scope.gateway_bind_port(port)) != name
            {
                continue;
            }
            vhost_port = port;
            let https_redirect = server
                .tls
                .as_ref()
                .and_then(|t| t.https_redirect)
                .unwrap_or(false);
            let ctx = RouteContext {
                scope,
                port,
                gateway: Some(gw),
                clusters,
            };
            for vs in scope.gateway_virtual_services(gw) {
                if vs.spec.http.is_empty() {
                    continue;
                }
                let vs_key = (namespace_of(vs).to_string(), name_of(vs).to_string());
                let mut routes = None;
                for vs_host in &vs.spec.hosts {
                    let vs_host = if vs_host == "*" {
                        vs_host.clone()
                    } else {
                        scope.resolve(vs_host, namespace_of(vs))
                    };
                    for sh in server.hosts.iter().map(|h| server_host(h)) {
                        let effective = if host_matches(sh, &vs_host) {
                            vs_host.clone()
                        } else if host_matches(&vs_host, sh) {
                            sh.to_string()
                        } else {
                            continue;
                        };
                        let entry = hosts.entry(effective).or_insert_with(|| HostEntry {
                            routes: Vec::new(),
                            seen: BTreeSet::new(),
                            require_tls: false,
                        });
                        entry.require_tls |= https_redirect;
                        // Several VirtualServices for one host are merged in
                        // order, each once (Istio's gateway merge).
                        if entry.seen.insert(vs_key.clone()) {
                            let r = routes.get_or_insert_with(|| virtual_service_routes(&ctx, vs));
                            entry.routes.extend(r.iter().cloned());
                        }
                    }
                }
            }
            // A redirecting server redirects its hosts even where no
            // VirtualService serves them (Istio adds such virtual hosts).
            if https_redirect {
                for sh in server.hosts.iter().map(|h| server_host(h)) {
                    hosts
                        .entry(sh.to_string())
                        .or_insert_with(|| HostEntry {
                            routes: Vec::new(),
                            seen: BTreeSet::new(),
                            require_tls: true,
                        })
                        .require_tls = true;
                }
            }
        }
    }
    let mut virtual_hosts: Vec<VirtualHost> = hosts
        .into_iter()
        .map(|(host, entry)| VirtualHost {
            name: format!("{host}:{vhost_port}"),
            domains: if host == "*" {
                vec!["*".into()]
            } else {
                vec![host.clone(), format!("{host}:{vhost_port}")]
            },
            routes: entry.routes,
            require_tls: if entry.require_tls {
                virtual_host::TlsRequirementType::All as i32
            } else {
                0
            },
            ..Default::default()
        })
        .collect();
    if virtual_hosts.is_empty() {
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{vhost_port}"),
            domains: vec!["*".into()],
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.into(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}
