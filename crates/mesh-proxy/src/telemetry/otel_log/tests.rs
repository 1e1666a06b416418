#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, UNIX_EPOCH};

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use serde_json::json;

use super::*;
use crate::runtime::access_log::{LogTarget, compile};
use crate::telemetry::fixtures::request;

fn logger(config: serde_json::Value) -> FieldResult<Arc<OtelLogger>> {
    let mut typed = json!({
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
    });
    typed
        .as_object_mut()
        .unwrap()
        .extend(config.as_object().unwrap().clone());
    let log: AccessLog =
        mesh_api::xds::json::from_json(&json!({"name": OTEL_LOGGER, "typedConfig": typed}))
            .unwrap();
    let sinks = compile(&[log], "access_log")?;
    match sinks.first().map(|s| &s.target) {
        Some(LogTarget::OpenTelemetry(o)) => Ok(o.clone()),
        other => panic!("not an otel sink: {other:?}"),
    }
}

fn string_of(v: &Option<AnyValue>) -> &str {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s,
        other => panic!("not a string: {other:?}"),
    }
}

const COMMON: &str = "outbound|4317||otel.observability.svc.cluster.local";

#[test]
fn body_and_attributes_are_rendered_per_record() {
    let l = logger(json!({
        "commonConfig": {
            "logName": "otel_envoy_accesslog",
            "grpcService": {"envoyGrpc": {"clusterName": COMMON}},
            "transportApiVersion": "V3",
        },
        "body": {"stringValue": "%RESPONSE_CODE% %REQ(:PATH)% %UPSTREAM_CLUSTER%"},
        "attributes": {"values": [
            {"key": "code", "value": {"stringValue": "%RESPONSE_CODE%"}},
            {"key": "static", "value": {"intValue": "7"}},
            {"key": "nested", "value": {"kvlistValue": {"values": [
                {"key": "method", "value": {"stringValue": "%REQ(:METHOD)%"}}
            ]}}},
        ]},
    }))
    .unwrap();
    let mut r = request(503, Default::default(), Some("outbound|9080||reviews"));
    r.path = "/reviews/1".into();
    r.start = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
    r.trace_id = Some("0af7651916cd43dd8448eb211c80319c".into());
    let record = l.record(r.start, r.trace_id.as_deref(), &|f| f.request(&r));
    assert_eq!(
        string_of(&record.body),
        "503 /reviews/1 outbound|9080||reviews"
    );
    assert_eq!(record.time_unix_nano, 1_714_564_800_123_000_000);
    assert_eq!(
        record.trace_id,
        0x0af7651916cd43dd8448eb211c80319c_u128
            .to_be_bytes()
            .to_vec()
    );
    let keys: Vec<&str> = record.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["code", "static", "nested"]);
    assert_eq!(string_of(&record.attributes[0].value), "503");
    assert_eq!(
        record.attributes[1].value.as_ref().unwrap().value,
        Some(any_value::Value::IntValue(7))
    );
    let Some(any_value::Value::KvlistValue(nested)) =
        record.attributes[2].value.as_ref().unwrap().value.clone()
    else {
        panic!("not a map");
    };
    assert_eq!(string_of(&nested.values[0].value), "GET");
    // A TCP connection renders through the same formats.
    let c = crate::telemetry::fixtures::connection();
    let record = l.record(c.start, None, &|f| f.connection(&c));
    assert_eq!(string_of(&record.body), "0 - inbound|3306||");
    assert!(record.trace_id.is_empty());
}

#[test]
fn the_top_level_grpc_service_and_log_name_win_over_common_config() {
    let a = logger(json!({
        "grpcService": {"envoyGrpc": {"clusterName": "top"}},
        "logName": "top-log",
        "commonConfig": {"logName": "old", "grpcService": {"envoyGrpc": {"clusterName": "old"}}},
    }))
    .unwrap();
    assert_eq!(a.exporter_key().cluster, "top");
    assert_eq!(a.exporter_key().log_name, "top-log");
    assert!(a.exporter_key().builtin_labels);
    let b = logger(json!({
        "commonConfig": {"logName": "old", "grpcService": {"envoyGrpc": {"clusterName": "old"}}},
        "disableBuiltinLabels": true,
        "bufferFlushInterval": "0.2s",
    }))
    .unwrap();
    assert_eq!(b.exporter_key().cluster, "old");
    assert!(!b.exporter_key().builtin_labels);
    assert_eq!(b.exporter_key().flush_interval, Duration::from_millis(200));
    assert!(!Arc::ptr_eq(&a.exporter, &b.exporter));
    let again = logger(json!({
        "grpcService": {"envoyGrpc": {"clusterName": "top"}},
        "logName": "top-log",
        "body": {"stringValue": "%RESPONSE_CODE%"},
    }))
    .unwrap();
    assert!(
        Arc::ptr_eq(&a.exporter, &again.exporter),
        "same collector and resource: one exporter, one batch"
    );
}

#[test]
fn a_bad_config_refuses_the_update_with_its_field() {
    let err = logger(json!({
        "grpcService": {"envoyGrpc": {"clusterName": "c"}},
        "body": {"stringValue": "%RESPONSE_CODE% %BOGUS%"},
    }))
    .unwrap_err();
    assert_eq!(
        err.field, "access_log[0].typed_config.body.string_value",
        "{err:?}"
    );
    let err = logger(json!({
        "grpcService": {"envoyGrpc": {"clusterName": "c"}},
        "attributes": {"values": [{"key": "a", "value": {"stringValue": "%REQ(:PATH"}}]},
    }))
    .unwrap_err();
    assert_eq!(
        err.field, "access_log[0].typed_config.attributes.values[0].value.string_value",
        "{err:?}"
    );
    let err = logger(json!({"body": {"stringValue": "x"}})).unwrap_err();
    assert_eq!(
        err.field, "access_log[0].typed_config.grpc_service",
        "{err:?}"
    );
    let err = logger(json!({"commonConfig": {"grpcService": {"envoyGrpc": {}}}})).unwrap_err();
    assert_eq!(
        err.field, "access_log[0].typed_config.common_config.grpc_service.envoy_grpc.cluster_name",
        "{err:?}"
    );
}

#[test]
fn an_otlp_http_logger_is_left_out_not_refused() {
    let log: AccessLog = mesh_api::xds::json::from_json(&json!({"name": OTEL_LOGGER, "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "httpService": {"httpUri": {"uri": "http://c:4318/v1/logs", "cluster": "c", "timeout": "1s"}},
    }}))
    .unwrap();
    assert!(compile(&[log], "access_log").unwrap().is_empty());
}

#[tokio::test]
async fn records_for_a_collector_with_no_endpoint_are_dropped_and_counted() {
    let l = logger(json!({
        "grpcService": {"envoyGrpc": {"clusterName": "no-such-cluster-in-any-config"}},
        "body": {"stringValue": "%RESPONSE_CODE%"},
        "bufferFlushInterval": "0.05s",
    }))
    .unwrap();
    l.request(&request(200, Default::default(), None));
    flush(Duration::from_secs(5)).await;
    assert_eq!(l.dropped(), 1, "exported nowhere, counted");
}
