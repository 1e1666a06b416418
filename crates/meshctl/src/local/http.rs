//! Plain HTTP/1.1 GETs from the host to the local mesh's servers
//! (mesh-control's monitoring port, sidecars' health ports on pod
//! addresses), with hyper on a current-thread runtime: the CLI is
//! synchronous and makes one request at a time.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Limit for one request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET http://addr/path`: status and body.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(REQUEST_TIMEOUT, get_async(addr, path))
            .await
            .with_context(|| format!("GET http://{addr}{path}: no answer in {REQUEST_TIMEOUT:?}"))?
    })
}

async fn get_async(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
