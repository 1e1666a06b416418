//! Feeds translated resources to a stock Envoy in `--mode validate`, which
//! parses and checks a full configuration without binding ports or
//! connecting anywhere. EDS clusters get their ClusterLoadAssignment
//! inline and RDS references get their RouteConfiguration inline, so the
//! static configuration is exactly what ADS would deliver.

use std::process::Command;

use mesh_api::xds::json::to_json;
use mesh_control::xds::ProxyResources;
use serde_json::{Value, json};

fn inline_routes(value: &mut Value, routes: &[Value]) {
    match value {
        Value::Object(map) => {
            let rds_name = map
                .get("rds")
                .and_then(|r| r.get("routeConfigName"))
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(name) = rds_name {
                let route = routes
                    .iter()
                    .find(|r| r["name"] == name.as_str())
                    .cloned()
                    .unwrap_or_else(|| json!({"name": name}));
                map.remove("rds");
                map.insert("routeConfig".into(), route);
            }
            for v in map.values_mut() {
                inline_routes(v, routes);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| inline_routes(v, routes)),
        _ => {}
    }
}

/// Envoy 1.40 in validate mode crashes (SIGSEGV) on an SDS source of
/// `ads: {}`, having no ADS stream to attach it to. Pointing SDS at an
/// explicit gRPC source on the same cluster validates the same secret
/// references without the crash.
fn sds_over_grpc(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("sdsConfig").is_some_and(|c| c.get("ads").is_some()) {
                map.insert(
                    "sdsConfig".into(),
                    json!({
                        "apiConfigSource": {
                            "apiType": "GRPC",
                            "transportApiVersion": "V3",
                            "grpcServices": [{"envoyGrpc": {"clusterName": "xds-grpc"}}]
                        },
                        "resourceApiVersion": "V3"
                    }),
                );
            }
            map.values_mut().for_each(sds_over_grpc);
        }
        Value::Array(items) => items.iter_mut().for_each(sds_over_grpc),
        _ => {}
    }
}

/// Builds the static bootstrap and runs `envoy --mode validate` on it.
pub fn validate(resources: &ProxyResources, proxy: &str) -> Result<(), String> {
    let assignments: Vec<Value> = resources
        .endpoints
        .iter()
        .map(|e| to_json(e).unwrap())
        .collect();
    let routes: Vec<Value> = resources
        .routes
        .iter()
        .map(|r| to_json(r).unwrap())
        .collect();
    let mut clusters: Vec<Value> = Vec::new();
    for c in &resources.clusters {
        let mut c = to_json(c).unwrap();
        if c["type"] == "EDS" {
            let name = c["name"].clone();
            let cla = assignments
                .iter()
                .find(|a| a["clusterName"] == name)
                .cloned()
                .unwrap_or_else(|| json!({"clusterName": name}));
            let map = c.as_object_mut().unwrap();
            map.remove("edsClusterConfig");
            map.insert("type".into(), json!("STATIC"));
            map.insert("loadAssignment".into(), cla);
        }
        clusters.push(c);
    }
    clusters.push(json!({
        "name": "xds-grpc",
        "type": "STATIC",
        "connectTimeout": "1s",
        "typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}}
            }
        },
        "loadAssignment": {"clusterName": "xds-grpc", "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 15010}}}}]}]}
    }));
    // Workload certificates come from the agent's SDS server through this
    // bootstrap cluster, as in Istio's bootstrap.
    clusters.push(json!({
        "name": mesh_api::wellknown::SDS_GRPC_CLUSTER,
        "type": "STATIC",
        "connectTimeout": "1s",
        "typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}}
            }
        },
        "loadAssignment": {"clusterName": mesh_api::wellknown::SDS_GRPC_CLUSTER, "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}}}]}]}
    }));
    let mut listeners: Vec<Value> = resources
        .listeners
        .iter()
        .map(|l| to_json(l).unwrap())
        .collect();
    for l in &mut listeners {
        inline_routes(l, &routes);
    }
    let mut bootstrap = json!({
        "node": {"id": format!("sidecar~127.0.0.1~{proxy}.default~default.svc.cluster.local"), "cluster": proxy},
        "staticResources": {"clusters": clusters, "listeners": listeners},
        "dynamicResources": {
            "adsConfig": {"apiType": "GRPC", "transportApiVersion": "V3", "grpcServices": [{"envoyGrpc": {"clusterName": "xds-grpc"}}]}
        }
    });
    sds_over_grpc(&mut bootstrap);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&bootstrap).unwrap())
        .map_err(|e| e.to_string())?;
    // MESH_KEEP_BOOTSTRAP=DIR keeps every bootstrap for debugging by hand.
    if let Some(keep) = std::env::var_os("MESH_KEEP_BOOTSTRAP") {
        let _ = std::fs::copy(
            &file,
            std::path::Path::new(&keep).join(format!("{proxy}.json")),
        );
    }
    let out = Command::new(mesh_test_support::envoy::envoy_binary())
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(&file)
        .output()
        .map_err(|e| format!("cannot run envoy: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        // Envoy prints the whole offending proto before the reason: keep
        // the first line and the last few.
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut reason: Vec<&str> = lines.iter().take(1).copied().collect();
        reason.extend(lines.iter().skip(1).rev().take(5).rev().copied());
        Err(reason.join("\n"))
    }
}
