//! The bench's own mesh client, for the full-handshake phase and the
//! checks before measuring: it holds an SVID from the mesh CA (identity
//! [`super::mesh::PROBE_IDENTITY`]) and talks to a destination sidecar
//! exactly as a client sidecar does (Istio SNI, ALPN `istio`, its SVID as
//! client certificate, the server's SVID verified against the mesh
//! roots), straight into the pod's inbound capture.
//!
//! Every request gets a new TCP connection and a new TLS session: the
//! client never offers a session to resume (`Resumption::disabled`), and
//! every handshake is checked to have been a full one. The request is an
//! HTTP/1.1 `GET` with `Connection: close`; the sidecar closes after the
//! answer.

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mesh_api::wellknown::ALPN_ISTIO;
use mesh_ca::tls::MeshTls;
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::mesh::istio_sni;
use crate::bench::proxy::load::{Dest, Exchange, REQUEST_TIMEOUT};

/// A client presenting one SVID.
#[derive(Clone)]
pub struct MtlsClient {
    connector: TlsConnector,
}

/// A closed-loop slot: one new mTLS connection per exchange.
pub struct HandshakeSlot {
    /// The client.
    pub client: MtlsClient,
    /// The destination sidecar's pod address and the service it serves.
    pub dest: Dest,
}

// === impl MtlsClient ===

impl MtlsClient {
    /// Presents the SVID of `tls`, trusts its mesh roots, never resumes.
    pub fn new(tls: &MeshTls) -> Self {
        let mut config: ClientConfig = (*tls.client).clone();
        config.resumption = Resumption::disabled();
        config.alpn_protocols = vec![ALPN_ISTIO.as_bytes().to_vec()];
        config.enable_sni = true;
        Self {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// One request on a new connection (TCP, full TLS handshake, HTTP/1.1
    /// with `Connection: close`): the answer's status, its body read.
    pub async fn request(&self, dest: Dest) -> Result<StatusCode, String> {
        let exchange = async {
            let addr = dest.addr;
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            tcp.set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            let name = ServerName::try_from(istio_sni(dest.host))
                .map_err(|e| format!("SNI {}: {e}", istio_sni(dest.host)))?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            match tls.get_ref().1.handshake_kind() {
                Some(
                    rustls::HandshakeKind::Full | rustls::HandshakeKind::FullWithHelloRetryRequest,
                ) => {}
                other => return Err(format!("not a full handshake: {other:?}")),
            }
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP/1.1 over mTLS with {addr}: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let request = Request::get(dest.path)
                .header(http::header::HOST, dest.host)
                .header(http::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = response.status();
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("response body: {e}"))?;
            Ok(status)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
    }
}

// === impl HandshakeSlot ===

impl Exchange for HandshakeSlot {
    async fn exchange(&mut self) -> Result<(), String> {
        match self.client.request(self.dest).await? {
            StatusCode::OK => Ok(()),
            status => Err(format!("status {status}")),
        }
    }
}
