//! deploy/addons checked against what the proxy exports: the Grafana
//! dashboard parses, and every PromQL expression in it names only metrics
//! the proxy registers (scanned from the telemetry module's registration
//! literals, with the suffixes the encoder adds) and labels the proxy
//! writes (scanned from the label and metrics modules). `promtool check config` runs on
//! the scrape configuration when promtool is installed and built with
//! Kubernetes discovery (Debian's package is not). The live check, against
//! the names and labels a real Prometheus scraped from the local mesh, is
//! in meshctl's `local` test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `"..."` literals of `text` that start with `prefix`.
fn literals(text: &str, prefix: &str) -> BTreeSet<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with(prefix) && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// Every PromQL expression in the dashboard: panel targets and template
/// variable queries.
fn expressions(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The identifiers of `expr` outside quotes, each with the character after it.
fn identifiers(expr: &str) -> Vec<(String, char)> {
    let mut out = Vec::new();
    let mut in_quotes = false;
    let mut current = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_quotes = !in_quotes;
            current.clear();
            continue;
        }
        if in_quotes {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || (c == '$' && current.is_empty()) {
            current.push(c);
        } else {
            if !current.is_empty() && !current.starts_with(|c: char| c.is_ascii_digit() || c == '$')
            {
                out.push((std::mem::take(&mut current), c));
            }
            current.clear();
        }
    }
    out
}

#[test]
fn the_dashboard_uses_only_what_the_proxy_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/addons/grafana-dashboard.json"))
            .expect("dashboard JSON");
    let registered = literals(
        &read("crates/mesh-proxy/src/telemetry/metrics.rs"),
        "istio_",
    );
    assert!(registered.contains("istio_requests"), "{registered:?}");
    let mut labels = literals(&read("crates/mesh-proxy/src/telemetry/labels.rs"), "");
    labels.extend(literals(
        &read("crates/mesh-proxy/src/telemetry/metrics.rs"),
        "",
    ));
    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for (word, _) in identifiers(expr)
            .into_iter()
            .filter(|(w, _)| w.starts_with("istio_"))
        {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s).filter(|f| registered.contains(*f)))
                .unwrap_or(&word);
            assert!(
                registered.contains(family),
                "{word} (in {expr}) is not a metric the proxy exports"
            );
            used.insert(family.to_string());
        }
        // Label names: before a matcher inside `{}`, and in `by (...)`.
        let mut in_by = false;
        for (word, next) in identifiers(expr) {
            if word == "by" || word == "without" {
                in_by = true;
                continue;
            }
            let is_label = matches!(next, '=' | '!') || (in_by && matches!(next, ',' | ')' | ' '));
            if next == ')' {
                in_by = false;
            }
            if is_label && word != "le" {
                assert!(
                    labels.contains(&word),
                    "label {word} (in {expr}) is not one the proxy writes"
                );
            }
        }
    }
    for family in [
        "istio_requests",
        "istio_request_duration_milliseconds",
        "istio_tcp_sent_bytes",
    ] {
        assert!(
            used.contains(family),
            "the dashboard has no panel on {family}: {used:?}"
        );
    }
}

#[test]
fn promtool_accepts_the_scrape_configuration() {
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(root().join("deploy/addons/prometheus.yaml"))
        .output()
    else {
        eprintln!("SKIPPED: promtool is not installed");
        return;
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if said.contains("field kubernetes_sd_configs not found") {
        eprintln!(
            "SKIPPED: this promtool is built without Kubernetes discovery (Debian's is):\n{said}"
        );
        return;
    }
    assert!(out.status.success(), "{said}");
}

/// The metric families mesh-control (and its CA and injector) register:
/// the name literals of their registration code.
fn control_plane_families() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in [
        "crates/mesh-control/src/ads/metrics.rs",
        "crates/mesh-control/src/source/publish.rs",
        "crates/mesh-control/src/inject/webhook.rs",
        "crates/mesh-ca/src/metrics.rs",
    ] {
        let text = read(file);
        for prefix in ["pilot_", "citadel_", "mesh_config_", "sidecar_injection_"] {
            out.extend(literals(&text, prefix));
        }
    }
    out
}

#[test]
fn the_control_plane_dashboard_uses_only_what_mesh_control_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/addons/grafana-control-plane.json"))
            .expect("dashboard JSON");
    let families = control_plane_families();
    assert!(families.contains("pilot_xds"), "{families:?}");
    // Istio's sums are exposed under their bare names; prometheus-client
    // counters (the injector's) get `_total`, histograms their series.
    let webhook = read("crates/mesh-control/src/inject/webhook.rs");
    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for (word, _) in identifiers(expr).into_iter().filter(|(w, _)| {
            ["pilot_", "citadel_", "mesh_config_", "sidecar_injection_"]
                .iter()
                .any(|p| w.starts_with(p))
        }) {
            let family = if families.contains(&word) {
                word.clone()
            } else if let Some(f) = word
                .strip_suffix("_total")
                .filter(|f| families.contains(*f) && webhook.contains(&format!("\"{f}\"")))
            {
                f.to_string()
            } else {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s).filter(|f| families.contains(*f)))
                    .unwrap_or_else(|| {
                        panic!("{word} (in {expr}) is not a metric mesh-control exports")
                    })
                    .to_string()
            };
            used.insert(family);
        }
        // Labels: the ones these metrics carry, and Prometheus' `job`.
        let mut in_by = false;
        for (word, next) in identifiers(expr) {
            if word == "by" || word == "without" {
                in_by = true;
                continue;
            }
            let is_label = matches!(next, '=' | '!') || (in_by && matches!(next, ',' | ')' | ' '));
            if next == ')' {
                in_by = false;
            }
            if is_label {
                assert!(
                    ["type", "kind", "reason", "le", "job"].contains(&word.as_str()),
                    "label {word} (in {expr}) is not one mesh-control writes"
                );
            }
        }
    }
    for family in [
        "pilot_xds",
        "pilot_xds_pushes",
        "pilot_proxy_convergence_time",
        "pilot_total_xds_rejects",
        "mesh_config_rejected",
        "citadel_server_success_cert_issuance_count",
    ] {
        assert!(
            used.contains(family),
            "the control-plane dashboard has no panel on {family}: {used:?}"
        );
    }
}
