//! The status port (Istio's 15020): the kubelet's probes of the app,
//! rewritten by the injector to `/app-health/<container>/<kind>` because
//! STRICT mTLS refuses the kubelet's plaintext on the app's own port. The
//! original probes arrive in `ISTIO_KUBE_APP_PROBERS` (JSON: path ->
//! `{httpGet|tcpSocket, timeoutSeconds}`), and each request runs the
//! matching one against the app over loopback: the proxy's own
//! connections are never captured, so the probe reaches the app directly.
//! `/healthz/ready` is served here too, as Istio does, and the merged
//! app+proxy metrics at `/stats/prometheus` ([`super::merged_metrics`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde::Deserialize;

use super::AdminState;
use super::merged_metrics::{self, Merger};

/// Environment variable with the probes (Istio's name).
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// One original probe.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    /// An HTTP GET probe.
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    /// A TCP connect probe.
    #[serde(default)]
    pub tcp_socket: Option<TcpSocket>,
    /// The kubelet's timeout (1 s by default).
    #[serde(default = "one")]
    pub timeout_seconds: u64,
}

fn one() -> u64 {
    1
}

/// `httpGet` of a probe.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    /// Path and query.
    #[serde(default)]
    pub path: Option<String>,
    /// The app's port.
    pub port: u16,
    /// `HTTP` (HTTPS probes are answered 500: not supported).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host header.
    #[serde(default)]
    pub host: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub http_headers: Vec<Header>,
}

/// A probe header.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Header {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `tcpSocket` of a probe.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TcpSocket {
    /// The app's port.
    pub port: u16,
}

/// The probes by path.
pub type AppProbers = HashMap<String, AppProbe>;

/// Parses [`PROBERS_ENV`]'s value. An error names the variable.
pub fn parse(json: &str) -> Result<AppProbers, String> {
    serde_json::from_str(json).map_err(|e| format!("{PROBERS_ENV}: {e}"))
}

#[derive(Clone)]
struct ProbeState {
    admin: AdminState,
    probers: Arc<AppProbers>,
    merger: Arc<Merger>,
}

/// The status router: `/app-health/...`, `/healthz/ready` and the merged
/// `/stats/prometheus` (the app's part scraped from `app_metrics`).
pub fn status_router(
    admin: AdminState,
    probers: AppProbers,
    app_metrics: Option<merged_metrics::AppTarget>,
) -> Router {
    let state = ProbeState {
        admin,
        probers: Arc::new(probers),
        merger: Merger::new(app_metrics),
    };
    Router::new()
        .route("/healthz/ready", get(ready))
        .route("/app-health/{container}/{kind}", get(app_health))
        .route("/stats/prometheus", get(merged))
        .with_state(state)
}

async fn merged(State(state): State<ProbeState>, headers: HeaderMap) -> Response {
    let proxy = match super::stats::encode(&state.admin) {
        Ok(text) => text,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let text = state
        .merger
        .merge(&proxy, merged_metrics::scrape_timeout(&headers))
        .await;
    (
        [(header::CONTENT_TYPE, merged_metrics::PROMETHEUS_TEXT)],
        text,
    )
        .into_response()
}

async fn ready(State(state): State<ProbeState>) -> Response {
    super::healthz(State(state.admin)).await
}

async fn app_health(
    State(state): State<ProbeState>,
    Path((container, kind)): Path<(String, String)>,
) -> Response {
    let path = format!("/app-health/{container}/{kind}");
    let Some(probe) = state.probers.get(&path) else {
        return (StatusCode::NOT_FOUND, format!("no probe {path}\n")).into_response();
    };
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1));
    let result = match (&probe.http_get, &probe.tcp_socket) {
        (Some(get), _) => {
            if get
                .scheme
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
            {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{path}: only HTTP probes are supported\n"),
                )
                    .into_response();
            }
            tokio::time::timeout(timeout, http_probe(get)).await
        }
        (None, Some(tcp)) => {
            tokio::time::timeout(timeout, async {
                tokio::net::TcpStream::connect(local(tcp.port))
                    .await
                    .map(|_| StatusCode::OK)
                    .map_err(|e| e.to_string())
            })
            .await
        }
        (None, None) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{path}: the probe has neither httpGet nor tcpSocket\n"),
            )
                .into_response();
        }
    };
    match result {
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => {
            (StatusCode::OK, format!("{}\n", status.as_u16())).into_response()
        }
        Ok(Ok(status)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the app answered {}\n", status.as_u16()),
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no answer within {}s\n", timeout.as_secs()),
        )
            .into_response(),
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn http_probe(get: &HttpGet) -> Result<StatusCode, String> {
    let stream = tokio::net::TcpStream::connect(local(get.port))
        .await
        .map_err(|e| format!("cannot connect to port {}: {e}", get.port))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = get.path.clone().unwrap_or_else(|| "/".to_string());
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let host = get
        .host
        .clone()
        .unwrap_or_else(|| format!("localhost:{}", get.port));
    let mut request = hyper::Request::get(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "kube-probe/mesh-proxy");
    for h in &get.http_headers {
        request = request.header(h.name.as_str(), h.value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("probe request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read (and drop) the body so the app sees a complete exchange.
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_injectors_json() {
        let probers = parse(
            r#"{"/app-health/reviews/readyz":{"httpGet":{"path":"/health","port":9080,"scheme":"HTTP"},"timeoutSeconds":2},
                "/app-health/reviews/livez":{"tcpSocket":{"port":9080},"timeoutSeconds":1}}"#,
        )
        .expect("valid");
        let ready = &probers["/app-health/reviews/readyz"];
        assert_eq!(ready.timeout_seconds, 2);
        assert_eq!(ready.http_get.as_ref().map(|g| g.port), Some(9080));
        assert_eq!(
            probers["/app-health/reviews/livez"].tcp_socket,
            Some(TcpSocket { port: 9080 })
        );
        let err = parse("{\"x\": 1}").expect_err("invalid");
        assert!(err.starts_with(PROBERS_ENV), "{err}");
    }
}
