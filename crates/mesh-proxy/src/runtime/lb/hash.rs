//! Hashing for consistent-hash load balancing: xxHash64 (what Envoy uses,
//! so a request hashes to the same value here as in Envoy) and the
//! evaluation of a route's hash policies over a request.

use std::net::IpAddr;
use std::time::Duration;

use crate::runtime::action::{HashKind, HashPolicy};
use crate::runtime::matcher::{RequestView, header_value, query_param};

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// What the hash policies produced for one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashOutcome {
    /// The hash, if any policy produced one.
    pub hash: Option<u64>,
    /// A cookie to set on the response (a cookie policy with a `ttl` whose
    /// cookie was absent).
    pub set_cookie: Option<String>,
}

/// The connection facts hash policies may read.
#[derive(Clone, Copy, Debug)]
pub struct HashContext {
    /// Downstream peer.
    pub source: std::net::SocketAddr,
    /// Downstream local (or original destination) address.
    pub destination: std::net::SocketAddr,
}

/// xxHash64 of `data` with `seed`.
pub fn xxhash64(data: &[u8], seed: u64) -> u64 {
    let round = |acc: u64, input: u64| {
        acc.wrapping_add(input.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    };
    let merge = |acc: u64, val: u64| (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4);
    let read64 = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        u64::from_le_bytes(a)
    };
    let len = data.len();
    let mut rest = data;
    let mut h = if len >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, read64(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len as u64);
    while rest.len() >= 8 {
        h ^= round(0, read64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&rest[..4]);
        h ^= u64::from(u32::from_le_bytes(a)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// Evaluates hash policies in order, combining the hashes they produce as
/// Envoy does (rotate left by one, xor), stopping after a terminal policy
/// that produced one.
pub fn evaluate(policies: &[HashPolicy], req: &RequestView<'_>, ctx: &HashContext) -> HashOutcome {
    let mut out = HashOutcome::default();
    for p in policies {
        let value = match &p.kind {
            HashKind::Header { name, rewrite } => header_value(req, name).map(|v| match rewrite {
                Some(r) => xxhash64(r.apply(&v).as_bytes(), 0),
                None => xxhash64(v.as_bytes(), 0),
            }),
            HashKind::Cookie { name, ttl, path } => match cookie(req, name) {
                Some(v) => Some(xxhash64(v.as_bytes(), 0)),
                None => ttl.map(|ttl| {
                    // Envoy's generated value: the hash of the connection's
                    // addresses, so one client keeps landing on one host.
                    let seed = format!("{}{}", ctx.source, ctx.destination);
                    let value = format!("{:016x}", xxhash64(seed.as_bytes(), 0));
                    out.set_cookie = Some(set_cookie_header(name, &value, path, &ttl));
                    xxhash64(value.as_bytes(), 0)
                }),
            },
            HashKind::SourceIp => Some(xxhash64(ip_string(ctx.source.ip()).as_bytes(), 0)),
            HashKind::QueryParameter(name) => req
                .path
                .split_once('?')
                .and_then(|(_, q)| query_param(q, name))
                .map(|v| xxhash64(v.as_bytes(), 0)),
        };
        if let Some(v) = value {
            out.hash = Some(match out.hash {
                Some(h) => h.rotate_left(1) ^ v,
                None => v,
            });
            if p.terminal {
                break;
            }
        }
    }
    out
}

fn ip_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(req: &RequestView<'_>, name: &str) -> Option<String> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_string())
        })
}

fn set_cookie_header(name: &str, value: &str, path: &str, ttl: &Duration) -> String {
    let mut s = format!("{name}=\"{value}\"");
    if !ttl.is_zero() {
        s.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !path.is_empty() {
        s.push_str(&format!("; Path={path}"));
    }
    s.push_str("; HttpOnly");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};
    use test_case::test_case;

    #[test_case(b"", 0xEF46_DB37_51D8_E999; "empty")]
    #[test_case(b"abc", 0x44BC_2CF5_AD77_0999; "short")]
    #[test_case(b"Nobody inspects the spammish repetition", 0xFBCE_A83C_8A37_8BF1; "long")]
    fn xxhash64_matches_reference_vectors(data: &[u8], expected: u64) {
        assert_eq!(xxhash64(data, 0), expected);
    }

    fn policies(kinds: Vec<(HashKind, bool)>) -> Vec<HashPolicy> {
        kinds
            .into_iter()
            .map(|(kind, terminal)| HashPolicy { kind, terminal })
            .collect()
    }

    fn eval(policies: &[HashPolicy], path: &str, headers: &[(&str, &str)]) -> HashOutcome {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = RequestView {
            method: &Method::GET,
            scheme: "http",
            authority: "a",
            path,
            headers: &map,
        };
        let ctx = HashContext {
            source: "10.0.0.7:5555".parse().unwrap(),
            destination: "10.0.0.1:80".parse().unwrap(),
        };
        evaluate(policies, &req, &ctx)
    }

    #[test]
    fn header_policy_hashes_the_value() {
        let p = policies(vec![(
            HashKind::Header {
                name: "x-user".into(),
                rewrite: None,
            },
            false,
        )]);
        assert_eq!(
            eval(&p, "/", &[("x-user", "abc")]).hash,
            Some(0x44BC_2CF5_AD77_0999)
        );
        assert_eq!(eval(&p, "/", &[]).hash, None);
    }

    #[test]
    fn source_ip_and_query_parameter() {
        let p = policies(vec![(HashKind::SourceIp, false)]);
        assert_eq!(eval(&p, "/", &[]).hash, Some(xxhash64(b"10.0.0.7", 0)));
        let p = policies(vec![(HashKind::QueryParameter("u".into()), false)]);
        assert_eq!(eval(&p, "/x?u=abc", &[]).hash, Some(0x44BC_2CF5_AD77_0999));
    }

    #[test]
    fn terminal_stops_and_later_policies_combine() {
        let header = HashKind::Header {
            name: "x-a".into(),
            rewrite: None,
        };
        let ip = HashKind::SourceIp;
        let a = xxhash64(b"abc", 0);
        let terminal = policies(vec![(header.clone(), true), (ip.clone(), false)]);
        assert_eq!(eval(&terminal, "/", &[("x-a", "abc")]).hash, Some(a));
        let combined = policies(vec![(header, false), (ip, false)]);
        assert_eq!(
            eval(&combined, "/", &[("x-a", "abc")]).hash,
            Some(a.rotate_left(1) ^ xxhash64(b"10.0.0.7", 0))
        );
    }

    #[test]
    fn cookie_present_is_hashed_and_absent_is_generated() {
        let p = policies(vec![(
            HashKind::Cookie {
                name: "sticky".into(),
                ttl: Some(Duration::from_secs(60)),
                path: "/".into(),
            },
            false,
        )]);
        let present = eval(&p, "/", &[("cookie", "a=1; sticky=abc")]);
        assert_eq!(present.hash, Some(0x44BC_2CF5_AD77_0999));
        assert_eq!(present.set_cookie, None);
        let absent = eval(&p, "/", &[]);
        let set = absent.set_cookie.unwrap();
        assert!(
            set.starts_with("sticky=\"") && set.contains("Max-Age=60") && set.contains("Path=/"),
            "{set}"
        );
        // The client sending the cookie back lands on the same hash.
        let value = set.split('"').nth(1).unwrap();
        let back = eval(&p, "/", &[("cookie", &format!("sticky={value}"))]);
        assert_eq!(back.hash, absent.hash);
    }

    #[test]
    fn cookie_without_ttl_and_absent_gives_no_hash() {
        let p = policies(vec![(
            HashKind::Cookie {
                name: "s".into(),
                ttl: None,
                path: String::new(),
            },
            false,
        )]);
        assert_eq!(eval(&p, "/", &[]), HashOutcome::default());
    }
}
