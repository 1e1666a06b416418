//! Shared pieces of the data-path tests: Envoy resources built from JSON,
//! a proxy run in-process on loopback, mesh-echo backends and hyper
//! clients.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::echo::{Behaviour, EchoConfig, EchoResponse, RequestLog};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::drain;
use mesh_proxy::proxy::{Observer, Options, ProxyError, RequestRecord, TcpRecord};
use mesh_proxy::resources::{Origin, Resource, Resources};
use mesh_proxy::runtime::{self, Runtime};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Runs `f`, failing the test if it takes longer than `secs`.
pub async fn bounded<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test took too long")
}

/// Polls `check` every 10 ms (without blocking the runtime) until it
/// returns `Some` or `secs` pass.
pub async fn eventually<T>(secs: u64, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- resources ---

pub fn listener(v: Value) -> Resource {
    Resource::Listener(Box::new(mesh_api::xds::json::from_json(&v).unwrap()))
}

pub fn route(v: Value) -> Resource {
    Resource::Route(mesh_api::xds::json::from_json(&v).unwrap())
}

pub fn cluster(v: Value) -> Resource {
    Resource::Cluster(Box::new(mesh_api::xds::json::from_json(&v).unwrap()))
}

pub fn endpoints(v: Value) -> Resource {
    Resource::Endpoint(mesh_api::xds::json::from_json(&v).unwrap())
}

/// An HTTP listener on `addr` taking its routes from RDS `route_name`,
/// with the filters Istio configures.
pub fn http_listener(name: &str, addr: SocketAddr, route_name: &str) -> Resource {
    listener(json!({
        "name": name,
        "address": {"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}},
        "filterChains": [{"filters": [hcm(json!({"rds": {"routeConfigName": route_name}}))]}],
    }))
}

/// An HTTP connection manager filter with `extra` fields.
pub fn hcm(extra: Value) -> Value {
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "statPrefix": "test",
        "upgradeConfigs": [{"upgradeType": "websocket"}],
        "httpFilters": [
            {"name": "envoy.filters.http.cors", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.fault", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typedConfig": config})
}

/// A TCP proxy filter to `cluster`.
pub fn tcp_proxy(cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "statPrefix": cluster, "cluster": cluster}})
}

/// A route configuration with one virtual host for every domain.
pub fn route_config(name: &str, routes: Value) -> Resource {
    route(
        json!({"name": name, "virtualHosts": [{"name": "all", "domains": ["*"], "routes": routes}]}),
    )
}

fn lb_endpoints(addrs: &[SocketAddr]) -> Value {
    json!([{"lbEndpoints": addrs.iter().map(|a| json!({"endpoint": {"address": {"socketAddress": {
        "address": a.ip().to_string(), "portValue": a.port()}}}})).collect::<Vec<_>>()}])
}

/// A STATIC cluster over `addrs`.
pub fn static_cluster(name: &str, addrs: &[SocketAddr]) -> Resource {
    cluster(
        json!({"name": name, "type": "STATIC", "connectTimeout": "1s",
        "loadAssignment": {"clusterName": name, "endpoints": lb_endpoints(addrs)}}),
    )
}

/// An EDS cluster and its assignment over `addrs`.
pub fn eds_cluster(name: &str, addrs: &[SocketAddr]) -> Vec<Resource> {
    vec![
        cluster(json!({"name": name, "type": "EDS", "connectTimeout": "1s",
            "edsClusterConfig": {"edsConfig": {"ads": {}}, "serviceName": name}})),
        endpoints(json!({"clusterName": name, "endpoints": lb_endpoints(addrs)})),
    ]
}

pub fn resources(list: Vec<Resource>) -> Resources {
    let mut r = Resources::default();
    for resource in list {
        runtime::check(&resource).unwrap_or_else(|e| panic!("{e}"));
        r.insert(resource, Origin::Static);
    }
    r
}

// --- the proxy ---

#[derive(Default)]
pub struct Records {
    pub requests: Mutex<Vec<RequestRecord>>,
    pub connections: Mutex<Vec<TcpRecord>>,
}

impl Observer for Records {
    fn request(&self, record: &RequestRecord) {
        self.requests.lock().unwrap().push(record.clone());
    }
    fn connection(&self, record: &TcpRecord) {
        self.connections.lock().unwrap().push(record.clone());
    }
}

pub struct Proxy {
    runtime: watch::Sender<Arc<Runtime>>,
    trigger: Option<drain::Trigger>,
    pub task: JoinHandle<Result<(), ProxyError>>,
    pub records: Arc<Records>,
}

impl Proxy {
    /// Runs the proxy over `list` and waits until `ready` accepts.
    pub async fn start(list: Vec<Resource>, ready: SocketAddr) -> Self {
        let (tx, rx) = watch::channel(Arc::new(runtime::compile(&resources(list))));
        let (trigger, watch) = drain::channel();
        let records = Arc::new(Records::default());
        let options = Options {
            observer: records.clone(),
        };
        let task = tokio::spawn(mesh_proxy::proxy::run_with(rx, watch, options));
        wait_listening(ready).await;
        Self {
            runtime: tx,
            trigger: Some(trigger),
            task,
            records,
        }
    }

    /// Publishes a runtime compiled from `list`.
    pub fn update(&self, list: Vec<Resource>) {
        self.runtime
            .send_replace(Arc::new(runtime::compile(&resources(list))));
    }

    /// Starts a drain; returns the trigger's verdict once every watch is gone.
    pub async fn drain(&mut self, deadline: Duration) -> bool {
        self.trigger.take().unwrap().drain(deadline).await
    }

    /// The last request record, waiting for it to be written.
    pub async fn last_request(&self) -> RequestRecord {
        for _ in 0..100 {
            if let Some(r) = self.records.requests.lock().unwrap().last().cloned() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no request record");
    }
}

pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} never started listening");
}

// --- backends ---

pub struct Echo {
    pub addr: SocketAddr,
    pub log: RequestLog,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A mesh-echo backend named `name`, version `version`.
pub async fn echo(name: &str, version: &str) -> Echo {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
    let config = Arc::new(EchoConfig {
        name: name.into(),
        version: version.into(),
        namespace: "default".into(),
        behaviour: Behaviour::default(),
        log: Some(log.clone()),
    });
    let task = tokio::spawn(e2e::echo::serve(socket, config));
    Echo { addr, log, task }
}

/// A backend that answers each request only when told: `arrived` gets
/// the path of every request as it arrives, `release` lets one answer go.
pub struct Held {
    pub addr: SocketAddr,
    pub arrived: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub release: Arc<tokio::sync::Semaphore>,
    task: JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn held(name: &'static str) -> Held {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            let (tx, gate) = (tx.clone(), gate.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (tx, gate) = (tx.clone(), gate.clone());
                        async move {
                            let _ = tx.send(req.uri().path().to_string());
                            if let Ok(permit) = gate.acquire().await {
                                permit.forget();
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(name),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Held {
        addr,
        arrived,
        release,
        task,
    }
}

/// A loopback address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    mesh_test_support::free_addr()
}

// --- clients ---

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One HTTP/2 (prior knowledge) request with `:authority` = `host`.
pub async fn send_h2(proxy: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut builder = Request::builder()
        .uri(format!("http://{host}{path}"))
        .version(http::Version::HTTP_2);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let resp = sender
        .send_request(builder.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn echo(&self) -> EchoResponse {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo answer ({e}): {:?} {:?}",
                self.status, self.body
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a request through the proxy at `proxy` with `Host: host`.
pub async fn send(
    client: &HttpClient,
    method: Method,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(Full::new(Bytes::new())).unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(client: &HttpClient, proxy: SocketAddr, host: &str, path: &str) -> Reply {
    send(client, Method::GET, proxy, host, path, &[]).await
}

/// Counts answers by echo name.
pub fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for n in names {
        *t.entry(n).or_insert(0) += 1;
    }
    t
}
