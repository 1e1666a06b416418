//! `meshctl proxy-config` against real proxies: the mesh-control binary
//! serves one workload's sidecars, a stock Envoy and a mesh-proxy, each in
//! its own network namespace (see `support/sidecars.rs`); every table must
//! name the `reviews` subsets, routes and endpoints, and be the same for
//! both proxies, whether reached as a local-mesh pod (through its
//! namespace), with `--admin` from inside the namespace, or from a saved
//! dump with `--file`.
//!
//! Needs root, `ip`, Envoy (ENVOY_BIN or `e2e/test.sh`'s .venv) and the
//! mesh-control and mesh-proxy binaries built next to meshctl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::Duration;

use mesh_test_support::netns::Namespace;
use meshctl::admin::Target;

#[path = "support/sidecars.rs"]
mod sidecars;

use sidecars::Mesh;

/// The cells of a table's rows (layout aside).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

fn has_row(table: &str, cells: &[&str]) -> bool {
    rows(table).iter().any(|r| r == cells)
}

#[test]
fn tables_name_the_config_and_agree_between_envoy_and_mesh_proxy() {
    let mesh = Mesh::start("");
    let reviews = "reviews.default.svc.cluster.local";
    let mut tables = Vec::new();
    for sidecar in [&mesh.envoy, &mesh.proxy] {
        let pod = sidecar.pod.as_str();
        let clusters = mesh.meshctl(&["proxy-config", "cluster", pod]);
        assert!(clusters.starts_with("SERVICE FQDN"), "{pod}:\n{clusters}");
        for subset in ["-", "v1", "v2"] {
            assert!(
                has_row(
                    &clusters,
                    &[
                        reviews,
                        "9080",
                        subset,
                        "outbound",
                        "EDS",
                        "reviews.default"
                    ]
                ),
                "{pod}: no reviews {subset} cluster in\n{clusters}"
            );
        }
        let v2 = mesh.meshctl(&["proxy-config", "cluster", pod, "--subset", "v2"]);
        assert_eq!(rows(&v2).len(), 1, "{pod}:\n{v2}");

        let listeners = mesh.meshctl(&["proxy-config", "listener", pod]);
        assert!(
            has_row(&listeners, &["0.0.0.0", "9080", "ALL", "Route: 9080"]),
            "{pod}:\n{listeners}"
        );
        assert!(
            listeners
                .lines()
                .any(|l| l.contains("15006") && l.contains("Cluster: inbound|9080||")),
            "{pod}:\n{listeners}"
        );

        let routes = mesh.meshctl(&["proxy-config", "route", pod, "--name", "9080"]);
        let vhost = format!("{reviews}:9080");
        let reviews_rows: Vec<Vec<String>> = rows(&routes)
            .into_iter()
            .filter(|r| r.get(1) == Some(&vhost))
            .collect();
        // Each route names the VirtualService it came from.
        assert!(
            reviews_rows.iter().all(|r| r[4] == "reviews.default"),
            "{pod}:\n{routes}"
        );
        let matches: Vec<String> = reviews_rows.iter().map(|r| r[3].clone()).collect();
        assert_eq!(
            matches,
            ["/v2*", "/*"],
            "{pod}: the VirtualService's routes in\n{routes}"
        );

        let endpoints = mesh.meshctl(&[
            "proxy-config",
            "endpoint",
            pod,
            "--cluster",
            &format!("outbound|9080|v1|{reviews}"),
        ]);
        assert_eq!(
            rows(&endpoints),
            [[
                "10.201.9.1:9080",
                "HEALTHY",
                "OK",
                &format!("outbound|9080|v1|{reviews}")
            ]],
            "{pod}:\n{endpoints}"
        );
        let all_endpoints = mesh.meshctl(&["proxy-config", "endpoint", pod]);
        for ip in ["10.201.9.1:9080", "10.201.9.2:9080"] {
            assert!(
                has_row(
                    &all_endpoints,
                    &[ip, "HEALTHY", "OK", &format!("outbound|9080||{reviews}")]
                ),
                "{pod}:\n{all_endpoints}"
            );
        }

        let secrets = mesh.meshctl(&["proxy-config", "secret", pod]);
        assert!(secrets.starts_with("RESOURCE NAME"), "{pod}:\n{secrets}");
        assert!(rows(&secrets).is_empty(), "no mTLS, no secrets:\n{secrets}");

        tables.push((pod.to_string(), clusters, listeners, routes, all_endpoints));
    }
    // The same rows on both, but for the control plane's own cluster:
    // Envoy's bootstrap declares `xds-grpc`, mesh-proxy dials
    // --xds-address without a cluster.
    let served = |table: &str| -> Vec<Vec<String>> {
        rows(table)
            .into_iter()
            .filter(|r| !r.iter().any(|c| c.contains("xds-grpc")))
            .map(|mut r| {
                // Known difference, reported: for a host EDS gave no health
                // (the static `inbound|` cluster), Envoy's /clusters says
                // HEALTHY and mesh-proxy's says UNKNOWN.
                if r.last().is_some_and(|c| c.starts_with("inbound|")) && r[1] == "UNKNOWN" {
                    r[1] = "HEALTHY".into();
                }
                r
            })
            .collect()
    };
    let (envoy, proxy) = (&tables[0], &tables[1]);
    assert!(envoy.1.contains("\nxds-grpc "), "{}", envoy.1);
    for (what, a, b) in [
        ("clusters", &envoy.1, &proxy.1),
        ("listeners", &envoy.2, &proxy.2),
        ("routes", &envoy.3, &proxy.3),
        ("endpoints", &envoy.4, &proxy.4),
    ] {
        assert_eq!(
            served(a),
            served(b),
            "{what} differ between {} and {}:\n{a}\n{b}",
            envoy.0,
            proxy.0
        );
    }

    // --admin from inside the namespace gives the same tables.
    for sidecar in [&mesh.envoy, &mesh.proxy] {
        let direct = mesh.meshctl_in(
            sidecar,
            &["proxy-config", "cluster", "--admin", "127.0.0.1:15000"],
        );
        let through_pod = &tables.iter().find(|t| t.0 == sidecar.pod).unwrap().1;
        assert_eq!(&direct, through_pod, "{} through --admin", sidecar.pod);
    }

    // A saved dump gives the same tables with --file.
    for (sidecar, table) in [(&mesh.envoy, &tables[0]), (&mesh.proxy, &tables[1])] {
        let dump = mesh.meshctl(&["proxy-config", "all", &sidecar.pod, "-o", "json"]);
        let file = mesh.scratch().join(format!("{}.json", sidecar.pod));
        std::fs::write(&file, &dump).unwrap();
        let file = file.to_str().unwrap();
        for (kind, expected) in [("cluster", &table.1), ("listener", &table.2)] {
            let from_file = mesh.meshctl(&["proxy-config", kind, "--file", file]);
            assert_eq!(&from_file, expected, "{kind} from {file}");
        }
        let routes = mesh.meshctl(&["proxy-config", "route", "--file", file, "--name", "9080"]);
        assert_eq!(routes, table.3);
        let no_clusters = mesh.meshctl_output(&["proxy-config", "endpoint", "--file", file]);
        assert!(!no_clusters.status.success());
        assert!(
            String::from_utf8_lossy(&no_clusters.stderr).contains("holds only a config dump"),
            "{}",
            String::from_utf8_lossy(&no_clusters.stderr)
        );
    }

    // -o json prints the Envoy resources themselves.
    let json = mesh.meshctl(&[
        "proxy-config",
        "cluster",
        &mesh.proxy.pod,
        "--fqdn",
        reviews,
        "-o",
        "json",
    ]);
    let clusters: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            format!("outbound|9080||{reviews}"),
            format!("outbound|9080|v1|{reviews}"),
            format!("outbound|9080|v2|{reviews}"),
        ]
    );
    let yaml = mesh.meshctl(&[
        "proxy-config",
        "route",
        &mesh.envoy.pod,
        "--name",
        "9080",
        "-o",
        "yaml",
    ]);
    assert!(yaml.contains("virtual_hosts:"), "{yaml}");

    // Bootstrap and log levels.
    for sidecar in [&mesh.envoy, &mesh.proxy] {
        let bootstrap = mesh.meshctl(&["proxy-config", "bootstrap", &sidecar.pod]);
        let bootstrap: serde_json::Value = serde_json::from_str(&bootstrap).unwrap();
        assert_eq!(
            bootstrap["bootstrap"]["node"]["id"],
            sidecar.node_id.as_str()
        );
        let levels = mesh.meshctl(&["proxy-config", "log", &sidecar.pod, "--level", "debug"]);
        assert!(levels.contains("debug"), "{}: {levels}", sidecar.pod);
        mesh.meshctl(&["proxy-config", "log", &sidecar.pod, "--level", "info"]);
    }
}

#[test]
fn an_unknown_pod_is_named() {
    let run_dir = tempfile::tempdir().unwrap();
    meshctl::local::State::default()
        .save(run_dir.path())
        .unwrap();
    let out = std::process::Command::new(sidecars::MESHCTL)
        .args(["proxy-config", "cluster", "nope", "--run-dir"])
        .arg(run_dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no pod \"nope\""), "{stderr}");
}

/// `Target::Netns` reaches a server that listens on loopback inside a
/// namespace, which the host cannot reach directly.
#[test]
fn netns_target_reaches_loopback_inside_the_namespace() {
    let ns = Namespace::create("pcnetns");
    let listener = ns.run_in(|| std::net::TcpListener::bind("127.0.0.1:15000").unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = stream.read(&mut buf).unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        let body = "inside the pod";
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request
    });
    let target = Target::Netns {
        netns: ns.name().to_string(),
        addr: "127.0.0.1:15000".parse().unwrap(),
    };
    let body = meshctl::admin::block_on(target.get("/config_dump?x=1"))
        .unwrap()
        .unwrap();
    assert_eq!(&body[..], b"inside the pod");
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /config_dump?x=1 HTTP/1.1\r\n"),
        "{request}"
    );

    // Once the server is gone, the error names the namespace.
    let err = meshctl::admin::block_on(target.get("/"))
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("in netns"), "{err:#}");
}
