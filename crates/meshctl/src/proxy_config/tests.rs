//! The tables rendered from real translated config: the control plane's
//! golden outputs (camelCase proto3 JSON), wrapped in a config dump the way
//! a proxy prints it.

use serde_json::{Value, json};

use super::*;

/// `crates/mesh-control/tests/golden/<case>/<proxy>.json` as a config dump.
fn golden(case: &str, proxy: &str) -> ConfigDump {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-control/tests/golden")
        .join(case)
        .join(format!("{proxy}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let translated: Value = serde_json::from_str(&text).unwrap();
    let list = |key: &str, ty: &str| -> Vec<Value> {
        translated[key]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut r| {
                r["@type"] = json!(format!("type.googleapis.com/{ty}"));
                r
            })
            .collect()
    };
    let admin = |kind: &str| format!("type.googleapis.com/envoy.admin.v3.{kind}");
    let clusters: Vec<Value> = list("clusters", "envoy.config.cluster.v3.Cluster")
        .into_iter()
        .map(|c| json!({"version_info": "1", "cluster": c}))
        .collect();
    let listeners: Vec<Value> = list("listeners", "envoy.config.listener.v3.Listener")
        .into_iter()
        .map(|l| json!({"name": l["name"], "active_state": {"version_info": "1", "listener": l}}))
        .collect();
    let routes: Vec<Value> = list("routes", "envoy.config.route.v3.RouteConfiguration")
        .into_iter()
        .map(|r| json!({"version_info": "1", "route_config": r}))
        .collect();
    ConfigDump::from_value(json!({"configs": [
        {"@type": admin("ClustersConfigDump"), "dynamic_active_clusters": clusters},
        {"@type": admin("ListenersConfigDump"), "dynamic_listeners": listeners},
        {"@type": admin("RoutesConfigDump"), "dynamic_route_configs": routes},
        {"@type": admin("SecretsConfigDump")}
    ]}))
    .unwrap()
}

fn rows(table: &table::Table) -> Vec<Vec<&str>> {
    table
        .rows
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect()
}

/// Puts `metadata.filter_metadata.istio.config` on the resources `pick`
/// returns, as istiod does.
fn with_istio_config(dump: &ConfigDump, section: &str, pick: &[&str], config: &str) -> ConfigDump {
    let mut value = dump.to_value();
    fn visit(v: &mut Value, pick: &[&str], config: &str) {
        match v {
            Value::Object(map) => {
                let hit = map
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| pick.contains(&n));
                if hit {
                    map.insert(
                        "metadata".into(),
                        json!({"filter_metadata": {"istio": {"config": config}}}),
                    );
                }
                map.values_mut().for_each(|v| visit(v, pick, config));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| visit(v, pick, config)),
            _ => {}
        }
    }
    for c in value["configs"].as_array_mut().unwrap() {
        if c["@type"].as_str().unwrap().ends_with(section) {
            visit(c, pick, config);
        }
    }
    ConfigDump::from_value(value).unwrap()
}

#[test]
fn cluster_table_splits_istio_cluster_names() {
    let dump = golden("clusters_subsets_and_policies", "productpage-v1");
    let table = cluster::table(&dump.clusters(), &Default::default());
    assert_eq!(
        table.header,
        [
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE"
        ]
    );
    let rows = rows(&table);
    for row in [
        ["", "9080", "-", "inbound", "STATIC", "-"],
        ["BlackHoleCluster", "-", "-", "-", "STATIC", "-"],
        ["PassthroughCluster", "-", "-", "-", "ORIGINAL_DST", "-"],
        [
            "reviews.default.svc.cluster.local",
            "9080",
            "-",
            "outbound",
            "EDS",
            "reviews.default",
        ],
        [
            "reviews.default.svc.cluster.local",
            "9080",
            "v1",
            "outbound",
            "EDS",
            "reviews.default",
        ],
        [
            "reviews.default.svc.cluster.local",
            "9080",
            "v2",
            "outbound",
            "EDS",
            "reviews.default",
        ],
    ] {
        assert!(
            rows.contains(&row.to_vec()),
            "{row:?} missing from\n{}",
            table.render()
        );
    }
    // istioctl's order: service, then subset, then port.
    let reviews: Vec<&str> = rows
        .iter()
        .filter(|r| r[0].starts_with("reviews"))
        .map(|r| r[2])
        .collect();
    assert_eq!(reviews, ["-", "v1", "v2"]);

    let v2 = ClusterFilter {
        subset: Some("v2".into()),
        ..Default::default()
    };
    assert_eq!(cluster::table(&dump.clusters(), &v2).rows.len(), 1);
    let inbound = ClusterFilter {
        direction: Some("inbound".into()),
        ..Default::default()
    };
    assert_eq!(cluster::table(&dump.clusters(), &inbound).rows.len(), 1);
    let ratings_9090 = ClusterFilter {
        fqdn: Some("ratings.default.svc.cluster.local".into()),
        port: Some(9090),
        ..Default::default()
    };
    assert_eq!(
        cluster::table(&dump.clusters(), &ratings_9090).rows.len(),
        2
    );
}

#[test]
fn destination_rule_comes_from_cluster_metadata() {
    let dump = with_istio_config(
        &golden("clusters_subsets_and_policies", "productpage-v1"),
        "ClustersConfigDump",
        &[
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
        ],
        "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews",
    );
    let table = cluster::table(&dump.clusters(), &Default::default());
    let rules: Vec<(&str, &str)> = rows(&table)
        .into_iter()
        .filter(|r| r[0].starts_with("reviews"))
        .map(|r| (r[2], r[5]))
        .collect();
    assert_eq!(
        rules,
        [
            ("-", "reviews.default"),
            ("v1", "reviews.default"),
            ("v2", "reviews.default")
        ]
    );
}

#[test]
fn listener_table_has_a_row_per_filter_chain() {
    let dump = golden("clusters_subsets_and_policies", "productpage-v1");
    let table = listener::table(&dump.listeners(), &Default::default());
    assert_eq!(table.header, ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]);
    let rows = rows(&table);
    for row in [
        [
            "10.96.0.11",
            "8080",
            "App: http/1.1,h2c",
            "Route: ratings.default.svc.cluster.local:8080",
        ],
        [
            "10.96.0.11",
            "8080",
            "ALL",
            "Cluster: outbound|8080||ratings.default.svc.cluster.local",
        ],
        ["0.0.0.0", "9080", "ALL", "Route: 9080"],
        ["0.0.0.0", "15001", "ALL", "PassthroughCluster"],
        // PERMISSIVE by default: each inbound port takes mesh mTLS and
        // plaintext, as istioctl shows Istio's chains.
        [
            "0.0.0.0",
            "15006",
            "Trans: tls; App: istio-peer-exchange,istio,istio-http/1.0,istio-http/1.1,istio-h2; Addr: *:9080",
            "Cluster: inbound|9080||",
        ],
        [
            "0.0.0.0",
            "15006",
            "Trans: raw_buffer; Addr: *:9080",
            "Cluster: inbound|9080||",
        ],
        [
            "0.0.0.0",
            "15006",
            "Trans: raw_buffer",
            "InboundPassthroughCluster",
        ],
    ] {
        assert!(
            rows.contains(&row.to_vec()),
            "{row:?} missing from\n{}",
            table.render()
        );
    }
    let ports: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    let mut sorted = ports.clone();
    sorted.sort_by_key(|p| p.parse::<u32>().unwrap());
    assert_eq!(ports, sorted, "listeners by port");
    // One space between columns, as istioctl's listener table.
    assert!(
        table.render().starts_with("ADDRESSES  PORT  MATCH "),
        "{}",
        table.render()
    );

    let inbound = ListenerFilter {
        port: Some(15006),
        ..Default::default()
    };
    // Three passthrough chains (mesh TLS with and without ALPN, plaintext)
    // and a TLS and a plaintext chain for port 9080.
    assert_eq!(listener::table(&dump.listeners(), &inbound).rows.len(), 5);
}

#[test]
fn route_table_shows_matches_and_virtual_services() {
    let plain = golden("routes_matches_and_weights", "productpage-v1");
    let dump = with_istio_config(
        &plain,
        "RoutesConfigDump",
        &["reviews-exact"],
        "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews",
    );
    let table = route::table(&dump.routes(), &Default::default());
    assert_eq!(
        table.header,
        ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]
    );
    let rows = rows(&table);
    let reviews: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r[1] == "reviews.default.svc.cluster.local:9080")
        .map(|r| (r[3], r[4]))
        .collect();
    // Every route names its VirtualService (the translator records it).
    assert!(
        reviews.contains(&("/exact", "reviews.default")),
        "{reviews:?}"
    );
    assert!(
        reviews.contains(&("regex /api/v[0-9]+", "reviews.default")),
        "{reviews:?}"
    );
    assert!(
        rows.iter().all(|r| r[1] != "allow_any"),
        "passthrough left out"
    );
    assert!(
        rows.iter()
            .any(|r| r[2] == "reviews, reviews.default + 1 more..."),
        "{}",
        table.render()
    );
    let named = RouteFilter {
        name: Some("9080".into()),
    };
    assert!(
        route::table(&dump.routes(), &named)
            .rows
            .iter()
            .all(|r| r[0] == "9080")
    );
}

#[test]
fn json_output_is_the_envoy_resources() {
    let dump = golden("clusters_subsets_and_policies", "productpage-v1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.json");
    std::fs::write(&file, dump.to_value().to_string()).unwrap();
    let target = crate::admin::Target::File(file);
    let run = |command: Command| {
        let mut out = Vec::new();
        block_on(execute(&command, &target, &mut out))
            .unwrap()
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    let common = |output| Common {
        target: TargetArgs {
            pod: None,
            admin: None,
            file: None,
            run_dir: crate::local::RunDirArg { run_dir: None },
            kube: crate::kube_target::KubeTargetArgs {
                use_kube: false,
                namespace: None,
                kube: crate::install::KubeArgs {
                    kubeconfig: None,
                    context: None,
                },
            },
        },
        output,
    };
    let json_text = run(Command::Cluster {
        common: common(Output::Json),
        filter: ClusterFilter {
            fqdn: Some("reviews".into()),
            ..Default::default()
        },
    });
    let clusters: Vec<Value> = serde_json::from_str(&json_text).unwrap();
    assert_eq!(clusters.len(), 3);
    assert_eq!(
        clusters[1]["name"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert!(
        clusters[1].get("@type").is_none(),
        "unwrapped like istioctl"
    );

    let yaml = run(Command::Route {
        common: common(Output::Yaml),
        filter: RouteFilter {
            name: Some("9090".into()),
        },
    });
    assert!(
        yaml.contains("name: '9090'") || yaml.contains("name: \"9090\""),
        "{yaml}"
    );

    let short = run(Command::Cluster {
        common: common(Output::Short),
        filter: Default::default(),
    });
    assert_eq!(
        short,
        cluster::table(&dump.clusters(), &Default::default()).render()
    );
    let all = run(Command::All {
        common: common(Output::Short),
    });
    assert!(
        all.contains("SERVICE FQDN") && all.contains("ADDRESSES") && all.contains("VHOST NAME")
    );
    assert!(all.contains("RESOURCE NAME"), "{all}");
}
