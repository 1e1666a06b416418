//! A fake Kubernetes API server on loopback: what `meshctl proxy-config`
//! and `proxy-status` ask of a cluster. It answers GET pod, GET
//! deployment and list pods by `labelSelector` from recorded objects
//! (`pods.json`, `deployments.json`), and `pods/NAME/portforward` the way
//! the API server does for kube-rs: a WebSocket upgrade with subprotocol
//! `v4.channel.k8s.io`, per port a data channel (2i) and an error channel
//! (2i+1), each opened by a frame carrying the port as 2 bytes
//! little-endian, then the data channel relayed to a real TCP endpoint the
//! test names (a sidecar's admin inside its network namespace, or
//! mesh-control's monitoring port). A port with no endpoint gets the
//! kubelet's error on the error channel; pods named in `forbidden` get the
//! 403 RBAC answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Where a pod's port is relayed to.
#[derive(Clone, Debug)]
pub enum Relay {
    /// An address on the host.
    Addr(SocketAddr),
    /// An address inside a network namespace.
    Netns(String, SocketAddr),
}

/// The server's configuration and its request log.
#[derive(Default)]
pub struct Cluster {
    /// Recorded pods.
    pub pods: Vec<Value>,
    /// Recorded deployments.
    pub deployments: Vec<Value>,
    /// (namespace, pod, port) -> endpoint.
    pub relays: HashMap<(String, String, u16), Relay>,
    /// Pods whose port-forward RBAC refuses.
    pub forbidden: Vec<String>,
    /// Every request, `METHOD path?query`.
    pub log: Mutex<Vec<String>>,
}

/// A running fake API server; stops with the test process (its runtime
/// thread is detached, its listener on an ephemeral loopback port).
pub struct ApiServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The shared state (for the request log).
    pub cluster: Arc<Cluster>,
}

impl ApiServer {
    /// Serves `cluster` on a fresh loopback port.
    pub fn start(cluster: Cluster) -> Self {
        let cluster = Arc::new(cluster);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = cluster.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let cluster = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let cluster = cluster.clone();
                            async move { Ok::<_, std::convert::Infallible>(handle(&cluster, req)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        });
        Self { url, cluster }
    }

    /// The requests seen so far.
    pub fn log(&self) -> Vec<String> {
        self.cluster.log.lock().unwrap().clone()
    }
}

fn handle(cluster: &Arc<Cluster>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    // kube-rs writes `?&ports=...`; the log keeps the parameters only.
    let query = req
        .uri()
        .query()
        .unwrap_or_default()
        .trim_start_matches('&')
        .to_string();
    cluster
        .log
        .lock()
        .unwrap()
        .push(format!("{} {path}?{query}", req.method()));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods"] => {
            let selector = param(&query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = cluster
                .pods
                .iter()
                .filter(|p| p["metadata"]["namespace"] == *ns && matches(p, &selector))
                .cloned()
                .collect();
            ok(json!({"kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": "48300"}, "items": items}))
        }
        ["api", "v1", "namespaces", ns, "pods", name] => match find(&cluster.pods, ns, name) {
            Some(pod) => ok(pod.clone()),
            None => not_found("pods", "", name),
        },
        ["apis", "apps", "v1", "namespaces", ns, "deployments", name] => {
            match find(&cluster.deployments, ns, name) {
                Some(d) => ok(d.clone()),
                None => not_found("deployments", "apps", name),
            }
        }
        ["api", "v1", "namespaces", ns, "pods", name, "portforward"] => {
            portforward(cluster, req, ns, name, &query)
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            json!({}),
        ),
    }
}

fn portforward(
    cluster: &Arc<Cluster>,
    req: Request<Incoming>,
    ns: &str,
    name: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    if find(&cluster.pods, ns, name).is_none() {
        return not_found("pods", "", name);
    }
    if cluster.forbidden.iter().any(|f| f == name) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "pods \"{name}\" is forbidden: User \"developer\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"{ns}\""
            ),
            json!({"name": name, "kind": "pods"}),
        );
    }
    let port: u16 = param(query, "ports")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let protocols = header(&req, "sec-websocket-protocol");
    assert!(
        protocols
            .split(',')
            .any(|p| p.trim() == "v4.channel.k8s.io"),
        "kube-rs offered {protocols:?}"
    );
    let key = header(&req, "sec-websocket-key");
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let relay = cluster
        .relays
        .get(&(ns.to_string(), name.to_string(), port))
        .cloned();
    let uid = find(&cluster.pods, ns, name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        forward(ws, port, relay, &uid).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .body(Full::default())
        .unwrap()
}

/// The v4 channel protocol for one port: channel 0 data, 1 errors.
async fn forward<S>(mut ws: WebSocketStream<S>, port: u16, relay: Option<Relay>, uid: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let [lo, hi] = port.to_le_bytes();
    for ch in [0u8, 1] {
        if ws.send(Message::binary(vec![ch, lo, hi])).await.is_err() {
            return;
        }
    }
    let connected = match relay {
        Some(Relay::Addr(addr)) => tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string()),
        Some(Relay::Netns(netns, addr)) => meshctl::admin::connect_in_netns(&netns, addr)
            .await
            .map_err(|e| format!("{e:#}")),
        None => Err("dial tcp4 127.0.0.1:".to_string()
            + &port.to_string()
            + ": connect: connection refused"),
    };
    let mut tcp = match connected {
        Ok(tcp) => tcp,
        Err(e) => {
            let text = format!(
                "error forwarding port {port} to pod {uid}, uid : failed to execute portforward in network namespace \"/var/run/netns/cni-1\": failed to connect to localhost:{port} inside namespace: {e}"
            );
            let mut frame = vec![1u8];
            frame.extend(text.as_bytes());
            let _ = ws.send(Message::binary(frame)).await;
            // As the API server, the connection stays until the client
            // closes it (bounded: a test must end).
            let drain = async { while let Some(Ok(_)) = ws.next().await {} };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(data))) if data.len() > 1 && data[0] == 0 => {
                    if tcp.write_all(&data[1..]).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            n = tcp.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut frame = Vec::with_capacity(n + 1);
                    frame.push(0u8);
                    frame.extend_from_slice(&buf[..n]);
                    if ws.send(Message::binary(frame)).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = ws.close(None).await;
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn find<'a>(objects: &'a [Value], ns: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["metadata"]["namespace"] == ns && o["metadata"]["name"] == name)
}

/// `k=v,k2=v2` equality selectors.
fn matches(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        object["metadata"]["labels"][k] == v
    })
}

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let (b'%', Some(b)) = (bytes[i], hex) {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn not_found(kind: &str, group: &str, name: &str) -> Response<Full<Bytes>> {
    let resource = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
        json!({"name": name, "group": group, "kind": kind}),
    )
}

fn status(code: StatusCode, reason: &str, message: &str, details: Value) -> Response<Full<Bytes>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": details, "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}
