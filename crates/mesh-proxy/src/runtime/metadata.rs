//! A request's dynamic metadata and Envoy's matchers over it
//! (`MetadataMatcher`, `ValueMatcher`).
//!
//! Filters that run before routing write what they learned under their
//! own name (the JWT filter writes a verified token's payload under
//! `envoy.filters.http.jwt_authn`); later filters read it through
//! matchers: RBAC's `metadata` permissions and principals, which is how
//! Istio's `requestPrincipals` and `request.auth.claims[...]` are
//! enforced. Values are JSON, as Envoy's are protobuf `Struct`s converted
//! from JSON: numbers are doubles.

use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher as PbMetadataMatcher, ValueMatcher as PbValueMatcher, double_matcher,
    list_matcher, metadata_matcher, value_matcher,
};
use serde_json::{Map, Value};

use super::matcher::StringMatcher;
use super::{FieldResult, invalid, join};

/// Nesting allowed in one value matcher (`list_match`, `or_match`);
/// deeper is refused so a crafted config cannot exhaust the stack.
const MAX_DEPTH: usize = 16;

/// Dynamic metadata of one request: namespace (a filter's name) to value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata(Map<String, Value>);

/// A compiled `MetadataMatcher`: the value at `path` in namespace
/// `filter`, matched by `value`, possibly inverted.
#[derive(Clone, Debug)]
pub struct MetadataMatcher {
    filter: String,
    path: Vec<String>,
    value: ValueMatcher,
    invert: bool,
}

/// A compiled `ValueMatcher`.
#[derive(Clone, Debug)]
enum ValueMatcher {
    Null,
    Double(DoubleMatch),
    String(StringMatcher),
    Bool(bool),
    Present(bool),
    /// A list with an element matching.
    List(Box<ValueMatcher>),
    Or(Vec<ValueMatcher>),
}

#[derive(Clone, Copy, Debug)]
enum DoubleMatch {
    /// `[start, end)`.
    Range(f64, f64),
    Exact(f64),
}

// === impl Metadata ===

impl Metadata {
    /// Sets `key` in namespace `filter` (creating the namespace).
    pub fn insert(&mut self, filter: &str, key: &str, value: Value) {
        let ns = self
            .0
            .entry(filter.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !ns.is_object() {
            *ns = Value::Object(Map::new());
        }
        if let Value::Object(fields) = ns {
            fields.insert(key.to_string(), value);
        }
    }

    /// The value at `path` in namespace `filter`, if there is one.
    pub fn get(&self, filter: &str, path: &[String]) -> Option<&Value> {
        let mut value = self.0.get(filter)?;
        for key in path {
            value = value.as_object()?.get(key)?;
        }
        Some(value)
    }

    /// Adds every namespace of `other` (replacing keys present in both).
    pub fn merge(&mut self, other: Metadata) {
        for (namespace, value) in other.0 {
            match (self.0.get_mut(&namespace), value) {
                (Some(Value::Object(mine)), Value::Object(theirs)) => mine.extend(theirs),
                (_, value) => {
                    self.0.insert(namespace, value);
                }
            }
        }
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Everything, as JSON (namespace to value).
    pub fn as_json(&self) -> &Map<String, Value> {
        &self.0
    }
}

// === impl MetadataMatcher ===

impl MetadataMatcher {
    /// Compiles a `MetadataMatcher` found at `at`.
    pub(crate) fn compile(m: &PbMetadataMatcher, at: &str) -> FieldResult<Self> {
        if m.filter.is_empty() {
            return invalid(join(at, "filter"), "is required");
        }
        if m.path.is_empty() {
            return invalid(join(at, "path"), "must name at least one key");
        }
        let path = m
            .path
            .iter()
            .enumerate()
            .map(|(i, s)| match &s.segment {
                Some(metadata_matcher::path_segment::Segment::Key(k)) if !k.is_empty() => {
                    Ok(k.clone())
                }
                _ => invalid(join(at, &format!("path[{i}].key")), "is required"),
            })
            .collect::<FieldResult<Vec<_>>>()?;
        let Some(value) = &m.value else {
            return invalid(join(at, "value"), "is required");
        };
        Ok(Self {
            filter: m.filter.clone(),
            path,
            value: ValueMatcher::compile(value, &join(at, "value"), 0)?,
            invert: m.invert,
        })
    }

    /// Whether `metadata` matches (Envoy: an absent value is matched as
    /// an unset one, which only `present_match: false` accepts).
    pub fn matches(&self, metadata: Option<&Metadata>) -> bool {
        let value = metadata.and_then(|m| m.get(&self.filter, &self.path));
        self.value.matches(value) != self.invert
    }
}

// === impl ValueMatcher ===

impl ValueMatcher {
    fn compile(m: &PbValueMatcher, at: &str, depth: usize) -> FieldResult<Self> {
        use value_matcher::MatchPattern as P;
        if depth > MAX_DEPTH {
            return invalid(at, format!("nested more than {MAX_DEPTH} levels deep"));
        }
        Ok(match &m.match_pattern {
            Some(P::NullMatch(_)) => Self::Null,
            Some(P::DoubleMatch(d)) => Self::Double(match &d.match_pattern {
                Some(double_matcher::MatchPattern::Exact(v)) => DoubleMatch::Exact(*v),
                Some(double_matcher::MatchPattern::Range(r)) => DoubleMatch::Range(r.start, r.end),
                None => return invalid(join(at, "double_match"), "a pattern is required"),
            }),
            Some(P::StringMatch(s)) => {
                Self::String(StringMatcher::compile(s, &join(at, "string_match"))?)
            }
            Some(P::BoolMatch(b)) => Self::Bool(*b),
            Some(P::PresentMatch(p)) => Self::Present(*p),
            Some(P::ListMatch(l)) => match &l.match_pattern {
                Some(list_matcher::MatchPattern::OneOf(inner)) => Self::List(Box::new(
                    Self::compile(inner, &join(at, "list_match.one_of"), depth + 1)?,
                )),
                None => return invalid(join(at, "list_match"), "one_of is required"),
            },
            Some(P::OrMatch(or)) => Self::Or(
                or.value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        Self::compile(
                            v,
                            &join(at, &format!("or_match.value_matchers[{i}]")),
                            depth + 1,
                        )
                    })
                    .collect::<FieldResult<Vec<_>>>()?,
            ),
            None => return invalid(at, "a match pattern is required"),
        })
    }

    fn matches(&self, value: Option<&Value>) -> bool {
        match (self, value) {
            (Self::Present(present), v) => *present == v.is_some(),
            (_, None) => false,
            (Self::Null, Some(v)) => v.is_null(),
            (Self::Double(d), Some(v)) => v.as_f64().is_some_and(|x| match d {
                DoubleMatch::Exact(e) => x == *e,
                DoubleMatch::Range(start, end) => x >= *start && x < *end,
            }),
            (Self::String(m), Some(v)) => v.as_str().is_some_and(|s| m.matches(s)),
            (Self::Bool(b), Some(v)) => v.as_bool() == Some(*b),
            (Self::List(inner), Some(v)) => v
                .as_array()
                .is_some_and(|items| items.iter().any(|i| inner.matches(Some(i)))),
            (Self::Or(any), v) => any.iter().any(|m| m.matches(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matcher(v: Value) -> MetadataMatcher {
        let pb: PbMetadataMatcher = mesh_api::xds::json::from_json(&v).unwrap();
        MetadataMatcher::compile(&pb, "m").unwrap()
    }

    fn metadata() -> Metadata {
        let mut m = Metadata::default();
        m.insert(
            "envoy.filters.http.jwt_authn",
            "payload",
            json!({"iss": "https://issuer", "sub": "alice", "aud": ["web", "api"],
                   "n": 3, "admin": true, "nested": {"group": "dev"}}),
        );
        m
    }

    fn at(path: &[&str], value: Value) -> Value {
        json!({"filter": "envoy.filters.http.jwt_authn",
               "path": path.iter().map(|k| json!({"key": k})).collect::<Vec<_>>(),
               "value": value})
    }

    #[test]
    fn values_match_by_kind() {
        let md = metadata();
        let cases = [
            (
                at(
                    &["payload", "sub"],
                    json!({"stringMatch": {"exact": "alice"}}),
                ),
                true,
            ),
            (
                at(
                    &["payload", "sub"],
                    json!({"stringMatch": {"exact": "bob"}}),
                ),
                false,
            ),
            (
                at(
                    &["payload", "aud"],
                    json!({"stringMatch": {"exact": "web"}}),
                ),
                false,
            ),
            (
                at(
                    &["payload", "aud"],
                    json!({"listMatch": {"oneOf": {"stringMatch": {"exact": "api"}}}}),
                ),
                true,
            ),
            (
                at(
                    &["payload", "nested", "group"],
                    json!({"stringMatch": {"prefix": "d"}}),
                ),
                true,
            ),
            (
                at(&["payload", "n"], json!({"doubleMatch": {"exact": 3.0}})),
                true,
            ),
            (
                at(
                    &["payload", "n"],
                    json!({"doubleMatch": {"range": {"start": 4.0, "end": 9.0}}}),
                ),
                false,
            ),
            (at(&["payload", "admin"], json!({"boolMatch": true})), true),
            (
                at(&["payload", "missing"], json!({"presentMatch": true})),
                false,
            ),
            (
                at(&["payload", "missing"], json!({"presentMatch": false})),
                true,
            ),
            (
                at(
                    &["payload", "iss"],
                    json!({"orMatch": {"valueMatchers": [
                {"stringMatch": {"exact": "x"}}, {"stringMatch": {"suffix": "issuer"}}]}}),
                ),
                true,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(matcher(m.clone()).matches(Some(&md)), want, "{m}");
        }
    }

    #[test]
    fn absent_metadata_matches_only_absence_and_inversion_flips() {
        let present = matcher(at(&["payload", "sub"], json!({"presentMatch": true})));
        assert!(!present.matches(None));
        assert!(!present.matches(Some(&Metadata::default())));
        let mut inverted = at(
            &["payload", "sub"],
            json!({"stringMatch": {"exact": "alice"}}),
        );
        inverted["invert"] = json!(true);
        assert!(matcher(inverted.clone()).matches(None));
        assert!(!matcher(inverted).matches(Some(&metadata())));
    }

    #[test]
    fn malformed_matchers_are_refused_by_field() {
        let no_filter: PbMetadataMatcher = mesh_api::xds::json::from_json(
            &json!({"path": [{"key": "a"}], "value": {"presentMatch": true}}),
        )
        .unwrap();
        let e = MetadataMatcher::compile(&no_filter, "m").unwrap_err();
        assert_eq!(e.field, "m.filter");
        let no_value: PbMetadataMatcher =
            mesh_api::xds::json::from_json(&json!({"filter": "f", "path": [{"key": "a"}]}))
                .unwrap();
        assert_eq!(
            MetadataMatcher::compile(&no_value, "m").unwrap_err().field,
            "m.value"
        );
    }
}
