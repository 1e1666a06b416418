//! `/stats` and `/stats/prometheus`: the metrics registry the binary hands
//! in (the data path registers Istio's metrics and Envoy's per-cluster
//! counters in it), encoded once per scrape.
//!
//! `/stats` prints Envoy's `name: value` lines from the same samples so
//! `curl .../stats | grep` habits and tools written for Envoy keep
//! working: Envoy's per-cluster counters get Envoy's dotted names
//! (`envoy_cluster_upstream_rq_total{envoy_cluster_name="c"}` is
//! `cluster.c.upstream_rq_total`, the `_xx` family
//! `cluster.c.upstream_rq_2xx`), other series print as
//! `name{labels}: value`. `?filter=` is a regular expression, as in
//! Envoy, and `?format=json` gives Envoy's `{"stats": [...]}`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AdminState;

/// Content type of the OpenMetrics text format Prometheus scrapes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The prefix of Envoy's per-cluster series in Prometheus form.
const CLUSTER_PREFIX: &str = "envoy_cluster_";

pub(super) fn encode(state: &AdminState) -> Result<String, String> {
    let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| format!("cannot encode metrics: {e}\n"))?;
    Ok(text)
}

pub(super) async fn prometheus(State(state): State<AdminState>) -> Response {
    match encode(&state) {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

pub(super) async fn stats(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let text = match encode(&state) {
        Ok(t) => t,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let filter = match query.get("filter").map(|f| regex::Regex::new(f)) {
        None => None,
        Some(Ok(re)) => Some(re),
        Some(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("filter: not a valid regular expression: {e}\n"),
            )
                .into_response();
        }
    };
    let mut stats: Vec<(String, String)> = envoy_stats(&text)
        .into_iter()
        .filter(|(name, _)| filter.as_ref().is_none_or(|re| re.is_match(name)))
        .collect();
    stats.sort();
    if query.get("format").is_some_and(|f| f == "json") {
        let stats: Vec<serde_json::Value> = stats
            .iter()
            .map(|(name, value)| {
                let value = value
                    .parse::<u64>()
                    .map(serde_json::Value::from)
                    .or_else(|_| value.parse::<f64>().map(serde_json::Value::from))
                    .unwrap_or_else(|_| serde_json::Value::from(value.as_str()));
                serde_json::json!({"name": name, "value": value})
            })
            .collect();
        return axum::Json(serde_json::json!({ "stats": stats })).into_response();
    }
    let mut out = String::new();
    for (name, value) in stats {
        out.push_str(&name);
        out.push_str(": ");
        out.push_str(&value);
        out.push('\n');
    }
    out.into_response()
}

/// Every sample of the OpenMetrics `text` as Envoy's `(name, value)`.
fn envoy_stats(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((envoy_name(series), value.to_string()))
        })
        .collect()
}

/// Envoy's name of a Prometheus series: `cluster.<name>.<stat>` for the
/// per-cluster counters, the series itself otherwise.
fn envoy_name(series: &str) -> String {
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
        None => (series, ""),
    };
    let Some(stat) = name.strip_prefix(CLUSTER_PREFIX) else {
        return series.to_string();
    };
    let labels = parse_labels(labels);
    let label = |key: &str| labels.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let Some(cluster) = label("envoy_cluster_name") else {
        return series.to_string();
    };
    match (stat, label("envoy_response_code_class")) {
        ("upstream_rq_xx", Some(class)) => format!("cluster.{cluster}.upstream_rq_{class}xx"),
        _ => format!("cluster.{cluster}.{stat}"),
    }
}

/// `k="v",k2="v2"` with OpenMetrics escapes (`\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            return labels;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => {}
                },
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_string(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case(
        r#"envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|80||a.default.svc.cluster.local"}"#,
        "cluster.outbound|80||a.default.svc.cluster.local.upstream_rq_total"; "counter")]
    #[test_case(
        r#"envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="c"}"#,
        "cluster.c.upstream_rq_5xx"; "class")]
    #[test_case(
        r#"envoy_cluster_upstream_rq_retry{envoy_cluster_name="with \"quote\""}"#,
        r#"cluster.with "quote".upstream_rq_retry"#; "escaped")]
    #[test_case(r#"istio_requests_total{reporter="source"}"#, r#"istio_requests_total{reporter="source"}"#; "other series")]
    #[test_case("uptime", "uptime"; "no labels")]
    fn series_get_envoys_names(series: &str, expected: &str) {
        assert_eq!(envoy_name(series), expected);
    }

    #[test]
    fn labels_parse_with_escapes() {
        assert_eq!(
            parse_labels(r#"a="1",b="x\\y\"z",c="""#),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), r#"x\y"z"#.to_string()),
                ("c".to_string(), String::new()),
            ]
        );
    }
}
