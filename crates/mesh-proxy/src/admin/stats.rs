//! `/stats` and `/stats/prometheus`: the metrics registry the binary hands
//! in (the data path registers Istio's metrics in it), encoded once per
//! scrape. `/stats` prints Envoy's `name: value` lines from the same
//! samples so `curl .../stats | grep` habits keep working.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AdminState;

/// Content type of the OpenMetrics text format Prometheus scrapes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn encode(state: &AdminState) -> Result<String, String> {
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
    let filter = query.get("filter").map(String::as_str).unwrap_or("");
    let mut out = String::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if name.contains(filter) {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        }
    }
    out.into_response()
}
