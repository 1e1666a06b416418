//! What kube-proxy does beneath every pod: in a cluster a connection to a
//! Service VIP that no sidecar takes (from a pod outside the mesh, or a
//! sidecar's own passthrough traffic) is sent to an endpoint by the node's
//! NAT rules. Here VIPs exist nowhere (a pod's default route drops
//! everything), so each pod's namespace gets kube-proxy's rules in chains
//! of its own, `MESH-LOCAL-SERVICES` in `nat` and `filter`, jumped to from
//! `OUTPUT` after the capture rules (which take the app's traffic first):
//! per Service port a DNAT to one of the endpoints chosen at random
//! (`statistic`, with kube-proxy's probabilities), and a reset for a port
//! with no endpoint.
//!
//! Endpoints are the local pods the Service's selector picks in its
//! namespace, at the resolved `targetPort`. The chains are rewritten by
//! every `up` (as the hosts files are), not on live edits of Services.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::manifest::{LocalPod, LocalService};

/// The chain holding the Service rules, in `nat` and `filter`.
pub const CHAIN: &str = "MESH-LOCAL-SERVICES";

/// The `iptables-restore --noflush` input that rewrites the chains (the
/// declarations flush them), given every started pod with its address.
/// The jumps from `OUTPUT` are the caller's, once per namespace.
pub fn rules(services: &[LocalService], pods: &[(&LocalPod, Ipv4Addr)]) -> String {
    let mut nat = format!("*nat\n:{CHAIN} - [0:0]\n");
    let mut filter = format!("*filter\n:{CHAIN} - [0:0]\n");
    for svc in services.iter().filter(|s| !s.selector.is_empty()) {
        for port in svc.ports.iter().filter(|p| p.tcp) {
            let endpoints: Vec<(Ipv4Addr, u16)> = pods
                .iter()
                .filter(|(pod, _)| {
                    pod.namespace == svc.namespace
                        && svc
                            .selector
                            .iter()
                            .all(|(k, v)| pod.labels.get(k) == Some(v))
                })
                .filter_map(|(pod, ip)| Some((*ip, target_port(&port.target, pod)?)))
                .collect();
            let matches = format!(
                "-d {}/32 -p tcp -m tcp --dport {}",
                svc.cluster_ip, port.port
            );
            if endpoints.is_empty() {
                let _ = writeln!(
                    filter,
                    "-A {CHAIN} {matches} -j REJECT --reject-with tcp-reset"
                );
                continue;
            }
            let n = endpoints.len();
            for (i, (ip, target)) in endpoints.into_iter().enumerate() {
                // Endpoint i of n is taken with 1/(n-i) of what is left:
                // uniform over all of them, the last one unconditionally.
                let pick = if i + 1 < n {
                    format!(
                        " -m statistic --mode random --probability {:.10}",
                        1.0 / (n - i) as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    nat,
                    "-A {CHAIN} {matches}{pick} -j DNAT --to-destination {ip}:{target}"
                );
            }
        }
    }
    nat.push_str("COMMIT\n");
    filter.push_str("COMMIT\n");
    nat + &filter
}

/// A Service's `targetPort` on `pod`: the number, or the pod's container
/// port of that name (none when the pod declares no such port, as
/// Kubernetes then gives no endpoint).
fn target_port(target: &IntOrString, pod: &LocalPod) -> Option<u16> {
    match target {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => pod
            .ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, port)| *port),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::local::manifest::{LocalServicePort, Role};

    fn pod(name: &str, app: &str, ports: &[(&str, u16)]) -> LocalPod {
        LocalPod {
            name: name.into(),
            namespace: "default".into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            service_account: "default".into(),
            command: vec!["sleep".into()],
            env: Vec::new(),
            ports: ports.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            origin: name.into(),
            role: Role::Sidecar,
        }
    }

    #[test]
    fn each_service_port_dnats_uniformly_to_the_selected_pods() {
        let services = [
            LocalService {
                name: "reviews".into(),
                namespace: "default".into(),
                cluster_ip: "10.96.0.20".parse().unwrap(),
                selector: BTreeMap::from([("app".to_string(), "reviews".to_string())]),
                ports: vec![LocalServicePort {
                    port: 9080,
                    target: IntOrString::String("http".into()),
                    tcp: true,
                }],
            },
            LocalService {
                name: "empty".into(),
                namespace: "default".into(),
                cluster_ip: "10.96.0.30".parse().unwrap(),
                selector: BTreeMap::from([("app".to_string(), "nobody".to_string())]),
                ports: vec![LocalServicePort {
                    port: 80,
                    target: IntOrString::Int(8080),
                    tcp: true,
                }],
            },
        ];
        let (a, b, c) = (
            pod("reviews-v1-0", "reviews", &[("http", 9080)]),
            pod("reviews-v2-0", "reviews", &[("http", 9081)]),
            pod("client", "client", &[]),
        );
        let pods = [
            (&a, "10.99.0.3".parse().unwrap()),
            (&b, "10.99.0.4".parse().unwrap()),
            (&c, "10.99.0.5".parse().unwrap()),
        ];
        let text = rules(&services, &pods);
        let expected = "\
*nat
:MESH-LOCAL-SERVICES - [0:0]
-A MESH-LOCAL-SERVICES -d 10.96.0.20/32 -p tcp -m tcp --dport 9080 -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.99.0.3:9080
-A MESH-LOCAL-SERVICES -d 10.96.0.20/32 -p tcp -m tcp --dport 9080 -j DNAT --to-destination 10.99.0.4:9081
COMMIT
*filter
:MESH-LOCAL-SERVICES - [0:0]
-A MESH-LOCAL-SERVICES -d 10.96.0.30/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset
COMMIT
";
        assert_eq!(text, expected);
    }
}
