//! `meshctl proxy-status` against the real mesh-control binary and two
//! sidecars of one workload (a stock Envoy and a mesh-proxy, see
//! `support/sidecars.rs`): the table lists both SYNCED; the diff of one
//! proxy against what mesh-control serves it matches; a proxy that is
//! behind (a dump saved before a config change) is reported resource by
//! resource, with a diff of what changed.
//!
//! Needs root, `ip`, Envoy (ENVOY_BIN or `e2e/test.sh`'s .venv) and the
//! mesh-control and mesh-proxy binaries built next to meshctl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/sidecars.rs"]
mod sidecars;

use sidecars::Mesh;

const REVIEWS: &str = "reviews.default.svc.cluster.local";

#[test]
fn proxy_status_lists_sync_state_and_diffs_config() {
    let mesh = Mesh::start("");

    // The table: both proxies, every type SYNCED, ECDS unused.
    let table = mesh.meshctl(&["proxy-status"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CLUSTER",
            "CDS",
            "LDS",
            "EDS",
            "RDS",
            "ECDS",
            "CONTROL PLANE",
            "VERSION"
        ]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let monitoring = mesh.monitoring.to_string();
    for sidecar in [&mesh.envoy, &mesh.proxy] {
        let name = format!("{}.default", sidecar.pod);
        let row = rows
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"));
        assert_eq!(
            &row[1..8],
            [
                "Kubernetes",
                "SYNCED",
                "SYNCED",
                "SYNCED",
                "SYNCED",
                "IGNORED",
                monitoring.as_str()
            ],
            "{table}"
        );
    }
    // --control-plane reaches it without the run state.
    let direct = mesh.meshctl(&[
        "proxy-status",
        "--control-plane",
        &monitoring,
        "--run-dir",
        "/nonexistent",
    ]);
    assert_eq!(direct, table);

    // Each proxy runs exactly what mesh-control serves it.
    for sidecar in [&mesh.envoy, &mesh.proxy] {
        let report = mesh.meshctl(&["proxy-status", &sidecar.pod]);
        assert_eq!(
            report, "Clusters Match\nListeners Match\nRoutes Match\n",
            "{}",
            sidecar.pod
        );
        // By node id too (the run state names its pod).
        let by_id = mesh.meshctl(&["proxy-status", &sidecar.node_id]);
        assert_eq!(by_id, report);
    }

    // Save what the Envoy runs now, then change the configuration: a new
    // subset, and a connect timeout on every reviews cluster.
    let old_dump = mesh.meshctl(&["proxy-config", "all", &mesh.envoy.pod, "-o", "json"]);
    let old_file = mesh.scratch().join("old-envoy-dump.json");
    std::fs::write(&old_file, &old_dump).unwrap();
    mesh.reconfigure(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: DISABLE}
    connectionPool: {tcp: {connectTimeout: 3s}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
",
    );
    let v3 = format!("outbound|9080|v3|{REVIEWS}");
    mesh.wait_synced(&["v3"]);
    for sidecar in [&mesh.envoy, &mesh.proxy] {
        let report = mesh.meshctl(&["proxy-status", &sidecar.pod]);
        assert_eq!(
            report, "Clusters Match\nListeners Match\nRoutes Match\n",
            "{} after the change",
            sidecar.pod
        );
    }

    // The saved dump is what a proxy that missed the change would run.
    let stale = mesh.meshctl(&[
        "proxy-status",
        &mesh.envoy.pod,
        "--file",
        old_file.to_str().unwrap(),
    ]);
    let first = stale.lines().next().unwrap();
    assert_eq!(
        first, "Clusters Don't Match (1 only in control plane, 0 only in proxy, 3 differ)",
        "{stale}"
    );
    assert!(
        stale.contains(&format!("  only in control plane: {v3}\n")),
        "{stale}"
    );
    for subset in ["", "v1", "v2"] {
        let name = format!("outbound|9080|{subset}|{REVIEWS}");
        assert!(stale.contains(&format!("  differs: {name}\n")), "{stale}");
        assert!(
            stale.contains(&format!(
                "--- control plane: {name}\n+++ proxy: {name}\n@@ "
            )),
            "{stale}"
        );
    }
    assert!(
        stale.contains("\n-  \"connect_timeout\": \"3s\","),
        "{stale}"
    );
    assert!(
        stale.contains("\n+  \"connect_timeout\": \"10s\","),
        "{stale}"
    );
    assert!(stale.contains("\nListeners Match\n"), "{stale}");

    // Both sidecars of the workload are served the same: the mesh-proxy's
    // served config matches the Envoy's dump (whose bootstrap cluster,
    // not from xDS, is not compared).
    let envoy_dump = mesh.scratch().join("envoy-now.json");
    std::fs::write(
        &envoy_dump,
        mesh.meshctl(&["proxy-config", "all", &mesh.envoy.pod, "-o", "json"]),
    )
    .unwrap();
    let crossed = mesh.meshctl(&[
        "proxy-status",
        &mesh.proxy.pod,
        "--file",
        envoy_dump.to_str().unwrap(),
    ]);
    assert!(crossed.contains("Clusters Match\n"), "{crossed}");

    // A proxy the control plane does not know is an error that says so.
    let unknown = mesh.meshctl_output(&[
        "proxy-status",
        "sidecar~10.9.9.9~ghost.default~default.svc.cluster.local",
        "--file",
        envoy_dump.to_str().unwrap(),
    ]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("is not connected"), "{stderr}");
}
