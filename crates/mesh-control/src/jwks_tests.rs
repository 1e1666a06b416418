//! The resolver against a real HTTP server on loopback that changes its
//! answer and fails on cue.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use super::*;

/// What the identity provider answers: `(status, body)`, and how often
/// it was asked.
#[derive(Clone, Default)]
struct Provider {
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

impl Provider {
    fn set(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_string());
    }

    async fn serve(&self) -> String {
        let p = self.clone();
        let app = Router::new().route(
            "/keys",
            get(move || {
                let p = p.clone();
                async move {
                    p.hits.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = p.answer.lock().unwrap().clone();
                    (StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/keys")
    }
}

const KEYS_A: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"a","x":"AA","y":"AA"}]}"#;
const KEYS_B: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"b","x":"AA","y":"AA"}]}"#;

fn fast() -> JwksSettings {
    JwksSettings {
        refresh: Duration::from_millis(200),
        retry: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
    }
}

/// Waits (bounded) until the resolver holds `want` for `uri`.
async fn holds(r: &JwksResolver, uri: &str, want: Option<&str>) -> bool {
    for _ in 0..100 {
        if r.keys().get(uri).map(String::as_str) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn fetches_refreshes_and_keeps_the_last_good_keys() {
    let idp = Provider::default();
    idp.set(200, KEYS_A);
    let uri = idp.serve().await;
    let resolver = JwksResolver::new(fast());
    let mut changed = resolver.changed();
    let (_stop, stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(resolver.clone().run(async move {
        let _ = stop.await;
    }));
    resolver.want([uri.clone()].into());
    assert!(holds(&resolver, &uri, Some(KEYS_A)).await);
    assert!(
        changed.has_changed().unwrap(),
        "a fetch that brings keys says so"
    );
    changed.borrow_and_update();

    // Down, then garbage: the last good keys stay, and nothing changes.
    idp.set(503, "unavailable");
    let before = idp.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(idp.hits.load(Ordering::SeqCst) > before, "retried");
    idp.set(200, "<html>not keys</html>");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(resolver.keys().get(&uri).map(String::as_str), Some(KEYS_A));
    assert!(!changed.has_changed().unwrap());

    // Rotated keys arrive with the next refresh.
    idp.set(200, KEYS_B);
    assert!(holds(&resolver, &uri, Some(KEYS_B)).await);
    assert!(changed.has_changed().unwrap());

    // A URI no policy names any more is forgotten.
    resolver.want(BTreeSet::new());
    assert!(holds(&resolver, &uri, None).await);
}

#[tokio::test]
async fn a_source_snapshot_carries_fetched_keys_into_translation() {
    use crate::proxy::ProxyInfo;
    use crate::source::{DirSource, DirSourceConfig};

    let idp = Provider::default();
    idp.set(200, KEYS_A);
    let uri = idp.serve().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ra.yaml"),
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: apps}}\nspec:\n  jwtRules:\n  - issuer: https://idp.example\n    jwksUri: {uri}\n"
        ),
    )
    .unwrap();
    let (mut source, _) = DirSource::load(DirSourceConfig::new(dir.path())).unwrap();
    let resolver = JwksResolver::new(fast());
    let first = source.with_jwks(resolver.clone());
    assert!(first.jwks.is_empty(), "nothing fetched yet");
    let proxy = ProxyInfo::sidecar("web-0", "apps", "10.0.0.1".parse().unwrap(), &[]);
    let jwks_of = |s: &crate::snapshot::Snapshot| {
        let filter = crate::xds::authn::jwt_filter(s, &proxy).unwrap();
        let Some(
            envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(any),
        ) = filter.config_type
        else {
            panic!("no config")
        };
        String::from_utf8_lossy(&any.value).into_owned()
    };
    // Before the fetch the provider fails closed.
    assert!(jwks_of(&first).contains("mesh-unusable"));

    let (tx, mut rx) = watch::channel(Arc::new(first));
    let (_stop, stop) = tokio::sync::oneshot::channel::<()>();
    let (_stop2, stop2) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(resolver.run(async move {
        let _ = stop.await;
    }));
    tokio::spawn(source.run(tx, async move {
        let _ = stop2.await;
    }));
    let fetched = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            rx.changed().await.unwrap();
            let s = rx.borrow_and_update().clone();
            if s.jwks.contains_key(&uri) {
                return s;
            }
        }
    })
    .await
    .expect("a snapshot with the fetched keys");
    assert!(jwks_of(&fetched).contains(r#""kid":"a""#));
}
