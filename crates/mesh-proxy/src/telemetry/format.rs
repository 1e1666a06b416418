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

mod operator;
mod time;

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use crate::proxy::record::{RequestRecord, TcpRecord};
use crate::runtime::{FieldResult, invalid, join};
pub use mesh_api::access_log_formats::{ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT};
pub use operator::UNIMPLEMENTED;
use operator::{Op, Rec, Val, parse};
pub use time::start_time;

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

/// Envoy's default format, for a logger that names none.
pub const ENVOY_DEFAULT_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n",
);

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

#[cfg(test)]
mod tests;
