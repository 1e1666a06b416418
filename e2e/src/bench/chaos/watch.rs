//! What the proxy says about the killed endpoint: its admin `/clusters`
//! (text form, the same in Envoy and mesh-proxy) polled every
//! [`POLL`] during the run, keeping each change of the host's
//! `health_flags` (`healthy`, `/failed_outlier_check`, ...) with when it
//! was first seen. The poll's period bounds the accuracy of "ejected at"
//! and "back at".

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bench::proxy::subject::Proxy;

/// Time between two reads of `/clusters`.
pub const POLL: Duration = Duration::from_millis(100);
/// The flag Envoy shows for a host ejected by outlier detection.
pub const EJECTED: &str = "/failed_outlier_check";

/// Each change of the host's flags, with when it was first seen.
#[derive(Debug, Clone, Default)]
pub struct FlagTrace {
    /// `(seen at, health_flags)`, the first entry the state at the start;
    /// `"absent"` when the host was not listed (or admin did not answer).
    pub changes: Vec<(Instant, String)>,
    /// Reads made.
    pub polls: u64,
}

// === impl FlagTrace ===

impl FlagTrace {
    /// When the host was first seen ejected.
    pub fn ejected(&self) -> Option<Instant> {
        self.changes
            .iter()
            .find(|(_, f)| f.contains(EJECTED))
            .map(|(t, _)| *t)
    }

    /// When the host was first seen no longer ejected after
    /// [`FlagTrace::ejected`].
    pub fn returned(&self) -> Option<Instant> {
        let ejected = self.ejected()?;
        self.changes
            .iter()
            .find(|(t, f)| *t > ejected && !f.contains(EJECTED))
            .map(|(t, _)| *t)
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
    while !stop.load(Ordering::Relaxed) {
        let seen = Instant::now();
        let flags = proxy
            .admin("/clusters")
            .and_then(|c| host_flags(&c, cluster, host))
            .unwrap_or_else(|| "absent".into());
        trace.polls += 1;
        if trace.changes.last().is_none_or(|(_, f)| *f != flags) {
            trace.changes.push((seen, flags));
        }
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
        let trace = FlagTrace {
            changes: vec![
                (at(0), "healthy".into()),
                (at(100), EJECTED.into()),
                (at(5000), "healthy".into()),
            ],
            polls: 51,
        };
        assert_eq!(trace.ejected(), Some(at(100)));
        assert_eq!(trace.returned(), Some(at(5000)));
        assert_eq!(FlagTrace::default().ejected(), None);
    }
}
