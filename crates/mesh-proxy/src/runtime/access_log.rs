//! The `access_log` of a connection manager or TCP proxy: file, stdout and
//! stderr loggers (`envoy.access_loggers.file` / `.stdout` / `.stderr`),
//! which is what Istio sends for MeshConfig `accessLogFile` and Telemetry
//! `envoyFileAccessLog` providers.
//!
//! Each logger's format is compiled here into a [`Formatter`]
//! (`telemetry::format`): `log_format` (`text_format`,
//! `text_format_source`, `json_format`, `omit_empty_values`), or the
//! deprecated `format` / `json_format` / `typed_json_format`; none is
//! Envoy's default format. A format Envoy would refuse (an unterminated
//! `%OP`, an unknown operator) refuses the update with the format's field,
//! so the last good listener keeps serving. Operators mesh-proxy cannot
//! fill (see the formatter's docs) print `-` and are logged once per
//! format. The OpenTelemetry logger (`envoy.access_loggers.open_telemetry`,
//! istiod's `envoyOtelAls`) is compiled by `telemetry::otel_log`: its body
//! and attribute values are formats as above, refused the same way with
//! their field, and a missing collector (`grpc_service`) refuses the
//! update. A logger of another kind (gRPC ALS) is not implemented and is
//! left out, never refused: what is logged does not change what is served.
//!
//! A logger's `filter` that is Envoy's CEL extension filter (what istiod
//! writes for Telemetry `filter.expression`) is compiled
//! (`access_log_filter`) and decides per request; an expression it cannot
//! evaluate refuses the update with the filter's field. Other filter kinds
//! (status code, duration, runtime...) are not implemented: the logger
//! logs every request.

// Envoy still reads the deprecated format fields, so they are read too.
#![allow(deprecated)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, access_log, access_log_filter, extension_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    SubstitutionFormatString, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};

use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;

use super::access_log_filter::CelFilter;
use super::convert::decode_any;
use super::{FieldResult, invalid, join};
use crate::proxy::record::RequestRecord;
use crate::telemetry::format::{self, Formatter};
use crate::telemetry::otel_log::OtelLogger;

/// One access log sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSink {
    /// Where records go.
    pub target: LogTarget,
    /// Which requests are logged (all without one).
    pub filter: Option<CelFilter>,
}

/// Where a sink's records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Lines appended to a file.
    File {
        /// Where lines go (`/dev/stdout` and `/dev/stderr` for the streams).
        path: PathBuf,
        /// How lines are formatted.
        format: Arc<Formatter>,
    },
    /// OTLP log records exported to a collector.
    OpenTelemetry(Arc<OtelLogger>),
}

impl LogSink {
    /// Whether `r` passes the sink's filter.
    pub fn accepts(&self, r: &RequestRecord) -> bool {
        self.filter.as_ref().is_none_or(|f| f.accepts(r))
    }
}

/// The CEL filter of `log` at field `at`, if it has one.
fn cel_filter(log: &AccessLog, at: &str) -> FieldResult<Option<CelFilter>> {
    let Some(access_log_filter::FilterSpecifier::ExtensionFilter(ext)) = log
        .filter
        .as_ref()
        .and_then(|f| f.filter_specifier.as_ref())
    else {
        return Ok(None);
    };
    let Some(extension_filter::ConfigType::TypedConfig(any)) = &ext.config_type else {
        return Ok(None);
    };
    if !any
        .type_url
        .ends_with("envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter")
    {
        return Ok(None);
    }
    let at = join(at, "filter.extension_filter.typed_config");
    let cel: ExpressionFilter = decode_any(any, &at)?;
    CelFilter::compile(&cel.expression, &join(&at, "expression")).map(Some)
}

/// The sinks of an `access_log` list at field `at`.
pub(crate) fn compile(logs: &[AccessLog], at: &str) -> FieldResult<Arc<[LogSink]>> {
    let mut sinks = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let field = format!("{at}[{i}]");
        let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
            continue;
        };
        let typed = join(&field, "typed_config");
        let (path, format) = match any.type_url.rsplit('/').next().unwrap_or_default() {
            "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig" => {
                let c: OpenTelemetryAccessLogConfig = decode_any(any, &typed)?;
                let Some(logger) = OtelLogger::compile(&c, &typed)? else {
                    continue;
                };
                warn_unsupported(&format!("OpenTelemetry {field}"), &logger.unsupported());
                let filter = cel_filter(log, &field)?;
                sinks.push(LogSink {
                    target: LogTarget::OpenTelemetry(Arc::new(logger)),
                    filter,
                });
                continue;
            }
            "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
                let f: FileAccessLog = decode_any(any, &typed)?;
                let format = match &f.access_log_format {
                    None => format::envoy_default(),
                    Some(file_access_log::AccessLogFormat::Format(text)) if text.is_empty() => {
                        format::envoy_default()
                    }
                    Some(file_access_log::AccessLogFormat::Format(text)) => {
                        Arc::new(Formatter::text(text, &join(&typed, "format"))?)
                    }
                    Some(file_access_log::AccessLogFormat::JsonFormat(s)) => {
                        Arc::new(Formatter::json(s, &join(&typed, "json_format"))?)
                    }
                    Some(file_access_log::AccessLogFormat::TypedJsonFormat(s)) => {
                        Arc::new(Formatter::json(s, &join(&typed, "typed_json_format"))?)
                    }
                    Some(file_access_log::AccessLogFormat::LogFormat(s)) => {
                        substitution(s, &join(&typed, "log_format"))?
                    }
                };
                (PathBuf::from(f.path), format)
            }
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => {
                let s: StdoutAccessLog = decode_any(any, &typed)?;
                let format = match &s.access_log_format {
                    Some(stdout_access_log::AccessLogFormat::LogFormat(s)) => {
                        substitution(s, &join(&typed, "log_format"))?
                    }
                    None => format::envoy_default(),
                };
                (PathBuf::from("/dev/stdout"), format)
            }
            "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
                let s: StderrAccessLog = decode_any(any, &typed)?;
                let format = match &s.access_log_format {
                    Some(stderr_access_log::AccessLogFormat::LogFormat(s)) => {
                        substitution(s, &join(&typed, "log_format"))?
                    }
                    None => format::envoy_default(),
                };
                (PathBuf::from("/dev/stderr"), format)
            }
            _ => continue,
        };
        if path.as_os_str().is_empty() {
            continue;
        }
        warn_unsupported(&path.display().to_string(), format.unsupported());
        let filter = cel_filter(log, &field)?;
        sinks.push(LogSink {
            filter,
            target: LogTarget::File { path, format },
        });
    }
    Ok(sinks.into())
}

/// A `SubstitutionFormatString` at field `at`.
fn substitution(s: &SubstitutionFormatString, at: &str) -> FieldResult<Arc<Formatter>> {
    use substitution_format_string::Format as F;
    let formatter = match &s.format {
        Some(F::TextFormat(t)) => Formatter::text(t, &join(at, "text_format"))?,
        Some(F::JsonFormat(j)) => Formatter::json(j, &join(at, "json_format"))?,
        Some(F::TextFormatSource(d)) => {
            let at = join(at, "text_format_source");
            let text = match &d.specifier {
                Some(data_source::Specifier::InlineString(t)) => {
                    return finish(Formatter::text(t, &join(&at, "inline_string"))?, s);
                }
                Some(data_source::Specifier::InlineBytes(b)) => {
                    let Ok(t) = std::str::from_utf8(b) else {
                        return invalid(join(&at, "inline_bytes"), "the format is not UTF-8");
                    };
                    return finish(Formatter::text(t, &join(&at, "inline_bytes"))?, s);
                }
                Some(data_source::Specifier::Filename(name)) => {
                    match std::fs::read_to_string(name) {
                        Ok(t) => (t, join(&at, "filename")),
                        Err(e) => {
                            return invalid(
                                join(&at, "filename"),
                                format!("cannot read the format from {name:?}: {e}"),
                            );
                        }
                    }
                }
                Some(data_source::Specifier::EnvironmentVariable(var)) => {
                    match std::env::var(var) {
                        Ok(t) => (t, join(&at, "environment_variable")),
                        Err(e) => {
                            return invalid(
                                join(&at, "environment_variable"),
                                format!("cannot read the format from ${var}: {e}"),
                            );
                        }
                    }
                }
                None => return invalid(at, "a data source is required"),
            };
            Formatter::text(&text.0, &text.1)?
        }
        None => {
            return invalid(
                at,
                "one of text_format, json_format or text_format_source is required",
            );
        }
    };
    finish(formatter, s)
}

fn finish(f: Formatter, s: &SubstitutionFormatString) -> FieldResult<Arc<Formatter>> {
    Ok(Arc::new(f.omit_empty_values(s.omit_empty_values)))
}

/// Logs, once per sink (a path, or an OpenTelemetry logger's field) and
/// operators, the operators that will print `-` although Envoy would
/// print a value (updates recompile the same formats again and again).
fn warn_unsupported(sink: &str, unsupported: &[String]) {
    static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    if unsupported.is_empty() {
        return;
    }
    let key = format!("{sink}\0{}", unsupported.join("\0"));
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.get_or_insert_with(HashSet::new).insert(key) {
        tracing::warn!(
            sink,
            operators = %unsupported.join(", "),
            "access log format: these command operators print '-' in mesh-proxy"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn logs(value: serde_json::Value) -> Vec<AccessLog> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| mesh_api::xds::json::from_json(v).unwrap())
            .collect()
    }

    #[test]
    fn file_stdout_and_json_sinks() {
        let sinks = compile(
            &logs(json!([
                {"name": "envoy.access_loggers.file", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": "/var/log/mesh.log",
                    "logFormat": {"textFormatSource": {"inlineString": "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"}}
                }},
                {"name": "envoy.access_loggers.stdout", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "logFormat": {"jsonFormat": {"code": "%RESPONSE_CODE%"}}
                }},
                {"name": "envoy.access_loggers.file", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": "/tmp/custom.log",
                    "logFormat": {"textFormat": "%RESPONSE_CODE%\n"}
                }},
                {"name": "otel", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
                }}
            ])),
            "access_log",
        )
        .unwrap();
        let got: Vec<(&str, bool)> = sinks
            .iter()
            .map(|s| (path(s), format_of(s).is_json()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/var/log/mesh.log", false),
                ("/dev/stdout", true),
                ("/tmp/custom.log", false),
                ("/dev/stderr", false),
            ]
        );
        // Istio's text format is Istio's built-in one; the others are
        // rendered as written; no format is Envoy's default.
        assert_eq!(*format_of(&sinks[0]), *format::istio_text());
        let r = crate::telemetry::fixtures::request(200, Default::default(), None);
        assert_eq!(format_of(&sinks[1]).request(&r), "{\"code\":200}\n");
        assert_eq!(format_of(&sinks[2]).request(&r), "200\n");
        assert_eq!(*format_of(&sinks[3]), *format::envoy_default());
    }

    fn path(s: &LogSink) -> &str {
        match &s.target {
            LogTarget::File { path, .. } => path.to_str().unwrap(),
            LogTarget::OpenTelemetry(_) => "otel",
        }
    }

    fn format_of(s: &LogSink) -> &Formatter {
        match &s.target {
            LogTarget::File { format, .. } => format,
            LogTarget::OpenTelemetry(o) => panic!("not a file sink: {o:?}"),
        }
    }

    fn file_log(format: serde_json::Value) -> Vec<AccessLog> {
        let mut config = json!({
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/tmp/x.log",
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(format.as_object().unwrap().clone());
        logs(json!([{"name": "envoy.access_loggers.file", "typedConfig": config}]))
    }

    #[test]
    fn deprecated_formats_and_omit_empty_values_are_honoured() {
        let r = crate::telemetry::fixtures::request(503, Default::default(), None);
        let sinks = compile(
            &file_log(json!({"format": "%RESPONSE_CODE% %ROUTE_NAME%"})),
            "al",
        )
        .unwrap();
        assert_eq!(format_of(&sinks[0]).request(&r), "503 -");
        let sinks = compile(
            &file_log(json!({"jsonFormat": {"code": "%RESPONSE_CODE%", "route": "%ROUTE_NAME%"}})),
            "al",
        )
        .unwrap();
        assert_eq!(
            format_of(&sinks[0]).request(&r),
            "{\"code\":503,\"route\":null}\n"
        );
        let sinks = compile(
            &file_log(json!({"logFormat": {"jsonFormat": {"code": "%RESPONSE_CODE%", "route": "%ROUTE_NAME%"}, "omitEmptyValues": true}})),
            "al",
        )
        .unwrap();
        assert_eq!(format_of(&sinks[0]).request(&r), "{\"code\":503}\n");
        let sinks = compile(
            &file_log(
                json!({"logFormat": {"textFormat": "[%ROUTE_NAME%]", "omitEmptyValues": true}}),
            ),
            "al",
        )
        .unwrap();
        assert_eq!(format_of(&sinks[0]).request(&r), "[]");
        let sinks = compile(&file_log(json!({"format": ""})), "al").unwrap();
        assert_eq!(*format_of(&sinks[0]), *format::envoy_default());
    }

    #[test]
    fn a_bad_format_refuses_the_update_with_its_field() {
        let err = compile(
            &file_log(json!({"logFormat": {"textFormatSource": {"inlineString": "%RESPONSE_CODE% %BOGUS_OP%\n"}}})),
            "access_log",
        )
        .unwrap_err();
        assert_eq!(
            err.field, "access_log[0].typed_config.log_format.text_format_source.inline_string",
            "{err:?}"
        );
        assert!(err.reason.contains("%BOGUS_OP%"), "{err:?}");
        let err = compile(
            &file_log(json!({"logFormat": {"jsonFormat": {"a": {"b": "%RESPONSE_CODE"}}}})),
            "access_log",
        )
        .unwrap_err();
        assert_eq!(
            err.field, "access_log[0].typed_config.log_format.json_format.a.b",
            "{err:?}"
        );
        assert!(err.reason.contains("position 0"), "{err:?}");
        let err = compile(&file_log(json!({"logFormat": {}})), "access_log").unwrap_err();
        assert_eq!(
            err.field, "access_log[0].typed_config.log_format",
            "{err:?}"
        );
    }

    #[test]
    fn a_broken_logger_config_names_its_entry() {
        let mut l = logs(
            json!([{"name": "envoy.access_loggers.file", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": "/x"
            }}]),
        );
        if let Some(access_log::ConfigType::TypedConfig(any)) = &mut l[0].config_type {
            any.value = vec![0xff, 0xff];
        }
        let err = compile(&l, "access_log").unwrap_err();
        assert_eq!(err.field, "access_log[0].typed_config", "{err:?}");
    }

    #[test]
    fn a_cel_filter_is_compiled_and_a_bad_one_refused_with_its_field() {
        let with = |expr: &str| {
            logs(json!([{"name": "envoy.access_loggers.file",
            "filter": {"extensionFilter": {"name": "envoy.access_loggers.extension_filters.cel",
                "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    "expression": expr}}},
            "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": "/x"
            }}]))
        };
        let sinks = compile(&with("response.code >= 500"), "access_log").unwrap();
        let ok = crate::telemetry::fixtures::request(200, Default::default(), None);
        let failed = crate::telemetry::fixtures::request(503, Default::default(), None);
        assert!(!sinks[0].accepts(&ok));
        assert!(sinks[0].accepts(&failed));
        let err = compile(&with("request.headers['x-tenant'] == 'a'"), "access_log").unwrap_err();
        assert_eq!(
            err.field, "access_log[0].filter.extension_filter.typed_config.expression",
            "{err:?}"
        );
        assert!(err.reason.contains("x-tenant"), "{err:?}");
    }
}
