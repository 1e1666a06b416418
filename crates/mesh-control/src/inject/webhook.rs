//! The injection webhook: `POST /inject` takes an `admission.k8s.io/v1`
//! AdmissionReview of a pod CREATE and answers with a JSONPatch adding the
//! proxy ([`super::inject`]), over HTTPS with a serving certificate from the
//! mesh CA. At start the CA's root is patched into the
//! MutatingWebhookConfiguration's `caBundle` so the API server trusts it.
//!
//! The webhook never fails a pod for the pod's own sake: a pod it does not
//! inject is allowed unchanged with the reason in a warning, and problems
//! with annotations are warnings too. Only an unreadable AdmissionReview
//! gets an error (HTTP 400).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use tokio::sync::watch;

use super::{Outcome, Settings, inject};
use crate::snapshot::Snapshot;

/// Path of the injection endpoint (the webhook configuration's `path`).
pub const PATH: &str = "/inject";

/// Injection counters, Istio's names (`sidecar_injection_*_total`).
#[derive(Clone, Default)]
pub struct Metrics {
    requests: Counter,
    success: Counter,
    skip: Counter,
    failure: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "sidecar_injection_requests",
            "Pod injection requests received",
            m.requests.clone(),
        );
        registry.register(
            "sidecar_injection_success",
            "Pods injected",
            m.success.clone(),
        );
        registry.register(
            "sidecar_injection_skip",
            "Pods not injected (opted out, already injected, host network, excluded namespace)",
            m.skip.clone(),
        );
        registry.register(
            "sidecar_injection_failure",
            "Injection requests that could not be answered with a patch",
            m.failure.clone(),
        );
        m
    }
}

#[derive(Clone)]
struct AppState {
    settings: watch::Receiver<Arc<Settings>>,
    metrics: Metrics,
}

/// The webhook's routes; each request uses the newest `settings` (they
/// follow MeshConfig's `defaultConfig`).
pub fn router(settings: watch::Receiver<Arc<Settings>>, metrics: Metrics) -> Router {
    Router::new()
        .route(PATH, post(handle))
        .with_state(AppState { settings, metrics })
}

/// Where and how the control plane serves the webhook.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// Listen address (Istio's 15017).
    pub address: SocketAddr,
    /// The injector's settings; `default_config` follows the snapshots.
    pub settings: Settings,
    /// The MutatingWebhookConfiguration whose `caBundle` is patched (in a
    /// cluster).
    pub config_name: Option<String>,
}

/// Serves the webhook until `shutdown`. With a Kubernetes client it first
/// learns whether the API server runs native sidecars (1.29+), and keeps
/// trying to patch the CA root into `config_name` until it succeeds (the
/// configuration may be applied after the control plane starts).
pub async fn run(
    mut options: WebhookOptions,
    tls: Arc<rustls::ServerConfig>,
    root_pem: String,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    kube: Option<kube::Client>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(options.address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the webhook address {}: {e}", options.address))?;
    if let Some(client) = &kube {
        match client.apiserver_version().await {
            Ok(v) => {
                let minor: u32 = v
                    .minor
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .unwrap_or(0);
                let native =
                    v.major == "1" && minor >= 29 || v.major.parse::<u32>().unwrap_or(0) > 1;
                tracing::info!(version = %v.git_version, native, "API server version: native sidecars {}", if native { "on" } else { "off" });
                options.settings.native_sidecars = native;
            }
            Err(e) => {
                tracing::warn!("cannot read the API server version ({e}); native sidecars assumed")
            }
        }
        if let Some(name) = options.config_name.clone() {
            let client = client.clone();
            let pem = root_pem.clone();
            tokio::spawn(async move {
                let mut delay = std::time::Duration::from_secs(1);
                loop {
                    match patch_ca_bundle(client.clone(), &name, &pem).await {
                        Ok(n) => {
                            tracing::info!(webhook_config = %name, patched = n, "caBundle set");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(webhook_config = %name, "cannot set caBundle yet: {e}")
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
            });
        }
    }
    let settings_for = |snapshot: &Snapshot| {
        let mut s = options.settings.clone();
        s.default_config = snapshot.mesh.default_config.clone().unwrap_or_default();
        s.prometheus_merge = snapshot.mesh.enable_prometheus_merge.unwrap_or(true);
        Arc::new(s)
    };
    let (settings_tx, settings_rx) = watch::channel(settings_for(&snapshots.borrow_and_update()));
    let follow = async move {
        while snapshots.changed().await.is_ok() {
            let next = settings_for(&snapshots.borrow_and_update());
            let _ = settings_tx.send(next);
        }
    };
    tracing::info!(address = %options.address, path = PATH, "serving the injection webhook");
    tokio::select! {
        () = serve(listener, tls, router(settings_rx, metrics), shutdown) => {}
        () = follow => {}
    }
    Ok(())
}

async fn handle(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    state.metrics.requests.inc();
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            state
                .metrics
                .failure
                .get_or_create(&vec![("reason".to_string(), "malformed".to_string())])
                .inc();
            return (
                StatusCode::BAD_REQUEST,
                format!("not an admission.k8s.io/v1 AdmissionReview: {e}"),
            )
                .into_response();
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            state
                .metrics
                .failure
                .get_or_create(&vec![("reason".to_string(), "no_request".to_string())])
                .inc();
            return (StatusCode::BAD_REQUEST, format!("AdmissionReview: {e}")).into_response();
        }
    };
    let settings = state.settings.borrow().clone();
    let response = review_pod(&request, &settings, &state.metrics);
    match review_json(response) {
        Ok(json) => Json(json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The AdmissionReview answer as the API server's Go types write it:
/// `patch` as a base64 string (kube-core serializes the bytes as an array
/// of numbers, which decodes too but is four times larger).
pub fn review_json(response: AdmissionResponse) -> serde_json::Result<serde_json::Value> {
    use base64::Engine;
    let mut json = serde_json::to_value(response.into_review())?;
    if let Some(patch) = json.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take())?;
        *patch = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    Ok(json)
}

/// The answer to one admission request.
pub fn review_pod(
    request: &AdmissionRequest<DynamicObject>,
    settings: &Settings,
    metrics: &Metrics,
) -> AdmissionResponse {
    let allow = AdmissionResponse::from(request);
    let skip = |reason: String| {
        metrics.skip.inc();
        tracing::debug!(uid = %request.uid, "not injected: {reason}");
        let mut r = AdmissionResponse::from(request);
        r.warnings = Some(vec![format!("sidecar not injected: {reason}")]);
        r
    };
    if request.kind.kind != "Pod" || request.operation != Operation::Create {
        return skip(format!(
            "the webhook injects pods on CREATE, not {} {:?}",
            request.kind.kind, request.operation
        ));
    }
    let Some(object) = &request.object else {
        return skip("the request carries no object".to_string());
    };
    let original = match serde_json::to_value(object).and_then(serde_json::from_value::<Pod>) {
        Ok(pod) => pod,
        Err(e) => return skip(format!("the object is not a valid Pod: {e}")),
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| original.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_string());
    match inject(&original, &namespace, settings) {
        Outcome::Skipped(reason) => skip(reason),
        Outcome::Injected { pod, warnings } => {
            // Both sides through the same typed round trip, so fields the
            // typed model does not know never show up as removals.
            let (Ok(before), Ok(after)) =
                (serde_json::to_value(&original), serde_json::to_value(&*pod))
            else {
                return skip("the pod cannot be serialized".to_string());
            };
            let patch = json_patch::diff(&before, &after);
            match allow.with_patch(patch) {
                Ok(mut r) => {
                    metrics.success.inc();
                    tracing::info!(
                        uid = %request.uid,
                        namespace,
                        pod = %original.metadata.name.clone().or(original.metadata.generate_name.clone()).unwrap_or_default(),
                        "injected the sidecar"
                    );
                    if !warnings.is_empty() {
                        r.warnings = Some(warnings);
                    }
                    r
                }
                Err(e) => {
                    metrics
                        .failure
                        .get_or_create(&vec![("reason".to_string(), "patch".to_string())])
                        .inc();
                    skip(format!("the patch cannot be serialized: {e}"))
                }
            }
        }
    }
}

/// Serves `router` over HTTPS with `tls` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("webhook accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move { serve_one(stream, peer, acceptor, router).await });
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
) {
    let tls =
        match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "webhook TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "webhook TLS handshake timed out");
                return;
            }
        };
    let service = hyper_util::service::TowerToHyperService::new(router);
    let io = hyper_util::rt::TokioIo::new(tls);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(%peer, "webhook connection: {e}");
    }
}

/// Sets `caBundle` of every webhook in the MutatingWebhookConfiguration
/// `name` to `ca_pem` (a strategic merge patch of the `webhooks` list,
/// which the API server merges by webhook name). Returns how many changed.
pub async fn patch_ca_bundle(
    client: kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<usize, kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let mut config = api.get(name).await?;
    let bundle = k8s_openapi::ByteString(ca_pem.as_bytes().to_vec());
    let webhooks = config.webhooks.get_or_insert_with(Vec::new);
    let mut changed = 0;
    for hook in webhooks.iter_mut() {
        if hook.client_config.ca_bundle.as_ref() != Some(&bundle) {
            hook.client_config.ca_bundle = Some(bundle.clone());
            changed += 1;
        }
    }
    if changed > 0 {
        let patch = serde_json::json!({ "webhooks": webhooks });
        api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
    }
    Ok(changed)
}
