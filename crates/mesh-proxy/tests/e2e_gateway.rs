//! The routing a stock Envoy is proven against in mesh-control's
//! `tests/envoy.rs`, now through our own proxy: the real `mesh-proxy`
//! binary runs as the ingress gateway (role router, `istio:
//! ingressgateway` in `istio-system`) and takes its whole configuration
//! from mesh-control serving a config directory of Services, Pods, a
//! DestinationRule, a Gateway and a VirtualService.
//!
//! Topology, all on loopback: mesh-echo "pods" `reviews-v1`, `-v2` and
//! `-v3` on 127.0.30.1, .2 and .3 (one port, like three pods), the
//! Gateway bound to 127.0.0.1 on a port the test picks, mesh-control in
//! process on another. Clients are hyper (HTTP/1.1 and HTTP/2 prior
//! knowledge) and the system `curl`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{Method, Version};
use support::control_plane::ControlPlane;
use support::proxy_process::{ProxyProcess, RunFlags};
use support::*;

const HOST: &str = "bookinfo.example.com";
const WAIT: Duration = Duration::from_secs(20);

/// The config directory's routing file: header match, fault, mirror and
/// a weighted default, the gateway bound to 127.0.0.1:`gateway_port`.
fn config(backend_port: u16, gateway_port: u16, weights: (u32, u32)) -> String {
    let (w1, w2) = weights;
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {backend_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1, namespace: default, labels: {{app: reviews, version: v1}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: 127.0.30.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v2, namespace: default, labels: {{app: reviews, version: v2}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: 127.0.30.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v3, namespace: default, labels: {{app: reviews, version: v3}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: 127.0.30.3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy:
    tls: {{mode: DISABLE}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/bookinfo-gateway]
  http:
  - match:
    - headers:
        end-user: {{exact: jason}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - match:
    - uri: {{prefix: /fault}}
    fault:
      abort:
        httpStatus: 418
        percentage: {{value: 100}}
    route:
    - destination: {{host: reviews, subset: v1}}
  - match:
    - uri: {{prefix: /mirror}}
    route:
    - destination: {{host: reviews, subset: v1}}
    mirrors:
    - destination: {{host: reviews, subset: v3}}
      percentage: {{value: 100}}
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {w1}
    - destination: {{host: reviews, subset: v2}}
      weight: {w2}
"#
    )
}

/// Backends, control plane and the gateway proxy of one test.
struct Mesh {
    gateway: SocketAddr,
    routing: PathBuf,
    backend_port: u16,
    v1: Backend,
    v2: Backend,
    v3: Backend,
    proxy: ProxyProcess,
    cp: ControlPlane,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// Starts everything and waits until the gateway routes.
    async fn start(weights: (u32, u32)) -> Self {
        let backend_port = free_port();
        let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let backend = |ip: &str, version: &str| {
            let listener = bind(None, &format!("{ip}:{backend_port}"));
            Backend::serve(listener, &format!("reviews-{version}"), version)
        };
        let (v1, v2, v3) = (
            backend("127.0.30.1", "v1"),
            backend("127.0.30.2", "v2"),
            backend("127.0.30.3", "v3"),
        );
        let dir = tempfile::tempdir().unwrap();
        let routing = dir.path().join("reviews.yaml");
        std::fs::write(&routing, config(backend_port, gateway.port(), weights)).unwrap();
        let cp = ControlPlane::serve_loopback(dir.path());
        let mut proxy = ProxyProcess::start(RunFlags::gateway(cp.addr));
        cp.wait_synced(&proxy.flags.node_id(), WAIT).await;
        proxy
            .wait_ok(None, gateway, HOST, "/ready-check", WAIT)
            .await;
        Self {
            gateway,
            routing,
            backend_port,
            v1,
            v2,
            v3,
            proxy,
            cp,
            _dir: dir,
        }
    }

    /// Rewrites the routing file.
    fn write_routing(&self, text: &str) {
        std::fs::write(&self.routing, text).unwrap();
    }
}

/// Share of `v2` answers over `n` default-route requests.
async fn v2_share(client: &HttpClient, gateway: SocketAddr, n: usize) -> f64 {
    let mut v2 = 0;
    for _ in 0..n {
        let reply = send(client, Method::GET, gateway, HOST, "/reviews", &[]).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        if reply.version() == "v2" {
            v2 += 1;
        }
    }
    v2 as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_goes_to_v2_and_weights_split_90_10() {
    let mesh = Mesh::start((90, 10)).await;
    let client = client(Version::HTTP_11);

    for _ in 0..20 {
        let reply = send(
            &client,
            Method::GET,
            mesh.gateway,
            HOST,
            "/reviews",
            &[("end-user", "jason")],
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.version(), "v2");
    }

    let n = 1000;
    let share = v2_share(&client, mesh.gateway, n).await;
    let (lo, hi) = binomial_bounds(0.10, n);
    assert!(
        (lo..=hi).contains(&share),
        "v2 share {share} outside the 99.9 % interval [{lo:.3}, {hi:.3}] of 10 %"
    );
    // Neither the mirror target nor anything else sees default traffic.
    assert!(mesh.v3.log.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_answers_its_status_and_the_mirror_gets_a_shadow_copy() {
    let mesh = Mesh::start((90, 10)).await;
    let client = client(Version::HTTP_11);

    let reply = send(&client, Method::GET, mesh.gateway, HOST, "/fault", &[]).await;
    assert_eq!(reply.status, 418);
    assert!(
        mesh.v1.seen("/fault").is_empty(),
        "an aborted request must not reach the backend"
    );

    let reply = send(&client, Method::GET, mesh.gateway, HOST, "/mirror", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version(), "v1", "the client sees the primary");
    assert_eq!(mesh.v1.seen("/mirror"), vec![HOST.to_string()]);
    let shadow = eventually(Duration::from_secs(5), || async {
        mesh.v3.seen("/mirror").into_iter().next()
    })
    .await;
    assert_eq!(
        shadow.as_deref(),
        Some("bookinfo.example.com-shadow"),
        "the mirrored copy reaches v3 with the -shadow host"
    );
    assert!(mesh.v2.seen("/mirror").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_virtual_service_reroutes_and_a_broken_file_changes_nothing() {
    let mesh = Mesh::start((100, 0)).await;
    let client = client(Version::HTTP_11);
    assert_eq!(v2_share(&client, mesh.gateway, 20).await, 0.0);

    let all_v2 = config(mesh.backend_port, mesh.gateway.port(), (0, 100));
    mesh.write_routing(&all_v2);
    let switched = eventually(Duration::from_secs(10), || async {
        (v2_share(&client, mesh.gateway, 20).await == 1.0).then_some(())
    })
    .await;
    assert!(
        switched.is_some(),
        "weights 0/100 did not take effect:\n{}",
        mesh.proxy.log()
    );

    // A negative weight is refused by the control plane, which keeps the
    // last good VirtualService: nothing reaches the proxy, routing stays.
    assert_eq!(mesh.cp.config_errors(), 0);
    mesh.write_routing(&all_v2.replace("weight: 100", "weight: -5"));
    let noticed = eventually(Duration::from_secs(10), || async {
        (mesh.cp.config_errors() > 0).then_some(())
    })
    .await;
    assert!(
        noticed.is_some(),
        "the control plane never read the broken file"
    );
    assert_eq!(v2_share(&client, mesh.gateway, 50).await, 1.0);
    assert!(
        mesh.cp.synced(&mesh.proxy.flags.node_id()),
        "the proxy is still in sync: {:#?}",
        mesh.cp.proxies()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_lists_the_gateway_listener_and_route() {
    let mut mesh = Mesh::start((90, 10)).await;
    let port = mesh.gateway.port();
    let dump = config_dump(mesh.proxy.flags.admin, "").await;
    let listeners = dump_section(&dump, ".ListenersConfigDump");
    let listener = listeners["dynamic_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == format!("127.0.0.1_{port}"))
        .unwrap_or_else(|| panic!("listener 127.0.0.1_{port} not in {listeners:#}"));
    let address = &listener["active_state"]["listener"]["address"]["socket_address"];
    assert_eq!(address["address"], "127.0.0.1");
    assert_eq!(address["port_value"], port);

    let routes = dump_section(&dump, ".RoutesConfigDump");
    let route = routes["dynamic_route_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route_config"]["name"] == format!("http.{port}"))
        .unwrap_or_else(|| panic!("route http.{port} not in {routes:#}"));
    let text = route.to_string();
    for cluster in [
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
    ] {
        assert!(
            text.contains(cluster),
            "route does not name {cluster}: {route:#}"
        );
    }

    // Envoy's drain: SIGTERM exits 0.
    let status = mesh.proxy.terminate();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_h2c_gets_the_same_answers_as_hyper() {
    let mesh = Mesh::start((100, 0)).await;
    let url = |path: &str| format!("http://{}{path}", mesh.gateway);
    let host_header = format!("host: {HOST}");
    /// A request and the answer every client must get.
    struct Case {
        path: &'static str,
        header: Option<(&'static str, &'static str)>,
        status: u16,
        /// The echo version that answers, if a backend does.
        version: Option<&'static str>,
    }
    let case = |path, header, status, version| Case {
        path,
        header,
        status,
        version,
    };
    let cases = [
        case("/reviews", Some(("end-user", "jason")), 200, Some("v2")),
        case("/reviews", None, 200, Some("v1")),
        case("/mirror", None, 200, Some("v1")),
        case("/fault", None, 418, None),
    ];
    for Case {
        path,
        header,
        status,
        version,
    } in cases
    {
        let headers: Vec<(&str, &str)> = header.into_iter().collect();
        for http in [Version::HTTP_11, Version::HTTP_2] {
            let hyper = send(
                &client(http),
                Method::GET,
                mesh.gateway,
                HOST,
                path,
                &headers,
            )
            .await;
            assert_eq!(hyper.status, status, "hyper {http:?} {path}");
            let mut args = vec!["-H".to_string(), host_header.clone()];
            if let Some((k, v)) = header {
                args.extend(["-H".to_string(), format!("{k}: {v}")]);
            }
            if http == Version::HTTP_2 {
                args.push("--http2-prior-knowledge".into());
            }
            args.push(url(path));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let curl = curl(None, &args).unwrap();
            assert_eq!(curl.status, status, "curl {http:?} {path}: {}", curl.body);
            if let Some(version) = version {
                assert_eq!(hyper.version(), version, "hyper {http:?} {path}");
                let echo = curl.echo();
                assert_eq!(echo.version, version, "curl {http:?} {path}");
                assert_eq!(echo.host, HOST, "curl {http:?} {path}");
                assert_eq!(echo.path, path);
            }
        }
    }
}
