//! MeshConfig `accessLogFile`: every HTTP connection manager of the
//! proxy's listeners logs each request to that file, in `accessLogFormat`
//! or Istio's default text format (Envoy's command operators), as
//! istiod's `accessLogFile: /dev/stdout` does. An empty or missing path
//! logs nothing (Istio's default profile). `accessLogEncoding: JSON` is not
//! translated yet: the lines are text either way.
//!
//! Applied once over the built listeners, so each builder of a connection
//! manager (gateway servers, sidecar ports, inbound chains) stays unaware
//! of it.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, SubstitutionFormatString, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use mesh_api::mesh_config::{AccessLogEncoding, MeshConfig};
use mesh_api::xds::pack_any;
use prost::Message;

use super::HCM_FILTER;

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

/// `accessLogFormat` (or Istio's default) as text or, with
/// `accessLogEncoding: JSON`, Istio's JSON fields.
fn log_format(mesh: &MeshConfig) -> substitution_format_string::Format {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    if mesh.access_log_encoding == Some(AccessLogEncoding::Json) {
        let fields = ISTIO_JSON_FORMAT
            .iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue((*v).to_string())),
                };
                ((*k).to_string(), value)
            })
            .collect();
        return substitution_format_string::Format::JsonFormat(Struct { fields });
    }
    let format = mesh
        .access_log_format
        .as_deref()
        .filter(|f| !f.is_empty())
        .map(|f| {
            if f.ends_with('\n') {
                f.to_string()
            } else {
                format!("{f}\n")
            }
        })
        .unwrap_or_else(|| ISTIO_TEXT_FORMAT.to_string());
    substitution_format_string::Format::TextFormatSource(DataSource {
        specifier: Some(data_source::Specifier::InlineString(format)),
        ..Default::default()
    })
}

/// The file access log MeshConfig asks for, if any.
fn file_access_log(mesh: &MeshConfig) -> Option<AccessLog> {
    let path = mesh.access_log_file.as_deref().filter(|p| !p.is_empty())?;
    let file = FileAccessLog {
        path: path.to_string(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(log_format(mesh)),
                ..Default::default()
            },
        )),
    };
    Some(AccessLog {
        name: FILE_LOGGER.into(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(file))),
        ..Default::default()
    })
}

/// Adds MeshConfig's access log to every HTTP connection manager of
/// `listeners`.
pub(crate) fn apply(mesh: &MeshConfig, listeners: &mut [Listener]) {
    let Some(log) = file_access_log(mesh) else {
        return;
    };
    for chain in listeners.iter_mut().flat_map(|l| {
        l.filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.iter_mut())
    }) {
        for f in chain.filters.iter_mut().filter(|f| f.name == HCM_FILTER) {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            hcm.access_log.push(log.clone());
            f.config_type = Some(filter::ConfigType::TypedConfig(pack_any(hcm)));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::xds::listener::{build_hcm, hcm_filter};
    use envoy_types::pb::envoy::config::listener::v3::FilterChain;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;

    fn listener() -> Listener {
        let hcm = build_hcm("s", RouteSpecifier::Rds(Default::default()), true);
        Listener {
            filter_chains: vec![FilterChain {
                filters: vec![hcm_filter(hcm)],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn logs(l: &Listener) -> Vec<AccessLog> {
        let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no typed config");
        };
        HttpConnectionManager::decode(any.value.as_slice())
            .unwrap()
            .access_log
    }

    #[test]
    fn access_log_file_adds_a_file_logger_in_istios_format() {
        let mut mesh = MeshConfig::default();
        let mut listeners = vec![listener()];
        apply(&mesh, &mut listeners);
        assert!(logs(&listeners[0]).is_empty(), "no accessLogFile, no log");

        mesh.access_log_file = Some("/dev/stdout".into());
        apply(&mesh, &mut listeners);
        let logs = logs(&listeners[0]);
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].name, FILE_LOGGER);
        let Some(access_log::ConfigType::TypedConfig(any)) = &logs[0].config_type else {
            panic!("no typed config");
        };
        let file = FileAccessLog::decode(any.value.as_slice()).unwrap();
        assert_eq!(file.path, "/dev/stdout");
        let text = format!("{:?}", file.access_log_format);
        assert!(text.contains("%RESPONSE_FLAGS%"), "{text}");
    }

    #[test]
    fn json_encoding_gives_istios_json_fields() {
        let mesh = MeshConfig {
            access_log_file: Some("/dev/stdout".into()),
            access_log_encoding: Some(AccessLogEncoding::Json),
            ..Default::default()
        };
        let mut listeners = vec![listener()];
        apply(&mesh, &mut listeners);
        let logs = logs(&listeners[0]);
        let Some(access_log::ConfigType::TypedConfig(any)) = &logs[0].config_type else {
            panic!("no typed config");
        };
        let file = FileAccessLog::decode(any.value.as_slice()).unwrap();
        let Some(file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(s)),
            ..
        })) = file.access_log_format
        else {
            panic!("not a JSON format: {:?}", file.access_log_format);
        };
        assert_eq!(s.fields.len(), ISTIO_JSON_FORMAT.len());
        assert!(s.fields.contains_key("response_flags"));
    }
}
