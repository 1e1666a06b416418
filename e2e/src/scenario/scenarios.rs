//! The nine scenarios of the suite, each a user-visible promise of the
//! mesh. They talk to the mesh only through [`Backend`] and `curl` in the
//! sample app's pods.

use anyhow::{Context, ensure};
use serde_json::Value;

use super::{
    Backend, apply, check_share, converge, curl, delete, has_object, requests, snapshot_version,
    tally,
};
use crate::certs::TestCa;
use crate::jwt::{Issuer, tampered};

/// One scenario.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// Its name.
    pub name: &'static str,
    /// Runs it.
    pub run: fn(&mut dyn Backend) -> anyhow::Result<()>,
}

/// Every scenario, in order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "traffic-shifting",
        run: traffic_shifting,
    },
    Scenario {
        name: "content-routing",
        run: content_routing,
    },
    Scenario {
        name: "mirroring",
        run: mirroring,
    },
    Scenario {
        name: "timeouts-retries-faults",
        run: timeouts_retries_faults,
    },
    Scenario {
        name: "circuit-breaking-outlier-ejection",
        run: circuit_breaking_and_outliers,
    },
    Scenario {
        name: "mtls",
        run: mtls,
    },
    Scenario {
        name: "authorization",
        run: authorization,
    },
    Scenario {
        name: "ingress-gateway",
        run: ingress_gateway,
    },
    Scenario {
        name: "mesh-resilience",
        run: mesh_resilience,
    },
];

/// Names of every configuration a scenario may leave applied.
const CONFIGS: &[&str] = &[
    "reviews-dr",
    "reviews-vs",
    "ratings-dr",
    "peer-auth",
    "peer-auth-workload",
    "peer-auth-mesh",
    "authz",
    "authz-deny",
    "jwt",
    "gateway",
    "gateway-routes",
];

/// Kinds scenarios create; the sample app has none of them.
const SCENARIO_KINDS: &[&str] = &[
    "VirtualService",
    "DestinationRule",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "Gateway",
];

/// Removes what scenarios applied and waits until the mesh has forgotten it.
pub fn cleanup(b: &mut dyn Backend) -> anyhow::Result<()> {
    let leftover = |c: &Value| {
        c["objects"].as_array().is_some_and(|objects| {
            objects.iter().any(|o| {
                SCENARIO_KINDS.contains(&o["kind"].as_str().unwrap_or_default())
                    || (o["kind"] == "Secret"
                        && o["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("gateway-")))
            })
        })
    };
    let configz: Value = serde_json::from_str(&b.control_plane_get("/debug/configz")?)?;
    if !leftover(&configz) {
        return Ok(());
    }
    let before = snapshot_version(b)?;
    for name in CONFIGS {
        b.delete(name)?;
    }
    converge(b, Some(before), |c| !leftover(c)).context("removing the scenarios' configuration")?;
    Ok(())
}

const SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

/// The `reviews` VirtualService with these `http` rules (YAML, indented
/// by two spaces).
fn reviews_vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

fn weighted(v1: u32, v2: u32) -> String {
    reviews_vs(&format!(
        "  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}\n"
    ))
}

fn only(subset: &str, extra: &str) -> String {
    reviews_vs(&format!(
        "  - route:\n    - {{destination: {{host: reviews, subset: {subset}}}}}\n{extra}"
    ))
}

const REVIEWS: &str = "http://reviews:9080";

fn all_ok(what: &str, replies: &[super::Reply]) -> anyhow::Result<()> {
    let codes = tally(replies, |r| r.status.to_string());
    ensure!(
        codes.len() == 1 && codes.contains_key("200"),
        "{what}: every request should succeed, got {codes:?}"
    );
    Ok(())
}

/// 90/10, then 50/50 between v1 and v2 over 1,000 requests each, within
/// the binomial 99.9 % interval; 0/100 drains v1 completely.
fn traffic_shifting(b: &mut dyn Backend) -> anyhow::Result<()> {
    apply(b, "reviews-dr", SUBSETS)?;
    for (v1, v2) in [(90, 10), (50, 50)] {
        apply(b, "reviews-vs", &weighted(v1, v2))?;
        let n = 1000;
        let replies = requests(b, "client", "", &format!("{REVIEWS}/shift"), n)?;
        all_ok("weighted", &replies)?;
        let versions = tally(&replies, |r| r.version());
        let hits = versions.get("v2").copied().unwrap_or(0);
        ensure!(
            hits + versions.get("v1").copied().unwrap_or(0) == n,
            "{v1}/{v2}: answers from outside v1 and v2: {versions:?}"
        );
        check_share(&format!("v2 at {v1}/{v2}"), hits, n, f64::from(v2) / 100.0)?;
    }
    apply(b, "reviews-vs", &weighted(0, 100))?;
    let replies = requests(b, "client", "", &format!("{REVIEWS}/drained"), 200)?;
    let versions = tally(&replies, |r| r.version());
    ensure!(
        versions.len() == 1 && versions.get("v2") == Some(&200),
        "0/100 must drain v1 completely: {versions:?}"
    );
    Ok(())
}

/// `end-user: jason` -> v2, a path prefix -> v2, a query parameter -> v2,
/// everything else -> v1.
fn content_routing(b: &mut dyn Backend) -> anyhow::Result<()> {
    apply(b, "reviews-dr", SUBSETS)?;
    let v2 = "    route: [{destination: {host: reviews, subset: v2}}]\n";
    apply(
        b,
        "reviews-vs",
        &reviews_vs(&format!(
            "  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n{v2}  - match: [{{uri: {{prefix: /v2/}}}}]\n{v2}  - match: [{{queryParams: {{version: {{exact: v2}}}}}}]\n{v2}  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n"
        )),
    )?;
    for (args, url, want) in [
        ("-H 'end-user: jason'", format!("{REVIEWS}/reviews"), "v2"),
        ("-H 'end-user: alice'", format!("{REVIEWS}/reviews"), "v1"),
        ("", format!("{REVIEWS}/v2/reviews"), "v2"),
        ("", format!("{REVIEWS}/v2reviews"), "v1"),
        ("", format!("{REVIEWS}/reviews?version=v2"), "v2"),
        ("", format!("{REVIEWS}/reviews?version=v1"), "v1"),
        ("", format!("{REVIEWS}/reviews"), "v1"),
    ] {
        let replies = requests(b, "client", args, &url, 20)?;
        all_ok(&url, &replies)?;
        let versions = tally(&replies, |r| r.version());
        ensure!(
            versions.len() == 1 && versions.contains_key(want),
            "{args} {url}: expected every answer from {want}, got {versions:?}"
        );
    }
    Ok(())
}

/// 100 % to v1 with a mirror to v3, which is slow (2 s) and answers 503:
/// v3 receives every request with host `reviews-shadow`, the client only
/// sees v1's fast answers.
fn mirroring(b: &mut dyn Backend) -> anyhow::Result<()> {
    apply(b, "reviews-dr", SUBSETS)?;
    apply(
        b,
        "reviews-vs",
        &only(
            "v1",
            "    mirror: {host: reviews, subset: v3}\n    mirrorPercentage: {value: 100}\n",
        ),
    )?;
    let n = 20;
    let replies = requests(b, "client", "", &format!("{REVIEWS}/mirrored"), n)?;
    all_ok("mirrored", &replies)?;
    let versions = tally(&replies, |r| r.version());
    ensure!(
        versions.get("v1") == Some(&n),
        "the client sees only v1: {versions:?}"
    );
    let slowest = replies.iter().map(|r| r.seconds).fold(0.0, f64::max);
    ensure!(
        slowest < 1.5,
        "the slow mirror (2 s) must not slow the client: slowest answer {slowest:.3} s"
    );
    let mut seen = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let log = b.logs("reviews-v3", false)?;
        seen = log
            .lines()
            .filter(|l| l.contains("/mirrored") && l.contains("host=reviews-shadow"))
            .count();
        if seen >= n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ensure!(
        seen >= n,
        "v3 saw {seen} of {n} mirrored requests with a -shadow host:\n{}",
        b.logs("reviews-v3", false)?
    );
    Ok(())
}

/// A route timeout gives 504; a backend failing every other request
/// recovers to 100 % with retries (and fails half without); an injected
/// abort returns its code at its percentage; an injected delay is observed.
fn timeouts_retries_faults(b: &mut dyn Backend) -> anyhow::Result<()> {
    apply(b, "reviews-dr", SUBSETS)?;
    apply(b, "reviews-vs", &only("v1", "    timeout: 0.5s\n"))?;
    let replies = curl(b, "client", "", &format!("{REVIEWS}/slow?delay=2s"))?;
    let r = replies.first().context("no reply")?;
    ensure!(
        r.status == 504 && r.seconds < 1.9,
        "route timeout 0.5s: expected a 504 before the app's 2 s, got {} after {:.2} s",
        r.status,
        r.seconds
    );

    apply(b, "reviews-vs", &only("v1", "    retries: {attempts: 0}\n"))?;
    let flaky = "fail_every=2&status=500";
    let replies = requests(b, "client", "", &format!("{REVIEWS}/flaky-a?{flaky}"), 100)?;
    let failed = replies.iter().filter(|r| r.status == 500).count();
    ensure!(
        failed == 50,
        "without retries half the requests fail: {failed} of 100 did"
    );
    apply(
        b,
        "reviews-vs",
        &only("v1", "    retries: {attempts: 3, retryOn: 5xx}\n"),
    )?;
    let replies = requests(b, "client", "", &format!("{REVIEWS}/flaky-b?{flaky}"), 100)?;
    all_ok("with retries", &replies)?;

    apply(
        b,
        "reviews-vs",
        &reviews_vs(
            "  - fault: {abort: {httpStatus: 418, percentage: {value: 50}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n",
        ),
    )?;
    let n = 400;
    let replies = requests(b, "client", "", &format!("{REVIEWS}/abort"), n)?;
    let codes = tally(&replies, |r| r.status.to_string());
    let aborted = codes.get("418").copied().unwrap_or(0);
    ensure!(
        aborted + codes.get("200").copied().unwrap_or(0) == n,
        "abort: only 418 and 200 expected, got {codes:?}"
    );
    check_share("aborted", aborted, n, 0.5)?;

    apply(
        b,
        "reviews-vs",
        &reviews_vs(
            "  - fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}\n    route: [{destination: {host: reviews, subset: v1}}]\n",
        ),
    )?;
    let replies = requests(b, "client", "", &format!("{REVIEWS}/delayed"), 3)?;
    all_ok("delayed", &replies)?;
    for r in &replies {
        ensure!(
            r.seconds >= 0.9,
            "the injected 1 s delay was not observed: {:.3} s",
            r.seconds
        );
    }
    Ok(())
}

/// Overload gives fast 503s with `x-envoy-overloaded`; a failing endpoint
/// is ejected and traffic continues error-free.
fn circuit_breaking_and_outliers(b: &mut dyn Backend) -> anyhow::Result<()> {
    apply(
        b,
        "reviews-dr",
        &format!(
            "{SUBSETS}  trafficPolicy:\n    connectionPool:\n      tcp: {{maxConnections: 1}}\n      http: {{http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}\n"
        ),
    )?;
    apply(b, "reviews-vs", &only("v1", ""))?;
    let replies = curl(
        b,
        "client",
        "--parallel --parallel-immediate --parallel-max 20 -o /dev/null",
        &format!("{REVIEWS}/busy?delay=1s&n=[1-20]"),
    )?;
    ensure!(
        replies.len() == 20,
        "20 parallel requests, {} replies",
        replies.len()
    );
    let overloaded: Vec<_> = replies
        .iter()
        .filter(|r| r.status == 503 && r.overloaded == "true")
        .collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    ensure!(
        overloaded.len() >= 10 && ok >= 1,
        "1 connection + 1 pending: expected most of 20 to overflow with x-envoy-overloaded, got {:?}",
        tally(&replies, |r| format!("{} {}", r.status, r.overloaded))
    );
    let slowest = overloaded.iter().map(|r| r.seconds).fold(0.0, f64::max);
    ensure!(
        slowest < 0.9,
        "overflow must fail fast, not after the 1 s the app takes: {slowest:.3} s"
    );

    apply(
        b,
        "ratings-dr",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: default}\nspec:\n  host: ratings\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}\n",
    )?;
    let bad = b.pod_ip("ratings-bad")?;
    let mut clean = false;
    for _ in 0..30 {
        let replies = requests(b, "client", "", "http://ratings:9080/rate", 10)?;
        if replies.iter().all(|r| r.status == 200) {
            clean = true;
            break;
        }
    }
    ensure!(clean, "the failing ratings endpoint was never ejected");
    let clusters = b.proxy_admin("client", "/clusters")?;
    ensure!(
        clusters
            .lines()
            .any(|l| l.contains(&format!("{bad}:9080::health_flags::"))
                && l.contains("/failed_outlier_check")),
        "the client's proxy does not show {bad} ejected:\n{}",
        clusters
            .lines()
            .filter(|l| l.contains("ratings") && l.contains("health_flags"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let replies = requests(b, "client", "", "http://ratings:9080/rate-after", 100)?;
    all_ok("after ejection", &replies)?;
    let versions = tally(&replies, |r| r.version());
    ensure!(
        versions.get("good") == Some(&100),
        "only the good endpoint answers: {versions:?}"
    );
    Ok(())
}

fn peer_auth(name: &str, namespace: &str, mode: &str, selector: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{selector}  mtls: {{mode: {mode}}}\n"
    )
}

/// Whether the `outside` pod (no sidecar) gets an answer in plaintext
/// from `workload`'s pod address.
fn outside_reaches(b: &dyn Backend, workload: &str) -> anyhow::Result<bool> {
    let ip = b.pod_ip(workload)?;
    let replies = curl(b, "outside", "", &format!("http://{ip}:9080/plain"))?;
    Ok(replies.first().is_some_and(|r| r.status == 200))
}

/// STRICT refuses a plaintext client outside the mesh and serves a mesh
/// client, whose SPIFFE id the app sees in X-Forwarded-Client-Cert;
/// PERMISSIVE accepts both; workload and namespace policies override the
/// wider ones.
fn mtls(b: &mut dyn Backend) -> anyhow::Result<()> {
    apply(
        b,
        "peer-auth",
        &peer_auth("default", "default", "STRICT", ""),
    )?;
    ensure!(
        !outside_reaches(b, "reviews-v1")?,
        "STRICT: a plaintext client outside the mesh must be refused"
    );
    let replies = requests(b, "client", "", &format!("{REVIEWS}/secure"), 5)?;
    all_ok("mesh client under STRICT", &replies)?;
    for r in &replies {
        let xfcc = r.json()["headers"]["x-forwarded-client-cert"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(
            xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client"),
            "the app should see the caller's SPIFFE id, got X-Forwarded-Client-Cert {xfcc:?}"
        );
    }

    apply(
        b,
        "peer-auth",
        &peer_auth("default", "default", "PERMISSIVE", ""),
    )?;
    ensure!(
        outside_reaches(b, "reviews-v1")?,
        "PERMISSIVE: plaintext must be accepted"
    );
    all_ok(
        "mesh client under PERMISSIVE",
        &requests(b, "client", "", &format!("{REVIEWS}/permissive"), 5)?,
    )?;

    // Namespace STRICT, one workload PERMISSIVE: the workload wins.
    apply(
        b,
        "peer-auth",
        &peer_auth("default", "default", "STRICT", ""),
    )?;
    apply(
        b,
        "peer-auth-workload",
        &peer_auth(
            "reviews-v1",
            "default",
            "PERMISSIVE",
            "  selector: {matchLabels: {app: reviews, version: v1}}\n",
        ),
    )?;
    ensure!(
        outside_reaches(b, "reviews-v1")?,
        "a workload PERMISSIVE overrides the namespace's STRICT"
    );
    ensure!(
        !outside_reaches(b, "reviews-v2")?,
        "the namespace's STRICT still holds for other workloads"
    );

    // Mesh-wide STRICT (root namespace), namespace PERMISSIVE: the namespace wins.
    delete(
        b,
        "peer-auth-workload",
        &peer_auth("reviews-v1", "default", "PERMISSIVE", ""),
    )?;
    apply(
        b,
        "peer-auth-mesh",
        &peer_auth("default", "istio-system", "STRICT", ""),
    )?;
    apply(
        b,
        "peer-auth",
        &peer_auth("default", "default", "PERMISSIVE", ""),
    )?;
    ensure!(
        outside_reaches(b, "reviews-v2")?,
        "a namespace PERMISSIVE overrides the mesh-wide STRICT"
    );
    Ok(())
}

fn authz_policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  action: {action}\n  rules:\n{rules}"
    )
}

fn status_of(b: &dyn Backend, pod: &str, args: &str, path: &str) -> anyhow::Result<u16> {
    let replies = curl(b, pod, args, &format!("{REVIEWS}{path}"))?;
    Ok(replies.first().map_or(0, |r| r.status))
}

/// ALLOW by principal and path, DENY over ALLOW, deny by default once an
/// ALLOW applies; JWT with a requestPrincipal and a claim: invalid token
/// 401, missing token 403.
fn authorization(b: &mut dyn Backend) -> anyhow::Result<()> {
    apply(
        b,
        "authz",
        &authz_policy(
            "reviews-allow",
            "ALLOW",
            "  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]\n    to: [{operation: {paths: [\"/allowed*\"]}}]\n",
        ),
    )?;
    for (pod, path, want) in [
        ("client", "/allowed/page", 200),
        ("client", "/other", 403),
        ("outside", "/allowed/page", 403),
    ] {
        let got = if pod == "outside" {
            let ip = b.pod_ip("reviews-v1")?;
            curl(b, pod, "", &format!("http://{ip}:9080{path}"))?
                .first()
                .map_or(0, |r| r.status)
        } else {
            status_of(b, pod, "", path)?
        };
        ensure!(got == want, "{pod} {path}: expected {want}, got {got}");
    }
    let denied = curl(b, "client", "", &format!("{REVIEWS}/other"))?;
    ensure!(
        denied
            .first()
            .is_some_and(|r| r.body.contains("RBAC: access denied")),
        "a denied request reads RBAC: access denied: {denied:?}"
    );

    apply(
        b,
        "authz-deny",
        &authz_policy(
            "reviews-deny",
            "DENY",
            "  - to: [{operation: {paths: [\"/allowed/admin*\"]}}]\n",
        ),
    )?;
    let admin = status_of(b, "client", "", "/allowed/admin")?;
    let page = status_of(b, "client", "", "/allowed/page")?;
    ensure!(
        admin == 403 && page == 200,
        "DENY wins over ALLOW: /allowed/admin {admin}, /allowed/page {page}"
    );

    let iss = "https://issuer.mesh.example";
    let issuer = Issuer::new(iss);
    let jwks = issuer.jwks().replace('\'', "''");
    apply(
        b,
        "jwt",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: reviews-jwt, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  jwtRules:\n  - issuer: {iss}\n    jwks: '{jwks}'\n---\n{}",
            authz_policy(
                "reviews-jwt",
                "ALLOW",
                &format!(
                    "  - from: [{{source: {{requestPrincipals: [\"{iss}/*\"]}}}}]\n    to: [{{operation: {{paths: [\"/jwt*\"]}}}}]\n    when: [{{key: \"request.auth.claims[group]\", values: [admins]}}]\n"
                ),
            )
        ),
    )?;
    let mut admins = issuer.claims("alice");
    admins["group"] = "admins".into();
    let good = issuer.rs256(&admins);
    let mut users = issuer.claims("bob");
    users["group"] = "users".into();
    let user = issuer.rs256(&users);
    let forged = tampered(&user, &admins);
    for (what, header, want) in [
        ("token with the claim", Some(good), 200),
        ("token without the claim", Some(user), 403),
        ("invalid token", Some(forged), 401),
        ("no token", None, 403),
    ] {
        let args = header
            .map(|t| format!("-H 'Authorization: Bearer {t}'"))
            .unwrap_or_default();
        let got = status_of(b, "client", &args, "/jwt/data")?;
        ensure!(got == want, "JWT {what}: expected {want}, got {got}");
    }
    Ok(())
}

fn tls_secret(name: &str, cert: &str, key: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert),
        b64(key)
    )
}

/// HTTP and HTTPS (SIMPLE, two hosts told apart by SNI) into the mesh
/// through a Gateway and VirtualServices, and httpsRedirect.
fn ingress_gateway(b: &mut dyn Backend) -> anyhow::Result<()> {
    let ca = TestCa::new("scenario ingress CA");
    let a = ca.leaf(
        &["a.example.com"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let bb = ca.leaf(
        &["b.example.com"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    apply(b, "reviews-dr", SUBSETS)?;
    apply(
        b,
        "gateway",
        &format!(
            "{}---\n{}---\n{}",
            tls_secret("gateway-a", &a.cert_pem, &a.key_pem),
            tls_secret("gateway-b", &bb.cert_pem, &bb.key_pem),
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [a.example.com, b.example.com]
  - port: {number: 80, name: http-redirect, protocol: HTTP}
    hosts: [secure.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https-a, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: gateway-a}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: gateway-b}
"#
        ),
    )?;
    let route = |name: &str, host: &str, subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{host}]\n  gateways: [istio-system/ingress]\n  http:\n  - route: [{{destination: {{host: reviews.default.svc.cluster.local, subset: {subset}}}}}]\n"
        )
    };
    apply(
        b,
        "gateway-routes",
        &format!(
            "{}---\n{}",
            route("ingress-a", "a.example.com", "v1"),
            route("ingress-b", "b.example.com", "v2")
        ),
    )?;
    let http = b.ingress(80)?;
    let https = b.ingress(443)?;
    for (host, want) in [("a.example.com", "v1"), ("b.example.com", "v2")] {
        let replies = requests(
            b,
            "outside",
            &format!("-H 'Host: {host}'"),
            &format!("http://{http}/in"),
            5,
        )?;
        all_ok(host, &replies)?;
        let versions = tally(&replies, |r| r.version());
        ensure!(
            versions.get(want) == Some(&5),
            "{host} over HTTP routes to {want}: {versions:?}"
        );
    }
    let redirect = curl(
        b,
        "outside",
        "-H 'Host: secure.example.com' -D -",
        &format!("http://{http}/login"),
    )?;
    let r = redirect.first().context("no reply")?;
    ensure!(
        r.status == 301
            && r.body
                .to_ascii_lowercase()
                .contains("location: https://secure.example.com/login"),
        "httpsRedirect: expected 301 to https://secure.example.com/login, got {} {}",
        r.status,
        r.body
    );
    let ca_pem = ca.pem().replace('\'', "");
    for (host, want) in [("a.example.com", "v1"), ("b.example.com", "v2")] {
        let out = b.exec(
            "outside",
            &format!(
                "printf '%s' '{ca_pem}' > /tmp/scenario-ca.pem && curl -s --max-time 10 --cacert /tmp/scenario-ca.pem --connect-to {host}:443:{https} https://{host}/secure"
            ),
        )?;
        let answer: Value = serde_json::from_str(out.stdout.trim()).with_context(|| {
            format!("HTTPS to {host} (SNI) failed: {}{}", out.stdout, out.stderr)
        })?;
        ensure!(
            answer["version"] == want,
            "{host} over HTTPS routes to {want}: {answer}"
        );
    }
    Ok(())
}

/// Restarting the control plane under steady traffic fails no request and
/// the proxies resync; a broken VirtualService changes nothing and its
/// error shows in the control plane's status and in `meshctl analyze`.
fn mesh_resilience(b: &mut dyn Backend) -> anyhow::Result<()> {
    apply(b, "reviews-dr", SUBSETS)?;
    apply(b, "reviews-vs", &only("v2", ""))?;
    let marker = format!("/tmp/mesh-e2e-steady-{}", std::process::id());
    let started = b.exec(
        "client",
        &format!(
            "rm -f {marker}.*; (curl -s --max-time 10 --rate 40/s -o /dev/null -w '%{{http_code}}\\n' '{REVIEWS}/steady?n=[1-400]' > {marker}.out 2>&1; touch {marker}.done) > /dev/null 2>&1 &"
        ),
    )?;
    ensure!(
        started.success,
        "starting steady traffic: {}",
        started.stderr
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    b.restart_control_plane()?;
    converge(b, None, |_| true).context("the proxies did not resync after the restart")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let done = b.exec("client", &format!("test -f {marker}.done"))?;
        if done.success {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "steady traffic did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = b.exec("client", &format!("cat {marker}.out; rm -f {marker}.*"))?;
    let codes = out.stdout.lines().fold(
        std::collections::BTreeMap::<String, usize>::new(),
        |mut m, l| {
            *m.entry(l.trim().to_string()).or_default() += 1;
            m
        },
    );
    ensure!(
        codes.len() == 1 && codes.get("200") == Some(&400),
        "restarting the control plane must fail no request: {codes:?}"
    );

    // A broken edit of the VirtualService: nothing changes.
    let broken = reviews_vs(
        "  - match: [{uri: {regex: \"((\"}}]\n    route: [{destination: {host: reviews, subset: v1}}]\n",
    );
    b.apply("reviews-vs", &broken)?;
    // Nothing in effect changes, so no new snapshot: wait for the status.
    converge(b, None, |c| {
        has_object(c, "VirtualService", "reviews", "error")
    })
    .context("the broken VirtualService is not reported in /debug/configz")?;
    let replies = requests(b, "client", "", &format!("{REVIEWS}/still"), 50)?;
    all_ok("after the broken edit", &replies)?;
    let versions = tally(&replies, |r| r.version());
    ensure!(
        versions.get("v2") == Some(&50),
        "the last good VirtualService keeps routing to v2: {versions:?}"
    );
    let analysis = b.analyze()?;
    ensure!(
        analysis.contains("VirtualService default/reviews") && analysis.contains("IST0106"),
        "meshctl analyze does not report the broken VirtualService:\n{analysis}"
    );
    Ok(())
}
