//! Access logs: the file and OpenTelemetry access logs of every HTTP
//! connection manager and TCP proxy of the proxy's listeners, as istiod
//! writes them.
//!
//! What applies is resolved as Istio does. Telemetry `accessLogging`
//! entries of the resources that apply (`super::super::telemetry`: mesh,
//! namespace, workload, in that order) whose `match.mode` covers the
//! listener's side (CLIENT for outbound listeners and gateways, SERVER for
//! inbound) name providers; an entry without providers inherits the
//! previous level's (or MeshConfig `defaultProviders.accessLogging`);
//! `disabled: true` removes the providers it names, and the last
//! `filter.expression` set for a provider becomes Envoy's CEL access log
//! filter. When neither a Telemetry entry nor `defaultProviders` says
//! anything, MeshConfig `accessLogFile` applies: a file in
//! `accessLogFormat` (or Istio's default text format) or, with
//! `accessLogEncoding: JSON`, Istio's JSON fields; an empty path logs
//! nothing (Istio's default profile). Once Telemetry speaks, it alone
//! decides, so a `disabled: true` also silences `accessLogFile`.
//!
//! Providers are MeshConfig `extensionProviders` of kind
//! `envoyFileAccessLog` (`path`, default `/dev/stdout`; `logFormat.text`,
//! or `logFormat.labels` for JSON, empty labels meaning Istio's JSON
//! fields), the built-in `envoy` (`/dev/stdout` in Istio's text format)
//! unless MeshConfig defines its own `envoy`, and `envoyOtelAls`:
//! Envoy's OpenTelemetry logger to the collector's outbound cluster
//! (`service` and `port` resolved as the tracing provider's are,
//! `super::super::tracing::collector_cluster`), `logName` (default
//! `otel_envoy_accesslog`), the body `logFormat.text` (Istio's text
//! format when unset, written as given), one string attribute per
//! `logFormat.labels` entry (none by default, as istiod) and Envoy's
//! built-in resource labels off, as istiod sets them. A name that is not
//! defined, or a provider of another kind (the gRPC access log services
//! are not translated), is skipped with a warning naming the Telemetry
//! and the field; the rest still applies. TCP proxies (sidecar TCP ports,
//! inbound TCP chains, passthrough) get the same loggers as the
//! connection managers of their side: one entry per connection, its
//! request fields `-`.
//!
//! Applied once over the built listeners (`super::for_each_hcm`,
//! `super::for_each_tcp_proxy`), so each
//! builder of a connection manager (gateway servers, sidecar ports,
//! inbound chains) stays unaware of it.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, ExtensionFilter, access_log, access_log_filter, extension_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, DataSource, GrpcService, SubstitutionFormatString, data_source, grpc_service,
    substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::CommonGrpcAccessLogConfig;
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::opentelemetry::proto::common::v1::{
    AnyValue, KeyValue, KeyValueList, any_value,
};
use mesh_api::access_log_formats::{ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT};
use mesh_api::mesh_config::{AccessLogEncoding, EnvoyFileAccessLog, EnvoyOtelAls, MeshConfig};
use mesh_api::telemetry::WorkloadMode;
use mesh_api::xds::pack_any;
use prost::Message;

use crate::proxy::ProxyInfo;
use crate::snapshot::{Snapshot, name_of, namespace_of};
use crate::xds::ProxyScope;

const FILE_LOGGER: &str = "envoy.access_loggers.file";
/// Envoy's OpenTelemetry access logger.
pub const OTEL_LOGGER: &str = "envoy.access_loggers.open_telemetry";
/// istiod's `log_name` of an `envoyOtelAls` provider that sets none.
pub const DEFAULT_OTEL_LOG_NAME: &str = "otel_envoy_accesslog";
/// Envoy's CEL access log filter.
pub const CEL_FILTER: &str = "envoy.access_loggers.extension_filters.cel";
/// Istio's built-in provider: Envoy's file log on `/dev/stdout`.
pub const ENVOY_PROVIDER: &str = "envoy";
const DEFAULT_PATH: &str = "/dev/stdout";

/// One access log of one side of a proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct LogSpec {
    /// Where records go, and how they are rendered.
    pub target: LogTarget,
    /// CEL expression a request must satisfy to be logged.
    pub filter: Option<String>,
}

/// Where an access log's records go.
#[derive(Clone, Debug, PartialEq)]
pub enum LogTarget {
    /// Lines appended to a file (`envoyFileAccessLog`, `accessLogFile`).
    File {
        /// File path.
        path: String,
        /// Line format.
        format: LogFormat,
    },
    /// OTLP log records exported to a collector (`envoyOtelAls`).
    OpenTelemetry(OtelLog),
}

/// An OpenTelemetry access log, as istiod writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelLog {
    /// `outbound|<port>||<host>` of the collector.
    pub cluster: String,
    /// `log_name` (istiod's default `otel_envoy_accesslog`).
    pub log_name: String,
    /// The record's body: a text format.
    pub body: String,
    /// Attribute name to text format, in key order (`logFormat.labels`).
    pub attributes: BTreeMap<String, String>,
}

/// A line format.
#[derive(Clone, Debug, PartialEq)]
pub enum LogFormat {
    /// Command operators, newline-terminated.
    Text(String),
    /// JSON: key to command operators, in key order.
    Json(BTreeMap<String, String>),
}

/// The access logs of both sides, as a translation shape key part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccessLogKey(String);

// === impl AccessLogKey ===

impl AccessLogKey {
    /// What access logging reads of `proxy`, for the translation cache.
    pub fn of(snapshot: &Snapshot, proxy: &ProxyInfo) -> Self {
        let client = logs(snapshot, proxy, WorkloadMode::Client);
        let server = logs(snapshot, proxy, WorkloadMode::Server);
        Self(format!("{client:?}|{server:?}"))
    }
}

/// The provider names (with their filters) Telemetry selects for `mode`'s
/// side of `proxy`, or `None` when no Telemetry entry nor MeshConfig
/// `defaultProviders.accessLogging` applies (then `accessLogFile` does).
/// Each name comes with where it was named, for warnings.
fn telemetry_providers(
    snapshot: &Snapshot,
    proxy: &ProxyInfo,
    mode: WorkloadMode,
) -> Option<Vec<(String, Option<String>, String)>> {
    let defaults: Vec<String> = snapshot
        .mesh
        .default_providers
        .as_ref()
        .map(|d| d.access_logging.clone())
        .unwrap_or_default();
    let entries: Vec<_> = super::super::telemetry::applicable(snapshot, proxy)
        .into_iter()
        .flat_map(|t| {
            let at = format!("Telemetry {}/{}", namespace_of(t), name_of(t));
            t.spec
                .access_logging
                .iter()
                .enumerate()
                .map(move |(i, l)| (format!("{at} spec.accessLogging[{i}]"), l))
        })
        .filter(|(_, l)| {
            super::super::telemetry::covers(proxy, l.r#match.as_ref().and_then(|m| m.mode), mode)
        })
        .collect();
    if entries.is_empty() && defaults.is_empty() {
        return None;
    }
    let named = |at: &str, l: &mesh_api::telemetry::AccessLogging| -> Vec<(String, String)> {
        l.providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), format!("{at}.providers[{i}].name")))
            .collect()
    };
    let default_named = default_named_list(&defaults);
    // Istio's mergeLogs: the last providers named are the ones in scope;
    // each provider takes the last filter set while it was in scope.
    let mut in_scope = default_named.clone();
    let mut filters: BTreeMap<String, String> = BTreeMap::new();
    for (at, l) in &entries {
        let names = named(at, l);
        if !names.is_empty() {
            in_scope = names;
        }
        if let Some(f) = &l.filter {
            for (p, _) in &in_scope {
                filters.insert(p.clone(), f.expression.clone());
            }
        }
    }
    let mut selected: BTreeMap<String, (Option<String>, String)> = BTreeMap::new();
    if entries.is_empty() {
        for (p, at) in default_named {
            selected.insert(p, (None, at));
        }
    }
    let mut parent = default_named_list(&defaults);
    for (at, l) in &entries {
        let mut names = named(at, l);
        if names.is_empty() {
            names = parent.clone();
        }
        parent = names.clone();
        for (p, where_) in names {
            if !in_scope.iter().any(|(n, _)| *n == p) {
                continue;
            }
            if l.disabled == Some(true) {
                selected.remove(&p);
            } else {
                let filter = filters.get(&p).cloned();
                selected.insert(p, (filter, where_));
            }
        }
    }
    Some(
        selected
            .into_iter()
            .map(|(p, (filter, at))| (p, filter, at))
            .collect(),
    )
}

fn default_named_list(defaults: &[String]) -> Vec<(String, String)> {
    defaults
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                format!("MeshConfig defaultProviders.accessLogging[{i}]"),
            )
        })
        .collect()
}

/// The access logs of `mode`'s side of `proxy`.
pub fn logs(snapshot: &Snapshot, proxy: &ProxyInfo, mode: WorkloadMode) -> Vec<LogSpec> {
    let mesh = &snapshot.mesh;
    let Some(providers) = telemetry_providers(snapshot, proxy, mode) else {
        return mesh_file_log(mesh).into_iter().collect();
    };
    let builtin = EnvoyFileAccessLog::default();
    let mut out = Vec::new();
    for (name, filter, at) in providers {
        let provider = mesh
            .extension_providers
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()));
        let file = match provider {
            Some(p) => match (&p.envoy_file_access_log, &p.envoy_otel_als) {
                (Some(f), _) => f,
                (None, Some(otel)) => {
                    if let Some(log) = otel_log(otel, &name, &at) {
                        out.push(LogSpec {
                            target: LogTarget::OpenTelemetry(log),
                            filter,
                        });
                    }
                    continue;
                }
                (None, None) => {
                    tracing::warn!(provider = %name, at = %at, "access log provider is neither envoyFileAccessLog nor envoyOtelAls; skipped");
                    continue;
                }
            },
            None if name == ENVOY_PROVIDER => &builtin,
            None => {
                tracing::warn!(provider = %name, at = %at, "access log provider is not defined in MeshConfig extensionProviders; skipped");
                continue;
            }
        };
        out.push(LogSpec {
            target: LogTarget::File {
                path: file
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| DEFAULT_PATH.into()),
                format: provider_format(file),
            },
            filter,
        });
    }
    out
}

/// An `envoyOtelAls` provider, as istiod resolves it: the collector's
/// outbound cluster (resolved as the tracing provider's service is), the
/// log name, the text format as the body (Istio's text format when
/// unset, written as given) and `logFormat.labels` as attributes (none
/// when empty: istiod adds no default attributes). `None`, with a
/// warning, when the service or port is missing.
fn otel_log(otel: &EnvoyOtelAls, name: &str, at: &str) -> Option<OtelLog> {
    let (Some(service), Some(port)) =
        (otel.service.as_deref().filter(|s| !s.is_empty()), otel.port)
    else {
        tracing::warn!(provider = %name, at = %at, "envoyOtelAls provider needs service and port; skipped");
        return None;
    };
    let Some(cluster) = crate::xds::tracing::collector_cluster(service, port) else {
        tracing::warn!(provider = %name, at = %at, port, "envoyOtelAls port is not a port; skipped");
        return None;
    };
    let format = otel.log_format.as_ref();
    let body = format
        .and_then(|f| f.text.clone())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| ISTIO_TEXT_FORMAT.to_string());
    let attributes = match format.and_then(|f| f.labels.as_ref()) {
        Some(serde_json::Value::Object(labels)) => labels
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                (k.clone(), v)
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    Some(OtelLog {
        cluster,
        log_name: otel
            .log_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_OTEL_LOG_NAME.into()),
        body,
        attributes,
    })
}

/// `logFormat` of a file provider, as istiod renders it: text gets a
/// newline, labels become JSON (Istio's fields when empty), nothing is
/// Istio's text format.
fn provider_format(file: &EnvoyFileAccessLog) -> LogFormat {
    let Some(format) = &file.log_format else {
        return LogFormat::Text(ISTIO_TEXT_FORMAT.into());
    };
    if let Some(text) = format.text.as_deref().filter(|t| !t.is_empty()) {
        return LogFormat::Text(with_newline(text));
    }
    match &format.labels {
        Some(serde_json::Value::Object(labels)) if !labels.is_empty() => LogFormat::Json(
            labels
                .iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), v)
                })
                .collect(),
        ),
        Some(_) => istio_json(),
        None => LogFormat::Text(ISTIO_TEXT_FORMAT.into()),
    }
}

fn istio_json() -> LogFormat {
    LogFormat::Json(
        ISTIO_JSON_FORMAT
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
    )
}

fn with_newline(f: &str) -> String {
    if f.ends_with('\n') {
        f.to_string()
    } else {
        format!("{f}\n")
    }
}

/// The file access log MeshConfig `accessLogFile` asks for, if any.
fn mesh_file_log(mesh: &MeshConfig) -> Option<LogSpec> {
    let path = mesh.access_log_file.as_deref().filter(|p| !p.is_empty())?;
    let format = if mesh.access_log_encoding == Some(AccessLogEncoding::Json) {
        istio_json()
    } else {
        LogFormat::Text(
            mesh.access_log_format
                .as_deref()
                .filter(|f| !f.is_empty())
                .map_or_else(|| ISTIO_TEXT_FORMAT.to_string(), with_newline),
        )
    };
    Some(LogSpec {
        target: LogTarget::File {
            path: path.into(),
            format,
        },
        filter: None,
    })
}

/// The Envoy access log for `spec`.
pub fn envoy_access_log(spec: &LogSpec) -> AccessLog {
    let (name, typed) = match &spec.target {
        LogTarget::File { path, format } => (FILE_LOGGER, file_log(path, format)),
        LogTarget::OpenTelemetry(otel) => (OTEL_LOGGER, pack_any(otel_config(otel))),
    };
    let filter = spec.filter.as_ref().map(|expression| AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::ExtensionFilter(
            ExtensionFilter {
                name: CEL_FILTER.into(),
                config_type: Some(extension_filter::ConfigType::TypedConfig(pack_any(
                    ExpressionFilter {
                        expression: expression.clone(),
                        ..Default::default()
                    },
                ))),
            },
        )),
    });
    AccessLog {
        name: name.into(),
        filter,
        config_type: Some(access_log::ConfigType::TypedConfig(typed)),
    }
}

/// The `OpenTelemetryAccessLogConfig` istiod writes: the collector in
/// `common_config` (V3 transport, the host as gRPC authority), Envoy's
/// built-in resource labels off (istiod sets `disable_builtin_labels`),
/// the body a string format, the attributes string formats.
// istiod still writes the collector in `common_config`, which Envoy
// deprecated for the top-level `grpc_service` but reads.
#[allow(deprecated)]
pub fn otel_config(otel: &OtelLog) -> OpenTelemetryAccessLogConfig {
    let string = |s: &str| AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    };
    OpenTelemetryAccessLogConfig {
        common_config: Some(CommonGrpcAccessLogConfig {
            log_name: otel.log_name.clone(),
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: otel.cluster.clone(),
                        authority: otel.cluster.rsplit('|').next().unwrap_or_default().into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            transport_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
        disable_builtin_labels: true,
        body: Some(string(&otel.body)),
        attributes: (!otel.attributes.is_empty()).then(|| KeyValueList {
            values: otel
                .attributes
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(string(v)),
                    ..Default::default()
                })
                .collect(),
        }),
        ..Default::default()
    }
}

/// A file logger's typed config.
fn file_log(path: &str, format: &LogFormat) -> envoy_types::pb::google::protobuf::Any {
    match format {
        LogFormat::Json(fields) => json_file_log(path, fields),
        LogFormat::Text(text) => pack_any(FileAccessLog {
            path: path.to_string(),
            access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
                SubstitutionFormatString {
                    format: Some(substitution_format_string::Format::TextFormatSource(
                        DataSource {
                            specifier: Some(data_source::Specifier::InlineString(text.clone())),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            )),
        }),
    }
}

/// A file access log with a JSON format, encoded with its keys in order.
/// `google.protobuf.Struct` is a hash map in prost, so encoding it
/// directly would give different bytes on every translation (a spurious
/// xDS change each push). A message is the concatenation of its fields and
/// map entries may come one by one, so each key is encoded as a
/// one-entry Struct, in key order.
fn json_file_log(
    path: &str,
    fields: &BTreeMap<String, String>,
) -> envoy_types::pb::google::protobuf::Any {
    use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
    use prost::encoding::{WireType, encode_key, encode_varint};
    /// `SubstitutionFormatString.json_format`.
    const JSON_FORMAT_TAG: u32 = 2;
    /// `FileAccessLog.log_format`.
    const LOG_FORMAT_TAG: u32 = 5;
    let mut json = Vec::new();
    for (k, v) in fields {
        let entry = Struct {
            fields: [(
                k.clone(),
                Value {
                    kind: Some(Kind::StringValue(v.clone())),
                },
            )]
            .into_iter()
            .collect(),
        };
        json.extend(entry.encode_to_vec());
    }
    let mut format = Vec::new();
    encode_key(JSON_FORMAT_TAG, WireType::LengthDelimited, &mut format);
    encode_varint(json.len() as u64, &mut format);
    format.extend(json);
    let mut value = FileAccessLog {
        path: path.into(),
        access_log_format: None,
    }
    .encode_to_vec();
    encode_key(LOG_FORMAT_TAG, WireType::LengthDelimited, &mut value);
    encode_varint(format.len() as u64, &mut value);
    value.extend(format);
    Any {
        type_url: format!(
            "type.googleapis.com/{}",
            <FileAccessLog as prost::Name>::full_name()
        ),
        value,
    }
}

/// Adds the access logs to every HTTP connection manager and TCP proxy of
/// `listeners`:
/// the client side's on outbound listeners and gateways, the server
/// side's on inbound ones.
pub(crate) fn apply(scope: &ProxyScope<'_>, listeners: &mut [Listener]) {
    let (snapshot, proxy) = (scope.snapshot, scope.proxy);
    let client: Vec<AccessLog> = logs(snapshot, proxy, WorkloadMode::Client)
        .iter()
        .map(envoy_access_log)
        .collect();
    let server: Vec<AccessLog> = logs(snapshot, proxy, WorkloadMode::Server)
        .iter()
        .map(envoy_access_log)
        .collect();
    if client.is_empty() && server.is_empty() {
        return;
    }
    super::for_each_hcm(listeners, |inbound, hcm| {
        let wanted = if inbound { &server } else { &client };
        hcm.access_log.extend(wanted.iter().cloned());
        !wanted.is_empty()
    });
    // TCP connections are logged too, as istiod does: one line per
    // connection (request fields `-`), with the same providers and filter.
    super::for_each_tcp_proxy(listeners, |inbound, tcp| {
        let wanted = if inbound { &server } else { &client };
        tcp.access_log.extend(wanted.iter().cloned());
        !wanted.is_empty()
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use mesh_api::mesh_config::parse_mesh_config;
    use std::net::IpAddr;

    const MESH: &str = "extensionProviders:\n- name: json\n  envoyFileAccessLog: {path: /var/log/json.log, logFormat: {labels: {code: \"%RESPONSE_CODE%\", trace: \"%TRACE_ID%\"}}}\n- name: short\n  envoyFileAccessLog: {logFormat: {text: \"%RESPONSE_CODE% %UPSTREAM_CLUSTER%\"}}\n- name: otel\n  envoyOtelAls: {service: otel.observability.svc.cluster.local, port: 4317}\n- name: otel-custom\n  envoyOtelAls: {service: observability/otel.observability.svc.cluster.local, port: 4318, logName: mesh, logFormat: {text: \"%RESPONSE_CODE% %REQ(:PATH)%\", labels: {code: \"%RESPONSE_CODE%\", cluster: \"%UPSTREAM_CLUSTER%\"}}}\n- name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n";

    fn snapshot(mesh: &str, yaml: &str) -> Snapshot {
        let loaded = mesh_api::load_str("t.yaml", yaml);
        for l in &loaded {
            assert!(!l.report.has_errors(), "{:?}", l.report.diagnostics);
        }
        let (mesh, report) = parse_mesh_config(mesh);
        assert!(!report.has_errors(), "{:?}", report.diagnostics);
        Snapshot::build(1, &loaded, mesh.unwrap())
    }

    fn telemetry(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
        )
    }

    fn web() -> ProxyInfo {
        ProxyInfo::sidecar(
            "web-0",
            "apps",
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            &[("app", "web")],
        )
    }

    fn paths(logs: &[LogSpec]) -> Vec<(&str, Option<&str>)> {
        logs.iter()
            .map(|l| {
                let path = match &l.target {
                    LogTarget::File { path, .. } => path.as_str(),
                    LogTarget::OpenTelemetry(o) => o.cluster.as_str(),
                };
                (path, l.filter.as_deref())
            })
            .collect()
    }

    fn format(l: &LogSpec) -> &LogFormat {
        match &l.target {
            LogTarget::File { format, .. } => format,
            LogTarget::OpenTelemetry(o) => panic!("not a file log: {o:?}"),
        }
    }

    #[test]
    fn access_log_file_applies_without_telemetry() {
        let s = snapshot("accessLogFile: /dev/stdout\n", "");
        let got = logs(&s, &web(), WorkloadMode::Client);
        assert_eq!(paths(&got), vec![("/dev/stdout", None)]);
        assert_eq!(*format(&got[0]), LogFormat::Text(ISTIO_TEXT_FORMAT.into()));
        let s = snapshot("accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n", "");
        let LogFormat::Json(fields) = format(&logs_of(&s)[0]).clone() else {
            panic!("not JSON");
        };
        assert_eq!(fields.len(), ISTIO_JSON_FORMAT.len());
        assert!(
            logs_of(&snapshot("", "")).is_empty(),
            "no accessLogFile, no log"
        );
    }

    fn logs_of(s: &Snapshot) -> Vec<LogSpec> {
        logs(s, &web(), WorkloadMode::Client)
    }

    #[test]
    fn telemetry_levels_override_in_istios_order() {
        let mesh = format!("accessLogFile: /dev/stderr\n{MESH}");
        // Mesh-wide: the built-in envoy provider, every request.
        let mesh_wide = telemetry(
            "istio-system",
            "mesh",
            "  accessLogging:\n  - providers: [{name: envoy}]",
        );
        let s = snapshot(&mesh, &mesh_wide);
        assert_eq!(
            paths(&logs_of(&s)),
            vec![("/dev/stdout", None)],
            "Telemetry replaces accessLogFile"
        );

        // The namespace switches to the JSON provider with a filter.
        let ns = telemetry(
            "apps",
            "ns",
            "  accessLogging:\n  - providers: [{name: json}]\n    filter: {expression: 'response.code >= 500'}",
        );
        let s = snapshot(&mesh, &(mesh_wide.clone() + &ns));
        let got = logs_of(&s);
        assert_eq!(
            paths(&got),
            vec![("/var/log/json.log", Some("response.code >= 500"))]
        );
        let LogFormat::Json(fields) = format(&got[0]) else {
            panic!("labels give JSON");
        };
        assert_eq!(fields.get("trace").map(String::as_str), Some("%TRACE_ID%"));

        // The workload turns its server side off; its client side keeps the namespace's.
        let wl = telemetry(
            "apps",
            "web",
            "  selector: {matchLabels: {app: web}}\n  accessLogging:\n  - match: {mode: SERVER}\n    disabled: true",
        );
        let s = snapshot(&mesh, &(mesh_wide + &ns + &wl));
        assert!(logs(&s, &web(), WorkloadMode::Server).is_empty());
        assert_eq!(logs_of(&s).len(), 1);
        let other = ProxyInfo::sidecar(
            "api-0",
            "apps",
            "10.0.0.2".parse::<IpAddr>().unwrap(),
            &[("app", "api")],
        );
        assert_eq!(
            logs(&s, &other, WorkloadMode::Server).len(),
            1,
            "the selector picks web only"
        );
    }

    #[test]
    fn disabled_telemetry_silences_access_log_file() {
        let mesh = format!("accessLogFile: /dev/stdout\n{MESH}");
        let s = snapshot(
            &mesh,
            &telemetry(
                "istio-system",
                "mesh",
                "  accessLogging:\n  - disabled: true",
            ),
        );
        assert!(logs_of(&s).is_empty());
    }

    #[test]
    fn unknown_and_foreign_providers_are_skipped_and_the_rest_applies() {
        let s = snapshot(
            MESH,
            &telemetry(
                "apps",
                "ns",
                "  accessLogging:\n  - providers: [{name: nope}, {name: zipkin}, {name: short}]",
            ),
        );
        let got = logs_of(&s);
        assert_eq!(paths(&got), vec![("/dev/stdout", None)]);
        assert_eq!(
            *format(&got[0]),
            LogFormat::Text("%RESPONSE_CODE% %UPSTREAM_CLUSTER%\n".into())
        );
    }

    #[test]
    fn default_providers_apply_without_telemetry() {
        let mesh = format!("{MESH}defaultProviders: {{accessLogging: [short]}}\n");
        let s = snapshot(&mesh, "");
        assert_eq!(paths(&logs_of(&s)), vec![("/dev/stdout", None)]);
    }

    #[test]
    fn the_filter_becomes_envoys_cel_extension_filter() {
        let spec = LogSpec {
            target: LogTarget::File {
                path: "/dev/stdout".into(),
                format: LogFormat::Text("%RESPONSE_CODE%\n".into()),
            },
            filter: Some("response.code >= 500".into()),
        };
        let log = envoy_access_log(&spec);
        let Some(access_log_filter::FilterSpecifier::ExtensionFilter(ext)) =
            log.filter.and_then(|f| f.filter_specifier)
        else {
            panic!("no extension filter");
        };
        assert_eq!(ext.name, CEL_FILTER);
        let Some(extension_filter::ConfigType::TypedConfig(any)) = ext.config_type else {
            panic!("no typed config");
        };
        assert!(
            any.type_url
                .ends_with("envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter")
        );
        let cel = ExpressionFilter::decode(any.value.as_slice()).unwrap();
        assert_eq!(cel.expression, "response.code >= 500");
    }

    #[test]
    fn json_formats_encode_the_same_bytes_every_time() {
        let fields: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("k{i}"), format!("%RESPONSE_CODE% {i}")))
            .collect();
        let spec = LogSpec {
            target: LogTarget::File {
                path: "/dev/stdout".into(),
                format: LogFormat::Json(fields.clone()),
            },
            filter: None,
        };
        let first = envoy_access_log(&spec);
        for _ in 0..10 {
            assert_eq!(envoy_access_log(&spec), first);
        }
        let Some(access_log::ConfigType::TypedConfig(any)) = first.config_type else {
            panic!("no typed config");
        };
        let file = FileAccessLog::decode(any.value.as_slice()).unwrap();
        assert_eq!(file.path, "/dev/stdout");
        let Some(file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(s)),
            ..
        })) = file.access_log_format
        else {
            panic!("not a JSON format: {:?}", file.access_log_format);
        };
        assert_eq!(s.fields.len(), 20);
        assert!(s.fields.contains_key("k19"));
    }
    #[test]
    fn otel_providers_become_opentelemetry_logs_with_istios_defaults() {
        let s = snapshot(
            MESH,
            &telemetry(
                "apps",
                "ns",
                "  accessLogging:\n  - providers: [{name: otel}, {name: otel-custom}]\n    filter: {expression: 'response.code >= 400'}",
            ),
        );
        let got = logs_of(&s);
        let otel: Vec<&OtelLog> = got
            .iter()
            .map(|l| match &l.target {
                LogTarget::OpenTelemetry(o) => o,
                LogTarget::File { .. } => panic!("not an otel log: {l:?}"),
            })
            .collect();
        assert_eq!(otel.len(), 2, "{got:?}");
        assert_eq!(
            *otel[0],
            OtelLog {
                cluster: "outbound|4317||otel.observability.svc.cluster.local".into(),
                log_name: DEFAULT_OTEL_LOG_NAME.into(),
                body: ISTIO_TEXT_FORMAT.into(),
                attributes: BTreeMap::new(),
            }
        );
        assert_eq!(
            otel[1].cluster, "outbound|4318||otel.observability.svc.cluster.local",
            "the namespace/ prefix is not part of the host"
        );
        assert_eq!(otel[1].log_name, "mesh");
        assert_eq!(
            otel[1].body, "%RESPONSE_CODE% %REQ(:PATH)%",
            "no newline added"
        );
        assert_eq!(
            otel[1].attributes.get("cluster").map(String::as_str),
            Some("%UPSTREAM_CLUSTER%")
        );
        assert!(
            got.iter()
                .all(|l| l.filter.as_deref() == Some("response.code >= 400"))
        );
    }

    #[test]
    #[allow(deprecated)]
    fn otel_logs_encode_as_istiod_writes_them() {
        let s = snapshot(
            MESH,
            &telemetry(
                "apps",
                "ns",
                "  accessLogging:\n  - providers: [{name: otel-custom}]\n    filter: {expression: 'response.code >= 400'}",
            ),
        );
        let log = envoy_access_log(&logs_of(&s)[0]);
        assert_eq!(log.name, OTEL_LOGGER);
        assert!(
            log.filter.is_some(),
            "the CEL filter applies as for file logs"
        );
        let Some(access_log::ConfigType::TypedConfig(any)) = log.config_type else {
            panic!("no typed config");
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig"
        );
        let config = OpenTelemetryAccessLogConfig::decode(any.value.as_slice()).unwrap();
        let common = config.common_config.unwrap();
        assert_eq!(common.log_name, "mesh");
        assert_eq!(common.transport_api_version, ApiVersion::V3 as i32);
        let Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc)) =
            common.grpc_service.unwrap().target_specifier
        else {
            panic!("not envoy_grpc");
        };
        assert_eq!(
            grpc.cluster_name,
            "outbound|4318||otel.observability.svc.cluster.local"
        );
        assert_eq!(grpc.authority, "otel.observability.svc.cluster.local");
        assert!(config.disable_builtin_labels);
        assert_eq!(
            config.body.unwrap().value,
            Some(any_value::Value::StringValue(
                "%RESPONSE_CODE% %REQ(:PATH)%".into()
            ))
        );
        let keys: Vec<String> = config
            .attributes
            .unwrap()
            .values
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["cluster", "code"], "attributes in key order");
    }

    #[test]
    fn otel_logs_land_on_the_connection_managers_of_their_side() {
        use crate::xds::listener::{build_hcm, hcm_filter};
        use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
        use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
        let s = snapshot(
            MESH,
            &telemetry(
                "apps",
                "ns",
                "  accessLogging:\n  - match: {mode: CLIENT}\n    providers: [{name: otel}]",
            ),
        );
        let listener = |direction: TrafficDirection| Listener {
            traffic_direction: direction as i32,
            filter_chains: vec![FilterChain {
                filters: vec![hcm_filter(build_hcm(
                    "s",
                    RouteSpecifier::Rds(Default::default()),
                    false,
                ))],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut listeners = vec![
            listener(TrafficDirection::Outbound),
            listener(TrafficDirection::Inbound),
        ];
        let proxy = web();
        let scope = ProxyScope::new(&s, &proxy);
        apply(&scope, &mut listeners);
        let names = |l: &Listener| -> Vec<String> {
            let Some(filter::ConfigType::TypedConfig(any)) =
                &l.filter_chains[0].filters[0].config_type
            else {
                panic!("no typed config");
            };
            HttpConnectionManager::decode(any.value.as_slice())
                .unwrap()
                .access_log
                .into_iter()
                .map(|a| a.name)
                .collect()
        };
        assert_eq!(names(&listeners[0]), [OTEL_LOGGER]);
        assert!(names(&listeners[1]).is_empty(), "CLIENT only");
    }

    #[test]
    fn tcp_proxies_log_connections_with_their_sides_providers() {
        use crate::xds::listener::tcp_proxy_filter;
        use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
        use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
        use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
            TcpProxy, tcp_proxy::ClusterSpecifier,
        };
        let s = snapshot(
            MESH,
            &telemetry(
                "apps",
                "ns",
                "  accessLogging:\n  - match: {mode: SERVER}\n    providers: [{name: short}, {name: otel}]",
            ),
        );
        let listener = |direction: TrafficDirection| Listener {
            traffic_direction: direction as i32,
            filter_chains: vec![FilterChain {
                filters: vec![tcp_proxy_filter(
                    "db",
                    ClusterSpecifier::Cluster("inbound|3306||".into()),
                )],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut listeners = vec![
            listener(TrafficDirection::Outbound),
            listener(TrafficDirection::Inbound),
        ];
        let proxy = web();
        apply(&ProxyScope::new(&s, &proxy), &mut listeners);
        let names = |l: &Listener| -> Vec<String> {
            let Some(filter::ConfigType::TypedConfig(any)) =
                &l.filter_chains[0].filters[0].config_type
            else {
                panic!("no typed config");
            };
            TcpProxy::decode(any.value.as_slice())
                .unwrap()
                .access_log
                .into_iter()
                .map(|a| a.name)
                .collect()
        };
        assert!(names(&listeners[0]).is_empty(), "SERVER only");
        assert_eq!(
            names(&listeners[1]),
            [OTEL_LOGGER, FILE_LOGGER],
            "providers in name order, as on connection managers"
        );
    }
}
