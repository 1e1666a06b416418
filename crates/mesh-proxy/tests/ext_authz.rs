//! External authorization through both data planes: the real `mesh-proxy`
//! binary and a stock Envoy run the same static bootstrap, written the way
//! Istio writes a CUSTOM AuthorizationPolicy (an RBAC filter whose shadow
//! rules pick the requests, `envoy.filters.http.ext_authz` enabled by the
//! shadow rules' metadata, then an enforced DENY), in front of the sample
//! authorization service of `e2e::ext_authz` speaking HTTP and gRPC. Every
//! request of a table must get the same answer from both, and the answer
//! Envoy's documentation gives: unchecked paths pass without a check, an
//! allowed check passes with the service's headers on the upstream request
//! and the client's response, a denial answers the service's status, body
//! and headers, a failed check answers `status_on_error` or, with
//! `failure_mode_allow`, passes marked; the body is sent when asked and a
//! longer one is refused with 413; the network filter closes a connection
//! whose check fails. The checks the service received (method, path,
//! headers sent, body, metadata) must match between the two proxies too.
//!
//! All on loopback: the backend (mesh-echo), the two authorization
//! servers, and each proxy's listeners on ports the test picks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use e2e::ext_authz::{self as authz, Check, Seen};
use http::Method;
use mesh_test_support::envoy::Envoy;
use support::proxy_process::{ProxyProcess, RunFlags};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The listeners of one proxy.
#[derive(Clone, Copy)]
struct Ports {
    http: SocketAddr,
    grpc: SocketAddr,
    open: SocketAddr,
    closed: SocketAddr,
    tcp: SocketAddr,
    tcp_closed: SocketAddr,
}

impl Ports {
    fn pick() -> Self {
        Self {
            http: free_addr(),
            grpc: free_addr(),
            open: free_addr(),
            closed: free_addr(),
            tcp: free_addr(),
            tcp_closed: free_addr(),
        }
    }
}

/// Istio's CUSTOM shadow rules: the policy named as Istio names it,
/// matching paths under `/protected/`.
const SHADOW_HTTP: &str = r#"
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              shadow_rules_stat_prefix: istio_ext_authz_
              shadow_rules:
                action: ALLOW
                policies:
                  "istio-ext-authz-ns[default]-policy[ext]-rule[0]":
                    permissions: [{url_path: {path: {prefix: /protected/}}}]
                    principals: [{any: true}]"#;

/// The RBAC filter's metadata that enables the check, as Istio writes it.
const ENABLED: &str = r#"
              filter_enabled_metadata:
                filter: envoy.filters.http.rbac
                path: [{key: istio_ext_authz_shadow_effective_policy_id}]
                value: {string_match: {prefix: istio-ext-authz}}"#;

/// An enforced DENY after the check.
const DENY_ADMIN: &str = r#"
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  "ns[default]-policy[no-admin]-rule[0]":
                    permissions: [{url_path: {path: {prefix: /protected/admin}}}]
                    principals: [{any: true}]"#;

fn hcm(name: &str, port: u16, filters: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: {name}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: backend}}"#
    )
}

fn tcp(name: &str, port: u16, authz_cluster: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp.
          shadow_rules_stat_prefix: istio_ext_authz_
          shadow_rules:
            action: ALLOW
            policies:
              "istio-ext-authz-ns[default]-policy[ext-tcp]-rule[0]":
                permissions: [{{any: true}}]
                principals: [{{any: true}}]
      - name: envoy.filters.network.ext_authz
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz
          stat_prefix: tcp.
          transport_api_version: V3
          grpc_service: {{envoy_grpc: {{cluster_name: {authz_cluster}}}, timeout: 2s}}
          filter_enabled_metadata:
            filter: envoy.filters.network.rbac
            path: [{{key: istio_ext_authz_shadow_effective_policy_id}}]
            value: {{string_match: {{prefix: istio-ext-authz}}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: backend"#
    )
}

fn cluster(name: &str, addr: SocketAddr, h2: bool) -> String {
    let protocol = if h2 {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#
    } else {
        ""
    };
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s{protocol}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}"#,
        ip = addr.ip(),
        port = addr.port(),
    )
}

fn bootstrap(p: Ports, backend: SocketAddr, http: SocketAddr, grpc: SocketAddr) -> String {
    let http_filter = format!(
        r#"{SHADOW_HTTP}
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              with_request_body: {{max_request_bytes: 16}}
              allowed_headers:
                patterns: [{{exact: x-ext-authz}}, {{exact: x-ext-authz-additional-header-override}}]
              http_service:
                server_uri: {{uri: "http://ext-authz-http", cluster: ext-authz-http, timeout: 2s}}
                path_prefix: /check
                authorization_request:
                  headers_to_add: [{{key: x-added-by-proxy, value: "yes"}}]
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{{exact: x-ext-authz-check-result}}, {{exact: x-ext-authz-additional-header-override}}]
                  allowed_client_headers:
                    patterns: [{{exact: x-ext-authz-check-result}}]
                  allowed_client_headers_on_success:
                    patterns: [{{exact: x-ext-authz-check-result}}]{ENABLED}{DENY_ADMIN}"#
    );
    let grpc_filter = format!(
        r#"{SHADOW_HTTP}
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              with_request_body: {{max_request_bytes: 16, allow_partial_message: true}}
              metadata_context_namespaces: [envoy.filters.http.rbac]
              grpc_service: {{envoy_grpc: {{cluster_name: ext-authz-grpc}}, timeout: 2s}}{ENABLED}{DENY_ADMIN}"#
    );
    let open_filter = r#"
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: true
              failure_mode_allow_header_add: true
              http_service:
                server_uri: {uri: "http://dead", cluster: dead, timeout: 1s}"#;
    let closed_filter = r#"
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              status_on_error: {code: ServiceUnavailable}
              grpc_service: {envoy_grpc: {cluster_name: dead}, timeout: 1s}"#;
    format!(
        r#"
node: {{id: "router~127.0.0.1~authz-gateway.istio-system~istio-system.svc.cluster.local", cluster: authz-gateway}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{admin_port}}}}}}
static_resources:
  listeners:{l1}{l2}{l3}{l4}{l5}{l6}
  clusters:{c1}{c2}{c3}{c4}
"#,
        l1 = hcm("authz_http", p.http.port(), &http_filter),
        l2 = hcm("authz_grpc", p.grpc.port(), &grpc_filter),
        l3 = hcm("authz_open", p.open.port(), open_filter),
        l4 = hcm("authz_closed", p.closed.port(), closed_filter),
        l5 = tcp("authz_tcp", p.tcp.port(), "ext-authz-grpc"),
        l6 = tcp("authz_tcp_closed", p.tcp_closed.port(), "dead"),
        c1 = cluster("backend", backend, false),
        c2 = cluster("ext-authz-http", http, false),
        c3 = cluster("ext-authz-grpc", grpc, true),
        c4 = cluster("dead", dead_addr(), true),
    )
}

/// What a client observes of one request, and what the upstream saw.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    status: u16,
    /// The body, unless it is the backend's echo.
    body: String,
    /// `x-ext-authz-check-result` on the response.
    result_header: Option<String>,
    /// Headers of interest the backend received (`None`: it did not
    /// answer).
    upstream: Option<Vec<(String, String)>>,
}

const UPSTREAM_HEADERS: [&str; 3] = [
    authz::RESULT_HEADER,
    authz::OVERRIDE_HEADER,
    "x-envoy-auth-failure-mode-allowed",
];

async fn observe(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Observed, String> {
    let reply = match body {
        None => try_send(&h1(), method, addr, "shop.example", path, headers).await?,
        Some(b) => send_body(addr, method, path, headers, b).await?,
    };
    let echo: Option<e2e::echo::EchoResponse> = serde_json::from_slice(&reply.body).ok();
    Ok(Observed {
        status: reply.status.as_u16(),
        body: if echo.is_some() {
            String::new()
        } else {
            reply.text()
        },
        result_header: reply
            .headers
            .get(authz::RESULT_HEADER)
            .map(|v| v.to_str().unwrap().to_string()),
        upstream: echo.map(|e| {
            UPSTREAM_HEADERS
                .iter()
                .filter_map(|h| e.headers.get(*h).map(|v| (h.to_string(), v.clone())))
                .collect()
        }),
    })
}

async fn send_body(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, String> {
    use http_body_util::BodyExt;
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", "shop.example");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            body.to_string(),
        )))
        .map_err(|e| e.to_string())?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// One row: where, what, and what must come back.
struct Case {
    name: &'static str,
    listener: fn(&Ports) -> SocketAddr,
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    expect: fn(&Observed) -> bool,
    /// Whether the authorization service must have been asked.
    checked: bool,
}

fn passed(o: &Observed) -> bool {
    o.status == 200 && o.upstream.is_some()
}

/// Passed, the service's result header on the response, and upstream its
/// result header and `override` as the echoed header.
fn allowed_with(o: &Observed, echoed: &str) -> bool {
    let upstream = o.upstream.as_deref().unwrap_or_default();
    passed(o)
        && o.result_header.as_deref() == Some("allowed")
        && upstream.contains(&(authz::RESULT_HEADER.into(), "allowed".into()))
        && upstream.contains(&(authz::OVERRIDE_HEADER.into(), echoed.into()))
}

fn cases() -> Vec<Case> {
    let allow: &'static [(&str, &str)] = &[
        ("x-ext-authz", "allow"),
        ("x-ext-authz-additional-header-override", "v1"),
        ("x-not-sent", "secret"),
    ];
    let mut rows = Vec::new();
    for (proto, listener) in [
        ("http", (|p: &Ports| p.http) as fn(&Ports) -> SocketAddr),
        ("grpc", |p: &Ports| p.grpc),
    ] {
        let _ = proto;
        rows.extend([
            Case {
                name: if proto == "http" {
                    "http: unchecked path passes"
                } else {
                    "grpc: unchecked path passes"
                },
                listener,
                method: Method::GET,
                path: "/public",
                headers: &[],
                body: None,
                expect: |o| passed(o) && o.upstream == Some(vec![]) && o.result_header.is_none(),
                checked: false,
            },
            Case {
                name: if proto == "http" {
                    "http: allowed, service headers upstream and to the client"
                } else {
                    "grpc: allowed, service headers upstream and to the client"
                },
                listener,
                method: Method::GET,
                path: "/protected/x?q=1",
                headers: allow,
                body: None,
                // The service's headers replace the request's (HTTP:
                // allowed_upstream_headers; gRPC: OkHttpResponse headers
                // without `append`).
                expect: |o| allowed_with(o, "v1"),
                checked: true,
            },
            Case {
                name: if proto == "http" {
                    "http: denied with the service's answer"
                } else {
                    "grpc: denied with the service's answer"
                },
                listener,
                method: Method::GET,
                path: "/protected/x",
                headers: &[("x-ext-authz", "deny")],
                body: None,
                expect: |o| {
                    o.status == 403
                        && o.body == authz::DENIED_BODY
                        && o.result_header.as_deref() == Some("denied")
                        && o.upstream.is_none()
                },
                checked: true,
            },
            Case {
                name: if proto == "http" {
                    "http: failed check is 403"
                } else {
                    "grpc: failed check is 403"
                },
                listener,
                method: Method::GET,
                path: "/protected/x",
                headers: &[("x-ext-authz", "fail")],
                body: None,
                expect: |o| o.status == 403 && o.upstream.is_none(),
                checked: true,
            },
            Case {
                name: if proto == "http" {
                    "http: DENY after an allowed check"
                } else {
                    "grpc: DENY after an allowed check"
                },
                listener,
                method: Method::GET,
                path: "/protected/admin",
                headers: allow,
                body: None,
                expect: |o| o.status == 403 && o.body == "RBAC: access denied",
                checked: true,
            },
            Case {
                name: if proto == "http" {
                    "http: body sent"
                } else {
                    "grpc: body sent"
                },
                listener,
                method: Method::POST,
                path: "/protected/body",
                headers: &[("x-ext-authz", "allow")],
                body: Some("hello"),
                expect: passed,
                checked: true,
            },
        ]);
    }
    rows.extend([
        Case {
            name: "http: body over the limit is 413",
            listener: |p| p.http,
            method: Method::POST,
            path: "/protected/body",
            headers: &[("x-ext-authz", "allow")],
            body: Some("a body longer than sixteen bytes"),
            expect: |o| o.status == 413 && o.upstream.is_none(),
            checked: false,
        },
        Case {
            name: "grpc: partial body allowed",
            listener: |p| p.grpc,
            method: Method::POST,
            path: "/protected/body",
            headers: &[("x-ext-authz", "allow")],
            body: Some("a body longer than sixteen bytes"),
            expect: passed,
            checked: true,
        },
        Case {
            name: "failure_mode_allow passes, marked",
            listener: |p| p.open,
            method: Method::GET,
            path: "/anything",
            headers: &[],
            body: None,
            expect: |o| {
                passed(o)
                    && o.upstream
                        .as_ref()
                        .unwrap()
                        .contains(&("x-envoy-auth-failure-mode-allowed".into(), "true".into()))
            },
            checked: false,
        },
        Case {
            name: "status_on_error answers a failed check",
            listener: |p| p.closed,
            method: Method::GET,
            path: "/anything",
            headers: &[],
            body: None,
            expect: |o| o.status == 503 && o.upstream.is_none(),
            checked: false,
        },
    ]);
    rows
}

/// A check as compared between the proxies: what the service was told,
/// without values that differ per run (ids, addresses, ports, lengths of
/// generated headers).
fn comparable(c: &Check) -> String {
    let volatile = [
        "x-request-id",
        "x-forwarded-for",
        "x-envoy-expected-rq-timeout-ms",
    ];
    let headers: BTreeSet<String> = c
        .headers
        .iter()
        .filter(|(k, _)| !volatile.contains(&k.as_str()))
        .map(|(k, v)| {
            if k == ":authority" || k == "host" {
                format!("{k}=<host>")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    format!(
        "{} {} {} body={:?} metadata={:?} headers={headers:?}",
        c.protocol, c.method, c.path, c.body, c.metadata_namespaces
    )
}

/// Runs the table against one proxy; the observations and the checks the
/// services saw, per case.
async fn run_table(
    name: &str,
    ports: &Ports,
    seen: &[&Seen; 2],
    log: &dyn Fn() -> String,
) -> Vec<(Observed, Vec<String>)> {
    let mut out = Vec::new();
    for case in cases() {
        for s in seen {
            s.clear();
        }
        let observed = observe(
            (case.listener)(ports),
            case.method.clone(),
            case.path,
            case.headers,
            case.body,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {}: {e}\n{}", case.name, log()));
        assert!(
            (case.expect)(&observed),
            "{name}: {}: unexpected {observed:?}\n{}",
            case.name,
            log()
        );
        let checks: Vec<String> = seen
            .iter()
            .flat_map(|s| s.all())
            .map(|c| comparable(&c))
            .collect();
        assert_eq!(
            !checks.is_empty(),
            case.checked,
            "{name}: {}: checks made: {checks:?}",
            case.name
        );
        out.push((observed, checks));
    }
    // The network filter: an allowed connection reaches the backend, one
    // whose check fails is closed.
    seen[1].clear();
    let through = try_send(&h1(), Method::GET, ports.tcp, "shop.example", "/tcp", &[]).await;
    assert!(
        through.as_ref().is_ok_and(|r| r.status == 200),
        "{name}: TCP with an allowed check: {through:?}\n{}",
        log()
    );
    let tcp_checks = seen[1].all();
    assert!(
        tcp_checks
            .iter()
            .any(|c| c.connection_only && c.source_address == "127.0.0.1"),
        "{name}: the TCP connection was not checked: {tcp_checks:?}"
    );
    let refused = try_send(
        &h1(),
        Method::GET,
        ports.tcp_closed,
        "shop.example",
        "/tcp",
        &[],
    )
    .await;
    assert!(
        refused.is_err(),
        "{name}: TCP with a failed check got an answer: {refused:?}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_authorization_is_enforced_the_same_by_mesh_proxy_and_envoy() {
    bounded(240, async {
        let backend = echo("shop", "v1").await;
        let http_seen = Seen::default();
        let grpc_seen = Seen::default();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (
            http_listener.local_addr().unwrap(),
            grpc_listener.local_addr().unwrap(),
        );
        let h = tokio::spawn(authz::serve_http(http_listener, http_seen.clone()));
        let g = tokio::spawn(authz::serve_grpc(grpc_listener, grpc_seen.clone()));
        let seen = [&http_seen, &grpc_seen];

        let ours = Ports::pick();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bootstrap.yaml");
        std::fs::write(
            &file,
            bootstrap(ours, backend.addr, http_addr, grpc_addr).replace("{admin_port}", "0"),
        )
        .unwrap();
        let mut proxy = ProxyProcess::start(RunFlags::bootstrap(&file));
        let up = eventually(WAIT, || async {
            try_send(
                &h1(),
                Method::GET,
                ours.http,
                "shop.example",
                "/public",
                &[],
            )
            .await
            .ok()
            .filter(|r| r.status == 200)
        })
        .await;
        proxy.assert_running();
        assert!(up.is_some(), "mesh-proxy never served\n{}", proxy.log());
        let mesh = run_table("mesh-proxy", &ours, &seen, &|| proxy.log()).await;
        let (_, prometheus) = admin_get(proxy.flags.admin, "/stats/prometheus").await.unwrap();

        let theirs = Ports::pick();
        let envoy = Envoy::start(&bootstrap(theirs, backend.addr, http_addr, grpc_addr));
        assert!(envoy.wait_ready(WAIT), "Envoy not ready\n{}", envoy.log());
        let up = eventually(WAIT, || async {
            try_send(
                &h1(),
                Method::GET,
                theirs.http,
                "shop.example",
                "/public",
                &[],
            )
            .await
            .ok()
            .filter(|r| r.status == 200)
        })
        .await;
        assert!(up.is_some(), "Envoy never served\n{}", envoy.log());
        let stock = run_table("Envoy", &theirs, &seen, &|| envoy.log()).await;
        // The outcomes are counted alike (Envoy:
        // http.<prefix>.ext_authz.<outcome>).
        for prefix in ["authz_http", "authz_grpc", "authz_open", "authz_closed"] {
            for outcome in ["ok", "denied", "error", "failure_mode_allowed"] {
                let ours = sample(
                    &prometheus,
                    &format!(
                        "envoy_ext_authz{{envoy_http_conn_manager_prefix=\"{prefix}\",outcome=\"{outcome}\"}}"
                    ),
                );
                let theirs = envoy.stat(&format!("http.{prefix}.ext_authz.{outcome}"));
                assert_eq!(
                    ours,
                    theirs.unwrap_or(0),
                    "{prefix} {outcome}: mesh-proxy vs Envoy\n{prometheus}"
                );
            }
        }

        for ((case, ours), theirs) in cases().iter().zip(&mesh).zip(&stock) {
            assert_eq!(
                ours.0, theirs.0,
                "{}: mesh-proxy vs Envoy answer",
                case.name
            );
            assert_eq!(
                ours.1, theirs.1,
                "{}: what the service was told, mesh-proxy vs Envoy",
                case.name
            );
        }
        h.abort();
        g.abort();
    })
    .await;
}

/// The value of the Prometheus sample `series` (name and labels exactly as
/// printed), 0 when absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
