//! Access logs: the file access logs of every HTTP connection manager of
//! the proxy's listeners, as istiod writes them.
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
//! fields) and the built-in `envoy` (`/dev/stdout` in Istio's text
//! format) unless MeshConfig defines its own `envoy`. A name that is not
//! defined, or a provider of another kind (gRPC and OpenTelemetry access
//! log services are not translated), is skipped with a warning naming the
//! Telemetry and the field; the rest still applies.
//!
//! Applied once over the built listeners, so each builder of a connection
//! manager (gateway servers, sidecar ports, inbound chains) stays unaware
//! of it.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, ExtensionFilter, access_log, access_log_filter, extension_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, SubstitutionFormatString, TrafficDirection, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use mesh_api::mesh_config::{AccessLogEncoding, EnvoyFileAccessLog, MeshConfig};
use mesh_api::telemetry::WorkloadMode;
use mesh_api::xds::pack_any;
use prost::Message;

use super::HCM_FILTER;
use crate::proxy::ProxyInfo;
use crate::snapshot::{Snapshot, name_of, namespace_of};
use crate::xds::ProxyScope;

/// Istio's default text format (`EnvoyTextLogFormat` in istiod).
pub(crate) const ISTIO_TEXT_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n",
);

/// Istio's default JSON format (`accessLogEncoding: JSON`): the text
/// format's fields under Istio's keys.
const ISTIO_JSON_FORMAT: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("route_name", "%ROUTE_NAME%"),
];

const FILE_LOGGER: &str = "envoy.access_loggers.file";
/// Envoy's CEL access log filter.
pub const CEL_FILTER: &str = "envoy.access_loggers.extension_filters.cel";
/// Istio's built-in provider: Envoy's file log on `/dev/stdout`.
pub const ENVOY_PROVIDER: &str = "envoy";
const DEFAULT_PATH: &str = "/dev/stdout";

/// One file access log of one side of a proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct LogSpec {
    /// File path.
    pub path: String,
    /// Line format.
    pub format: LogFormat,
    /// CEL expression a request must satisfy to be logged.
    pub filter: Option<String>,
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
            Some(p) => match &p.envoy_file_access_log {
                Some(f) => f,
                None => {
                    tracing::warn!(provider = %name, at = %at, "access log provider is not envoyFileAccessLog; only file access logs are translated, skipped");
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
            path: file
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_PATH.into()),
            format: provider_format(file),
            filter,
        });
    }
    out
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
        path: path.into(),
        format,
        filter: None,
    })
}

/// The Envoy access log for `spec`.
pub fn envoy_access_log(spec: &LogSpec) -> AccessLog {
    let file = match &spec.format {
        LogFormat::Json(fields) => json_file_log(&spec.path, fields),
        LogFormat::Text(text) => pack_any(FileAccessLog {
            path: spec.path.clone(),
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
        name: FILE_LOGGER.into(),
        filter,
        config_type: Some(access_log::ConfigType::TypedConfig(file)),
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

/// Adds the access logs to every HTTP connection manager of `listeners`:
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
    for l in listeners.iter_mut() {
        let inbound = l.traffic_direction == TrafficDirection::Inbound as i32;
        let wanted = if inbound { &server } else { &client };
        if wanted.is_empty() {
            continue;
        }
        for chain in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.iter_mut())
        {
            for f in chain.filters.iter_mut().filter(|f| f.name == HCM_FILTER) {
                let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                    continue;
                };
                hcm.access_log.extend(wanted.iter().cloned());
                f.config_type = Some(filter::ConfigType::TypedConfig(pack_any(hcm)));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use mesh_api::mesh_config::parse_mesh_config;
    use std::net::IpAddr;

    const MESH: &str = "extensionProviders:\n- name: json\n  envoyFileAccessLog: {path: /var/log/json.log, logFormat: {labels: {code: \"%RESPONSE_CODE%\", trace: \"%TRACE_ID%\"}}}\n- name: short\n  envoyFileAccessLog: {logFormat: {text: \"%RESPONSE_CODE% %UPSTREAM_CLUSTER%\"}}\n- name: otel\n  envoyOtelAls: {service: otel.observability.svc.cluster.local, port: 4317}\n";

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
            .map(|l| (l.path.as_str(), l.filter.as_deref()))
            .collect()
    }

    #[test]
    fn access_log_file_applies_without_telemetry() {
        let s = snapshot("accessLogFile: /dev/stdout\n", "");
        let got = logs(&s, &web(), WorkloadMode::Client);
        assert_eq!(paths(&got), vec![("/dev/stdout", None)]);
        assert_eq!(got[0].format, LogFormat::Text(ISTIO_TEXT_FORMAT.into()));
        let s = snapshot("accessLogFile: /dev/stdout\naccessLogEncoding: JSON\n", "");
        let LogFormat::Json(fields) = &logs_of(&s)[0].format else {
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
        let LogFormat::Json(fields) = &got[0].format else {
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
                "  accessLogging:\n  - providers: [{name: nope}, {name: otel}, {name: short}]",
            ),
        );
        let got = logs_of(&s);
        assert_eq!(paths(&got), vec![("/dev/stdout", None)]);
        assert_eq!(
            got[0].format,
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
            path: "/dev/stdout".into(),
            format: LogFormat::Text("%RESPONSE_CODE%\n".into()),
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
            path: "/dev/stdout".into(),
            format: LogFormat::Json(fields.clone()),
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
}
