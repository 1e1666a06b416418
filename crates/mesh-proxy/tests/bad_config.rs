//! Property test of the xDS-to-runtime compiler (proptest; cargo-fuzz
//! needs a nightly toolchain): arbitrary well-typed Listener,
//! RouteConfiguration, Cluster and ClusterLoadAssignment messages, with
//! random strings where regexes, domains, paths and addresses go, random
//! numbers for weights, ports, sizes and timeouts, and random enum values,
//! go through `runtime::check` and `runtime::compile` (as the xDS client
//! sends them) and the compiled runtime is used as the request path uses
//! it. Each resource is refused with an error or compiled; nothing panics.
//!
//! Messages are generated as proto3 JSON following the schema, decoded by
//! the same code that reads bootstrap files, and then have enum fields
//! overwritten with arbitrary numbers (proto3 enums are open: any `i32`
//! can arrive on the wire).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use mesh_proxy::resources::{Origin, Resource, Resources};
use mesh_proxy::runtime::{self, listener::ConnectionInfo, matcher::RequestView};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Value, json};

fn decode<M: prost::Message + prost::Name + Default>(v: &Value) -> M {
    mesh_api::xds::json::from_json(v).unwrap_or_else(|e| panic!("generator bug: {e}\n{v:#}"))
}

// --- values ---

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("*".to_string()),
        "[a-z0-9.*:/-]{1,20}",
        "\\*?[a-z.]{0,10}\\*?",
        "\\PC{0,16}",
    ]
    .boxed()
}

fn regex() -> BoxedStrategy<String> {
    prop_oneof![
        Just("(a+)+$".to_string()),
        Just("^/api/(v[0-9]+)/(.*)$".to_string()),
        "[a-z^$.*+?()\\[\\]{}|\\\\0-9]{0,24}",
        "\\PC{0,12}",
    ]
    .boxed()
}

fn duration() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!("0s")),
        (-5i64..100_000, 0u32..1_000_000_000).prop_map(|(s, n)| json!(format!("{s}.{n:09}s"))),
        Just(json!("315576000000s")),
    ]
    .boxed()
}

fn address() -> BoxedStrategy<Value> {
    let host = prop_oneof![
        Just("127.0.0.1".to_string()),
        Just("::1".to_string()),
        Just("0.0.0.0".to_string()),
        "[0-9.]{1,15}",
        "[a-z.]{1,12}",
        "\\PC{0,10}",
    ];
    let valid_host = prop_oneof![
        Just("127.0.0.1".to_string()),
        Just("0.0.0.0".to_string()),
        Just("::".to_string())
    ];
    prop_oneof![
        3 => (valid_host, 0u32..65_536),
        1 => (host, any::<u32>()),
    ]
    .prop_map(|(h, p)| json!({"socketAddress": {"address": h, "portValue": p}}))
    .boxed()
}

fn string_matcher() -> BoxedStrategy<Value> {
    (
        prop_oneof![
            text().prop_map(|t| json!({"exact": t})),
            text().prop_map(|t| json!({"prefix": t})),
            text().prop_map(|t| json!({"suffix": t})),
            text().prop_map(|t| json!({"contains": t})),
            regex().prop_map(|r| json!({"safeRegex": {"regex": r}})),
        ],
        any::<bool>(),
    )
        .prop_map(|(mut m, ignore_case)| {
            m["ignoreCase"] = json!(ignore_case);
            m
        })
        .boxed()
}

fn header_matcher() -> BoxedStrategy<Value> {
    let name = prop_oneof![
        Just(":authority".to_string()),
        Just(":method".to_string()),
        "[a-z-]{0,12}",
        "\\PC{0,6}"
    ];
    let rule = prop_oneof![
        string_matcher().prop_map(|m| json!({"stringMatch": m})),
        any::<bool>().prop_map(|b| json!({"presentMatch": b})),
        regex().prop_map(|r| json!({"safeRegexMatch": {"regex": r}})),
        (any::<i64>(), any::<i64>()).prop_map(
            |(a, b)| json!({"rangeMatch": {"start": a.to_string(), "end": b.to_string()}})
        ),
    ];
    (name, rule, any::<bool>())
        .prop_map(|(name, mut m, invert)| {
            m["name"] = json!(name);
            m["invertMatch"] = json!(invert);
            m
        })
        .boxed()
}

// --- routes ---

fn route_match() -> BoxedStrategy<Value> {
    let path = prop_oneof![
        text().prop_map(|t| json!({"prefix": t})),
        text().prop_map(|t| json!({"path": t})),
        regex().prop_map(|r| json!({"safeRegex": {"regex": r}})),
        text().prop_map(|t| json!({"pathSeparatedPrefix": t})),
    ];
    let query =
        ("[a-z]{0,6}", string_matcher()).prop_map(|(n, m)| json!({"name": n, "stringMatch": m}));
    (
        path,
        vec(header_matcher(), 0..3),
        vec(query, 0..2),
        any::<bool>(),
    )
        .prop_map(|(mut m, headers, query, case)| {
            m["headers"] = json!(headers);
            m["queryParameters"] = json!(query);
            m["caseSensitive"] = json!(case);
            m
        })
        .boxed()
}

fn forward() -> BoxedStrategy<Value> {
    let target = prop_oneof![
        text().prop_map(|c| json!({"cluster": c})),
        vec((text(), any::<u32>()), 0..4).prop_map(|w| json!({"weightedClusters": {"clusters":
            w.into_iter().map(|(n, weight)| json!({"name": n, "weight": weight})).collect::<Vec<_>>()}})),
        "[a-z-]{0,10}".prop_map(|h| json!({"clusterHeader": h})),
    ];
    let retry_on = prop_oneof![
        Just("5xx,connect-failure,retriable-status-codes".to_string()),
        "[a-z0-9,-]{0,30}"
    ];
    let retry = (retry_on, any::<u32>(), duration(), vec(any::<u32>(), 0..3)).prop_map(
        |(on, n, per_try, codes)| {
            json!({"retryOn": on, "numRetries": n, "perTryTimeout": per_try, "retriableStatusCodes": codes})
        },
    );
    let hash = prop_oneof![
        "[a-z-]{0,8}".prop_map(|h| json!({"header": {"headerName": h}})),
        ("[a-z]{0,6}", duration()).prop_map(|(n, ttl)| json!({"cookie": {"name": n, "ttl": ttl}})),
        Just(json!({"connectionProperties": {"sourceIp": true}})),
        "[a-z]{0,6}".prop_map(|n| json!({"queryParameter": {"name": n}})),
    ];
    let mirror = (text(), any::<u32>(), 0i32..4).prop_map(|(c, n, d)| {
        json!({"cluster": c, "runtimeFraction": {"defaultValue": {"numerator": n, "denominator": d}}})
    });
    (
        target,
        duration(),
        prop::option::of(text()),
        prop::option::of((regex(), text())),
        prop::option::of(retry),
        vec(hash, 0..2),
        vec(mirror, 0..2),
        prop::option::of(text()),
    )
        .prop_map(
            |(mut r, timeout, prefix, regex_rewrite, retry, hash, mirrors, host)| {
                r["timeout"] = timeout;
                if let Some(p) = prefix {
                    r["prefixRewrite"] = json!(p);
                } else if let Some((pattern, substitution)) = regex_rewrite {
                    r["regexRewrite"] =
                        json!({"pattern": {"regex": pattern}, "substitution": substitution});
                }
                if let Some(retry) = retry {
                    r["retryPolicy"] = retry;
                }
                r["hashPolicy"] = json!(hash);
                r["requestMirrorPolicies"] = json!(mirrors);
                if let Some(h) = host {
                    r["hostRewriteLiteral"] = json!(h);
                }
                json!({"route": r})
            },
        )
        .boxed()
}

fn action() -> BoxedStrategy<Value> {
    let redirect = (
        prop::option::of(text()),
        prop_oneof![
            text().prop_map(|p| json!({"pathRedirect": p})),
            text().prop_map(|p| json!({"prefixRewrite": p}))
        ],
        prop_oneof![
            Just("MOVED_PERMANENTLY"),
            Just("FOUND"),
            Just("SEE_OTHER"),
            Just("TEMPORARY_REDIRECT"),
            Just("PERMANENT_REDIRECT")
        ],
        0u32..70_000,
        any::<bool>(),
    )
        .prop_map(|(host, mut r, code, port, strip)| {
            if let Some(h) = host {
                r["hostRedirect"] = json!(h);
            }
            r["responseCode"] = json!(code);
            r["portRedirect"] = json!(port);
            r["stripQuery"] = json!(strip);
            json!({"redirect": r})
        });
    let direct =
        (any::<u32>(), prop::option::of("\\PC{0,20}")).prop_map(|(status, body)| match body {
            Some(b) => json!({"directResponse": {"status": status, "body": {"inlineString": b}}}),
            None => json!({"directResponse": {"status": status}}),
        });
    prop_oneof![4 => forward(), 1 => redirect, 1 => direct].boxed()
}

fn route_configuration() -> BoxedStrategy<Value> {
    let route = (route_match(), action(), "[a-z]{0,6}").prop_map(|(m, mut a, name)| {
        a["match"] = m;
        a["name"] = json!(name);
        a
    });
    let vhost = ("[a-z]{0,8}", vec(text(), 0..4), vec(route, 0..4), 0i32..4).prop_map(
        |(name, domains, routes, require_tls)| {
            json!({"name": name, "domains": domains, "routes": routes, "requireTls": require_tls})
        },
    );
    ("[a-z0-9]{0,4}", vec(vhost, 0..3), any::<bool>())
        .prop_map(|(name, vhosts, ignore_port)| {
            json!({"name": name, "virtualHosts": vhosts, "ignorePortInHostMatching": ignore_port})
        })
        .boxed()
}

// --- clusters and endpoints ---

fn assignment() -> BoxedStrategy<Value> {
    let endpoint = (address(), any::<u32>(), 0i32..7).prop_map(|(a, w, health)| {
        json!({"endpoint": {"address": a}, "loadBalancingWeight": w, "healthStatus": health})
    });
    let locality = (vec(endpoint, 0..4), 0u32..4, any::<u32>(), "[a-z]{0,4}").prop_map(
        |(eps, priority, weight, zone)| {
            json!({"lbEndpoints": eps, "priority": priority, "loadBalancingWeight": weight,
                   "locality": {"zone": zone}})
        },
    );
    ("[a-z|0-9]{0,10}", vec(locality, 0..3))
        .prop_map(|(name, localities)| json!({"clusterName": name, "endpoints": localities}))
        .boxed()
}

/// Maglev table sizes, primes and not: non-primes must be refused (as
/// Envoy does), never loop.
const PRIMES: [u64; 7] = [2, 3, 4, 251, 1000, 65537, 5_000_011];

fn cluster() -> BoxedStrategy<Value> {
    let kind = prop_oneof![
        Just("STATIC"),
        Just("STRICT_DNS"),
        Just("LOGICAL_DNS"),
        Just("EDS"),
        Just("ORIGINAL_DST")
    ];
    let lb = prop_oneof![
        Just(json!({"lbPolicy": "ROUND_ROBIN"})),
        // Any count, huge ones included: picks are capped at the endpoints.
        any::<u32>().prop_map(|c| json!({"lbPolicy": "LEAST_REQUEST", "leastRequestLbConfig": {"choiceCount": c}})),
        Just(json!({"lbPolicy": "RANDOM"})),
        (0u64..50_000, 0u64..70_000).prop_map(|(min, max)| json!({"lbPolicy": "RING_HASH",
            "ringHashLbConfig": {"minimumRingSize": min.to_string(), "maximumRingSize": max.to_string()}})),
        prop::sample::select(&PRIMES[..]).prop_map(|t| json!({"lbPolicy": "MAGLEV", "maglevLbConfig": {"tableSize": t.to_string()}})),
        Just(json!({"lbPolicy": "CLUSTER_PROVIDED"})),
    ];
    let thresholds = (any::<u32>(), any::<u32>(), any::<u32>())
        .prop_map(|(c, r, t)| json!({"thresholds": [{"maxConnections": c, "maxRequests": r, "maxRetries": t}]}));
    (
        text(),
        kind,
        duration(),
        lb,
        prop::option::of(thresholds),
        prop::option::of(assignment()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(name, kind, timeout, mut c, breakers, load, locality_weighted, http2)| {
                c["name"] = json!(name);
                c["type"] = json!(kind);
                c["connectTimeout"] = timeout;
                if let Some(b) = breakers {
                    c["circuitBreakers"] = b;
                }
                if let Some(l) = load {
                    c["loadAssignment"] = l;
                }
                if kind == "EDS" {
                    c["edsClusterConfig"] = json!({"edsConfig": {"ads": {}}, "serviceName": name});
                }
                if locality_weighted {
                    c["commonLbConfig"] = json!({"localityWeightedLbConfig": {}});
                }
                if http2 {
                    c["http2ProtocolOptions"] = json!({});
                }
                c
            },
        )
        .boxed()
}

// --- listeners ---

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

fn http_filter() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!({"name": "envoy.filters.http.cors", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}})),
        (any::<u32>(), duration()).prop_map(|(n, d)| json!({"name": "envoy.filters.http.fault", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": {"fixedDelay": d, "percentage": {"numerator": n}},
            "abort": {"httpStatus": n % 700, "percentage": {"numerator": n}}}})),
        "[a-z.]{0,12}".prop_map(|n| json!({"name": n})),
        Just(json!({"name": "istio.stats"})),
    ]
    .boxed()
}

fn terminal_filter() -> BoxedStrategy<Value> {
    let routes = prop_oneof![
        "[a-z0-9]{0,4}"
            .prop_map(|n| json!({"rds": {"routeConfigName": n, "configSource": {"ads": {}}}})),
        route_configuration().prop_map(|r| json!({"routeConfig": r})),
    ];
    let hcm = (
        routes,
        prop_oneof![Just("AUTO"), Just("HTTP1"), Just("HTTP2"), Just("HTTP3")],
        vec(http_filter(), 0..3),
        prop::bool::weighted(0.9),
        any::<u32>(),
        duration(),
    )
        .prop_map(|(mut h, codec, mut filters, router, kb, timeout)| {
            if router {
                filters.push(json!({"name": "envoy.filters.http.router", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
            }
            h["@type"] = json!(HCM);
            h["statPrefix"] = json!("fuzz");
            h["codecType"] = json!(codec);
            h["httpFilters"] = json!(filters);
            h["maxRequestHeadersKb"] = json!(kb);
            h["requestHeadersTimeout"] = timeout;
            json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": h})
        });
    let tcp = prop_oneof![
        text().prop_map(|c| json!({"cluster": c})),
        vec((text(), any::<u32>()), 0..3).prop_map(|w| json!({"weightedClusters": {"clusters":
            w.into_iter().map(|(n, weight)| json!({"name": n, "weight": weight})).collect::<Vec<_>>()}})),
    ]
    .prop_map(|mut t| {
        t["@type"] = json!(TCP_PROXY);
        t["statPrefix"] = json!("fuzz");
        json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": t})
    });
    prop_oneof![hcm, tcp].boxed()
}

fn listener() -> BoxedStrategy<Value> {
    let prefix = prop_oneof![
        3 => Just("10.0.0.0".to_string()),
        3 => Just("::".to_string()),
        1 => "[0-9a-f.:]{0,15}",
    ];
    let range = (prefix, prop_oneof![3 => 0u32..129, 1 => any::<u32>()])
        .prop_map(|(a, l)| json!({"addressPrefix": a, "prefixLen": l}));
    // Mostly valid ports, so chains get past their match and the filters
    // behind them are compiled too.
    let port = || prop_oneof![4 => 1u32..65_536, 1 => any::<u32>()];
    let chain_match = (
        prop::option::of(port()),
        vec(range, 0..2),
        vec(text(), 0..2),
        prop::option::of(prop_oneof![
            Just("tls".to_string()),
            Just("raw_buffer".to_string()),
            text()
        ]),
        vec(
            prop_oneof![
                Just("http/1.1".to_string()),
                Just("h2c".to_string()),
                text()
            ],
            0..2,
        ),
        vec(port(), 0..2),
    )
        .prop_map(|(port, ranges, names, transport, alpn, source_ports)| {
            let mut m = json!({"prefixRanges": ranges, "serverNames": names,
                "applicationProtocols": alpn, "sourcePorts": source_ports});
            if let Some(p) = port {
                m["destinationPort"] = json!(p);
            }
            if let Some(t) = transport {
                m["transportProtocol"] = json!(t);
            }
            m
        });
    let chain = (chain_match, terminal_filter(), "[a-z]{0,4}")
        .prop_map(|(m, f, name)| json!({"name": name, "filterChainMatch": m, "filters": [f]}));
    let listener_filter = prop_oneof![
        3 => Just("envoy.filters.listener.tls_inspector".to_string()),
        3 => Just("envoy.filters.listener.http_inspector".to_string()),
        3 => Just("envoy.filters.listener.original_dst".to_string()),
        1 => "[a-z.]{0,10}",
    ];
    (
        text(),
        address(),
        vec(chain, 1..3),
        vec(listener_filter, 0..2),
        duration(),
        any::<bool>(),
    )
        .prop_map(|(name, address, chains, filters, timeout, original_dst)| {
            json!({"name": name, "address": address, "filterChains": chains,
                "listenerFilters": filters.into_iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
                "listenerFiltersTimeout": timeout, "useOriginalDst": original_dst, "bindToPort": false})
        })
        .boxed()
}

/// A request as the request path sees it: host, path, headers and the
/// consistent-hash value.
type Req = (String, String, Vec<(String, String)>, u64);

fn request() -> BoxedStrategy<Req> {
    (
        prop_oneof![Just("reviews:9080".to_string()), text()],
        prop_oneof![Just("/api/v1/x?y=1".to_string()), "/[!-~]{0,30}"],
        vec(("[a-z-]{1,8}", "[ -~]{0,12}"), 0..3),
        any::<u64>(),
    )
        .boxed()
}

/// Checks every resource as the xDS client does, compiles those that pass,
/// and uses the result as the request path does.
fn compile_and_use(list: Vec<Resource>, req: &Req) {
    let mut resources = Resources::default();
    for resource in list {
        if runtime::check(&resource).is_ok() {
            resources.insert(resource, Origin::Static);
        }
    }
    let rt = runtime::compile(&resources);
    let (host, path, headers, hash) = req;
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    let view = RequestView {
        method: &Method::GET,
        scheme: "http",
        authority: host,
        path,
        headers: &map,
    };
    for table in rt.routes.values() {
        if let Some(vh) = table.virtual_host(host) {
            let _ = vh.route(&view, None);
        }
    }
    for cluster in rt.clusters.values() {
        let _ = cluster.balancer.pick(Some(*hash));
        let _ = cluster.balancer.pick(None);
    }
    let destination = "10.0.0.1:9080".parse().unwrap();
    let alpn = ["http/1.1".to_string()];
    for l in rt.listeners.values() {
        let _ = l.needs_tls_inspection(destination);
        let _ = l.select(&ConnectionInfo {
            destination,
            source: "10.0.0.2:40000".parse().unwrap(),
            server_name: Some(host),
            transport_protocol: "raw_buffer",
            application_protocols: &alpn,
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary resources are compiled or refused; nothing panics.
    #[test]
    fn arbitrary_resources_compile_or_are_refused(
        routes in vec(route_configuration(), 0..3),
        clusters in vec((cluster(), any::<i32>(), any::<i32>(), any::<bool>()), 0..3),
        listeners in vec((listener(), any::<i32>()), 0..2),
        assignments in vec(assignment(), 0..2),
        req in request(),
    ) {
        let mut list = Vec::new();
        for r in &routes {
            list.push(Resource::Route(decode::<RouteConfiguration>(r)));
        }
        for (c, kind, lb, scramble) in &clusters {
            let mut c: Cluster = decode(c);
            if *scramble {
                // Open enums: any number can arrive on the wire.
                c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(*kind));
                c.lb_policy = *lb;
            }
            list.push(Resource::Cluster(Box::new(c)));
        }
        for (l, direction) in &listeners {
            let mut l: Listener = decode(l);
            l.traffic_direction = *direction;
            list.push(Resource::Listener(Box::new(l)));
        }
        for a in &assignments {
            list.push(Resource::Endpoint(decode::<ClusterLoadAssignment>(a)));
        }
        compile_and_use(list, &req);
    }
}

/// Envoy refuses a Maglev `table_size` that is not prime, and so does the
/// proxy: building the table needs `skip` coprime with the size, and a
/// composite size made it loop forever (found by the property test).
#[test]
fn a_non_prime_maglev_table_size_is_refused_or_compiles() {
    // With these two endpoints both permutations cycle through the same
    // two of the four slots.
    let endpoints: Vec<Value> = ["10.0.0.2", "10.0.0.102"]
        .iter()
        .map(|a| json!({"endpoint": {"address": {"socketAddress": {"address": a, "portValue": 80}}}}))
        .collect();
    let c: Cluster = decode(&json!({"name": "m", "type": "STATIC", "lbPolicy": "MAGLEV",
        "maglevLbConfig": {"tableSize": "4"},
        "loadAssignment": {"clusterName": "m", "endpoints": [{"lbEndpoints": endpoints}]}}));
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        compile_and_use(
            vec![Resource::Cluster(Box::new(c))],
            &(String::new(), "/".into(), vec![], 1),
        );
        let _ = done.send(());
    });
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_ok(),
        "compiling a MAGLEV cluster with table_size 4 did not finish"
    );
}

/// A LEAST_REQUEST `choice_count` of a billion made every pick draw a
/// billion candidates (found by the property test); the choices are now
/// capped at the number of endpoints, as Envoy scans them all then.
#[test]
fn a_huge_least_request_choice_count_picks_in_bounded_time() {
    let c: Cluster = decode(
        &json!({"name": "lr", "type": "STATIC", "lbPolicy": "LEAST_REQUEST",
        "leastRequestLbConfig": {"choiceCount": 1_000_000_000u32},
        "loadAssignment": {"clusterName": "lr", "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 80}}}},
            {"endpoint": {"address": {"socketAddress": {"address": "10.0.0.2", "portValue": 80}}}}]}]}}),
    );
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        compile_and_use(
            vec![Resource::Cluster(Box::new(c))],
            &(String::new(), "/".into(), vec![], 1),
        );
        let _ = done.send(());
    });
    assert!(
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_ok(),
        "a pick with choice_count 10^9 did not finish"
    );
}
