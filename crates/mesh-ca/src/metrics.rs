//! Prometheus metrics of the CA, registered into the caller's registry so the
//! control plane exposes them on its monitoring port.
//!
//! Names follow Istio's CA (`citadel_server_*`) where one exists so existing
//! dashboards keep working.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Label set of a refused request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Short reason, e.g. `identity_mismatch`, `expired_token`.
    pub reason: String,
}

/// Counters of the CA service. Cheap to clone (shared atomics).
#[derive(Clone, Debug, Default)]
pub struct CaMetrics {
    /// Certificates issued.
    pub issued: Counter,
    /// CSRs refused by policy or as malformed, by reason.
    pub csr_refused: Family<RefusalLabels, Counter>,
    /// Callers that failed authentication, by reason.
    pub auth_failed: Family<RefusalLabels, Counter>,
}

// === impl CaMetrics ===

impl CaMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued by the CA",
            metrics.issued.clone(),
        );
        registry.register(
            "citadel_server_csr_refused",
            "CSRs refused by the CA, by reason",
            metrics.csr_refused.clone(),
        );
        registry.register(
            "citadel_server_authentication_failure",
            "CA callers that failed authentication, by reason",
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
