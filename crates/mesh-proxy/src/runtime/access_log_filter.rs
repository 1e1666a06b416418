//! Envoy's CEL access log filter
//! (`envoy.access_loggers.extension_filters.cel`, what istiod writes for
//! Telemetry `accessLogging[].filter.expression`), compiled once per
//! listener update and evaluated on every finished request.
//!
//! The expression is parsed by `mesh_api::cel` and compiled against the
//! attributes a [`RequestRecord`] carries: `response.code`,
//! `response.flags` (Envoy's bitmask), `response.code_details`,
//! `response.grpc_status`, `response.size`, `request.method`,
//! `request.path`, `request.url_path`, `request.host`, `request.id`,
//! `request.useragent`, `request.protocol`, `request.size`,
//! `request.headers[...]` for the headers the record keeps (`:authority`,
//! `host`, `:method`, `:path`, `user-agent`, `x-request-id`,
//! `x-forwarded-for`), `connection.mtls`, `connection.requested_server_name`,
//! `connection.uri_san_peer_certificate`, `source.address`/`.port`,
//! `destination.address`/`.port`, `upstream.address`/`.port`,
//! `upstream.uri_san_peer_certificate`, `xds.cluster_name`,
//! `xds.route_name`, `xds.listener_name`; literals, `!`, `&&`, `||`,
//! `?:`, comparisons, `in` a list, and `startsWith`, `endsWith`,
//! `contains`, `matches` (a literal RE2-style pattern) on strings.
//!
//! Anything else (an unknown attribute, another header, arithmetic, other
//! functions) is refused when the listener is compiled, with the field
//! and the construct named, so the update is NACKed rather than a filter
//! silently logging the wrong requests. At evaluation, as in Envoy, an
//! error (a missing value, mismatched types) makes the filter false, and
//! CEL's `&&`/`||` absorb an error when the other side decides.
//!
//! The same compiler gives [`CelValue`], the value of a metric tag
//! (Telemetry `tagOverrides[].value`), which also takes CEL's `string(x)`
//! and reads a TCP connection's record too (its request and response
//! attributes are missing).

use std::net::SocketAddr;

use mesh_api::cel::{self, BinaryOp, Expr, UnaryOp};
use regex::Regex;

use super::{FieldResult, invalid};
use crate::proxy::record::{RequestRecord, Security, TcpRecord};

/// Envoy's name of the filter.
pub const CEL_FILTER: &str = "envoy.access_loggers.extension_filters.cel";

/// A compiled filter expression.
#[derive(Clone, Debug)]
pub struct CelFilter {
    source: String,
    root: Node,
}

impl PartialEq for CelFilter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CelFilter {}

#[derive(Clone, Debug)]
enum Node {
    Lit(Value),
    Attr(Attr),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Cmp(BinaryOp, Box<Node>, Box<Node>),
    In(Box<Node>, Vec<Node>),
    Str(StrFn, Box<Node>, Box<Node>),
    Matches(Box<Node>, Regex),
    /// CEL's `string(x)`.
    ToString(Box<Node>),
}

#[derive(Clone, Copy, Debug)]
enum StrFn {
    StartsWith,
    EndsWith,
    Contains,
}

/// A CEL attribute the records carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attr {
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ResponseGrpcStatus,
    ResponseSize,
    RequestMethod,
    RequestPath,
    RequestUrlPath,
    RequestHost,
    RequestId,
    RequestUserAgent,
    RequestForwardedFor,
    RequestProtocol,
    RequestSize,
    ConnectionMtls,
    ConnectionSni,
    ConnectionPeerSan,
    SourceAddress,
    SourcePort,
    DestinationAddress,
    DestinationPort,
    UpstreamAddress,
    UpstreamPort,
    UpstreamPeerSan,
    UpstreamLocalAddress,
    UpstreamTransportFailureReason,
    ConnectionTerminationDetails,
    XdsCluster,
    XdsRoute,
    XdsListener,
}

/// A CEL value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
}

const ATTRIBUTES: &[(&str, Attr)] = &[
    ("response.code", Attr::ResponseCode),
    ("response.flags", Attr::ResponseFlags),
    ("response.code_details", Attr::ResponseCodeDetails),
    ("response.grpc_status", Attr::ResponseGrpcStatus),
    ("response.size", Attr::ResponseSize),
    ("request.method", Attr::RequestMethod),
    ("request.path", Attr::RequestPath),
    ("request.url_path", Attr::RequestUrlPath),
    ("request.host", Attr::RequestHost),
    ("request.id", Attr::RequestId),
    ("request.useragent", Attr::RequestUserAgent),
    ("request.protocol", Attr::RequestProtocol),
    ("request.size", Attr::RequestSize),
    ("connection.mtls", Attr::ConnectionMtls),
    ("connection.requested_server_name", Attr::ConnectionSni),
    (
        "connection.uri_san_peer_certificate",
        Attr::ConnectionPeerSan,
    ),
    ("source.address", Attr::SourceAddress),
    ("source.port", Attr::SourcePort),
    ("destination.address", Attr::DestinationAddress),
    ("destination.port", Attr::DestinationPort),
    ("upstream.address", Attr::UpstreamAddress),
    ("upstream.port", Attr::UpstreamPort),
    ("upstream.uri_san_peer_certificate", Attr::UpstreamPeerSan),
    ("upstream.local_address", Attr::UpstreamLocalAddress),
    (
        "upstream.transport_failure_reason",
        Attr::UpstreamTransportFailureReason,
    ),
    (
        "connection.termination_details",
        Attr::ConnectionTerminationDetails,
    ),
    ("xds.cluster_name", Attr::XdsCluster),
    ("xds.route_name", Attr::XdsRoute),
    ("xds.listener_name", Attr::XdsListener),
];

const HEADERS: &[(&str, Attr)] = &[
    (":authority", Attr::RequestHost),
    ("host", Attr::RequestHost),
    (":method", Attr::RequestMethod),
    (":path", Attr::RequestPath),
    ("user-agent", Attr::RequestUserAgent),
    ("x-request-id", Attr::RequestId),
    ("x-forwarded-for", Attr::RequestForwardedFor),
];

/// Envoy's `response.flags` bits, by the short name `%RESPONSE_FLAGS%`
/// prints (`envoy/stream_info/stream_info.h`).
const FLAG_BITS: &[(&str, u64)] = &[
    ("LH", 0x1),
    ("UH", 0x2),
    ("UT", 0x4),
    ("LR", 0x8),
    ("UR", 0x10),
    ("UF", 0x20),
    ("UC", 0x40),
    ("UO", 0x80),
    ("NR", 0x100),
    ("DI", 0x200),
    ("FI", 0x400),
    ("RL", 0x800),
    ("UAEX", 0x1000),
    ("RLSE", 0x2000),
    ("DC", 0x4000),
    ("URX", 0x8000),
    ("SI", 0x10000),
    ("IH", 0x20000),
    ("DPE", 0x40000),
    ("UMSDR", 0x80000),
    ("RFCF", 0x100000),
    ("NFCF", 0x200000),
    ("DT", 0x400000),
    ("UPE", 0x800000),
    ("NC", 0x1000000),
    ("OM", 0x2000000),
    ("DF", 0x4000000),
    ("DO", 0x8000000),
];

// === impl CelFilter ===

impl CelFilter {
    /// Compiles `expression`, the filter at field `at`.
    pub(crate) fn compile(expression: &str, at: &str) -> FieldResult<Self> {
        let expr = match cel::parse(expression) {
            Ok(e) => e,
            Err(e) => return invalid(at, format!("invalid CEL expression {expression:?}: {e}")),
        };
        let root = compile(&expr).or_else(|reason| {
            invalid(
                at,
                format!("CEL expression {expression:?}: {reason}; mesh-proxy cannot evaluate it"),
            )
        })?;
        Ok(Self {
            source: expression.to_string(),
            root,
        })
    }

    /// Whether `r` is logged: the expression is `true` (an error is false).
    pub fn accepts(&self, r: &RequestRecord) -> bool {
        eval(&self.root, r) == Some(Value::Bool(true))
    }
}

/// A compiled CEL expression whose value is reported as text: the value of
/// a metric tag (Telemetry `tagOverrides[].value`), evaluated against a
/// request or a TCP connection.
#[derive(Clone, Debug)]
pub struct CelValue {
    root: Node,
}

impl CelValue {
    /// Compiles `expression`, the value at field `at`.
    pub(crate) fn compile(expression: &str, at: &str) -> FieldResult<Self> {
        let filter = CelFilter::compile(expression, at)?;
        Ok(Self { root: filter.root })
    }

    /// The value for `r` as text; `None` when it cannot be computed (a
    /// missing attribute, a type error).
    pub(crate) fn text(&self, r: &dyn Attributes) -> Option<String> {
        eval(&self.root, r).and_then(Value::into_text)
    }
}

/// What CEL attributes read: a request's or a connection's record.
pub(crate) trait Attributes {
    /// The value of `a`, `None` when the record has none.
    fn attribute(&self, a: Attr) -> Option<Value>;
}

impl Attributes for RequestRecord {
    fn attribute(&self, a: Attr) -> Option<Value> {
        attr(a, self)
    }
}

/// A TCP connection has the connection, address and xDS attributes; the
/// request and response ones are missing.
impl Attributes for TcpRecord {
    fn attribute(&self, a: Attr) -> Option<Value> {
        Some(match a {
            Attr::ConnectionMtls => Value::Bool(self.downstream_security == Security::MutualTls),
            Attr::ConnectionSni => return opt_str(self.server_name.as_deref()),
            Attr::ConnectionPeerSan => return opt_str(self.downstream_peer_principal.as_deref()),
            Attr::SourceAddress => Value::Str(self.downstream_remote.ip().to_string()),
            Attr::SourcePort => Value::Int(i64::from(self.downstream_remote.port())),
            Attr::DestinationAddress => Value::Str(self.downstream_local.ip().to_string()),
            Attr::DestinationPort => Value::Int(i64::from(self.downstream_local.port())),
            Attr::UpstreamAddress => upstream_address(self.upstream_host.as_deref())?,
            Attr::UpstreamPort => {
                Value::Int(i64::from(host_port(self.upstream_host.as_deref())?.port()))
            }
            Attr::UpstreamPeerSan => return opt_str(self.upstream_peer_principal.as_deref()),
            Attr::UpstreamLocalAddress => Value::Str(self.upstream_local?.to_string()),
            Attr::UpstreamTransportFailureReason => {
                return opt_str(self.upstream_transport_failure.as_deref());
            }
            Attr::ConnectionTerminationDetails => {
                return opt_str(self.termination_details.as_deref());
            }
            Attr::XdsCluster => return opt_str(self.cluster.as_deref()),
            Attr::XdsListener => Value::Str(self.listener.clone()),
            _ => return None,
        })
    }
}

impl Value {
    /// The value as a tag shows it.
    fn into_text(self) -> Option<String> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Uint(u) => u.to_string(),
            Value::Double(d) => d.to_string(),
            Value::Str(s) => s,
        })
    }
}

fn path_of(e: &Expr) -> Option<String> {
    match e {
        Expr::Ident(n) => Some(n.clone()),
        Expr::Member(inner, field) => Some(format!("{}.{field}", path_of(inner)?)),
        _ => None,
    }
}

fn compile(e: &Expr) -> Result<Node, String> {
    let bx = |e: &Expr| compile(e).map(Box::new);
    Ok(match e {
        Expr::Null => Node::Lit(Value::Null),
        Expr::Bool(b) => Node::Lit(Value::Bool(*b)),
        Expr::Int(i) => Node::Lit(Value::Int(*i)),
        Expr::Uint(u) => Node::Lit(Value::Uint(*u)),
        Expr::Double(d) => Node::Lit(Value::Double(*d)),
        Expr::Str(s) => Node::Lit(Value::Str(s.clone())),
        Expr::Ident(_) | Expr::Member(..) => {
            let path = path_of(e).ok_or("unsupported member access")?;
            let attr = ATTRIBUTES
                .iter()
                .find(|(n, _)| *n == path)
                .map(|(_, a)| *a)
                .ok_or_else(|| format!("unknown or unsupported attribute `{path}`"))?;
            Node::Attr(attr)
        }
        Expr::Index(target, key) => {
            let path = path_of(target).unwrap_or_default();
            if path != "request.headers" {
                return Err(format!(
                    "indexing is supported on request.headers only, not `{path}`"
                ));
            }
            let Expr::Str(name) = key.as_ref() else {
                return Err("request.headers must be indexed by a string literal".into());
            };
            let lower = name.to_ascii_lowercase();
            let attr = HEADERS
                .iter()
                .find(|(n, _)| *n == lower)
                .map(|(_, a)| *a)
                .ok_or_else(|| {
                    let known: Vec<&str> = HEADERS.iter().map(|(n, _)| *n).collect();
                    format!(
                        "request.headers[{name:?}] is not recorded; the access log knows {}",
                        known.join(", ")
                    )
                })?;
            Node::Attr(attr)
        }
        Expr::Unary(UnaryOp::Not, x) => Node::Not(bx(x)?),
        Expr::Unary(UnaryOp::Neg, _) => {
            return Err("unary `-` on a non-literal is not supported".into());
        }
        Expr::Binary(op, l, r) => match op {
            BinaryOp::And => Node::And(bx(l)?, bx(r)?),
            BinaryOp::Or => Node::Or(bx(l)?, bx(r)?),
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => Node::Cmp(*op, bx(l)?, bx(r)?),
            BinaryOp::In => {
                let Expr::List(items) = r.as_ref() else {
                    return Err("`in` needs a list literal on its right".into());
                };
                Node::In(bx(l)?, items.iter().map(compile).collect::<Result<_, _>>()?)
            }
            other => return Err(format!("operator {other:?} is not supported")),
        },
        Expr::Cond(c, a, b) => Node::Cond(bx(c)?, bx(a)?, bx(b)?),
        Expr::Call {
            target: Some(t),
            name,
            args,
        } if args.len() == 1 => {
            let f = match name.as_str() {
                "startsWith" => StrFn::StartsWith,
                "endsWith" => StrFn::EndsWith,
                "contains" => StrFn::Contains,
                "matches" => {
                    let Expr::Str(pattern) = &args[0] else {
                        return Err("matches() needs a string literal pattern".into());
                    };
                    let re = Regex::new(pattern)
                        .map_err(|e| format!("matches() pattern {pattern:?} is invalid: {e}"))?;
                    return Ok(Node::Matches(bx(t)?, re));
                }
                other => return Err(format!("function `{other}` is not supported")),
            };
            Node::Str(f, bx(t)?, bx(&args[0])?)
        }
        Expr::Call {
            target: None,
            name,
            args,
        } if name == "string" && args.len() == 1 => Node::ToString(bx(&args[0])?),
        Expr::Call { name, .. } => return Err(format!("function `{name}` is not supported")),
        Expr::List(_) => return Err("a list is supported only on the right of `in`".into()),
    })
}

fn opt_str(v: Option<&str>) -> Option<Value> {
    v.map(|s| Value::Str(s.to_string()))
}

fn host_port(addr: Option<&str>) -> Option<SocketAddr> {
    addr?.parse().ok()
}

fn upstream_address(host: Option<&str>) -> Option<Value> {
    let host = host?;
    Some(Value::Str(
        host_port(Some(host)).map_or_else(|| host.to_string(), |a| a.ip().to_string()),
    ))
}

fn attr(a: Attr, r: &RequestRecord) -> Option<Value> {
    Some(match a {
        Attr::ResponseCode => Value::Int(i64::from(r.response_code)),
        Attr::ResponseFlags => {
            let shown = r.flags.to_string();
            let bits = shown
                .split(',')
                .filter_map(|f| FLAG_BITS.iter().find(|(n, _)| *n == f).map(|(_, b)| *b))
                .fold(0, |acc, b| acc | b);
            Value::Uint(bits)
        }
        Attr::ResponseCodeDetails => Value::Str(
            r.details
                .as_deref()
                .map_or_else(|| "via_upstream".to_string(), str::to_string),
        ),
        Attr::ResponseGrpcStatus => Value::Int(i64::from(r.grpc_status?)),
        Attr::ResponseSize => Value::Int(i64::try_from(r.bytes_sent).ok()?),
        Attr::RequestMethod => Value::Str(r.method.to_string()),
        Attr::RequestPath => Value::Str(r.path.clone()),
        Attr::RequestUrlPath => Value::Str(r.path.split('?').next().unwrap_or_default().into()),
        Attr::RequestHost => Value::Str(r.authority.clone()),
        Attr::RequestId => return opt_str(r.request_id.as_deref()),
        Attr::RequestUserAgent => return opt_str(r.user_agent.as_deref()),
        Attr::RequestForwardedFor => return opt_str(r.forwarded_for.as_deref()),
        Attr::RequestProtocol => Value::Str(format!("{:?}", r.protocol)),
        Attr::RequestSize => Value::Int(i64::try_from(r.bytes_received).ok()?),
        Attr::ConnectionMtls => Value::Bool(r.downstream_security == Security::MutualTls),
        Attr::ConnectionSni => return opt_str(r.server_name.as_deref()),
        Attr::ConnectionPeerSan => return opt_str(r.downstream_peer_principal.as_deref()),
        Attr::SourceAddress => Value::Str(r.downstream_remote.ip().to_string()),
        Attr::SourcePort => Value::Int(i64::from(r.downstream_remote.port())),
        Attr::DestinationAddress => Value::Str(r.downstream_local.ip().to_string()),
        Attr::DestinationPort => Value::Int(i64::from(r.downstream_local.port())),
        Attr::UpstreamAddress => upstream_address(r.upstream_host.as_deref())?,
        Attr::UpstreamPort => Value::Int(i64::from(host_port(r.upstream_host.as_deref())?.port())),
        Attr::UpstreamPeerSan => return opt_str(r.upstream_peer_principal.as_deref()),
        Attr::UpstreamLocalAddress => Value::Str(r.upstream_local?.to_string()),
        Attr::UpstreamTransportFailureReason => {
            return opt_str(r.upstream_transport_failure.as_deref());
        }
        // A request never sees its connection closed by a network filter.
        Attr::ConnectionTerminationDetails => return None,
        Attr::XdsCluster => return opt_str(r.cluster.as_deref()),
        Attr::XdsRoute => return opt_str(r.route_name.as_deref()),
        Attr::XdsListener => Value::Str(r.listener.clone()),
    })
}

/// CEL's heterogeneous numeric comparison, and same-type comparison of
/// strings and bools.
fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    use Value::{Bool, Double, Int, Null, Str, Uint};
    match (a, b) {
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (Uint(x), Uint(y)) => Some(x.cmp(y)),
        (Int(x), Uint(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        (Uint(x), Int(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        (Double(x), Double(y)) => x.partial_cmp(y),
        (Double(x), Int(y)) => x.partial_cmp(&(*y as f64)),
        (Int(x), Double(y)) => (*x as f64).partial_cmp(y),
        (Double(x), Uint(y)) => x.partial_cmp(&(*y as f64)),
        (Uint(x), Double(y)) => (*x as f64).partial_cmp(y),
        (Str(x), Str(y)) => Some(x.cmp(y)),
        (Bool(x), Bool(y)) => Some(x.cmp(y)),
        (Null, Null) => Some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

fn eval(n: &Node, r: &dyn Attributes) -> Option<Value> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match n {
        Node::Lit(v) => Some(v.clone()),
        Node::Attr(a) => r.attribute(*a),
        Node::ToString(x) => eval(x, r)?.into_text().map(Value::Str),
        Node::Not(x) => match eval(x, r)? {
            Value::Bool(b) => Some(Value::Bool(!b)),
            _ => None,
        },
        Node::And(a, b) => match (eval(a, r), eval(b, r)) {
            (Some(Value::Bool(false)), _) | (_, Some(Value::Bool(false))) => {
                Some(Value::Bool(false))
            }
            (Some(Value::Bool(true)), Some(Value::Bool(true))) => Some(Value::Bool(true)),
            _ => None,
        },
        Node::Or(a, b) => match (eval(a, r), eval(b, r)) {
            (Some(Value::Bool(true)), _) | (_, Some(Value::Bool(true))) => Some(Value::Bool(true)),
            (Some(Value::Bool(false)), Some(Value::Bool(false))) => Some(Value::Bool(false)),
            _ => None,
        },
        Node::Cond(c, a, b) => match eval(c, r)? {
            Value::Bool(true) => eval(a, r),
            Value::Bool(false) => eval(b, r),
            _ => None,
        },
        Node::Cmp(op, a, b) => {
            let (a, b) = (eval(a, r)?, eval(b, r)?);
            let ord = compare(&a, &b);
            let result = match op {
                // Values of different kinds are simply unequal in CEL.
                BinaryOp::Eq => ord == Some(Equal),
                BinaryOp::Ne => ord != Some(Equal),
                BinaryOp::Lt => ord? == Less,
                BinaryOp::Le => ord? != Greater,
                BinaryOp::Gt => ord? == Greater,
                BinaryOp::Ge => ord? != Less,
                _ => return None,
            };
            Some(Value::Bool(result))
        }
        Node::In(x, items) => {
            let x = eval(x, r)?;
            let mut found = false;
            for item in items {
                if compare(&x, &eval(item, r)?) == Some(Equal) {
                    found = true;
                }
            }
            Some(Value::Bool(found))
        }
        Node::Str(f, s, arg) => {
            let (Value::Str(s), Value::Str(arg)) = (eval(s, r)?, eval(arg, r)?) else {
                return None;
            };
            Some(Value::Bool(match f {
                StrFn::StartsWith => s.starts_with(&arg),
                StrFn::EndsWith => s.ends_with(&arg),
                StrFn::Contains => s.contains(&arg),
            }))
        }
        Node::Matches(s, re) => match eval(s, r)? {
            Value::Str(s) => Some(Value::Bool(re.is_match(&s))),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::record::ResponseFlags;
    use crate::telemetry::fixtures::request;

    fn accepts(expr: &str, r: &RequestRecord) -> bool {
        CelFilter::compile(expr, "f").unwrap().accepts(r)
    }

    #[test]
    fn istio_style_filters_pick_the_requests_they_name() {
        let ok = request(
            200,
            ResponseFlags::default(),
            Some("outbound|9080||reviews"),
        );
        let mut failed = request(
            503,
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            Some("outbound|9080||reviews"),
        );
        failed.path = "/api/v1/items?x=1".into();
        for (expr, want_ok, want_failed) in [
            ("response.code >= 500", false, true),
            ("response.code >= 400 || response.flags != 0u", false, true),
            ("response.flags == 0x20u", false, true),
            ("!(response.code < 500)", false, true),
            (
                "request.url_path.startsWith('/api') && request.method == 'GET'",
                false,
                true,
            ),
            ("request.path.contains('x=1')", false, true),
            ("request.url_path.matches('^/api/v[0-9]+/')", false, true),
            ("response.code in [200, 204]", true, false),
            ("xds.cluster_name.endsWith('reviews')", true, true),
            ("connection.mtls", false, false),
            (
                "request.headers[':authority'] == 'reviews:9080'",
                true,
                true,
            ),
            ("response.code == 503 ? true : false", false, true),
            // A missing value is an error, absorbed by ||.
            (
                "upstream.uri_san_peer_certificate == 'x' || response.code == 200",
                true,
                false,
            ),
            ("upstream.uri_san_peer_certificate == 'x'", false, false),
            ("response.code == 'x'", false, false),
        ] {
            assert_eq!(accepts(expr, &ok), want_ok, "{expr} on a 200");
            assert_eq!(accepts(expr, &failed), want_failed, "{expr} on a 503 UF");
        }
    }

    #[test]
    fn upstream_connection_attributes_are_envoys() {
        let mut failed = request(
            503,
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            Some("outbound|443||api"),
        );
        let tls_error = "TLS_error:|invalid peer certificate: UnknownIssuer:TLS_error_end";
        let expr = "upstream.transport_failure_reason.contains('UnknownIssuer')";
        assert!(!accepts(expr, &failed), "no reason recorded yet");
        failed.upstream_transport_failure = Some(std::sync::Arc::from(tls_error));
        assert!(accepts(expr, &failed));
        let text = |expr: &str, r: &dyn Attributes| CelValue::compile(expr, "v").unwrap().text(r);
        assert_eq!(text("upstream.local_address", &failed), None);
        failed.upstream_local = Some("127.0.0.1:40000".parse().unwrap());
        assert_eq!(
            text("upstream.local_address", &failed).as_deref(),
            Some("127.0.0.1:40000")
        );
        assert_eq!(text("connection.termination_details", &failed), None);
        let mut denied = crate::telemetry::fixtures::connection();
        assert_eq!(text("connection.termination_details", &denied), None);
        denied.termination_details = Some("rbac_access_denied_matched_policy[none]".into());
        assert_eq!(
            text("connection.termination_details", &denied).as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
    }

    #[test]
    fn what_cannot_be_evaluated_is_refused_with_the_field() {
        for (expr, words) in [
            ("response.code >=", "invalid CEL expression"),
            ("request.headers['x-tenant'] == 'a'", "x-tenant"),
            ("request.time > 0", "request.time"),
            ("size(request.path) > 3", "size"),
            ("response.code + 1 > 3", "not supported"),
            ("request.path.matches('(')", "pattern"),
        ] {
            let e = CelFilter::compile(expr, "access_log[0].filter").unwrap_err();
            assert_eq!(e.field, "access_log[0].filter", "{expr}");
            assert!(e.reason.contains(words), "{expr}: {}", e.reason);
        }
    }
}
