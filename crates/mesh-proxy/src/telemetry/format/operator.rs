//! Command operators: Envoy's grammar for format strings, the operators
//! mesh-proxy implements and how each reads a record.

use std::borrow::Cow;
use std::sync::LazyLock;

use http::Version;

use super::time::{self, TimePart};
use super::{Segment, Template};
use crate::proxy::record::{RequestRecord, TcpRecord};
use crate::runtime::listener::Direction;
use crate::runtime::{FieldResult, invalid};

/// A request header the record keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReqHeader {
    Authority,
    Method,
    /// `:path` and `x-envoy-original-path`: the record keeps the path as
    /// received, before any rewrite.
    Path,
    UserAgent,
    RequestId,
    ForwardedFor,
    /// A header the record does not keep.
    Unrecorded,
}

/// A command operator, resolved when the format is compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Op {
    StartTime(Option<Vec<TimePart>>),
    /// `REQ(main?alternative)`, `REQ_WITHOUT_QUERY` cutting at `?`.
    Req(ReqHeader, Option<ReqHeader>, bool),
    /// `RESP(x-envoy-upstream-service-time)`.
    UpstreamServiceTime,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    GrpcStatus,
    GrpcStatusNumber,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamHostWithoutPort,
    UpstreamPort,
    UpstreamCluster,
    UpstreamLocal,
    UpstreamLocalWithoutPort,
    UpstreamLocalPort,
    UpstreamTransportFailureReason,
    ConnectionTerminationDetails,
    DownstreamLocal,
    DownstreamLocalWithoutPort,
    DownstreamLocalPort,
    DownstreamRemote,
    DownstreamRemoteWithoutPort,
    DownstreamRemotePort,
    RequestedServerName,
    RouteName,
    TraceId,
    DownstreamPeerUriSan,
    UpstreamPeerUriSan,
    DownstreamLocalUriSan,
    UpstreamLocalUriSan,
    AttemptCount,
    /// Fixed when the format is compiled (`HOSTNAME`, `ENVIRONMENT(X)`);
    /// `None` prints `-`.
    Fixed(Option<String>),
    /// Known to Envoy, unknown here (always `-`).
    Unknown,
}

/// Operators Envoy knows that mesh-proxy does not implement: they print
/// `-` (any argument and length is accepted, as the operator's own
/// grammar is not checked).
pub const UNIMPLEMENTED: &[&str] = &[
    "ACCESS_LOG_TYPE",
    "BYTES_RETRANSMITTED",
    "CEL",
    "CLUSTER_METADATA",
    "COMMON_DURATION",
    "CONNECTION_ID",
    "CUSTOM_FLAGS",
    "DOWNSTREAM_DETECTED_CLOSE_TYPE",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DYNAMIC_METADATA",
    "EMIT_TIME",
    "FILTER_CHAIN_NAME",
    "FILTER_STATE",
    "LOCAL_REPLY_BODY",
    "METADATA",
    "PACKETS_RETRANSMITTED",
    "QUERY_PARAM",
    "REQUEST_DURATION",
    "REQUEST_HEADERS_BYTES",
    "REQUEST_TX_DURATION",
    "RESPONSE_DURATION",
    "RESPONSE_FLAGS_LONG",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "RESPONSE_TX_DURATION",
    "ROUNDTRIP_DURATION",
    "START_TIME_LOCAL",
    "STREAM_ID",
    "UNIQUE_ID",
    "UPSTREAM_CONNECTION_ID",
    "UPSTREAM_DETECTED_CLOSE_TYPE",
    "UPSTREAM_FILTER_STATE",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_SENT",
    "UPSTREAM_METADATA",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_CERT_V_END",
    "UPSTREAM_PEER_CERT_V_START",
    "UPSTREAM_PEER_DNS_SAN",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PROTOCOL",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_WIRE_BYTES_SENT",
    "VIRTUAL_CLUSTER_NAME",
    "XDS_ROUTE_NAME",
];

/// A record being formatted.
#[derive(Clone, Copy)]
pub(super) enum Rec<'a> {
    Http(&'a RequestRecord),
    Tcp(&'a TcpRecord),
}

/// An operator's value.
pub(super) enum Val<'a> {
    Absent,
    Str(Cow<'a, str>),
    Num(u64),
}

// === parsing ===

/// Parses `format` (field `at`) into a template.
pub(super) fn parse(
    format: &str,
    at: &str,
    unsupported: &mut Vec<String>,
) -> FieldResult<Template> {
    let bytes = format.as_bytes();
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(off) = format[pos..].find('%') else {
            literal.push_str(&format[pos..]);
            break;
        };
        literal.push_str(&format[pos..pos + off]);
        pos += off;
        if bytes.get(pos + 1) == Some(&b'%') {
            literal.push('%');
            pos += 2;
            continue;
        }
        let Some((name, arg, max, end)) = command_at(format, pos) else {
            return invalid(
                at,
                format!(
                    "format {format:?}: no valid command at position {pos} (an operator is \
                     %NAME%, %NAME(arg)% or %NAME(arg):N%; a literal percent is %%)"
                ),
            );
        };
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        let written = &format[pos..end];
        let op = operator(name, arg, max, at, written, unsupported)?;
        segments.push(Segment::Op(op, max));
        pos = end;
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(Template(segments))
}

/// The command starting at `pos` (a `%`): name, argument, length and the
/// end of the command (past its closing `%`), as Envoy's
/// `^%([A-Z]|[0-9]|_)+(\([^\)]*\))?(:[0-9]+)?(%)`.
fn command_at(format: &str, pos: usize) -> Option<(&str, Option<&str>, Option<usize>, usize)> {
    let bytes = format.as_bytes();
    let start = pos + 1;
    let mut i = start;
    while i < bytes.len()
        && (bytes[i].is_ascii_uppercase() || bytes[i].is_ascii_digit() || bytes[i] == b'_')
    {
        i += 1;
    }
    if i == start {
        return None;
    }
    let name = &format[start..i];
    let mut arg = None;
    if bytes.get(i) == Some(&b'(') {
        let close = format[i + 1..].find(')')? + i + 1;
        arg = Some(&format[i + 1..close]);
        i = close + 1;
    }
    let mut max = None;
    if bytes.get(i) == Some(&b':') {
        let digits = i + 1;
        let mut j = digits;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        if j == digits {
            return None;
        }
        max = Some(format[digits..j].parse().ok()?);
        i = j;
    }
    (bytes.get(i) == Some(&b'%')).then_some((name, arg, max, i + 1))
}

/// The operator `name(arg):max` (written `written` in the format).
fn operator(
    name: &str,
    arg: Option<&str>,
    max: Option<usize>,
    at: &str,
    written: &str,
    unsupported: &mut Vec<String>,
) -> FieldResult<Op> {
    let refuse = |why: &str| invalid(at, format!("command operator {written}: {why}"));
    match name {
        "REQ" | "RESP" | "TRAILER" | "REQ_WITHOUT_QUERY" => {
            let Some(arg) = arg.filter(|a| !a.is_empty()) else {
                return refuse("a header name is required, e.g. REQ(USER-AGENT)");
            };
            let mut names = arg.split('?');
            let main = names.next().unwrap_or_default().trim().to_ascii_lowercase();
            let alt = names.next().map(|a| a.trim().to_ascii_lowercase());
            if names.next().is_some() || main.is_empty() || alt.as_deref() == Some("") {
                return refuse(
                    "more than one alternative header (want HEADER or HEADER?ALTERNATIVE)",
                );
            }
            if name == "REQ" || name == "REQ_WITHOUT_QUERY" {
                let main_h = req_header(&main);
                let alt_h = alt.as_deref().map(req_header);
                for n in [Some(main.as_str()), alt.as_deref()].into_iter().flatten() {
                    if req_header(n) == ReqHeader::Unrecorded {
                        unsupported.push(format!("{written} (request header {n} is not recorded)"));
                    }
                }
                return Ok(Op::Req(main_h, alt_h, name == "REQ_WITHOUT_QUERY"));
            }
            let ust = |h: &str| h == "x-envoy-upstream-service-time";
            if name == "RESP" && (ust(&main) || alt.as_deref().is_some_and(ust)) {
                for n in [Some(main.as_str()), alt.as_deref()].into_iter().flatten() {
                    if !ust(n) {
                        unsupported
                            .push(format!("{written} (response header {n} is not recorded)"));
                    }
                }
                return Ok(Op::UpstreamServiceTime);
            }
            let what = if name == "RESP" {
                "response header"
            } else {
                "response trailer"
            };
            unsupported.push(format!("{written} ({what} {main} is not recorded)"));
            Ok(Op::Unknown)
        }
        "START_TIME" => {
            if max.is_some() {
                return refuse("START_TIME takes no length");
            }
            match arg {
                None | Some("") => Ok(Op::StartTime(None)),
                Some(f) => match time::time_format(f) {
                    Ok(parts) => Ok(Op::StartTime(Some(parts))),
                    Err(why) => refuse(&why),
                },
            }
        }
        "ENVIRONMENT" => {
            let Some(var) = arg.filter(|a| !a.is_empty()) else {
                return refuse("a variable name is required, e.g. ENVIRONMENT(POD_NAME)");
            };
            Ok(Op::Fixed(std::env::var(var).ok().filter(|v| !v.is_empty())))
        }
        _ if UNIMPLEMENTED.contains(&name) => {
            unsupported.push(format!("{written} (not implemented by mesh-proxy)"));
            Ok(Op::Unknown)
        }
        _ => {
            let Some(op) = plain_operator(name) else {
                return refuse("not a command operator Envoy knows");
            };
            if arg.is_some() || max.is_some() {
                return refuse(&format!("{name} takes no argument or length"));
            }
            Ok(op)
        }
    }
}

/// An operator without argument.
fn plain_operator(name: &str) -> Option<Op> {
    Some(match name {
        "PROTOCOL" => Op::Protocol,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "GRPC_STATUS" => Op::GrpcStatus,
        "GRPC_STATUS_NUMBER" => Op::GrpcStatusNumber,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => Op::UpstreamHost,
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::UpstreamHostWithoutPort,
        "UPSTREAM_REMOTE_PORT" => Op::UpstreamPort,
        // No alt_stat_name here: the observability name is the name.
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Op::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocal,
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::UpstreamLocalWithoutPort,
        "UPSTREAM_LOCAL_PORT" => Op::UpstreamLocalPort,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocal,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalWithoutPort,
        "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
        // The socket peer: mesh-proxy does not take the remote address
        // from x-forwarded-for.
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Op::DownstreamRemote,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteWithoutPort,
        "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => Op::DownstreamRemotePort,
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "ROUTE_NAME" => Op::RouteName,
        "TRACE_ID" => Op::TraceId,
        "DOWNSTREAM_PEER_URI_SAN" => Op::DownstreamPeerUriSan,
        "UPSTREAM_PEER_URI_SAN" => Op::UpstreamPeerUriSan,
        "DOWNSTREAM_LOCAL_URI_SAN" => Op::DownstreamLocalUriSan,
        "UPSTREAM_LOCAL_URI_SAN" => Op::UpstreamLocalUriSan,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Op::AttemptCount,
        "HOSTNAME" => Op::Fixed(hostname()),
        _ => return None,
    })
}

fn req_header(name: &str) -> ReqHeader {
    match name {
        ":authority" | "host" => ReqHeader::Authority,
        ":method" => ReqHeader::Method,
        ":path" | "x-envoy-original-path" => ReqHeader::Path,
        "user-agent" => ReqHeader::UserAgent,
        "x-request-id" => ReqHeader::RequestId,
        "x-forwarded-for" => ReqHeader::ForwardedFor,
        _ => ReqHeader::Unrecorded,
    }
}

/// The machine's host name, as Envoy's `%HOSTNAME%` (read once).
fn hostname() -> Option<String> {
    static NAME: LazyLock<Option<String>> = LazyLock::new(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
    });
    NAME.clone()
}

// === rendering ===

impl Op {
    pub(super) fn value<'a>(&'a self, rec: Rec<'a>) -> Val<'a> {
        let s = |v: Option<&'a str>| match v {
            Some(v) if !v.is_empty() => Val::Str(Cow::Borrowed(v)),
            _ => Val::Absent,
        };
        let owned = |v: Option<String>| v.map_or(Val::Absent, |v| Val::Str(Cow::Owned(v)));
        let http = match rec {
            Rec::Http(r) => Some(r),
            Rec::Tcp(_) => None,
        };
        let (start, downstream_local, downstream_remote) = match rec {
            Rec::Http(r) => (r.start, r.downstream_local, r.downstream_remote),
            Rec::Tcp(t) => (t.start, t.downstream_local, t.downstream_remote),
        };
        // Fields both records have.
        macro_rules! both {
            ($field:ident) => {
                match rec {
                    Rec::Http(r) => &r.$field,
                    Rec::Tcp(t) => &t.$field,
                }
            };
        }
        match self {
            Op::StartTime(None) => Val::Str(Cow::Owned(time::start_time(start))),
            Op::StartTime(Some(parts)) => Val::Str(Cow::Owned(time::format_time(start, parts))),
            Op::Req(main, alt, cut_query) => {
                let Some(r) = http else {
                    return Val::Absent;
                };
                let v = request_header(r, *main).or_else(|| alt.and_then(|a| request_header(r, a)));
                let v = if *cut_query {
                    v.map(|p| p.split_once('?').map_or(p, |(path, _)| path))
                } else {
                    v
                };
                s(v)
            }
            Op::UpstreamServiceTime => owned(
                http.and_then(|r| r.upstream_service_time)
                    .map(|d| d.as_millis().to_string()),
            ),
            Op::Protocol => s(http.map(|r| protocol(r.protocol))),
            // Envoy prints 0 for a connection without a response.
            Op::ResponseCode => Val::Num(http.map_or(0, |r| u64::from(r.response_code))),
            Op::ResponseFlags => Val::Str(Cow::Owned(both!(flags).to_string())),
            Op::ResponseCodeDetails => s(http.and_then(details)),
            Op::GrpcStatus => s(http.and_then(|r| r.grpc_status).map(grpc_status_name)),
            Op::GrpcStatusNumber => http
                .and_then(|r| r.grpc_status)
                .map_or(Val::Absent, |n| Val::Num(u64::from(n))),
            Op::BytesReceived => Val::Num(*both!(bytes_received)),
            Op::BytesSent => Val::Num(*both!(bytes_sent)),
            Op::Duration => {
                Val::Num(u64::try_from(both!(duration).as_millis()).unwrap_or(u64::MAX))
            }
            Op::UpstreamHost => s(both!(upstream_host).as_deref()),
            Op::UpstreamHostWithoutPort => s(both!(upstream_host).as_deref().map(without_port)),
            Op::UpstreamPort => both!(upstream_host)
                .as_deref()
                .and_then(|h| h.parse::<std::net::SocketAddr>().ok())
                .map_or(Val::Absent, |a| Val::Num(u64::from(a.port()))),
            Op::UpstreamCluster => s(both!(cluster).as_deref()),
            Op::UpstreamLocal => owned(both!(upstream_local).map(|a| a.to_string())),
            Op::UpstreamLocalWithoutPort => {
                owned(both!(upstream_local).map(|a| a.ip().to_string()))
            }
            Op::UpstreamLocalPort => {
                both!(upstream_local).map_or(Val::Absent, |a| Val::Num(u64::from(a.port())))
            }
            Op::UpstreamTransportFailureReason => s(both!(upstream_transport_failure).as_deref()),
            // Only a TCP proxy logs a connection a network filter closed;
            // such a connection never has an HTTP request.
            Op::ConnectionTerminationDetails => match rec {
                Rec::Http(_) => Val::Absent,
                Rec::Tcp(t) => s(t.termination_details.as_deref()),
            },
            Op::DownstreamLocal => Val::Str(Cow::Owned(downstream_local.to_string())),
            Op::DownstreamLocalWithoutPort => {
                Val::Str(Cow::Owned(downstream_local.ip().to_string()))
            }
            Op::DownstreamLocalPort => Val::Num(u64::from(downstream_local.port())),
            Op::DownstreamRemote => Val::Str(Cow::Owned(downstream_remote.to_string())),
            Op::DownstreamRemoteWithoutPort => {
                Val::Str(Cow::Owned(downstream_remote.ip().to_string()))
            }
            Op::DownstreamRemotePort => Val::Num(u64::from(downstream_remote.port())),
            Op::RequestedServerName => s(both!(server_name).as_deref()),
            Op::RouteName => s(http.and_then(|r| r.route_name.as_deref())),
            Op::TraceId => s(http.and_then(|r| r.trace_id.as_deref())),
            Op::DownstreamPeerUriSan => s(both!(downstream_peer_principal).as_deref()),
            Op::UpstreamPeerUriSan => s(both!(upstream_peer_principal).as_deref()),
            Op::DownstreamLocalUriSan | Op::UpstreamLocalUriSan => {
                // The record keeps this proxy's identity on the peer's
                // side: downstream on inbound, upstream on outbound.
                let (direction, local) = match rec {
                    Rec::Http(r) => (r.direction, r.local_principal.as_deref()),
                    Rec::Tcp(t) => (t.direction, t.local_principal.as_deref()),
                };
                let wanted = if matches!(self, Op::DownstreamLocalUriSan) {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                };
                s(local.filter(|_| direction == wanted))
            }
            Op::AttemptCount => http
                .filter(|r| r.attempts > 0)
                .map_or(Val::Absent, |r| Val::Num(u64::from(r.attempts))),
            Op::Fixed(v) => s(v.as_deref()),
            Op::Unknown => Val::Absent,
        }
    }
}

fn request_header(r: &RequestRecord, h: ReqHeader) -> Option<&str> {
    match h {
        ReqHeader::Authority => Some(r.authority.as_str()),
        // The record's method is `-` when the request line was unusable.
        ReqHeader::Method => Some(r.method.as_str()).filter(|m| *m != "-"),
        ReqHeader::Path => Some(r.path.as_str()),
        ReqHeader::UserAgent => r.user_agent.as_deref(),
        ReqHeader::RequestId => r.request_id.as_deref(),
        ReqHeader::ForwardedFor => r.forwarded_for.as_deref(),
        ReqHeader::Unrecorded => None,
    }
    .filter(|v| !v.is_empty())
}

/// `host:port` or `[v6]:port` without the port.
fn without_port(h: &str) -> &str {
    match h.parse::<std::net::SocketAddr>() {
        Ok(_) => {
            let host = h.rsplit_once(':').map_or(h, |(host, _)| host);
            host.trim_start_matches('[').trim_end_matches(']')
        }
        Err(_) => h,
    }
}

/// Envoy's `%PROTOCOL%`.
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// `%RESPONSE_CODE_DETAILS%`: the local reply's reason, or `via_upstream`.
fn details(r: &RequestRecord) -> Option<&str> {
    r.details
        .as_deref()
        .or_else(|| r.upstream_service_time.map(|_| "via_upstream"))
}

/// Envoy's `%GRPC_STATUS%` (the code's name).
fn grpc_status_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("InvalidCode")
}
