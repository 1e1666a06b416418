//! App probes through the proxy (Istio's `rewriteAppHTTPProbers`). The
//! kubelet probes from outside the pod in plaintext, which STRICT mTLS
//! refuses; so each HTTP and TCP probe is pointed at the proxy's status
//! port as `/app-health/<container>/<livez|readyz|startupz>`, and the
//! original probe travels to the proxy in `ISTIO_KUBE_APP_PROBERS`, which
//! it runs against the app on localhost.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::STATUS_PORT;

/// Environment variable carrying the original probes (Istio's name).
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// Rewrites the probes of `containers`; returns the prober map (path ->
/// original probe) for the proxy.
pub fn rewrite(
    containers: &mut [Container],
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Value> {
    let mut probers = BTreeMap::new();
    for c in containers.iter_mut() {
        let ports = c.ports.clone().unwrap_or_default();
        let name = c.name.clone();
        for (kind, probe) in [
            ("livez", &mut c.liveness_probe),
            ("readyz", &mut c.readiness_probe),
            ("startupz", &mut c.startup_probe),
        ] {
            let Some(p) = probe.as_mut() else { continue };
            let path = format!("/app-health/{name}/{kind}");
            let resolve = |port: &IntOrString| -> Option<i32> {
                match port {
                    IntOrString::Int(n) => Some(*n),
                    IntOrString::String(s) => s.parse().ok().or_else(|| {
                        ports
                            .iter()
                            .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                            .map(|cp| cp.container_port)
                    }),
                }
            };
            let original = if let Some(http) = &p.http_get {
                let Some(port) = resolve(&http.port) else {
                    warnings.push(format!(
                        "container {name}: {kind} probe port {:?} is not a port of the container; probe not rewritten",
                        http.port
                    ));
                    continue;
                };
                let mut get = json!({
                    "path": http.path.clone().unwrap_or_else(|| "/".to_string()),
                    "port": port,
                    "scheme": http.scheme.clone().unwrap_or_else(|| "HTTP".to_string()),
                });
                if let Some(host) = &http.host {
                    get["host"] = json!(host);
                }
                if let Some(headers) = &http.http_headers {
                    get["httpHeaders"] = json!(
                        headers
                            .iter()
                            .map(|h| json!({"name": h.name, "value": h.value}))
                            .collect::<Vec<_>>()
                    );
                }
                json!({"httpGet": get, "timeoutSeconds": p.timeout_seconds.unwrap_or(1)})
            } else if let Some(tcp) = &p.tcp_socket {
                let Some(port) = resolve(&tcp.port) else {
                    warnings.push(format!(
                        "container {name}: {kind} probe port {:?} is not a port of the container; probe not rewritten",
                        tcp.port
                    ));
                    continue;
                };
                json!({"tcpSocket": {"port": port}, "timeoutSeconds": p.timeout_seconds.unwrap_or(1)})
            } else {
                // exec probes run inside the container and need nothing;
                // gRPC probes are not rewritten yet.
                if p.grpc.is_some() {
                    warnings.push(format!(
                        "container {name}: gRPC {kind} probe is not rewritten through the proxy; it fails under STRICT mTLS"
                    ));
                }
                continue;
            };
            probers.insert(path.clone(), original);
            *p = Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(path),
                    port: IntOrString::Int(i32::from(STATUS_PORT)),
                    scheme: Some("HTTP".to_string()),
                    ..HTTPGetAction::default()
                }),
                tcp_socket: None,
                ..p.clone()
            };
        }
    }
    probers
}
