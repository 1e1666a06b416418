//! Simulated proxies for `mesh-bench control`, run in a child process
//! (`mesh-bench control-clients`) so the parent's RSS is the control
//! plane's alone. Each proxy is one SotW ADS stream behaving like Envoy:
//! CDS (wildcard), then EDS for the EDS clusters received, LDS, then RDS
//! for the route configurations named by port; every response is ACKed
//! with its version and nonce. Streams share a tonic channel (one HTTP/2
//! connection) per group, so 5,000 proxies use 50 sockets, not 5,000.
//!
//! Results go to stdout as JSON lines ([`ClientEvent`]), stamped with wall
//! clock microseconds: both processes read the same clock, which is all a
//! millisecond-scale convergence measurement needs.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use mesh_api::xds::ResourceType;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::mesh::MeshShape;

/// What the child reports, one JSON line each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum ClientEvent {
    /// Proxy `client` has ACKed CDS, EDS, LDS and RDS once.
    Init {
        /// Proxy index.
        client: usize,
        /// From opening the stream to the last of those ACKs.
        micros: u64,
        /// Encoded size of the responses it took.
        bytes: u64,
    },
    /// A later ACK (a push after the initial configuration).
    Ack {
        /// Proxy index.
        client: usize,
        /// `cds`, `eds`, `lds` or `rds`.
        ty: String,
        /// Wall clock when the ACK was sent, µs since the Unix epoch.
        at_us: u64,
    },
    /// The stream failed; the proxy is gone.
    Failed {
        /// Proxy index.
        client: usize,
        /// Why.
        error: String,
    },
}

/// Wall clock, µs since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What the child process is told.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// The ADS server.
    pub addr: SocketAddr,
    /// The mesh both sides generate.
    pub mesh: MeshShape,
    /// Proxies to simulate.
    pub clients: usize,
    /// Streams sharing one HTTP/2 connection.
    pub per_connection: usize,
}

/// The leading fields of `envoy.config.cluster.v3.Cluster`: enough to know
/// which clusters need EDS without decoding 10,000 full clusters per proxy.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterHead {
    #[prost(string, tag = "1")]
    name: String,
    /// `cluster_discovery_type.type`; EDS is 3.
    #[prost(int32, optional, tag = "2")]
    discovery_type: Option<i32>,
}

const EDS: i32 = 3;

/// EDS cluster names by CDS version: proxies with the same version got the
/// same clusters, so decode once.
type NameCache = Arc<Mutex<HashMap<String, Arc<Vec<String>>>>>;

/// Runs the proxies until the parent kills this process.
pub fn run(params: ClientParams) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the clients' tokio runtime")?;
    let (events, lines) = std::sync::mpsc::channel::<ClientEvent>();
    std::thread::spawn(move || {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for ev in lines {
            let written = serde_json::to_writer(&mut out, &ev)
                .map_err(std::io::Error::other)
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush());
            if written.is_err() {
                // The parent is gone.
                std::process::exit(0);
            }
        }
    });
    runtime.block_on(async move {
        let endpoint = Endpoint::from_shared(format!("http://{}", params.addr))?
            // Envoy's defaults for the xds-grpc cluster are 256 MiB windows;
            // small windows would make the bench measure flow control.
            .initial_stream_window_size(Some(64 << 20))
            .initial_connection_window_size(Some(256 << 20));
        let cache = NameCache::default();
        let per = params.per_connection.max(1);
        let mut tasks = Vec::with_capacity(params.clients);
        let mut channel: Option<Channel> = None;
        for i in 0..params.clients {
            if i % per == 0 {
                channel = Some(endpoint.connect().await.context("connecting to ADS")?);
            }
            let Some(channel) = channel.clone() else {
                continue;
            };
            let (mesh, cache, events) = (params.mesh, cache.clone(), events.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = proxy(i, channel, mesh, cache, events.clone()).await {
                    let _ = events.send(ClientEvent::Failed {
                        client: i,
                        error: format!("{e:#}"),
                    });
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// The node a sidecar of proxy `i` sends, as Istio's bootstrap writes it.
fn node(mesh: &MeshShape, i: usize) -> Node {
    let info = mesh.proxy(i);
    let labels = Struct {
        fields: info
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), string_value(v)))
            .collect(),
    };
    let ips: Vec<String> = info.ip_addresses.iter().map(|ip| ip.to_string()).collect();
    let fields = [
        ("NAMESPACE", string_value(&info.namespace)),
        ("NAME", string_value(&info.name)),
        ("INSTANCE_IPS", string_value(&ips.join(","))),
        (
            "LABELS",
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        ),
    ];
    Node {
        id: info.id.clone(),
        cluster: format!("svc-{}.{}", mesh.pod_of_proxy(i).0, info.namespace),
        metadata: Some(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        ..Default::default()
    }
}

fn request(ty: ResourceType, names: &[String], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.type_url(),
        resource_names: names.to_vec(),
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn eds_names(resp: &DiscoveryResponse, cache: &NameCache) -> anyhow::Result<Arc<Vec<String>>> {
    if let Ok(c) = cache.lock()
        && let Some(names) = c.get(&resp.version_info)
    {
        return Ok(names.clone());
    }
    let mut names = Vec::with_capacity(resp.resources.len());
    for any in &resp.resources {
        let head = ClusterHead::decode(any.value.as_slice()).context("decoding a Cluster")?;
        if head.discovery_type == Some(EDS) {
            names.push(head.name);
        }
    }
    let names = Arc::new(names);
    if let Ok(mut c) = cache.lock() {
        c.insert(resp.version_info.clone(), names.clone());
    }
    Ok(names)
}

fn short(ty: ResourceType) -> &'static str {
    match ty {
        ResourceType::Cluster => "cds",
        ResourceType::Endpoint => "eds",
        ResourceType::Listener => "lds",
        ResourceType::Route => "rds",
        ResourceType::Secret => "sds",
    }
}

/// One simulated Envoy on its own ADS stream.
async fn proxy(
    i: usize,
    channel: Channel,
    mesh: MeshShape,
    cache: NameCache,
    events: std::sync::mpsc::Sender<ClientEvent>,
) -> anyhow::Result<()> {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let started = Instant::now();
    let first = DiscoveryRequest {
        node: Some(node(&mesh, i)),
        ..request(ResourceType::Cluster, &[], "", "")
    };
    tx.send(first).await.context("queueing the CDS request")?;
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .context("opening the ADS stream")?
        .into_inner();

    let routes = mesh.route_names();
    let mut eds: Arc<Vec<String>> = Arc::default();
    let (mut eds_version, mut eds_nonce) = (String::new(), String::new());
    let mut acked = [false; 4];
    let mut init_done = false;
    let mut bytes = 0u64;
    while let Some(resp) = inbound.message().await.context("ADS stream")? {
        let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
            continue;
        };
        bytes += resp.encoded_len() as u64;
        let (v, n) = (resp.version_info.as_str(), resp.nonce.as_str());
        let mut then = Vec::new();
        let ack = match ty {
            ResourceType::Cluster => {
                let names = eds_names(&resp, &cache)?;
                if names != eds {
                    eds = names;
                    then.push(request(
                        ResourceType::Endpoint,
                        &eds,
                        &eds_version,
                        &eds_nonce,
                    ));
                }
                if !acked[0] {
                    then.push(request(ResourceType::Listener, &[], "", ""));
                }
                request(ty, &[], v, n)
            }
            ResourceType::Endpoint => {
                (eds_version, eds_nonce) = (v.to_string(), n.to_string());
                request(ty, &eds, v, n)
            }
            ResourceType::Listener => {
                if !acked[2] {
                    then.push(request(ResourceType::Route, &routes, "", ""));
                }
                request(ty, &[], v, n)
            }
            ResourceType::Route => request(ty, &routes, v, n),
            ResourceType::Secret => continue,
        };
        drop(resp);
        tx.send(ack).await.context("sending an ACK")?;
        let at_us = now_us();
        for r in then {
            tx.send(r).await.context("sending a request")?;
        }
        let slot = match ty {
            ResourceType::Cluster => 0,
            ResourceType::Endpoint => 1,
            ResourceType::Listener => 2,
            _ => 3,
        };
        acked[slot] = true;
        if init_done {
            let _ = events.send(ClientEvent::Ack {
                client: i,
                ty: short(ty).to_string(),
                at_us,
            });
        } else if acked.iter().all(|a| *a) {
            init_done = true;
            let _ = events.send(ClientEvent::Init {
                client: i,
                micros: started.elapsed().as_micros() as u64,
                bytes,
            });
        }
    }
    anyhow::bail!("server closed the stream")
}
