//! Load-balancer settings of a DestinationRule traffic policy: simple vs
//! consistent hash, hash keys and algorithms, locality and zone-aware
//! routing, and warmup, checked as Istio's `validateLoadBalancer` does.

use std::collections::{BTreeMap, BTreeSet};

use super::check_duration;
use crate::networking::destination_rule::{
    ConsistentHashLb, LoadBalancerSettings, LocalityFailover, LocalityLoadBalancerSetting,
    ZoneAwareLoadBalancerSetting,
};
use crate::validation::{Path, Report};

/// Topology labels that `failoverPriority` may not repeat when `failover` is set.
const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// Envoy's maglev table must be a prime below this bound.
const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;

pub(super) fn validate_load_balancer(
    lb: &LoadBalancerSettings,
    has_outlier: bool,
    path: &Path,
    report: &mut Report,
) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        report.error(path, "only one of simple and consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        validate_consistent_hash(ch, &path.field("consistentHash"), report);
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        report.error(
            path,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if let Some(l) = &lb.locality_lb_setting {
        validate_locality_lb(l, has_outlier, &path.field("localityLbSetting"), report);
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        validate_zone_aware_lb(z, has_outlier, &path.field("zoneAwareLbSetting"), report);
    }
    if let Some(d) = &lb.warmup_duration_secs {
        check_duration(d, &path.field("warmupDurationSecs"), report);
    }
    if let Some(w) = &lb.warmup {
        let p = path.field("warmup");
        match &w.duration {
            None => report.error(&p.field("duration"), "warmup duration is required"),
            Some(d) => check_duration(d, &p.field("duration"), report),
        }
        if w.minimum_percent.is_some_and(|v| v > 100.0) {
            report.error(
                &p.field("minimumPercent"),
                "minimumPercent value should be less than or equal to 100",
            );
        }
        if w.aggression.is_some_and(|v| v <= 0.0) {
            report.error(
                &p.field("aggression"),
                "aggression should be greater than 0",
            );
        }
    }
}

fn validate_consistent_hash(ch: &ConsistentHashLb, path: &Path, report: &mut Report) {
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip.is_some(),
        ch.http_query_parameter_name.is_some(),
    ];
    match keys.iter().filter(|k| **k).count() {
        0 => report.error(
            path,
            "consistentHash needs a hash key: one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        ),
        1 => {}
        _ => report.error(
            path,
            "only one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName may be set",
        ),
    }
    if let Some(cookie) = &ch.http_cookie {
        let p = path.field("httpCookie");
        if cookie.name.is_empty() {
            report.error(&p.field("name"), "name required for httpCookie");
        }
        let mut names = BTreeSet::new();
        for (i, attr) in cookie.attributes.iter().enumerate() {
            let ap = p.field("attributes").index(i).field("name");
            if attr.name.is_empty() {
                report.error(&ap, "cookie attribute name cannot be empty");
            } else if !names.insert(attr.name.as_str()) {
                report.error(
                    &ap,
                    format!("duplicate cookie attribute name {:?}", attr.name),
                );
            }
        }
    }
    if ch.ring_hash.is_some() && ch.maglev.is_some() {
        report.error(path, "only one of ringHash and maglev may be set");
    }
    if ch.minimum_ring_size.is_some_and(|v| v != 0) {
        report.warn(
            &path.field("minimumRingSize"),
            "consistentHash.minimumRingSize is deprecated; use ringHash.minimumRingSize instead",
        );
        if ch.ring_hash.is_some() || ch.maglev.is_some() {
            report.error(
                &path.field("minimumRingSize"),
                "only one of minimumRingSize and maglev/ringHash can be specified",
            );
        }
    }
    if let Some(m) = &ch.maglev {
        let p = path.field("maglev").field("tableSize");
        let size = m.table_size.unwrap_or(0);
        if size == 0 {
            report.error(&p, "tableSize must be set for maglev");
        } else if size >= MAGLEV_MAX_TABLE_SIZE {
            report.error(
                &p,
                format!("tableSize must be less than {MAGLEV_MAX_TABLE_SIZE} for maglev"),
            );
        } else if !is_prime(size) {
            report.error(
                &p,
                format!("tableSize {size} must be a prime number for maglev, e.g. 65537"),
            );
        }
    }
}

/// Envoy's primality test, so we refuse exactly what Envoy would.
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut f = 3;
    while f * f <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

/// Checks a locality setting. `has_outlier` says whether outlier detection
/// is configured (failover needs it in a DestinationRule; MeshConfig passes
/// `true` because the mesh default is checked where it applies).
pub(crate) fn validate_locality_lb(
    l: &LocalityLoadBalancerSetting,
    has_outlier: bool,
    path: &Path,
    report: &mut Report,
) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        report.error(
            path,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !l.failover.is_empty()
        && let Some(label) = l
            .failover_priority
            .iter()
            .find(|p| TOPOLOGY_LABELS.contains(&p.as_str()))
    {
        report.error(
            &path.field("failoverPriority"),
            format!("can not simultaneously set 'failover' and topology label {label:?} in 'failoverPriority'"),
        );
        return;
    }
    let dist = path.field("distribute");
    for (i, d) in l.distribute.iter().enumerate() {
        let p = dist.index(i);
        if d.to.values().any(|w| *w == 0 || *w > 100) {
            report.error(&p.field("to"), "locality weight must be in range [1, 100]");
            return;
        }
        let total: u32 = d.to.values().sum();
        if total != 100 {
            report.error(
                &p.field("to"),
                format!("total locality weight {total} != 100"),
            );
            return;
        }
        if let Err(e) = check_localities(d.to.keys().map(String::as_str)) {
            report.error(&p.field("to"), e);
        }
    }
    if let Err(e) = check_localities(l.distribute.iter().map(|d| d.from.as_str())) {
        report.error(&dist, e);
    }
    failover_checks(
        &l.failover,
        &l.failover_priority,
        has_outlier,
        "locality lb",
        path,
        report,
    );
}

fn validate_zone_aware_lb(
    z: &ZoneAwareLoadBalancerSetting,
    has_outlier: bool,
    path: &Path,
    report: &mut Report,
) {
    for label in &z.failover_priority {
        if TOPOLOGY_LABELS.contains(&label.as_str()) {
            report.error(
                &path.field("failoverPriority"),
                format!("'failoverPriority' for zone aware lb must not use topology label {label:?}; region- and zone-level routing are handled automatically"),
            );
        }
    }
    failover_checks(
        &z.failover,
        &z.failover_priority,
        has_outlier,
        "zone aware lb",
        path,
        report,
    );
}

fn failover_checks(
    failover: &[LocalityFailover],
    priority: &[String],
    has_outlier: bool,
    what: &str,
    path: &Path,
    report: &mut Report,
) {
    if (!failover.is_empty() || !priority.is_empty()) && !has_outlier {
        report.warn(path, "outlier detection policy must be provided for failover; without it failover never triggers");
    }
    for (i, f) in failover.iter().enumerate() {
        let p = path.field("failover").index(i);
        if f.from == f.to {
            report.error(
                &p,
                format!("{what} failover settings must specify different regions"),
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            report.error(
                &p,
                format!("{what} failover only specifies regions, not zones or subzones"),
            );
        }
        if f.from.contains('*') || f.to.contains('*') {
            report.error(
                &p,
                format!("{what} failover region should not contain '*' wildcard"),
            );
        }
    }
}

/// Istio's `validateLocalities`: `region[/zone[/subzone]]`, at most one `*`
/// and only at the end, no empty parts, and no locality covering another.
fn check_localities<'a>(localities: impl Iterator<Item = &'a str>) -> Result<(), String> {
    // region -> zone -> subzones; "*" marks "everything below".
    let mut seen: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for loc in localities {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            return Err(format!(
                "locality {loc} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        let overlap = || format!("locality {loc} overlap with previous specified ones");
        if seen.contains_key("*") {
            return Err(overlap());
        }
        let parts: Vec<&str> = loc.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "locality {loc} must not contain empty region/zone/subzone info"
            ));
        }
        match parts.as_slice() {
            [region] => {
                if seen.contains_key(region) {
                    return Err(overlap());
                }
                seen.insert(region, BTreeMap::from([("*", BTreeSet::from(["*"]))]));
            }
            [region, zone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") || zones.contains_key(zone) {
                    return Err(overlap());
                }
                zones.insert(zone, BTreeSet::from(["*"]));
            }
            [region, zone, sub] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") {
                    return Err(overlap());
                }
                let subs = zones.entry(zone).or_default();
                if subs.contains("*") || !subs.insert(sub) {
                    return Err(overlap());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case(&["us-east/*"], true ; "region wildcard")]
    #[test_case(&["us-east/zone1/*", "us-east/zone2"], true ; "sibling zones")]
    #[test_case(&["us-east/*", "us-east/zone1"], false ; "overlap")]
    #[test_case(&["*/zone"], false ; "wildcard not last")]
    #[test_case(&["us-east//a"], false ; "empty part")]
    #[test_case(&["*", "us-west"], false ; "star covers all")]
    fn localities(locs: &[&str], ok: bool) {
        assert_eq!(
            check_localities(locs.iter().copied()).is_ok(),
            ok,
            "{locs:?}"
        );
    }

    #[test_case(65537, true)]
    #[test_case(2, true)]
    #[test_case(65536, false)]
    #[test_case(9, false)]
    fn primes(n: u64, prime: bool) {
        assert_eq!(is_prime(n), prime);
    }
}
