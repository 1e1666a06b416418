//! The local mesh, end to end through the real binaries: `meshctl local up`
//! on the bundled traffic-shifting sample (mesh-control, three pods, plus
//! the sample external authorizer in the security scenario, as
//! network namespaces with mesh-echo or `sleep` and a mesh-proxy sidecar
//! behind iptables capture), requests by service name from inside the
//! client pod, the observed split, a live edit of the weights, then `local
//! down` leaving no namespace, link, hosts file, rule or process behind.
//! Beside them: pods outside the mesh (`sidecar.istio.io/inject: "false"`)
//! and the ingress gateway `up` starts, with HTTP and HTTPS by SNI.
//!
//! Needs root, `ip`, iptables, `setpriv` and `curl` (CI has them; e2e/test.sh
//! installs them), and the workspace's binaries next to meshctl (`cargo
//! test --workspace` builds them). Each test uses its own bridge, subnet
//! and run directory, so they run in parallel with each other and with a
//! mesh a user has up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "local/outside_and_ingress.rs"]
mod outside_and_ingress;
#[path = "local/prometheus.rs"]
mod prometheus;
#[path = "local/tcp_exchange.rs"]
mod tcp_exchange;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mesh_test_support::jwt::Issuer;
use mesh_test_support::netns::{require_program, require_root, run_bounded};
use mesh_test_support::{binomial_bounds, wait_for, workspace_root};

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");
const LIMIT: Duration = Duration::from_secs(120);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One local mesh's names and directories; `down` on drop (also when the
/// test fails), so nothing outlives the test.
struct Mesh {
    run_dir: tempfile::TempDir,
    config: tempfile::TempDir,
    bridge: String,
    subnet: String,
}

impl Mesh {
    /// A copy of the traffic-shifting sample, and names no other test uses.
    fn new() -> Self {
        require_root();
        for (program, package) in [
            ("ip", "iproute2"),
            ("iptables-restore", "iptables"),
            ("setpriv", "util-linux"),
            ("curl", "curl"),
        ] {
            require_program(program, package);
        }
        let dir = Path::new(MESHCTL).parent().unwrap();
        for binary in ["mesh-control", "mesh-proxy", "mesh-echo"] {
            assert!(
                dir.join(binary).is_file(),
                "{binary} is not built next to meshctl in {}: run `cargo build --bins` (cargo test --workspace builds it)",
                dir.display()
            );
        }
        let config = tempfile::tempdir().unwrap();
        let sample = workspace_root().join("samples/traffic-shifting");
        for file in ["app.yaml", "routing.yaml"] {
            std::fs::copy(sample.join(file), config.path().join(file)).unwrap();
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id() % 10_000;
        Self {
            run_dir: tempfile::tempdir().unwrap(),
            config,
            bridge: format!("mlt{id}x{n}"),
            subnet: format!("10.124.{}.0/24", (id * 4 + n) % 250),
        }
    }

    /// `meshctl local <args>` on this mesh's run directory.
    fn meshctl(&self, args: &[&str]) -> Output {
        let mut full = vec!["local"];
        full.extend_from_slice(args);
        self.command(&full)
    }

    /// `meshctl <args>` (any command) on this mesh's run directory.
    fn command(&self, args: &[&str]) -> Output {
        run_bounded(
            Command::new(MESHCTL)
                .args(args)
                .env("MESHCTL_LOCAL_DIR", self.run_dir.path()),
            LIMIT,
        )
    }

    fn up(&self) -> Output {
        self.up_with(&[])
    }

    fn up_with(&self, extra: &[&str]) -> Output {
        let config = self.config.path().to_str().unwrap();
        let mut args = vec![
            "up",
            config,
            "--bridge",
            &self.bridge,
            "--subnet",
            &self.subnet,
        ];
        args.extend_from_slice(extra);
        self.meshctl(&args)
    }

    /// Runs a shell command in the client pod; its stdout.
    fn in_client(&self, script: &str) -> String {
        let out = self.meshctl(&["exec", "client", "--", "sh", "-c", script]);
        assert!(out.status.success(), "exec failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Versions that answered `n` requests to `reviews` by name.
    fn versions(&self, n: usize) -> Vec<String> {
        let out = self.in_client(&format!(
            "for i in $(seq {n}); do curl -s --max-time 5 http://reviews:9080/; echo; done"
        ));
        let versions: Vec<String> = out
            .lines()
            .filter_map(|line| line.trim().strip_prefix("\"version\": \""))
            .map(|v| v.trim_end_matches(['"', ',']).to_string())
            .collect();
        assert_eq!(versions.len(), n, "not every request was answered:\n{out}");
        versions
    }

    fn state(&self) -> serde_json::Value {
        let path = self.run_dir.path().join("state.json");
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.run_dir.path().join("logs").join(name)).unwrap_or_default()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.meshctl(&["down"]);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every PID the run state names, with the network namespaces, host links
/// and hosts-file directories it created.
fn created(state: &serde_json::Value) -> (Vec<u32>, Vec<String>, Vec<String>) {
    let mut pids = vec![state["control_pid"].as_u64().unwrap() as u32];
    let (mut netns, mut links) = (
        Vec::new(),
        vec![state["bridge"].as_str().unwrap().to_string()],
    );
    for pod in state["pods"].as_array().unwrap() {
        // A pod outside the mesh has no proxy, the gateway no app.
        pids.extend(
            ["app_pid", "proxy_pid"]
                .iter()
                .filter_map(|k| pod[k].as_u64().map(|p| p as u32)),
        );
        netns.push(pod["netns"].as_str().unwrap().to_string());
        links.push(pod["host_veth"].as_str().unwrap().to_string());
    }
    (pids, netns, links)
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn assert_all_removed(state: &serde_json::Value, bridge: &str) {
    let (pids, netns, links) = created(state);
    for pid in pids {
        assert!(!process_alive(pid), "process {pid} still runs after down");
    }
    for ns in &netns {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "netns {ns} left"
        );
        assert!(
            !Path::new("/etc/netns").join(ns).exists(),
            "/etc/netns/{ns} left"
        );
    }
    for link in &links {
        assert!(
            !Path::new("/sys/class/net").join(link).exists(),
            "link {link} left"
        );
    }
    let rules = run_bounded(Command::new("iptables-save").arg("-t").arg("filter"), LIMIT);
    assert!(
        !text(&rules.stdout).contains(bridge),
        "a host iptables rule names {bridge}"
    );
}

#[test]
fn traffic_shifting_sample_runs_with_live_weight_edits_and_leaves_nothing_behind() {
    shifting_end_to_end(&[], "mesh-proxy");
}

/// The same sample with stock Envoy sidecars, bootstrapped as Istio
/// bootstraps them and configured by the same mesh-control: the sidecar
/// configuration (capture listeners, routes, clusters) is Envoy's own.
#[test]
fn traffic_shifting_sample_runs_with_stock_envoy_sidecars() {
    let envoy = mesh_test_support::envoy::envoy_binary();
    shifting_end_to_end(
        &["--data-plane", "envoy", "--envoy", envoy.to_str().unwrap()],
        "envoy",
    );
}

/// An ALLOW policy for GETs from the client's identity and a DENY policy
/// for `/private/`, on the reviews workloads.
const AUTHZ: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-readers, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/default]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-private, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/private/*]}}]
";

/// The sample external authorizer as a workload (mesh-echo serving
/// Envoy's HTTP and gRPC authorization protocols), and MeshConfig naming
/// it as extension providers, as Istio's samples/extauthz is installed.
const EXT_AUTHZ_APP: &str = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: sample-ext-authz-grpc
      envoyExtAuthzGrpc: {service: ext-authz.default.svc.cluster.local, port: 9000}
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.default.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz]
---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: default}
spec:
  clusterIP: 10.96.0.30
  selector: {app: ext-authz}
  ports:
  - {name: http, port: 8000, targetPort: 8000}
  - {name: grpc, port: 9000, targetPort: 9000}
---
apiVersion: v1
kind: Pod
metadata: {name: ext-authz, namespace: default, labels: {app: ext-authz}}
spec:
  containers:
  - name: ext-authz
    image: ghcr.io/example/mesh-echo:latest
    command: [mesh-echo, --ext-authz-http, \"8000\", --ext-authz-grpc, \"9000\"]
";

/// A CUSTOM policy sending requests for `/ext/` on the reviews workloads
/// to the sample authorizer over gRPC.
const CUSTOM: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: CUSTOM
  provider: {name: sample-ext-authz-grpc}
  rules:
  - to: [{operation: {paths: [/ext/*]}}]
";

/// A DENY policy for `/dry/` on reviews, in dry-run mode.
const DRY_RUN: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-dry
  namespace: default
  annotations: {istio.io/dry-run: \"true\"}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/dry/*]}}]
";

const JWT_ISSUER: &str = "https://login.example.com";

/// A RequestAuthentication of the test issuer on the reviews workloads,
/// and DENY policies keeping `/jwt/` for its tokens with group `admin`.
fn jwt_policies(issuer: &Issuer) -> String {
    format!(
        "\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {JWT_ISSUER}
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: jwt-admins, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: [\"{JWT_ISSUER}/*\"]}}}}]
    to: [{{operation: {{paths: [/jwt/*]}}}}]
  - to: [{{operation: {{paths: [/jwt/*]}}}}]
    when: [{{key: \"request.auth.claims[groups]\", notValues: [admin]}}]
",
        jwks = issuer.jwks()
    )
}

fn shifting_end_to_end(up_args: &[&str], proxy_program: &str) {
    let mesh = Mesh::new();
    std::fs::write(mesh.config.path().join("ext-authz.yaml"), EXT_AUTHZ_APP).unwrap();
    let up = mesh.up_with(up_args);
    assert!(
        up.status.success(),
        "local up failed: {}\n{}\nmesh-control log:\n{}",
        text(&up.stdout),
        text(&up.stderr),
        mesh.log("mesh-control.log")
    );
    let shown = text(&up.stdout);
    for pod in mesh.state()["pods"].as_array().unwrap() {
        // Envoy replaces the sidecars; the gateway stays mesh-proxy.
        let expected = if pod["role"] == "gateway" {
            "mesh-proxy"
        } else {
            proxy_program
        };
        assert_eq!(pod["proxy_program"], expected, "{pod}");
    }
    for pod in [
        "reviews-v1-0.default",
        "reviews-v2-0.default",
        "client.default",
        "ext-authz.default",
    ] {
        assert!(shown.contains(pod), "{pod} missing from:\n{shown}");
    }

    // Status: every sidecar and the gateway connected and in sync.
    let status = text(&mesh.meshctl(&["status"]).stdout);
    assert_eq!(status.matches("SYNCED").count(), 4 + 1, "{status}");
    assert_eq!(status.matches("running").count(), 1 + 4 * 2 + 1, "{status}");

    // proxy-status: mesh-control's view of every sidecar.
    let synced = text(&mesh.command(&["proxy-status"]).stdout);
    for pod in [
        "client.default",
        "reviews-v1-0.default",
        "reviews-v2-0.default",
    ] {
        let row = synced
            .lines()
            .find(|l| l.starts_with(pod))
            .unwrap_or_else(|| panic!("{pod} missing:\n{synced}"));
        assert_eq!(row.matches("SYNCED").count(), 4, "{row}");
    }
    // proxy-config, read from the client's sidecar inside its namespace:
    // the route that sends reviews traffic names the VirtualService, the
    // subset clusters the DestinationRule.
    let routes = text(&mesh.command(&["proxy-config", "route", "client"]).stdout);
    assert!(
        routes.lines().any(|l| l.starts_with("9080")
            && l.contains("reviews.default.svc.cluster.local:9080")
            && l.trim_end().ends_with("reviews.default")),
        "{routes}"
    );
    let clusters = text(
        &mesh
            .command(&[
                "proxy-config",
                "cluster",
                "client",
                "--fqdn",
                "reviews.default.svc.cluster.local",
            ])
            .stdout,
    );
    for subset in ["v1", "v2"] {
        assert!(
            clusters
                .lines()
                .any(|l| l.contains(&format!(" {subset} "))
                    && l.trim_end().ends_with("reviews.default")),
            "{clusters}"
        );
    }

    // A request by service name, captured by the client's sidecar and
    // answered by a reviews pod through its sidecar's inbound side.
    let answer = mesh.in_client("curl -s --max-time 5 http://reviews:9080/hello");
    let echo: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| {
        panic!(
            "not an echo answer ({e}): {answer}\n{}",
            mesh.log("client.default.proxy.log")
        )
    });
    assert!(
        echo["name"].as_str().unwrap().starts_with("reviews-v"),
        "{echo}"
    );
    assert_eq!(echo["path"], "/hello");
    assert!(echo["headers"]["x-request-id"].is_string(), "{echo}");
    // The answering pod's log shows the request (`local logs`).
    let pod = echo["name"].as_str().unwrap();
    let logs = text(&mesh.meshctl(&["logs", pod]).stdout);
    assert!(logs.contains("GET /hello host=reviews:9080"), "{logs}");
    // The sidecars spoke mutual TLS with certificates from mesh-control's
    // CA (auto mTLS): the app sees the caller's SPIFFE id.
    let xfcc = echo["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/default"),
        "no client identity in X-Forwarded-Client-Cert: {echo}"
    );
    // proxy-config secret shows the SVID and the roots the sidecar holds,
    // read from its admin API (mesh-proxy's own, or Envoy's from the agent).
    let secrets = text(&mesh.command(&["proxy-config", "secret", "client"]).stdout);
    for (name, kind) in [("default", "Cert Chain"), ("ROOTCA", "CA")] {
        assert!(
            secrets.lines().any(|l| {
                let words = l.split_whitespace().collect::<Vec<_>>().join(" ");
                words.starts_with(&format!("{name} {kind} ACTIVE true "))
            }),
            "{name} missing from:\n{secrets}"
        );
    }

    // 90/10 as the VirtualService says, within the 99.9 % binomial interval.
    let n = 1000;
    let versions = mesh.versions(n);
    let v2 = versions.iter().filter(|v| *v == "v2").count();
    let (lo, hi) = binomial_bounds(0.1, n);
    let share = v2 as f64 / n as f64;
    assert!(
        (lo..=hi).contains(&share),
        "v2 got {v2} of {n}, outside [{lo:.3}, {hi:.3}]"
    );
    assert_eq!(versions.iter().filter(|v| *v == "v1").count(), n - v2);

    // Edit the weights in place: v1 is drained without a restart.
    let routing = mesh.config.path().join("routing.yaml");
    let edited = std::fs::read_to_string(&routing)
        .unwrap()
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    std::fs::write(&routing, edited).unwrap();
    let drained = wait_for(Duration::from_secs(20), || {
        mesh.versions(20).iter().all(|v| v == "v2").then_some(())
    });
    assert!(drained.is_some(), "v1 still answers after the edit");
    assert!(mesh.versions(100).iter().all(|v| v == "v2"));

    // PERMISSIVE by default: a caller outside the mesh (this host) still
    // reaches a pod in plaintext. STRICT refuses it, while mesh traffic
    // goes on.
    let pod_ip = mesh.state()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "reviews-v2-0")
        .and_then(|p| p["ip"].as_str().map(str::to_string))
        .unwrap();
    let from_host = || {
        run_bounded(
            Command::new("curl").args(["-s", "--max-time", "3", &format!("http://{pod_ip}:9080/")]),
            LIMIT,
        )
        .status
        .success()
    };
    assert!(from_host(), "plaintext refused under PERMISSIVE");
    std::fs::write(
        mesh.config.path().join("strict.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .unwrap();
    let refused = wait_for(Duration::from_secs(20), || (!from_host()).then_some(()));
    assert!(refused.is_some(), "plaintext still accepted under STRICT");
    assert!(mesh.versions(20).iter().all(|v| v == "v2"));

    // Authorization: reviews takes only GETs from the client's identity,
    // and never serves /private/.
    std::fs::write(mesh.config.path().join("authz.yaml"), AUTHZ).unwrap();
    let status = |method: &str, path: &str| {
        mesh.in_client(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -X {method} http://reviews:9080{path}"
        ))
    };
    let enforced = wait_for(Duration::from_secs(20), || {
        (status("POST", "/") == "403").then_some(())
    });
    assert!(
        enforced.is_some(),
        "POST still allowed: {}",
        status("POST", "/")
    );
    assert_eq!(status("GET", "/"), "200");
    assert_eq!(status("GET", "/private/key"), "403");
    let body = mesh.in_client("curl -s -X POST --max-time 5 http://reviews:9080/");
    assert_eq!(body.trim(), "RBAC: access denied");
    // Counted by either proxy (traffic goes to v2 now); Envoy's own tag
    // extraction splits the dotted prefix into the name, ours keeps
    // `envoy_http_rbac_denied{envoy_http_conn_manager_prefix=...}`.
    let stats = mesh.meshctl(&[
        "exec",
        "reviews-v2-0",
        "--",
        "curl",
        "-s",
        "127.0.0.1:15000/stats/prometheus",
    ]);
    let stats = text(&stats.stdout);
    assert!(
        stats.lines().any(|l| l.starts_with("envoy_http_")
            && l.contains("rbac_denied")
            && l.contains("9080")
            && !l.ends_with(" 0")),
        "no RBAC denial counted:\n{}",
        stats
            .lines()
            .filter(|l| l.contains("rbac"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // End-user authentication: reviews verifies JWTs of a test issuer
    // and serves /jwt/ only to its admins.
    let issuer = Issuer::new(JWT_ISSUER);
    std::fs::write(mesh.config.path().join("jwt.yaml"), jwt_policies(&issuer)).unwrap();
    let with_token = |token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("-H 'Authorization: Bearer {t}'"));
        mesh.in_client(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {auth} http://reviews:9080/jwt/report"
        ))
    };
    let enforced = wait_for(Duration::from_secs(20), || {
        (with_token(None) == "403").then_some(())
    });
    assert!(
        enforced.is_some(),
        "/jwt/ without a token: {}",
        with_token(None)
    );
    let mut admin = issuer.claims("alice");
    admin["groups"] = serde_json::json!(["admin"]);
    assert_eq!(
        with_token(Some(&issuer.rs256(&admin))),
        "200",
        "admin token"
    );
    assert_eq!(
        with_token(Some(&issuer.token("bob"))),
        "403",
        "token without the group"
    );
    let forged = mesh_test_support::jwt::tampered(&issuer.token("bob"), &admin);
    assert_eq!(with_token(Some(&forged)), "401", "tampered token");
    assert_eq!(
        with_token(Some(&mesh_test_support::jwt::unsigned(&admin))),
        "401",
        "alg none"
    );

    // External authorization (CUSTOM): reviews asks the ext-authz pod,
    // over mTLS through both sidecars, about every request for /ext/.
    std::fs::write(mesh.config.path().join("custom.yaml"), CUSTOM).unwrap();
    let ext = |decision: &str| {
        let header = if decision.is_empty() {
            String::new()
        } else {
            format!("-H 'x-ext-authz: {decision}'")
        };
        mesh.in_client(&format!(
            "curl -s -w ' %{{http_code}}' --max-time 5 {header} http://reviews:9080/ext/report"
        ))
    };
    let denied = wait_for(Duration::from_secs(20), || {
        ext("").ends_with(" 403").then_some(())
    });
    assert!(
        denied.is_some(),
        "/ext/ without the header: {}\n{}",
        ext(""),
        mesh.log("reviews-v2-0.default.proxy.log")
    );
    assert!(
        ext("").starts_with("denied by ext_authz"),
        "the authorizer's body: {}",
        ext("")
    );
    assert!(ext("allow").ends_with(" 200"), "allowed: {}", ext("allow"));
    assert!(
        ext("fail").ends_with(" 403"),
        "failing authorizer: {}",
        ext("fail")
    );
    assert!(
        mesh.versions(5).iter().all(|v| v == "v2"),
        "paths outside the policy are not checked"
    );

    // A dry-run DENY (istio.io/dry-run): /dry/ keeps answering, and the
    // sidecar counts what the policy would have denied.
    std::fs::write(mesh.config.path().join("dry-run.yaml"), DRY_RUN).unwrap();
    let dry_stats = || {
        let out = mesh.meshctl(&[
            "exec",
            "reviews-v2-0",
            "--",
            "curl",
            "-s",
            "127.0.0.1:15000/stats/prometheus",
        ]);
        text(&out.stdout)
    };
    let counted = wait_for(Duration::from_secs(20), || {
        let code = mesh.in_client(
            "curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://reviews:9080/dry/run",
        );
        assert_eq!(code, "200", "a dry-run policy refused a request");
        dry_stats()
            .lines()
            .any(|l| l.contains("dry_run_deny") && l.contains("denied") && !l.ends_with(" 0"))
            .then_some(())
    });
    assert!(
        counted.is_some(),
        "no dry-run denial counted:\n{}",
        dry_stats()
            .lines()
            .filter(|l| l.contains("shadow"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let state = mesh.state();
    let down = mesh.meshctl(&["down"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_all_removed(&state, &mesh.bridge);
    assert!(!mesh.run_dir.path().join("state.json").exists());
}

#[test]
fn a_crashed_run_is_cleaned_up_by_the_next_up_and_down() {
    let mesh = Mesh::new();
    let up = mesh.up();
    assert!(up.status.success(), "{}", text(&up.stderr));
    let crashed = mesh.state();

    // The control plane dies; the run state is all that is left to go by.
    let pid = crashed["control_pid"].as_u64().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        wait_for(Duration::from_secs(10), || (!process_alive(
            pid.parse().unwrap()
        ))
        .then_some(()))
        .is_some()
    );

    let again = mesh.up();
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("cleaning up what a previous run left"),
        "{}",
        text(&again.stdout)
    );
    // Everything of the crashed run is gone except what the new run reuses by name.
    let (pids, _, _) = created(&crashed);
    for pid in pids {
        assert!(
            !process_alive(pid),
            "process {pid} of the crashed run still runs"
        );
    }
    // Three pods and the gateway.
    assert_eq!(
        text(&mesh.meshctl(&["status"]).stdout)
            .matches("SYNCED")
            .count(),
        4
    );

    let state = mesh.state();
    let down = mesh.meshctl(&["down"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_all_removed(&state, &mesh.bridge);
}

#[test]
fn a_pod_the_mesh_cannot_run_is_refused_before_anything_is_created() {
    let mesh = Mesh::new();
    std::fs::write(
        mesh.config.path().join("web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default}\nspec: {containers: [{name: web, image: nginx}]}\n",
    )
    .unwrap();
    let up = mesh.up();
    assert!(!up.status.success());
    let err = text(&up.stderr);
    assert!(
        err.contains("Pod default/web") && err.contains("spec.containers[0].command"),
        "{err}"
    );
    assert!(!Path::new("/sys/class/net").join(&mesh.bridge).exists());
    assert!(!mesh.run_dir.path().join("state.json").exists());
}

#[test]
fn without_root_it_says_so() {
    let mesh = Mesh::new();
    let out = run_bounded(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(MESHCTL)
            .args(["local", "up"])
            .arg(mesh.config.path())
            .env("MESHCTL_LOCAL_DIR", PathBuf::from("/nonexistent")),
        LIMIT,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("needs root"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn rerunning_up_starts_added_pods_and_removes_deleted_ones() {
    let mesh = Mesh::new();
    let up = mesh.up();
    assert!(up.status.success(), "{}", text(&up.stderr));
    let before = mesh.state();

    // A new service with a pod, and the client pod deleted from the YAML.
    let app = mesh.config.path().join("app.yaml");
    let mut yaml = std::fs::read_to_string(&app).unwrap();
    let client = yaml.find("# Where requests come from").unwrap();
    yaml.truncate(client);
    yaml.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: ratings, namespace: default}\n\
         spec: {clusterIP: 10.96.0.30, selector: {app: ratings}, ports: [{name: http, port: 9080}]}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: ratings-v1, namespace: default, labels: {app: ratings}}\n\
         spec: {containers: [{name: r, image: x, command: [mesh-echo, --port, \"9080\"]}]}\n",
    );
    std::fs::write(&app, yaml).unwrap();
    let again = mesh.up();
    assert!(again.status.success(), "{}", text(&again.stderr));
    let shown = text(&again.stdout);
    assert!(shown.contains("removed pod client.default"), "{shown}");
    assert!(shown.contains("pod ratings-v1.default"), "{shown}");

    // The client's processes and namespace are gone; the reviews pods were
    // left running (same PIDs); the new pod answers by its service name
    // from a reviews pod, whose hosts file now knows `ratings`.
    let (old_pids, old_netns, _) = created(&before);
    let state = mesh.state();
    let client = before["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "client")
        .unwrap();
    for key in ["app_pid", "proxy_pid"] {
        assert!(!process_alive(client[key].as_u64().unwrap() as u32));
    }
    assert!(
        !old_netns
            .iter()
            .any(|n| n.ends_with("-client") && Path::new("/run/netns").join(n).exists())
    );
    let reviews_pid = |s: &serde_json::Value| {
        s["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "reviews-v1-0")
            .unwrap()["proxy_pid"]
            .clone()
    };
    assert_eq!(reviews_pid(&before), reviews_pid(&state));
    assert!(old_pids.contains(&(reviews_pid(&state).as_u64().unwrap() as u32)));
    // Both directions by name: the new pod through its fresh sidecar, an
    // existing pod through its updated one (the generated Pod with the
    // address overrides the user's template of the same name).
    for (from, url, answer) in [
        (
            "ratings-v1",
            "http://reviews:9080/",
            "\"name\": \"reviews-v",
        ),
        (
            "reviews-v1-0",
            "http://ratings:9080/",
            "\"name\": \"mesh-echo\"",
        ),
    ] {
        let out = mesh.meshctl(&["exec", from, "--", "curl", "-s", "--max-time", "5", url]);
        assert!(
            text(&out.stdout).contains(answer),
            "{from} -> {url}: {}",
            text(&out.stdout)
        );
    }
    // The kept pods' hosts files were rewritten with the new service.
    let hosts = mesh.meshctl(&["exec", "reviews-v1-0", "--", "cat", "/etc/hosts"]);
    assert!(
        text(&hosts.stdout).contains("10.96.0.30\tratings.default.svc.cluster.local"),
        "{}",
        text(&hosts.stdout)
    );
    assert_eq!(
        text(&mesh.meshctl(&["status"]).stdout)
            .matches("SYNCED")
            .count(),
        3 + 1
    );
}
