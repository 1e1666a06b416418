//! Small conversions from Envoy's protobuf building blocks (durations,
//! fractional percents, socket addresses, `Any`, transport sockets,
//! metadata structs, header mutations) to the runtime's own types, each
//! reporting the field path of a bad value.

// Envoy still honours the deprecated fields it replaced, so they are read too.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderValueOption, RuntimeFractionalPercent, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, Struct};
use http::{HeaderName, HeaderValue};

use super::{FieldResult, invalid, join};

/// A probability, in parts per million (Envoy's finest denominator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fraction {
    per_million: u32,
}

/// Where a compiled host or endpoint address points.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostAddress {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A DNS name and port, resolved when a connection is made.
    Dns {
        /// The name to resolve.
        host: String,
        /// The port.
        port: u16,
    },
}

/// A header to add or set, compiled from a `HeaderValueOption`.
#[derive(Clone, Debug)]
pub struct HeaderAdd {
    /// Lower-case header name.
    pub name: HeaderName,
    /// The value (Envoy's `%...%` substitutions are not expanded).
    pub value: HeaderValue,
    /// What to do when the header is already there.
    pub action: AppendAction,
    /// Whether an empty value is still added.
    pub keep_empty: bool,
}

/// Envoy's `HeaderAppendAction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendAction {
    /// Append a value (a new header line) or add.
    AppendIfExistsOrAdd,
    /// Add only if absent.
    AddIfAbsent,
    /// Replace every value, or add.
    OverwriteIfExistsOrAdd,
    /// Replace only if present.
    OverwriteIfExists,
}

/// Header additions and removals at one level (route config, virtual
/// host, route or weighted cluster). Removals run first, as in Envoy.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    /// Headers to add or set.
    pub add: Vec<HeaderAdd>,
    /// Headers to remove.
    pub remove: Vec<HeaderName>,
}

// === impl Fraction ===

impl Fraction {
    /// Always.
    pub const ALWAYS: Fraction = Fraction {
        per_million: 1_000_000,
    };
    /// Never.
    pub const NEVER: Fraction = Fraction { per_million: 0 };

    /// A fraction of `per_million` parts per million (capped at one).
    pub fn per_million(per_million: u32) -> Self {
        Self {
            per_million: per_million.min(1_000_000),
        }
    }

    /// Parts per million.
    pub fn as_per_million(self) -> u32 {
        self.per_million
    }

    /// Draws once: true with this probability.
    pub fn sample(self) -> bool {
        match self.per_million {
            0 => false,
            1_000_000.. => true,
            p => fastrand::u32(0..1_000_000) < p,
        }
    }
}

// === impl HostAddress ===

impl HostAddress {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(a) => a.port(),
            Self::Dns { port, .. } => *port,
        }
    }
}

impl std::fmt::Display for HostAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

// === impl HeaderOps ===

impl HeaderOps {
    /// Compiles `*_headers_to_add` and `*_headers_to_remove` found at `at`
    /// under the given field names.
    pub(crate) fn compile(
        at: &str,
        add_field: &str,
        add: &[HeaderValueOption],
        remove_field: &str,
        remove: &[String],
    ) -> FieldResult<Self> {
        let mut ops = HeaderOps::default();
        for (i, option) in add.iter().enumerate() {
            let field = join(at, &format!("{add_field}[{i}]"));
            let Some(header) = &option.header else {
                return invalid(join(&field, "header"), "is required");
            };
            let name = header_name(&header.key, &join(&field, "header.key"))?;
            let raw = if header.value.is_empty() {
                header.raw_value.as_slice()
            } else {
                header.value.as_bytes()
            };
            let Ok(value) = HeaderValue::from_bytes(raw) else {
                return invalid(
                    join(&field, "header.value"),
                    "is not a valid HTTP header value",
                );
            };
            // The deprecated `append` wins when set, as in Envoy.
            let action = match option.append.as_ref().map(|b| b.value) {
                Some(true) => AppendAction::AppendIfExistsOrAdd,
                Some(false) => AppendAction::OverwriteIfExistsOrAdd,
                None => match HeaderAppendAction::try_from(option.append_action) {
                    Ok(HeaderAppendAction::AppendIfExistsOrAdd) => {
                        AppendAction::AppendIfExistsOrAdd
                    }
                    Ok(HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
                    Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => {
                        AppendAction::OverwriteIfExistsOrAdd
                    }
                    Ok(HeaderAppendAction::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                    Err(_) => {
                        return invalid(
                            join(&field, "append_action"),
                            format!("unknown value {}", option.append_action),
                        );
                    }
                },
            };
            ops.add.push(HeaderAdd {
                name,
                value,
                action,
                keep_empty: option.keep_empty_value,
            });
        }
        for (i, key) in remove.iter().enumerate() {
            let field = join(at, &format!("{remove_field}[{i}]"));
            ops.remove.push(header_name(key, &field)?);
        }
        Ok(ops)
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the removals, then the additions, to `headers`.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for add in &self.add {
            if add.value.is_empty() && !add.keep_empty {
                continue;
            }
            let present = headers.contains_key(&add.name);
            match add.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(add.name.clone(), add.value.clone());
                }
                AppendAction::AddIfAbsent if !present => {
                    headers.insert(add.name.clone(), add.value.clone());
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(add.name.clone(), add.value.clone());
                }
                AppendAction::OverwriteIfExists if present => {
                    headers.insert(add.name.clone(), add.value.clone());
                }
                AppendAction::AddIfAbsent | AppendAction::OverwriteIfExists => {}
            }
        }
    }
}

/// A header name, lower-cased; pseudo-headers (`:authority`) are refused.
pub(crate) fn header_name(name: &str, field: &str) -> FieldResult<HeaderName> {
    match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
        Ok(n) => Ok(n),
        Err(_) => invalid(field, format!("{name:?} is not a valid HTTP header name")),
    }
}

/// A protobuf duration as a std one; negative durations are refused.
pub(crate) fn duration(d: &PbDuration, field: &str) -> FieldResult<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return invalid(field, "must not be negative");
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional protobuf duration.
pub(crate) fn opt_duration(d: Option<&PbDuration>, field: &str) -> FieldResult<Option<Duration>> {
    d.map(|d| duration(d, field)).transpose()
}

/// A `FractionalPercent`.
pub(crate) fn fraction(p: &FractionalPercent) -> Fraction {
    let scale = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        // MILLION, and unknown values read the finest way.
        _ => 1,
    };
    Fraction::per_million(p.numerator.saturating_mul(scale))
}

/// A `RuntimeFractionalPercent`'s default value (there is no runtime
/// layer); absent means `absent`.
pub(crate) fn runtime_fraction(p: Option<&RuntimeFractionalPercent>, absent: Fraction) -> Fraction {
    match p {
        Some(p) => p
            .default_value
            .as_ref()
            .map(fraction)
            .unwrap_or(Fraction::NEVER),
        None => absent,
    }
}

/// The `SocketAddress` inside an `Address`.
fn socket_address<'a>(address: Option<&'a Address>, field: &str) -> FieldResult<&'a SocketAddress> {
    match address.and_then(|a| a.address.as_ref()) {
        Some(AddressKind::SocketAddress(s)) => Ok(s),
        Some(AddressKind::Pipe(_)) => invalid(field, "pipe addresses are not supported"),
        Some(AddressKind::EnvoyInternalAddress(_)) => {
            invalid(field, "internal addresses are not supported")
        }
        None => invalid(field, "is required"),
    }
}

fn port(s: &SocketAddress, field: &str) -> FieldResult<u16> {
    match &s.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(*p).or_else(|_| {
            invalid(
                join(field, "socket_address.port_value"),
                "must be below 65536",
            )
        }),
        Some(PortSpecifier::NamedPort(_)) => invalid(
            join(field, "socket_address.named_port"),
            "named ports are not supported; use port_value",
        ),
        None => Ok(0),
    }
}

/// A listener address: an IP and a port.
pub(crate) fn ip_address(address: Option<&Address>, field: &str) -> FieldResult<SocketAddr> {
    let s = socket_address(address, field)?;
    let Ok(ip) = s.address.parse::<IpAddr>() else {
        return invalid(
            join(field, "socket_address.address"),
            format!("{:?} is not an IP address", s.address),
        );
    };
    Ok(SocketAddr::new(ip, port(s, field)?))
}

/// An endpoint address: an IP, or a DNS name, and a port.
pub(crate) fn host_address(address: Option<&Address>, field: &str) -> FieldResult<HostAddress> {
    let s = socket_address(address, field)?;
    let port = port(s, field)?;
    if s.address.is_empty() {
        return invalid(join(field, "socket_address.address"), "is required");
    }
    Ok(match s.address.parse::<IpAddr>() {
        Ok(ip) => HostAddress::Ip(SocketAddr::new(ip, port)),
        Err(_) => HostAddress::Dns {
            host: s.address.clone(),
            port,
        },
    })
}

/// Decodes an `Any` of type `T`.
pub(crate) fn decode_any<T: prost::Message + prost::Name + Default>(
    any: &Any,
    field: &str,
) -> FieldResult<T> {
    if any.type_url != T::type_url() {
        return invalid(
            join(field, "type_url"),
            format!("expected {}, got {}", T::type_url(), any.type_url),
        );
    }
    T::decode(any.value.as_slice())
        .or_else(|e| invalid(field, format!("cannot decode {}: {e}", T::full_name())))
}

/// The TLS context `T` (upstream or downstream) of a transport socket at
/// `at`; `None` for plaintext (no typed config, or `raw_buffer`).
pub(crate) fn tls_context<T: prost::Message + prost::Name + Default>(
    t: &TransportSocket,
    at: &str,
) -> FieldResult<Option<T>> {
    let Some(SocketConfig::TypedConfig(any)) = &t.config_type else {
        return Ok(None);
    };
    if any.type_url.ends_with("raw_buffer.v3.RawBuffer") {
        return Ok(None);
    }
    decode_any(any, &join(at, "typed_config")).map(Some)
}

/// The string and boolean fields of a metadata struct, as text (what
/// transport socket matches compare); other kinds are left out.
pub(crate) fn string_fields(s: &Struct) -> BTreeMap<String, String> {
    s.fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            Some(Kind::BoolValue(b)) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .collect()
}

/// A protobuf `Struct` as JSON.
pub(crate) fn struct_to_json(s: &Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StructValue(s)) => J::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// JSON as a protobuf `Struct`.
pub(crate) fn json_to_struct(m: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: &serde_json::Value) -> envoy_types::pb::google::protobuf::Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    envoy_types::pb::google::protobuf::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue as PbHeaderValue;
    use envoy_types::pb::google::protobuf::BoolValue;
    use test_case::test_case;

    #[test_case(1, 0, 10_000; "one percent of a hundred")]
    #[test_case(25, 1, 2_500; "of ten thousand")]
    #[test_case(250_000, 2, 250_000; "of a million")]
    #[test_case(200, 0, 1_000_000; "capped at one")]
    fn fractions(numerator: u32, denominator: i32, per_million: u32) {
        let f = fraction(&FractionalPercent {
            numerator,
            denominator,
        });
        assert_eq!(f.as_per_million(), per_million);
    }

    fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(PbHeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append: append.map(|value| BoolValue { value }),
            append_action: action,
            keep_empty_value: false,
        }
    }

    #[test_case(None, 0, "old,new"; "append by default")]
    #[test_case(None, 1, "old"; "add if absent keeps")]
    #[test_case(None, 2, "new"; "overwrite")]
    #[test_case(None, 3, "new"; "overwrite if exists")]
    #[test_case(Some(false), 0, "new"; "deprecated append false overwrites")]
    fn header_append_actions(append: Option<bool>, action: i32, expected: &str) {
        let ops = HeaderOps::compile(
            "",
            "add",
            &[option("X-A", "new", append, action)],
            "rm",
            &[],
        )
        .unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("old"));
        ops.apply(&mut headers);
        let values: Vec<_> = headers
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values.join(","), expected);
    }

    #[test]
    fn overwrite_if_exists_does_not_add() {
        let ops = HeaderOps::compile("", "add", &[option("x-a", "v", None, 3)], "rm", &[]).unwrap();
        let mut headers = http::HeaderMap::new();
        ops.apply(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn bad_header_name_names_the_field() {
        let err = HeaderOps::compile(
            "virtual_hosts[0]",
            "request_headers_to_add",
            &[option("bad header", "v", None, 0)],
            "request_headers_to_remove",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.field,
            "virtual_hosts[0].request_headers_to_add[0].header.key"
        );
    }
}
