//! Envoy's substitution format strings (`%COMMAND(arg):N%` command
//! operators) for access log lines: parsed once when a listener's
//! `access_log` is compiled, rendered per [`RequestRecord`] and per
//! [`TcpRecord`].
//!
//! A [`Formatter`] is a text template (`text_format`,
//! `text_format_source`, the deprecated `format`) or a JSON object whose
//! values are templates (`json_format`). Istio's default text and JSON
//! formats and Envoy's default are precompiled ones ([`istio_text`],
//! [`istio_json`], [`envoy_default`]).
//!
//! Parsing follows Envoy's grammar: `%%` is a literal `%`; any other `%`
//! must start `%NAME%`, `%NAME(arg)%` or `%NAME(arg):N%` with `NAME` in
//! `[A-Z0-9_]`, or the format is refused, as is an operator Envoy does not
//! know, or an argument or length on an operator that takes none (Envoy
//! refuses those too, so a config stock Envoy accepts is accepted).
//!
//! Values the proxy does not know print `-` (or nothing with
//! `omit_empty_values`), as Envoy prints them. Two kinds of operator
//! print `-` although Envoy would print something, and are listed by
//! [`Formatter::unsupported`] so the sink can warn once:
//! - operators Envoy knows that mesh-proxy does not implement
//!   ([`UNIMPLEMENTED`]: metadata, filter state, CEL, TLS details...);
//! - `REQ(...)`/`RESP(...)`/`TRAILER(...)` of a header the record does not
//!   keep. The record keeps the request headers the CEL filter can read
//!   (`:authority`/`host`, `:method`, `:path`, `x-envoy-original-path`,
//!   `user-agent`, `x-request-id`, `x-forwarded-for`) and the response's
//!   `x-envoy-upstream-service-time`. A missing header is `-` rather than
//!   a refused listener: what is logged must not change what is served.
//!
//! In JSON, a value that is exactly one operator keeps the operator's
//! type (a number for `%RESPONSE_CODE%`, `%BYTES_SENT%`, `%DURATION%`...,
//! `null` for an unknown value, omitted with `omit_empty_values`); any
//! other value is a string. Keys are sorted, as Envoy always sorts them
//! (`json_format_options.sort_properties` is deprecated for that reason),
//! and the object ends with a newline. A text format is written as given:
//! Envoy appends nothing (Istio's formats end with `\n`).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use http::Version;

use crate::proxy::record::{RequestRecord, TcpRecord};
use crate::runtime::listener::Direction;
use crate::runtime::{FieldResult, invalid, join};

/// A compiled access log format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Formatter {
    body: Body,
    /// `omit_empty_values`: unknown values print nothing (text) or leave
    /// their key out (JSON).
    omit_empty: bool,
    /// Operators that print `-` although Envoy would print a value.
    unsupported: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Text(Template),
    Json(Vec<(String, JsonValue)>),
}

/// A JSON format's value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum JsonValue {
    Template(Template),
    /// A number, bool or null of the config, already serialised.
    Constant(String),
    Object(Vec<(String, JsonValue)>),
    List(Vec<JsonValue>),
}

/// A format string: literals and operators.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Template(Vec<Segment>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Op(Op, Option<usize>),
}

/// A request header the record keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqHeader {
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

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
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

/// One piece of a `START_TIME(...)` format.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TimePart {
    Literal(String),
    Year,
    Year2,
    Month,
    Day,
    DaySpace,
    DayOfYear,
    Hour,
    Hour12,
    Minute,
    Second,
    /// `%E<n>S`: seconds with `n` decimals.
    SecondFrac(u8),
    EpochSeconds,
    /// `%<n>f` (`%f`: 9): the fraction of the second.
    Fraction(u8),
    AmPm,
    WeekdayShort,
    WeekdayLong,
    MonthShort,
    MonthLong,
    Offset,
    OffsetColon,
    Zone,
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
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT",
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

/// Operators that are known to print `-` here because the proxy never
/// has their value (as Envoy prints them when it has none).
const ALWAYS_DASH: &[&str] = &[
    "CONNECTION_TERMINATION_DETAILS",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
];

/// Istio's default text format (`EnvoyTextLogFormat` in istiod).
pub const ISTIO_TEXT_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n",
);

/// Envoy's default format, for a logger that names none.
pub const ENVOY_DEFAULT_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n",
);

/// Istio's default JSON format (`accessLogEncoding: JSON`): the text
/// format's fields under Istio's keys.
pub const ISTIO_JSON_FORMAT: &[(&str, &str)] = &[
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

static ISTIO_TEXT: LazyLock<Arc<Formatter>> =
    LazyLock::new(|| Arc::new(builtin(Formatter::text(ISTIO_TEXT_FORMAT, ""))));
static ISTIO_JSON: LazyLock<Arc<Formatter>> = LazyLock::new(|| {
    Arc::new(builtin(Formatter::json_pairs(
        ISTIO_JSON_FORMAT.iter().copied(),
        "",
    )))
});
static ENVOY_DEFAULT: LazyLock<Arc<Formatter>> =
    LazyLock::new(|| Arc::new(builtin(Formatter::text(ENVOY_DEFAULT_FORMAT, ""))));

/// A built-in format (compiling them is tested).
fn builtin(f: FieldResult<Formatter>) -> Formatter {
    f.unwrap_or_else(|_| Formatter {
        body: Body::Text(Template::default()),
        omit_empty: false,
        unsupported: Vec::new(),
    })
}

/// Istio's default text format.
pub fn istio_text() -> Arc<Formatter> {
    ISTIO_TEXT.clone()
}

/// Istio's default JSON format.
pub fn istio_json() -> Arc<Formatter> {
    ISTIO_JSON.clone()
}

/// Envoy's default format.
pub fn envoy_default() -> Arc<Formatter> {
    ENVOY_DEFAULT.clone()
}

/// A record being formatted.
#[derive(Clone, Copy)]
enum Rec<'a> {
    Http(&'a RequestRecord),
    Tcp(&'a TcpRecord),
}

/// An operator's value.
enum Val<'a> {
    Absent,
    Str(Cow<'a, str>),
    Num(u64),
}

// === impl Formatter ===

impl Formatter {
    /// A text format (`text_format`, `text_format_source`, `format`) at
    /// field `at`.
    pub(crate) fn text(format: &str, at: &str) -> FieldResult<Self> {
        let mut unsupported = Vec::new();
        let template = parse(format, at, &mut unsupported)?;
        Ok(Self {
            body: Body::Text(template),
            omit_empty: false,
            unsupported,
        })
    }

    /// A JSON format (`json_format`) at field `at`.
    pub(crate) fn json(format: &Struct, at: &str) -> FieldResult<Self> {
        let mut unsupported = Vec::new();
        let fields = json_object(format, at, &mut unsupported)?;
        Ok(Self {
            body: Body::Json(fields),
            omit_empty: false,
            unsupported,
        })
    }

    /// A JSON format of string values.
    fn json_pairs<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
        at: &str,
    ) -> FieldResult<Self> {
        let mut unsupported = Vec::new();
        let mut fields = Vec::new();
        for (k, v) in pairs {
            let t = parse(v, &join(at, k), &mut unsupported)?;
            fields.push((k.to_string(), JsonValue::Template(t)));
        }
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            body: Body::Json(fields),
            omit_empty: false,
            unsupported,
        })
    }

    /// With `omit_empty_values`.
    #[must_use]
    pub fn omit_empty_values(mut self, omit: bool) -> Self {
        self.omit_empty = omit;
        self
    }

    /// Whether this is a JSON format.
    pub fn is_json(&self) -> bool {
        matches!(self.body, Body::Json(_))
    }

    /// Operators that print `-` although Envoy would print a value (see
    /// the module docs), as written in the format.
    pub fn unsupported(&self) -> &[String] {
        &self.unsupported
    }

    /// The line for a finished request.
    pub fn request(&self, r: &RequestRecord) -> String {
        self.render(Rec::Http(r))
    }

    /// The line for a closed TCP connection.
    pub fn connection(&self, r: &TcpRecord) -> String {
        self.render(Rec::Tcp(r))
    }

    fn render(&self, r: Rec<'_>) -> String {
        let mut out = String::with_capacity(384);
        match &self.body {
            Body::Text(t) => self.text_into(t, r, &mut out),
            Body::Json(fields) => {
                self.object_into(fields, r, &mut out);
                out.push('\n');
            }
        }
        out
    }

    fn text_into(&self, t: &Template, r: Rec<'_>, out: &mut String) {
        for segment in &t.0 {
            match segment {
                Segment::Literal(s) => out.push_str(s),
                Segment::Op(op, max) => match op.value(r) {
                    Val::Absent => {
                        if !self.omit_empty {
                            out.push('-');
                        }
                    }
                    Val::Str(s) => out.push_str(truncate(&s, *max)),
                    Val::Num(n) => {
                        // `write!` to a String cannot fail.
                        let _ = write!(out, "{n}");
                    }
                },
            }
        }
    }

    fn object_into(&self, fields: &[(String, JsonValue)], r: Rec<'_>, out: &mut String) {
        out.push('{');
        let mut first = true;
        for (k, v) in fields {
            let mut value = String::new();
            if !self.json_into(v, r, &mut value) {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            json_string(k, out);
            out.push(':');
            out.push_str(&value);
        }
        out.push('}');
    }

    /// Writes `v`; false when it is null and empty values are omitted.
    fn json_into(&self, v: &JsonValue, r: Rec<'_>, out: &mut String) -> bool {
        match v {
            JsonValue::Constant(c) => {
                if self.omit_empty && c == "null" {
                    return false;
                }
                out.push_str(c);
            }
            JsonValue::Object(fields) => self.object_into(fields, r, out),
            JsonValue::List(items) => {
                out.push('[');
                let mut first = true;
                for item in items {
                    let mut value = String::new();
                    if !self.json_into(item, r, &mut value) {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&value);
                }
                out.push(']');
            }
            JsonValue::Template(t) => match t.0.as_slice() {
                // One operator alone keeps its type.
                [Segment::Op(op, max)] => match op.value(r) {
                    Val::Absent if self.omit_empty => return false,
                    Val::Absent => out.push_str("null"),
                    Val::Str(s) => json_string(truncate(&s, *max), out),
                    Val::Num(n) => {
                        let _ = write!(out, "{n}");
                    }
                },
                _ => {
                    let mut text = String::new();
                    self.text_into(t, r, &mut text);
                    json_string(&text, out);
                }
            },
        }
        true
    }
}

fn json_object(
    s: &Struct,
    at: &str,
    unsupported: &mut Vec<String>,
) -> FieldResult<Vec<(String, JsonValue)>> {
    let mut fields = Vec::with_capacity(s.fields.len());
    for (k, v) in &s.fields {
        fields.push((k.clone(), json_value(v, &join(at, k), unsupported)?));
    }
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(fields)
}

fn json_value(v: &Value, at: &str, unsupported: &mut Vec<String>) -> FieldResult<JsonValue> {
    Ok(match &v.kind {
        Some(Kind::StringValue(s)) => JsonValue::Template(parse(s, at, unsupported)?),
        Some(Kind::StructValue(s)) => JsonValue::Object(json_object(s, at, unsupported)?),
        Some(Kind::ListValue(l)) => JsonValue::List(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| json_value(v, &format!("{at}[{i}]"), unsupported))
                .collect::<FieldResult<_>>()?,
        ),
        Some(Kind::BoolValue(b)) => JsonValue::Constant(b.to_string()),
        Some(Kind::NumberValue(n)) if n.is_finite() => JsonValue::Constant(number(*n)),
        Some(Kind::NumberValue(_)) => return invalid(at, "a JSON format number must be finite"),
        Some(Kind::NullValue(_)) | None => JsonValue::Constant("null".into()),
    })
}

/// A config number as protobuf's JSON prints it (integers without `.0`).
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        #[allow(clippy::cast_possible_truncation)]
        let i = n as i64;
        i.to_string()
    } else {
        n.to_string()
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` cut to at most `max` bytes (at a character boundary).
fn truncate(s: &str, max: Option<usize>) -> &str {
    match max {
        Some(mut n) if n < s.len() => {
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            &s[..n]
        }
        _ => s,
    }
}

// === parsing ===

/// Parses `format` (field `at`) into a template.
fn parse(format: &str, at: &str, unsupported: &mut Vec<String>) -> FieldResult<Template> {
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
                Some(f) => match time_format(f) {
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
        n if ALWAYS_DASH.contains(&n) => Op::Fixed(None),
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

/// A `START_TIME(...)` format: strftime's common specifiers plus Envoy's
/// `%s` (epoch seconds), `%f`/`%<n>f` (fraction) and `%E<n>S`.
fn time_format(f: &str) -> Result<Vec<TimePart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = f.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        let part = match chars.next() {
            Some('%') => {
                literal.push('%');
                continue;
            }
            Some('n') => {
                literal.push('\n');
                continue;
            }
            Some('t') => {
                literal.push('\t');
                continue;
            }
            Some('Y') => TimePart::Year,
            Some('y') => TimePart::Year2,
            Some('m') => TimePart::Month,
            Some('d') => TimePart::Day,
            Some('e') => TimePart::DaySpace,
            Some('j') => TimePart::DayOfYear,
            Some('H') => TimePart::Hour,
            Some('I') => TimePart::Hour12,
            Some('M') => TimePart::Minute,
            Some('S') => TimePart::Second,
            Some('s') => TimePart::EpochSeconds,
            Some('f') => TimePart::Fraction(9),
            Some('p') => TimePart::AmPm,
            Some('a') => TimePart::WeekdayShort,
            Some('A') => TimePart::WeekdayLong,
            Some('b' | 'h') => TimePart::MonthShort,
            Some('B') => TimePart::MonthLong,
            Some('z') => TimePart::Offset,
            Some('Z') => TimePart::Zone,
            Some('F') => {
                parts.extend(flush(&mut literal));
                parts.extend([
                    TimePart::Year,
                    TimePart::Literal("-".into()),
                    TimePart::Month,
                    TimePart::Literal("-".into()),
                    TimePart::Day,
                ]);
                continue;
            }
            Some('T') => {
                parts.extend(flush(&mut literal));
                parts.extend([
                    TimePart::Hour,
                    TimePart::Literal(":".into()),
                    TimePart::Minute,
                    TimePart::Literal(":".into()),
                    TimePart::Second,
                ]);
                continue;
            }
            Some(d @ '1'..='9') if chars.peek() == Some(&'f') => {
                chars.next();
                TimePart::Fraction(d as u8 - b'0')
            }
            Some('E') => match chars.next() {
                Some('z') => TimePart::OffsetColon,
                Some(d @ '0'..='9') if chars.peek() == Some(&'S') => {
                    chars.next();
                    TimePart::SecondFrac(d as u8 - b'0')
                }
                _ => {
                    return Err(format!(
                        "START_TIME format {f:?}: of the %E specifiers only %E<digit>S and %Ez are supported"
                    ));
                }
            },
            Some(other) => {
                return Err(format!(
                    "START_TIME format {f:?}: specifier %{other} is not supported \
                     (supported: %Y %y %m %d %e %j %H %I %M %S %s %f %1f-%9f %E<n>S %p %a %A %b %B %z %Ez %Z %F %T %%)"
                ));
            }
            None => return Err(format!("START_TIME format {f:?} ends with a lone %")),
        };
        parts.extend(flush(&mut literal));
        parts.push(part);
    }
    parts.extend(flush(&mut literal));
    Ok(parts)
}

fn flush(literal: &mut String) -> Option<TimePart> {
    (!literal.is_empty()).then(|| TimePart::Literal(std::mem::take(literal)))
}

// === rendering ===

impl Op {
    fn value<'a>(&'a self, rec: Rec<'a>) -> Val<'a> {
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
            Op::StartTime(None) => Val::Str(Cow::Owned(start_time(start))),
            Op::StartTime(Some(parts)) => Val::Str(Cow::Owned(format_time(start, parts))),
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

/// Envoy's `%START_TIME%`: UTC, millisecond precision
/// (`2024-05-01T12:00:00.123Z`).
pub fn start_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// `t` in a `START_TIME(...)` format (UTC).
fn format_time(t: SystemTime, parts: &[TimePart]) -> String {
    const WEEKDAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let nanos = since.subsec_nanos();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let of_day = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    let month = MONTHS[(m as usize).saturating_sub(1) % 12];
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0)];
    let fraction = |n: u8| {
        let digits = format!("{nanos:09}");
        digits[..usize::from(n.min(9))].to_string()
    };
    let mut out = String::new();
    for part in parts {
        let _ = match part {
            TimePart::Literal(s) => write!(out, "{s}"),
            TimePart::Year => write!(out, "{y:04}"),
            TimePart::Year2 => write!(out, "{:02}", y.rem_euclid(100)),
            TimePart::Month => write!(out, "{m:02}"),
            TimePart::Day => write!(out, "{d:02}"),
            TimePart::DaySpace => write!(out, "{d:2}"),
            TimePart::DayOfYear => {
                let jan1 = days_from_civil(y, 1, 1);
                write!(out, "{:03}", days - jan1 + 1)
            }
            TimePart::Hour => write!(out, "{hour:02}"),
            TimePart::Hour12 => write!(out, "{:02}", (hour + 11) % 12 + 1),
            TimePart::Minute => write!(out, "{minute:02}"),
            TimePart::Second => write!(out, "{second:02}"),
            TimePart::SecondFrac(0) => write!(out, "{second:02}"),
            TimePart::SecondFrac(n) => write!(out, "{second:02}.{}", fraction(*n)),
            TimePart::EpochSeconds => write!(out, "{secs}"),
            TimePart::Fraction(n) => write!(out, "{}", fraction(*n)),
            TimePart::AmPm => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            TimePart::WeekdayShort => write!(out, "{}", &weekday[..3]),
            TimePart::WeekdayLong => write!(out, "{weekday}"),
            TimePart::MonthShort => write!(out, "{}", &month[..3]),
            TimePart::MonthLong => write!(out, "{month}"),
            TimePart::Offset => write!(out, "+0000"),
            TimePart::OffsetColon => write!(out, "+00:00"),
            TimePart::Zone => write!(out, "UTC"),
        };
    }
    out
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// The day number of a date (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests;
