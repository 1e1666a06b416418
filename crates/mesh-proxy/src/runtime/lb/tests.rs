use super::*;
use crate::runtime::endpoint::{EndpointSpec, LocalityEndpoints};
use test_case::test_case;

fn spec(i: u8, weight: u32) -> EndpointSpec {
    EndpointSpec {
        address: HostAddress::Ip(std::net::SocketAddr::from(([10, 0, 0, i], 80))),
        weight,
        hostname: String::new(),
        tls_match: BTreeMap::new(),
    }
}

fn locality(
    zone: &str,
    weight: Option<u32>,
    priority: u32,
    eps: Vec<EndpointSpec>,
) -> LocalityEndpoints {
    LocalityEndpoints {
        locality: Locality {
            region: "r".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        },
        weight,
        priority,
        endpoints: eps,
    }
}

fn counts(b: &Balancer, n: usize, hash: impl Fn(usize) -> Option<u64>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let e = b.pick(hash(i)).unwrap();
        *out.entry(e.address.to_string()).or_insert(0) += 1;
    }
    out
}

#[test]
fn schedule_interleaves_by_weight() {
    let s = schedule(&[3, 1]);
    assert_eq!(s.len(), 4);
    assert_eq!(s.iter().filter(|i| **i == 0).count(), 3);
    let s = schedule(&[1, 2, 1]);
    assert_eq!(s.iter().filter(|i| **i == 1).count(), 2);
    assert_eq!(schedule(&[1, 1, 1]), vec![0, 1, 2]);
}

#[test]
fn round_robin_is_exact_over_a_cycle() {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![locality("a", None, 0, vec![spec(1, 1), spec(2, 3)])],
    };
    let b = Balancer::build(&a, LbPolicy::RoundRobin, false);
    let c = counts(&b, 400, |_| None);
    assert_eq!(c["10.0.0.1:80"], 100);
    assert_eq!(c["10.0.0.2:80"], 300);
}

#[test_case(LbPolicy::Random; "random")]
#[test_case(LbPolicy::LeastRequest { choices: 2 }; "least request")]
#[test_case(LbPolicy::RingHash { min_size: 1024, max_size: 8192 }; "ring hash without hash")]
#[test_case(LbPolicy::Maglev { table_size: 65537 }; "maglev without hash")]
fn every_policy_reaches_every_endpoint(policy: LbPolicy) {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![locality(
            "a",
            None,
            0,
            vec![spec(1, 1), spec(2, 1), spec(3, 1)],
        )],
    };
    let b = Balancer::build(&a, policy, false);
    assert_eq!(counts(&b, 600, |_| None).len(), 3);
}

#[test]
fn weighted_random_follows_weights() {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![locality("a", None, 0, vec![spec(1, 9), spec(2, 1)])],
    };
    let b = Balancer::build(&a, LbPolicy::Random, false);
    let c = counts(&b, 10_000, |_| None);
    // Binomial(10000, 0.1): mean 1000, sd 30; six sigma.
    assert!((820..1180).contains(&c["10.0.0.2:80"]), "{c:?}");
}

#[test]
fn least_request_prefers_idle_endpoints() {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![locality("a", None, 0, vec![spec(1, 1), spec(2, 1)])],
    };
    let b = Balancer::build(&a, LbPolicy::LeastRequest { choices: 2 }, false);
    let busy = b
        .endpoints
        .iter()
        .find(|e| e.address.to_string() == "10.0.0.1:80")
        .unwrap();
    let _guards: Vec<_> = (0..10).map(|_| busy.track()).collect();
    assert_eq!(busy.active_requests(), 10);
    let c = counts(&b, 1000, |_| None);
    // Only a draw of the busy one twice picks it: about a quarter.
    assert!(c.get("10.0.0.1:80").copied().unwrap_or(0) < 330, "{c:?}");
    drop(_guards);
    assert_eq!(busy.active_requests(), 0);
}

#[test_case(LbPolicy::RingHash { min_size: 1024, max_size: 8192 }; "ring hash")]
#[test_case(LbPolicy::Maglev { table_size: 65537 }; "maglev")]
fn consistent_hashing_is_sticky(policy: LbPolicy) {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![locality(
            "a",
            None,
            0,
            (1..=5).map(|i| spec(i, 1)).collect(),
        )],
    };
    let b = Balancer::build(&a, policy, false);
    for key in 0..50u64 {
        let h = hash::xxhash64(&key.to_le_bytes(), 0);
        let first = b.pick(Some(h)).unwrap().address.clone();
        for _ in 0..5 {
            assert_eq!(b.pick(Some(h)).unwrap().address, first);
        }
    }
    // And different keys spread.
    let c = counts(&b, 500, |i| {
        Some(hash::xxhash64(&(i as u64).to_le_bytes(), 0))
    });
    assert_eq!(c.len(), 5);
}

#[test]
fn lowest_priority_with_endpoints_takes_all_traffic() {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![
            locality("p0-empty", None, 0, vec![]),
            locality("p1", None, 1, vec![spec(1, 1)]),
            locality("p2", None, 2, vec![spec(2, 1)]),
        ],
    };
    let b = Balancer::build(&a, LbPolicy::RoundRobin, false);
    assert_eq!(
        counts(&b, 50, |_| None).keys().collect::<Vec<_>>(),
        vec!["10.0.0.1:80"]
    );
    assert_eq!(b.endpoints.len(), 2);
}

#[test]
fn locality_weights_split_traffic_when_enabled() {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![
            locality("a", Some(80), 0, vec![spec(1, 1)]),
            locality("b", Some(20), 0, vec![spec(2, 1), spec(3, 1)]),
        ],
    };
    let weighted = Balancer::build(&a, LbPolicy::RoundRobin, true);
    let c = counts(&weighted, 10_000, |_| None);
    // Binomial(10000, 0.8): sd 40.
    assert!((7760..8240).contains(&c["10.0.0.1:80"]), "{c:?}");
    // Without locality weighting every endpoint gets a third.
    let plain = Balancer::build(&a, LbPolicy::RoundRobin, false);
    let c = counts(&plain, 3000, |_| None);
    assert_eq!(c["10.0.0.1:80"], 1000);
}

#[test]
fn pick_avoiding_skips_previous_hosts() {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![locality("a", None, 0, vec![spec(1, 1), spec(2, 1)])],
    };
    let b = Balancer::build(&a, LbPolicy::Random, false);
    for _ in 0..50 {
        let e = b
            .pick_avoiding(None, |e| e.address.to_string() == "10.0.0.1:80", 20)
            .unwrap();
        assert_eq!(e.address.to_string(), "10.0.0.2:80");
    }
}

#[test]
fn no_endpoints_no_pick() {
    let b = Balancer::build(&Assignment::default(), LbPolicy::RoundRobin, false);
    assert!(b.is_empty());
    assert!(b.pick(None).is_none());
}

fn without<'a>(panic_threshold: f64, f: &'a dyn Fn(&HostAddress) -> bool) -> Health<'a> {
    Health {
        unavailable: f,
        panic_threshold,
    }
}

fn down(ips: &[u8]) -> impl Fn(&HostAddress) -> bool + '_ {
    move |a| {
        ips.iter()
            .any(|i| a.to_string() == format!("10.0.0.{i}:80"))
    }
}

#[test]
fn unavailable_hosts_take_no_traffic_while_enough_are_left() {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![locality(
            "a",
            None,
            0,
            (1..=3).map(|i| spec(i, 1)).collect(),
        )],
    };
    let f = down(&[2]);
    let b = Balancer::build_with(&a, LbPolicy::RoundRobin, false, without(50.0, &f));
    let c = counts(&b, 300, |_| None);
    assert_eq!(c.get("10.0.0.2:80"), None, "{c:?}");
    assert_eq!(c["10.0.0.1:80"], 150);
    assert_eq!(b.endpoints.len(), 3, "every host is still listed");
}

#[test]
fn below_the_panic_threshold_a_level_balances_over_all_its_hosts() {
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![locality(
            "a",
            None,
            0,
            (1..=3).map(|i| spec(i, 1)).collect(),
        )],
    };
    // One of three available: 33 % < 50 %.
    let f = down(&[2, 3]);
    let panic = Balancer::build_with(&a, LbPolicy::RoundRobin, false, without(50.0, &f));
    assert_eq!(counts(&panic, 300, |_| None).len(), 3);
    // Istio's minHealthPercent 0 never panics; with none left there is no pick.
    let strict = Balancer::build_with(&a, LbPolicy::RoundRobin, false, without(0.0, &f));
    assert_eq!(counts(&strict, 300, |_| None).len(), 1);
    let all = down(&[1, 2, 3]);
    let none = Balancer::build_with(&a, LbPolicy::RoundRobin, false, without(0.0, &all));
    assert!(none.pick(None).is_none());
    assert!(none.is_empty());
}

#[test]
fn load_spills_to_the_next_priority_by_health_with_overprovisioning() {
    // Priority 0 (the caller's zone) has 4 hosts, priority 1 has 2.
    let a = Assignment {
        overprovisioning_factor: None,
        localities: vec![
            locality("local", None, 0, (1..=4).map(|i| spec(i, 1)).collect()),
            locality("remote", None, 1, vec![spec(5, 1), spec(6, 1)]),
        ],
    };
    let share = |ips: &[u8]| {
        let f = down(ips);
        let b = Balancer::build_with(&a, LbPolicy::RoundRobin, false, without(0.0, &f));
        let c = counts(&b, 10_000, |_| None);
        c.iter()
            .filter(|(k, _)| k.starts_with("10.0.0.5") || k.starts_with("10.0.0.6"))
            .map(|(_, v)| *v)
            .sum::<usize>()
    };
    // 3 of 4 available: 1.4 x 75 % >= 100 %, priority 0 keeps everything.
    assert_eq!(share(&[1]), 0);
    // 2 of 4: health 70 %, 30 % spills over (binomial sd ~46).
    let spilled = share(&[1, 2]);
    assert!((2800..3200).contains(&spilled), "{spilled}");
    // None left locally: everything goes to priority 1.
    assert_eq!(share(&[1, 2, 3, 4]), 10_000);
}

#[test]
fn a_locality_weight_shrinks_with_its_health() {
    let a = Assignment {
        overprovisioning_factor: Some(100),
        localities: vec![
            locality("a", Some(50), 0, vec![spec(1, 1), spec(2, 1)]),
            locality("b", Some(50), 0, vec![spec(3, 1), spec(4, 1)]),
        ],
    };
    let f = down(&[1]);
    let b = Balancer::build_with(&a, LbPolicy::RoundRobin, true, without(0.0, &f));
    let c = counts(&b, 9_000, |_| None);
    // a: 50 x 50 % against b: 50 x 100 %: a third to a's last host.
    assert!((2800..3200).contains(&c["10.0.0.2:80"]), "{c:?}");
}
