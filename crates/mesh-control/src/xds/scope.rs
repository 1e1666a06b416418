//! What one proxy may see and which policies apply to it: services visible
//! through `exportTo` and narrowed by the applicable `Sidecar` egress hosts,
//! the DestinationRule for a host (Istio's lookup order: the proxy's
//! namespace, then the service's, then the root namespace), and the
//! VirtualServices bound to the mesh or to a gateway.

use std::sync::Arc;

use mesh_api::networking::{DestinationRule, Gateway, Sidecar, VirtualService};

use crate::model::{ExportTo, Service};
use crate::proxy::{ProxyInfo, ProxyRole};
use crate::snapshot::{Snapshot, name_of, namespace_of};

/// A proxy's view of a snapshot.
pub struct ProxyScope<'a> {
    /// The snapshot.
    pub snapshot: &'a Snapshot,
    /// The proxy.
    pub proxy: &'a ProxyInfo,
    /// The Sidecar resource that applies, if any.
    pub sidecar: Option<&'a Sidecar>,
    services: Vec<&'a Arc<Service>>,
}

/// Resolves a host as written in namespace `ns` to a fully qualified name:
/// a name without dots is a Kubernetes service in `ns`.
pub fn resolve_host(host: &str, ns: &str, domain: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_string()
    } else {
        format!("{host}.{ns}.svc.{domain}")
    }
}

/// Whether a host pattern (`*.example.com`, `*`, exact) matches a host.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

fn selector_matches(
    labels: &std::collections::BTreeMap<String, String>,
    proxy: &ProxyInfo,
) -> bool {
    labels.iter().all(|(k, v)| proxy.labels.get(k) == Some(v))
}

impl<'a> ProxyScope<'a> {
    /// Computes the view.
    pub fn new(snapshot: &'a Snapshot, proxy: &'a ProxyInfo) -> Self {
        let sidecar = find_sidecar(snapshot, proxy);
        let services = snapshot
            .registry
            .services
            .values()
            .filter(|s| s.export_to.visible_to(&proxy.namespace) || s.namespace == proxy.namespace)
            .filter(|s| {
                sidecar.is_none_or(|sc| sidecar_allows(sc, namespace_of(sc), s, &proxy.namespace))
            })
            .collect();
        Self {
            snapshot,
            proxy,
            sidecar,
            services,
        }
    }

    /// Services this proxy may reach, sorted by host name.
    pub fn services(&self) -> &[&'a Arc<Service>] {
        &self.services
    }

    /// A visible service by host name.
    pub fn service(&self, hostname: &str) -> Option<&'a Arc<Service>> {
        self.services
            .iter()
            .copied()
            .find(|s| s.hostname == hostname)
    }

    /// Resolves a host written in namespace `ns`.
    pub fn resolve(&self, host: &str, ns: &str) -> String {
        resolve_host(host, ns, &self.snapshot.domain)
    }

    /// The DestinationRule for `hostname`, looked up as Istio does: the
    /// proxy's namespace first, then the service's namespace, then the root
    /// namespace; exact host beats wildcard; exportTo is honoured.
    pub fn destination_rule(&self, hostname: &str) -> Option<&'a DestinationRule> {
        let service_ns = self.service(hostname).map(|s| s.namespace.as_str());
        let root = self.snapshot.root_namespace();
        let candidates = |ns: &str| -> Vec<&'a DestinationRule> {
            self.snapshot
                .destination_rules
                .iter()
                .map(Arc::as_ref)
                .filter(|dr| {
                    let dr_ns = namespace_of(*dr);
                    dr_ns == ns
                        && (dr_ns == self.proxy.namespace
                            || ExportTo::parse(&dr.spec.export_to, dr_ns)
                                .visible_to(&self.proxy.namespace))
                        && dr.spec.workload_selector.as_ref().is_none_or(|ws| {
                            dr_ns == self.proxy.namespace
                                && selector_matches(&ws.match_labels, self.proxy)
                        })
                })
                .collect()
        };
        for ns in [Some(self.proxy.namespace.as_str()), service_ns, Some(root)]
            .into_iter()
            .flatten()
        {
            let mut exact = None;
            let mut wildcard: Option<&DestinationRule> = None;
            for dr in candidates(ns) {
                let host = self.resolve(&dr.spec.host, ns);
                if host == hostname {
                    exact = exact.or(Some(dr));
                } else if host_matches(&host, hostname) {
                    // The most specific (longest) wildcard wins.
                    if wildcard.is_none_or(|w| w.spec.host.len() < dr.spec.host.len()) {
                        wildcard = Some(dr);
                    }
                }
            }
            if let Some(dr) = exact.or(wildcard) {
                return Some(dr);
            }
        }
        None
    }

    /// VirtualServices that apply to this proxy: for a sidecar, those bound
    /// to the `mesh` gateway (no `gateways` or `mesh` listed) and visible to
    /// its namespace; for a gateway, those bound to `gateway`.
    pub fn mesh_virtual_services(&self) -> Vec<&'a VirtualService> {
        self.snapshot
            .virtual_services
            .iter()
            .map(Arc::as_ref)
            .filter(|vs| {
                vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
            })
            .filter(|vs| {
                let ns = namespace_of(*vs);
                ns == self.proxy.namespace
                    || ExportTo::parse(&vs.spec.export_to, ns).visible_to(&self.proxy.namespace)
            })
            .collect()
    }

    /// Gateways whose selector picks this proxy (gateway role only).
    pub fn gateways(&self) -> Vec<&'a Gateway> {
        if self.proxy.role != ProxyRole::Router {
            return Vec::new();
        }
        self.snapshot
            .gateways
            .iter()
            .map(Arc::as_ref)
            .filter(|g| {
                !g.spec.selector.is_empty() && selector_matches(&g.spec.selector, self.proxy)
            })
            .collect()
    }

    /// VirtualServices bound to a gateway (by `name` in its own namespace or
    /// `namespace/name`).
    pub fn gateway_virtual_services(&self, gateway: &Gateway) -> Vec<&'a VirtualService> {
        let gw_ns = namespace_of(gateway);
        let gw_name = name_of(gateway);
        let full = format!("{gw_ns}/{gw_name}");
        self.snapshot
            .virtual_services
            .iter()
            .map(Arc::as_ref)
            .filter(|vs| {
                let vs_ns = namespace_of(*vs);
                vs.spec
                    .gateways
                    .iter()
                    .any(|g| *g == full || (g == gw_name && vs_ns == gw_ns))
            })
            .collect()
    }
}

fn find_sidecar<'a>(snapshot: &'a Snapshot, proxy: &ProxyInfo) -> Option<&'a Sidecar> {
    if proxy.role != ProxyRole::Sidecar {
        return None;
    }
    let in_ns = |ns: &str| -> Vec<&'a Sidecar> {
        snapshot
            .sidecars
            .iter()
            .map(Arc::as_ref)
            .filter(|s| namespace_of(*s) == ns)
            .collect()
    };
    let selected = in_ns(&proxy.namespace).into_iter().find(|s| {
        s.spec
            .workload_selector
            .as_ref()
            .is_some_and(|ws| !ws.labels.is_empty() && selector_matches(&ws.labels, proxy))
    });
    let no_selector = |s: &&Sidecar| {
        s.spec
            .workload_selector
            .as_ref()
            .is_none_or(|ws| ws.labels.is_empty())
    };
    selected
        .or_else(|| in_ns(&proxy.namespace).into_iter().find(no_selector))
        .or_else(|| {
            in_ns(snapshot.root_namespace())
                .into_iter()
                .find(no_selector)
        })
}

/// Whether a Sidecar's egress hosts (`ns/host`) let a proxy in `proxy_ns`
/// see `service`. Port-specific egress listeners are treated like the
/// catch-all here: any listener admitting the host admits it.
fn sidecar_allows(sidecar: &Sidecar, sidecar_ns: &str, service: &Service, proxy_ns: &str) -> bool {
    if sidecar.spec.egress.is_empty() {
        return true;
    }
    sidecar
        .spec
        .egress
        .iter()
        .flat_map(|e| e.hosts.iter())
        .any(|h| {
            let Some((ns, host)) = h.split_once('/') else {
                return false;
            };
            let ns_ok = match ns {
                "*" => true,
                "." => service.namespace == proxy_ns || service.namespace == sidecar_ns,
                "~" => false,
                other => service.namespace == other,
            };
            ns_ok && (host == "*" || host_matches(host, &service.hostname) || host == service.name)
        })
}
