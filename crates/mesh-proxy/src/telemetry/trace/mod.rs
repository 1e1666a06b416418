//! Distributed tracing, as Envoy's OpenTelemetry tracer does it for an
//! HTTP connection manager with `tracing` set.
//!
//! Data flow: the HCM's `tracing` block is compiled once per update into a
//! [`TraceConfig`] (on `HttpManager`). Per request, after `x-request-id`
//! is settled, [`start`] reads the caller's context ([`propagation`]),
//! decides whether to sample and writes this hop's context into the
//! request going upstream. Only a sampled request gets a [`HopSpan`]; it
//! rides with the response body and is finished from the request's final
//! [`RequestRecord`], then handed to an OpenTelemetry SDK batch processor
//! that exports over OTLP/gRPC to the endpoint of the collector cluster.
//!
//! An unsampled request costs a header read and one `traceparent` write
//! (flag `00`, so the next hops keep the decision, as Envoy's tracer
//! does); no span, no lock, no allocation beyond the header value.

pub mod propagation;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as PbTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag;
use http::HeaderMap;
use http::header::HeaderName;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use prost::Name;

use crate::proxy::record::RequestRecord;
use crate::runtime::convert::{HostAddress, decode_any};
use crate::runtime::listener::Direction;
use crate::runtime::{FieldResult, Runtime, invalid, join};
pub use propagation::{B3Format, Extracted, Injected, Parent};

/// Name of Envoy's OpenTelemetry tracer.
pub const OPENTELEMETRY_TRACER: &str = "envoy.tracers.opentelemetry";
/// `x-envoy-force-trace`: an internal caller asks for a sampled trace.
const FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");
/// `x-client-trace-id`: sampled under `client_sampling`.
const CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
/// Envoy's default `max_path_tag_length`.
const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;

/// A compiled HCM `tracing` block with the OpenTelemetry tracer.
#[derive(Debug)]
pub struct TraceConfig {
    /// The cluster of the OTLP collector (`grpc_service.envoy_grpc`).
    pub collector_cluster: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Percent of requests without a decision that are traced (Envoy's
    /// default 100).
    pub random_sampling: f64,
    /// Percent of requests with `x-client-trace-id` that are traced.
    pub client_sampling: f64,
    /// Percent of randomly sampled requests kept.
    pub overall_sampling: f64,
    /// Tags added to every span.
    pub custom_tags: Vec<CustomTag>,
    /// The router makes a child span (CLIENT) for the upstream request.
    pub spawn_upstream_span: bool,
    /// `http.url` is cut to this many bytes.
    pub max_path_tag_length: usize,
}

/// One of `custom_tags`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomTag {
    /// The tag (attribute) name.
    pub tag: String,
    /// Where its value comes from.
    pub value: TagValue,
}

/// Where a custom tag's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagValue {
    /// A literal (also environment tags, read when the config is
    /// compiled as Envoy reads them at load).
    Literal(String),
    /// A request header, or the default when absent (no tag if empty).
    RequestHeader(HeaderName, String),
}

/// What the proxy says about itself in every span.
#[derive(Debug, Default)]
struct NodeInfo {
    id: String,
    zone: String,
}

static NODE: OnceLock<NodeInfo> = OnceLock::new();

/// Records the proxy's node id and zone for the `node_id` and `zone`
/// tags; the first call wins.
pub fn set_node(node: &Node) {
    let _ = NODE.set(NodeInfo {
        id: node.id.clone(),
        zone: node
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .unwrap_or_default(),
    });
}

/// Compiles an HCM's `tracing` at `at`. `None` means no spans: no
/// provider, or a provider or exporter this proxy does not implement (a
/// warning names it; the listener keeps serving, untraced).
pub(crate) fn compile(pb: &PbTracing, at: &str) -> FieldResult<Option<Arc<TraceConfig>>> {
    let percent = |p: Option<&envoy_types::pb::envoy::r#type::v3::Percent>, field: &str| {
        let v = p.map_or(100.0, |p| p.value);
        if (0.0..=100.0).contains(&v) {
            Ok(v)
        } else {
            invalid(
                join(at, field),
                format!("{v} is not a percentage (0..=100)"),
            )
        }
    };
    let random_sampling = percent(pb.random_sampling.as_ref(), "random_sampling")?;
    let client_sampling = percent(pb.client_sampling.as_ref(), "client_sampling")?;
    let overall_sampling = percent(pb.overall_sampling.as_ref(), "overall_sampling")?;
    let Some(provider) = &pb.provider else {
        return Ok(None);
    };
    let at_provider = join(at, "provider");
    let any = match &provider.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return invalid(join(&at_provider, "typed_config"), "is required"),
    };
    if any.type_url != OpenTelemetryConfig::type_url() {
        tracing::warn!(
            field = %join(&at_provider, "typed_config"),
            provider = %provider.name,
            type_url = %any.type_url,
            "tracer not supported (only {OPENTELEMETRY_TRACER}); requests are not traced"
        );
        return Ok(None);
    }
    let at_config = join(&at_provider, "typed_config");
    let otel: OpenTelemetryConfig = decode_any(any, &at_config)?;
    let cluster = match otel
        .grpc_service
        .as_ref()
        .and_then(|g| g.target_specifier.as_ref())
    {
        Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => e.cluster_name.clone(),
        Some(TargetSpecifier::EnvoyGrpc(_)) => {
            return invalid(
                join(&at_config, "grpc_service.envoy_grpc.cluster_name"),
                "is required",
            );
        }
        _ => {
            tracing::warn!(
                field = %at_config,
                "only grpc_service.envoy_grpc exports spans (not google_grpc or http_service); requests are not traced"
            );
            return Ok(None);
        }
    };
    let mut custom_tags = Vec::new();
    for (i, t) in pb.custom_tags.iter().enumerate() {
        let field = join(at, &format!("custom_tags[{i}]"));
        if t.tag.is_empty() {
            return invalid(join(&field, "tag"), "is required");
        }
        let value = match &t.r#type {
            Some(custom_tag::Type::Literal(l)) => TagValue::Literal(l.value.clone()),
            Some(custom_tag::Type::Environment(e)) => TagValue::Literal(
                std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()),
            ),
            Some(custom_tag::Type::RequestHeader(h)) => {
                let name = HeaderName::try_from(h.name.as_str()).map_err(|_| {
                    crate::runtime::FieldError {
                        field: join(&field, "request_header.name"),
                        reason: format!("{:?} is not a header name", h.name),
                    }
                })?;
                TagValue::RequestHeader(name, h.default_value.clone())
            }
            Some(custom_tag::Type::Metadata(_) | custom_tag::Type::Value(_)) => {
                tracing::warn!(field = %field, "metadata and formatter custom tags are not supported; tag skipped");
                continue;
            }
            None => return invalid(field, "literal, environment or request_header is required"),
        };
        custom_tags.push(CustomTag {
            tag: t.tag.clone(),
            value,
        });
    }
    Ok(Some(Arc::new(TraceConfig {
        collector_cluster: cluster,
        service_name: otel.service_name,
        random_sampling,
        client_sampling,
        overall_sampling,
        custom_tags,
        spawn_upstream_span: pb.spawn_upstream_span.as_ref().is_some_and(|b| b.value),
        max_path_tag_length: pb
            .max_path_tag_length
            .as_ref()
            .map_or(DEFAULT_MAX_PATH_TAG_LENGTH, |v| v.value as usize),
    })))
}

/// A sampled request's span, finished when the response ends.
#[derive(Debug)]
pub struct HopSpan {
    config: Arc<TraceConfig>,
    /// Where the collector is (the cluster's endpoint when the request
    /// started); `None`: the span is dropped with a debug line.
    collector: Option<String>,
    direction: Direction,
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    /// The router's child span, with `spawn_upstream_span`.
    upstream_span_id: Option<u64>,
    /// Custom tags read from the request.
    tags: Vec<KeyValue>,
}

impl HopSpan {
    /// The trace id, as 32 lowercase hex digits (Envoy's `%TRACE_ID%`).
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// What [`start`] needs to know about a request besides its headers.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The listener's direction: outbound hops are `egress`.
    pub direction: Direction,
    /// Whether the caller is internal (`x-envoy-force-trace` is honoured).
    pub internal: bool,
    /// The compiled config (for the collector cluster's endpoint).
    pub runtime: &'a Runtime,
}

/// Starts tracing a request: reads its context, decides, and writes the
/// context upstream. A span only when the request is sampled.
pub fn start(
    config: &Arc<TraceConfig>,
    headers: &mut HeaderMap,
    info: RequestInfo<'_>,
) -> Option<HopSpan> {
    let extracted = propagation::extract(headers);
    let sampled = extracted
        .sampled
        .unwrap_or_else(|| decide(config, headers, info.internal));
    let trace_id = extracted
        .parent
        .as_ref()
        .map_or_else(new_trace_id, |p| p.trace_id);
    let span_id = new_span_id();
    let parent_span_id = extracted.parent.as_ref().map(|p| p.span_id);
    let upstream_span_id = (sampled && config.spawn_upstream_span).then(new_span_id);
    let (injected_span, injected_parent) = match upstream_span_id {
        Some(up) => (up, Some(span_id)),
        None => (span_id, parent_span_id),
    };
    propagation::inject(
        headers,
        &Injected {
            trace_id,
            span_id: injected_span,
            parent_span_id: injected_parent,
            sampled,
            extracted: &extracted,
        },
    );
    if !sampled {
        return None;
    }
    let tags = config
        .custom_tags
        .iter()
        .filter_map(|t| {
            let value = match &t.value {
                TagValue::Literal(v) => v.clone(),
                TagValue::RequestHeader(name, default) => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| default.clone(), str::to_string),
            };
            (!value.is_empty()).then(|| KeyValue::new(t.tag.clone(), value))
        })
        .collect();
    Some(HopSpan {
        collector: collector_endpoint(info.runtime, &config.collector_cluster),
        config: config.clone(),
        direction: info.direction,
        trace_id,
        span_id,
        parent_span_id,
        upstream_span_id,
        tags,
    })
}

/// Envoy's decision for a request that brought none: forced by an
/// internal caller, else `x-client-trace-id` under `client_sampling`,
/// else `random_sampling` then `overall_sampling`.
fn decide(config: &TraceConfig, headers: &HeaderMap, internal: bool) -> bool {
    if internal && headers.contains_key(FORCE_TRACE) {
        return true;
    }
    if internal && headers.contains_key(CLIENT_TRACE_ID) {
        return chance(config.client_sampling);
    }
    chance(config.random_sampling) && chance(config.overall_sampling)
}

fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

fn new_trace_id() -> u128 {
    fastrand::u128(1..)
}

fn new_span_id() -> u64 {
    fastrand::u64(1..)
}

/// The first endpoint of the collector's cluster, as an `http://` URI
/// (also where OpenTelemetry access logs go).
pub(crate) fn collector_endpoint(runtime: &Runtime, cluster: &str) -> Option<String> {
    let c = runtime.cluster(cluster)?;
    let assignment = match &c.config.inline_assignment {
        Some(a) if c.assignment.endpoints().next().is_none() => a,
        _ => &c.assignment,
    };
    assignment.endpoints().next().map(|e| match &e.address {
        HostAddress::Ip(addr) => format!("http://{addr}"),
        HostAddress::Dns { host, port } => format!("http://{host}:{port}"),
    })
}

// === impl HopSpan ===

impl HopSpan {
    /// This hop's span id (the parent of the next hop, or of the upstream
    /// span with `spawn_upstream_span`).
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// Ends the span (and its upstream child) with what the request's
    /// record says, and queues them for export.
    pub fn finish(self, record: &RequestRecord) {
        let Some(endpoint) = &self.collector else {
            tracing::debug!(cluster = %self.config.collector_cluster, "no collector endpoint; span dropped");
            return;
        };
        let Some(tracer) = tracer_for(endpoint, &self.config.service_name) else {
            return;
        };
        let end = record.start + record.duration;
        let egress = self.direction == Direction::Outbound;
        let mut attributes = span_attributes(&self.config, record);
        attributes.extend(self.tags.iter().cloned());
        let status = if record.response_code >= 500 || record.response_code == 0 {
            attributes.push(KeyValue::new("error", "true"));
            Status::error(format!("{}", record.response_code))
        } else {
            Status::Unset
        };
        let (name, kind) = match (egress, self.upstream_span_id.is_some()) {
            (true, false) => (format!("egress {}", record.authority), SpanKind::Client),
            (true, true) => (format!("egress {}", record.authority), SpanKind::Server),
            (false, _) => ("ingress".to_string(), SpanKind::Server),
        };
        let parent = self.parent_span_id.unwrap_or(0);
        export(
            &tracer,
            SpanParts {
                name,
                kind,
                trace_id: self.trace_id,
                span_id: self.span_id,
                parent_span_id: parent,
                start: record.start,
                end,
                attributes: attributes.clone(),
                status: status.clone(),
            },
        );
        if let Some(up) = self.upstream_span_id {
            let cluster = record.cluster.as_deref().unwrap_or("-");
            let mut attributes = attributes;
            attributes.retain(|kv| kv.key.as_str() != "peer.address");
            if let Some(host) = &record.upstream_host {
                attributes.push(KeyValue::new("peer.address", host.clone()));
            }
            // The upstream request starts once routing is done; the
            // record keeps no such instant, so it spans the response.
            let upstream_start = record
                .upstream_service_time
                .map_or(record.start, |t| end.checked_sub(t).unwrap_or(record.start));
            export(
                &tracer,
                SpanParts {
                    name: format!("router {cluster} egress"),
                    kind: SpanKind::Client,
                    trace_id: self.trace_id,
                    span_id: up,
                    parent_span_id: self.span_id,
                    start: upstream_start.max(record.start),
                    end,
                    attributes,
                    status,
                },
            );
        }
    }
}

/// The tags Envoy's HTTP tracer sets, from the request's record.
fn span_attributes(config: &TraceConfig, r: &RequestRecord) -> Vec<KeyValue> {
    let node = NODE.get_or_init(NodeInfo::default);
    let scheme = if r.server_name.is_some() {
        "https"
    } else {
        "http"
    };
    let mut url = format!("{scheme}://{}{}", r.authority, r.path);
    if url.len() > config.max_path_tag_length {
        let mut cut = config.max_path_tag_length;
        while !url.is_char_boundary(cut) {
            cut -= 1;
        }
        url.truncate(cut);
    }
    let protocol = match r.protocol {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    let mut v = vec![
        KeyValue::new("component", "proxy"),
        KeyValue::new("node_id", node.id.clone()),
        KeyValue::new("zone", node.zone.clone()),
        KeyValue::new("http.url", url),
        KeyValue::new("http.method", r.method.to_string()),
        KeyValue::new("http.protocol", protocol),
        KeyValue::new("downstream_cluster", "-"),
        KeyValue::new(
            "user_agent",
            r.user_agent.clone().unwrap_or_else(|| "-".into()),
        ),
        KeyValue::new("peer.address", r.downstream_remote.ip().to_string()),
        KeyValue::new(
            "request_size",
            i64::try_from(r.bytes_received).unwrap_or(i64::MAX),
        ),
        KeyValue::new(
            "response_size",
            i64::try_from(r.bytes_sent).unwrap_or(i64::MAX),
        ),
        KeyValue::new("http.status_code", i64::from(r.response_code)),
        KeyValue::new("response_flags", r.flags.to_string()),
    ];
    if let Some(id) = &r.request_id {
        v.push(KeyValue::new("guid:x-request-id", id.clone()));
    }
    if let Some(c) = &r.cluster {
        v.push(KeyValue::new("upstream_cluster", c.clone()));
        v.push(KeyValue::new("upstream_cluster.name", c.clone()));
    }
    if let Some(h) = &r.upstream_host {
        v.push(KeyValue::new("upstream_address", h.clone()));
    }
    v
}

/// A finished span's data.
struct SpanParts {
    name: String,
    kind: SpanKind,
    trace_id: u128,
    span_id: u64,
    /// 0: a root span.
    parent_span_id: u64,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

fn export(tracer: &SdkTracer, s: SpanParts) {
    let parent = if s.parent_span_id == 0 {
        Context::new()
    } else {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(s.trace_id),
            SpanId::from(s.parent_span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        ))
    };
    let mut builder = tracer
        .span_builder(s.name)
        .with_kind(s.kind)
        .with_start_time(s.start)
        .with_attributes(s.attributes);
    builder.trace_id = Some(TraceId::from(s.trace_id));
    builder.span_id = Some(SpanId::from(s.span_id));
    let mut span = tracer.build_with_context(builder, &parent);
    span.set_status(s.status);
    span.end_with_timestamp(s.end);
}

/// One OTLP exporter (with its batch processor) per collector endpoint
/// and service name. Read on sampled requests only; written when a new
/// collector shows up.
type Exporters = RwLock<HashMap<(String, String), (SdkTracerProvider, SdkTracer)>>;

static EXPORTERS: OnceLock<Exporters> = OnceLock::new();

fn tracer_for(endpoint: &str, service: &str) -> Option<SdkTracer> {
    let exporters = EXPORTERS.get_or_init(Default::default);
    let key = (endpoint.to_string(), service.to_string());
    if let Some((_, t)) = exporters
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Some(t.clone());
    }
    let mut map = exporters.write().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = map.get(&key) {
        return Some(t.clone());
    }
    use opentelemetry_otlp::WithExportConfig as _;
    // The gRPC client's tasks (encoding and writing each batch) are
    // spawned where the exporter is built: on the export runtime's own
    // thread, never on the data path's workers.
    let _on_export_runtime = export_runtime().map(tokio::runtime::Runtime::enter);
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "cannot build the OTLP span exporter; spans dropped");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder_empty();
    if !service.is_empty() {
        resource = resource.with_service_name(service.to_string());
    }
    // Batches leave every 5 s (Envoy's flush interval) unless
    // OTEL_BSP_SCHEDULE_DELAY says otherwise (the SDK reads the OTEL_BSP_*
    // variables), or once EXPORT_BATCH spans wait: small batches keep
    // each export short.
    let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_max_export_batch_size(EXPORT_BATCH)
        .build();
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_resource(resource.build())
        .with_span_processor(processor)
        .build();
    use opentelemetry::trace::TracerProvider as _;
    let tracer = provider.tracer("envoy");
    tracing::info!(endpoint, service, "exporting spans over OTLP/gRPC");
    map.insert(key, (provider, tracer.clone()));
    Some(tracer)
}

/// Spans per export (the SDK's default is 512).
const EXPORT_BATCH: usize = 128;

/// The runtime the span exporters' gRPC clients run on: one thread of its
/// own, so that encoding and writing a batch never holds up requests on
/// the data path's workers. `None` (exporters then use the caller's
/// runtime) if the thread cannot be started.
fn export_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-spans")
                .enable_all()
                .build()
                .map_err(|e| tracing::warn!(error = %e, "no runtime for the span exporters; they share the data path's"))
                .ok()
        })
        .as_ref()
}

/// Exports the spans still queued (at shutdown).
pub fn flush() {
    if let Some(exporters) = EXPORTERS.get() {
        for (provider, _) in exporters.read().unwrap_or_else(|e| e.into_inner()).values() {
            let _ = provider.force_flush();
        }
    }
}

#[cfg(test)]
mod tests;
