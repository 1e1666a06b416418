//! The one-hop configuration `mesh-bench proxy` measures, and the real
//! control plane serving it in process.
//!
//! One Kubernetes Service (`bench-backend.bench`, port 8080 named `http`,
//! so both proxies speak HTTP/1.1 upstream as Istio does for such a port)
//! whose one Pod is the bench's backend on 127.0.0.1; a DestinationRule
//! with TLS off (the backend has no sidecar); one VirtualService routing
//! every request for [`HOST`] to it, bound to two Gateways. Both proxies
//! get the same routes; each Gateway selects one proxy by its labels and
//! binds a different loopback port, so both listen at once.
//!
//! The control plane is mesh-control's own: the YAML is loaded with
//! `mesh_api::load_str`, built into a `Snapshot` and served by
//! `AdsServer` + `serve_listener` on 127.0.0.1, as `mesh-control` does.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use mesh_api::mesh_config::MeshConfig;
use mesh_control::ads::{AdsServer, serve_listener};
use mesh_control::snapshot::Snapshot;
use tokio::sync::{oneshot, watch};

use super::load::HOST;

/// Namespace of both gateways.
pub const GATEWAY_NAMESPACE: &str = "istio-system";
/// Labels `crate::envoy::router_bootstrap` gives the Envoy peer.
pub const ENVOY_SELECTOR: &str = "ingressgateway";
/// The `istio` label our proxy is started with.
pub const OURS_SELECTOR: &str = "mesh-bench-proxy";
/// Pod name of our proxy (in its node id).
pub const OURS_POD: &str = "bench-mesh-proxy-0";
/// Pod name of the Envoy peer (in its node id).
pub const ENVOY_POD: &str = "bench-envoy-0";

/// The running control plane; stops when dropped.
pub struct ControlPlane {
    /// Where ADS is served.
    pub addr: SocketAddr,
    server: AdsServer,
    // Kept so the server's snapshot channel stays open.
    _publish: watch::Sender<Arc<Snapshot>>,
    stop: Option<oneshot::Sender<()>>,
}

/// The configuration directory's content: backend on
/// 127.0.0.1:`backend_port`, our proxy's gateway on 127.0.0.1:`ours_port`,
/// Envoy's on 127.0.0.1:`envoy_port`.
pub fn config_yaml(backend_port: u16, ours_port: u16, envoy_port: u16) -> String {
    let gateways = gateways_yaml("bench", ours_port, envoy_port);
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: bench-backend, namespace: bench}}
spec:
  clusterIP: 10.96.0.100
  selector: {{app: bench-backend}}
  ports: [{{name: http, port: 8080, targetPort: {backend_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: bench-backend-0, namespace: bench, labels: {{app: bench-backend}}}}
spec: {{containers: [{{name: app, image: bench-backend}}]}}
status: {{podIP: 127.0.0.1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: bench-backend, namespace: bench}}
spec:
  host: bench-backend.bench.svc.cluster.local
  trafficPolicy:
    tls: {{mode: DISABLE}}
---
{gateways}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench, namespace: bench}}
spec:
  hosts: [{HOST}]
  gateways: [{GATEWAY_NAMESPACE}/bench-envoy, {GATEWAY_NAMESPACE}/bench-mesh-proxy]
  http:
  - route:
    - destination: {{host: bench-backend.bench.svc.cluster.local, port: {{number: 8080}}}}
"#
    )
}

/// The two gateways of a bench, `<prefix>-envoy` for Envoy on
/// 127.0.0.1:`envoy_port` and `<prefix>-mesh-proxy` for ours on
/// 127.0.0.1:`ours_port`, each a YAML document ending with `---`.
pub fn gateways_yaml(prefix: &str, ours_port: u16, envoy_port: u16) -> String {
    let gateway = |who: &str, selector: &str, port: u16| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {prefix}-{who}, namespace: {GATEWAY_NAMESPACE}}}
spec:
  selector: {{istio: {selector}}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["*"]
---
"#
        )
    };
    gateway("envoy", ENVOY_SELECTOR, envoy_port) + &gateway("mesh-proxy", OURS_SELECTOR, ours_port)
}

/// Loads `yaml` and builds the snapshot, failing on any object the loader
/// rejects (the bench would measure something else then).
pub fn snapshot(yaml: &str) -> anyhow::Result<Snapshot> {
    snapshot_with(yaml, MeshConfig::default())
}

/// [`snapshot`] with `mesh` as the MeshConfig.
pub fn snapshot_with(yaml: &str, mesh: MeshConfig) -> anyhow::Result<Snapshot> {
    let loaded = mesh_api::load_str("bench.yaml", yaml);
    if let Some(bad) = loaded.iter().find(|l| l.object.is_none()) {
        bail!(
            "bench object {:?} did not load: {:?}",
            bad.header,
            bad.report
        );
    }
    Ok(Snapshot::build(1, loaded.iter(), mesh))
}

/// The node id a router named `pod` in [`GATEWAY_NAMESPACE`] at
/// 127.0.0.1 introduces itself with (Istio's form).
pub fn node_id(pod: &str) -> String {
    let ns = GATEWAY_NAMESPACE;
    format!("router~127.0.0.1~{pod}.{ns}~{ns}.svc.cluster.local")
}

// === impl ControlPlane ===

impl ControlPlane {
    /// Serves `snapshot` on a loopback port, on the current runtime.
    pub async fn start(snapshot: Snapshot) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the ADS listener")?;
        Self::serve(listener, snapshot)
    }

    /// Serves `snapshot` on `listener` (which may belong to another
    /// network namespace), on the current runtime.
    pub fn serve(listener: tokio::net::TcpListener, snapshot: Snapshot) -> anyhow::Result<Self> {
        let (publish, snapshots) = watch::channel(Arc::new(snapshot));
        let server = AdsServer::with_default_generator(snapshots);
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_listener(listener, server.clone(), async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            server,
            _publish: publish,
            stop: Some(stop),
        })
    }

    /// The ADS server, to serve on another listener too (e.g. beside the
    /// CA on a TLS port).
    pub fn ads(&self) -> AdsServer {
        self.server.clone()
    }

    /// `Ok` when `node_id` ACKed the newest CDS, EDS, LDS and RDS it was
    /// sent and NACKed nothing; else what it is missing.
    pub fn synced(&self, node_id: &str) -> Result<(), String> {
        let Some(sync) = self.server.sync_state().proxy(node_id) else {
            return Err(format!("{node_id} is not connected"));
        };
        let mut missing = Vec::new();
        for ty in ["CDS", "EDS", "LDS", "RDS"] {
            match sync.types.get(ty) {
                Some(s) if s.status() == "SYNCED" => {}
                Some(s) => missing.push(format!("{ty} {}", s.status())),
                None => missing.push(format!("{ty} not requested")),
            }
        }
        for (ty, s) in &sync.types {
            if s.nacks > 0 {
                missing.push(format!(
                    "{ty} NACKed {} time(s): {}",
                    s.nacks,
                    s.last_nack.as_deref().unwrap_or("")
                ));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{node_id}: {}", missing.join("; ")))
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_config_translates_for_both_gateways() {
        let snap = snapshot(&config_yaml(18000, 18001, 18002)).unwrap();
        for (pod, selector, port, other) in [
            (OURS_POD, OURS_SELECTOR, "18001", "18002"),
            (ENVOY_POD, ENVOY_SELECTOR, "18002", "18001"),
        ] {
            let proxy = mesh_control::proxy::ProxyInfo::router(
                pod,
                GATEWAY_NAMESPACE,
                std::net::IpAddr::from([127, 0, 0, 1]),
                &[("istio", selector)],
            );
            let out = mesh_control::xds::generate(&snap, &proxy);
            let listeners: Vec<String> = out.listeners.iter().map(|l| l.name.clone()).collect();
            // Each proxy listens on its own port only, so both run at once.
            assert!(
                listeners.iter().any(|l| l.contains(port)),
                "{pod}: {listeners:?}"
            );
            assert!(
                !listeners.iter().any(|l| l.contains(other)),
                "{pod}: {listeners:?}"
            );
            assert!(
                out.clusters
                    .iter()
                    .any(|c| c.name.contains("bench-backend.bench")),
                "{pod}: no backend cluster"
            );
        }
    }
}
