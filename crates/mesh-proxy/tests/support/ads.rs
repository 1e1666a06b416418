//! A small ADS server for tests: serves fixed resources per type (state of
//! the world and delta), pushes when they change, records every request,
//! and can be killed (streams end with UNAVAILABLE, the port closes) and
//! started again on the same port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_api::xds::ResourceType;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// One request as the server saw it.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// Which stream (1 for the first).
    pub stream: u64,
    /// Delta or SotW.
    pub delta: bool,
    pub type_url: String,
    pub version_info: String,
    pub nonce: String,
    /// SotW names, or delta subscribe list.
    pub names: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_versions: HashMap<String, String>,
    pub node_id: Option<String>,
    pub error: Option<String>,
}

/// What one type serves.
#[derive(Clone, Debug, Default)]
struct Served {
    version: String,
    resources: Vec<(String, Any)>,
}

#[derive(Default)]
struct Data {
    served: BTreeMap<ResourceType, Served>,
    requests: Vec<Recorded>,
    /// Nonces sent, per type, in order.
    sent: Vec<(ResourceType, String, String)>,
    streams: u64,
    nonces: u64,
}

/// The server's shared state; clone freely.
#[derive(Clone)]
pub struct TestAds {
    data: Arc<Mutex<Data>>,
    changed: Arc<watch::Sender<u64>>,
    kill: Arc<watch::Sender<bool>>,
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    ads: TestAds,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Default for TestAds {
    fn default() -> Self {
        Self {
            data: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            kill: Arc::new(watch::channel(false).0),
        }
    }
}

impl TestAds {
    /// Serves `resources` (name, Any) as `ty` at `version`, pushing to open streams.
    pub fn set(&self, ty: ResourceType, version: &str, resources: Vec<(String, Any)>) {
        self.data.lock().unwrap().served.insert(
            ty,
            Served {
                version: version.into(),
                resources,
            },
        );
        self.changed.send_modify(|v| *v += 1);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.data.lock().unwrap().requests.clone()
    }

    /// Requests of one type.
    pub fn requests_of(&self, ty: ResourceType) -> Vec<Recorded> {
        let url = ty.type_url();
        self.requests()
            .into_iter()
            .filter(|r| r.type_url == url)
            .collect()
    }

    /// (version, nonce) of the last response of `ty`.
    pub fn last_sent(&self, ty: ResourceType) -> Option<(String, String)> {
        self.data
            .lock()
            .unwrap()
            .sent
            .iter()
            .rev()
            .find(|(t, _, _)| *t == ty)
            .map(|(_, v, n)| (v.clone(), n.clone()))
    }

    /// Responses sent of `ty`.
    pub fn responses_of(&self, ty: ResourceType) -> usize {
        self.data
            .lock()
            .unwrap()
            .sent
            .iter()
            .filter(|(t, _, _)| *t == ty)
            .count()
    }

    /// Streams opened so far.
    pub fn streams(&self) -> u64 {
        self.data.lock().unwrap().streams
    }

    /// Serves on `addr` (port 0 for any).
    pub async fn start(&self, addr: SocketAddr) -> Running {
        self.kill.send_replace(false);
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = AggregatedDiscoveryServiceServer::new(self.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Running {
            addr,
            task,
            stop: Some(stop),
            ads: self.clone(),
        }
    }

    fn next_nonce(&self, ty: ResourceType, version: &str) -> String {
        let mut d = self.data.lock().unwrap();
        d.nonces += 1;
        let nonce = format!("nonce-{}", d.nonces);
        d.sent.push((ty, version.into(), nonce.clone()));
        nonce
    }

    fn served(&self, ty: ResourceType) -> Served {
        self.data
            .lock()
            .unwrap()
            .served
            .get(&ty)
            .cloned()
            .unwrap_or_default()
    }

    fn open_stream(&self) -> u64 {
        let mut d = self.data.lock().unwrap();
        d.streams += 1;
        d.streams
    }

    fn record(&self, r: Recorded) {
        self.data.lock().unwrap().requests.push(r);
    }
}

impl Running {
    /// Kills the server: open streams fail with UNAVAILABLE and the port closes.
    pub async fn kill(mut self) {
        self.ads.kill.send_replace(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.ads.kill.send_replace(true);
        self.task.abort();
    }
}

/// A resource's delta version: a hash of its bytes.
fn version_of(any: &Any) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.value.hash(&mut h);
    format!("{:x}", h.finish())
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for TestAds {
    type StreamAggregatedResourcesStream = Boxed<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Boxed<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.clone().serve::<Sotw>(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.clone().serve::<Delta>(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One protocol's side of a stream: what is recorded of a request, and
/// when and what the server answers. [`TestAds::serve`] drives both.
trait Protocol: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    /// Per-type stream state.
    type Watch: Default + Send;

    /// The request as the server saw it.
    fn record(stream: u64, req: &Self::Request) -> Recorded;

    /// The answer to a request of `ty` (`first` on this stream), if any.
    fn on_request(
        ads: &TestAds,
        ty: ResourceType,
        w: &mut Self::Watch,
        first: bool,
        req: &Self::Request,
    ) -> Option<Self::Response>;

    /// The push after the served resources changed, if any.
    fn on_change(ads: &TestAds, ty: ResourceType, w: &mut Self::Watch) -> Option<Self::Response>;
}

/// `StreamAggregatedResources`.
struct Sotw;

/// `DeltaAggregatedResources`.
struct Delta;

/// Per-type SotW stream state.
#[derive(Default)]
struct SotwWatch {
    names: BTreeSet<String>,
    sent_version: Option<String>,
}

/// Per-type delta stream state.
#[derive(Default)]
struct DeltaWatch {
    wildcard: bool,
    names: BTreeSet<String>,
    known: HashMap<String, String>,
}

impl TestAds {
    /// Serves one stream: records every request, answers it as `P` says,
    /// pushes changes, and ends with UNAVAILABLE when killed.
    async fn serve<P: Protocol>(
        self,
        mut inbound: Streaming<P::Request>,
        tx: mpsc::Sender<Result<P::Response, Status>>,
    ) {
        let stream = self.open_stream();
        let mut changed = self.changed.subscribe();
        let mut kill = self.kill.subscribe();
        let mut watches: BTreeMap<ResourceType, P::Watch> = BTreeMap::new();
        loop {
            let responses: Vec<P::Response> = tokio::select! {
                () = async { let _ = kill.wait_for(|k| *k).await; } => {
                    let _ = tx.send(Err(Status::unavailable("killed"))).await;
                    return;
                }
                msg = inbound.message() => {
                    let Ok(Some(req)) = msg else { return };
                    let recorded = P::record(stream, &req);
                    let ty = ResourceType::from_type_url(&recorded.type_url);
                    self.record(recorded);
                    let Some(ty) = ty else { continue };
                    let first = !watches.contains_key(&ty);
                    let w = watches.entry(ty).or_default();
                    P::on_request(&self, ty, w, first, &req).into_iter().collect()
                }
                r = changed.changed() => {
                    if r.is_err() { return; }
                    watches
                        .iter_mut()
                        .filter_map(|(ty, w)| P::on_change(&self, *ty, w))
                        .collect()
                }
            };
            for response in responses {
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        }
    }
}

// === impl Sotw ===

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type Watch = SotwWatch;

    fn record(stream: u64, req: &DiscoveryRequest) -> Recorded {
        Recorded {
            stream,
            delta: false,
            type_url: req.type_url.clone(),
            version_info: req.version_info.clone(),
            nonce: req.response_nonce.clone(),
            names: req.resource_names.clone(),
            node_id: req.node.as_ref().map(|n| n.id.clone()),
            error: req.error_detail.as_ref().map(|e| e.message.clone()),
            ..Default::default()
        }
    }

    fn on_request(
        ads: &TestAds,
        ty: ResourceType,
        w: &mut SotwWatch,
        first: bool,
        req: &DiscoveryRequest,
    ) -> Option<DiscoveryResponse> {
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let new_names = w.names != names;
        w.names = names;
        (first || new_names || req.response_nonce.is_empty()).then(|| Self::respond(ads, ty, w))
    }

    fn on_change(ads: &TestAds, ty: ResourceType, w: &mut SotwWatch) -> Option<DiscoveryResponse> {
        (w.sent_version.as_deref() != Some(ads.served(ty).version.as_str()))
            .then(|| Self::respond(ads, ty, w))
    }
}

impl Sotw {
    /// Everything served of `ty` that the watch names (all of a full-set type).
    fn respond(ads: &TestAds, ty: ResourceType, w: &mut SotwWatch) -> DiscoveryResponse {
        let served = ads.served(ty);
        let resources = served
            .resources
            .iter()
            .filter(|(n, _)| ty.is_full_set() || w.names.contains(n))
            .map(|(_, a)| a.clone())
            .collect();
        w.sent_version = Some(served.version.clone());
        let nonce = ads.next_nonce(ty, &served.version);
        DiscoveryResponse {
            version_info: served.version,
            resources,
            type_url: ty.type_url(),
            nonce,
            ..Default::default()
        }
    }
}

// === impl Delta ===

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type Watch = DeltaWatch;

    fn record(stream: u64, req: &DeltaDiscoveryRequest) -> Recorded {
        Recorded {
            stream,
            delta: true,
            type_url: req.type_url.clone(),
            nonce: req.response_nonce.clone(),
            names: req.resource_names_subscribe.clone(),
            unsubscribe: req.resource_names_unsubscribe.clone(),
            initial_versions: req.initial_resource_versions.clone(),
            node_id: req.node.as_ref().map(|n| n.id.clone()),
            error: req.error_detail.as_ref().map(|e| e.message.clone()),
            ..Default::default()
        }
    }

    fn on_request(
        ads: &TestAds,
        ty: ResourceType,
        w: &mut DeltaWatch,
        first: bool,
        req: &DeltaDiscoveryRequest,
    ) -> Option<DeltaDiscoveryResponse> {
        if first {
            w.wildcard = ty.is_full_set() && req.resource_names_subscribe.is_empty();
            w.known = req.initial_resource_versions.clone();
        }
        let mut touched = first;
        for n in &req.resource_names_subscribe {
            if n == "*" {
                w.wildcard = true
            } else {
                w.names.insert(n.clone());
            }
            touched = true;
        }
        for n in &req.resource_names_unsubscribe {
            w.names.remove(n);
            w.known.remove(n);
        }
        if touched {
            Self::respond(ads, ty, w, first)
        } else {
            None
        }
    }

    fn on_change(
        ads: &TestAds,
        ty: ResourceType,
        w: &mut DeltaWatch,
    ) -> Option<DeltaDiscoveryResponse> {
        Self::respond(ads, ty, w, false)
    }
}

impl Delta {
    /// What changed of `ty` since the client's known versions; nothing
    /// when nothing did, unless `always`.
    fn respond(
        ads: &TestAds,
        ty: ResourceType,
        w: &mut DeltaWatch,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let served = ads.served(ty);
        let wants = |n: &str| w.wildcard || w.names.contains(n);
        let mut updates = Vec::new();
        for (name, any) in &served.resources {
            let version = version_of(any);
            if wants(name) && w.known.get(name) != Some(&version) {
                updates.push(Resource {
                    name: name.clone(),
                    version: version.clone(),
                    resource: Some(any.clone()),
                    ..Default::default()
                });
            }
        }
        let present: BTreeSet<&String> = served.resources.iter().map(|(n, _)| n).collect();
        let removed: Vec<String> = w
            .known
            .keys()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        if updates.is_empty() && removed.is_empty() && !always {
            return None;
        }
        for u in &updates {
            w.known.insert(u.name.clone(), u.version.clone());
        }
        for n in &removed {
            w.known.remove(n);
        }
        let nonce = ads.next_nonce(ty, &served.version);
        Some(DeltaDiscoveryResponse {
            system_version_info: served.version,
            resources: updates,
            type_url: ty.type_url(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}
