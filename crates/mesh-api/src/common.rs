//! Value types shared by several Istio kinds: durations, string matches,
//! percentages, workload and port selectors.
//!
//! They follow Istio's JSON/YAML encoding exactly (camelCase, oneofs as a
//! single-key object) so a user's YAML parses unchanged and serialises back
//! to an equivalent document.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

// === Duration ===

/// A protobuf `google.protobuf.Duration` as Istio writes it in YAML: a Go
/// duration string such as `"1.5s"`, `"100ms"`, `"1m30s"` or `"2h"`.
///
/// Parsing accepts every unit Go's `time.ParseDuration` accepts (`ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`) and sequences of them. Serialisation writes the
/// shortest exact form (`"10s"`, `"100ms"`, `"1.5s"`), so a parse → serialise →
/// parse round trip yields the same value. Negative durations are refused:
/// no Istio field accepts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration; use a value such as \"1s\" or \"100ms\"")]
    Empty,
    /// A number was not followed by a unit, or the unit is unknown.
    #[error(
        "invalid duration {0:?}: expected a number followed by a unit (ns, us, ms, s, m, h), e.g. \"1.5s\""
    )]
    Invalid(String),
    /// Negative durations are meaningless for every Istio field.
    #[error("invalid duration {0:?}: durations must not be negative")]
    Negative(String),
    /// The value does not fit in the protobuf Duration range.
    #[error("invalid duration {0:?}: value is too large")]
    Overflow(String),
}

impl Duration {
    /// Builds a duration from whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// Builds a duration from whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    /// The underlying standard library duration.
    pub const fn as_std(&self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        if input.is_empty() {
            return Err(DurationError::Empty);
        }
        let invalid = || DurationError::Invalid(s.to_string());
        let mut rest = match input.strip_prefix('-') {
            Some(_) => return Err(DurationError::Negative(s.to_string())),
            None => input.strip_prefix('+').unwrap_or(input),
        };
        // Go accepts a bare "0".
        if rest == "0" {
            return Ok(Self::default());
        }
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(invalid)?;
            let (number, tail) = rest.split_at(num_len);
            if number.is_empty() || number == "." {
                return Err(invalid());
            }
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                _ => return Err(invalid()),
            };
            let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| invalid())?
            };
            let mut nanos = int
                .checked_mul(unit_nanos)
                .ok_or_else(|| DurationError::Overflow(s.to_string()))?;
            // Fractional digits beyond nanosecond precision are dropped, as Go does.
            let mut scale = unit_nanos;
            for digit in frac_part.chars() {
                let d = digit.to_digit(10).ok_or_else(invalid)? as u128;
                scale /= 10;
                if scale == 0 {
                    break;
                }
                nanos += d * scale;
            }
            total_nanos = total_nanos
                .checked_add(nanos)
                .ok_or_else(|| DurationError::Overflow(s.to_string()))?;
            rest = tail;
        }
        // protobuf Duration holds at most 315,576,000,000 seconds.
        let secs = total_nanos / 1_000_000_000;
        if secs > 315_576_000_000 {
            return Err(DurationError::Overflow(s.to_string()));
        }
        Ok(Self(std::time::Duration::new(
            secs as u64,
            (total_nanos % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else if secs == 0 && nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", nanos / 1_000_000)
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Duration as a Go duration string, e.g. \"1.5s\" or \"100ms\"."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

// === StringMatch ===

/// Istio's `StringMatch`: at most one of `exact`, `prefix` or `regex` (RE2
/// syntax), encoded as a single-key object such as `{prefix: /api}`. An
/// empty object `{}` is Istio's presence match: for a header or query
/// parameter it matches any value as long as the name is present.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// Exact string match.
    Exact(String),
    /// Prefix-based match.
    Prefix(String),
    /// RE2 style regex-based match (<https://github.com/google/re2/wiki/Syntax>).
    Regex(String),
    /// `{}`: any value (presence only).
    Present,
}

/// The wire form of [`StringMatch`]: three optional sibling keys.
#[derive(Default, Serialize, Deserialize)]
struct StringMatchWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut wire = StringMatchWire::default();
        match self {
            Self::Exact(v) => wire.exact = Some(v.clone()),
            Self::Prefix(v) => wire.prefix = Some(v.clone()),
            Self::Regex(v) => wire.regex = Some(v.clone()),
            Self::Present => {}
        }
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = StringMatchWire::deserialize(deserializer)?;
        match (wire.exact, wire.prefix, wire.regex) {
            (None, None, None) => Ok(Self::Present),
            (Some(v), None, None) => Ok(Self::Exact(v)),
            (None, Some(v), None) => Ok(Self::Prefix(v)),
            (None, None, Some(v)) => Ok(Self::Regex(v)),
            _ => Err(serde::de::Error::custom(
                "a string match takes only one of exact, prefix or regex",
            )),
        }
    }
}

impl JsonSchema for StringMatch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StringMatch".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "One of exact, prefix or regex; {} matches any value.",
            "maxProperties": 1,
            "properties": {
                "exact": {"type": "string"},
                "prefix": {"type": "string"},
                "regex": {"type": "string"}
            }
        })
    }
}

impl StringMatch {
    /// The string or pattern this match carries (empty for a presence match).
    pub fn value(&self) -> &str {
        match self {
            Self::Exact(s) | Self::Prefix(s) | Self::Regex(s) => s,
            Self::Present => "",
        }
    }

    /// Whether `input` satisfies this match. An invalid regex never matches;
    /// validation reports it before it is ever used for traffic.
    pub fn matches(&self, input: &str) -> bool {
        match self {
            Self::Exact(s) => input == s,
            Self::Prefix(p) => input.starts_with(p.as_str()),
            Self::Regex(r) => regex::Regex::new(&format!("^(?:{r})$"))
                .map(|re| re.is_match(input))
                .unwrap_or(false),
            Self::Present => true,
        }
    }
}

// === gRPC status ===

/// gRPC status code names, indexed by their numeric code (`UNAVAILABLE` is 14).
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The numeric gRPC code of a status written as a name (`UNAVAILABLE`,
/// any case) or a number, as Istio accepts in `fault.abort.grpcStatus`.
pub fn grpc_status_code(status: &str) -> Option<u32> {
    status.parse().ok().filter(|c: &u32| *c < 17).or_else(|| {
        GRPC_STATUS_NAMES
            .iter()
            .position(|c| c.eq_ignore_ascii_case(status))
            .and_then(|i| u32::try_from(i).ok())
    })
}

// === Percent ===

/// Istio's `Percent`: a value in `[0.0, 100.0]`, written `{value: 12.5}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Percent {
    /// The percentage, between 0 and 100.
    #[serde(default)]
    pub value: f64,
}

// === Selectors ===

/// Selects workloads by pod labels (`selector.matchLabels`). An empty or
/// missing selector applies to every workload in the namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must carry, all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl PolicyTargetReference {
    /// The group, with absent meaning the core group (`""`).
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or("")
    }
}

impl WorkloadSelector {
    /// Whether a workload with `labels` is selected.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

/// Selects a service port by number (`port: {number: 9080}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct PortSelector {
    /// Valid port number.
    #[serde(default)]
    pub number: u32,
}

/// A policy target reference (`targetRef` / `targetRefs`), as in the
/// Kubernetes Gateway API's `PolicyTargetReference`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// Group of the target resource (`gateway.networking.k8s.io`, or `""`
    /// or absent for the core group). Kept as written so `group: ""`
    /// round-trips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the target resource, e.g. `Gateway` or `Service`.
    pub kind: String,
    /// Name of the target resource.
    pub name: String,
    /// Namespace of the target; defaults to the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("1.5s", 1_500 ; "fractional seconds")]
    #[test_case("100ms", 100 ; "milliseconds")]
    #[test_case("1m30s", 90_000 ; "compound")]
    #[test_case("2h", 7_200_000 ; "hours")]
    #[test_case("0", 0 ; "bare zero")]
    #[test_case("0.001s", 1 ; "one millisecond")]
    #[test_case(".5s", 500 ; "leading dot")]
    fn parses_go_durations(input: &str, millis: u128) {
        let d: Duration = input.parse().unwrap();
        assert_eq!(d.0.as_millis(), millis);
    }

    #[test_case("" ; "empty")]
    #[test_case("10" ; "no unit")]
    #[test_case("1d" ; "unknown unit")]
    #[test_case("-1s" ; "negative")]
    #[test_case("abc" ; "garbage")]
    #[test_case("1..5s" ; "two dots")]
    fn refuses_bad_durations(input: &str) {
        assert!(
            input.parse::<Duration>().is_err(),
            "{input:?} must be refused"
        );
    }

    #[test_case("10s" ; "whole seconds")]
    #[test_case("100ms" ; "millis")]
    #[test_case("1.5s" ; "fraction")]
    #[test_case("0.000001s" ; "micro")]
    fn duration_display_round_trips(input: &str) {
        let d: Duration = input.parse().unwrap();
        assert_eq!(d.to_string(), input);
        assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
    }

    #[test]
    fn string_match_is_a_single_key_object() {
        let m: StringMatch = serde_json::from_str(r#"{"prefix":"/api"}"#).unwrap();
        assert_eq!(m, StringMatch::Prefix("/api".into()));
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"prefix":"/api"}"#);
        assert!(m.matches("/api/v1"));
        assert!(!m.matches("/ap"));
        let r = StringMatch::Regex("v[0-9]+".into());
        assert!(r.matches("v12"));
        assert!(
            !r.matches("xv12"),
            "regex matches are anchored like Envoy's"
        );
    }
}
