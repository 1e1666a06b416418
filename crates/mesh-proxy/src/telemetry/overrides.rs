//! Metric overrides: Istio's stats filter configuration
//! (`istio.stats`, `stats.PluginConfig`, what istiod writes for Telemetry
//! `metrics[].overrides`) compiled for one connection manager or TCP
//! proxy. A metric can be dropped, tags removed, and tags added or
//! replaced by a CEL expression evaluated per request (or per
//! connection): the "slow path" Istio documents, taken only by records of
//! listeners that have overrides.
//!
//! Overrides are applied in order: a later drop or tag change of a metric
//! wins. An override without a name applies to every standard metric; one
//! naming a metric this proxy does not report (custom metrics, gRPC
//! message counts) changes nothing. An expression that cannot be compiled
//! refuses the listener update with its field.

use std::sync::Arc;

use mesh_api::xds::istio_stats::{PluginConfig, STANDARD_METRICS};

use crate::runtime::FieldResult;
use crate::runtime::access_log_filter::{Attributes, CelValue};

/// What an unknown tag value reports, as Istio's stats filter does.
const UNKNOWN: &str = "unknown";

/// Istio's standard metrics, indexing [`Overrides`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// `istio_requests_total`.
    Requests,
    /// `istio_request_duration_milliseconds`.
    Duration,
    /// `istio_request_bytes`.
    RequestBytes,
    /// `istio_response_bytes`.
    ResponseBytes,
    /// `istio_tcp_connections_opened_total`.
    TcpOpened,
    /// `istio_tcp_connections_closed_total`.
    TcpClosed,
    /// `istio_tcp_sent_bytes_total`.
    TcpSent,
    /// `istio_tcp_received_bytes_total`.
    TcpReceived,
}

/// The overrides of one metric.
#[derive(Clone, Debug, Default)]
pub struct MetricOverride {
    /// Not reported at all.
    pub drop: bool,
    /// Tags left out.
    remove: Vec<Arc<str>>,
    /// Tags added or replaced, with the expression of their value.
    upsert: Vec<(Arc<str>, CelValue)>,
}

/// The overrides of a connection manager or TCP proxy. Metrics changed
/// by the same configuration entries share one [`MetricOverride`], so a
/// record evaluates each distinct set of expressions once (an override
/// without a name, covering every metric, is evaluated once, not eight
/// times).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// The distinct overrides.
    distinct: Vec<MetricOverride>,
    /// Per metric, its override in `distinct`.
    metrics: [Option<usize>; STANDARD_METRICS.len()],
}

/// What the overrides make of one metric for one record.
#[derive(Clone, Debug, Default)]
pub enum Verdict {
    /// Reported with Istio's tags.
    #[default]
    Untouched,
    /// Not reported.
    Dropped,
    /// Reported with these tag changes.
    Changed(Arc<TagChanges>),
}

/// The verdict of every metric for one record.
#[derive(Clone, Debug, Default)]
pub struct Verdicts([Verdict; STANDARD_METRICS.len()]);

/// Tag changes evaluated for one record: what a series' labels carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TagChanges {
    /// Tags left out.
    pub removed: Vec<Arc<str>>,
    /// Tags with their value (replacing a standard tag in place, else
    /// appended).
    pub set: Vec<(Arc<str>, String)>,
}

// === impl Overrides ===

impl Overrides {
    /// Compiles the stats filter's configuration at field `at`; `None`
    /// when it changes nothing.
    pub(crate) fn compile(cfg: &PluginConfig, at: &str) -> FieldResult<Option<Arc<Self>>> {
        let mut merged: [Option<MetricOverride>; STANDARD_METRICS.len()] = Default::default();
        // The configuration entries that changed each metric: metrics
        // with the same list have the same override.
        let mut entries: [Vec<usize>; STANDARD_METRICS.len()] = Default::default();
        for (i, m) in cfg.metrics.iter().enumerate() {
            let targets: Vec<usize> = if m.name.is_empty() {
                (0..STANDARD_METRICS.len()).collect()
            } else {
                STANDARD_METRICS
                    .iter()
                    .position(|n| *n == m.name)
                    .into_iter()
                    .collect()
            };
            if targets.is_empty() {
                tracing::debug!(metric = %m.name, "stats override of a metric this proxy does not report; ignored");
                continue;
            }
            let mut upserts = Vec::with_capacity(m.dimensions.len());
            for (tag, expr) in &m.dimensions {
                let field = format!("{at}.metrics[{i}].dimensions[{tag:?}]");
                upserts.push((
                    Arc::<str>::from(tag.as_str()),
                    CelValue::compile(expr, &field)?,
                ));
            }
            for t in targets {
                entries[t].push(i);
                let o = merged[t].get_or_insert_with(MetricOverride::default);
                o.drop |= m.drop;
                for tag in &m.tags_to_remove {
                    o.upsert.retain(|(n, _)| **n != **tag);
                    if !o.remove.iter().any(|r| **r == **tag) {
                        o.remove.push(Arc::from(tag.as_str()));
                    }
                }
                for (tag, value) in &upserts {
                    o.remove.retain(|r| r != tag);
                    o.upsert.retain(|(n, _)| n != tag);
                    o.upsert.push((tag.clone(), value.clone()));
                }
            }
        }
        if merged.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut out = Self::default();
        for (t, o) in merged.into_iter().enumerate() {
            let Some(o) = o else { continue };
            let shared = (0..t).find(|&u| entries[u] == entries[t] && out.metrics[u].is_some());
            out.metrics[t] = Some(match shared.and_then(|u| out.metrics[u]) {
                Some(index) => index,
                None => {
                    out.distinct.push(o);
                    out.distinct.len() - 1
                }
            });
        }
        Ok(Some(Arc::new(out)))
    }

    /// The overrides of `metric`, if any.
    pub fn get(&self, metric: Metric) -> Option<&MetricOverride> {
        self.metrics[metric as usize].map(|i| &self.distinct[i])
    }

    /// What becomes of every metric for record `r`, evaluating each
    /// distinct override's expressions once.
    pub(crate) fn verdicts(&self, r: &dyn Attributes) -> Verdicts {
        let mut evaluated: Vec<Option<Verdict>> = vec![None; self.distinct.len()];
        let mut out = Verdicts::default();
        for (verdict, index) in out.0.iter_mut().zip(self.metrics) {
            let Some(i) = index else { continue };
            *verdict = evaluated[i]
                .get_or_insert_with(|| self.distinct[i].verdict(r))
                .clone();
        }
        out
    }
}

// === impl Verdicts ===

impl Verdicts {
    /// The verdict for `metric`.
    pub fn of(&self, metric: Metric) -> &Verdict {
        &self.0[metric as usize]
    }
}

// === impl MetricOverride ===

impl MetricOverride {
    /// What this override makes of its metrics for record `r`.
    fn verdict(&self, r: &dyn Attributes) -> Verdict {
        if self.drop {
            return Verdict::Dropped;
        }
        self.changes(r).map_or(Verdict::Untouched, Verdict::Changed)
    }

    /// The tag changes for record `r`; `None` when the tags are Istio's.
    pub(crate) fn changes(&self, r: &dyn Attributes) -> Option<Arc<TagChanges>> {
        if self.remove.is_empty() && self.upsert.is_empty() {
            return None;
        }
        Some(Arc::new(TagChanges {
            removed: self.remove.clone(),
            set: self
                .upsert
                .iter()
                .map(|(n, v)| (n.clone(), v.text(r).unwrap_or_else(|| UNKNOWN.into())))
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::record::ResponseFlags;
    use crate::telemetry::fixtures::request;
    use mesh_api::xds::istio_stats::MetricConfig;

    fn config(metrics: Vec<MetricConfig>) -> PluginConfig {
        PluginConfig {
            metrics,
            ..Default::default()
        }
    }

    fn metric(name: &str, dims: &[(&str, &str)], remove: &[&str], drop: bool) -> MetricConfig {
        MetricConfig {
            name: name.into(),
            dimensions: dims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tags_to_remove: remove.iter().map(|s| s.to_string()).collect(),
            drop,
            ..Default::default()
        }
    }

    #[test]
    fn later_overrides_win_per_tag_and_a_nameless_one_covers_every_metric() {
        let cfg = config(vec![
            metric("", &[], &["request_protocol"], false),
            metric(
                "requests_total",
                &[("request_protocol", "'p'"), ("route", "xds.route_name")],
                &[],
                false,
            ),
            metric("request_duration_milliseconds", &[], &[], true),
            metric("request_messages_total", &[], &[], true),
        ]);
        let o = Overrides::compile(&cfg, "f").unwrap().unwrap();
        let mut r = request(200, ResponseFlags::default(), Some("outbound|80||a"));
        r.route_name = Some("default".into());
        let count = o.get(Metric::Requests).unwrap().changes(&r).unwrap();
        assert!(count.removed.is_empty());
        assert_eq!(
            count.set,
            vec![
                (Arc::from("request_protocol"), "p".to_string()),
                (Arc::from("route"), "default".to_string())
            ]
        );
        assert!(o.get(Metric::Duration).unwrap().drop);
        let bytes = o.get(Metric::TcpSent).unwrap().changes(&r).unwrap();
        assert_eq!(bytes.removed, vec![Arc::<str>::from("request_protocol")]);
        assert!(!o.get(Metric::TcpSent).unwrap().drop);
    }

    #[test]
    fn metrics_changed_by_the_same_entries_share_one_evaluation() {
        let cfg = config(vec![
            metric("", &[("route", "xds.route_name")], &[], false),
            metric("request_duration_milliseconds", &[], &[], true),
        ]);
        let o = Overrides::compile(&cfg, "f").unwrap().unwrap();
        // Seven metrics share the nameless entry; the duration has its own.
        assert_eq!(o.distinct.len(), 2);
        let mut r = request(200, ResponseFlags::default(), Some("outbound|80||a"));
        r.route_name = Some("default".into());
        let v = o.verdicts(&r);
        let (Verdict::Changed(a), Verdict::Changed(b)) =
            (v.of(Metric::Requests), v.of(Metric::TcpSent))
        else {
            panic!("{v:?}");
        };
        assert!(Arc::ptr_eq(a, b), "one evaluation shared");
        assert_eq!(a.set, vec![(Arc::from("route"), "default".to_string())]);
        assert!(matches!(v.of(Metric::Duration), Verdict::Dropped));
    }

    #[test]
    fn missing_values_report_unknown_and_string_converts() {
        let cfg = config(vec![metric(
            "requests_total",
            &[
                ("port", "string(destination.port)"),
                ("peer", "upstream.uri_san_peer_certificate"),
            ],
            &[],
            false,
        )]);
        let o = Overrides::compile(&cfg, "f").unwrap().unwrap();
        let r = request(200, ResponseFlags::default(), None);
        let got = o.get(Metric::Requests).unwrap().changes(&r).unwrap();
        let port = r.downstream_local.port().to_string();
        assert_eq!(
            got.set,
            vec![
                (Arc::from("peer"), "unknown".to_string()),
                (Arc::from("port"), port)
            ]
        );
    }

    #[test]
    fn nothing_to_change_is_none_and_a_bad_expression_names_its_tag() {
        assert!(Overrides::compile(&config(vec![]), "f").unwrap().is_none());
        let only_custom = config(vec![metric("my_metric", &[], &[], true)]);
        assert!(Overrides::compile(&only_custom, "f").unwrap().is_none());
        let bad = config(vec![metric(
            "requests_total",
            &[("tenant", "request.headers['x-tenant']")],
            &[],
            false,
        )]);
        let e = Overrides::compile(&bad, "http_filters[2].typed_config").unwrap_err();
        assert_eq!(
            e.field,
            "http_filters[2].typed_config.metrics[0].dimensions[\"tenant\"]"
        );
        assert!(e.reason.contains("x-tenant"), "{}", e.reason);
    }
}
