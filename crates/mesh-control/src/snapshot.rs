//! An immutable, versioned view of everything the control plane knows: the
//! registry plus every Istio object, normalised (namespace always set,
//! sorted by namespace/name so translation is deterministic). A change to
//! any input builds a new snapshot; translation and the ADS server only ever
//! read snapshots, through `Arc`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::Secret;
use mesh_api::MeshObject;
use mesh_api::mesh_config::MeshConfig;
use mesh_api::mesh_networks::MeshNetworks;
use mesh_api::networking::{DestinationRule, Gateway, Sidecar, VirtualService};
use mesh_api::object::Loaded;
use mesh_api::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use mesh_api::telemetry::Telemetry;
use mesh_api::wellknown::DEFAULT_DOMAIN_SUFFIX;

use crate::model::{Endpoint, Registry, build_registry};

/// Everything translation reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Monotonic version, bumped on every change.
    pub version: u64,
    /// Mesh-wide settings.
    pub mesh: Arc<MeshConfig>,
    /// The networks of the `meshNetworks` key beside MeshConfig.
    pub mesh_networks: Arc<MeshNetworks>,
    /// DNS suffix of Kubernetes services (`cluster.local`).
    pub domain: String,
    /// Services and endpoints.
    pub registry: Registry,
    /// VirtualServices.
    pub virtual_services: Vec<Arc<VirtualService>>,
    /// DestinationRules.
    pub destination_rules: Vec<Arc<DestinationRule>>,
    /// Gateways.
    pub gateways: Vec<Arc<Gateway>>,
    /// Sidecars.
    pub sidecars: Vec<Arc<Sidecar>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    /// RequestAuthentications.
    pub request_authentications: Vec<Arc<RequestAuthentication>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    /// Telemetry resources.
    pub telemetries: Vec<Arc<Telemetry>>,
    /// Secrets (gateway `credentialName` certificates).
    pub secrets: Vec<Arc<Secret>>,
    /// Key sets fetched for RequestAuthentication `jwksUri`s, by URI.
    pub jwks: Arc<std::collections::BTreeMap<String, String>>,
    /// Registry endpoints by address, built on first use: every proxy's
    /// inbound ports and locality are looked up by its IPs.
    pub by_ip: IpIndex,
}

/// Endpoints by IP: `(service host, index in registry.endpoints[host])`.
#[derive(Clone, Debug, Default)]
pub struct IpIndex(OnceLock<HashMap<IpAddr, Vec<(String, usize)>>>);

/// How a snapshot differs from the one before it, as far as translation
/// cares: the ADS server rebuilds only the resource types a change can
/// affect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Only endpoints of these EDS services (host names) changed: only
    /// their assignments (and proxies' inbound ports, which are part of
    /// their shape) can differ.
    Endpoints(Arc<std::collections::BTreeSet<String>>),
    /// Only VirtualServices changed: only listeners and routes can differ.
    Routing,
    /// Anything else: translate everything again.
    Full,
}

/// The namespace of any Kubernetes-style object; snapshots always set it.
pub fn namespace_of<K: kube::Resource>(obj: &K) -> &str {
    obj.meta().namespace.as_deref().unwrap_or("default")
}

/// The name of any Kubernetes-style object.
pub fn name_of<K: kube::Resource>(obj: &K) -> &str {
    obj.meta().name.as_deref().unwrap_or("")
}

impl Snapshot {
    /// Builds a snapshot from loaded objects. Objects that failed to decode
    /// or validate must already have been filtered out (or replaced by their
    /// last good version) by the config store.
    pub fn build<'a>(
        version: u64,
        objects: impl IntoIterator<Item = &'a Loaded> + Clone,
        mesh: MeshConfig,
    ) -> Self {
        let domain = DEFAULT_DOMAIN_SUFFIX.to_string();
        let mut snap = Snapshot {
            version,
            registry: build_registry(objects.clone(), &domain),
            mesh: Arc::new(mesh),
            domain,
            ..Default::default()
        };
        macro_rules! push {
            ($field:ident, $obj:expr, $ns:expr) => {{
                let mut o = (**$obj).clone();
                o.metadata.namespace = Some($ns.to_string());
                snap.$field.push(Arc::new(o));
            }};
        }
        for l in objects {
            let ns = l.header.namespace.as_str();
            match &l.object {
                Some(MeshObject::VirtualService(o)) => push!(virtual_services, o, ns),
                Some(MeshObject::DestinationRule(o)) => push!(destination_rules, o, ns),
                Some(MeshObject::Gateway(o)) => push!(gateways, o, ns),
                Some(MeshObject::Sidecar(o)) => push!(sidecars, o, ns),
                Some(MeshObject::PeerAuthentication(o)) => push!(peer_authentications, o, ns),
                Some(MeshObject::RequestAuthentication(o)) => push!(request_authentications, o, ns),
                Some(MeshObject::AuthorizationPolicy(o)) => push!(authorization_policies, o, ns),
                Some(MeshObject::Telemetry(o)) => push!(telemetries, o, ns),
                Some(MeshObject::Secret(o)) => push!(secrets, o, ns),
                _ => {}
            }
        }
        fn sort<K: kube::Resource>(v: &mut [Arc<K>]) {
            v.sort_by(|a, b| {
                (namespace_of(a.as_ref()), name_of(a.as_ref()))
                    .cmp(&(namespace_of(b.as_ref()), name_of(b.as_ref())))
            });
        }
        sort(&mut snap.virtual_services);
        sort(&mut snap.destination_rules);
        sort(&mut snap.gateways);
        sort(&mut snap.sidecars);
        sort(&mut snap.peer_authentications);
        sort(&mut snap.request_authentications);
        sort(&mut snap.authorization_policies);
        sort(&mut snap.telemetries);
        sort(&mut snap.secrets);
        snap
    }

    /// What changed from `older` to this snapshot.
    pub fn change_since(&self, older: &Snapshot) -> Change {
        let same_policy = self.mesh == older.mesh
            && self.mesh_networks == older.mesh_networks
            && self.domain == older.domain
            && self.destination_rules == older.destination_rules
            && self.gateways == older.gateways
            && self.sidecars == older.sidecars
            && self.peer_authentications == older.peer_authentications
            && self.request_authentications == older.request_authentications
            && self.authorization_policies == older.authorization_policies
            && self.telemetries == older.telemetries
            && self.secrets == older.secrets
            && self.jwks == older.jwks
            && self.registry.services == older.registry.services;
        if !same_policy {
            return Change::Full;
        }
        let same_endpoints = self.registry.endpoints == older.registry.endpoints;
        if self.virtual_services != older.virtual_services {
            return if same_endpoints {
                Change::Routing
            } else {
                Change::Full
            };
        }
        // Endpoints of DNS and passthrough services are inlined in their
        // clusters: a change there changes CDS.
        let changed: std::collections::BTreeSet<String> = self
            .registry
            .endpoints
            .iter()
            .filter(|(host, eps)| older.registry.endpoints.get(*host) != Some(*eps))
            .map(|(host, _)| host)
            .chain(
                older
                    .registry
                    .endpoints
                    .keys()
                    .filter(|h| !self.registry.endpoints.contains_key(*h)),
            )
            .cloned()
            .collect();
        let eds_only = changed.iter().all(|host| {
            self.registry
                .service(host)
                .is_none_or(|s| s.resolution == crate::model::Resolution::ClientSideLb)
        });
        if eds_only {
            Change::Endpoints(Arc::new(changed))
        } else {
            Change::Full
        }
    }

    /// Every registry endpoint at `ip`, with its service's host name.
    pub fn endpoints_at(&self, ip: &IpAddr) -> impl Iterator<Item = (&str, &Endpoint)> {
        let index = self.by_ip.0.get_or_init(|| {
            let mut index: HashMap<IpAddr, Vec<(String, usize)>> = HashMap::new();
            for (host, endpoints) in &self.registry.endpoints {
                for (i, ep) in endpoints.iter().enumerate() {
                    if let Ok(addr) = ep.address.parse() {
                        index.entry(addr).or_default().push((host.clone(), i));
                    }
                }
            }
            index
        });
        index.get(ip).into_iter().flatten().filter_map(|(host, i)| {
            let ep = self.registry.endpoints.get(host)?.get(*i)?;
            Some((host.as_str(), ep))
        })
    }

    /// The `jwksUri`s of RequestAuthentication rules without inline
    /// `jwks`: what the control plane must fetch.
    pub fn jwks_uris(&self) -> std::collections::BTreeSet<String> {
        self.request_authentications
            .iter()
            .flat_map(|p| &p.spec.jwt_rules)
            .filter(|r| r.jwks.is_none())
            .filter_map(|r| r.jwks_uri.clone())
            .collect()
    }

    /// The mesh root namespace.
    pub fn root_namespace(&self) -> &str {
        self.mesh.root_namespace()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  ports: [{name: http, port: 9080}]
  selector: {app: reviews}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-1, namespace: default, labels: {app: reviews}}
status: {podIP: 10.0.0.1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  endpoints: [{address: a.example.com}]
";

    fn snapshot(yaml: &str) -> Snapshot {
        let loaded = mesh_api::load_str("test.yaml", yaml);
        Snapshot::build(1, &loaded, MeshConfig::default())
    }

    #[test]
    fn change_since_names_the_narrowest_rebuild() {
        let base = snapshot(BASE);
        let endpoints = |hosts: &[&str]| {
            Change::Endpoints(Arc::new(hosts.iter().map(|h| h.to_string()).collect()))
        };
        assert_eq!(snapshot(BASE).change_since(&base), endpoints(&[]));
        let pod = format!(
            "{BASE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: reviews-2, namespace: default, labels: {{app: reviews}}}}\nstatus: {{podIP: 10.0.0.2}}\n"
        );
        assert_eq!(
            snapshot(&pod).change_since(&base),
            endpoints(&["reviews.default.svc.cluster.local"])
        );
        let vs = format!(
            "{BASE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: default}}\nspec: {{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews}}}}]}}]}}\n"
        );
        assert_eq!(snapshot(&vs).change_since(&base), Change::Routing);
        assert_eq!(snapshot(&vs).change_since(&snapshot(&pod)), Change::Full);
        let dr = format!(
            "{BASE}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec: {{host: reviews}}\n"
        );
        assert_eq!(snapshot(&dr).change_since(&base), Change::Full);
        // DNS endpoints are inlined in the cluster: CDS changes too.
        let dns = BASE.replace("a.example.com", "b.example.com");
        assert_eq!(snapshot(&dns).change_since(&base), Change::Full);
    }
}
