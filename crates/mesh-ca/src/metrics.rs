//! Prometheus metrics of the CA, registered into the caller's registry so the
//! control plane exposes them on its monitoring port.
//!
//! Names are Istio's CA's (`citadel_server_*`), exposed as istiod exposes
//! them: its counters ("sums") carry no `_total` suffix, so [`Sum`]
//! encodes a counter under its bare name and existing dashboards and
//! alerts read ours unchanged. `citadel_server_csr_refused_count` (policy
//! refusals, by reason) is ours; Istio folds those into its error counts.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A counter exposed under its own name, without OpenMetrics' `_total`
/// (typed `unknown`, which OpenMetrics allows any name for), as Istio's
/// control plane exposes its sums. `rate()` and `increase()` work on it
/// as on any counter.
#[derive(Clone, Debug, Default)]
pub struct Sum(Counter);

impl Sum {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for Sum {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for Sum {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0.get() as i64))
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Label set of a refused request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Short reason, e.g. `identity_mismatch`, `expired_token`.
    pub reason: String,
}

/// Counters of the CA service. Cheap to clone (shared atomics).
#[derive(Clone, Debug, Default)]
pub struct CaMetrics {
    /// CSRs received (`citadel_server_csr_count`).
    pub received: Sum,
    /// Certificates issued (`citadel_server_success_cert_issuance_count`).
    pub issued: Sum,
    /// CSRs that could not be parsed (`citadel_server_csr_parsing_err_count`).
    pub parse_errors: Sum,
    /// CSRs refused by policy, by reason (`citadel_server_csr_refused_count`).
    pub csr_refused: Family<RefusalLabels, Sum>,
    /// Signing failures of the CA itself (`citadel_server_csr_sign_err_count`).
    pub sign_errors: Sum,
    /// Callers that failed authentication, by reason
    /// (`citadel_server_authentication_failure_count`).
    pub auth_failed: Family<RefusalLabels, Sum>,
}

// === impl CaMetrics ===

impl CaMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "citadel_server_csr_count",
            "The number of CSRs received by the CA",
            metrics.received.clone(),
        );
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issuances that have succeeded",
            metrics.issued.clone(),
        );
        registry.register(
            "citadel_server_csr_parsing_err_count",
            "The number of errors occurred when parsing the CSR",
            metrics.parse_errors.clone(),
        );
        registry.register(
            "citadel_server_csr_refused_count",
            "CSRs refused by the CA's policy, by reason",
            metrics.csr_refused.clone(),
        );
        registry.register(
            "citadel_server_csr_sign_err_count",
            "The number of errors occurred when signing the CSR",
            metrics.sign_errors.clone(),
        );
        registry.register(
            "citadel_server_authentication_failure_count",
            "The number of authentication failures, by reason",
            metrics.auth_failed.clone(),
        );
        metrics
    }

    /// Counts a refused CSR.
    pub fn refuse_csr(&self, reason: &str) {
        self.csr_refused
            .get_or_create(&RefusalLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a failed authentication.
    pub fn fail_auth(&self, reason: &str) {
        self.auth_failed
            .get_or_create(&RefusalLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Current count of CSR refusals for `reason` (for tests and debug pages).
    pub fn refused(&self, reason: &str) -> u64 {
        self.csr_refused
            .get_or_create(&RefusalLabels {
                reason: reason.to_string(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_exposed_under_istios_names_without_a_total_suffix() {
        let mut registry = Registry::default();
        let m = CaMetrics::register(&mut registry);
        m.received.inc();
        m.received.inc();
        m.issued.inc();
        m.refuse_csr("identity_mismatch");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE citadel_server_csr_count unknown",
            "citadel_server_csr_count 2",
            "citadel_server_success_cert_issuance_count 1",
            "citadel_server_csr_refused_count{reason=\"identity_mismatch\"} 1",
            "citadel_server_csr_sign_err_count 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(!text.contains("_total"), "{text}");
    }
}
