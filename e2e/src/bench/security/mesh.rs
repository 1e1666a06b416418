//! The mesh `mesh-bench security` measures: its pods, their addresses and
//! identities, and the configuration mesh-control serves them.
//!
//! Every pod is a network namespace on one bridge (see [`super::net`]).
//! Per data plane there are three pods with a sidecar: `client-<dp>`
//! (where the load generator runs, as the application), `server-<dp>`
//! (Service `server-<dp>`, no policy) and `authz-<dp>` (Service
//! `authz-<dp>`, the 20-rule AuthorizationPolicy). Two pods without a
//! sidecar give the direct path: `direct-client` calls the application of
//! `direct-server` by its pod address. Every application is the bench's
//! backend on port 8080 of its pod.
//!
//! Security settings are Istio's defaults plus two objects: a
//! namespace-wide STRICT PeerAuthentication (no plaintext reaches any
//! application behind a sidecar) and, per data plane, the policy on the
//! `authz` workload. No DestinationRule: the client sidecars pick Istio
//! mTLS by themselves (auto mTLS, the pods are labelled
//! `security.istio.io/tlsMode: istio`).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};

use super::super::proxy::load::Dest;
use super::super::proxy::subject::Kind;

/// Kubernetes namespace of every pod and service.
pub const NAMESPACE: &str = "bench";
/// The bridge's address in the hub namespace: the control plane's.
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
/// Prefix length of the pod network.
pub const PREFIX: u8 = 24;
/// Plaintext ADS (Istio's 15010).
pub const XDS_PORT: u16 = 15010;
/// The CA over TLS (Istio's 15012).
pub const CA_PORT: u16 = 15012;
/// A name in the CA's serving certificate.
pub const CA_SERVER_NAME: &str = "istiod.istio-system.svc";
/// The applications' port (Service port and target port).
pub const APP_PORT: u16 = 8080;
/// Path of every measured request: what the matching policy rule allows.
pub const REQUEST_PATH: &str = "/api/orders/42";
/// Service account of the client pods: the principal the policy allows.
pub const CLIENT_SA: &str = "client";
/// Service account of the server pods.
pub const SERVER_SA: &str = "server";
/// Identity of the bench's own mTLS client (handshakes, checks): not the
/// one the policy allows.
pub const PROBE_IDENTITY: &str = "spiffe://cluster.local/ns/bench/sa/load";
/// Rules of the AuthorizationPolicy.
pub const POLICY_RULES: usize = 20;
/// The one rule a measured request matches. Both data planes evaluate a
/// filter's policies in name order (Envoy's RBAC engine keeps them in a
/// sorted map, mesh-proxy sorts them), and `...-rule[9]` sorts after
/// `...-rule[19]`: the request is checked against all 19 other rules first.
pub const MATCHING_RULE: usize = 9;

/// What a pod is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs the load generator (the application calling out).
    Client,
    /// Runs an application (the backend).
    Server,
    /// Runs an application behind the AuthorizationPolicy.
    Authz,
}

/// One pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pod {
    /// Pod name, also its `app` label and its Service's name.
    pub name: &'static str,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Its sidecar (`Direct`: none).
    pub kind: Kind,
    /// What it is for.
    pub role: Role,
    /// Its Service's VIP (server and authz pods with a sidecar).
    pub vip: Option<Ipv4Addr>,
}

/// Every pod, direct ones first.
pub const PODS: [Pod; 8] = [
    pod("direct-client", 10, Kind::Direct, Role::Client),
    pod("direct-server", 11, Kind::Direct, Role::Server),
    pod("client-ours", 20, Kind::Ours, Role::Client),
    pod("server-ours", 21, Kind::Ours, Role::Server),
    pod("authz-ours", 22, Kind::Ours, Role::Authz),
    pod("client-envoy", 30, Kind::Envoy, Role::Client),
    pod("server-envoy", 31, Kind::Envoy, Role::Server),
    pod("authz-envoy", 32, Kind::Envoy, Role::Authz),
];

const fn pod(name: &'static str, host: u8, kind: Kind, role: Role) -> Pod {
    let vip = match (kind, role) {
        (Kind::Direct, _) | (_, Role::Client) => None,
        _ => Some(Ipv4Addr::new(10, 96, 77, host)),
    };
    Pod {
        name,
        ip: Ipv4Addr::new(10, 77, 0, host),
        kind,
        role,
        vip,
    }
}

/// The pod of `kind` in `role`.
pub fn find(kind: Kind, role: Role) -> &'static Pod {
    PODS.iter()
        .find(|p| p.kind == kind && p.role == role)
        .unwrap_or(&PODS[0])
}

/// The Service host name of `kind`'s server (`authz`: the one behind the
/// policy), as the application's requests name it.
pub const fn service_host(kind: Kind, authz: bool) -> &'static str {
    match (kind, authz) {
        (Kind::Direct, _) => "direct-server.bench.svc.cluster.local",
        (Kind::Ours, false) => "server-ours.bench.svc.cluster.local",
        (Kind::Ours, true) => "authz-ours.bench.svc.cluster.local",
        (Kind::Envoy, false) => "server-envoy.bench.svc.cluster.local",
        (Kind::Envoy, true) => "authz-envoy.bench.svc.cluster.local",
    }
}

/// Where the application in `kind`'s client pod sends its requests: the
/// Service VIP (captured by its sidecar); the direct path calls the
/// direct server's pod address.
pub fn app_dest(kind: Kind, authz: bool) -> Dest {
    let role = if authz { Role::Authz } else { Role::Server };
    let server = find(kind, role);
    Dest {
        addr: SocketAddr::from((server.vip.unwrap_or(server.ip), APP_PORT)),
        host: service_host(kind, authz),
        path: REQUEST_PATH,
    }
}

/// The server pod's own address: what the bench's mTLS client connects
/// to, straight into the destination sidecar's inbound capture.
pub fn pod_dest(kind: Kind, authz: bool) -> Dest {
    let role = if authz { Role::Authz } else { Role::Server };
    Dest {
        addr: SocketAddr::from((find(kind, role).ip, APP_PORT)),
        ..app_dest(kind, authz)
    }
}

/// Istio's SNI for the service `host` on [`APP_PORT`], as a client
/// sidecar sends it.
pub fn istio_sni(host: &str) -> String {
    format!("outbound_.{APP_PORT}_._.{host}")
}

/// The SPIFFE id of `pod`'s service account.
pub fn identity(pod: &Pod) -> String {
    let sa = match pod.role {
        Role::Client => CLIENT_SA,
        Role::Server | Role::Authz => SERVER_SA,
    };
    format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{sa}")
}

/// The service account of `pod`.
pub fn service_account(pod: &Pod) -> &'static str {
    match pod.role {
        Role::Client => CLIENT_SA,
        Role::Server | Role::Authz => SERVER_SA,
    }
}

/// The configuration of the pods of `kinds` (the sidecar data planes
/// that run).
pub fn config_yaml(kinds: &[Kind]) -> String {
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: default, namespace: {NAMESPACE}}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
    );
    for p in PODS.iter().filter(|p| kinds.contains(&p.kind)) {
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: {name}, security.istio.io/tlsMode: istio}}}}\n\
             spec: {{serviceAccountName: {sa}, containers: [{{name: app, image: bench-backend}}]}}\n\
             status: {{podIP: {ip}}}\n",
            name = p.name,
            sa = service_account(p),
            ip = p.ip,
        );
        if let Some(vip) = p.vip {
            let _ = write!(
                yaml,
                "---\napiVersion: v1\nkind: Service\n\
                 metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
                 spec: {{clusterIP: {vip}, selector: {{app: {name}}}, ports: [{{name: http, port: {APP_PORT}, targetPort: {APP_PORT}}}]}}\n",
                name = p.name,
            );
        }
        if p.role == Role::Authz {
            yaml.push_str("---\n");
            yaml.push_str(&policy_yaml(p.name));
        }
    }
    yaml
}

/// The AuthorizationPolicy on `app`: ALLOW with [`POLICY_RULES`] rules
/// over paths, methods, hosts, ports, headers, principals, namespaces and
/// source addresses. A measured request (`GET` [`REQUEST_PATH`] from the
/// client's identity, no extra headers) matches only
/// [`MATCHING_RULE`]; each other rule fails on one condition, some on
/// the first one checked, some after the others matched.
pub fn policy_yaml(app: &str) -> String {
    let client = format!("cluster.local/ns/{NAMESPACE}/sa/{CLIENT_SA}");
    let header = |name: &str, value: &str| {
        format!("when: [{{key: \"request.headers[{name}]\", values: [\"{value}\"]}}]")
    };
    let mut rules: Vec<String> = vec![
        "to: [{operation: {paths: [/admin, /admin/*]}}]".into(),
        "to: [{operation: {methods: [POST, PUT, PATCH], paths: [/api/orders/*]}}]".into(),
        "from: [{source: {principals: [cluster.local/ns/bench/sa/frontend]}}]".into(),
        "from: [{source: {namespaces: [payments, billing]}}]".into(),
        format!(
            "to: [{{operation: {{paths: [/api/orders/*]}}}}]\n    {}",
            header("x-tenant", "tenant-4")
        ),
        "to: [{operation: {hosts: [orders.example.com, \"*.shop.example.com\"]}}]".into(),
        "to: [{operation: {ports: [\"9090\"]}}]".into(),
        "to: [{operation: {methods: [GET], paths: [/api/users/*]}}]".into(),
        format!(
            "from: [{{source: {{principals: [{client}]}}}}]\n    to: [{{operation: {{methods: [DELETE], paths: [/api/orders/*]}}}}]"
        ),
        // MATCHING_RULE
        format!(
            "from: [{{source: {{principals: [{client}], namespaces: [{NAMESPACE}]}}}}]\n    to: [{{operation: {{methods: [GET, HEAD], paths: [/api/orders/*]}}}}]"
        ),
        "to: [{operation: {methods: [GET], notPaths: [/api/orders/*]}}]".into(),
        header("authorization", "Bearer *"),
        format!(
            "from: [{{source: {{notPrincipals: [{client}]}}}}]\n    to: [{{operation: {{paths: [/internal/*]}}}}]"
        ),
        "to: [{operation: {paths: [/healthz, /ready, /metrics]}}]".into(),
        format!(
            "from: [{{source: {{namespaces: [{NAMESPACE}]}}}}]\n    to: [{{operation: {{methods: [OPTIONS, TRACE]}}}}]"
        ),
        "from: [{source: {ipBlocks: [192.0.2.0/24, 198.51.100.0/24]}}]".into(),
        "to: [{operation: {paths: [\"*/internal\", \"*/debug\"]}}]".into(),
        format!(
            "from: [{{source: {{principals: [{client}]}}}}]\n    {}",
            header("x-debug", "1")
        ),
        format!(
            "to: [{{operation: {{methods: [GET], paths: [/api/orders/*]}}}}]\n    {}",
            header("x-canary", "true")
        ),
        "from: [{source: {principals: [cluster.local/ns/ops/sa/admin]}}]\n    to: [{operation: {paths: [/api/*]}}]".into(),
    ];
    rules.truncate(POLICY_RULES);
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {app}-rules, namespace: {NAMESPACE}}}\n\
         spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  action: ALLOW\n  rules:\n"
    );
    for rule in rules {
        let _ = writeln!(yaml, "  - {rule}");
    }
    yaml
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use mesh_control::proxy::ProxyInfo;

    use super::*;

    fn sidecar(pod: &Pod) -> ProxyInfo {
        let mut info = ProxyInfo::sidecar(
            pod.name,
            NAMESPACE,
            IpAddr::V4(pod.ip),
            &[("app", pod.name), ("security.istio.io/tlsMode", "istio")],
        );
        info.service_account = service_account(pod).into();
        info
    }

    fn listeners_json(pod: &Pod, snap: &mesh_control::snapshot::Snapshot) -> String {
        let out = mesh_control::xds::generate(snap, &sidecar(pod));
        out.listeners
            .iter()
            .map(|l| mesh_api::xds::json::to_json(l).unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_policy_has_twenty_rules_and_every_object_loads() {
        assert_eq!(policy_yaml("authz-ours").matches("\n  - ").count(), 20);
        let snap =
            super::super::super::proxy::mesh::snapshot(&config_yaml(&[Kind::Ours, Kind::Envoy]))
                .unwrap();
        let inbound = listeners_json(find(Kind::Ours, Role::Authz), &snap);
        let rule = format!("ns[bench]-policy[authz-ours-rules]-rule[{MATCHING_RULE}]");
        assert!(inbound.contains(&rule), "no {rule} in the inbound RBAC");
        assert!(inbound.contains("-rule[19]"));
        // The server without a policy has no RBAC filter.
        let plain = listeners_json(find(Kind::Ours, Role::Server), &snap);
        assert!(!plain.contains("envoy.filters.http.rbac"));
    }
}
