//! What one proxy may see and which policies apply to it: services visible
//! through `exportTo` and narrowed by the applicable `Sidecar` egress hosts,
//! the DestinationRule for a host (Istio's lookup order: the proxy's
//! namespace, then the service's, then the root namespace), and the
//! VirtualServices bound to the mesh or to a gateway.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

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
    /// Visible services and their index, built on first use (inbound-only
    /// translation never needs them).
    services: OnceLock<VisibleServices<'a>>,
    /// DestinationRules that may apply to this proxy, by namespace, hosts
    /// resolved (built once: lookups happen per cluster and per route).
    destination_rules: OnceLock<HashMap<&'a str, NamespaceRules<'a>>>,
    /// The proxy's locality, computed on first use (it scans endpoints).
    locality: OnceLock<crate::model::Locality>,
    /// Mesh-bound VirtualServices by resolved host, built on first use.
    mesh_vs_index: OnceLock<HostIndex<'a>>,
}

/// VirtualServices by the hosts they cover, resolved, in snapshot order.
#[derive(Default)]
struct HostIndex<'a> {
    exact: HashMap<String, Vec<&'a VirtualService>>,
    /// `(pattern, vs)` for wildcard hosts.
    wildcard: Vec<(String, &'a VirtualService)>,
}

/// The services a proxy may reach, sorted by host name, and their position
/// by host name.
struct VisibleServices<'a> {
    list: Vec<&'a Arc<Service>>,
    index: HashMap<&'a str, usize>,
}

/// The DestinationRules of one namespace that this proxy may use.
#[derive(Default)]
struct NamespaceRules<'a> {
    /// By resolved exact host; the first (oldest) wins, as in Istio.
    exact: HashMap<String, &'a DestinationRule>,
    /// Wildcard hosts (`*.example.com`, `*`) with their resolved pattern.
    wildcard: Vec<(String, &'a DestinationRule)>,
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
    /// Computes the view. Cheap: what needs a scan of the snapshot is built
    /// on first use.
    pub fn new(snapshot: &'a Snapshot, proxy: &'a ProxyInfo) -> Self {
        Self {
            sidecar: find_sidecar(snapshot, proxy),
            snapshot,
            proxy,
            services: OnceLock::new(),
            destination_rules: OnceLock::new(),
            locality: OnceLock::new(),
            mesh_vs_index: OnceLock::new(),
        }
    }

    fn visible(&self) -> &VisibleServices<'a> {
        self.services.get_or_init(|| {
            let (snapshot, proxy, sidecar) = (self.snapshot, self.proxy, self.sidecar);
            let list = snapshot
                .registry
                .services
                .values()
                .filter(|s| {
                    s.export_to.visible_to(&proxy.namespace) || s.namespace == proxy.namespace
                })
                .filter(|s| {
                    sidecar
                        .is_none_or(|sc| sidecar_allows(sc, namespace_of(sc), s, &proxy.namespace))
                })
                .collect::<Vec<&Arc<Service>>>();
            let index = list
                .iter()
                .enumerate()
                .map(|(i, s)| (s.hostname.as_str(), i))
                .collect();
            VisibleServices { list, index }
        })
    }

    /// The proxy's locality, computed once with `compute`.
    pub(crate) fn locality_with(
        &self,
        compute: impl FnOnce() -> crate::model::Locality,
    ) -> &crate::model::Locality {
        self.locality.get_or_init(compute)
    }

    /// Services this proxy may reach, sorted by host name.
    pub fn services(&self) -> &[&'a Arc<Service>] {
        &self.visible().list
    }

    /// A visible service by host name.
    pub fn service(&self, hostname: &str) -> Option<&'a Arc<Service>> {
        let visible = self.visible();
        visible
            .index
            .get(hostname)
            .and_then(|&i| visible.list.get(i))
            .copied()
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
        for ns in [Some(self.proxy.namespace.as_str()), service_ns, Some(root)]
            .into_iter()
            .flatten()
        {
            let rules = self
                .destination_rules
                .get_or_init(|| index_destination_rules(self.snapshot, self.proxy));
            let Some(rules) = rules.get(ns) else {
                continue;
            };
            if let Some(dr) = rules.exact.get(hostname) {
                return Some(dr);
            }
            // The most specific (longest) wildcard wins; the first of equals.
            let mut wildcard: Option<&DestinationRule> = None;
            for (host, dr) in &rules.wildcard {
                if host_matches(host, hostname)
                    && wildcard.is_none_or(|w| w.spec.host.len() < dr.spec.host.len())
                {
                    wildcard = Some(dr);
                }
            }
            if wildcard.is_some() {
                return wildcard;
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

    /// The mesh-bound VirtualServices whose hosts cover `hostname`, in
    /// snapshot order, exact hosts first, then wildcards.
    pub fn mesh_virtual_services_for(&self, hostname: &str) -> Vec<&'a VirtualService> {
        let index = self.mesh_vs_index.get_or_init(|| {
            let mut index = HostIndex::default();
            for vs in self.mesh_virtual_services() {
                let ns = namespace_of(vs);
                let hosts: std::collections::BTreeSet<String> =
                    vs.spec.hosts.iter().map(|h| self.resolve(h, ns)).collect();
                for host in hosts {
                    if host.starts_with('*') {
                        index.wildcard.push((host, vs));
                    } else {
                        index.exact.entry(host).or_default().push(vs);
                    }
                }
            }
            index
        });
        let mut out: Vec<&'a VirtualService> =
            index.exact.get(hostname).cloned().unwrap_or_default();
        for (pattern, vs) in &index.wildcard {
            if host_matches(pattern, hostname) && !out.iter().any(|o| std::ptr::eq(*o, *vs)) {
                out.push(vs);
            }
        }
        out
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

    /// The port a gateway listener for server port `port` binds: as Istio
    /// does, when a Service selecting this gateway proxy exposes `port`,
    /// the listener binds that Service port's target port (a Service port
    /// 80 with `targetPort: 8080` gives listener `0.0.0.0_8080` and routes
    /// `http.8080`); otherwise `port` itself.
    pub fn gateway_bind_port(&self, port: u16) -> u16 {
        self.proxy
            .ip_addresses
            .iter()
            .flat_map(|ip| self.snapshot.endpoints_at(ip))
            .find(|(_, ep)| ep.service_port == port)
            .map_or(port, |(_, ep)| ep.port)
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

/// The DestinationRules `proxy` may use (exportTo, workloadSelector), by
/// namespace, in snapshot order.
fn index_destination_rules<'a>(
    snapshot: &'a Snapshot,
    proxy: &ProxyInfo,
) -> HashMap<&'a str, NamespaceRules<'a>> {
    let mut out: HashMap<&'a str, NamespaceRules<'a>> = HashMap::new();
    for dr in snapshot.destination_rules.iter().map(Arc::as_ref) {
        let ns = namespace_of(dr);
        let visible = ns == proxy.namespace
            || ExportTo::parse(&dr.spec.export_to, ns).visible_to(&proxy.namespace);
        let selects =
            dr.spec.workload_selector.as_ref().is_none_or(|ws| {
                ns == proxy.namespace && selector_matches(&ws.match_labels, proxy)
            });
        if !visible || !selects {
            continue;
        }
        let host = resolve_host(&dr.spec.host, ns, &snapshot.domain);
        let rules = out.entry(ns).or_default();
        if host.starts_with('*') {
            rules.wildcard.push((host, dr));
        } else {
            rules.exact.entry(host).or_insert(dr);
        }
    }
    out
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
