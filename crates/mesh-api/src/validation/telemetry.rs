//! Validation of Telemetry, as Istio's admission webhook does it
//! (`ValidateTelemetry`): target selection, providers, tracing sampling and
//! custom tags, metric overrides and access-log filters.

use super::{Context, Path, Report, Validate, check_workload_selector};
use crate::common::PolicyTargetReference;
use crate::telemetry::{CustomTag, ProviderRef, TagOperation, TelemetrySpec};

/// Kinds a Telemetry may target: `(canonical group, kind)`.
const TARGET_KINDS: &[(&str, &str)] = &[
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

impl Validate for TelemetrySpec {
    fn validate(&self, _ctx: &Context<'_>, path: &Path, report: &mut Report) {
        let set = [
            self.selector.is_some(),
            self.target_ref.is_some(),
            !self.target_refs.is_empty(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            report.error(
                path,
                "only one of targetRefs, targetRef or selector can be set; remove the others",
            );
        }
        if let Some(sel) = &self.selector {
            let sp = path.field("selector");
            check_workload_selector(sel, &sp, report);
            if sel.match_labels.is_empty() {
                report.warn(
                    &sp,
                    "workload selector specified without labels; it selects every workload",
                );
            }
        }
        if let Some(t) = &self.target_ref {
            check_target_ref(t, &path.field("targetRef"), report);
        }
        for (i, t) in self.target_refs.iter().enumerate() {
            check_target_ref(t, &path.field("targetRefs").index(i), report);
        }
        self.check_metrics(path, report);
        self.check_tracing(path, report);
        for (i, log) in self.access_logging.iter().enumerate() {
            let p = path.field("accessLogging").index(i);
            if let Some(filter) = &log.filter
                && filter.expression.trim().is_empty()
            {
                report.error(&p.field("filter").field("expression"), "filter expression must not be empty; write a CEL expression such as `response.code >= 400`");
            } else if let Some(filter) = &log.filter
                && let Err(e) = crate::cel::parse(&filter.expression)
            {
                report.error(
                    &p.field("filter").field("expression"),
                    format!("invalid CEL expression {:?}: {e}", filter.expression),
                );
            }
            check_providers(&log.providers, &p.field("providers"), report);
        }
    }
}

fn check_target_ref(t: &PolicyTargetReference, path: &Path, report: &mut Report) {
    if t.name.is_empty() {
        report.error(&path.field("name"), "targetRef name must be set");
    }
    if t.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
        report.error(
            &path.field("namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = if t.group().is_empty() {
        "core"
    } else {
        t.group()
    };
    if !TARGET_KINDS
        .iter()
        .any(|(g, k)| *g == group && *k == t.kind)
    {
        report.error(
            path,
            format!("targetRef must be to a Service, ServiceEntry, Gateway (gateway.networking.k8s.io) or GatewayClass, but was {}/{}", t.group(), t.kind),
        );
    }
}

fn check_providers(providers: &[ProviderRef], path: &Path, report: &mut Report) {
    if let Some(i) = providers.iter().position(|p| p.name.is_empty()) {
        report.error(
            &path.index(i).field("name"),
            "providers.name may not be empty; name a provider from MeshConfig extensionProviders",
        );
    }
}

fn check_custom_tag(name: &str, tag: &CustomTag, path: &Path, report: &mut Report) {
    if name.is_empty() {
        report.error(path, "tag name may not be empty");
    }
    let set = [
        tag.literal.is_some(),
        tag.environment.is_some(),
        tag.header.is_some(),
        tag.formatter.is_some(),
    ];
    match set.iter().filter(|s| **s).count() {
        0 => report.error(path, format!("tag {name:?} needs exactly one of literal, environment, header or formatter")),
        1 => {}
        _ => report.error(path, format!("tag {name:?} sets more than one of literal, environment, header or formatter; keep one")),
    }
    if tag.literal.as_ref().is_some_and(|l| l.value.is_empty()) {
        report.error(
            &path.field("literal").field("value"),
            "literal tag value may not be empty",
        );
    }
    if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
        report.error(
            &path.field("header").field("name"),
            "header tag name may not be empty",
        );
    }
    if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
        report.error(
            &path.field("environment").field("name"),
            "environment tag name may not be empty",
        );
    }
    if tag.formatter.as_ref().is_some_and(|f| f.value.is_empty()) {
        report.error(
            &path.field("formatter").field("value"),
            "formatter tag value may not be empty",
        );
    }
}

// === impl TelemetrySpec ===

impl TelemetrySpec {
    fn check_tracing(&self, path: &Path, report: &mut Report) {
        let tp = path.field("tracing");
        if self.tracing.len() > 1 {
            report.warn(&tp, "multiple tracing is not currently supported");
        }
        for (i, t) in self.tracing.iter().enumerate() {
            let p = tp.index(i);
            if t.providers.len() > 1 {
                report.warn(
                    &p.field("providers"),
                    "multiple providers is not currently supported",
                );
            }
            check_providers(&t.providers, &p.field("providers"), report);
            if let Some(pct) = t.random_sampling_percentage
                && !(0.0..=100.0).contains(&pct)
            {
                report.error(
                    &p.field("randomSamplingPercentage"),
                    "randomSamplingPercentage must be in range [0.0, 100.0]",
                );
            }
            for (name, tag) in &t.custom_tags {
                check_custom_tag(name, tag, &p.field("customTags").key(name), report);
            }
        }
    }

    fn check_metrics(&self, path: &Path, report: &mut Report) {
        for (i, m) in self.metrics.iter().enumerate() {
            let p = path.field("metrics").index(i);
            check_providers(&m.providers, &p.field("providers"), report);
            if let Some(d) = &m.reporting_interval {
                super::sidecar::check_ms_duration(d, &p.field("reportingInterval"), report);
            }
            for (j, o) in m.overrides.iter().enumerate() {
                let op = p.field("overrides").index(j);
                for (tag, to) in &o.tag_overrides {
                    let tp = op.field("tagOverrides").key(tag);
                    if tag.is_empty() {
                        report.warn(&tp, "tagOverrides.name may not be empty");
                    }
                    let has_value = to.value.as_deref().is_some_and(|v| !v.is_empty());
                    match to.operation.unwrap_or_default() {
                        TagOperation::Upsert if !has_value => {
                            report.error(&tp.field("value"), "tagOverrides.value must be set when operation is UPSERT")
                        }
                        TagOperation::Remove if has_value => {
                            report.error(&tp.field("value"), "tagOverrides.value may only be set when operation is UPSERT; remove it")
                        }
                        TagOperation::Upsert => {
                            if let Some(v) = to.value.as_deref()
                                && let Err(e) = crate::cel::parse(v)
                            {
                                report.error(
                                    &tp.field("value"),
                                    format!("invalid CEL expression {v:?}: {e}; a literal value is quoted, as in '\"v1\"'"),
                                );
                            }
                        }
                        TagOperation::Remove => {}
                    }
                }
                if let Some(sel) = &o.r#match {
                    let mp = op.field("match");
                    if sel.metric.is_some() && sel.custom_metric.is_some() {
                        report.error(&mp, "only one of metric or customMetric may be set");
                    }
                    if sel.custom_metric.as_deref() == Some("") {
                        report.error(&mp.field("customMetric"), "customMetric may not be empty");
                    }
                }
            }
        }
    }
}
