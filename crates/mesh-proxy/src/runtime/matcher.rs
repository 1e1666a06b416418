//! String, header and query-parameter matchers, compiled once from
//! Envoy's `StringMatcher`, `HeaderMatcher` and `QueryParameterMatcher`.
//!
//! Regexes use the `regex` crate, whose syntax is RE2's (what Envoy's
//! `safe_regex` uses). A `safe_regex` must match the whole value, so it is
//! compiled anchored.

// Envoy still honours the deprecated fields it replaced, so they are read too.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as PbHeaderMatcher, QueryParameterMatcher as PbQueryMatcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher as PbStringMatcher,
};
use http::{HeaderMap, Method};
use regex::Regex;

use super::{FieldResult, invalid, join};

/// What a request looks like to the matchers: its pseudo-headers and
/// headers.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// `:method`.
    pub method: &'a Method,
    /// `:scheme` (`http` or `https`).
    pub scheme: &'a str,
    /// `:authority` / `Host`.
    pub authority: &'a str,
    /// `:path`, with the query string.
    pub path: &'a str,
    /// Every other header.
    pub headers: &'a HeaderMap,
}

/// A compiled `StringMatcher`.
#[derive(Clone, Debug)]
pub struct StringMatcher {
    pattern: Pattern,
    ignore_case: bool,
}

#[derive(Clone, Debug)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

/// A compiled `HeaderMatcher`.
#[derive(Clone, Debug)]
pub struct HeaderMatcher {
    name: String,
    kind: HeaderMatch,
    invert: bool,
    treat_missing_as_empty: bool,
}

#[derive(Clone, Debug)]
enum HeaderMatch {
    Value(StringMatcher),
    Present(bool),
    Range { start: i64, end: i64 },
}

/// A compiled `QueryParameterMatcher`.
#[derive(Clone, Debug)]
pub struct QueryMatcher {
    name: String,
    value: Option<StringMatcher>,
}

/// A compiled `RegexMatchAndSubstitute`: every match of `pattern` is
/// replaced by `substitution` (Envoy's `\1` group references translated).
#[derive(Clone, Debug)]
pub struct RegexRewrite {
    pattern: Regex,
    substitution: String,
}

// === impl StringMatcher ===

impl StringMatcher {
    /// Compiles `m`, found at `field`.
    pub(crate) fn compile(m: &PbStringMatcher, field: &str) -> FieldResult<Self> {
        let fold = |s: &String| {
            if m.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        let pattern = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => Pattern::Exact(fold(s)),
            Some(MatchPattern::Prefix(s)) => Pattern::Prefix(fold(s)),
            Some(MatchPattern::Suffix(s)) => Pattern::Suffix(fold(s)),
            Some(MatchPattern::Contains(s)) => Pattern::Contains(fold(s)),
            Some(MatchPattern::SafeRegex(r)) => {
                Pattern::Regex(full_regex(r, &join(field, "safe_regex"))?)
            }
            Some(MatchPattern::Custom(_)) => {
                return invalid(
                    join(field, "custom"),
                    "custom string matchers are not supported",
                );
            }
            None => {
                return invalid(
                    field,
                    "one of exact, prefix, suffix, contains, safe_regex is required",
                );
            }
        };
        Ok(Self {
            pattern,
            ignore_case: m.ignore_case,
        })
    }

    /// An exact matcher (used by tests and the CORS defaults).
    pub fn exact(value: &str) -> Self {
        Self {
            pattern: Pattern::Exact(value.to_string()),
            ignore_case: false,
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        // Regexes ignore `ignore_case`, as in Envoy.
        if let Pattern::Regex(r) = &self.pattern {
            return r.is_match(value);
        }
        let folded;
        let value = if self.ignore_case {
            folded = value.to_ascii_lowercase();
            folded.as_str()
        } else {
            value
        };
        match &self.pattern {
            Pattern::Exact(s) => value == s,
            Pattern::Prefix(s) => value.starts_with(s.as_str()),
            Pattern::Suffix(s) => value.ends_with(s.as_str()),
            Pattern::Contains(s) => value.contains(s.as_str()),
            Pattern::Regex(_) => false,
        }
    }
}

/// Compiles a `safe_regex` that must match a whole value.
pub(crate) fn full_regex(r: &RegexMatcher, field: &str) -> FieldResult<Regex> {
    match Regex::new(&format!("^(?:{})$", r.regex)) {
        Ok(re) => Ok(re),
        Err(e) => invalid(
            join(field, "regex"),
            format!(
                "{:?} is not a valid RE2 regex: {}",
                r.regex,
                first_line(&e.to_string())
            ),
        ),
    }
}

fn first_line(s: &str) -> String {
    s.lines().last().unwrap_or(s).trim().to_string()
}

// === impl RegexRewrite ===

impl RegexRewrite {
    /// Compiles `r`, found at `field`.
    pub(crate) fn compile(r: &RegexMatchAndSubstitute, field: &str) -> FieldResult<Self> {
        let Some(pattern) = &r.pattern else {
            return invalid(join(field, "pattern"), "is required");
        };
        let regex = match Regex::new(&pattern.regex) {
            Ok(re) => re,
            Err(e) => {
                return invalid(
                    join(field, "pattern.regex"),
                    format!(
                        "{:?} is not a valid RE2 regex: {}",
                        pattern.regex,
                        first_line(&e.to_string())
                    ),
                );
            }
        };
        Ok(Self {
            pattern: regex,
            substitution: translate_substitution(&r.substitution),
        })
    }

    /// `value` with every match replaced.
    pub fn apply(&self, value: &str) -> String {
        self.pattern
            .replace_all(value, self.substitution.as_str())
            .into_owned()
    }
}

/// Envoy writes group references as `\1`; the regex crate as `${1}` (and
/// a literal `$` as `$$`).
fn translate_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    chars.next();
                    out.push_str(&format!("${{{d}}}"));
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

// === impl HeaderMatcher ===

impl HeaderMatcher {
    /// Compiles `m`, found at `field`.
    pub(crate) fn compile(m: &PbHeaderMatcher, field: &str) -> FieldResult<Self> {
        if m.name.is_empty() {
            return invalid(join(field, "name"), "is required");
        }
        let kind = match &m.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(s)) => {
                HeaderMatch::Value(StringMatcher::compile(s, &join(field, "string_match"))?)
            }
            Some(HeaderMatchSpecifier::ExactMatch(s)) => {
                HeaderMatch::Value(StringMatcher::exact(s))
            }
            Some(HeaderMatchSpecifier::PrefixMatch(s)) => HeaderMatch::Value(StringMatcher {
                pattern: Pattern::Prefix(s.clone()),
                ignore_case: false,
            }),
            Some(HeaderMatchSpecifier::SuffixMatch(s)) => HeaderMatch::Value(StringMatcher {
                pattern: Pattern::Suffix(s.clone()),
                ignore_case: false,
            }),
            Some(HeaderMatchSpecifier::ContainsMatch(s)) => HeaderMatch::Value(StringMatcher {
                pattern: Pattern::Contains(s.clone()),
                ignore_case: false,
            }),
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => HeaderMatch::Value(StringMatcher {
                pattern: Pattern::Regex(full_regex(r, &join(field, "safe_regex_match"))?),
                ignore_case: false,
            }),
            Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderMatch::Present(*p),
            Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderMatch::Range {
                start: r.start,
                end: r.end,
            },
            // No specifier: the header must be present.
            None => HeaderMatch::Present(true),
        };
        Ok(Self {
            name: m.name.to_ascii_lowercase(),
            kind,
            invert: m.invert_match,
            treat_missing_as_empty: m.treat_missing_header_as_empty,
        })
    }

    /// Whether the request matches.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = header_value(req, &self.name);
        let value = match (value, self.treat_missing_as_empty) {
            (Some(v), _) => Some(v),
            (None, true) => Some(String::new()),
            (None, false) => None,
        };
        let matched = match (&self.kind, value) {
            (HeaderMatch::Present(want), v) => v.is_some() == *want,
            (_, None) => return self.invert,
            (HeaderMatch::Value(m), Some(v)) => m.matches(&v),
            (HeaderMatch::Range { start, end }, Some(v)) => v
                .trim()
                .parse::<i64>()
                .map(|n| n >= *start && n < *end)
                .unwrap_or(false),
        };
        matched != self.invert
    }
}

/// The value of a header (every line joined with `,`, as Envoy does) or
/// pseudo-header.
pub fn header_value(req: &RequestView<'_>, name: &str) -> Option<String> {
    match name {
        ":method" => return Some(req.method.as_str().to_string()),
        ":authority" | "host" if !req.authority.is_empty() => {
            return Some(req.authority.to_string());
        }
        ":path" => return Some(req.path.to_string()),
        ":scheme" => return Some(req.scheme.to_string()),
        _ => {}
    }
    let mut values = req.headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in values {
        out.push(',');
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(out)
}

// === impl QueryMatcher ===

impl QueryMatcher {
    /// Compiles `m`, found at `field`.
    pub(crate) fn compile(m: &PbQueryMatcher, field: &str) -> FieldResult<Self> {
        if m.name.is_empty() {
            return invalid(join(field, "name"), "is required");
        }
        let value = match &m.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
                Some(StringMatcher::compile(s, &join(field, "string_match"))?)
            }
            Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None => None,
        };
        Ok(Self {
            name: m.name.clone(),
            value,
        })
    }

    /// Whether the query string (without `?`) matches: the parameter is
    /// present and, when a value matcher is set, its first value matches.
    pub fn matches(&self, query: &str) -> bool {
        match query_param(query, &self.name) {
            None => false,
            Some(v) => self.value.as_ref().is_none_or(|m| m.matches(&v)),
        }
    }
}

/// The first value of parameter `name` in `query`, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::v3::Int64Range;
    use test_case::test_case;

    fn string(pattern: MatchPattern, ignore_case: bool) -> StringMatcher {
        StringMatcher::compile(
            &PbStringMatcher {
                ignore_case,
                match_pattern: Some(pattern),
            },
            "m",
        )
        .unwrap()
    }

    fn regex(r: &str) -> RegexMatcher {
        RegexMatcher {
            regex: r.into(),
            engine_type: None,
        }
    }

    #[test_case(MatchPattern::Exact("abc".into()), false, "abc", true; "exact")]
    #[test_case(MatchPattern::Exact("abc".into()), false, "ABC", false; "exact is case sensitive")]
    #[test_case(MatchPattern::Exact("abc".into()), true, "ABC", true; "exact ignore case")]
    #[test_case(MatchPattern::Prefix("ab".into()), false, "abc", true; "prefix")]
    #[test_case(MatchPattern::Suffix("bc".into()), false, "abc", true; "suffix")]
    #[test_case(MatchPattern::Suffix("BC".into()), true, "abc", true; "suffix ignore case")]
    #[test_case(MatchPattern::Contains("b".into()), false, "abc", true; "contains")]
    #[test_case(MatchPattern::Contains("x".into()), false, "abc", false; "contains miss")]
    #[test_case(MatchPattern::SafeRegex(regex("a.c")), false, "abc", true; "regex")]
    #[test_case(MatchPattern::SafeRegex(regex("b")), false, "abc", false; "regex matches whole value")]
    fn string_matchers(pattern: MatchPattern, ignore_case: bool, value: &str, expected: bool) {
        assert_eq!(string(pattern, ignore_case).matches(value), expected);
    }

    #[test]
    fn bad_regex_names_the_field() {
        let err = StringMatcher::compile(
            &PbStringMatcher {
                ignore_case: false,
                match_pattern: Some(MatchPattern::SafeRegex(regex("a("))),
            },
            "match.headers[0].string_match",
        )
        .unwrap_err();
        assert_eq!(err.field, "match.headers[0].string_match.safe_regex.regex");
    }

    fn header(spec: Option<HeaderMatchSpecifier>, invert: bool) -> HeaderMatcher {
        HeaderMatcher::compile(
            &PbHeaderMatcher {
                name: "x-user".into(),
                invert_match: invert,
                treat_missing_header_as_empty: false,
                header_match_specifier: spec,
            },
            "h",
        )
        .unwrap()
    }

    fn view(headers: &HeaderMap) -> RequestView<'_> {
        RequestView {
            method: &Method::GET,
            scheme: "http",
            authority: "example.com",
            path: "/",
            headers,
        }
    }

    #[test_case(Some(HeaderMatchSpecifier::ExactMatch("jason".into())), false, Some("jason"), true; "exact hit")]
    #[test_case(Some(HeaderMatchSpecifier::ExactMatch("jason".into())), false, Some("bob"), false; "exact miss")]
    #[test_case(Some(HeaderMatchSpecifier::ExactMatch("jason".into())), true, Some("bob"), true; "inverted miss")]
    #[test_case(Some(HeaderMatchSpecifier::ExactMatch("jason".into())), false, None, false; "absent")]
    #[test_case(Some(HeaderMatchSpecifier::ExactMatch("jason".into())), true, None, true; "absent inverted")]
    #[test_case(Some(HeaderMatchSpecifier::PresentMatch(true)), false, Some(""), true; "present")]
    #[test_case(Some(HeaderMatchSpecifier::PresentMatch(true)), true, None, true; "present inverted absent")]
    #[test_case(Some(HeaderMatchSpecifier::PresentMatch(true)), true, Some("x"), false; "present inverted present")]
    #[test_case(Some(HeaderMatchSpecifier::PresentMatch(false)), false, None, true; "present false absent")]
    #[test_case(Some(HeaderMatchSpecifier::RangeMatch(Int64Range { start: 1, end: 10 })), false, Some("9"), true; "range")]
    #[test_case(Some(HeaderMatchSpecifier::RangeMatch(Int64Range { start: 1, end: 10 })), false, Some("10"), false; "range end exclusive")]
    #[test_case(Some(HeaderMatchSpecifier::StringMatch(PbStringMatcher { ignore_case: true, match_pattern: Some(MatchPattern::Prefix("JA".into())) })), false, Some("jason"), true; "string match ignore case")]
    fn header_matchers(
        spec: Option<HeaderMatchSpecifier>,
        invert: bool,
        value: Option<&str>,
        expected: bool,
    ) {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert("x-user", v.parse().unwrap());
        }
        assert_eq!(header(spec, invert).matches(&view(&headers)), expected);
    }

    #[test]
    fn pseudo_headers_match() {
        let m = HeaderMatcher::compile(
            &PbHeaderMatcher {
                name: ":authority".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::PrefixMatch("example".into())),
                ..Default::default()
            },
            "h",
        )
        .unwrap();
        assert!(m.matches(&view(&HeaderMap::new())));
    }

    #[test_case("user=jason", true; "value")]
    #[test_case("a=b&user=j%61son", true; "percent decoded")]
    #[test_case("user=bob", false; "other value")]
    #[test_case("users=jason", false; "other name")]
    fn query_matchers(query: &str, expected: bool) {
        let m = QueryMatcher::compile(
            &PbQueryMatcher {
                name: "user".into(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    PbStringMatcher {
                        ignore_case: false,
                        match_pattern: Some(MatchPattern::SafeRegex(regex("j.*"))),
                    },
                )),
            },
            "q",
        )
        .unwrap();
        assert_eq!(m.matches(query), expected);
    }

    #[test_case("^/re/(.*)$", "/\\1", "/re/a/b", "/a/b"; "group reference")]
    #[test_case("^/exact$", "/replaced", "/exact", "/replaced"; "literal")]
    #[test_case("o", "0", "/foo/boo", "/f00/b00"; "every match")]
    #[test_case("x", "$1", "x", "$1"; "dollar is literal")]
    fn regex_rewrites(pattern: &str, substitution: &str, input: &str, expected: &str) {
        let r = RegexRewrite::compile(
            &RegexMatchAndSubstitute {
                pattern: Some(regex(pattern)),
                substitution: substitution.into(),
            },
            "r",
        )
        .unwrap();
        assert_eq!(r.apply(input), expected);
    }
}
