//! A sample external authorization service, as Istio's `samples/extauthz`
//! behaves: a request carrying `x-ext-authz: allow` is allowed, anything
//! else is denied with 403. It speaks both of Envoy's protocols, the HTTP
//! one (`envoyExtAuthzHttp`: the proxy sends the request's headers, a 200
//! allows) and the gRPC one (`envoyExtAuthzGrpc`:
//! `envoy.service.auth.v3.Authorization/Check`), so CUSTOM
//! AuthorizationPolicies can be shown and tested with both.
//!
//! Answers carry `x-ext-authz-check-result: allowed|denied`; an allowed
//! request also gets `x-ext-authz-additional-header-override` echoed back
//! (when sent) for the upstream. `x-ext-authz: fail` makes the service
//! fail (HTTP 500 / gRPC INTERNAL), to show `failOpen` and
//! `statusOnError`. Every check is kept in [`Seen`] for tests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The header the decision reads.
pub const DECISION_HEADER: &str = "x-ext-authz";
/// The header every answer carries.
pub const RESULT_HEADER: &str = "x-ext-authz-check-result";
/// Echoed back on allowed requests.
pub const OVERRIDE_HEADER: &str = "x-ext-authz-additional-header-override";
/// Body of a denial.
pub const DENIED_BODY: &str =
    "denied by ext_authz for not found header `x-ext-authz: allow` in the request";

/// One check the service answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// Method of the checked request.
    pub method: String,
    /// Path of the checked request (an HTTP check: as received, with the
    /// proxy's `pathPrefix`).
    pub path: String,
    /// Host of the checked request.
    pub host: String,
    /// Headers the proxy sent (lower-case names; gRPC: the request's
    /// header map).
    pub headers: BTreeMap<String, String>,
    /// Body the proxy sent.
    pub body: String,
    /// gRPC: the source principal and address.
    pub source_principal: String,
    /// gRPC: the source address.
    pub source_address: String,
    /// gRPC: `metadata_context` namespaces present.
    pub metadata_namespaces: Vec<String>,
    /// gRPC: whether this was a connection-level check (network filter).
    pub connection_only: bool,
}

/// Every check so far.
#[derive(Clone, Debug, Default)]
pub struct Seen(Arc<Mutex<Vec<Check>>>);

impl Seen {
    /// A copy of the checks so far.
    pub fn all(&self) -> Vec<Check> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Forgets the checks so far.
    pub fn clear(&self) {
        if let Ok(mut c) = self.0.lock() {
            c.clear();
        }
    }

    fn push(&self, check: Check, verdict: Verdict) {
        if crate::echo::printing() {
            let what = if check.connection_only {
                format!("connection from {}", check.source_principal)
            } else {
                format!("{} {} host={}", check.method, check.path, check.host)
            };
            println!("ext_authz {} check: {what} -> {verdict:?}", check.protocol);
        }
        if let Ok(mut c) = self.0.lock() {
            c.push(check);
        }
    }
}

/// What the service decides for a request carrying `value` in
/// [`DECISION_HEADER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Allow,
    Deny,
    Fail,
}

fn verdict(value: Option<&str>) -> Verdict {
    match value {
        Some("allow") => Verdict::Allow,
        Some("fail") => Verdict::Fail,
        _ => Verdict::Deny,
    }
}

// === HTTP ===

/// Serves the HTTP protocol on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, seen: Seen) {
    while let Ok((stream, _)) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let seen = seen.clone();
                async move { Ok::<_, Infallible>(http_check(req, &seen).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn http_check(req: http::Request<Incoming>, seen: &Seen) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let decision = verdict(headers.get(DECISION_HEADER).map(String::as_str));
    let host = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| headers.get("host").cloned())
        .unwrap_or_default();
    let echoed = headers.get(OVERRIDE_HEADER).cloned();
    seen.push(
        Check {
            protocol: "http",
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string()),
            host,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            ..Check::default()
        },
        decision,
    );
    let mut resp = http::Response::builder();
    let body = match decision {
        Verdict::Allow => {
            resp = resp.status(200).header(RESULT_HEADER, "allowed");
            if let Some(v) = echoed {
                resp = resp.header(OVERRIDE_HEADER, v);
            }
            Bytes::new()
        }
        Verdict::Deny => {
            resp = resp
                .status(403)
                .header(RESULT_HEADER, "denied")
                .header("content-type", "text/plain");
            Bytes::from_static(DENIED_BODY.as_bytes())
        }
        Verdict::Fail => {
            resp = resp.status(500);
            Bytes::from_static(b"ext_authz sample: asked to fail")
        }
    };
    resp.body(Full::new(body))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}

// === gRPC ===

/// Serves the gRPC protocol on `listener` until the task is dropped.
pub async fn serve_grpc(listener: TcpListener, seen: Seen) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let _ = tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(GrpcAuthz { seen }))
        .serve_with_incoming(incoming)
        .await;
}

struct GrpcAuthz {
    seen: Seen,
}

#[tonic::async_trait]
impl Authorization for GrpcAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let source = attributes.source.unwrap_or_default();
        let source_address = source
            .address
            .and_then(|a| match a.address {
                Some(
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s),
                ) => Some(s.address),
                _ => None,
            })
            .unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http);
        let connection_only = http.is_none();
        let http = http.unwrap_or_default();
        let headers: BTreeMap<String, String> = http.headers.into_iter().collect();
        let decision = if connection_only {
            // A connection carries no header: the source decides
            // (principals ending in `/sa/denied` are refused).
            if source.principal.ends_with("/sa/denied") {
                Verdict::Deny
            } else {
                Verdict::Allow
            }
        } else {
            verdict(headers.get(DECISION_HEADER).map(String::as_str))
        };
        let echoed = headers.get(OVERRIDE_HEADER).cloned();
        let mut metadata_namespaces: Vec<String> = attributes
            .metadata_context
            .map(|m| m.filter_metadata.into_keys().collect())
            .unwrap_or_default();
        metadata_namespaces.sort();
        self.seen.push(
            Check {
                protocol: "grpc",
                method: http.method,
                path: http.path,
                host: http.host,
                headers,
                body: http.body,
                source_principal: source.principal,
                source_address,
                metadata_namespaces,
                connection_only,
            },
            decision,
        );
        let header = |k: &str, v: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.to_string(),
                value: v.to_string(),
                ..HeaderValue::default()
            }),
            ..HeaderValueOption::default()
        };
        let response = match decision {
            Verdict::Allow => {
                let mut headers = vec![header(RESULT_HEADER, "allowed")];
                if let Some(v) = echoed {
                    headers.push(header(OVERRIDE_HEADER, &v));
                }
                CheckResponse {
                    status: Some(RpcStatus::default()),
                    http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                        headers,
                        response_headers_to_add: vec![header(RESULT_HEADER, "allowed")],
                        ..OkHttpResponse::default()
                    })),
                    ..CheckResponse::default()
                }
            }
            Verdict::Deny => CheckResponse {
                status: Some(RpcStatus {
                    code: tonic::Code::PermissionDenied as i32,
                    ..RpcStatus::default()
                }),
                http_response: Some(check_response::HttpResponse::DeniedResponse(
                    DeniedHttpResponse {
                        status: Some(HttpStatus { code: 403 }),
                        headers: vec![header(RESULT_HEADER, "denied")],
                        body: DENIED_BODY.to_string(),
                    },
                )),
                ..CheckResponse::default()
            },
            Verdict::Fail => {
                return Err(tonic::Status::internal("ext_authz sample: asked to fail"));
            }
        };
        Ok(tonic::Response::new(response))
    }
}
