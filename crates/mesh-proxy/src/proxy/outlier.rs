//! Outlier detection: passive health checking from the outcomes of real
//! requests, as Envoy does it for a cluster with `outlier_detection`.
//!
//! Every attempt's outcome is reported to its cluster's [`Detector`]: an
//! upstream response code, or a local-origin failure (connect failure,
//! reset, timeout). Counting follows Envoy: a 5xx adds to the host's
//! consecutive 5xx count and a 502/503/504 also to its gateway-failure
//! count, any other response resets both; a local-origin failure counts as
//! a 503 (a timeout as a 504), unless `split_external_local_origin_errors`
//! counts it apart, where a successful connection or response resets it.
//! A count reaching its threshold makes the host an outlier (counted as
//! detected), ejected with the rule's `enforcing` chance (counted as
//! enforced) unless that would take more than `max_ejection_percent` of the
//! cluster's hosts (counted as overflow). An ejected host stays out for the
//! base ejection time times the number of its recent ejections (capped by
//! the maximum, plus jitter); a sweep every `interval` returns the hosts
//! whose time is up and, for hosts that stayed healthy an interval since
//! their return, shrinks that multiplier again.
//!
//! While a cluster has ejected hosts its requests use a load balancer
//! built over the cluster's endpoints with those hosts unavailable
//! ([`Balancer::build_with`]: priority spill-over, locality weights and the
//! panic threshold), rebuilt only when the ejected set changes; with none
//! ejected the runtime's own balancer is used. Detectors outlive runtimes:
//! a cluster whose outlier settings did not change keeps its detector, so
//! an EDS or CDS update does not forget who is ejected. Hosts that leave
//! the cluster are forgotten.
//!
//! The admin's `/clusters` shows ejected hosts with Envoy's
//! `/failed_outlier_check` flag, and [`Outliers`] is a Prometheus collector
//! for Envoy's `envoy_cluster_outlier_detection_*` statistics.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;

use crate::runtime::Cluster;
use crate::runtime::Runtime;
use crate::runtime::convert::HostAddress;
use crate::runtime::lb::{Balancer, Health};
use crate::runtime::outlier::{OutlierConfig, Rule};

/// Every cluster's detector, kept across runtimes; shared by the data path
/// and the admin.
#[derive(Debug, Default)]
pub struct Outliers {
    detectors: Mutex<HashMap<String, Arc<Detector>>>,
}

/// The detectors of one runtime's clusters, by cluster name.
pub type Detectors = HashMap<String, Arc<Detector>>;

/// One cluster's outlier detector.
#[derive(Debug)]
pub struct Detector {
    name: Arc<str>,
    config: OutlierConfig,
    state: Mutex<State>,
    /// Hosts ejected now (read without the lock on every request).
    ejected: AtomicUsize,
    /// Bumped whenever the ejected set changes.
    epoch: AtomicU64,
    view: RwLock<Option<View>>,
    stats: Stats,
}

/// The outcome of one attempt on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Response(u16),
    /// The connection could not be made, or it (or the stream) was reset
    /// or closed before a response.
    ConnectFailed,
    /// No response in time.
    Timeout,
    /// The connection was made (TCP proxy).
    ConnectSuccess,
}

/// The balancer a pick uses: the runtime's, or one without the ejected
/// hosts.
pub enum Choice<'a> {
    /// Nothing ejected.
    Runtime(&'a Balancer),
    /// Built with the ejected hosts unavailable.
    Healthy(Arc<Balancer>),
}

#[derive(Debug)]
struct View {
    cluster: Weak<Cluster>,
    epoch: u64,
    balancer: Arc<Balancer>,
}

#[derive(Debug, Default)]
struct State {
    hosts: HashMap<HostAddress, Monitor>,
    /// The cluster's hosts as of the newest runtime (`None`: not known yet).
    current: Option<HashSet<HostAddress>>,
}

#[derive(Debug, Default)]
struct Monitor {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    /// When it was ejected, and for how long, while it is.
    ejected: Option<(Instant, Duration)>,
    /// The ejection time multiplier.
    backoff: u32,
    last_unejected: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocal,
}

#[derive(Debug, Default)]
struct Stats {
    enforced_total: AtomicU64,
    overflow: AtomicU64,
    detected: [AtomicU64; 3],
    enforced: [AtomicU64; 3],
}

// === impl Outliers ===

impl Outliers {
    /// The detectors for `runtime`'s clusters with outlier detection. A
    /// cluster keeps its detector while its settings are unchanged (and
    /// the detector learns the cluster's current hosts); others get a new
    /// one, whose sweep runs every `interval` until the detector is gone.
    pub fn update(&self, runtime: &Runtime) -> Detectors {
        let mut detectors = self.detectors.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        for (name, cluster) in &runtime.clusters {
            let Some(config) = &cluster.config.outlier else {
                continue;
            };
            let detector = match detectors.get(name) {
                Some(d) if d.config == *config => d.clone(),
                _ => Detector::start(name, config.clone()),
            };
            detector.track(cluster);
            next.insert(name.clone(), detector);
        }
        *detectors = next.clone();
        next
    }

    /// Whether `host` of `cluster` is ejected.
    pub fn is_ejected(&self, cluster: &str, host: &HostAddress) -> bool {
        let detectors = self.detectors.lock().unwrap_or_else(|e| e.into_inner());
        detectors.get(cluster).is_some_and(|d| d.is_ejected(host))
    }

    /// The ejected hosts of `cluster`, as `ip:port` text.
    pub fn ejected(&self, cluster: &str) -> HashSet<String> {
        let detectors = self.detectors.lock().unwrap_or_else(|e| e.into_inner());
        let Some(d) = detectors.get(cluster) else {
            return HashSet::new();
        };
        d.lock()
            .hosts
            .iter()
            .filter(|(_, m)| m.ejected.is_some())
            .map(|(a, _)| a.to_string())
            .collect()
    }

    fn snapshot(&self) -> Vec<Arc<Detector>> {
        let detectors = self.detectors.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = detectors.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// `envoy_cluster_name`.
#[derive(Debug)]
struct ClusterLabel<'a>(&'a str);

impl EncodeLabelSet for ClusterLabel<'_> {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        ("envoy_cluster_name", self.0).encode(encoder.encode_label())
    }
}

/// A value written as `name{labels} value` (Envoy's counters keep their
/// exact names, with no `_total` added).
struct Sample(u64, MetricType);

impl EncodeMetric for Sample {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0)
    }

    fn metric_type(&self) -> MetricType {
        self.1
    }
}

impl Collector for Outliers {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let detectors = self.snapshot();
        if detectors.is_empty() {
            return Ok(());
        }
        let kinds = [
            (Kind::Consecutive5xx, "consecutive_5xx"),
            (Kind::ConsecutiveGateway, "consecutive_gateway_failure"),
            (Kind::ConsecutiveLocal, "consecutive_local_origin_failure"),
        ];
        type Read = Box<dyn Fn(&Detector) -> u64>;
        let mut metrics: Vec<(String, MetricType, Read)> = vec![
            (
                "ejections_active".into(),
                MetricType::Gauge,
                Box::new(|d: &Detector| d.ejected.load(Ordering::Relaxed) as u64),
            ),
            (
                "ejections_enforced_total".into(),
                MetricType::Unknown,
                Box::new(|d: &Detector| d.stats.enforced_total.load(Ordering::Relaxed)),
            ),
            (
                "ejections_overflow".into(),
                MetricType::Unknown,
                Box::new(|d: &Detector| d.stats.overflow.load(Ordering::Relaxed)),
            ),
        ];
        for (kind, name) in kinds {
            let i = kind as usize;
            metrics.push((
                format!("ejections_detected_{name}"),
                MetricType::Unknown,
                Box::new(move |d: &Detector| d.stats.detected[i].load(Ordering::Relaxed)),
            ));
            metrics.push((
                format!("ejections_enforced_{name}"),
                MetricType::Unknown,
                Box::new(move |d: &Detector| d.stats.enforced[i].load(Ordering::Relaxed)),
            ));
        }
        for (name, kind, read) in metrics {
            let name = format!("envoy_cluster_outlier_detection_{name}");
            let mut family = encoder.encode_descriptor(&name, "", None, kind)?;
            for d in &detectors {
                let sample = Sample(read(d), kind);
                sample.encode(family.encode_family(&ClusterLabel(&d.name))?)?;
            }
        }
        Ok(())
    }
}

// === impl Detector ===

impl Detector {
    fn new(name: &str, config: OutlierConfig) -> Self {
        Self {
            name: Arc::from(name),
            config,
            state: Mutex::new(State::default()),
            ejected: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            view: RwLock::new(None),
            stats: Stats::default(),
        }
    }

    /// A detector with its sweep task (which ends with the detector).
    fn start(name: &str, config: OutlierConfig) -> Arc<Self> {
        let detector = Arc::new(Self::new(name, config));
        let weak = Arc::downgrade(&detector);
        let interval = detector.config.interval;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(d) = weak.upgrade() else {
                        return;
                    };
                    d.sweep(Instant::now());
                }
            });
        }
        detector
    }

    /// Learns the cluster's current hosts; state of hosts no longer in it
    /// is dropped.
    fn track(&self, cluster: &Cluster) {
        let current: HashSet<HostAddress> = cluster
            .balancer
            .endpoints
            .iter()
            .map(|e| e.address.clone())
            .collect();
        let mut state = self.lock();
        let before = state.ejected_count();
        state.hosts.retain(|a, _| current.contains(a));
        state.current = Some(current);
        if state.ejected_count() != before {
            self.changed(&state);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a change of the ejected set.
    fn changed(&self, state: &State) {
        self.ejected.store(state.ejected_count(), Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `host` is ejected.
    pub fn is_ejected(&self, host: &HostAddress) -> bool {
        self.lock()
            .hosts
            .get(host)
            .is_some_and(|m| m.ejected.is_some())
    }

    /// The balancer for a pick in `cluster`.
    pub fn balancer<'a>(&self, cluster: &'a Arc<Cluster>) -> Choice<'a> {
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return Choice::Runtime(&cluster.balancer);
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        let fits =
            |v: &View| v.epoch == epoch && std::ptr::eq(v.cluster.as_ptr(), Arc::as_ptr(cluster));
        if let Ok(view) = self.view.read()
            && let Some(v) = view.as_ref()
            && fits(v)
        {
            return Choice::Healthy(v.balancer.clone());
        }
        let ejected: HashSet<HostAddress> = {
            let state = self.lock();
            state
                .hosts
                .iter()
                .filter(|(_, m)| m.ejected.is_some())
                .map(|(a, _)| a.clone())
                .collect()
        };
        let unavailable = |a: &HostAddress| ejected.contains(a);
        let balancer = Arc::new(Balancer::build_with(
            &cluster.assignment,
            cluster.config.lb_policy,
            cluster.config.locality_weighted,
            Health {
                unavailable: &unavailable,
                panic_threshold: cluster.config.panic_threshold,
            },
        ));
        if let Ok(mut view) = self.view.write() {
            *view = Some(View {
                cluster: Arc::downgrade(cluster),
                epoch,
                balancer: balancer.clone(),
            });
        }
        Choice::Healthy(balancer)
    }

    /// Records one attempt's outcome on `host`.
    pub fn report(&self, host: &HostAddress, outcome: Outcome) {
        self.report_at(host, outcome, Instant::now());
    }

    fn report_at(&self, host: &HostAddress, outcome: Outcome, now: Instant) {
        let config = &self.config;
        let mut state = self.lock();
        if state.current.as_ref().is_some_and(|c| !c.contains(host)) {
            return;
        }
        let m = state.hosts.entry(host.clone()).or_default();
        if m.ejected.is_some() {
            return;
        }
        let code = match outcome {
            Outcome::Response(code) => code,
            Outcome::ConnectSuccess => {
                m.consecutive_local = 0;
                return;
            }
            Outcome::ConnectFailed | Outcome::Timeout if config.split_local_origin => {
                m.consecutive_local += 1;
                if m.consecutive_local == config.consecutive_local_origin_failure.threshold {
                    self.outlier(&mut state, host, Kind::ConsecutiveLocal, now);
                }
                return;
            }
            Outcome::ConnectFailed => 503,
            Outcome::Timeout => 504,
        };
        let mut found = None;
        if code >= 500 {
            if matches!(code, 502..=504) {
                m.consecutive_gateway += 1;
                if m.consecutive_gateway == config.consecutive_gateway_failure.threshold {
                    found = Some(Kind::ConsecutiveGateway);
                }
            } else {
                m.consecutive_gateway = 0;
            }
            m.consecutive_5xx += 1;
            if m.consecutive_5xx == config.consecutive_5xx.threshold {
                found = Some(Kind::Consecutive5xx);
            }
        } else {
            m.consecutive_5xx = 0;
            m.consecutive_gateway = 0;
            if config.split_local_origin {
                m.consecutive_local = 0;
            }
        }
        // A 5xx finding is handled after a gateway one, as Envoy checks.
        if let Some(kind) = found {
            if matches!(kind, Kind::Consecutive5xx)
                && m.consecutive_gateway == config.consecutive_gateway_failure.threshold
            {
                self.outlier(&mut state, host, Kind::ConsecutiveGateway, now);
            }
            self.outlier(&mut state, host, kind, now);
        }
    }

    fn rule(&self, kind: Kind) -> Rule {
        match kind {
            Kind::Consecutive5xx => self.config.consecutive_5xx,
            Kind::ConsecutiveGateway => self.config.consecutive_gateway_failure,
            Kind::ConsecutiveLocal => self.config.consecutive_local_origin_failure,
        }
    }

    /// `host` was found an outlier by `kind`: eject it if enforced and
    /// allowed.
    fn outlier(&self, state: &mut State, host: &HostAddress, kind: Kind, now: Instant) {
        if state.hosts.get(host).is_none_or(|m| m.ejected.is_some()) {
            return;
        }
        self.stats.detected[kind as usize].fetch_add(1, Ordering::Relaxed);
        let total = state
            .current
            .as_ref()
            .map_or(state.hosts.len(), HashSet::len)
            .max(1) as u64;
        let active = state.ejected_count() as u64;
        let allowed = (active + 1) * 100 <= u64::from(self.config.max_ejection_percent) * total
            || (self.config.always_eject_one_host && active == 0);
        if !allowed {
            self.stats.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if fastrand::u32(0..100) >= self.rule(kind).enforcing {
            return;
        }
        let config = &self.config;
        let Some(m) = state.hosts.get_mut(host) else {
            return;
        };
        m.backoff = m.backoff.saturating_add(1);
        let jitter = if config.max_ejection_time_jitter.is_zero() {
            Duration::ZERO
        } else {
            let max =
                u64::try_from(config.max_ejection_time_jitter.as_millis()).unwrap_or(u64::MAX);
            Duration::from_millis(fastrand::u64(0..=max))
        };
        let time = config
            .base_ejection_time
            .saturating_mul(m.backoff)
            .min(config.max_ejection_time)
            + jitter;
        // Envoy stops growing the multiplier once the maximum is reached.
        if config.base_ejection_time.saturating_mul(m.backoff) >= config.max_ejection_time {
            m.backoff = m.backoff.saturating_sub(1).max(1);
        }
        m.ejected = Some((now, time));
        m.consecutive_5xx = 0;
        m.consecutive_gateway = 0;
        m.consecutive_local = 0;
        self.stats.enforced_total.fetch_add(1, Ordering::Relaxed);
        self.stats.enforced[kind as usize].fetch_add(1, Ordering::Relaxed);
        tracing::info!(cluster = %self.name, %host, ?kind, ejection_time = ?time, "outlier ejected");
        self.changed(state);
    }

    /// Returns hosts whose ejection time is over and shrinks the multiplier
    /// of hosts that stayed healthy for an interval since their return.
    fn sweep(&self, now: Instant) {
        let mut state = self.lock();
        let mut returned = false;
        for (host, m) in &mut state.hosts {
            match m.ejected {
                Some((since, time)) if now.saturating_duration_since(since) >= time => {
                    m.ejected = None;
                    m.last_unejected = Some(now);
                    returned = true;
                    tracing::info!(cluster = %self.name, %host, "outlier returned to service");
                }
                Some(_) => {}
                None => {
                    if m.backoff > 0
                        && m.last_unejected.is_some_and(|t| {
                            now.saturating_duration_since(t) >= self.config.interval
                        })
                    {
                        m.backoff -= 1;
                        m.last_unejected = Some(now);
                    }
                }
            }
        }
        if returned {
            self.changed(&state);
        }
    }
}

// === impl State ===

impl State {
    fn ejected_count(&self) -> usize {
        self.hosts.values().filter(|m| m.ejected.is_some()).count()
    }
}

// === impl Choice ===

impl Deref for Choice<'_> {
    type Target = Balancer;

    fn deref(&self) -> &Balancer {
        match self {
            Self::Runtime(b) => b,
            Self::Healthy(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::outlier::Rule;

    fn config() -> OutlierConfig {
        OutlierConfig {
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 100,
            always_eject_one_host: false,
            consecutive_5xx: Rule {
                threshold: 3,
                enforcing: 100,
            },
            consecutive_gateway_failure: Rule {
                threshold: 2,
                enforcing: 0,
            },
            split_local_origin: false,
            consecutive_local_origin_failure: Rule {
                threshold: 2,
                enforcing: 100,
            },
        }
    }

    fn host(i: u8) -> HostAddress {
        HostAddress::Ip(std::net::SocketAddr::from(([10, 0, 0, i], 80)))
    }

    fn detector(config: OutlierConfig, hosts: u8) -> Detector {
        let d = Detector::new("c", config);
        d.lock().current = Some((1..=hosts).map(host).collect());
        d
    }

    #[test]
    fn consecutive_5xx_ejects_and_a_success_in_between_resets() {
        let d = detector(config(), 3);
        let now = Instant::now();
        for code in [500, 503, 200, 500, 500] {
            d.report_at(&host(1), Outcome::Response(code), now);
        }
        assert!(!d.is_ejected(&host(1)));
        d.report_at(&host(1), Outcome::Response(500), now);
        assert!(d.is_ejected(&host(1)));
        assert_eq!(d.ejected.load(Ordering::Relaxed), 1);
        assert_eq!(d.stats.enforced_total.load(Ordering::Relaxed), 1);
        // No two gateway errors in a row: nothing else found.
        assert_eq!(
            d.stats.enforced[Kind::ConsecutiveGateway as usize].load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn gateway_failures_are_detected_but_enforced_only_when_asked() {
        let d = detector(config(), 3);
        let now = Instant::now();
        d.report_at(&host(1), Outcome::Response(502), now);
        d.report_at(&host(1), Outcome::Response(504), now);
        assert!(!d.is_ejected(&host(1)));
        assert_eq!(
            d.stats.detected[Kind::ConsecutiveGateway as usize].load(Ordering::Relaxed),
            1
        );
        let mut c = config();
        c.consecutive_gateway_failure.enforcing = 100;
        let d = detector(c, 3);
        d.report_at(&host(1), Outcome::ConnectFailed, now);
        d.report_at(&host(1), Outcome::Timeout, now);
        assert!(
            d.is_ejected(&host(1)),
            "local-origin failures count as 503/504"
        );
    }

    #[test]
    fn split_local_origin_failures_count_apart() {
        let mut c = config();
        c.split_local_origin = true;
        let d = detector(c, 3);
        let now = Instant::now();
        d.report_at(&host(1), Outcome::ConnectFailed, now);
        d.report_at(&host(1), Outcome::ConnectSuccess, now);
        d.report_at(&host(1), Outcome::ConnectFailed, now);
        for _ in 0..2 {
            d.report_at(&host(1), Outcome::Response(500), now);
        }
        assert!(!d.is_ejected(&host(1)));
        d.report_at(&host(1), Outcome::Timeout, now);
        assert!(d.is_ejected(&host(1)));
        assert_eq!(
            d.stats.enforced[Kind::ConsecutiveLocal as usize].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn ejection_time_grows_with_repeated_ejections_up_to_the_maximum() {
        let d = detector(config(), 3);
        let t0 = Instant::now();
        let eject = |at: Instant| {
            for _ in 0..3 {
                d.report_at(&host(1), Outcome::Response(500), at);
            }
            assert!(d.is_ejected(&host(1)));
        };
        eject(t0);
        d.sweep(t0 + Duration::from_secs(9));
        assert!(d.is_ejected(&host(1)), "10 s for a first ejection");
        d.sweep(t0 + Duration::from_secs(10));
        assert!(!d.is_ejected(&host(1)));
        let t1 = t0 + Duration::from_millis(10_500);
        eject(t1);
        d.sweep(t1 + Duration::from_secs(19));
        assert!(d.is_ejected(&host(1)), "20 s for a second one");
        d.sweep(t1 + Duration::from_secs(20));
        assert!(!d.is_ejected(&host(1)));
        let t2 = t1 + Duration::from_millis(20_500);
        eject(t2);
        d.sweep(t2 + Duration::from_secs(24));
        assert!(d.is_ejected(&host(1)), "capped at 25 s");
        d.sweep(t2 + Duration::from_secs(25));
        assert!(!d.is_ejected(&host(1)));
    }

    #[test]
    fn the_multiplier_shrinks_while_the_host_stays_healthy() {
        let d = detector(config(), 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            d.report_at(&host(1), Outcome::Response(500), t0);
        }
        d.sweep(t0 + Duration::from_secs(10));
        // Healthy for an interval: back to a first ejection's time.
        d.sweep(t0 + Duration::from_secs(11));
        let t1 = t0 + Duration::from_secs(12);
        for _ in 0..3 {
            d.report_at(&host(1), Outcome::Response(500), t1);
        }
        d.sweep(t1 + Duration::from_secs(10));
        assert!(!d.is_ejected(&host(1)));
    }

    #[test]
    fn max_ejection_percent_bounds_ejections() {
        let mut c = config();
        c.max_ejection_percent = 34;
        let d = detector(c.clone(), 3);
        let now = Instant::now();
        for h in [1, 2] {
            for _ in 0..3 {
                d.report_at(&host(h), Outcome::Response(500), now);
            }
        }
        assert!(d.is_ejected(&host(1)));
        assert!(!d.is_ejected(&host(2)), "a second host would be 67 %");
        assert_eq!(d.stats.overflow.load(Ordering::Relaxed), 1);

        // 10 % of 3 hosts ejects none, unless one host always may be.
        c.max_ejection_percent = 10;
        let d = detector(c.clone(), 3);
        for _ in 0..3 {
            d.report_at(&host(1), Outcome::Response(500), now);
        }
        assert!(!d.is_ejected(&host(1)));
        c.always_eject_one_host = true;
        let d = detector(c, 3);
        for h in [1, 2] {
            for _ in 0..3 {
                d.report_at(&host(h), Outcome::Response(500), now);
            }
        }
        assert!(d.is_ejected(&host(1)));
        assert!(!d.is_ejected(&host(2)));
    }

    #[test]
    fn hosts_outside_the_cluster_are_ignored() {
        let d = detector(config(), 1);
        for _ in 0..3 {
            d.report_at(&host(9), Outcome::Response(500), Instant::now());
        }
        assert!(!d.is_ejected(&host(9)));
        assert!(d.lock().hosts.is_empty());
    }
}
