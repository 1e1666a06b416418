use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use test_case::test_case;

use super::*;
use crate::proxy::record::{ResponseFlags, Security};
use crate::runtime::listener::Direction;
use crate::telemetry::fixtures::{connection, request};

fn text(f: &str) -> Formatter {
    Formatter::text(f, "log_format.text_format").unwrap_or_else(|e| panic!("{f:?}: {e:?}"))
}

/// An inbound mTLS request that went upstream, with a span.
fn mtls_request() -> RequestRecord {
    let mut r = request(200, ResponseFlags::default(), Some("inbound|9080||"));
    r.start = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
    r.direction = Direction::Inbound;
    r.downstream_security = Security::MutualTls;
    r.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
    r.downstream_peer_principal = Some(Arc::from(
        "spiffe://cluster.local/ns/default/sa/productpage",
    ));
    r.upstream_peer_principal = Some(Arc::from("spiffe://cluster.local/ns/default/sa/reviews"));
    r.local_principal = Some(Arc::from("spiffe://cluster.local/ns/default/sa/reviews"));
    r.user_agent = Some("curl/8.5.0".into());
    r.path = "/reviews/1?x=1".into();
    r.route_name = Some("default".into());
    r.upstream_service_time = Some(Duration::from_millis(2));
    r.attempts = 2;
    r.grpc_status = Some(14);
    r
}

fn tcp() -> TcpRecord {
    TcpRecord {
        listener: "l".into(),
        direction: Direction::Outbound,
        downstream_remote: "10.0.0.1:1234".parse().unwrap(),
        downstream_local: "10.96.0.9:3306".parse().unwrap(),
        server_name: Some("db.example.com".into()),
        cluster: Some("outbound|3306||db.example.com".into()),
        upstream_host: Some("10.1.0.9:3306".into()),
        flags: ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
        duration: Duration::from_millis(1),
        downstream_peer_principal: Some(Arc::from("spiffe://cluster.local/ns/a/sa/client")),
        local_principal: Some(Arc::from("spiffe://cluster.local/ns/a/sa/me")),
        ..connection()
    }
}

#[test]
fn builtin_formats_compile_without_unsupported_operators() {
    for f in [istio_text(), istio_json(), envoy_default()] {
        assert!(f.unsupported().is_empty(), "{f:?}");
        assert_ne!(f.body, Body::Text(Template::default()));
    }
    assert!(istio_json().is_json());
}

#[test]
fn identity_and_trace_operators() {
    let f = text("%TRACE_ID% %DOWNSTREAM_PEER_URI_SAN% %UPSTREAM_PEER_URI_SAN% %RESPONSE_CODE%\n");
    assert_eq!(
        f.request(&mtls_request()),
        "4bf92f3577b34da6a3ce929d0e0e4736 spiffe://cluster.local/ns/default/sa/productpage \
         spiffe://cluster.local/ns/default/sa/reviews 200\n"
    );
    // Unknown values print `-`.
    assert_eq!(
        f.request(&request(404, ResponseFlags::NO_ROUTE_FOUND, None)),
        "- - - 404\n"
    );
    // The local identity is on the peer's side: downstream on inbound.
    let f = text("%DOWNSTREAM_LOCAL_URI_SAN% %UPSTREAM_LOCAL_URI_SAN%");
    assert_eq!(
        f.request(&mtls_request()),
        "spiffe://cluster.local/ns/default/sa/reviews -"
    );
    assert_eq!(f.connection(&tcp()), "- spiffe://cluster.local/ns/a/sa/me");
}

#[test]
fn header_operators_alternatives_and_lengths() {
    let r = mtls_request();
    let f = text(
        "%REQ(:METHOD)% %REQ(x-envoy-original-path?:path)% %REQ(USER-AGENT):4% %REQ(X-REQUEST-ID?USER-AGENT)% %REQ_WITHOUT_QUERY(:PATH)% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %REQ(HOST)%",
    );
    assert_eq!(
        f.request(&r),
        "GET /reviews/1?x=1 curl curl/8.5.0 /reviews/1 2 reviews:9080"
    );
    assert!(f.unsupported().is_empty(), "{:?}", f.unsupported());
    // Headers the record does not keep print `-` and are listed.
    let f = text(
        "%REQ(X-B3-TRACEID)% %RESP(CONTENT-TYPE)% %TRAILER(GRPC-MESSAGE)% %REQ(X-TENANT?USER-AGENT)%",
    );
    assert_eq!(f.request(&r), "- - - curl/8.5.0");
    assert_eq!(f.unsupported().len(), 4, "{:?}", f.unsupported());
    assert!(
        f.unsupported()[0].contains("x-b3-traceid"),
        "{:?}",
        f.unsupported()
    );
}

#[test]
fn stream_info_operators() {
    let r = mtls_request();
    let f = text(
        "%PROTOCOL%|%RESPONSE_FLAGS%|%RESPONSE_CODE_DETAILS%|%CONNECTION_TERMINATION_DETAILS%|\
         %UPSTREAM_TRANSPORT_FAILURE_REASON%|%BYTES_RECEIVED%|%BYTES_SENT%|%DURATION%|\
         %UPSTREAM_HOST%|%UPSTREAM_CLUSTER%|%UPSTREAM_CLUSTER_RAW%|%UPSTREAM_LOCAL_ADDRESS%|\
         %DOWNSTREAM_LOCAL_ADDRESS%|%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|\
         %DOWNSTREAM_REMOTE_ADDRESS%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|\
         %DOWNSTREAM_DIRECT_REMOTE_ADDRESS%|%REQUESTED_SERVER_NAME%|%ROUTE_NAME%|\
         %UPSTREAM_REQUEST_ATTEMPT_COUNT%|%GRPC_STATUS%|%GRPC_STATUS_NUMBER%|\
         %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%UPSTREAM_REMOTE_PORT%|%DOWNSTREAM_LOCAL_PORT%|100%%",
    );
    assert_eq!(
        f.request(&r),
        "HTTP/1.1|-|via_upstream|-|-|10|2000|3|10.1.0.7:9080|inbound|9080|||inbound|9080|||-|\
         10.96.0.5:9080|10.96.0.5|10.0.0.1:40000|10.0.0.1|10.0.0.1:40000|-|default|2|\
         Unavailable|14|10.1.0.7|9080|9080|100%"
    );
    let mut failed = request(503, ResponseFlags::UPSTREAM_CONNECTION_FAILURE, Some("c"));
    failed
        .flags
        .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
    failed.details = Some("upstream_reset_before_response_started".into());
    assert_eq!(
        text("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%").request(&failed),
        "503 UF,URX upstream_reset_before_response_started"
    );
}

#[test]
fn tcp_records_print_dashes_for_http_fields() {
    let f = text(
        "%REQ(:METHOD)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% \
         %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %TRACE_ID% %ROUTE_NAME% \
         %UPSTREAM_REQUEST_ATTEMPT_COUNT% %UPSTREAM_HOST% %REQUESTED_SERVER_NAME% \
         %DOWNSTREAM_PEER_URI_SAN% %UPSTREAM_PEER_URI_SAN%\n",
    );
    assert_eq!(
        f.connection(&tcp()),
        "- - 0 UF 5 7 1 - - - - 10.1.0.9:3306 db.example.com spiffe://cluster.local/ns/a/sa/client -\n"
    );
}

#[test]
fn upstream_connection_operators_read_the_record() {
    let f = text(
        "%UPSTREAM_LOCAL_ADDRESS%|%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|%UPSTREAM_LOCAL_PORT%|\
         %UPSTREAM_TRANSPORT_FAILURE_REASON%|%CONNECTION_TERMINATION_DETAILS%",
    );
    assert!(f.unsupported().is_empty(), "{:?}", f.unsupported());
    // None known: dashes, for a request and a connection.
    let mut r = mtls_request();
    assert_eq!(f.request(&r), "-|-|-|-|-");
    assert_eq!(f.connection(&tcp()), "-|-|-|-|-");
    r.upstream_local = Some("10.0.0.2:51234".parse().unwrap());
    r.upstream_transport_failure = Some(Arc::from(
        "TLS_error:|invalid peer certificate: UnknownIssuer:TLS_error_end",
    ));
    assert_eq!(
        f.request(&r),
        "10.0.0.2:51234|10.0.0.2|51234|\
         TLS_error:|invalid peer certificate: UnknownIssuer:TLS_error_end|-"
    );
    let mut c = tcp();
    c.upstream_local = Some("[fd00::2]:40001".parse().unwrap());
    c.termination_details = Some("rbac_access_denied_matched_policy[none]".into());
    assert_eq!(
        f.connection(&c),
        "[fd00::2]:40001|fd00::2|40001|-|rbac_access_denied_matched_policy[none]"
    );
    // In JSON the port is a number.
    let json = Formatter::json(
        &Struct {
            fields: [(
                "port".to_string(),
                Value {
                    kind: Some(Kind::StringValue("%UPSTREAM_LOCAL_PORT%".into())),
                },
            )]
            .into(),
        },
        "log_format.json_format",
    )
    .unwrap();
    assert_eq!(json.connection(&c), "{\"port\":40001}\n");
}

#[test_case("%START_TIME%", "2024-05-01T12:00:00.123Z"; "default")]
#[test_case("%START_TIME(%s)%", "1714564800"; "epoch seconds")]
#[test_case("%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%", "2024-05-01T12:00:00.123Z"; "millis")]
#[test_case("%START_TIME(%FT%T%z)%", "2024-05-01T12:00:00+0000"; "iso shorthand")]
#[test_case("%START_TIME(%E3S %6f %f)%", "00.123 123000 123000000"; "fractions")]
#[test_case("%START_TIME(%a %d %b %Y %I %p %j %Z %Ez)%", "Wed 01 May 2024 12 PM 122 UTC +00:00"; "names")]
#[test_case("%START_TIME(%%s)%", "%s"; "escaped percent")]
fn start_time_formats(format: &str, expected: &str) {
    let r = mtls_request();
    assert_eq!(text(format).request(&r), expected);
}

#[test]
fn hostname_and_environment_are_read_at_compile_time() {
    let f = text("%HOSTNAME% %ENVIRONMENT(MESH_FORMAT_TEST_UNSET_VAR)%");
    let line = f.request(&mtls_request());
    let (host, env) = line.split_once(' ').unwrap();
    assert!(!host.is_empty() && host != "-", "{line}");
    assert_eq!(env, "-");
}

#[test]
fn unimplemented_operators_print_dashes_and_are_listed() {
    let f = text(
        "%DYNAMIC_METADATA(istio.mixer:status):10% %FILTER_STATE(x)% %UPSTREAM_PEER_SUBJECT% %RESPONSE_CODE%",
    );
    assert_eq!(f.request(&mtls_request()), "- - - 200");
    assert_eq!(f.unsupported().len(), 3, "{:?}", f.unsupported());
    assert!(
        f.unsupported()[0].starts_with("%DYNAMIC_METADATA(istio.mixer:status):10%"),
        "{:?}",
        f.unsupported()
    );
}

#[test]
fn omit_empty_values_prints_nothing_for_unknown_values() {
    let f = text("[%ROUTE_NAME%] [%RESPONSE_FLAGS%]").omit_empty_values(true);
    let r = request(200, ResponseFlags::default(), None);
    // Flags print `-` as a value (none set), not as an unknown value.
    assert_eq!(f.request(&r), "[] [-]");
}

#[test_case("%RESPONSE_CODE", "position 0"; "unterminated")]
#[test_case("ok %", "position 3"; "lone percent at the end")]
#[test_case("%response_code%", "position 0"; "lowercase")]
#[test_case("%REQ(:PATH%", "position 0"; "unclosed argument")]
#[test_case("%REQ(:PATH):x%", "position 0"; "bad length")]
#[test_case("%NOT_AN_OPERATOR%", "%NOT_AN_OPERATOR%: not a command operator"; "unknown")]
#[test_case("%REQ%", "header name is required"; "header missing")]
#[test_case("%REQ(A?B?C)%", "alternative"; "two alternatives")]
#[test_case("%RESPONSE_CODE(x)%", "takes no argument"; "argument on a plain operator")]
#[test_case("%DURATION:3%", "takes no argument or length"; "length on a plain operator")]
#[test_case("%START_TIME(%Q)%", "%Q is not supported"; "bad time specifier")]
fn bad_formats_are_refused_with_the_field(format: &str, reason: &str) {
    let err =
        Formatter::text(format, "access_log[0].typed_config.log_format.text_format").unwrap_err();
    assert_eq!(
        err.field,
        "access_log[0].typed_config.log_format.text_format"
    );
    assert!(err.reason.contains(reason), "{format:?}: {err:?}");
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn object(fields: &[(&str, Value)]) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
    }
}

#[test]
fn json_formats_keep_types_sort_keys_and_null_unknown_values() {
    let format = object(&[
        ("trace_id", string("%TRACE_ID%")),
        ("code", string("%RESPONSE_CODE%")),
        ("bytes", string("%BYTES_SENT%")),
        ("route", string("%ROUTE_NAME%")),
        (
            "line",
            string("%REQ(:METHOD)% %REQ(:PATH)% %REQ(X-UNKNOWN)%"),
        ),
        ("peer", string("%DOWNSTREAM_PEER_URI_SAN%")),
        (
            "upstream_time",
            string("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
        ),
        ("quote", string("say \"hi\"\n")),
        (
            "nested",
            Value {
                kind: Some(Kind::StructValue(object(&[
                    ("z", string("%DURATION%")),
                    ("a", string("%UPSTREAM_CLUSTER%")),
                ]))),
            },
        ),
        (
            "constants",
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![
                        Value {
                            kind: Some(Kind::NumberValue(1.0)),
                        },
                        Value {
                            kind: Some(Kind::BoolValue(true)),
                        },
                        Value {
                            kind: Some(Kind::NumberValue(1.5)),
                        },
                    ],
                })),
            },
        ),
    ]);
    let f = Formatter::json(&format, "json_format").unwrap();
    let line = f.request(&mtls_request());
    assert_eq!(
        line,
        "{\"bytes\":2000,\"code\":200,\"constants\":[1,true,1.5],\
         \"line\":\"GET /reviews/1?x=1 -\",\
         \"nested\":{\"a\":\"inbound|9080||\",\"z\":3},\
         \"peer\":\"spiffe://cluster.local/ns/default/sa/productpage\",\
         \"quote\":\"say \\\"hi\\\"\\n\",\"route\":\"default\",\
         \"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"upstream_time\":\"2\"}\n"
    );
    serde_json::from_str::<serde_json::Value>(&line).unwrap();
    let tcp_line = f.connection(&tcp());
    let v: serde_json::Value = serde_json::from_str(&tcp_line).unwrap();
    assert_eq!(v["code"], 0);
    assert_eq!(v["trace_id"], serde_json::Value::Null);
    assert_eq!(v["route"], serde_json::Value::Null);
    assert_eq!(v["line"], "- - -");
    assert_eq!(v["peer"], "spiffe://cluster.local/ns/a/sa/client");
    // omit_empty_values leaves the unknown ones out.
    let f = f.omit_empty_values(true);
    let v: serde_json::Value = serde_json::from_str(&f.connection(&tcp())).unwrap();
    assert!(
        v.get("trace_id").is_none() && v.get("route").is_none(),
        "{v}"
    );
    assert_eq!(v["line"], "  ");
}

#[test]
fn a_bad_json_value_names_its_key() {
    let format = object(&[(
        "outer",
        Value {
            kind: Some(Kind::StructValue(object(&[("inner", string("%NOPE%"))]))),
        },
    )]);
    let err = Formatter::json(&format, "log_format.json_format").unwrap_err();
    assert_eq!(err.field, "log_format.json_format.outer.inner");
}
