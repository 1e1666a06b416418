//! The OpenTelemetry access logger (`envoy.access_loggers.open_telemetry`,
//! what istiod sends for an `envoyOtelAls` provider): one OTLP
//! `LogRecord` per request or TCP connection, exported in batches over
//! OTLP/gRPC (`LogsService/Export`) to the cluster of
//! `grpc_service.envoy_grpc`.
//!
//! Data flow: the logger's config is compiled once per update into an
//! [`OtelLogger`]: the `body` and every `attributes` value are compiled
//! by the access log [`Formatter`] (string values are format strings;
//! numbers and booleans are kept; lists and maps are walked), the
//! collector cluster and log name are read from `grpc_service` /
//! `log_name` or the deprecated `common_config` istiod writes. Per
//! record, the body and attributes are rendered on the request path and
//! the record is handed to the exporter over a bounded queue (`try_send`:
//! when it is full the record is dropped and counted, nothing waits).
//!
//! Each exporter (one per collector cluster, log name, resource and
//! buffer settings, shared by every listener that names them) runs on a
//! thread of its own: it batches records until `buffer_size_bytes`
//! (16 KiB) or `buffer_flush_interval` (1 s), Envoy's defaults, resolves
//! the cluster's endpoint in the current config at each export (as the
//! span exporter does), and sends. A collector that is down, slow or not
//! in the config costs the batch (dropped, counted) and a warning at most
//! every [`WARN_EVERY`]; requests never wait for it. The records still
//! queued are exported at shutdown ([`flush`]).
//!
//! The resource carries Envoy's built-in labels (`log_name`, `zone_name`,
//! `cluster_name`, `node_name`, from the node) unless
//! `disable_builtin_labels` (istiod sets it), then `resource_attributes`.
//! A record's `time_unix_nano` is the request's start; its trace id is the
//! request's when it was traced.
//!
//! Not implemented (a warning names the field; the logger is left out or
//! the field ignored, never refused): `http_service` (OTLP/HTTP),
//! `google_grpc`, `resource_detectors`, `formatters` extensions,
//! `custom_tags`, `filter_state_objects_to_log`.

#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::opentelemetry::proto::common::v1 as config_pb;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::format::Formatter;
use crate::proxy::record::{RequestRecord, TcpRecord};
use crate::runtime::{FieldResult, Runtime, invalid, join};

/// Envoy's name of the logger.
pub const OTEL_LOGGER: &str = "envoy.access_loggers.open_telemetry";
/// Envoy's default `buffer_flush_interval`.
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Envoy's default `buffer_size_bytes`.
const DEFAULT_BUFFER_BYTES: usize = 16 * 1024;
/// Records waiting for the exporter before new ones are dropped.
const QUEUE: usize = 8 * 1024;
/// How long one export may take (connecting included).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning per exporter this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// A compiled OpenTelemetry access logger.
#[derive(Debug)]
pub struct OtelLogger {
    /// The record's body, if configured.
    body: Option<Value>,
    /// The record's attributes, in config order.
    attributes: Vec<(String, Value)>,
    /// Where records go.
    exporter: Arc<Exporter>,
    /// The config it was compiled from, for equality.
    source: Vec<u8>,
}

/// A compiled `AnyValue` of the config.
#[derive(Debug)]
enum Value {
    /// A string: a format string rendered per record.
    Format(Formatter),
    /// A number, boolean or bytes, sent as configured.
    Literal(AnyValue),
    List(Vec<Value>),
    Map(Vec<(String, Value)>),
}

/// What identifies an exporter: records with the same key share a batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExporterKey {
    cluster: String,
    log_name: String,
    builtin_labels: bool,
    /// `resource_attributes`, encoded.
    resource_attributes: Vec<u8>,
    flush_interval: Duration,
    buffer_bytes: usize,
}

/// The queue of one exporter thread.
#[derive(Debug)]
struct Exporter {
    queue: mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Queued {
    Record(Box<LogRecord>),
    /// Export what is batched now, then answer.
    Flush(oneshot::Sender<()>),
}

/// What the proxy says about itself in the built-in labels.
#[derive(Debug, Default)]
struct NodeInfo {
    id: String,
    cluster: String,
    zone: String,
}

static NODE: OnceLock<NodeInfo> = OnceLock::new();
static RUNTIME: OnceLock<watch::Receiver<Arc<Runtime>>> = OnceLock::new();
static EXPORTERS: Mutex<Option<HashMap<ExporterKey, Arc<Exporter>>>> = Mutex::new(None);

/// Gives the exporters the proxy's node (for the built-in labels) and
/// the config to find collector endpoints in; the first call wins.
pub fn start(node: &Node, runtime: watch::Receiver<Arc<Runtime>>) {
    let _ = NODE.set(NodeInfo {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        zone: node
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .unwrap_or_default(),
    });
    let _ = RUNTIME.set(runtime);
}

// === impl OtelLogger ===

impl OtelLogger {
    /// Compiles the logger's config at field `at`. `None` (with a
    /// warning) for a transport this proxy does not implement.
    pub(crate) fn compile(c: &OpenTelemetryAccessLogConfig, at: &str) -> FieldResult<Option<Self>> {
        let common = c.common_config.as_ref();
        let (grpc, grpc_at) = match (
            &c.grpc_service,
            common.and_then(|c| c.grpc_service.as_ref()),
        ) {
            (Some(g), _) => (g, join(at, "grpc_service")),
            (None, Some(g)) => (g, join(at, "common_config.grpc_service")),
            (None, None) if c.http_service.is_some() => {
                tracing::warn!(field = %join(at, "http_service"), "OTLP/HTTP access logs are not implemented (only grpc_service.envoy_grpc); logger left out");
                return Ok(None);
            }
            (None, None) => return invalid(join(at, "grpc_service"), "is required"),
        };
        let cluster = match &grpc.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => {
                e.cluster_name.clone()
            }
            Some(TargetSpecifier::EnvoyGrpc(_)) => {
                return invalid(join(&grpc_at, "envoy_grpc.cluster_name"), "is required");
            }
            Some(TargetSpecifier::GoogleGrpc(_)) => {
                tracing::warn!(field = %join(&grpc_at, "google_grpc"), "only envoy_grpc exports access logs; logger left out");
                return Ok(None);
            }
            None => return invalid(join(&grpc_at, "envoy_grpc"), "is required"),
        };
        let log_name = if c.log_name.is_empty() {
            common.map(|c| c.log_name.clone()).unwrap_or_default()
        } else {
            c.log_name.clone()
        };
        let flush_interval = c
            .buffer_flush_interval
            .as_ref()
            .or(common.and_then(|c| c.buffer_flush_interval.as_ref()))
            .map(|d| {
                Duration::new(
                    u64::try_from(d.seconds).unwrap_or(0),
                    u32::try_from(d.nanos).unwrap_or(0),
                )
            })
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_FLUSH_INTERVAL);
        let buffer_bytes = c
            .buffer_size_bytes
            .as_ref()
            .or(common.and_then(|c| c.buffer_size_bytes.as_ref()))
            .map_or(DEFAULT_BUFFER_BYTES, |b| b.value as usize);
        for (field, set) in [
            ("resource_detectors", !c.resource_detectors.is_empty()),
            ("formatters", !c.formatters.is_empty()),
            ("custom_tags", !c.custom_tags.is_empty()),
        ] {
            if set {
                tracing::warn!(field = %join(at, field), "not implemented for OpenTelemetry access logs; ignored");
            }
        }
        let body = c
            .body
            .as_ref()
            .map(|b| compile_value(b, &join(at, "body")))
            .transpose()?;
        let attributes = match &c.attributes {
            Some(list) => compile_list(list, &join(at, "attributes"))?,
            None => Vec::new(),
        };
        let key = ExporterKey {
            cluster,
            log_name,
            builtin_labels: !c.disable_builtin_labels,
            resource_attributes: c
                .resource_attributes
                .as_ref()
                .map(Message::encode_to_vec)
                .unwrap_or_default(),
            flush_interval,
            buffer_bytes,
        };
        Ok(Some(Self {
            body,
            attributes,
            exporter: exporter(key),
            source: c.encode_to_vec(),
        }))
    }

    /// What identifies the exporter (tests).
    #[cfg(test)]
    fn exporter_key(&self) -> ExporterKey {
        let all = EXPORTERS.lock().unwrap_or_else(|e| e.into_inner());
        all.as_ref()
            .and_then(|m| m.iter().find(|(_, e)| Arc::ptr_eq(e, &self.exporter)))
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| panic!("exporter not registered"))
    }

    /// Operators that print `-` although Envoy would print a value.
    pub fn unsupported(&self) -> Vec<String> {
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Format(f) => out.extend(f.unsupported().iter().cloned()),
                Value::Literal(_) => {}
                Value::List(l) => l.iter().for_each(|v| walk(v, out)),
                Value::Map(m) => m.iter().for_each(|(_, v)| walk(v, out)),
            }
        }
        let mut out = Vec::new();
        self.body.iter().for_each(|v| walk(v, &mut out));
        self.attributes.iter().for_each(|(_, v)| walk(v, &mut out));
        out.sort();
        out.dedup();
        out
    }

    /// Logs a finished request.
    pub fn request(&self, r: &RequestRecord) {
        self.send(r.start, r.trace_id.as_deref(), |f| f.request(r));
    }

    /// Logs a closed TCP connection.
    pub fn connection(&self, r: &TcpRecord) {
        self.send(r.start, None, |f| f.connection(r));
    }

    /// Records dropped because the exporter was behind or the collector
    /// could not take them.
    pub fn dropped(&self) -> u64 {
        self.exporter.dropped.load(Ordering::Relaxed)
    }

    /// The rendered record, as it is queued.
    fn record(
        &self,
        start: SystemTime,
        trace_id: Option<&str>,
        render: &dyn Fn(&Formatter) -> String,
    ) -> LogRecord {
        LogRecord {
            time_unix_nano: start
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            body: self.body.as_ref().map(|b| render_value(b, render)),
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(render_value(v, render)),
                })
                .collect(),
            trace_id: trace_id
                .and_then(|t| u128::from_str_radix(t, 16).ok())
                .map(|t| t.to_be_bytes().to_vec())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    fn send(
        &self,
        start: SystemTime,
        trace_id: Option<&str>,
        render: impl Fn(&Formatter) -> String,
    ) {
        let record = self.record(start, trace_id, &render);
        if self
            .exporter
            .queue
            .try_send(Queued::Record(Box::new(record)))
            .is_err()
        {
            // Counted; the exporter's next warning reports it.
            self.exporter.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl PartialEq for OtelLogger {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for OtelLogger {}

fn compile_value(v: &config_pb::AnyValue, at: &str) -> FieldResult<Value> {
    use config_pb::any_value::Value as V;
    Ok(match &v.value {
        Some(V::StringValue(s)) => Value::Format(Formatter::text(s, &join(at, "string_value"))?),
        Some(V::ArrayValue(a)) => Value::List(
            a.values
                .iter()
                .enumerate()
                .map(|(i, v)| compile_value(v, &format!("{at}.array_value.values[{i}]")))
                .collect::<FieldResult<_>>()?,
        ),
        Some(V::KvlistValue(l)) => Value::Map(compile_list(l, &join(at, "kvlist_value"))?),
        // The two protos are the same message: the literal is carried over
        // byte for byte.
        Some(_) => {
            Value::Literal(AnyValue::decode(v.encode_to_vec().as_slice()).unwrap_or_default())
        }
        None => Value::Literal(AnyValue::default()),
    })
}

fn compile_list(l: &config_pb::KeyValueList, at: &str) -> FieldResult<Vec<(String, Value)>> {
    l.values
        .iter()
        .enumerate()
        .map(|(i, kv)| {
            let field = format!("{at}.values[{i}]");
            if kv.key.is_empty() {
                return invalid(join(&field, "key"), "is required");
            }
            let value = match &kv.value {
                Some(v) => compile_value(v, &join(&field, "value"))?,
                None => Value::Literal(AnyValue::default()),
            };
            Ok((kv.key.clone(), value))
        })
        .collect()
}

fn render_value(v: &Value, render: &dyn Fn(&Formatter) -> String) -> AnyValue {
    let value = match v {
        Value::Format(f) => any_value::Value::StringValue(render(f)),
        Value::Literal(l) => return l.clone(),
        Value::List(l) => any_value::Value::ArrayValue(ArrayValue {
            values: l.iter().map(|v| render_value(v, render)).collect(),
        }),
        Value::Map(m) => any_value::Value::KvlistValue(KeyValueList {
            values: m
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(render_value(v, render)),
                })
                .collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

// === impl Exporter ===

/// The exporter of `key`, started on first use.
fn exporter(key: ExporterKey) -> Arc<Exporter> {
    let mut all = EXPORTERS.lock().unwrap_or_else(|e| e.into_inner());
    let all = all.get_or_insert_with(HashMap::new);
    if let Some(e) = all.get(&key) {
        return e.clone();
    }
    let (queue, rx) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let e = Arc::new(Exporter {
        queue,
        dropped: dropped.clone(),
    });
    let task = ExportTask {
        resource: None,
        key: key.clone(),
        dropped,
        client: None,
        last_warning: None,
        warned_dropped: 0,
    };
    let spawned = std::thread::Builder::new()
        .name("otel-access-log".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(task.run(rx));
        });
    if let Err(e) = spawned {
        // The queue's receiver is gone: every record counts as dropped.
        tracing::warn!(error = %e, "cannot start the OpenTelemetry access log exporter; records dropped");
    }
    all.insert(key, e.clone());
    e
}

/// The exporter thread's state.
struct ExportTask {
    key: ExporterKey,
    /// Built at the first export (the node is known by then).
    resource: Option<Resource>,
    dropped: Arc<AtomicU64>,
    /// The client of the endpoint last exported to.
    client: Option<(String, LogsServiceClient<tonic::transport::Channel>)>,
    last_warning: Option<Instant>,
    /// `dropped` when the last warning was logged.
    warned_dropped: u64,
}

impl ExportTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        let mut batch: Vec<LogRecord> = Vec::new();
        let mut bytes = 0;
        let mut deadline = tokio::time::Instant::now() + self.key.flush_interval;
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                () = tokio::time::sleep_until(deadline), if !batch.is_empty() => {
                    self.export(std::mem::take(&mut batch)).await;
                    bytes = 0;
                    continue;
                }
            };
            match msg {
                Some(Queued::Record(r)) => {
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + self.key.flush_interval;
                    }
                    bytes += r.encoded_len();
                    batch.push(*r);
                    if bytes >= self.key.buffer_bytes {
                        self.export(std::mem::take(&mut batch)).await;
                        bytes = 0;
                    }
                }
                Some(Queued::Flush(done)) => {
                    // Records queued before the flush go with it, and so
                    // do flushes asked for meanwhile.
                    let mut waiting = vec![done];
                    while let Ok(queued) = rx.try_recv() {
                        match queued {
                            Queued::Record(r) => batch.push(*r),
                            Queued::Flush(more) => waiting.push(more),
                        }
                    }
                    self.export(std::mem::take(&mut batch)).await;
                    bytes = 0;
                    for done in waiting {
                        let _ = done.send(());
                    }
                }
                None => {
                    self.export(batch).await;
                    return;
                }
            }
        }
    }

    fn resource(&mut self) -> Resource {
        if let Some(r) = &self.resource {
            return r.clone();
        }
        let node = NODE.get_or_init(NodeInfo::default);
        let mut attributes = Vec::new();
        if self.key.builtin_labels {
            attributes.extend([
                string("log_name", &self.key.log_name),
                string("zone_name", &node.zone),
                string("cluster_name", &node.cluster),
                string("node_name", &node.id),
            ]);
        }
        let configured = KeyValueList::decode(self.key.resource_attributes.as_slice())
            .unwrap_or_default()
            .values;
        for kv in configured {
            // Configured attributes take precedence over the built-in ones.
            attributes.retain(|a| a.key != kv.key);
            attributes.push(kv);
        }
        let r = Resource {
            attributes,
            ..Default::default()
        };
        self.resource = Some(r.clone());
        r
    }

    async fn export(&mut self, batch: Vec<LogRecord>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let Some(endpoint) = RUNTIME
            .get()
            .and_then(|rt| super::trace::collector_endpoint(&rt.borrow(), &self.key.cluster))
        else {
            self.failed(n, "the collector cluster has no endpoint in the config");
            return;
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope::default()),
                    log_records: batch,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let client = match &self.client {
            Some((e, c)) if *e == endpoint => c.clone(),
            _ => match tonic::transport::Channel::from_shared(endpoint.clone()) {
                Ok(ch) => {
                    let c = LogsServiceClient::new(
                        ch.connect_timeout(EXPORT_TIMEOUT)
                            .timeout(EXPORT_TIMEOUT)
                            .connect_lazy(),
                    );
                    self.client = Some((endpoint.clone(), c.clone()));
                    c
                }
                Err(e) => {
                    self.failed(n, &format!("bad collector endpoint {endpoint}: {e}"));
                    return;
                }
            },
        };
        let mut client = client;
        match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                self.failed(n, &format!("{endpoint}: {}", status.message()));
            }
            Err(_) => self.failed(n, &format!("{endpoint}: no answer in {EXPORT_TIMEOUT:?}")),
        }
    }

    /// Counts `n` lost records and warns, at most every [`WARN_EVERY`].
    fn failed(&mut self, n: u64, why: &str) {
        let dropped = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        if self.last_warning.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        self.last_warning = Some(Instant::now());
        tracing::warn!(
            cluster = %self.key.cluster,
            log_name = %self.key.log_name,
            dropped_since_last_warning = dropped - self.warned_dropped,
            dropped_total = dropped,
            "OpenTelemetry access logs not exported: {why}; records dropped"
        );
        self.warned_dropped = dropped;
    }
}

/// Exports the records still queued (at shutdown), waiting at most
/// `timeout` over all exporters.
pub async fn flush(timeout: Duration) {
    let exporters: Vec<Arc<Exporter>> = EXPORTERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    if exporters.is_empty() {
        return;
    }
    let all = async {
        for e in exporters {
            let (done, flushed) = oneshot::channel();
            if e.queue.send(Queued::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        }
    };
    if tokio::time::timeout(timeout, all).await.is_err() {
        tracing::warn!(
            ?timeout,
            "OpenTelemetry access logs not exported in time; exiting without them"
        );
    }
}

#[cfg(test)]
mod tests;
