//! The ingress gateway `meshctl local up` starts (unless `--no-gateway`),
//! as `meshctl install`'s default profile deploys it: a pod
//! `istio-ingressgateway-0` in `istio-system` labelled `app:
//! istio-ingressgateway`, `istio: ingressgateway` whose only process is
//! `mesh-proxy run --role router`, and a Service `istio-ingressgateway`
//! (http2 80 -> 8080, https 443 -> 8443) with a VIP picked here. Users'
//! Gateways select it with `selector: {istio: ingressgateway}`.
//!
//! The Service is written beside the started pods for mesh-control to
//! read; a directory that declares its own `istio-system/istio-ingressgateway`
//! Service keeps it (its VIP is used).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::bail;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::wellknown::PROXY_HEALTH_PORT;
use serde_json::json;

use super::manifest::{CONTROL_NAMESPACE, LocalPod, LocalService, LocalServicePort, Plan, Role};
use crate::install::gateway::NAME;

/// The gateway pod's name.
pub const POD: &str = "istio-ingressgateway-0";

/// The port the gateway's HTTP listener uses (the Service's `http2` 80).
pub const HTTP_PORT: u16 = 8080;

/// The port the gateway's HTTPS listener uses (the Service's `https` 443).
pub const HTTPS_PORT: u16 = 8443;

/// Where the gateway's VIP is looked for first (then downwards): the top
/// of the `10.96.0.0/16` range users' Services commonly take from the
/// bottom.
const VIP_START: Ipv4Addr = Ipv4Addr::new(10, 96, 255, 254);

/// The gateway's labels, as `meshctl install` gives them.
fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_string(), NAME.to_string()),
        ("istio".to_string(), "ingressgateway".to_string()),
    ])
}

/// Adds the gateway to `plan`: its pod first (so it gets the subnet's
/// first pod address), and unless the directory has one, its Service
/// with a VIP that no other Service uses and `in_subnet` does not claim.
/// Fails when a pod of the directory has the gateway's name.
pub fn add(plan: &mut Plan, in_subnet: impl Fn(Ipv4Addr) -> bool) -> anyhow::Result<()> {
    if let Some(pod) = plan
        .pods
        .iter()
        .find(|p| p.namespace == CONTROL_NAMESPACE && p.name == POD)
    {
        bail!(
            "{}: pod {POD}.{CONTROL_NAMESPACE} is the ingress gateway meshctl local starts: \
             rename the pod, or pass --no-gateway",
            pod.origin
        );
    }
    plan.pods.insert(0, pod());
    let declared = plan
        .services
        .iter()
        .any(|s| s.namespace == CONTROL_NAMESPACE && s.name == NAME);
    if declared {
        return Ok(());
    }
    let used: Vec<Ipv4Addr> = plan.services.iter().map(|s| s.cluster_ip).collect();
    let Some(vip) = (0..u32::from(u16::MAX))
        .map(|i| Ipv4Addr::from(u32::from(VIP_START) - i))
        .find(|ip| !used.contains(ip) && !in_subnet(*ip))
    else {
        bail!(
            "no free address for the ingress gateway's Service in 10.96.0.0/16: pass --no-gateway"
        );
    };
    let service = LocalService {
        name: NAME.to_string(),
        namespace: CONTROL_NAMESPACE.to_string(),
        cluster_ip: vip,
        selector: labels(),
        ports: [
            (PROXY_HEALTH_PORT, PROXY_HEALTH_PORT),
            (80, HTTP_PORT),
            (443, HTTPS_PORT),
        ]
        .map(|(port, target)| LocalServicePort {
            port,
            target: IntOrString::Int(target.into()),
            tcp: true,
        })
        .to_vec(),
    };
    plan.generated.push(service_object(vip));
    plan.services.push(service);
    Ok(())
}

/// The gateway's Service in `plan`, if it has one (the directory's or ours).
pub fn service(plan: &Plan) -> Option<&LocalService> {
    plan.services
        .iter()
        .find(|s| s.namespace == CONTROL_NAMESPACE && s.name == NAME)
}

/// The gateway pod: no command (mesh-proxy is its only process), the
/// gateway's service account and container ports.
fn pod() -> LocalPod {
    LocalPod {
        name: POD.to_string(),
        namespace: CONTROL_NAMESPACE.to_string(),
        labels: labels(),
        service_account: NAME.to_string(),
        command: Vec::new(),
        env: Vec::new(),
        ports: vec![
            ("status-port".into(), PROXY_HEALTH_PORT),
            ("http2".into(), HTTP_PORT),
            ("https".into(), HTTPS_PORT),
        ],
        origin: format!(
            "the ingress gateway {POD}.{CONTROL_NAMESPACE} (--no-gateway turns it off)"
        ),
        role: Role::Gateway,
    }
}

/// The Service object mesh-control reads: `meshctl install`'s ports, a
/// ClusterIP (no load balancer on one machine: the pod's address is the
/// gateway's external address).
fn service_object(vip: Ipv4Addr) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": CONTROL_NAMESPACE, "labels": labels()},
        "spec": {
            "clusterIP": vip.to_string(),
            "selector": labels(),
            "ports": [
                {"name": "status-port", "port": PROXY_HEALTH_PORT, "targetPort": PROXY_HEALTH_PORT},
                {"name": "http2", "port": 80, "targetPort": HTTP_PORT},
                {"name": "https", "port": 443, "targetPort": HTTPS_PORT},
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_service(namespace: &str, name: &str, ip: &str) -> LocalService {
        LocalService {
            name: name.into(),
            namespace: namespace.into(),
            cluster_ip: ip.parse().unwrap(),
            selector: BTreeMap::new(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn the_gateway_comes_first_with_a_free_vip() {
        let mut plan = Plan {
            services: vec![user_service("default", "taken", "10.96.255.254")],
            ..Plan::default()
        };
        add(&mut plan, |_| false).unwrap();
        assert_eq!(plan.pods[0].name, POD);
        assert_eq!(plan.pods[0].role, Role::Gateway);
        let svc = service(&plan).unwrap();
        assert_eq!(svc.cluster_ip, Ipv4Addr::new(10, 96, 255, 253));
        assert_eq!(plan.generated.len(), 1);
        assert_eq!(plan.generated[0]["spec"]["ports"][1]["targetPort"], 8080);
        assert_eq!(
            plan.generated[0]["spec"]["selector"]["istio"],
            "ingressgateway"
        );
    }

    #[test]
    fn a_declared_service_is_kept_and_a_pod_of_the_same_name_refused() {
        let mut plan = Plan {
            services: vec![user_service(CONTROL_NAMESPACE, NAME, "10.96.0.99")],
            ..Plan::default()
        };
        add(&mut plan, |_| false).unwrap();
        assert!(plan.generated.is_empty());
        assert_eq!(
            service(&plan).unwrap().cluster_ip,
            Ipv4Addr::new(10, 96, 0, 99)
        );

        let mut taken = Plan::default();
        let mut pod = pod();
        pod.role = Role::Sidecar;
        pod.origin = "Pod istio-system/istio-ingressgateway-0 (a.yaml:1)".into();
        taken.pods.push(pod);
        let err = add(&mut taken, |_| false).unwrap_err().to_string();
        assert!(
            err.contains("a.yaml:1") && err.contains("--no-gateway"),
            "{err}"
        );
    }
}
