//! Debug and ops endpoints of the ADS server, for the monitoring port:
//! `/debug/syncz` (per proxy, per type: sent, acked, rejected),
//! `/debug/config_dump?proxyID=<node id>` (what a connected proxy is
//! served, in the shape of Envoy's `/config_dump`, which `meshctl
//! proxy-status POD` diffs against the proxy's own), `/metrics`
//! (Prometheus) and `/ready` (200 once the first snapshot is loaded). The
//! lead mounts `/debug/configz` next to these with `Router::merge`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use envoy_types::pb::envoy::admin::v3::{
    ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump,
    SecretsConfigDump, clusters_config_dump, endpoints_config_dump, listeners_config_dump,
    routes_config_dump, secrets_config_dump,
};
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::google::protobuf::Any;
use mesh_api::xds::{ResourceType, pack_any};
use prost::{Message, Name};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::AdsServer;
use super::metrics::{CONTENT_TYPE, Metrics};
use super::resources::View;
use super::state::{ProxySync, SyncState};
use crate::snapshot::Snapshot;

/// What the handlers read.
#[derive(Clone)]
pub struct DebugState {
    /// Per-proxy sync state.
    pub sync: SyncState,
    /// The registry served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The snapshot channel; ready once a snapshot with version > 0 is in it.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
}

/// `/debug/syncz` body.
#[derive(Debug, Serialize)]
pub struct Syncz {
    /// The control plane's release (`meshctl proxy-status` shows it).
    pub version: &'static str,
    /// Newest snapshot version.
    pub snapshot_version: u64,
    /// Connected proxies.
    pub proxies: Vec<SynczProxy>,
}

/// One proxy in `/debug/syncz`.
#[derive(Debug, Serialize)]
pub struct SynczProxy {
    /// Sync state of the stream.
    #[serde(flatten)]
    pub sync: ProxySync,
    /// Per type: `SYNCED`, `STALE`, `NACKED` or `NOT SENT`.
    pub status: std::collections::BTreeMap<&'static str, &'static str>,
    /// The cluster the proxy says it is in (`CLUSTER_ID`, `Kubernetes` by
    /// default, as Istio).
    pub cluster_id: String,
}

/// `/debug/syncz?proxy=<node id>` narrows to one proxy.
#[derive(Debug, Deserialize)]
pub struct SynczQuery {
    /// Node id.
    pub proxy: Option<String>,
}

/// `/debug/config_dump?proxyID=<node id>` (istiod's parameter name).
#[derive(Debug, Deserialize)]
pub struct ConfigDumpQuery {
    /// Node id of a connected proxy.
    #[serde(rename = "proxyID")]
    pub proxy_id: String,
}

/// The router for `/debug/syncz`, `/metrics` and `/ready`.
pub fn router(state: DebugState) -> Router {
    Router::new()
        .route("/debug/syncz", get(syncz))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .with_state(state)
}

impl AdsServer {
    /// [`router`] over this server's state, plus `/debug/config_dump`.
    pub fn debug_router(&self) -> Router {
        router(DebugState {
            sync: self.sync_state(),
            metrics: self.metrics(),
            snapshots: self.snapshots(),
        })
        .merge(
            Router::new()
                .route("/debug/config_dump", get(config_dump))
                .with_state(self.clone()),
        )
    }

    /// What the proxy with node id `proxy_id` is served at the newest
    /// snapshot: the translation its stream sends (shared through the shape
    /// cache, so asking costs nothing once the stream has it).
    async fn served_view(&self, proxy_id: &str) -> Result<View, (StatusCode, String)> {
        let sync = self.shared.sync.proxy(proxy_id).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("proxy {proxy_id:?} is not connected (see /debug/syncz)\n"),
            )
        })?;
        let snapshot = self.shared.snapshots.borrow().clone();
        if snapshot.version == 0 {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for the first configuration snapshot\n".into(),
            ));
        }
        let _permit = self.shared.permits.acquire().await.map_err(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the control plane is shutting down\n".into(),
            )
        })?;
        self.shared
            .cache
            .get(&snapshot, &sync.proxy, &self.shared.translation)
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
    }
}

async fn syncz(State(state): State<DebugState>, Query(q): Query<SynczQuery>) -> Json<Syncz> {
    let proxies = state
        .sync
        .proxies()
        .into_iter()
        .filter(|p| q.proxy.as_deref().is_none_or(|id| p.proxy_id == id))
        .map(|sync| SynczProxy {
            status: sync.types.iter().map(|(k, t)| (*k, t.status())).collect(),
            cluster_id: sync.proxy.cluster_id.clone(),
            sync,
        })
        .collect();
    Json(Syncz {
        version: env!("CARGO_PKG_VERSION"),
        snapshot_version: state.snapshots.borrow().version,
        proxies,
    })
}

async fn metrics(State(state): State<DebugState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn ready(State(state): State<DebugState>) -> Response {
    let version = state.snapshots.borrow().version;
    if version > 0 {
        (StatusCode::OK, format!("ready (snapshot {version})\n")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first configuration snapshot\n",
        )
            .into_response()
    }
}

async fn config_dump(
    State(server): State<AdsServer>,
    Query(q): Query<ConfigDumpQuery>,
) -> Response {
    let view = match server.served_view(&q.proxy_id).await {
        Ok(view) => view,
        Err(answer) => return answer.into_response(),
    };
    match envoy_json(&view_dump(&view)) {
        Ok(json) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// A proxy's view as Envoy's `ConfigDump`: one dynamic entry per resource,
/// with the version (content hash) the server sends it with. Private keys
/// in secrets are redacted, as Envoy's own dump does.
fn view_dump(view: &View) -> ConfigDump {
    let anys = |ty: ResourceType| -> Vec<(String, String, Any)> {
        view.items(ty)
            .filter_map(|item| {
                let any = Any::decode(item.encoded_any()).ok()?;
                Some((item.name.clone(), item.version.clone(), any))
            })
            .collect()
    };
    let clusters = ClustersConfigDump {
        version_info: view.version(ResourceType::Cluster),
        dynamic_active_clusters: anys(ResourceType::Cluster)
            .into_iter()
            .map(|(_, version, any)| clusters_config_dump::DynamicCluster {
                version_info: version,
                cluster: Some(any),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let endpoints = EndpointsConfigDump {
        dynamic_endpoint_configs: anys(ResourceType::Endpoint)
            .into_iter()
            .map(
                |(_, version, any)| endpoints_config_dump::DynamicEndpointConfig {
                    version_info: version,
                    endpoint_config: Some(any),
                    ..Default::default()
                },
            )
            .collect(),
        ..Default::default()
    };
    let listeners = ListenersConfigDump {
        version_info: view.version(ResourceType::Listener),
        dynamic_listeners: anys(ResourceType::Listener)
            .into_iter()
            .map(
                |(name, version, any)| listeners_config_dump::DynamicListener {
                    name,
                    active_state: Some(listeners_config_dump::DynamicListenerState {
                        version_info: version,
                        listener: Some(any),
                        last_updated: None,
                    }),
                    ..Default::default()
                },
            )
            .collect(),
        ..Default::default()
    };
    let routes = RoutesConfigDump {
        dynamic_route_configs: anys(ResourceType::Route)
            .into_iter()
            .map(|(_, version, any)| routes_config_dump::DynamicRouteConfig {
                version_info: version,
                route_config: Some(any),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let secrets = SecretsConfigDump {
        dynamic_active_secrets: anys(ResourceType::Secret)
            .into_iter()
            .map(|(name, version, any)| secrets_config_dump::DynamicSecret {
                name,
                version_info: version,
                secret: Some(redacted(any)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    ConfigDump {
        configs: vec![
            pack_any(clusters),
            pack_any(endpoints),
            pack_any(listeners),
            pack_any(routes),
            pack_any(secrets),
        ],
    }
}

/// A packed secret with its private material replaced by `[redacted]`.
fn redacted(any: Any) -> Any {
    fn hide(source: &mut Option<DataSource>) {
        if let Some(ds) = source
            && ds.specifier.is_some()
        {
            ds.specifier = Some(Specifier::InlineString("[redacted]".into()));
        }
    }
    let Ok(mut s) = Secret::decode(any.value.as_slice()) else {
        return any;
    };
    match &mut s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            hide(&mut c.private_key);
            hide(&mut c.password);
            hide(&mut c.pkcs12);
        }
        Some(secret::Type::SessionTicketKeys(k)) => {
            for key in &mut k.keys {
                key.specifier = Some(Specifier::InlineString("[redacted]".into()));
            }
        }
        Some(secret::Type::GenericSecret(g)) => hide(&mut g.secret),
        _ => {}
    }
    pack_any(s)
}

/// A message as Envoy's admin API prints it: proto3 JSON with the proto
/// field names (`dynamic_active_clusters`), defaults omitted, `Any`
/// expanded with `@type`.
fn envoy_json<M: Message + Name>(msg: &M) -> Result<serde_json::Value, String> {
    let pool = mesh_api::xds::json::pool().map_err(|e| e.to_string())?;
    let desc = pool
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| format!("unknown message type {}", M::full_name()))?;
    let dynamic =
        DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).map_err(|e| e.to_string())?;
    dynamic
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new().use_proto_field_name(true),
        )
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;

    use super::*;

    #[test]
    fn served_secrets_hide_their_private_keys() {
        let inline = |b: &[u8]| DataSource {
            specifier: Some(Specifier::InlineBytes(b.to_vec())),
            ..Default::default()
        };
        let secret = Secret {
            name: "kubernetes://gw-cert".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(b"CERT")),
                private_key: Some(inline(b"KEY")),
                ..Default::default()
            })),
        };
        let shown = Secret::decode(redacted(pack_any(secret)).value.as_slice()).unwrap();
        let Some(secret::Type::TlsCertificate(c)) = shown.r#type else {
            panic!("type changed");
        };
        assert_eq!(
            c.private_key.unwrap().specifier,
            Some(Specifier::InlineString("[redacted]".into()))
        );
        assert_eq!(
            c.certificate_chain.unwrap().specifier,
            Some(Specifier::InlineBytes(b"CERT".to_vec()))
        );
    }
}
