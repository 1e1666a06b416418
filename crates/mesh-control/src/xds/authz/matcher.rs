//! Envoy matchers for Istio's value syntax (`*`, `abc*`, `*abc`, path
//! templates), addresses and ports, and the AND/OR/NOT of RBAC matchers.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Principal, permission, principal};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, RegexMatcher, StringMatcher, ValueMatcher, list_matcher,
    metadata_matcher, string_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::AuthzError;

/// How a set of matchers combines.
pub(super) trait Matcher: Sized {
    fn any() -> Self;
    fn and(all: Vec<Self>) -> Self;
    fn or(any: Vec<Self>) -> Self;
    fn not(self) -> Self;
}

impl Matcher for Permission {
    fn any() -> Self {
        Self {
            rule: Some(permission::Rule::Any(true)),
        }
    }

    fn and(rules: Vec<Self>) -> Self {
        Self {
            rule: Some(permission::Rule::AndRules(permission::Set { rules })),
        }
    }

    fn or(rules: Vec<Self>) -> Self {
        Self {
            rule: Some(permission::Rule::OrRules(permission::Set { rules })),
        }
    }

    fn not(self) -> Self {
        Self {
            rule: Some(permission::Rule::NotRule(Box::new(self))),
        }
    }
}

impl Matcher for Principal {
    fn any() -> Self {
        Self {
            identifier: Some(principal::Identifier::Any(true)),
        }
    }

    fn and(ids: Vec<Self>) -> Self {
        Self {
            identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
        }
    }

    fn or(ids: Vec<Self>) -> Self {
        Self {
            identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
        }
    }

    fn not(self) -> Self {
        Self {
            identifier: Some(principal::Identifier::NotId(Box::new(self))),
        }
    }
}

/// A string matcher with `pattern`.
pub(super) fn matcher_of(
    pattern: string_matcher::MatchPattern,
    ignore_case: bool,
) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

/// A full-string RE2 match.
pub(super) fn regex(regex: String) -> StringMatcher {
    matcher_of(
        string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex,
            ..Default::default()
        }),
        false,
    )
}

/// Istio's value syntax: `*` anything non-empty, `*abc` suffix, `abc*`
/// prefix, else exact; `prefix` goes before the value (not before a
/// suffix, which ends the string whatever precedes it).
pub(super) fn string(value: &str, prefix: &str, ignore_case: bool) -> StringMatcher {
    use string_matcher::MatchPattern as P;
    if value == "*" {
        return regex(".+".into());
    }
    let pattern = if let Some(suffix) = value.strip_prefix('*') {
        P::Suffix(suffix.into())
    } else if let Some(start) = value.strip_suffix('*') {
        P::Prefix(format!("{prefix}{start}"))
    } else {
        P::Exact(format!("{prefix}{value}"))
    };
    matcher_of(pattern, ignore_case)
}

/// A header with Istio's value syntax; `*` means present.
pub(super) fn header(name: &str, value: &str) -> HeaderMatcher {
    header_with_case(name, value, false)
}

/// `:authority`, case-insensitive as host names are.
pub(super) fn host_header(value: &str) -> HeaderMatcher {
    header_with_case(":authority", value, true)
}

fn header_with_case(name: &str, value: &str, ignore_case: bool) -> HeaderMatcher {
    use header_matcher::HeaderMatchSpecifier as S;
    let spec = if value == "*" {
        S::PresentMatch(true)
    } else {
        S::StringMatch(string(value, "", ignore_case))
    };
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// A path: Istio's value syntax, or a URI template with `{*}` (one
/// segment) and `{**}` (anything that follows) as a regex.
pub(super) fn path(value: &str) -> StringMatcher {
    if !(value.contains("{*}") || value.contains("{**}")) {
        return string(value, "", false);
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{**}") {
            out.push_str(".*");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("{*}") {
            out.push_str("[^/]+");
            rest = after;
        } else {
            push_escaped(&mut out, c);
            rest = &rest[c.len_utf8()..];
        }
    }
    regex(out)
}

/// `value` as a regex matching it literally except that each `*` matches
/// `star`.
pub(super) fn wildcard_regex(value: &str, star: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if c == '*' {
            out.push_str(star);
        } else {
            push_escaped(&mut out, c);
        }
    }
    out
}

pub(super) fn escape_regex(value: &str) -> String {
    let mut out = String::new();
    value.chars().for_each(|c| push_escaped(&mut out, c));
    out
}

fn push_escaped(out: &mut String, c: char) {
    if "\\.+*?()|[]{}^$".contains(c) {
        out.push('\\');
    }
    out.push(c);
}

pub(super) fn string_value(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    }
}

/// Matches a list value with an element matching `m`.
pub(super) fn list_value(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string_value(m)))),
            },
        ))),
    }
}

pub(super) fn metadata(filter: &str, path: &[&str], value: ValueMatcher) -> MetadataMatcher {
    MetadataMatcher {
        filter: filter.into(),
        path: path
            .iter()
            .map(|k| metadata_matcher::PathSegment {
                segment: Some(metadata_matcher::path_segment::Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(value),
        invert: false,
    }
}

/// An address (a /32 or /128) or CIDR block.
pub(super) fn cidr(value: &str) -> Result<CidrRange, AuthzError> {
    let bad = || AuthzError::BadCidr {
        value: value.to_string(),
    };
    let (addr, len) = match value.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (value, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => len
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(bad)?,
    };
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    })
}

pub(super) fn port(value: &str) -> Result<u32, AuthzError> {
    value
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .map(u32::from)
        .ok_or_else(|| AuthzError::BadPort {
            value: value.to_string(),
        })
}
