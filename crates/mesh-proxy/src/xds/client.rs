//! The connection loop: connect, run one ADS stream until it breaks, wait a
//! jittered, growing delay, connect again, forever (until shutdown).
//!
//! Static stability: nothing is cleared when the stream breaks. The last
//! accepted resources keep serving for as long as the control plane is
//! away, and the next stream resumes from their versions.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Endpoint;

use super::delta::Delta;
use super::session::{AdsClient, Session, Wire};
use super::sotw::Sotw;
use super::state::XdsState;
use super::{Protocol, XdsConfig, XdsError};

/// Largest response accepted (a sidecar of a big mesh gets tens of MB).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Delays between reconnection attempts: exponential from `initial` up to
/// `max`, each drawn at random from its upper half so a fleet of proxies
/// does not reconnect in step after a control-plane restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

// === impl Backoff ===

impl Backoff {
    /// The delay before attempt `failures` (0 after the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(failures.min(30)))
            .min(self.max);
        let half = ceiling / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random() % nanos.saturating_add(1))
    }
}

/// A random number without a dependency: std's hasher keys are random.
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// Runs the client until `shutdown` resolves.
pub(super) async fn run(
    config: XdsConfig,
    mut state: XdsState,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let endpoint = match endpoint(&config) {
        Ok(e) => e,
        Err(e) => {
            // Checked by XdsConfig::validate before start; nothing to do
            // but keep serving what the bootstrap holds.
            tracing::error!("{e}");
            shutdown.await;
            return;
        }
    };
    let mut failures = 0u32;
    loop {
        let attempt = async {
            match config.protocol {
                Protocol::Sotw => stream(&endpoint, &config, &mut state, Sotw::default()).await,
                Protocol::Delta => stream(&endpoint, &config, &mut state, Delta).await,
            }
        };
        let outcome = tokio::select! {
            r = attempt => r,
            () = &mut shutdown => return,
        };
        if state.status().connected {
            state.set_connected(false);
        }
        match outcome {
            Ok(Stream { responses }) => {
                tracing::info!(address = %config.address, responses, "xDS stream closed by the server; reconnecting");
                if responses > 0 {
                    failures = 0;
                }
            }
            Err(Failed { responses, error }) => {
                tracing::warn!(address = %config.address, "xDS stream failed: {error}; keeping the last configuration");
                if responses > 0 {
                    failures = 0;
                }
            }
        }
        let delay = config.backoff.delay(failures);
        failures = failures.saturating_add(1);
        tracing::debug!(?delay, "waiting before reconnecting");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut shutdown => return,
        }
    }
}

/// A stream that ended with `responses` received.
struct Stream {
    responses: u64,
}

/// A stream that failed after `responses` were received.
struct Failed {
    responses: u64,
    error: XdsError,
}

fn endpoint(config: &XdsConfig) -> Result<Endpoint, XdsError> {
    let address = |reason: String| XdsError::Address {
        address: config.address.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(config.uri()).map_err(|e| address(e.to_string()))?;
    // `https://`: the control plane's certificate must chain to the mesh
    // root and name the host dialled (istiod's serving certificate does).
    if endpoint.uri().scheme_str() == Some("https") {
        let roots = config
            .tls_roots_pem
            .as_deref()
            .ok_or_else(|| address("TLS needs the mesh root".into()))?;
        let host = endpoint.uri().host().unwrap_or_default().to_string();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(roots))
            .domain_name(host);
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| address(format!("TLS: {e}")))?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

async fn connect(endpoint: &Endpoint) -> Result<AdsClient, Failed> {
    let channel = endpoint.connect().await.map_err(|e| Failed {
        responses: 0,
        error: XdsError::Connect(e.to_string()),
    })?;
    Ok(AdsClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
}

fn broken(responses: u64) -> impl Fn(tonic::Status) -> Failed {
    move |status| Failed {
        responses,
        error: XdsError::Stream(status.to_string()),
    }
}

/// Runs one stream of protocol `wire` until it ends or fails.
async fn stream<W: Wire>(
    endpoint: &Endpoint,
    config: &XdsConfig,
    state: &mut XdsState,
    wire: W,
) -> Result<Stream, Failed> {
    let mut client = connect(endpoint).await?;
    let mut session = Session::new(config.node.clone(), wire);
    let (tx, rx) = mpsc::unbounded_channel();
    for request in session.initial(state) {
        let _ = tx.send(request);
    }
    let mut inbound = W::open(&mut client, UnboundedReceiverStream::new(rx))
        .await
        .map_err(broken(0))?
        .into_inner();
    state.set_connected(true);
    state.settle();
    tracing::info!(address = %config.address, "xDS stream open ({})", W::NAME);
    let mut responses = 0;
    while let Some(response) = inbound.message().await.map_err(broken(responses))? {
        responses += 1;
        for request in session.on_response(state, response) {
            let _ = tx.send(request);
        }
    }
    Ok(Stream { responses })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter_in_the_upper_half() {
        let b = Backoff::default();
        for failures in 0..40 {
            let ceiling = (b.initial * 2u32.pow(failures.min(20))).min(b.max);
            let d = b.delay(failures);
            assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
        }
    }
}
