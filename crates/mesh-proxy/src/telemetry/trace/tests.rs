use envoy_types::pb::envoy::config::core::v3::GrpcService;
use envoy_types::pb::envoy::config::core::v3::grpc_service::EnvoyGrpc;
use envoy_types::pb::envoy::config::trace::v3::tracing::Http;
use envoy_types::pb::envoy::r#type::tracing::v3::CustomTag as PbCustomTag;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::Any;
use http::HeaderValue;
use prost::Message;

use super::*;

fn otel(cluster: &str) -> Any {
    let cfg = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: cluster.into(),
                ..Default::default()
            })),
            ..Default::default()
        }),
        service_name: "reviews.default".into(),
        ..Default::default()
    };
    Any {
        type_url: OpenTelemetryConfig::type_url(),
        value: cfg.encode_to_vec(),
    }
}

fn tracing_pb(random: f64) -> PbTracing {
    PbTracing {
        random_sampling: Some(Percent { value: random }),
        provider: Some(Http {
            name: OPENTELEMETRY_TRACER.into(),
            config_type: Some(ConfigType::TypedConfig(otel(
                "outbound|4317||otel.obs.svc.cluster.local",
            ))),
        }),
        custom_tags: vec![
            PbCustomTag {
                tag: "istio.mesh_id".into(),
                r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
                    value: "mesh1".into(),
                })),
            },
            PbCustomTag {
                tag: "tenant".into(),
                r#type: Some(custom_tag::Type::RequestHeader(custom_tag::Header {
                    name: "x-tenant".into(),
                    default_value: String::new(),
                })),
            },
        ],
        ..Default::default()
    }
}

#[test]
fn opentelemetry_tracing_compiles() {
    let c = compile(&tracing_pb(1.0), "hcm.tracing").unwrap().unwrap();
    assert_eq!(
        c.collector_cluster,
        "outbound|4317||otel.obs.svc.cluster.local"
    );
    assert_eq!(c.service_name, "reviews.default");
    assert_eq!(
        (c.random_sampling, c.client_sampling, c.overall_sampling),
        (1.0, 100.0, 100.0)
    );
    assert_eq!(c.custom_tags.len(), 2);
    assert_eq!(c.max_path_tag_length, 256);
}

#[test]
fn bad_percentages_name_the_field() {
    let e = compile(&tracing_pb(101.0), "hcm.tracing").unwrap_err();
    assert_eq!(e.field, "hcm.tracing.random_sampling");
}

#[test]
fn other_tracers_are_ignored_and_the_listener_serves() {
    let mut pb = tracing_pb(100.0);
    pb.provider = Some(Http {
        name: "envoy.tracers.zipkin".into(),
        config_type: Some(ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig".into(),
            value: vec![],
        })),
    });
    assert!(compile(&pb, "hcm.tracing").unwrap().is_none());
    pb.provider = None;
    assert!(compile(&pb, "hcm.tracing").unwrap().is_none());
}

#[test]
fn an_empty_collector_cluster_is_refused() {
    let mut pb = tracing_pb(100.0);
    pb.provider = Some(Http {
        name: OPENTELEMETRY_TRACER.into(),
        config_type: Some(ConfigType::TypedConfig(otel(""))),
    });
    let e = compile(&pb, "t").unwrap_err();
    assert_eq!(
        e.field,
        "t.provider.typed_config.grpc_service.envoy_grpc.cluster_name"
    );
}

fn started(random: f64, headers: &mut HeaderMap, internal: bool) -> Option<HopSpan> {
    let config = compile(&tracing_pb(random), "t").unwrap().unwrap();
    let runtime = Runtime::default();
    start(
        &config,
        headers,
        RequestInfo {
            direction: Direction::Outbound,
            internal,
            runtime: &runtime,
        },
    )
}

#[test]
fn zero_sampling_makes_no_span_but_passes_the_decision_on() {
    let mut h = HeaderMap::new();
    assert!(started(0.0, &mut h, true).is_none());
    let e = propagation::extract(&h);
    assert_eq!(e.sampled, Some(false));
}

#[test]
fn force_trace_samples_only_internal_callers() {
    let mut h = HeaderMap::new();
    h.insert("x-envoy-force-trace", HeaderValue::from_static("true"));
    assert!(started(0.0, &mut h.clone(), false).is_none());
    let span = started(0.0, &mut h, true).unwrap();
    assert_eq!(
        propagation::extract(&h).parent.unwrap().span_id,
        span.span_id()
    );
    assert_eq!(
        span.tags.len(),
        1,
        "the empty header tag is left out: {:?}",
        span.tags
    );
}

#[test]
fn a_sampled_parent_is_continued_and_an_unsampled_one_is_not() {
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    h.insert("x-tenant", HeaderValue::from_static("acme"));
    let span = started(0.0, &mut h, false).unwrap();
    assert_eq!(span.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(span.parent_span_id, Some(0x00f067aa0ba902b7));
    assert!(span.tags.contains(&KeyValue::new("tenant", "acme")));
    let next = propagation::extract(&h);
    assert_eq!(next.parent.unwrap().trace_id, span.trace_id);

    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    );
    assert!(started(100.0, &mut h, true).is_none());
}
