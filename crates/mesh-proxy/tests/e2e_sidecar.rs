//! The issue's acceptance test for transparent capture: a pod's network
//! namespace with `mesh-proxy iptables` applied (the binary) and `mesh-proxy
//! run --role sidecar` running in it as UID/GID 1337, configured by
//! mesh-control; an application that knows nothing about the proxy calls
//! a service VIP and is answered by the backend the VirtualService picks,
//! and a peer's call to the pod's port reaches the application through the
//! proxy's inbound side.
//!
//! Topology (every address lives only inside namespaces this test makes):
//!
//! ```text
//!  app namespace "pod" (productpage-v1)        peer namespace
//!  ------------------------------------        -----------------------------
//!  veth 10.0.2.1/24  <-------------------->    veth 10.0.2.2/24 (+ .11, .12)
//!  dummy0 10.244.0.5/24, default route           mesh-control ADS 10.0.2.2:15010
//!  mesh-proxy (UID 1337) 15001/15006/15021        reviews-v1 echo 10.0.2.11:9080
//!  app: mesh-echo 0.0.0.0:9080, :7070             reviews-v2 echo 10.0.2.12:9080
//!  clients: curl, hyper                           inbound clients
//! ```
//!
//! The service VIP 10.96.0.20 exists nowhere: the app namespace routes it
//! into a dummy device that drops everything, so only capture can answer.
//! mesh-control runs in this test process with its listening socket created
//! inside the peer namespace (`Namespace::run_in`; a socket keeps its
//! namespace wherever it is then used), so the sidecar reaches it over the
//! veth exactly as a pod reaches istiod; its connection is not captured
//! because it belongs to UID 1337. The backends are in-process mesh-echo
//! servers on sockets made the same way.
//!
//! Needs root, `ip` (iproute2), iptables, `setpriv` (util-linux) and
//! `curl`; CI has them (e2e/test.sh installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Version;
use mesh_test_support::netns::{Namespace, require_program, run_bounded, veth_pair};
use support::control_plane::ControlPlane;
use support::proxy_process::{BINARY, ProxyProcess, RunFlags};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const POD_IP: &str = "10.0.2.1";
const REVIEWS_VIP: &str = "10.96.0.20:9080";
const XDS: &str = "10.0.2.2:15010";

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: default}
spec:
  clusterIP: 10.96.0.30
  selector: {app: productpage}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: productpage-v1, namespace: default, labels: {app: productpage, version: v1}}
spec: {containers: [{name: app, image: mesh-echo}]}
status: {podIP: 10.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
spec: {containers: [{name: app, image: mesh-echo}]}
status: {podIP: 10.0.2.11}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2}}
spec: {containers: [{name: app, image: mesh-echo}]}
status: {podIP: 10.0.2.12}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: DISABLE}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
"#;

/// The pod, its peer, the control plane and the sidecar. Dropping it
/// kills the proxy by PID and deletes both namespaces (with their devices
/// and rules).
struct World {
    proxy: ProxyProcess,
    app: Backend,
    app_tcp: Backend,
    v1: Backend,
    v2: Backend,
    _cp: ControlPlane,
    _dir: tempfile::TempDir,
    // Last: deleted after every socket and process in them is gone.
    pod: Namespace,
    peer: Namespace,
}

impl World {
    async fn start() -> Self {
        for (program, package) in [
            ("iptables-restore", "iptables"),
            ("setpriv", "util-linux"),
            ("curl", "curl"),
        ] {
            require_program(program, package);
        }
        let pod = Namespace::create("e2epod");
        let peer = Namespace::create("e2epeer");
        let (_, peer_dev) = veth_pair(&pod, "10.0.2.1/24", &peer, "10.0.2.2/24");
        peer.add_address(&peer_dev, "10.0.2.11/24");
        peer.add_address(&peer_dev, "10.0.2.12/24");
        pod.add_dummy("dummy0", "10.244.0.5/24");
        pod.add_default_route("dummy0");

        // The capture rules, installed by the binary as the init container does.
        let output = run_bounded(pod.exec(BINARY).arg("iptables"), Duration::from_secs(20));
        assert!(
            output.status.success(),
            "mesh-proxy iptables failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        let v1 = Backend::serve(bind(Some(&peer), "10.0.2.11:9080"), "reviews-v1", "v1");
        let v2 = Backend::serve(bind(Some(&peer), "10.0.2.12:9080"), "reviews-v2", "v2");
        // The application: declared port 9080 (Service productpage) and an
        // undeclared one, 7070.
        let app = Backend::serve(bind(Some(&pod), "0.0.0.0:9080"), "productpage-v1", "v1");
        let app_tcp = Backend::serve(bind(Some(&pod), "0.0.0.0:7070"), "productpage-v1", "v1");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), CONFIG).unwrap();
        let cp = ControlPlane::serve(dir.path(), bind(Some(&peer), XDS));

        let flags = RunFlags::sidecar(
            cp.addr,
            "productpage-v1",
            POD_IP,
            &[("app", "productpage"), ("version", "v1")],
        );
        let node_id = flags.node_id();
        let mut proxy = ProxyProcess::start_in(&pod, flags);
        cp.wait_synced(&node_id, WAIT).await;
        // The health port of the pod's sidecar, reached from inside the pod.
        let health: SocketAddr = "127.0.0.1:15021".parse().unwrap();
        proxy
            .wait_ok(Some(&pod), health, "localhost", "/healthz/ready", WAIT)
            .await;
        Self {
            proxy,
            app,
            app_tcp,
            v1,
            v2,
            _cp: cp,
            _dir: dir,
            pod,
            peer,
        }
    }

    /// `curl` from the application's namespace to `reviews:9080`, resolved
    /// to the VIP as cluster DNS would.
    fn curl_reviews(&self, extra: &[&str]) -> Result<CurlReply, String> {
        let mut args = vec!["--resolve", "reviews:9080:10.96.0.20"];
        args.extend_from_slice(extra);
        args.push("http://reviews:9080/reviews");
        curl(Some(&self.pod), &args)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_calling_a_service_vip_is_routed_by_the_virtual_service() {
    let world = World::start().await;
    let vip: SocketAddr = REVIEWS_VIP.parse().unwrap();

    // The listeners open right after readiness: poll the first answer.
    let first = eventually(WAIT, || async { world.curl_reviews(&[]).ok() }).await;
    let first = first.unwrap_or_else(|| {
        panic!(
            "no answer through capture: {:?}\n{}",
            world.curl_reviews(&[]),
            world.proxy.log()
        )
    });
    assert_eq!(first.status, 200, "{}", first.body);

    // curl, as the app: header routing picks v2, everything else v1.
    for _ in 0..10 {
        let jason = world.curl_reviews(&["-H", "end-user: jason"]).unwrap();
        assert_eq!((jason.status, jason.echo().version.as_str()), (200, "v2"));
        let other = world.curl_reviews(&[]).unwrap();
        assert_eq!((other.status, other.echo().version.as_str()), (200, "v1"));
    }

    // The same through hyper on sockets made in the namespace, over
    // HTTP/1.1 and h2c (prior knowledge): the sniffed protocol is served.
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let jason = get_in(
            Some(&world.pod),
            vip,
            version,
            "reviews:9080",
            "/reviews",
            &[("end-user", "jason")],
        )
        .await
        .unwrap();
        assert_eq!(jason.status, 200, "{version:?}");
        let echo = jason.echo();
        assert_eq!(echo.version, "v2", "{version:?}");
        assert_eq!(echo.host, "reviews:9080");
        // Served by the HTTP listener 0.0.0.0_9080 (not passed through as
        // TCP): the proxy stamped the request.
        assert!(echo.headers.contains_key("x-request-id"), "{echo:?}");
        let other = get_in(
            Some(&world.pod),
            vip,
            version,
            "reviews:9080",
            "/reviews",
            &[],
        )
        .await
        .unwrap();
        assert_eq!(other.version(), "v1", "{version:?}");
    }
    assert!(!world.v2.seen("/reviews").is_empty());
    assert!(!world.v1.seen("/reviews").is_empty());

    // Without the rules the VIP is a black hole: capture was the only way.
    let output = run_bounded(
        world.pod.exec(BINARY).args(["iptables", "--cleanup"]),
        Duration::from_secs(20),
    );
    assert!(output.status.success());
    let direct = curl(
        Some(&world.pod),
        &[
            "--connect-timeout",
            "1",
            &format!("http://{REVIEWS_VIP}/reviews"),
        ],
    );
    assert!(
        direct.is_err(),
        "the VIP answered without capture: {direct:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_calling_the_pod_reaches_the_app_through_virtual_inbound() {
    let world = World::start().await;
    let pod_port: SocketAddr = format!("{POD_IP}:9080").parse().unwrap();

    // Declared port 9080: inbound capture (15006), the chain for port 9080,
    // its HTTP connection manager, cluster inbound|9080||, the app.
    let reply = eventually(WAIT, || async {
        get_in(
            Some(&world.peer),
            pod_port,
            Version::HTTP_11,
            "productpage:9080",
            "/productpage",
            &[],
        )
        .await
        .ok()
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the app never answered through inbound:\n{}",
            world.proxy.log()
        )
    });
    assert_eq!(reply.status, 200);
    let echo = reply.echo();
    assert_eq!(echo.name, "productpage-v1");
    assert!(
        echo.headers.contains_key("x-request-id"),
        "the request did not pass the inbound HTTP connection manager: {echo:?}"
    );
    assert_eq!(
        world.app.seen("/productpage"),
        vec!["productpage:9080".to_string()]
    );

    // curl from the peer, over h2c too.
    for extra in [None, Some("--http2-prior-knowledge")] {
        let mut args: Vec<&str> = extra.into_iter().collect();
        let url = format!("http://{POD_IP}:9080/curl");
        args.push(&url);
        let reply = curl(Some(&world.peer), &args).unwrap();
        assert_eq!(reply.status, 200, "{extra:?}: {}", reply.body);
        assert_eq!(reply.echo().name, "productpage-v1");
    }

    // An undeclared port: the catch-all chain passes the bytes through to
    // the app (InboundPassthroughCluster, original destination).
    let reply = get_in(
        Some(&world.peer),
        format!("{POD_IP}:7070").parse().unwrap(),
        Version::HTTP_11,
        "productpage:7070",
        "/undeclared",
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("undeclared port: {e}\n{}", world.proxy.log()));
    assert_eq!(reply.status, 200);
    assert_eq!(world.app_tcp.seen("/undeclared").len(), 1);
}
