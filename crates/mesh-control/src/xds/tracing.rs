//! Tracing: the HTTP connection managers' `tracing` block, as istiod
//! writes it for an `opentelemetry` extension provider.
//!
//! Which provider and sampling apply is resolved the way Istio resolves
//! Telemetry (`super::telemetry`: the mesh-wide resource, then the
//! proxy's namespace, then a resource whose selector matches the
//! workload); each level's `tracing[]` entries whose
//! `match.mode` covers the listener's side override the providers and
//! the sampling percentage and add custom tags. No Telemetry naming a
//! provider falls back to MeshConfig `defaultProviders.tracing`; the
//! percentage falls back to `defaultConfig.tracing.sampling`, then 1 %.
//!
//! Applied once over the built listeners (like the access log), so the
//! listener builders stay unaware of it. Only `opentelemetry` providers
//! are translated; a selected provider of another kind is skipped with a
//! warning naming it.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{GrpcService, grpc_service};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, tracing::Http, tracing::http};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_api::telemetry::WorkloadMode;
use mesh_api::wellknown::{LABEL_APP, LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION};
use mesh_api::xds::pack_any;

use super::scope::ProxyScope;
use crate::proxy::ProxyInfo;
use crate::snapshot::Snapshot;

/// Envoy's name of the OpenTelemetry tracer.
pub const OPENTELEMETRY_TRACER: &str = "envoy.tracers.opentelemetry";
/// Istio's default sampling percentage.
pub const DEFAULT_SAMPLING: f64 = 1.0;

/// What tracing resolves to for one side of one proxy; compared (and
/// hashed) as a translation dependency.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// `outbound|<port>||<host>` of the collector.
    pub cluster: String,
    /// The resource `service.name`: `<canonical service>.<namespace>`.
    pub service_name: String,
    /// `random_sampling`, percent.
    pub sampling: f64,
    /// Tag name -> tag, Istio's and the Telemetry's.
    pub custom_tags: BTreeMap<String, CustomTag>,
}

/// The settings of both sides, as a shape key part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceKey(String);

// === impl TraceKey ===

impl TraceKey {
    /// What tracing reads of `proxy`, for the translation cache.
    pub fn of(snapshot: &Snapshot, proxy: &ProxyInfo) -> Self {
        let client = settings(snapshot, proxy, WorkloadMode::Client);
        let server = settings(snapshot, proxy, WorkloadMode::Server);
        Self(format!("{client:?}|{server:?}"))
    }
}

/// The canonical service of a workload: its canonical-name label, else
/// `app.kubernetes.io/name`, else `app`, else the workload's name.
fn canonical_service(proxy: &ProxyInfo) -> String {
    [LABEL_CANONICAL_NAME, "app.kubernetes.io/name", LABEL_APP]
        .iter()
        .find_map(|l| proxy.labels.get(*l))
        .cloned()
        .unwrap_or_else(|| workload_name(&proxy.name))
}

/// A pod's workload: its name without the ReplicaSet and pod suffixes.
fn workload_name(pod: &str) -> String {
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    match parts.as_slice() {
        [_, _, workload] => (*workload).to_string(),
        _ => pod.to_string(),
    }
}

/// The tracing that applies to `mode`'s side of `proxy`, if any.
pub fn settings(
    snapshot: &Snapshot,
    proxy: &ProxyInfo,
    mode: WorkloadMode,
) -> Option<TraceSettings> {
    let mesh = &snapshot.mesh;
    let covers = |m: Option<WorkloadMode>| super::telemetry::covers(proxy, m, mode);
    let mut providers: Option<Vec<String>> = None;
    let mut sampling: Option<f64> = None;
    let mut disabled = false;
    let mut tags = BTreeMap::new();
    for t in super::telemetry::applicable(snapshot, proxy) {
        for tr in t
            .spec
            .tracing
            .iter()
            .filter(|tr| covers(tr.r#match.as_ref().and_then(|m| m.mode)))
        {
            if !tr.providers.is_empty() {
                providers = Some(tr.providers.iter().map(|p| p.name.clone()).collect());
            }
            if let Some(p) = tr.random_sampling_percentage {
                sampling = Some(p);
            }
            if let Some(d) = tr.disable_span_reporting {
                disabled = d;
            }
            for (name, tag) in &tr.custom_tags {
                if let Some(t) = telemetry_tag(name, tag) {
                    tags.insert(name.clone(), t);
                }
            }
        }
    }
    if disabled {
        return None;
    }
    let providers = providers.unwrap_or_else(|| {
        mesh.default_providers
            .as_ref()
            .map(|d| d.tracing.clone())
            .unwrap_or_default()
    });
    // Envoy takes one tracer per connection manager: the first provider
    // that is OpenTelemetry (as istiod, which uses the first provider).
    let (provider_name, otel) = providers.iter().find_map(|name| {
        let p = mesh
            .extension_providers
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))?;
        match &p.opentelemetry {
            Some(o) => Some((name.clone(), o)),
            None => {
                tracing::warn!(provider = %name, "tracing provider is not opentelemetry; not translated");
                None
            }
        }
    })?;
    let (Some(service), Some(port)) = (otel.service.as_deref(), otel.port) else {
        tracing::warn!(provider = %provider_name, "opentelemetry provider needs service and port");
        return None;
    };
    let Some(cluster) = collector_cluster(service, port) else {
        tracing::warn!(provider = %provider_name, port, "opentelemetry provider port is not a port");
        return None;
    };
    let sampling = sampling
        .or_else(|| {
            mesh.default_config
                .as_ref()
                .and_then(|c| c.tracing.as_ref())
                .and_then(|t| t.sampling)
        })
        .unwrap_or(DEFAULT_SAMPLING)
        .clamp(0.0, 100.0);
    let canonical = canonical_service(proxy);
    let revision = proxy
        .labels
        .get(LABEL_CANONICAL_REVISION)
        .or_else(|| proxy.labels.get("version"))
        .cloned()
        .unwrap_or_else(|| "latest".into());
    let mesh_id = mesh
        .default_config
        .as_ref()
        .and_then(|c| c.mesh_id.clone())
        .unwrap_or_else(|| mesh.trust_domain().to_string());
    // Istio's tags; its sidecars read them from the environment, set
    // here as literals from the same facts (the proxy's labels,
    // namespace and cluster).
    for (name, value) in [
        ("istio.canonical_revision", revision),
        ("istio.canonical_service", canonical.clone()),
        ("istio.mesh_id", mesh_id),
        ("istio.namespace", proxy.namespace.clone()),
        ("istio.cluster_id", proxy.cluster_id.clone()),
    ] {
        tags.entry(name.to_string())
            .or_insert_with(|| literal(name, value));
    }
    Some(TraceSettings {
        cluster,
        service_name: format!("{canonical}.{}", proxy.namespace),
        sampling,
        custom_tags: tags,
    })
}

/// The outbound cluster of an extension provider's `service` (Istio's
/// `[namespace/]hostname`) and `port`, `outbound|<port>||<hostname>`: where
/// a collector (tracing, OpenTelemetry access logs) is reached. `None`
/// when the port does not fit one.
pub(crate) fn collector_cluster(service: &str, port: u32) -> Option<String> {
    let host = service.split_once('/').map_or(service, |(_, h)| h);
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    Some(super::outbound_cluster_name(port, "", host))
}

fn literal(tag: &str, value: String) -> CustomTag {
    CustomTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal { value })),
    }
}

fn telemetry_tag(name: &str, tag: &mesh_api::telemetry::CustomTag) -> Option<CustomTag> {
    let kind = if let Some(l) = &tag.literal {
        custom_tag::Type::Literal(custom_tag::Literal {
            value: l.value.clone(),
        })
    } else if let Some(e) = &tag.environment {
        custom_tag::Type::Environment(custom_tag::Environment {
            name: e.name.clone(),
            default_value: e.default_value.clone().unwrap_or_default(),
        })
    } else if let Some(h) = &tag.header {
        custom_tag::Type::RequestHeader(custom_tag::Header {
            name: h.name.clone(),
            default_value: h.default_value.clone().unwrap_or_default(),
        })
    } else {
        tracing::warn!(tag = %name, "custom tag without literal, environment or header; skipped");
        return None;
    };
    Some(CustomTag {
        tag: name.into(),
        r#type: Some(kind),
    })
}

/// The HCM `tracing` block istiod writes for `s`.
pub fn hcm_tracing(s: &TraceSettings, spawn_upstream_span: bool) -> Tracing {
    let otel = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: s.cluster.clone(),
                    authority: s.cluster.rsplit('|').next().unwrap_or_default().to_string(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        service_name: s.service_name.clone(),
        ..Default::default()
    };
    Tracing {
        client_sampling: Some(Percent { value: 100.0 }),
        random_sampling: Some(Percent { value: s.sampling }),
        overall_sampling: Some(Percent { value: 100.0 }),
        custom_tags: s.custom_tags.values().cloned().collect(),
        provider: Some(Http {
            name: OPENTELEMETRY_TRACER.into(),
            config_type: Some(http::ConfigType::TypedConfig(pack_any(otel))),
        }),
        spawn_upstream_span: Some(BoolValue {
            value: spawn_upstream_span,
        }),
        ..Default::default()
    }
}

/// Sets `tracing` on every HTTP connection manager of `listeners`: the
/// client side's settings on outbound listeners (and gateways), the
/// server side's on inbound ones. Outbound sidecar and gateway managers
/// spawn an upstream span, as istiod sets them.
pub(crate) fn apply(scope: &ProxyScope<'_>, listeners: &mut [Listener]) {
    let (snapshot, proxy) = (scope.snapshot, scope.proxy);
    let client = settings(snapshot, proxy, WorkloadMode::Client);
    let server = settings(snapshot, proxy, WorkloadMode::Server);
    if client.is_none() && server.is_none() {
        return;
    }
    super::listener::for_each_hcm(listeners, |inbound, hcm| {
        let Some(s) = (if inbound { &server } else { &client }) else {
            return false;
        };
        hcm.tracing = Some(hcm_tracing(s, !inbound));
        true
    });
}
