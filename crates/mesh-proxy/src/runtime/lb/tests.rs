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
