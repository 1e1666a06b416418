//! Istio `HTTPMatchRequest` → Envoy `RouteMatch`, and the merge of a
//! delegating rule's match with its delegate's (one level, as Istio).

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RouteMatch, header_matcher, query_parameter_matcher,
    route_match,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_api::StringMatch;
use mesh_api::networking::virtual_service::HttpMatchRequest;

pub(crate) fn regex(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.into(),
        ..Default::default()
    }
}

/// An Istio string match as an Envoy string matcher (`Present` has none).
pub(crate) fn string_matcher(m: &StringMatch) -> Option<StringMatcher> {
    let pattern = match m {
        StringMatch::Exact(v) => string_matcher::MatchPattern::Exact(v.clone()),
        StringMatch::Prefix(v) => string_matcher::MatchPattern::Prefix(v.clone()),
        StringMatch::Regex(v) => string_matcher::MatchPattern::SafeRegex(regex(v)),
        StringMatch::Present => return None,
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

fn header(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    // Istio reads `prefix: ""` as "header present"; Envoy refuses an empty prefix.
    let spec = match (m, string_matcher(m)) {
        (StringMatch::Prefix(p), _) if p.is_empty() => {
            header_matcher::HeaderMatchSpecifier::PresentMatch(true)
        }
        (_, Some(sm)) => header_matcher::HeaderMatchSpecifier::StringMatch(sm),
        (_, None) => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// The Envoy match for one Istio match (`None`: match everything).
pub(crate) fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let Some(m) = m else {
        return RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        };
    };
    let path = match &m.uri {
        Some(StringMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(StringMatch::Prefix(p)) if !p.is_empty() => {
            route_match::PathSpecifier::Prefix(p.clone())
        }
        Some(StringMatch::Regex(r)) => route_match::PathSpecifier::SafeRegex(regex(r)),
        _ => route_match::PathSpecifier::Prefix("/".into()),
    };
    let mut headers = Vec::new();
    for (name, value) in [
        (":scheme", &m.scheme),
        (":method", &m.method),
        (":authority", &m.authority),
    ] {
        if let Some(v) = value {
            headers.push(header(name, v, false));
        }
    }
    // `@request.auth.claims...` keys match the verified JWT payload, not
    // a header (Istio's routing on claims, for gateways with a
    // RequestAuthentication).
    let mut dynamic_metadata = Vec::new();
    for (k, v, invert) in m
        .headers
        .iter()
        .map(|(k, v)| (k, v, false))
        .chain(m.without_headers.iter().map(|(k, v)| (k, v, true)))
    {
        match routing_claim(k) {
            Some(claims) => dynamic_metadata.push(claim_matcher(&claims, v, invert)),
            None => headers.push(header(k, v, invert)),
        }
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|(k, v)| QueryParameterMatcher {
            name: k.clone(),
            query_parameter_match_specifier: Some(match string_matcher(v) {
                Some(sm) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(sm),
                None => query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        })
        .collect();
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m
            .ignore_uri_case
            .filter(|i| *i)
            .map(|_| BoolValue { value: false }),
        headers,
        query_parameters,
        dynamic_metadata,
        ..Default::default()
    }
}

/// The claim path of Istio's `@request.auth.claims.a.b` or
/// `@request.auth.claims[a][b]` header key (prefix case-insensitive).
fn routing_claim(key: &str) -> Option<Vec<&str>> {
    const PREFIX: &str = "@request.auth.claims";
    if key.len() < PREFIX.len() || !key[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = &key[PREFIX.len()..];
    let claims: Vec<&str> = if let Some(dotted) = rest.strip_prefix('.') {
        dotted.split('.').collect()
    } else {
        rest.strip_prefix('[')?
            .strip_suffix(']')?
            .split("][")
            .collect()
    };
    (!claims.iter().any(|c| c.is_empty())).then_some(claims)
}

/// Matches the claim at `claims` of the payload `jwt_authn` verified: a
/// string claim equal to the match, or a list claim holding such a string.
fn claim_matcher(claims: &[&str], m: &StringMatch, invert: bool) -> MetadataMatcher {
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        ListMatcher, OrMatcher, ValueMatcher, list_matcher, metadata_matcher, value_matcher,
    };
    let value = match (m, string_matcher(m)) {
        (StringMatch::Prefix(p), _) if p.is_empty() => {
            value_matcher::MatchPattern::PresentMatch(true)
        }
        (_, None) => value_matcher::MatchPattern::PresentMatch(true),
        (_, Some(sm)) => {
            let string = ValueMatcher {
                match_pattern: Some(value_matcher::MatchPattern::StringMatch(sm)),
            };
            let list = ValueMatcher {
                match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                    ListMatcher {
                        match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(
                            string.clone(),
                        ))),
                    },
                ))),
            };
            value_matcher::MatchPattern::OrMatch(OrMatcher {
                value_matchers: vec![string, list],
            })
        }
    };
    let path = std::iter::once(crate::xds::authn::JWT_PAYLOAD_KEY)
        .chain(claims.iter().copied())
        .map(|k| metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(k.to_string())),
        })
        .collect();
    MetadataMatcher {
        filter: crate::xds::authn::JWT_AUTHN_FILTER.into(),
        path,
        value: Some(ValueMatcher {
            match_pattern: Some(value),
        }),
        invert,
    }
}

/// Whether an Envoy match takes every request (Istio stops translating a
/// VirtualService after such a route: later rules could never match).
pub(crate) fn is_catch_all(m: &RouteMatch) -> bool {
    matches!(&m.path_specifier, Some(route_match::PathSpecifier::Prefix(p)) if p == "/")
        && m.headers.is_empty()
        && m.query_parameters.is_empty()
        && m.dynamic_metadata.is_empty()
        && m.runtime_fraction.is_none()
}

/// A delegate's match merged into its root's: the delegate's fields win
/// where both are set, maps are unioned, source conditions stay the root's.
pub(crate) fn merge(root: &HttpMatchRequest, child: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = root.clone();
    out.name = match (&root.name, &child.name) {
        (Some(r), Some(c)) => Some(format!("{r}-{c}")),
        (r, c) => c.clone().or_else(|| r.clone()),
    };
    out.uri = child.uri.clone().or(out.uri);
    out.scheme = child.scheme.clone().or(out.scheme);
    out.method = child.method.clone().or(out.method);
    out.authority = child.authority.clone().or(out.authority);
    out.port = child.port.or(out.port);
    out.ignore_uri_case = child.ignore_uri_case.or(out.ignore_uri_case);
    out.headers.extend(child.headers.clone());
    out.without_headers.extend(child.without_headers.clone());
    out.query_params.extend(child.query_params.clone());
    out.source_labels.extend(child.source_labels.clone());
    out
}

/// Every combination of root and delegate matches.
pub(crate) fn merge_all(
    root: &[HttpMatchRequest],
    child: &[HttpMatchRequest],
) -> Vec<HttpMatchRequest> {
    match (root.is_empty(), child.is_empty()) {
        (true, _) => child.to_vec(),
        (false, true) => root.to_vec(),
        (false, false) => root
            .iter()
            .flat_map(|r| child.iter().map(move |c| merge(r, c)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use mesh_api::xds::json::to_json;
    use serde_json::json;

    #[test]
    fn claim_keys_in_both_notations() {
        assert_eq!(
            routing_claim("@request.auth.claims.groups"),
            Some(vec!["groups"])
        );
        assert_eq!(
            routing_claim("@Request.Auth.Claims.a.b"),
            Some(vec!["a", "b"])
        );
        assert_eq!(
            routing_claim("@request.auth.claims[a][b.c]"),
            Some(vec!["a", "b.c"])
        );
        for not_a_claim in [
            "x-user",
            "@request.auth.claims",
            "@request.auth.claims.",
            "@request.auth.claims[]",
            "@request.auth.claims[a",
            "@request.auth.claims.a..b",
        ] {
            assert_eq!(routing_claim(not_a_claim), None, "{not_a_claim}");
        }
    }

    #[test]
    fn claim_matches_become_metadata_matchers_on_the_jwt_payload() {
        let m: HttpMatchRequest = serde_json::from_value(json!({
            "headers": {
                "@request.auth.claims.groups": {"exact": "admin"},
                "x-user": {"exact": "jason"},
            },
            "withoutHeaders": {"@request.auth.claims[org][team]": {"prefix": ""}},
        }))
        .unwrap();
        let rm = route_match(Some(&m));
        let json = to_json(&rm).unwrap();
        assert_eq!(
            json["headers"],
            json!([{"name": "x-user", "stringMatch": {"exact": "jason"}}])
        );
        let string = json!({"stringMatch": {"exact": "admin"}});
        assert_eq!(
            json["dynamicMetadata"],
            json!([
                {
                    "filter": "envoy.filters.http.jwt_authn",
                    "path": [{"key": "payload"}, {"key": "groups"}],
                    "value": {"orMatch": {"valueMatchers": [string, {"listMatch": {"oneOf": string}}]}}
                },
                {
                    "filter": "envoy.filters.http.jwt_authn",
                    "path": [{"key": "payload"}, {"key": "org"}, {"key": "team"}],
                    "value": {"presentMatch": true},
                    "invert": true
                }
            ])
        );
        assert!(!is_catch_all(&rm));
    }
}
