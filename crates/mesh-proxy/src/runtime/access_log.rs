//! The `access_log` of a connection manager or TCP proxy: file, stdout and
//! stderr loggers (`envoy.access_loggers.file` / `.stdout` / `.stderr`),
//! which is what Istio sends for MeshConfig `accessLogFile`.
//!
//! Lines are written in Istio's default text format, or as Istio's JSON
//! when the logger asks for a JSON format (`telemetry::access_log`). A
//! text format other than Istio's default is written in Istio's default
//! (logged once when the file opens); a logger of another kind
//! (OpenTelemetry, gRPC) is not implemented and is left out, never
//! refused: what is logged does not change what is served.
//!
//! A logger's `filter` that is Envoy's CEL extension filter (what istiod
//! writes for Telemetry `filter.expression`) is compiled
//! (`access_log_filter`) and decides per request; an expression it cannot
//! evaluate refuses the update with the filter's field. Other filter kinds
//! (status code, duration, runtime...) are not implemented: the logger
//! logs every request.

// Envoy still reads the deprecated format fields, so they are read too.
#![allow(deprecated)]

use std::path::PathBuf;
use std::sync::Arc;

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

use super::access_log_filter::CelFilter;
use super::convert::decode_any;
use super::{FieldResult, join};
use crate::proxy::record::RequestRecord;

/// One access log sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSink {
    /// Where lines go (`/dev/stdout` and `/dev/stderr` for the streams).
    pub path: PathBuf,
    /// Istio's JSON format instead of its text format.
    pub json: bool,
    /// A text format other than Istio's default was asked for.
    pub custom_format: bool,
    /// Which requests are logged (all without one).
    pub filter: Option<CelFilter>,
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
            "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
                let f: FileAccessLog = decode_any(any, &typed)?;
                let format = match f.access_log_format {
                    None => Format::Default,
                    Some(file_access_log::AccessLogFormat::Format(text)) => Format::Text(text),
                    Some(
                        file_access_log::AccessLogFormat::JsonFormat(_)
                        | file_access_log::AccessLogFormat::TypedJsonFormat(_),
                    ) => Format::Json,
                    Some(file_access_log::AccessLogFormat::LogFormat(s)) => substitution(&s),
                };
                (PathBuf::from(f.path), format)
            }
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => {
                let s: StdoutAccessLog = decode_any(any, &typed)?;
                let format = match s.access_log_format {
                    Some(stdout_access_log::AccessLogFormat::LogFormat(s)) => substitution(&s),
                    None => Format::Default,
                };
                (PathBuf::from("/dev/stdout"), format)
            }
            "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
                let s: StderrAccessLog = decode_any(any, &typed)?;
                let format = match s.access_log_format {
                    Some(stderr_access_log::AccessLogFormat::LogFormat(s)) => substitution(&s),
                    None => Format::Default,
                };
                (PathBuf::from("/dev/stderr"), format)
            }
            _ => continue,
        };
        if path.as_os_str().is_empty() {
            continue;
        }
        let filter = cel_filter(log, &field)?;
        sinks.push(LogSink {
            filter,
            path,
            json: matches!(format, Format::Json),
            custom_format: matches!(&format, Format::Text(t) if !is_istio_default(t)),
        });
    }
    Ok(sinks.into())
}

enum Format {
    /// Envoy's default format (close to Istio's; written as Istio's).
    Default,
    Text(String),
    Json,
}

fn substitution(s: &SubstitutionFormatString) -> Format {
    match &s.format {
        Some(substitution_format_string::Format::JsonFormat(_)) => Format::Json,
        Some(substitution_format_string::Format::TextFormat(t)) => Format::Text(t.clone()),
        Some(substitution_format_string::Format::TextFormatSource(d)) => match &d.specifier {
            Some(data_source::Specifier::InlineString(t)) => Format::Text(t.clone()),
            Some(data_source::Specifier::InlineBytes(b)) => {
                Format::Text(String::from_utf8_lossy(b).into_owned())
            }
            _ => Format::Default,
        },
        None => Format::Default,
    }
}

/// Whether `text` is Istio's default format (what the text lines are).
fn is_istio_default(text: &str) -> bool {
    const ISTIO: &str = concat!(
        "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
        "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
        "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% ",
        "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
        "%REQUESTED_SERVER_NAME% %ROUTE_NAME%",
    );
    text.trim_end() == ISTIO
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
        let got: Vec<(&str, bool, bool)> = sinks
            .iter()
            .map(|s| (s.path.to_str().unwrap(), s.json, s.custom_format))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/var/log/mesh.log", false, false),
                ("/dev/stdout", true, false),
                ("/tmp/custom.log", false, true),
                ("/dev/stderr", false, false),
            ]
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
