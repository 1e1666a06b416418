//! What a set of files declares, indexed for the checks: services and
//! their ports (Kubernetes Services and ServiceEntries), gateways, destination
//! rules, sidecars, virtual services and workloads (Pods and Deployment
//! templates) with their labels.

use std::collections::{BTreeMap, BTreeSet};

use mesh_api::object::{Loaded, MeshObject};
use mesh_api::wellknown::DEFAULT_DOMAIN_SUFFIX;

use super::Origin;

/// A service host and the ports it exposes.
#[derive(Clone, Debug, Default)]
pub struct ServiceInfo {
    /// Port numbers.
    pub ports: BTreeSet<u32>,
    /// For Kubernetes services, the pod selector.
    pub selector: Option<BTreeMap<String, String>>,
    /// Namespace of the declaring object.
    pub namespace: String,
}

/// A workload: its namespace and labels.
#[derive(Clone, Debug)]
pub struct Workload {
    /// `Pod name` or `Deployment name`.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
}

/// The indexed view of a set of loaded objects.
pub struct Index<'a> {
    /// Every loaded object.
    pub objects: Vec<(&'a Loaded, Origin)>,
    /// Services by fully-qualified host name.
    pub services: BTreeMap<String, ServiceInfo>,
    /// Workloads (pods, deployment templates).
    pub workloads: Vec<Workload>,
    /// Whether the input declared any workloads at all (checks that need
    /// them stay silent otherwise).
    pub has_workloads: bool,
}

impl<'a> Index<'a> {
    /// Builds the index.
    pub fn new(loaded: &'a [Loaded]) -> Self {
        let mut services: BTreeMap<String, ServiceInfo> = BTreeMap::new();
        let mut workloads = Vec::new();
        for l in loaded {
            let ns = &l.header.namespace;
            match &l.object {
                Some(MeshObject::Service(svc)) => {
                    let host = fqdn(&l.header.name, ns);
                    let spec = svc.spec.clone().unwrap_or_default();
                    let entry = services.entry(host).or_default();
                    entry.namespace = ns.clone();
                    entry.selector = spec.selector.clone();
                    for p in spec.ports.unwrap_or_default() {
                        entry.ports.insert(u32::try_from(p.port).unwrap_or(0));
                    }
                }
                Some(MeshObject::Pod(pod)) => workloads.push(Workload {
                    name: format!("Pod {}", l.header.name),
                    namespace: ns.clone(),
                    labels: pod.metadata.labels.clone().unwrap_or_default(),
                }),
                Some(MeshObject::Deployment(d)) => {
                    let labels = d
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.metadata.as_ref())
                        .and_then(|m| m.labels.clone())
                        .unwrap_or_default();
                    workloads.push(Workload {
                        name: format!("Deployment {}", l.header.name),
                        namespace: ns.clone(),
                        labels,
                    });
                }
                Some(MeshObject::ServiceEntry(se)) => {
                    let ports: BTreeSet<u32> = se.spec.ports.iter().map(|p| p.number).collect();
                    for host in &se.spec.hosts {
                        let entry = services.entry(fqdn(host, ns)).or_default();
                        entry.namespace = ns.clone();
                        entry.ports.extend(ports.iter().copied());
                    }
                }
                _ => {}
            }
        }
        Self {
            objects: loaded.iter().map(|l| (l, Origin::of(l))).collect(),
            has_workloads: !workloads.is_empty(),
            services,
            workloads,
        }
    }

    /// The objects of one variant, with their origins.
    pub fn each<T>(
        &self,
        pick: impl Fn(&'a MeshObject) -> Option<&'a T>,
    ) -> Vec<(&'a Loaded, &'a T, &Origin)> {
        self.objects
            .iter()
            .filter_map(|(l, o)| l.object.as_ref().and_then(&pick).map(|t| (*l, t, o)))
            .collect()
    }

    /// Whether a host (already fully qualified) is declared by a service or
    /// service entry, honouring wildcards on either side.
    pub fn service_for(&self, host: &str) -> Option<&ServiceInfo> {
        if let Some(s) = self.services.get(host) {
            return Some(s);
        }
        self.services
            .iter()
            .find(|(h, _)| hosts_overlap(h, host))
            .map(|(_, s)| s)
    }
}

/// Resolves a short host name the way Istio does: a name without a dot is
/// a Kubernetes service in `namespace`; anything else is taken as given.
pub fn fqdn(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{DEFAULT_DOMAIN_SUFFIX}")
    }
}

/// Whether two host patterns can match a common name (`*.example.com`
/// overlaps `foo.example.com`; `*` overlaps everything).
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    fn covers(pattern: &str, host: &str) -> bool {
        match pattern.strip_prefix('*') {
            Some(suffix) => {
                host.ends_with(suffix)
                    || host.strip_prefix('*').is_some_and(|h| h.ends_with(suffix))
            }
            None => pattern == host,
        }
    }
    covers(a, b) || covers(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_short_names_like_istio() {
        assert_eq!(
            fqdn("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            fqdn("reviews.prod.svc.cluster.local", "default"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(fqdn("*.example.com", "default"), "*.example.com");
    }

    #[test]
    fn wildcard_overlap() {
        assert!(hosts_overlap("*.example.com", "foo.example.com"));
        assert!(hosts_overlap("*", "foo.example.com"));
        assert!(hosts_overlap("*.example.com", "*.foo.example.com"));
        assert!(!hosts_overlap("*.example.com", "example.org"));
        assert!(!hosts_overlap("a.example.com", "b.example.com"));
    }
}
