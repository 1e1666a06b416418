//! The backend every path of `mesh-bench proxy` ends at: a minimal hyper
//! server (HTTP/1.1 and h2c on one port) answering every request with
//! the same small body, so the backend costs as little as possible and
//! the same for the direct path and both proxies.

use std::convert::Infallible;
use std::time::Duration;

use http::Response;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The answer's body (64 bytes).
pub const BODY: &[u8; 64] = b"mesh-bench proxy backend: a small fixed answer, 64 bytes long.\n\n";

/// Serves `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            // Accept errors (e.g. EMFILE) are transient; back off briefly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(http::header::CONTENT_TYPE, "text/plain")
                        .body(Full::new(Bytes::from_static(BODY)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(BODY)))),
                )
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
