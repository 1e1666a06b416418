//! Envoy's per-cluster upstream counters, under the names Envoy's
//! Prometheus output gives them (`envoy_cluster_upstream_rq_total{envoy_cluster_name=...}`,
//! `envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",...}`, ...)
//! so dashboards and tools written for Envoy find them; `/stats` prints
//! them in Envoy's dotted form (`cluster.<name>.upstream_rq_total`).
//!
//! Envoy's names that do not end in `_total` are exposed with the
//! OpenMetrics type `unknown` ([`EnvoyCounter`]): an OpenMetrics counter
//! must be named `<name>_total`, and Envoy's own output calls them
//! counters without the suffix.

use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::proxy::record::{AuthzEvent, RequestRecord, ResponseFlags, TcpRecord};

/// A monotonic counter exposed under its exact name (no `_total` added).
#[derive(Clone, Debug, Default)]
pub struct EnvoyCounter(Counter);

/// Per-cluster upstream counters.
#[derive(Clone, Debug, Default)]
pub struct ClusterStats {
    rq_total: Family<ClusterLabels, Counter>,
    cx_total: Family<ClusterLabels, Counter>,
    rq_xx: Family<ClassLabels, EnvoyCounter>,
    rq_retry: Family<ClusterLabels, EnvoyCounter>,
    rq_timeout: Family<ClusterLabels, EnvoyCounter>,
    rq_per_try_timeout: Family<ClusterLabels, EnvoyCounter>,
    rq_pending_overflow: Family<ClusterLabels, EnvoyCounter>,
    rq_retry_overflow: Family<ClusterLabels, EnvoyCounter>,
    rq_retry_success: Family<ClusterLabels, EnvoyCounter>,
    rq_retry_limit_exceeded: Family<ClusterLabels, EnvoyCounter>,
    cx_overflow: Family<ClusterLabels, EnvoyCounter>,
    cx_connect_fail: Family<ClusterLabels, EnvoyCounter>,
    cx_none_healthy: Family<ClusterLabels, EnvoyCounter>,
}

/// `envoy_cluster_name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClusterLabels {
    cluster: Arc<str>,
}

/// `envoy_response_code_class` and `envoy_cluster_name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClassLabels {
    class: u8,
    cluster: Arc<str>,
}

// === impl EnvoyCounter ===

impl EnvoyCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for EnvoyCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for EnvoyCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // A gauge sample is written as `name{labels} value`, which is
        // what an `unknown` sample is.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

// === impl ClusterStats ===

impl ClusterStats {
    /// Registers every counter in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "envoy_cluster_upstream_rq",
            "Upstream requests (attempts, retries included)",
            self.rq_total.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_cx",
            "Upstream connections (TCP proxy)",
            self.cx_total.clone(),
        );
        for (name, help, family) in [
            (
                "envoy_cluster_upstream_rq_retry",
                "Upstream request retries",
                &self.rq_retry,
            ),
            (
                "envoy_cluster_upstream_rq_timeout",
                "Upstream requests that timed out",
                &self.rq_timeout,
            ),
            (
                "envoy_cluster_upstream_rq_per_try_timeout",
                "Upstream attempts ended by the per-try timeout",
                &self.rq_per_try_timeout,
            ),
            (
                "envoy_cluster_upstream_rq_pending_overflow",
                "Requests refused by the max_pending_requests or max_requests circuit breaker",
                &self.rq_pending_overflow,
            ),
            (
                "envoy_cluster_upstream_rq_retry_overflow",
                "Requests not retried because of max_retries or the retry budget",
                &self.rq_retry_overflow,
            ),
            (
                "envoy_cluster_upstream_rq_retry_success",
                "Retries that got a response not retried again",
                &self.rq_retry_success,
            ),
            (
                "envoy_cluster_upstream_rq_retry_limit_exceeded",
                "Requests whose retries ran out with the failure still retriable",
                &self.rq_retry_limit_exceeded,
            ),
            (
                "envoy_cluster_upstream_cx_overflow",
                "Times the max_connections circuit breaker was reached",
                &self.cx_overflow,
            ),
            (
                "envoy_cluster_upstream_cx_connect_fail",
                "Upstream connections that could not be made",
                &self.cx_connect_fail,
            ),
            (
                "envoy_cluster_upstream_cx_none_healthy",
                "Requests or connections with no healthy endpoint to go to",
                &self.cx_none_healthy,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "envoy_cluster_upstream_rq_xx",
            "Upstream responses by status class",
            self.rq_xx.clone(),
        );
    }

    /// Counts a finished request that went to `cluster`.
    pub fn request(&self, cluster: &Arc<str>, r: &RequestRecord) {
        let key = ClusterLabels {
            cluster: cluster.clone(),
        };
        if r.attempts > 0 {
            self.rq_total
                .get_or_create(&key)
                .inc_by(u64::from(r.attempts));
            if r.attempts > 1 {
                self.rq_retry
                    .get_or_create(&key)
                    .inc_by(u64::from(r.attempts - 1));
            }
            // As Envoy, a failure reply made for an upstream (503 UF, 504
            // UT) counts in its class too.
            if (100..600).contains(&r.response_code) {
                let class = ClassLabels {
                    class: (r.response_code / 100) as u8,
                    cluster: cluster.clone(),
                };
                self.rq_xx.get_or_create(&class).inc();
            }
        }
        // Timeouts and connect failures count per attempt, retried or not.
        let f = r.failures;
        for (n, family) in [
            (u64::from(f.route_timeout), &self.rq_timeout),
            (u64::from(f.per_try_timeout), &self.rq_per_try_timeout),
            (u64::from(f.connect), &self.cx_connect_fail),
        ] {
            if n > 0 {
                family.get_or_create(&key).inc_by(n);
            }
        }
        let b = r.breakers;
        for (event, family) in [
            (b.rq_overflow, &self.rq_pending_overflow),
            (b.retry_overflow, &self.rq_retry_overflow),
            (b.retry_success, &self.rq_retry_success),
            (b.cx_overflow, &self.cx_overflow),
        ] {
            if event {
                family.get_or_create(&key).inc();
            }
        }
        let mut flags = r.flags;
        flags.remove(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
        flags.remove(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        self.flags(&key, flags);
    }

    /// Counts a closed TCP-proxied connection to `cluster`.
    pub fn connection(&self, cluster: &Arc<str>, r: &TcpRecord) {
        let key = ClusterLabels {
            cluster: cluster.clone(),
        };
        if r.upstream_host.is_some() {
            self.cx_total.get_or_create(&key).inc();
        }
        // A TCP proxy's only overflow is `max_connections`.
        if r.flags.contains(ResponseFlags::UPSTREAM_OVERFLOW) {
            self.cx_overflow.get_or_create(&key).inc();
        }
        self.flags(&key, r.flags);
    }

    fn flags(&self, key: &ClusterLabels, flags: ResponseFlags) {
        for (flag, family) in [
            (ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, &self.rq_timeout),
            (
                ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
                &self.rq_retry_limit_exceeded,
            ),
            (
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                &self.cx_connect_fail,
            ),
            (ResponseFlags::NO_HEALTHY_UPSTREAM, &self.cx_none_healthy),
        ] {
            if flags.contains(flag) {
                family.get_or_create(key).inc();
            }
        }
    }
}

// === impl ClusterLabels ===

impl EncodeLabelSet for ClusterLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("envoy_cluster_name", &*self.cluster).encode(encoder.encode_label())
    }
}

// === impl ClassLabels ===

impl EncodeLabelSet for ClassLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("envoy_response_code_class", self.class.to_string().as_str())
            .encode(encoder.encode_label())?;
        ("envoy_cluster_name", &*self.cluster).encode(encoder.encode_label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::fixtures::request;

    #[test]
    fn counts_attempts_retries_classes_and_failures_under_envoy_names() {
        let stats = ClusterStats::default();
        let cluster: Arc<str> = Arc::from("outbound|80||a.default.svc.cluster.local");
        let mut ok = request(200, ResponseFlags::default(), Some(&cluster));
        stats.request(&cluster, &ok);
        ok.attempts = 3;
        stats.request(&cluster, &ok);
        let mut timeout = request(504, ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, Some(&cluster));
        timeout.attempts = 1;
        timeout.failures.route_timeout = true;
        stats.request(&cluster, &timeout);
        // Two attempts refused, then a per-try timeout, then an answer.
        let mut retried = request(200, ResponseFlags::default(), Some(&cluster));
        retried.attempts = 4;
        retried.failures.connect = 2;
        retried.failures.per_try_timeout = 1;
        stats.request(&cluster, &retried);
        let mut registry = Registry::default();
        stats.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let name = "envoy_cluster_name=\"outbound|80||a.default.svc.cluster.local\"";
        for expected in [
            format!("envoy_cluster_upstream_rq_total{{{name}}} 9"),
            format!("envoy_cluster_upstream_rq_retry{{{name}}} 5"),
            format!("envoy_cluster_upstream_rq_timeout{{{name}}} 1"),
            format!("envoy_cluster_upstream_rq_per_try_timeout{{{name}}} 1"),
            format!("envoy_cluster_upstream_cx_connect_fail{{{name}}} 2"),
            format!("envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"2\",{name}}} 3"),
            format!("envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"5\",{name}}} 1"),
            "# TYPE envoy_cluster_upstream_rq_retry unknown".to_string(),
            "# TYPE envoy_cluster_upstream_rq counter".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "{expected} missing in\n{text}"
            );
        }
    }

    #[test]
    fn counts_circuit_breaker_events_under_envoy_names() {
        let stats = ClusterStats::default();
        let cluster: Arc<str> = Arc::from("c");
        let mut refused = request(503, ResponseFlags::UPSTREAM_OVERFLOW, Some(&cluster));
        refused.breakers.rq_overflow = true;
        refused.breakers.cx_overflow = true;
        stats.request(&cluster, &refused);
        let mut not_retried = request(503, ResponseFlags::UPSTREAM_OVERFLOW, Some(&cluster));
        not_retried.breakers.retry_overflow = true;
        stats.request(&cluster, &not_retried);
        let mut retried = request(200, ResponseFlags::default(), Some(&cluster));
        retried.attempts = 2;
        retried.breakers.retry_success = true;
        stats.request(&cluster, &retried);
        let mut registry = Registry::default();
        stats.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name=\"c\"} 1",
            "envoy_cluster_upstream_cx_overflow{envoy_cluster_name=\"c\"} 1",
            "envoy_cluster_upstream_rq_retry_overflow{envoy_cluster_name=\"c\"} 1",
            "envoy_cluster_upstream_rq_retry_success{envoy_cluster_name=\"c\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "{expected} missing in\n{text}"
            );
        }
    }
}

/// Envoy's RBAC counters: per HTTP connection manager
/// (`envoy_http_rbac_allowed{envoy_http_conn_manager_prefix=...}`), and for
/// the network filter under Istio's `tcp.` stat prefix
/// (`envoy_tcp_rbac_allowed`).
#[derive(Clone, Debug, Default)]
pub struct RbacStats {
    http_allowed: Family<HcmLabels, EnvoyCounter>,
    http_denied: Family<HcmLabels, EnvoyCounter>,
    tcp_allowed: EnvoyCounter,
    tcp_denied: EnvoyCounter,
    /// Shadow rules, by connection manager (`tcp` for connections) and
    /// `shadow_rules_stat_prefix`, and outcome.
    shadow: Family<ShadowLabels, EnvoyCounter>,
    /// External authorization outcomes by connection manager (`tcp` for
    /// connections) and Envoy's counter name.
    ext_authz: Family<ExtAuthzLabels, EnvoyCounter>,
    jwt_allowed: Family<HcmLabels, EnvoyCounter>,
    jwt_denied: Family<HcmLabels, EnvoyCounter>,
}

/// Labels of a shadow-rules counter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ShadowLabels {
    prefix: Arc<str>,
    rules: Arc<str>,
    result: &'static str,
}

impl EncodeLabelSet for ShadowLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("envoy_http_conn_manager_prefix", &*self.prefix).encode(encoder.encode_label())?;
        ("shadow_rules_prefix", &*self.rules).encode(encoder.encode_label())?;
        ("result", self.result).encode(encoder.encode_label())
    }
}

/// Labels of an external authorization counter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExtAuthzLabels {
    prefix: Arc<str>,
    outcome: &'static str,
}

impl EncodeLabelSet for ExtAuthzLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("envoy_http_conn_manager_prefix", &*self.prefix).encode(encoder.encode_label())?;
        ("outcome", self.outcome).encode(encoder.encode_label())
    }
}

/// `envoy_http_conn_manager_prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct HcmLabels {
    prefix: Arc<str>,
}

impl EncodeLabelSet for HcmLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("envoy_http_conn_manager_prefix", &*self.prefix).encode(encoder.encode_label())
    }
}

// === impl RbacStats ===

impl RbacStats {
    /// Registers every counter in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "envoy_http_rbac_allowed",
            "Requests the RBAC filters let through",
            self.http_allowed.clone(),
        );
        registry.register(
            "envoy_http_rbac_denied",
            "Requests the RBAC filters refused (403)",
            self.http_denied.clone(),
        );
        registry.register(
            "envoy_tcp_rbac_allowed",
            "Connections the network RBAC filters let through",
            self.tcp_allowed.clone(),
        );
        registry.register(
            "envoy_tcp_rbac_denied",
            "Connections the network RBAC filters closed",
            self.tcp_denied.clone(),
        );
        registry.register(
            "envoy_rbac_shadow",
            "Decisions RBAC shadow rules (dry-run and CUSTOM policies) would have made, by result",
            self.shadow.clone(),
        );
        registry.register(
            "envoy_http_jwt_authn_allowed",
            "Requests the JWT filter let through",
            self.jwt_allowed.clone(),
        );
        registry.register(
            "envoy_http_jwt_authn_denied",
            "Requests the JWT filter refused (401, or 403 for an audience not allowed)",
            self.jwt_denied.clone(),
        );
        registry.register(
            "envoy_ext_authz",
            "External authorization outcomes (ok, denied, error, failure_mode_allowed, disabled)",
            self.ext_authz.clone(),
        );
    }

    /// Counts an authorization event (see
    /// [`crate::proxy::record::Observer::authz`]).
    pub fn event(&self, http: Option<&str>, event: AuthzEvent<'_>) {
        let prefix: Arc<str> = http.unwrap_or("tcp").into();
        let outcome = match event {
            AuthzEvent::Shadow(rules, allowed) => {
                self.shadow
                    .get_or_create(&ShadowLabels {
                        prefix,
                        rules: rules.into(),
                        result: if allowed { "allowed" } else { "denied" },
                    })
                    .inc();
                return;
            }
            AuthzEvent::Jwt(allowed) => {
                let family = if allowed {
                    &self.jwt_allowed
                } else {
                    &self.jwt_denied
                };
                family.get_or_create(&HcmLabels { prefix }).inc();
                return;
            }
            AuthzEvent::ExtAuthzOk => "ok",
            AuthzEvent::ExtAuthzDenied => "denied",
            AuthzEvent::ExtAuthzError => "error",
            AuthzEvent::ExtAuthzFailureModeAllowed => "failure_mode_allowed",
            AuthzEvent::ExtAuthzDisabled => "disabled",
        };
        self.ext_authz
            .get_or_create(&ExtAuthzLabels { prefix, outcome })
            .inc();
    }

    /// Counts one decision (see [`crate::proxy::record::Observer::rbac`]).
    pub fn decision(&self, http: Option<&str>, allowed: bool) {
        match (http, allowed) {
            (Some(prefix), allowed) => {
                let family = if allowed {
                    &self.http_allowed
                } else {
                    &self.http_denied
                };
                family
                    .get_or_create(&HcmLabels {
                        prefix: prefix.into(),
                    })
                    .inc();
            }
            (None, true) => self.tcp_allowed.inc(),
            (None, false) => self.tcp_denied.inc(),
        }
    }
}
