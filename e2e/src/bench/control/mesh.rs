//! The synthetic mesh `mesh-bench control` serves: M Kubernetes Services,
//! each with one HTTP port and five Pods, a DestinationRule (subsets v1/v2)
//! and a 90/10 VirtualService for every tenth service, plus one Gateway
//! bound to 127.0.0.1 for the stock Envoy peer.
//!
//! Everything is a pure function of the service count, so the parent
//! (server) and the child process (simulated proxies) agree on who each
//! proxy is without talking: proxy `i` is the sidecar of pod
//! `svc-(i % M)-((i / M) % 5)`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use mesh_api::object::Loaded;
use mesh_control::proxy::ProxyInfo;

/// Pods (endpoints) behind each service.
pub const ENDPOINTS_PER_SERVICE: usize = 5;
/// Service ports, cycled; outbound route configurations are named by port.
pub const PORTS: [u16; 3] = [80, 8080, 9080];
/// Port every pod's container listens on.
const TARGET_PORT: u16 = 8080;
/// Namespace and labels of the gateway the Envoy peer plays.
pub const GATEWAY_NAMESPACE: &str = "istio-system";
/// Service whose VirtualService weights change in change (a).
pub const CHANGED_ROUTE_SERVICE: usize = 0;
/// Service that gains an endpoint in change (b).
pub const CHANGED_ENDPOINT_SERVICE: usize = 1;

/// The shape of the generated mesh.
#[derive(Debug, Clone, Copy)]
pub struct MeshShape {
    /// Services (M).
    pub services: usize,
    /// Namespaces the services (and so the proxies) are spread over.
    pub namespaces: usize,
}

impl MeshShape {
    /// Namespace of service `s`.
    pub fn namespace(&self, s: usize) -> String {
        format!("ns-{}", s % self.namespaces.max(1))
    }

    /// Fully qualified host of service `s`.
    pub fn host(&self, s: usize) -> String {
        format!("svc-{s}.{}.svc.cluster.local", self.namespace(s))
    }

    /// Port of service `s`.
    pub fn port(&self, s: usize) -> u16 {
        PORTS[s % PORTS.len()]
    }

    /// Whether service `s` has a DestinationRule and a VirtualService.
    pub fn has_rules(&self, s: usize) -> bool {
        s.is_multiple_of(10)
    }

    /// Route configuration names a sidecar asks for (one per port in use).
    pub fn route_names(&self) -> Vec<String> {
        let mut ports: Vec<u16> = (0..self.services.min(PORTS.len()))
            .map(|s| self.port(s))
            .collect();
        ports.sort_unstable();
        ports.iter().map(u16::to_string).collect()
    }

    /// The most proxies the mesh has pods for.
    pub fn max_proxies(&self) -> usize {
        self.services * ENDPOINTS_PER_SERVICE
    }

    /// Service and pod index of proxy `i`: consecutive proxies belong to
    /// different services, so proxies spread over services and namespaces.
    pub fn pod_of_proxy(&self, i: usize) -> (usize, usize) {
        let m = self.services.max(1);
        (i % m, (i / m) % ENDPOINTS_PER_SERVICE)
    }

    /// The sidecar identity of proxy `i` (as its Envoy node would say).
    pub fn proxy(&self, i: usize) -> ProxyInfo {
        let (s, e) = self.pod_of_proxy(i);
        let labels = pod_labels(s, e);
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ProxyInfo::sidecar(
            &format!("svc-{s}-{e}"),
            &self.namespace(s),
            IpAddr::V4(pod_ip(s, e)),
            &labels,
        )
    }

    /// YAML of everything but the VirtualService that change (a) edits.
    pub fn base_yaml(&self, gateway_port: u16) -> String {
        let mut y = String::with_capacity(self.services * 2048);
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: Gateway\n\
             metadata: {{name: bench-gateway, namespace: {GATEWAY_NAMESPACE}}}\n\
             spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
             \x20 - port: {{number: {gateway_port}, name: http, protocol: HTTP}}\n\
             \x20   bind: 127.0.0.1\n    hosts: [\"*\"]\n"
        );
        for s in 0..self.services {
            let ns = self.namespace(s);
            let host = self.host(s);
            let [a, b, c, d] = (Ipv4Addr::new(10, 96, 0, 0).to_bits() + s as u32 + 1).to_be_bytes();
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: {ns}}}\n\
                 spec:\n  clusterIP: {a}.{b}.{c}.{d}\n  selector: {{app: svc-{s}}}\n\
                 \x20 ports: [{{name: http, port: {}, targetPort: {TARGET_PORT}}}]\n",
                self.port(s)
            );
            for e in 0..ENDPOINTS_PER_SERVICE {
                pod_yaml(&mut y, &format!("svc-{s}-{e}"), &ns, s, e, pod_ip(s, e));
            }
            if self.has_rules(s) {
                let _ = write!(
                    y,
                    "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                     metadata: {{name: svc-{s}, namespace: {ns}}}\n\
                     spec:\n  host: {host}\n  subsets:\n\
                     \x20 - {{name: v1, labels: {{version: v1}}}}\n\
                     \x20 - {{name: v2, labels: {{version: v2}}}}\n"
                );
                if s != CHANGED_ROUTE_SERVICE {
                    y.push_str(&self.virtual_service_yaml(s, (90, 10)));
                }
            }
        }
        y
    }

    /// A 2-way split VirtualService for service `s`. The one change (a)
    /// edits is also bound to the gateway so the Envoy peer sees it.
    pub fn virtual_service_yaml(&self, s: usize, weights: (u32, u32)) -> String {
        let ns = self.namespace(s);
        let host = self.host(s);
        let gateways = if s == CHANGED_ROUTE_SERVICE {
            format!("[mesh, {GATEWAY_NAMESPACE}/bench-gateway]")
        } else {
            "[mesh]".to_string()
        };
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: svc-{s}, namespace: {ns}}}\n\
             spec:\n  hosts: [{host}]\n  gateways: {gateways}\n  http:\n  - route:\n\
             \x20   - destination: {{host: {host}, subset: v1}}\n      weight: {}\n\
             \x20   - destination: {{host: {host}, subset: v2}}\n      weight: {}\n",
            weights.0, weights.1
        )
    }

    /// The pod change (b) adds to [`CHANGED_ENDPOINT_SERVICE`].
    pub fn extra_pod_yaml(&self) -> String {
        let s = CHANGED_ENDPOINT_SERVICE;
        let mut y = String::new();
        pod_yaml(
            &mut y,
            &format!("svc-{s}-extra"),
            &self.namespace(s),
            s,
            0,
            Ipv4Addr::new(10, 200, 0, 1),
        );
        y
    }
}

/// Labels of pod `e` of service `s`: three v1 pods, two v2.
fn pod_labels(s: usize, e: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_string(), format!("svc-{s}")),
        (
            "version".to_string(),
            if e < 3 { "v1" } else { "v2" }.to_string(),
        ),
        ("security.istio.io/tlsMode".to_string(), "istio".to_string()),
    ])
}

/// Pod IPs: 10.1.0.1 upwards, one per pod.
fn pod_ip(s: usize, e: usize) -> Ipv4Addr {
    let k = (s * ENDPOINTS_PER_SERVICE + e) as u32;
    Ipv4Addr::from_bits(Ipv4Addr::new(10, 1, 0, 0).to_bits() + k + 1)
}

fn pod_yaml(y: &mut String, name: &str, ns: &str, s: usize, e: usize, ip: Ipv4Addr) {
    let version = if e < 3 { "v1" } else { "v2" };
    let _ = write!(
        y,
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         \x20 labels: {{app: svc-{s}, version: {version}, security.istio.io/tlsMode: istio}}\n\
         spec: {{containers: [{{name: app, image: app, ports: [{{containerPort: {TARGET_PORT}}}]}}]}}\n\
         status: {{podIP: {ip}}}\n"
    );
}

/// Loads generated YAML, failing on any object the loader rejects (the
/// generator is wrong then, and the numbers would be meaningless).
pub fn load(file: &str, yaml: &str) -> anyhow::Result<Vec<Loaded>> {
    let loaded = mesh_api::load_str(file, yaml);
    if let Some(bad) = loaded.iter().find(|l| l.object.is_none()) {
        anyhow::bail!(
            "generated object {:?} did not load: {:?}",
            bad.header,
            bad.report
        );
    }
    Ok(loaded)
}
