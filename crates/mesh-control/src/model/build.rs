//! Builds the [`Registry`] from configuration objects: Kubernetes Services
//! with their EndpointSlices (or, without slices, the Pods their selector
//! picks, so a config directory can list Pods directly), ServiceEntries with
//! inline endpoints or a workload selector, and WorkloadEntries.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::networking::service_entry::{Location as SeLocation, Resolution as SeResolution};
use mesh_api::networking::{ServiceEntry, WorkloadEntry};
use mesh_api::wellknown::{
    ANNOTATION_SIDECAR_STATUS, LABEL_ISTIO_LOCALITY, LABEL_TLS_MODE, LABEL_TOPOLOGY_REGION,
    LABEL_TOPOLOGY_SUBZONE, LABEL_TOPOLOGY_ZONE,
};
use mesh_api::{MeshObject, object::Loaded};

use super::{
    Endpoint, ExportTo, Locality, Location, Protocol, Registry, Resolution, Service, ServicePort,
};

/// Annotation Istio reads for a Kubernetes Service's visibility.
const ANNOTATION_EXPORT_TO: &str = "networking.istio.io/exportTo";
/// EndpointSlice label naming its service.
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Objects of the kinds the registry is built from, borrowed from the store.
#[derive(Default)]
struct Inputs<'a> {
    services: Vec<&'a KubeService>,
    slices: Vec<&'a EndpointSlice>,
    pods: Vec<&'a Pod>,
    service_entries: Vec<(&'a str, &'a ServiceEntry)>,
    workload_entries: Vec<(&'a str, &'a WorkloadEntry)>,
    /// Indexes built once, so each service looks up its pods and slices
    /// instead of scanning every object (linear, not services × pods).
    pods_by_name: HashMap<(&'a str, &'a str), &'a Pod>,
    pods_by_label: HashMap<(&'a str, &'a str, &'a str), Vec<&'a Pod>>,
    slices_by_service: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> Inputs<'a> {
    fn index(&mut self) {
        for pod in &self.pods {
            let ns = namespace_of(&pod.metadata);
            if let Some(name) = pod.metadata.name.as_deref() {
                self.pods_by_name.insert((ns, name), pod);
            }
            for (k, v) in pod.metadata.labels.iter().flatten() {
                self.pods_by_label.entry((ns, k, v)).or_default().push(pod);
            }
        }
        for slice in &self.slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SERVICE_NAME));
            if let Some(service) = service {
                let key = (namespace_of(&slice.metadata), service.as_str());
                self.slices_by_service.entry(key).or_default().push(slice);
            }
        }
    }

    /// Pods in `ns` carrying every label of a non-empty `selector`.
    fn selected_pods(&self, ns: &str, selector: &BTreeMap<String, String>) -> Vec<&'a Pod> {
        let Some((k, v)) = selector.iter().next() else {
            return Vec::new();
        };
        self.pods_by_label
            .get(&(ns, k.as_str(), v.as_str()))
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| selects(selector, &pod_labels(p)))
            .collect()
    }
}

/// Builds the registry from every loaded object (other kinds are ignored).
/// `domain` is the cluster DNS suffix, normally `cluster.local`.
pub fn build_registry<'a>(objects: impl IntoIterator<Item = &'a Loaded>, domain: &str) -> Registry {
    let mut inputs = Inputs::default();
    for l in objects {
        let ns = l.header.namespace.as_str();
        match &l.object {
            Some(MeshObject::Service(s)) => inputs.services.push(s),
            Some(MeshObject::EndpointSlice(s)) => inputs.slices.push(s),
            Some(MeshObject::Pod(p)) => inputs.pods.push(p),
            Some(MeshObject::ServiceEntry(se)) => inputs.service_entries.push((ns, se)),
            Some(MeshObject::WorkloadEntry(we)) => inputs.workload_entries.push((ns, we)),
            _ => {}
        }
    }
    inputs.index();
    let mut registry = Registry::default();
    for svc in &inputs.services {
        add_kubernetes_service(&mut registry, svc, &inputs, domain);
    }
    for (ns, se) in &inputs.service_entries {
        add_service_entry(&mut registry, ns, se, &inputs);
    }
    for eps in registry.endpoints.values_mut() {
        eps.sort_by(|a, b| {
            (a.service_port, &a.address, a.port).cmp(&(b.service_port, &b.address, b.port))
        });
        eps.dedup();
    }
    registry
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

fn pod_has_proxy(pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let annotations = pod.metadata.annotations.as_ref();
    labels
        .and_then(|l| l.get(LABEL_TLS_MODE))
        .is_some_and(|v| v == "istio")
        || annotations.is_some_and(|a| a.contains_key(ANNOTATION_SIDECAR_STATUS))
}

fn pod_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return true;
    };
    match &status.conditions {
        Some(conds) => conds
            .iter()
            .find(|c| c.type_ == "Ready")
            .is_none_or(|c| c.status == "True"),
        None => true,
    }
}

/// Locality from Istio's `istio-locality` label (`region.zone.subzone`) or
/// the Kubernetes topology labels.
fn locality_from_labels(labels: &BTreeMap<String, String>) -> Locality {
    if let Some(l) = labels.get(LABEL_ISTIO_LOCALITY) {
        return parse_locality(&l.replace('.', "/"));
    }
    Locality {
        region: labels
            .get(LABEL_TOPOLOGY_REGION)
            .cloned()
            .unwrap_or_default(),
        zone: labels.get(LABEL_TOPOLOGY_ZONE).cloned().unwrap_or_default(),
        subzone: labels
            .get(LABEL_TOPOLOGY_SUBZONE)
            .cloned()
            .unwrap_or_default(),
    }
}

/// Parses `region/zone/subzone` (any suffix may be missing).
fn parse_locality(s: &str) -> Locality {
    let mut parts = s.splitn(3, '/');
    Locality {
        region: parts.next().unwrap_or_default().to_string(),
        zone: parts.next().unwrap_or_default().to_string(),
        subzone: parts.next().unwrap_or_default().to_string(),
    }
}

/// The container port a named target port refers to.
fn named_container_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec.as_ref()?.containers.iter().find_map(|c| {
        c.ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
    })
}

fn add_kubernetes_service(
    registry: &mut Registry,
    svc: &KubeService,
    inputs: &Inputs<'_>,
    domain: &str,
) {
    let Some(name) = svc.metadata.name.as_deref() else {
        return;
    };
    let ns = namespace_of(&svc.metadata);
    let hostname = format!("{name}.{ns}.svc.{domain}");
    let spec = svc.spec.clone().unwrap_or_default();
    let kube_ports = spec.ports.clone().unwrap_or_default();
    let ports: Vec<ServicePort> = kube_ports
        .iter()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let name = p.name.clone().unwrap_or_default();
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => Protocol::Udp,
                _ => Protocol::from_kubernetes_port(&name, p.app_protocol.as_deref()),
            };
            Some(ServicePort {
                name,
                port,
                protocol,
            })
        })
        .collect();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let addresses: Vec<IpAddr> = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let export_to = annotations
        .get(ANNOTATION_EXPORT_TO)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .map(|list| ExportTo::parse(&list, ns))
        .unwrap_or_default();
    let service = Service {
        hostname: hostname.clone(),
        namespace: ns.to_string(),
        name: name.to_string(),
        ports,
        addresses,
        resolution: if headless {
            Resolution::Passthrough
        } else {
            Resolution::ClientSideLb
        },
        location: Location::MeshInternal,
        export_to,
        labels: svc.metadata.labels.clone().unwrap_or_default(),
    };

    let slices = inputs
        .slices_by_service
        .get(&(ns, name))
        .cloned()
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    if !slices.is_empty() {
        for slice in slices {
            for ep in &slice.endpoints {
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.as_deref())
                    .and_then(|n| inputs.pods_by_name.get(&(ns, n)).copied());
                let labels = pod.map(pod_labels).unwrap_or_default();
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                for slice_port in slice.ports.iter().flatten() {
                    let Some(target) = slice_port.port.and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    // Slice ports carry the service port's name.
                    let Some(sp) = service
                        .ports
                        .iter()
                        .find(|p| Some(p.name.as_str()) == slice_port.name.as_deref().or(Some("")))
                    else {
                        continue;
                    };
                    for address in &ep.addresses {
                        endpoints.push(Endpoint {
                            address: address.clone(),
                            port: target,
                            service_port: sp.port,
                            locality: locality_from_labels(&labels),
                            labels: labels.clone(),
                            service_account: pod
                                .and_then(|p| p.spec.as_ref()?.service_account_name.clone())
                                .unwrap_or_else(|| "default".into()),
                            namespace: ns.to_string(),
                            has_proxy: pod.is_some_and(pod_has_proxy),
                            healthy: ready,
                            weight: 1,
                        });
                    }
                }
            }
        }
    } else if let Some(selector) = spec.selector.as_ref() {
        // No EndpointSlices: derive endpoints from the selected Pods' IPs,
        // as the EndpointSlice controller would.
        for pod in inputs.selected_pods(ns, selector) {
            let labels = pod_labels(pod);
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            for (kp, sp) in kube_ports.iter().zip(service.ports.iter()) {
                let target = match &kp.target_port {
                    Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
                    Some(IntOrString::String(n)) => named_container_port(pod, n),
                    None => Some(sp.port),
                };
                let Some(target) = target else { continue };
                endpoints.push(Endpoint {
                    address: ip.clone(),
                    port: target,
                    service_port: sp.port,
                    locality: locality_from_labels(&labels),
                    labels: labels.clone(),
                    service_account: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_else(|| "default".into()),
                    namespace: ns.to_string(),
                    has_proxy: pod_has_proxy(pod),
                    healthy: pod_ready(pod),
                    weight: 1,
                });
            }
        }
        // Istio also lets a Kubernetes Service select WorkloadEntries.
        for (we_ns, we) in inputs.workload_entries.iter().filter(|(n, _)| *n == ns) {
            if selects(selector, &we.spec.labels) {
                endpoints.extend(workload_entry_endpoints(we_ns, &we.spec, &service.ports));
            }
        }
    }
    registry
        .endpoints
        .entry(hostname.clone())
        .or_default()
        .extend(endpoints);
    registry
        .services
        .entry(hostname)
        .or_insert_with(|| Arc::new(service));
}

fn workload_entry_endpoints(
    ns: &str,
    we: &mesh_api::networking::WorkloadEntrySpec,
    ports: &[ServicePort],
) -> Vec<Endpoint> {
    let Some(address) = we.address.clone().filter(|a| !a.is_empty()) else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|sp| {
            let target = we
                .ports
                .get(&sp.name)
                .and_then(|p| u16::try_from(*p).ok())
                .unwrap_or(sp.port);
            Endpoint {
                address: address.clone(),
                port: target,
                service_port: sp.port,
                labels: we.labels.clone(),
                locality: we
                    .locality
                    .as_deref()
                    .map(parse_locality)
                    .unwrap_or_default(),
                service_account: we
                    .service_account
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                namespace: ns.to_string(),
                // A WorkloadEntry with the Istio tls label runs a proxy.
                has_proxy: we.labels.get(LABEL_TLS_MODE).is_some_and(|v| v == "istio"),
                healthy: true,
                weight: we.weight.unwrap_or(1).max(1),
            }
        })
        .collect()
}

fn add_service_entry(registry: &mut Registry, ns: &str, se: &ServiceEntry, inputs: &Inputs<'_>) {
    let spec = &se.spec;
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.number).ok()?,
                protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")),
            })
        })
        .collect();
    let resolution = match spec.resolution() {
        SeResolution::None => Resolution::Passthrough,
        SeResolution::Static => Resolution::ClientSideLb,
        SeResolution::Dns | SeResolution::DynamicDns => Resolution::DnsLb,
        SeResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
    };
    let location = match spec.location {
        Some(SeLocation::MeshInternal) => Location::MeshInternal,
        _ => Location::MeshExternal,
    };
    let addresses: Vec<IpAddr> = spec
        .addresses
        .iter()
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    for host in &spec.hosts {
        let mut endpoints: Vec<Endpoint> = spec
            .endpoints
            .iter()
            .flat_map(|we| workload_entry_endpoints(ns, we, &ports))
            .collect();
        if let Some(selector) = &spec.workload_selector {
            for (we_ns, we) in inputs.workload_entries.iter().filter(|(n, _)| *n == ns) {
                if selects(&selector.labels, &we.spec.labels) {
                    endpoints.extend(workload_entry_endpoints(we_ns, &we.spec, &ports));
                }
            }
        }
        // DNS resolution without endpoints means "resolve the host itself".
        if endpoints.is_empty()
            && matches!(resolution, Resolution::DnsLb | Resolution::DnsRoundRobin)
            && !host.starts_with('*')
        {
            endpoints = ports
                .iter()
                .map(|sp| Endpoint {
                    address: host.clone(),
                    port: sp.port,
                    service_port: sp.port,
                    labels: BTreeMap::new(),
                    locality: Locality::default(),
                    service_account: String::new(),
                    namespace: ns.to_string(),
                    has_proxy: false,
                    healthy: true,
                    weight: 1,
                })
                .collect();
        }
        let service = Service {
            hostname: host.clone(),
            namespace: ns.to_string(),
            name: se.metadata.name.clone().unwrap_or_default(),
            ports: ports.clone(),
            addresses: addresses.clone(),
            resolution,
            location,
            export_to: ExportTo::parse(&spec.export_to, ns),
            labels: se.metadata.labels.clone().unwrap_or_default(),
        };
        // The first declaration of a host wins, as in Istio (oldest first).
        if registry.services.contains_key(host) {
            continue;
        }
        registry.endpoints.insert(host.clone(), endpoints);
        registry.services.insert(host.clone(), Arc::new(service));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::load_str;

    const INPUT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080, targetPort: 9080}
  - {name: grpc-api, port: 9090, targetPort: grpc}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1
  labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio, istio-locality: us-east.zone-a}
spec:
  serviceAccountName: bookinfo-reviews
  containers: [{name: app, image: x, ports: [{name: grpc, containerPort: 19090}]}]
status: {podIP: 127.0.10.1}
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-v1, labels: {app: ratings}}
spec: {containers: [{name: app, image: x}]}
status: {podIP: 127.0.10.2}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
"#;

    #[test]
    fn builds_services_and_endpoints_from_pods_and_service_entries() {
        let loaded = load_str("t.yaml", INPUT);
        let reg = build_registry(&loaded, "cluster.local");
        let svc = reg.service("reviews.default.svc.cluster.local").unwrap();
        assert_eq!(svc.ports[0].protocol, Protocol::Http);
        assert_eq!(svc.ports[1].protocol, Protocol::Grpc);
        assert_eq!(svc.addresses, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        let http: Vec<_> = reg
            .endpoints_for("reviews.default.svc.cluster.local", 9080)
            .collect();
        assert_eq!(http.len(), 1);
        assert_eq!(http[0].address, "127.0.10.1");
        assert!(http[0].has_proxy);
        assert_eq!(http[0].service_account, "bookinfo-reviews");
        assert_eq!(http[0].locality.region, "us-east");
        let grpc: Vec<_> = reg
            .endpoints_for("reviews.default.svc.cluster.local", 9090)
            .collect();
        assert_eq!(
            grpc[0].port, 19090,
            "named targetPort resolves to the container port"
        );

        let ext = reg.service("api.example.com").unwrap();
        assert_eq!(ext.resolution, Resolution::DnsLb);
        assert_eq!(ext.location, Location::MeshExternal);
        let eps: Vec<_> = reg.endpoints_for("api.example.com", 443).collect();
        assert_eq!(eps[0].address, "api.example.com");
    }

    #[test]
    fn protocol_from_port_name_and_app_protocol() {
        assert_eq!(
            Protocol::from_kubernetes_port("http-web", None),
            Protocol::Http
        );
        assert_eq!(
            Protocol::from_kubernetes_port("web", Some("kubernetes.io/h2c")),
            Protocol::Http2
        );
        assert_eq!(
            Protocol::from_kubernetes_port("tcp-db", None),
            Protocol::Tcp
        );
        assert_eq!(
            Protocol::from_kubernetes_port("web", None),
            Protocol::Unsupported
        );
    }
}
