//! Load balancers: immutable selectors built once per runtime from a
//! cluster's endpoints (pingora style), picking lock-free on the request
//! path. Per-endpoint counters (active requests, for least request) are
//! atomics shared by every request on the same runtime.
//!
//! A pick first chooses the priority (the lowest-numbered one that has
//! usable endpoints: priority failover), then, when the cluster asks for
//! locality-weighted balancing, a locality by weight, then an endpoint by
//! the cluster's policy: weighted round robin (earliest-deadline-first
//! schedule), weighted random, least request (power of two choices), ring
//! hash or maglev over the request's hash.

pub mod hash;
pub mod maglev;
pub mod ring;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::convert::HostAddress;
use super::endpoint::{Assignment, Locality};

/// A cluster's load-balancing policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Fewest active requests among `choices` random picks.
    LeastRequest {
        /// How many candidates (Envoy's default: 2).
        choices: u32,
    },
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring.
    RingHash {
        /// Minimum number of points.
        min_size: u64,
        /// Maximum number of points.
        max_size: u64,
    },
    /// Consistent hashing with a maglev table.
    Maglev {
        /// Table size (prime).
        table_size: u64,
    },
    /// The cluster picks the host itself (ORIGINAL_DST).
    ClusterProvided,
}

/// An endpoint as the request path sees it.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub address: HostAddress,
    /// Weight.
    pub weight: u32,
    /// Hostname from EDS.
    pub hostname: String,
    /// Locality.
    pub locality: Locality,
    /// Priority.
    pub priority: u32,
    /// `envoy.transport_socket_match` metadata.
    pub tls_match: BTreeMap<String, String>,
    active: AtomicU64,
}

/// Counts a request as active on an endpoint until dropped.
#[derive(Debug)]
pub struct ActiveRequest(Arc<Endpoint>);

/// A cluster's selector.
#[derive(Debug)]
pub struct Balancer {
    /// Every endpoint, all priorities (available or not).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The priority levels that take traffic, with their cumulative share
    /// of it (out of 100).
    levels: Vec<(u32, Level)>,
}

/// One priority level as it takes traffic.
#[derive(Debug)]
struct Level {
    groups: Vec<Group>,
    /// Cumulative locality weights when balancing by locality weight.
    cumulative: Option<Vec<u64>>,
}

#[derive(Debug)]
struct Group {
    endpoints: Vec<Arc<Endpoint>>,
    picker: Picker,
}

#[derive(Debug)]
enum Picker {
    RoundRobin {
        schedule: Vec<u32>,
        next: AtomicUsize,
    },
    Random {
        cumulative: Vec<u64>,
    },
    LeastRequest {
        cumulative: Vec<u64>,
        choices: u32,
    },
    Ring(ring::Ring),
    Maglev(maglev::Maglev),
}

/// Which hosts may take traffic, and when to ignore that.
#[derive(Clone, Copy)]
pub struct Health<'a> {
    /// Whether a host is unavailable (ejected by outlier detection).
    pub unavailable: &'a dyn Fn(&HostAddress) -> bool,
    /// A priority level with fewer available hosts than this percentage
    /// balances over all its hosts (`healthy_panic_threshold`).
    pub panic_threshold: f64,
}

/// A locality's weight, every host of it, and the available ones.
type LocalityHosts = (Option<u32>, Vec<Arc<Endpoint>>, Vec<Arc<Endpoint>>);

/// The hosts of one priority, by locality.
struct PriorityHosts {
    localities: Vec<LocalityHosts>,
    total: usize,
    available: usize,
}

// === impl Endpoint ===

impl Endpoint {
    /// Requests in flight to this endpoint on the current runtime.
    pub fn active_requests(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Health ===

impl Health<'_> {
    /// Every host available.
    pub const ALL: Health<'static> = Health {
        unavailable: &|_| false,
        panic_threshold: 0.0,
    };
}

// === impl Balancer ===

impl Balancer {
    /// Builds the selector for `assignment`, every host available.
    pub fn build(assignment: &Assignment, policy: LbPolicy, locality_weighted: bool) -> Self {
        Self::build_with(assignment, policy, locality_weighted, Health::ALL)
    }

    /// Builds the selector for `assignment` with some hosts unavailable,
    /// as Envoy spreads load over priorities: a level's health is its
    /// available share of hosts times the overprovisioning factor (capped
    /// at 100 %); levels take load in priority order up to their health,
    /// scaled up when the sum of health is below 100 %. A level whose
    /// available share is below the panic threshold (when the sum is below
    /// 100 %) balances over all its hosts; when every level with hosts is
    /// in panic, load follows the host counts. Within a level weighted by
    /// locality, a locality's weight shrinks with its health the same way.
    pub fn build_with(
        assignment: &Assignment,
        policy: LbPolicy,
        locality_weighted: bool,
        health: Health<'_>,
    ) -> Self {
        let mut endpoints = Vec::new();
        let mut by_priority: BTreeMap<u32, PriorityHosts> = BTreeMap::new();
        for l in &assignment.localities {
            let all: Vec<Arc<Endpoint>> = l
                .endpoints
                .iter()
                .map(|e| {
                    Arc::new(Endpoint {
                        address: e.address.clone(),
                        weight: e.weight.max(1),
                        hostname: e.hostname.clone(),
                        locality: l.locality.clone(),
                        priority: l.priority,
                        tls_match: e.tls_match.clone(),
                        active: AtomicU64::new(0),
                    })
                })
                .collect();
            endpoints.extend(all.iter().cloned());
            let available: Vec<Arc<Endpoint>> = all
                .iter()
                .filter(|e| !(health.unavailable)(&e.address))
                .cloned()
                .collect();
            let p = by_priority.entry(l.priority).or_insert(PriorityHosts {
                localities: Vec::new(),
                total: 0,
                available: 0,
            });
            p.total += all.len();
            p.available += available.len();
            p.localities.push((l.weight, all, available));
        }
        let factor = u64::from(assignment.overprovisioning());
        let priorities: Vec<PriorityHosts> =
            by_priority.into_values().filter(|p| p.total > 0).collect();
        let level_health: Vec<u64> = priorities
            .iter()
            .map(|p| (factor * p.available as u64 / p.total as u64).min(100))
            .collect();
        let total_health = level_health.iter().sum::<u64>().min(100);
        let in_panic = |p: &PriorityHosts| {
            total_health < 100
                && (100.0 * p.available as f64 / p.total as f64) < health.panic_threshold
        };
        let loads: Vec<(u64, bool)> = if priorities.is_empty() {
            Vec::new()
        } else if total_health == 0 {
            // Nothing available: the first level, in panic if it may be.
            let mut loads = vec![(0, false); priorities.len()];
            loads[0] = (100, in_panic(&priorities[0]));
            loads
        } else if priorities.iter().all(in_panic) {
            let hosts: u64 = priorities.iter().map(|p| p.total as u64).sum();
            shares(
                &priorities
                    .iter()
                    .map(|p| p.total as u64)
                    .collect::<Vec<_>>(),
                hosts,
            )
            .into_iter()
            .map(|l| (l, true))
            .collect()
        } else {
            shares(&level_health, total_health)
                .into_iter()
                .zip(&priorities)
                .map(|(l, p)| (l, in_panic(p)))
                .collect()
        };
        let mut upto = 0;
        let levels = priorities
            .into_iter()
            .zip(loads)
            .filter(|(_, (load, _))| *load > 0)
            .map(|(p, (load, panic))| {
                upto += load;
                let level = Level::build(p, policy, locality_weighted, panic, factor);
                (u32::try_from(upto).unwrap_or(100), level)
            })
            .collect();
        Self { endpoints, levels }
    }

    /// Whether there is no endpoint to pick.
    pub fn is_empty(&self) -> bool {
        self.levels
            .iter()
            .all(|(_, l)| l.groups.iter().all(|g| g.endpoints.is_empty()))
    }

    /// Picks an endpoint; `hash` feeds ring hash and maglev (without one
    /// they pick at random).
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<Endpoint>> {
        let level = match self.levels.as_slice() {
            [] => return None,
            [(_, only)] => only,
            levels => {
                let draw = fastrand::u32(0..100);
                let i = levels.partition_point(|(upto, _)| *upto <= draw);
                &levels.get(i).or(levels.last())?.1
            }
        };
        let group = match &level.cumulative {
            Some(c) => &level.groups[weighted_index(c)?],
            None => level.groups.first()?,
        };
        group.pick(hash)
    }

    /// Picks an endpoint for which `avoid` is false, trying up to
    /// `attempts` times (retries skipping hosts already tried); the last
    /// pick is returned when every attempt hit an avoided host.
    pub fn pick_avoiding(
        &self,
        hash: Option<u64>,
        avoid: impl Fn(&Endpoint) -> bool,
        attempts: u32,
    ) -> Option<&Arc<Endpoint>> {
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            // A consistent hash would pick the same host again.
            let e = self.pick(if attempt == 0 { hash } else { None })?;
            if !avoid(e) {
                return Some(e);
            }
            last = Some(e);
        }
        last
    }
}

/// `weights` scaled to shares of 100 by `total` (each share capped by
/// what is left), the rounding remainder to the first level with weight.
fn shares(weights: &[u64], total: u64) -> Vec<u64> {
    let mut left = 100u64;
    let mut out: Vec<u64> = weights
        .iter()
        .map(|w| {
            let share = (w * 100 / total.max(1)).min(left);
            left -= share;
            share
        })
        .collect();
    if left > 0
        && let Some(i) = weights.iter().position(|w| *w > 0)
    {
        out[i] += left;
    }
    out
}

// === impl Level ===

impl Level {
    fn build(
        p: PriorityHosts,
        policy: LbPolicy,
        locality_weighted: bool,
        panic: bool,
        factor: u64,
    ) -> Self {
        let pick = |(w, all, available): LocalityHosts| {
            // A locality's weight shrinks with its available share.
            let total = all.len() as u64;
            let hosts = if panic { all } else { available };
            let health = if panic {
                100
            } else {
                (factor * hosts.len() as u64 / total.max(1)).min(100)
            };
            (u64::from(w.unwrap_or(0)) * health, hosts)
        };
        let weighted: Vec<_> = p
            .localities
            .iter()
            .filter(|(w, _, _)| w.unwrap_or(0) > 0)
            .collect();
        if locality_weighted && !weighted.is_empty() {
            let mut total = 0;
            let mut cumulative = Vec::new();
            let mut groups = Vec::new();
            for (weight, hosts) in p
                .localities
                .into_iter()
                .filter(|(w, _, _)| w.unwrap_or(0) > 0)
                .map(pick)
                .filter(|(weight, hosts)| *weight > 0 && !hosts.is_empty())
            {
                total += weight;
                cumulative.push(total);
                groups.push(Group::new(hosts, policy));
            }
            return Self {
                groups,
                cumulative: Some(cumulative),
            };
        }
        let hosts = p
            .localities
            .into_iter()
            .flat_map(|(_, all, available)| if panic { all } else { available })
            .collect();
        Self {
            groups: vec![Group::new(hosts, policy)],
            cumulative: None,
        }
    }
}

/// An index drawn at random by the cumulative weights `c`.
fn weighted_index(c: &[u64]) -> Option<usize> {
    let total = *c.last()?;
    if total == 0 {
        return None;
    }
    let draw = fastrand::u64(0..total);
    Some(c.partition_point(|x| *x <= draw))
}

fn cumulative(endpoints: &[Arc<Endpoint>]) -> Vec<u64> {
    let mut total = 0;
    endpoints
        .iter()
        .map(|e| {
            total += u64::from(e.weight);
            total
        })
        .collect()
}

// === impl Group ===

impl Group {
    fn new(endpoints: Vec<Arc<Endpoint>>, policy: LbPolicy) -> Self {
        let keys = || {
            endpoints
                .iter()
                .map(|e| e.address.to_string())
                .collect::<Vec<_>>()
        };
        let weights = || endpoints.iter().map(|e| e.weight).collect::<Vec<_>>();
        let picker = match policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                let schedule = schedule(&weights());
                // Start somewhere random so proxies don't move in lockstep.
                let start = fastrand::usize(0..schedule.len().max(1));
                Picker::RoundRobin {
                    schedule,
                    next: AtomicUsize::new(start),
                }
            }
            LbPolicy::Random => Picker::Random {
                cumulative: cumulative(&endpoints),
            },
            // More choices than endpoints only repeats draws: Envoy then
            // scans every endpoint, which is what the cap gives.
            LbPolicy::LeastRequest { choices } => Picker::LeastRequest {
                cumulative: cumulative(&endpoints),
                choices: choices
                    .clamp(1, u32::try_from(endpoints.len()).unwrap_or(u32::MAX).max(1)),
            },
            LbPolicy::RingHash { min_size, max_size } => {
                Picker::Ring(ring::Ring::build(&keys(), &weights(), min_size, max_size))
            }
            LbPolicy::Maglev { table_size } => {
                Picker::Maglev(maglev::Maglev::build(&keys(), &weights(), table_size))
            }
        };
        Self { endpoints, picker }
    }

    fn pick(&self, hash: Option<u64>) -> Option<&Arc<Endpoint>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let index = match &self.picker {
            Picker::RoundRobin { schedule, next } => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                *schedule.get(n % schedule.len().max(1))? as usize
            }
            Picker::Random { cumulative } => weighted_index(cumulative)?,
            Picker::LeastRequest {
                cumulative,
                choices,
            } => {
                let mut best = weighted_index(cumulative)?;
                for _ in 1..*choices {
                    let other = weighted_index(cumulative)?;
                    if self.endpoints[other].active_requests()
                        < self.endpoints[best].active_requests()
                    {
                        best = other;
                    }
                }
                best
            }
            Picker::Ring(r) => match hash {
                Some(h) => r.pick(h)?,
                None => fastrand::usize(0..self.endpoints.len()),
            },
            Picker::Maglev(m) => match hash {
                Some(h) => m.pick(h)?,
                None => fastrand::usize(0..self.endpoints.len()),
            },
        };
        self.endpoints.get(index)
    }
}

/// A weighted round-robin order: earliest deadline first, each endpoint's
/// deadline advancing by `1 / weight`, over one full cycle (weights are
/// scaled down first so a cycle stays short).
fn schedule(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let max = weights.iter().copied().max().unwrap_or(1).max(1);
    if weights.iter().all(|w| *w == max) {
        return (0..u32::try_from(weights.len()).unwrap_or(u32::MAX)).collect();
    }
    const MAX_CYCLE: u64 = 16_384;
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let scaled: Vec<u64> = if total > MAX_CYCLE {
        weights
            .iter()
            .map(|w| (u64::from(*w) * MAX_CYCLE / total).max(1))
            .collect()
    } else {
        weights.iter().map(|w| u64::from(*w)).collect()
    };
    let cycle: u64 = scaled.iter().sum();
    // Fixed-point deadlines: the k-th turn of an endpoint of weight w is
    // due at k / w of the cycle.
    let step = |w: u64| (cycle << 20) / w.max(1);
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = scaled
        .iter()
        .enumerate()
        .map(|(i, w)| Reverse((step(*w), u32::try_from(i).unwrap_or(0))))
        .collect();
    let mut order = Vec::with_capacity(usize::try_from(cycle).unwrap_or(0));
    for _ in 0..cycle {
        let Some(Reverse((deadline, i))) = heap.pop() else {
            break;
        };
        order.push(i);
        heap.push(Reverse((deadline + step(scaled[i as usize]), i)));
    }
    order
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
