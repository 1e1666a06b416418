//! The key sets of RequestAuthentication `jwksUri`s, fetched by the
//! control plane (as istiod does) and sent to proxies inline, so proxies
//! never need a route to the identity provider.
//!
//! The source that builds snapshots tells the [`JwksResolver`] which URIs
//! its policies name ([`JwksResolver::want`]) and reads the keys fetched
//! so far into each snapshot ([`JwksResolver::keys`]). The resolver's task
//! ([`JwksResolver::run`]) fetches a new URI at once, refreshes every
//! fetched one every [`JwksSettings::refresh`] (Istio's 20 minutes),
//! retries a failure sooner, and bumps [`JwksResolver::changed`] whenever
//! what it holds changes, on which the source builds a new snapshot. A
//! failed fetch keeps the last good keys; a URI never fetched has none,
//! and translation then fails closed (see `xds::authn`). Only responses
//! that are JSON with a `keys` list, under 1 MiB, are taken.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::time::Instant;

/// Largest key set accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// How often keys are fetched.
#[derive(Clone, Copy, Debug)]
pub struct JwksSettings {
    /// Interval between fetches of a URI that answered.
    pub refresh: Duration,
    /// Delay before a failed fetch is tried again.
    pub retry: Duration,
    /// Time one fetch may take.
    pub timeout: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(20 * 60),
            retry: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Fetched key sets, shared by the source and the fetching task.
#[derive(Clone)]
pub struct JwksResolver {
    inner: Arc<Inner>,
}

struct Inner {
    settings: JwksSettings,
    /// URI to the last good key set.
    keys: Mutex<Arc<BTreeMap<String, String>>>,
    wanted: watch::Sender<BTreeSet<String>>,
    changed: watch::Sender<u64>,
}

/// Why one fetch failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("not an http or https URI")]
    BadUri,
    #[error("{0}")]
    Request(String),
    #[error("answered {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the body is not a JSON Web Key Set (JSON with a \"keys\" list) of at most 1 MiB")]
    NotKeySet,
}

// === impl JwksResolver ===

impl JwksResolver {
    /// A resolver holding no keys yet.
    pub fn new(settings: JwksSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                keys: Mutex::new(Arc::default()),
                wanted: watch::Sender::new(BTreeSet::new()),
                changed: watch::Sender::new(0),
            }),
        }
    }

    /// The key sets fetched so far, by URI.
    pub fn keys(&self) -> Arc<BTreeMap<String, String>> {
        self.inner
            .keys
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }

    /// The URIs policies name now; others are forgotten.
    pub fn want(&self, uris: BTreeSet<String>) {
        self.inner.wanted.send_if_modified(|w| {
            let changed = *w != uris;
            *w = uris;
            changed
        });
    }

    /// Bumped whenever [`Self::keys`] changes.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Fetches and refreshes the wanted URIs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .build();
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let mut wanted = self.inner.wanted.subscribe();
        // When each wanted URI is due.
        let mut due: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            let now = Instant::now();
            let current = wanted.borrow_and_update().clone();
            due.retain(|uri, _| current.contains(uri));
            for uri in &current {
                due.entry(uri.clone()).or_insert(now);
            }
            self.forget_unwanted(&current);
            let ready: Vec<String> = due
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(uri, _)| uri.clone())
                .collect();
            for uri in ready {
                let next = match self.fetch(&client, &uri).await {
                    Ok(jwks) => {
                        self.store(&uri, jwks);
                        self.inner.settings.refresh
                    }
                    Err(e) => {
                        tracing::warn!(jwks_uri = %uri, error = %e, kept = self.keys().contains_key(&uri), "cannot fetch the JSON Web Key Set; the last good keys (if any) stay");
                        self.inner.settings.retry
                    }
                };
                due.insert(uri, Instant::now() + next);
            }
            let next = due.values().min().copied();
            tokio::select! {
                () = &mut shutdown => return,
                r = wanted.changed() => if r.is_err() { return },
                () = sleep_until(next) => {}
            }
        }
    }

    async fn fetch<C>(
        &self,
        client: &Client<C, Empty<Bytes>>,
        uri: &str,
    ) -> Result<String, FetchError>
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        let parsed: hyper::Uri = uri.parse().map_err(|_| FetchError::BadUri)?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) {
            return Err(FetchError::BadUri);
        }
        let timeout = self.inner.settings.timeout;
        let exchange = async {
            let resp = client
                .get(parsed)
                .await
                .map_err(|e| FetchError::Request(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(FetchError::Status(resp.status().as_u16()));
            }
            let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|_| FetchError::NotKeySet)?
                .to_bytes();
            let text = String::from_utf8(body.to_vec()).map_err(|_| FetchError::NotKeySet)?;
            if !is_key_set(&text) {
                return Err(FetchError::NotKeySet);
            }
            Ok(text)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }

    fn store(&self, uri: &str, jwks: String) {
        let Ok(mut keys) = self.inner.keys.lock() else {
            return;
        };
        if keys.get(uri) == Some(&jwks) {
            return;
        }
        tracing::info!(jwks_uri = %uri, "fetched a new JSON Web Key Set");
        Arc::make_mut(&mut keys).insert(uri.to_string(), jwks);
        drop(keys);
        self.inner.changed.send_modify(|g| *g += 1);
    }

    fn forget_unwanted(&self, wanted: &BTreeSet<String>) {
        let Ok(mut keys) = self.inner.keys.lock() else {
            return;
        };
        if keys.keys().all(|k| wanted.contains(k)) {
            return;
        }
        Arc::make_mut(&mut keys).retain(|k, _| wanted.contains(k));
    }
}

/// Whether `jwks` is JSON with a `keys` list: what Envoy needs to accept a
/// provider's inline key set (the keys themselves are the data plane's to
/// judge). Inline `jwks` and fetched bodies are checked alike.
pub(crate) fn is_key_set(jwks: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(jwks)
        .ok()
        .and_then(|v| v.get("keys").map(serde_json::Value::is_array))
        .unwrap_or(false)
}

/// TLS towards identity providers: the system's root certificates (none
/// when the system has none: https URIs then fail and say so).
fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system root certificates; https jwksUris cannot be verified");
    }
    match rustls::ClientConfig::builder_with_provider(mesh_ca::crypto_provider())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // The ring provider supports the default versions; not reached.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;
