//! A cluster's `outlier_detection` and the load-balancer health settings
//! that go with it (`common_lb_config.healthy_panic_threshold`), compiled
//! with Envoy's defaults. The detector that applies them lives with the
//! data path (`proxy::outlier`); this is only the configuration.
//!
//! Implemented: consecutive 5xx, consecutive gateway failures, consecutive
//! local-origin failures (with `split_external_local_origin_errors`), the
//! ejection sweep interval, base ejection time growing with repeated
//! ejections up to `max_ejection_time` (plus jitter), `max_ejection_percent`
//! and `always_eject_one_host`. Success-rate and failure-percentage
//! ejection are not: a config that turns them on explicitly is refused.
//! Envoy's default for `enforcing_success_rate` is 100, so a config that
//! leaves it unset asks for success-rate ejection implicitly; that (which
//! in Envoy needs at least 5 hosts with 100 requests each per interval) is
//! accepted and not done. Istio always sets it to 0.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster as PbCluster, OutlierDetection};

use super::convert::opt_duration;
use super::{FieldResult, invalid, join};

/// Envoy's default panic threshold (percent of available hosts).
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// Outlier detection settings.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    /// How often ejected hosts are checked for return (default 10 s).
    pub interval: Duration,
    /// Ejection time for a first ejection (default 30 s); the n-th
    /// consecutive ejection lasts n times as long.
    pub base_ejection_time: Duration,
    /// Longest ejection (default 300 s, never below the base time).
    pub max_ejection_time: Duration,
    /// Random extra ejection time, up to this (default 0).
    pub max_ejection_time_jitter: Duration,
    /// At most this percentage of the cluster's hosts ejected (default 10).
    pub max_ejection_percent: u32,
    /// One host may always be ejected, whatever `max_ejection_percent` says.
    pub always_eject_one_host: bool,
    /// Consecutive 5xx (and, unless split, local-origin failures).
    pub consecutive_5xx: Rule,
    /// Consecutive 502, 503 and 504 (and, unless split, local-origin
    /// failures).
    pub consecutive_gateway_failure: Rule,
    /// Local-origin failures (connect failures, resets, timeouts) counted
    /// apart from upstream responses.
    pub split_local_origin: bool,
    /// Consecutive local-origin failures (only when split).
    pub consecutive_local_origin_failure: Rule,
}

/// One consecutive-failure rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Failures in a row that make the host an outlier.
    pub threshold: u32,
    /// Percent chance that an outlier found this way is ejected.
    pub enforcing: u32,
}

impl OutlierConfig {
    /// The cluster's outlier detection, if it has one.
    pub(crate) fn compile(c: &PbCluster) -> FieldResult<Option<Self>> {
        c.outlier_detection
            .as_ref()
            .map(|od| Self::from_proto(od, "outlier_detection"))
            .transpose()
    }

    fn from_proto(od: &OutlierDetection, at: &str) -> FieldResult<Self> {
        let percent = |v: Option<u32>, default: u32, name: &str| -> FieldResult<u32> {
            let v = v.unwrap_or(default);
            if v > 100 {
                return invalid(
                    join(at, name),
                    format!("{v} is more than 100 (a percentage)"),
                );
            }
            Ok(v)
        };
        for (name, v) in [
            (
                "enforcing_failure_percentage",
                od.enforcing_failure_percentage.map(|v| v.value),
            ),
            (
                "enforcing_failure_percentage_local_origin",
                od.enforcing_failure_percentage_local_origin
                    .map(|v| v.value),
            ),
            (
                "enforcing_success_rate",
                od.enforcing_success_rate.map(|v| v.value),
            ),
            (
                "enforcing_local_origin_success_rate",
                od.enforcing_local_origin_success_rate.map(|v| v.value),
            ),
        ] {
            if v.is_some_and(|v| v > 0) {
                return invalid(
                    join(at, name),
                    "success-rate and failure-percentage ejection are not supported; set it to 0",
                );
            }
        }
        let positive =
            |d: Option<Duration>, default: Duration| d.filter(|d| !d.is_zero()).unwrap_or(default);
        let interval = positive(
            opt_duration(od.interval.as_ref(), &join(at, "interval"))?,
            Duration::from_secs(10),
        );
        let base_ejection_time = positive(
            opt_duration(
                od.base_ejection_time.as_ref(),
                &join(at, "base_ejection_time"),
            )?,
            Duration::from_secs(30),
        );
        let max_ejection_time = positive(
            opt_duration(
                od.max_ejection_time.as_ref(),
                &join(at, "max_ejection_time"),
            )?,
            Duration::from_secs(300),
        )
        .max(base_ejection_time);
        let max_ejection_time_jitter = opt_duration(
            od.max_ejection_time_jitter.as_ref(),
            &join(at, "max_ejection_time_jitter"),
        )?
        .unwrap_or_default();
        Ok(Self {
            interval,
            base_ejection_time,
            max_ejection_time,
            max_ejection_time_jitter,
            max_ejection_percent: percent(
                od.max_ejection_percent.map(|v| v.value),
                10,
                "max_ejection_percent",
            )?,
            always_eject_one_host: od.always_eject_one_host.is_some_and(|v| v.value),
            consecutive_5xx: Rule {
                threshold: od.consecutive_5xx.map_or(5, |v| v.value),
                enforcing: percent(
                    od.enforcing_consecutive_5xx.map(|v| v.value),
                    100,
                    "enforcing_consecutive_5xx",
                )?,
            },
            consecutive_gateway_failure: Rule {
                threshold: od.consecutive_gateway_failure.map_or(5, |v| v.value),
                enforcing: percent(
                    od.enforcing_consecutive_gateway_failure.map(|v| v.value),
                    0,
                    "enforcing_consecutive_gateway_failure",
                )?,
            },
            split_local_origin: od.split_external_local_origin_errors,
            consecutive_local_origin_failure: Rule {
                threshold: od.consecutive_local_origin_failure.map_or(5, |v| v.value),
                enforcing: percent(
                    od.enforcing_consecutive_local_origin_failure
                        .map(|v| v.value),
                    100,
                    "enforcing_consecutive_local_origin_failure",
                )?,
            },
        })
    }
}

/// `common_lb_config.healthy_panic_threshold` in percent (Envoy's default
/// 50; 0 turns panic mode off).
pub(crate) fn panic_threshold(c: &PbCluster) -> FieldResult<f64> {
    let Some(p) = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
    else {
        return Ok(DEFAULT_PANIC_THRESHOLD);
    };
    if !(0.0..=100.0).contains(&p.value) {
        return invalid(
            "common_lb_config.healthy_panic_threshold.value",
            format!("{} is not a percentage between 0 and 100", p.value),
        );
    }
    // Envoy truncates to a whole percent.
    Ok(p.value.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use test_case::test_case;

    fn cluster(value: serde_json::Value) -> PbCluster {
        mesh_api::xds::json::from_json(&value).unwrap()
    }

    #[test]
    fn envoy_defaults() {
        let c = OutlierConfig::compile(&cluster(json!({"name": "c", "outlierDetection": {}})))
            .unwrap()
            .unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.base_ejection_time, Duration::from_secs(30));
        assert_eq!(c.max_ejection_time, Duration::from_secs(300));
        assert_eq!(c.max_ejection_percent, 10);
        assert_eq!(
            c.consecutive_5xx,
            Rule {
                threshold: 5,
                enforcing: 100
            }
        );
        assert_eq!(
            c.consecutive_gateway_failure,
            Rule {
                threshold: 5,
                enforcing: 0
            }
        );
        assert!(!c.split_local_origin);
        assert_eq!(
            panic_threshold(&cluster(json!({"name": "c"}))).unwrap(),
            50.0
        );
    }

    #[test]
    fn istio_output() {
        // What mesh-control writes for consecutive5xxErrors 1, interval 1s,
        // baseEjectionTime 3m, maxEjectionPercent 100, minHealthPercent 0.
        let c = cluster(json!({"name": "c",
            "outlierDetection": {
                "consecutive5xx": 1, "enforcingConsecutive5xx": 100,
                "interval": "1s", "baseEjectionTime": "180s", "maxEjectionPercent": 100,
                "enforcingSuccessRate": 0
            },
            "commonLbConfig": {"healthyPanicThreshold": {}}}));
        let od = OutlierConfig::compile(&c).unwrap().unwrap();
        assert_eq!(
            od.consecutive_5xx,
            Rule {
                threshold: 1,
                enforcing: 100
            }
        );
        assert_eq!(od.interval, Duration::from_secs(1));
        assert_eq!(od.base_ejection_time, Duration::from_secs(180));
        assert_eq!(od.max_ejection_time, Duration::from_secs(300));
        assert_eq!(od.max_ejection_percent, 100);
        assert_eq!(panic_threshold(&c).unwrap(), 0.0);
    }

    #[test]
    fn max_ejection_time_is_never_below_the_base() {
        let c = cluster(json!({"name": "c", "outlierDetection": {"baseEjectionTime": "600s"}}));
        let od = OutlierConfig::compile(&c).unwrap().unwrap();
        assert_eq!(od.max_ejection_time, Duration::from_secs(600));
    }

    #[test_case(json!({"enforcingSuccessRate": 100}), "outlier_detection.enforcing_success_rate"; "success rate")]
    #[test_case(json!({"enforcingFailurePercentage": 5}), "outlier_detection.enforcing_failure_percentage"; "failure percentage")]
    #[test_case(json!({"maxEjectionPercent": 101}), "outlier_detection.max_ejection_percent"; "percent")]
    #[test_case(json!({"interval": "-1s"}), "outlier_detection.interval"; "negative interval")]
    fn refused(od: serde_json::Value, field: &str) {
        let err = OutlierConfig::compile(&cluster(json!({"name": "c", "outlierDetection": od})))
            .unwrap_err();
        assert_eq!(err.field, field, "{err:?}");
    }

    #[test]
    fn panic_threshold_out_of_range_names_the_field() {
        let c = cluster(
            json!({"name": "c", "commonLbConfig": {"healthyPanicThreshold": {"value": 120}}}),
        );
        assert_eq!(
            panic_threshold(&c).unwrap_err().field,
            "common_lb_config.healthy_panic_threshold.value"
        );
    }
}
