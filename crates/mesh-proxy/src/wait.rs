//! `mesh-proxy wait`: polls the proxy's readiness until it answers 200 or
//! the timeout passes. The injector runs it as the proxy container's
//! post-start hook when the app must wait for the proxy
//! (`holdApplicationUntilProxyStarts` on API servers without native
//! sidecars): the kubelet starts the next container only once it returns.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::Empty;
use hyper::body::Bytes;

/// Flags of `mesh-proxy wait`.
#[derive(Clone, Debug, clap::Args)]
pub struct WaitArgs {
    /// Readiness endpoint to poll (`http://host:port/path`).
    #[arg(long, default_value = "http://127.0.0.1:15021/healthz/ready")]
    pub url: String,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "60s")]
    pub timeout: mesh_api::Duration,
    /// Delay between polls.
    #[arg(long, default_value = "500ms")]
    pub period: mesh_api::Duration,
}

/// Polls until ready.
pub async fn run(args: &WaitArgs) -> anyhow::Result<()> {
    let uri: hyper::Uri = args
        .url
        .parse()
        .with_context(|| format!("--url {:?}", args.url))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url {:?}: only http:// is supported", args.url);
    }
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .with_context(|| format!("--url {:?} has no host", args.url))?;
    let deadline = Instant::now() + args.timeout.as_std();
    loop {
        let last = match poll(&authority, &uri).await {
            Ok(200) => {
                eprintln!("mesh-proxy is ready");
                return Ok(());
            }
            Ok(code) => format!("{} answered {code}", args.url),
            Err(e) => format!("{}: {e}", args.url),
        };
        if Instant::now() >= deadline {
            bail!("mesh-proxy was not ready within {}: {last}", args.timeout);
        }
        tokio::time::sleep(args.period.as_std().max(Duration::from_millis(10))).await;
    }
}

async fn poll(authority: &str, uri: &hyper::Uri) -> anyhow::Result<u16> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        anyhow::Ok(response.status().as_u16())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .context("timed out")?
}
