//! The life of one ADS stream, the same for both protocols: the first
//! request names the proxy (a stream without a usable node is refused with
//! `INVALID_ARGUMENT`), then one task answers requests and pushes new
//! snapshots until the proxy leaves or the server shuts down (`UNAVAILABLE`).
//!
//! What differs between state-of-the-world and delta is behind
//! [`StreamSession`]: how a request is applied and what a push sends.

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument;

use super::{Conn, Event, Shared, XdsProtocol};
use crate::proxy::ProxyInfo;

/// The proxy went away; the task ends.
pub(super) struct Closed;

/// Where a stream's responses go.
pub(super) type Tx<T> = mpsc::Sender<Result<T, Status>>;

/// One protocol's per-stream state, run by [`drive`].
pub(super) trait StreamSession: Send + Sized + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;

    /// Recorded in the sync state and on the stream's span.
    const PROTOCOL: XdsProtocol;
    /// How log lines name the stream before it has a span.
    const NAME: &'static str;

    /// The node a request describes (only the first request's is read).
    fn node(req: &Self::Request) -> Option<&Node>;

    fn new(conn: Conn, tx: Tx<Self::Response>) -> Self;
    fn conn(&mut self) -> &mut Conn;
    fn tx(&self) -> &Tx<Self::Response>;

    /// Applies a proxy's request and answers it if an answer is due.
    fn on_request(&mut self, req: Self::Request)
    -> impl Future<Output = Result<(), Closed>> + Send;

    /// After a new snapshot: whatever changed, CDS, EDS, LDS, RDS in that
    /// order.
    fn push_all(&mut self) -> impl Future<Output = Result<(), Closed>> + Send;
}

/// Runs one stream until the proxy or the server ends it.
pub(super) async fn drive<S: StreamSession>(
    shared: Arc<Shared>,
    mut inbound: super::wire::Requests<S::Request>,
    tx: Tx<S::Response>,
    peer: Option<SocketAddr>,
) {
    let first = match inbound.message().await {
        Ok(Some(req)) => req,
        Ok(None) => return,
        Err(status) => {
            tracing::debug!(
                ?peer,
                "{} stream failed before its first request: {status}",
                S::NAME
            );
            return;
        }
    };
    let proxy = match ProxyInfo::from_node(S::node(&first)) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(?peer, "refusing {} stream: {e}", S::NAME);
            let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
            return;
        }
    };
    let conn = Conn::new(shared.clone(), proxy, S::PROTOCOL);
    let span = tracing::info_span!(
        "ads",
        proxy = %conn.proxy.id,
        conn = conn.id,
        protocol = S::PROTOCOL.as_str()
    );
    let mut session = S::new(conn, tx);
    async move {
        tracing::info!(?peer, "proxy connected");
        let mut snapshots = Some(shared.snapshots.clone());
        let mut closing = shared.closing.clone();
        let mut next = Event::Request(first);
        loop {
            let step = match next {
                Event::Request(req) => session.on_request(req).await,
                Event::Snapshot => session.push_all().await,
                Event::End => break,
            };
            if step.is_err() {
                break;
            }
            next = session
                .conn()
                .next_event(&mut inbound, &mut snapshots, &mut closing)
                .await;
        }
        if *closing.borrow() {
            let _ = session
                .tx()
                .send(Err(Status::unavailable("control plane is shutting down")))
                .await;
        }
        tracing::info!("proxy disconnected");
    }
    .instrument(span)
    .await;
}
