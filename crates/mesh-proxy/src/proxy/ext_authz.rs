//! The calls of the external authorization filters: an HTTP request to
//! an `http_service`, or a gRPC `envoy.service.auth.v3.Authorization/Check`
//! to a `grpc_service`, sent through the proxy's own cluster, load
//! balancer and connection pools (as Envoy's async client does), and the
//! decision read back.
//!
//! A check that cannot be made or answered (no such cluster, no endpoint,
//! connect failure, timeout, a 5xx from an HTTP service, a gRPC error) is
//! an error, which the filter turns into `status_on_error` or, with
//! `failure_mode_allow`, lets through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderValueOption, Metadata as PbMetadata, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, check_response,
};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use prost::Message;

use super::http::body::full;
use super::pool::Wire;
use super::{ConnInfo, Generation, pick_endpoint, upstream_tls};
use crate::runtime::convert::{json_to_struct, struct_to_json};
use crate::runtime::ext_authz::{GrpcTarget, HttpService};
use crate::runtime::metadata::Metadata;

/// The gRPC method of a check.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Largest answer read from an authorization service.
const MAX_ANSWER: usize = 1 << 20;

/// What the authorization service decided.
#[derive(Debug, Default)]
pub(crate) struct Allowed {
    /// Set on the upstream request (replacing).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Appended to the upstream request.
    pub append: Vec<(HeaderName, HeaderValue)>,
    /// Added to the upstream request unless present.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Removed from the upstream request.
    pub remove: Vec<HeaderName>,
    /// Added to the client's response.
    pub response: Vec<(HeaderName, HeaderValue)>,
    /// Dynamic metadata for the next filters (gRPC).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A refusal, sent to the client as is.
#[derive(Debug)]
pub(crate) struct Denied {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
}

/// The outcome of a check.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Go on.
    Allowed(Allowed),
    /// Refused.
    Denied(Denied),
    /// The check failed (why, for the debug log).
    Error(String),
}

/// What a check is about: the connection, and the request on the HTTP
/// filter.
pub(crate) struct Subject<'a> {
    /// The connection.
    pub conn: &'a ConnInfo,
    /// The request's method, path (with query), authority and scheme.
    pub request: Option<RequestFacts<'a>>,
    /// Dynamic metadata namespaces to send (gRPC `metadata_context`).
    pub metadata: Option<(&'a Metadata, &'a [String])>,
    /// Send the TLS SNI.
    pub include_tls_session: bool,
}

/// The request a check is about.
pub(crate) struct RequestFacts<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path with query.
    pub path: &'a str,
    /// Host.
    pub authority: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Downstream version.
    pub version: Version,
    /// The headers the check may see (already filtered).
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The buffered body, if sent.
    pub body: Option<&'a [u8]>,
    /// gRPC: the body as `raw_body`.
    pub raw_body: bool,
}

// === HTTP service ===

/// Checks the request with an HTTP authorization service: a request of
/// the same method to `path_prefix` + path, with the allowed headers; 200
/// allows, a 5xx (or no answer) is an error, anything else denies.
pub(crate) async fn check_http(
    service: &HttpService,
    facts: RequestFacts<'_>,
    generation: &Generation,
    identity: Option<Arc<mesh_ca::tls::MeshTls>>,
    conn: &ConnInfo,
) -> Decision {
    let path = if service.path_override.is_empty() {
        format!("{}{}", service.path_prefix, facts.path)
    } else {
        service.path_override.clone()
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &facts.headers {
        if name.starts_with(':') || *name == "content-length" || *name == "host" {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    for (name, value) in &service.headers_to_add {
        headers.insert(name.clone(), value.clone());
    }
    // Envoy's own requests are internal.
    headers.insert("x-envoy-internal", HeaderValue::from_static("true"));
    let body = facts.body.map(Bytes::copy_from_slice).unwrap_or_default();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let call = Call {
        cluster: &service.cluster,
        authority: facts.authority,
        method: facts.method.clone(),
        path: &path,
        headers,
        body,
        force_h2: false,
        timeout: service.timeout,
    };
    let answer = match call.send(generation, identity, conn).await {
        Ok(a) => a,
        Err(e) => return Decision::Error(e),
    };
    if answer.status.is_server_error() {
        return Decision::Error(format!("authorization service answered {}", answer.status));
    }
    let picked = |list: &[crate::runtime::matcher::StringMatcher]| {
        answer
            .headers
            .iter()
            .filter(|(n, _)| list.iter().any(|m| m.matches(n.as_str())))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    if answer.status == StatusCode::OK {
        return Decision::Allowed(Allowed {
            set: picked(&service.upstream),
            append: picked(&service.upstream_append),
            add: Vec::new(),
            remove: Vec::new(),
            response: picked(&service.client_on_success),
            metadata: None,
        });
    }
    let headers = match &service.client {
        Some(list) => picked(list),
        None => answer
            .headers
            .iter()
            .filter(|(n, _)| *n != header::HOST)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
    };
    Decision::Denied(Denied {
        status: answer.status,
        headers: without_framing(headers),
        body: answer.body,
    })
}

/// Headers of an authorization answer without those describing its own
/// framing (the local reply has its own).
fn without_framing(headers: Vec<(HeaderName, HeaderValue)>) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .into_iter()
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            )
        })
        .collect()
}

// === gRPC service ===

/// Checks with a gRPC authorization service.
pub(crate) async fn check_grpc(
    target: &GrpcTarget,
    subject: Subject<'_>,
    generation: &Generation,
    identity: Option<Arc<mesh_ca::tls::MeshTls>>,
) -> Decision {
    let message = check_request(&subject).encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let millis = target.timeout.as_millis().max(1);
    if let Ok(v) = HeaderValue::from_str(&format!("{millis}m")) {
        headers.insert("grpc-timeout", v);
    }
    for (name, value) in &target.initial_metadata {
        headers.append(name.clone(), value.clone());
    }
    let call = Call {
        cluster: &target.cluster,
        authority: &target.authority,
        method: Method::POST,
        path: CHECK_PATH,
        headers,
        body: frame.freeze(),
        force_h2: true,
        timeout: target.timeout,
    };
    let answer = match call.send(generation, identity, subject.conn).await {
        Ok(a) => a,
        Err(e) => return Decision::Error(e),
    };
    let status = answer
        .trailers
        .as_ref()
        .and_then(super::http::grpc_status)
        .or_else(|| super::http::grpc_status(&answer.headers));
    if answer.status != StatusCode::OK || status != Some(0) {
        return Decision::Error(format!(
            "Check failed: HTTP {}, grpc-status {status:?}",
            answer.status
        ));
    }
    let Some(message) = grpc_message(answer.body) else {
        return Decision::Error("Check answered no message".into());
    };
    let response = match CheckResponse::decode(message) {
        Ok(r) => r,
        Err(e) => return Decision::Error(format!("Check answer does not decode: {e}")),
    };
    decision(response)
}

/// The one message of a unary gRPC response body.
fn grpc_message(mut body: Bytes) -> Option<Bytes> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    (body.len() >= len).then(|| body.split_to(len))
}

/// A `CheckResponse` as a decision: status OK allows, anything else
/// denies (403 unless the denied response says otherwise).
fn decision(r: CheckResponse) -> Decision {
    let code = r.status.as_ref().map_or(0, |s| s.code);
    let metadata = r.dynamic_metadata.as_ref().map(struct_to_json);
    if code == 0 {
        let mut allowed = Allowed {
            metadata,
            ..Allowed::default()
        };
        if let Some(check_response::HttpResponse::OkResponse(ok)) = r.http_response {
            for h in &ok.headers {
                let Some((name, value)) = option_header(h) else {
                    continue;
                };
                // The deprecated `append` wins when set; else
                // `append_action`, whose default (0) here means replace, as
                // Envoy reads it ("append defaults to false in this
                // message"): only ADD_IF_ABSENT differs.
                #[allow(deprecated)]
                let append = h.append.as_ref().map(|b| b.value);
                let list = match append {
                    Some(true) => &mut allowed.append,
                    Some(false) => &mut allowed.set,
                    None => match HeaderAppendAction::try_from(h.append_action) {
                        Ok(HeaderAppendAction::AddIfAbsent) => &mut allowed.add,
                        _ => &mut allowed.set,
                    },
                };
                list.push((name, value));
            }
            allowed.remove = ok
                .headers_to_remove
                .iter()
                .filter(|n| !n.starts_with(':') && !n.eq_ignore_ascii_case("host"))
                .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
                .collect();
            allowed.response = ok
                .response_headers_to_add
                .iter()
                .filter_map(option_header)
                .collect();
        }
        return Decision::Allowed(allowed);
    }
    let mut denied = Denied {
        status: StatusCode::FORBIDDEN,
        headers: Vec::new(),
        body: Bytes::new(),
    };
    if let Some(check_response::HttpResponse::DeniedResponse(d)) = r.http_response {
        if let Some(code) = d
            .status
            .and_then(|s| u16::try_from(s.code).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|c| c.as_u16() >= 200)
        {
            denied.status = code;
        }
        denied.headers = without_framing(d.headers.iter().filter_map(option_header).collect());
        denied.body = Bytes::from(d.body);
    }
    Decision::Denied(denied)
}

fn option_header(h: &HeaderValueOption) -> Option<(HeaderName, HeaderValue)> {
    let h = h.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
    let raw = if h.value.is_empty() {
        h.raw_value.as_slice()
    } else {
        h.value.as_bytes()
    };
    Some((name, HeaderValue::from_bytes(raw).ok()?))
}

/// The `CheckRequest` for `subject`, with the attributes Envoy fills in.
fn check_request(subject: &Subject<'_>) -> CheckRequest {
    let conn = subject.conn;
    let session = conn.session.as_ref();
    let principal = |names: Option<&crate::tls::PeerNames>| {
        names
            .map(|n| n.uris.first().cloned().unwrap_or_else(|| n.subject.clone()))
            .unwrap_or_default()
    };
    let source = Peer {
        address: Some(socket_address(conn.peer)),
        principal: principal(session.and_then(|s| s.peer.as_ref())),
        ..Peer::default()
    };
    let destination = Peer {
        address: Some(socket_address(conn.destination)),
        principal: principal(session.map(|s| &s.local)),
        ..Peer::default()
    };
    let request = subject.request.as_ref().map(|r| {
        let mut headers = std::collections::HashMap::new();
        for (name, value) in &r.headers {
            let value = String::from_utf8_lossy(value);
            headers
                .entry(name.to_string())
                .and_modify(|v: &mut String| {
                    v.push(',');
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let size = r.body.map_or_else(
            || {
                r.headers
                    .iter()
                    .find(|(n, _)| *n == "content-length")
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(-1)
            },
            |b| b.len() as i64,
        );
        let (body, raw_body) = match r.body {
            Some(b) if r.raw_body => (String::new(), b.to_vec()),
            Some(b) => (String::from_utf8_lossy(b).into_owned(), Vec::new()),
            None => (String::new(), Vec::new()),
        };
        AttrRequest {
            time: Some(timestamp(SystemTime::now())),
            http: Some(HttpRequest {
                id: headers.get("x-request-id").cloned().unwrap_or_default(),
                method: r.method.to_string(),
                headers,
                path: r.path.to_string(),
                host: r.authority.to_string(),
                scheme: r.scheme.to_string(),
                size,
                protocol: match r.version {
                    Version::HTTP_2 => "HTTP/2",
                    Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                }
                .to_string(),
                body,
                raw_body,
                ..HttpRequest::default()
            }),
        }
    });
    let metadata_context = subject.metadata.and_then(|(metadata, namespaces)| {
        let filter_metadata: std::collections::HashMap<_, _> = namespaces
            .iter()
            .filter_map(|ns| {
                let value = metadata.as_json().get(ns)?.as_object()?;
                Some((ns.clone(), json_to_struct(value)))
            })
            .collect();
        (!filter_metadata.is_empty()).then(|| PbMetadata {
            filter_metadata,
            ..PbMetadata::default()
        })
    });
    let tls_session = (subject.include_tls_session && conn.tls).then(|| TlsSession {
        sni: conn.server_name.clone().unwrap_or_default(),
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            destination: Some(destination),
            request: Some(request.unwrap_or_else(|| AttrRequest {
                time: Some(timestamp(SystemTime::now())),
                http: None,
            })),
            metadata_context,
            tls_session,
            ..AttributeContext::default()
        }),
    }
}

fn socket_address(a: SocketAddr) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: a.ip().to_canonical().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(a.port()))),
            ..SocketAddress::default()
        })),
    }
}

fn timestamp(t: SystemTime) -> envoy_types::pb::google::protobuf::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    envoy_types::pb::google::protobuf::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

// === the call ===

/// One request to an authorization cluster.
struct Call<'a> {
    cluster: &'a str,
    authority: &'a str,
    method: Method,
    path: &'a str,
    headers: HeaderMap,
    body: Bytes,
    /// gRPC always speaks HTTP/2, whatever the cluster says.
    force_h2: bool,
    timeout: Duration,
}

/// An authorization service's answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Call<'_> {
    async fn send(
        self,
        generation: &Generation,
        identity: Option<Arc<mesh_ca::tls::MeshTls>>,
        conn: &ConnInfo,
    ) -> Result<Answer, String> {
        let (Some(cluster), Some(pool)) = (
            generation.runtime.cluster(self.cluster).cloned(),
            generation.upstreams.get(self.cluster).cloned(),
        ) else {
            return Err(format!("cluster {:?} not found", self.cluster));
        };
        let Some((address, endpoint)) = pick_endpoint(
            generation,
            &cluster,
            conn,
            None,
            Some(&self.headers),
            &[],
            false,
            1,
        ) else {
            return Err(format!("no healthy endpoint in cluster {:?}", self.cluster));
        };
        let tls = upstream_tls(generation, identity.as_ref(), &cluster, endpoint.as_deref())
            .map_err(|e| e.to_string())?;
        let wire = if self.force_h2 {
            Wire::Http2
        } else {
            super::http::wire_for(&cluster, Version::HTTP_11, false)
        };
        let mut head = Request::new(());
        *head.method_mut() = self.method;
        *head.headers_mut() = self.headers;
        *head.uri_mut() = self
            .path
            .parse()
            .map_err(|_| "bad check path".to_string())?;
        let (head, ()) = head.into_parts();
        let req = super::http::upstream_request(&head, full(self.body), wire, self.authority);
        let exchange = async {
            let resp = pool
                .send(&address, tls, wire, req, &mut None)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, mut body) = resp.into_parts();
            let mut data = BytesMut::new();
            let mut trailers = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
                match frame.into_data() {
                    Ok(d) => {
                        if data.len() + d.len() > MAX_ANSWER {
                            return Err(format!("answer over {MAX_ANSWER} bytes"));
                        }
                        data.extend_from_slice(&d);
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                    }
                }
            }
            Ok::<_, String>(Answer {
                status: parts.status,
                headers: parts.headers,
                body: data.freeze(),
                trailers,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}
