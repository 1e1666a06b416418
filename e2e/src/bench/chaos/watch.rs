//! What the proxy says about the killed endpoint: its admin `/clusters`
//! (text form, the same in Envoy and mesh-proxy) polled every
//! [`POLL`] during the run, keeping each change of the host's
//! `health_flags` (`healthy`, `/failed_outlier_check`, ...) between the
//! last read that showed the old flags and the first that showed the new
//! ones: the change happened in that interval, about [`POLL`] long.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bench::proxy::subject::Proxy;

/// Time between two reads of `/clusters`.
pub const POLL: Duration = Duration::from_millis(100);
/// The flag Envoy shows for a host ejected by outlier detection.
pub const EJECTED: &str = "/failed_outlier_check";

/// Each change of the host's flags, bracketed by two reads.
#[derive(Debug, Clone, Default)]
pub struct FlagTrace {
    /// In time order, the first entry the state at the start.
    pub changes: Vec<Change>,
    /// Reads made.
    pub polls: u64,
}

/// The host's flags changed between two reads of `/clusters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The last read that still showed the old flags (`None` for the
    /// first read).
    pub before: Option<Instant>,
    /// The first read that showed `flags`.
    pub seen: Instant,
    /// `health_flags`; `"absent"` when the host was not listed (or admin
    /// did not answer).
    pub flags: String,
}

// === impl FlagTrace ===

impl FlagTrace {
    /// The change that ejected the host.
    pub fn ejected(&self) -> Option<&Change> {
        self.changes.iter().find(|c| c.flags.contains(EJECTED))
    }

    /// The first change after [`FlagTrace::ejected`] that lifted it.
    pub fn returned(&self) -> Option<&Change> {
        let ejected = self.ejected()?.seen;
        self.changes
            .iter()
            .find(|c| c.seen > ejected && !c.flags.contains(EJECTED))
    }
}

/// The `health_flags` of `host` (`ip:port`) in the `/clusters` text of
/// `cluster`.
pub fn host_flags(clusters: &str, cluster: &str, host: &str) -> Option<String> {
    let prefix = format!("{cluster}::{host}::health_flags::");
    clusters
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|f| f.trim().to_string())
}

/// How many hosts of `cluster` the `/clusters` text lists.
pub fn host_count(clusters: &str, cluster: &str) -> usize {
    let prefix = format!("{cluster}::");
    clusters
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains("::health_flags::"))
        .count()
}

/// Polls `proxy`'s `/clusters` for `host` of `cluster` until `stop`.
pub fn watch(proxy: &Proxy, cluster: &str, host: &str, stop: &AtomicBool) -> FlagTrace {
    let mut trace = FlagTrace::default();
    let mut next = Instant::now();
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        let seen = Instant::now();
        let flags = proxy
            .admin("/clusters")
            .and_then(|c| host_flags(&c, cluster, host))
            .unwrap_or_else(|| "absent".into());
        trace.polls += 1;
        if trace.changes.last().is_none_or(|c| c.flags != flags) {
            trace.changes.push(Change {
                before: last,
                seen,
                flags,
            });
        }
        last = Some(seen);
        next += POLL;
        crate::bench::proxy::sleep_until(next);
    }
    trace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_flags_of_one_host() {
        let text = "c::observability_name::c\n\
                    c::127.0.40.1:9000::health_flags::healthy\n\
                    c::127.0.40.2:9000::health_flags::/failed_outlier_check\n\
                    d::127.0.40.2:9000::health_flags::healthy\n";
        assert_eq!(
            host_flags(text, "c", "127.0.40.2:9000").as_deref(),
            Some(EJECTED)
        );
        assert_eq!(host_flags(text, "c", "127.0.40.3:9000"), None);
        assert_eq!(host_count(text, "c"), 2);
    }

    #[test]
    fn ejection_and_return_come_from_the_changes() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let change = |before: Option<u64>, seen, flags: &str| Change {
            before: before.map(at),
            seen: at(seen),
            flags: flags.into(),
        };
        let trace = FlagTrace {
            changes: vec![
                change(None, 0, "healthy"),
                change(Some(0), 100, EJECTED),
                change(Some(4900), 5000, "healthy"),
            ],
            polls: 51,
        };
        assert_eq!(trace.ejected().map(|c| c.before), Some(Some(at(0))));
        assert_eq!(trace.returned().map(|c| c.seen), Some(at(5000)));
        assert_eq!(FlagTrace::default().ejected(), None);
    }
}
