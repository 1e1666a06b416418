//! How `meshctl` reaches a proxy's admin API (`/config_dump`, `/clusters`,
//! `/logging`), whatever the proxy is: our mesh-proxy or a stock Envoy.
//!
//! The transport sits behind [`AdminApi`] so each place a proxy can live
//! adds its own way in without touching the commands: an address the host
//! can reach ([`Target::Addr`]), a local-mesh pod whose admin listens on
//! loopback *inside* its network namespace ([`Target::Netns`]: the TCP
//! connection is opened by a short-lived thread that joined the namespace,
//! then driven by tokio on any thread, since a socket stays in the
//! namespace it was created in), or a saved `/config_dump` file
//! ([`Target::File`]). A Kubernetes pod is reached through a port-forward
//! the same way, over [`http_over`] ([`crate::kube_target::PortForward`],
//! chosen by [`TargetArgs::admin`] with --use-kube).

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, bail};
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::local::{RunDirArg, State};

/// Where the local mesh's sidecars serve their admin API, inside each
/// pod's network namespace (Istio's well-known port).
pub const POD_ADMIN: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    mesh_api::wellknown::PROXY_ADMIN_PORT,
);

/// Limit for one admin request, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where network namespaces made by `ip netns add` are.
const NETNS_DIR: &str = "/run/netns";

/// A future returned by [`AdminApi`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A proxy's admin API, however it is reached.
pub trait AdminApi: Send + Sync {
    /// Sends `method path_and_query` and returns the body of a 200; any
    /// other status is an error naming the URL and the status.
    fn call<'a>(
        &'a self,
        method: Method,
        path_and_query: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Bytes>>;

    /// Where requests go, for messages (`127.0.0.1:15000 in netns pod-x`).
    fn describe(&self) -> String;
}

/// The transports `meshctl` itself knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An admin address reachable from here.
    Addr(SocketAddr),
    /// An admin address reachable only inside a network namespace
    /// (`/run/netns/<netns>`, or an absolute path to a namespace handle).
    Netns {
        /// The namespace name (or path).
        netns: String,
        /// The admin address inside it.
        addr: SocketAddr,
    },
    /// A saved `/config_dump`: answers `/config_dump` only.
    File(PathBuf),
}

/// Which proxy a command talks to: a local-mesh pod, a Kubernetes pod
/// (with --use-kube, --kubeconfig or --context), an admin address or a
/// saved config dump.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Pod in the local mesh (`name` or `name.namespace`), or in the
    /// cluster with --use-kube (`name[.namespace]`, `deployment/NAME`).
    #[arg(value_name = "POD")]
    pub pod: Option<String>,
    /// Talk to the admin API at this address directly (e.g. a stock Envoy's).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["pod", "file"])]
    pub admin: Option<SocketAddr>,
    /// Read a saved `/config_dump` instead of asking a proxy.
    #[arg(long, value_name = "FILE", conflicts_with = "pod")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub run_dir: RunDirArg,
    #[command(flatten)]
    pub kube: crate::kube_target::KubeTargetArgs,
}

// === impl TargetArgs ===

impl TargetArgs {
    /// The target the flags name: `--admin`, `--file`, or the pod's sidecar
    /// from the local mesh's run state.
    pub fn target(&self) -> anyhow::Result<Target> {
        if let Some(addr) = self.admin {
            return Ok(Target::Addr(addr));
        }
        if let Some(file) = &self.file {
            return Ok(Target::File(file.clone()));
        }
        let Some(pod) = &self.pod else {
            bail!("name a pod of the local mesh, or use --admin ADDR or --file CONFIG_DUMP");
        };
        let pod = match &self.kube.namespace {
            Some(ns) if !pod.contains('.') => format!("{pod}.{ns}"),
            _ => pod.clone(),
        };
        let state = State::running(&self.run_dir.path())?;
        Ok(Target::for_pod(state.pod(&pod)?))
    }

    /// The admin API of the proxy the flags name: a Kubernetes pod's
    /// through a port-forward, else [`Self::target`].
    pub async fn admin(&self) -> anyhow::Result<Box<dyn AdminApi>> {
        use crate::kube_target::{ADMIN_PORT, PodRef, PortForward, resolve};
        if !self.kube.enabled() || self.admin.is_some() || self.file.is_some() {
            return Ok(Box::new(self.target()?));
        }
        let Some(pod) = &self.pod else {
            bail!("name a pod of the cluster: POD[.NAMESPACE] or deployment/NAME");
        };
        let pod = PodRef::parse(pod, self.kube.namespace.as_deref())?;
        let cluster = self.kube.cluster().await?;
        let found = resolve(&cluster, &pod).await?;
        Ok(Box::new(PortForward::new(cluster, found, ADMIN_PORT)))
    }
}

// === impl Target ===

impl Target {
    /// The admin API of a local-mesh pod's sidecar.
    pub fn for_pod(pod: &crate::local::PodState) -> Self {
        Self::Netns {
            netns: pod.netns.clone(),
            addr: POD_ADMIN,
        }
    }

    /// `GET path_and_query`.
    pub async fn get(&self, path_and_query: &str) -> anyhow::Result<Bytes> {
        self.call(Method::GET, path_and_query).await
    }

    /// `POST path_and_query` (Envoy's mutating endpoints, `/logging`).
    pub async fn post(&self, path_and_query: &str) -> anyhow::Result<Bytes> {
        self.call(Method::POST, path_and_query).await
    }

    async fn request(&self, method: Method, path_and_query: &str) -> anyhow::Result<Bytes> {
        match self {
            Self::Addr(addr) => {
                let stream =
                    tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
                        .await
                        .with_context(|| format!("connecting to {addr}: timed out"))?
                        .with_context(|| format!("connecting to the admin API at {addr}"))?;
                http_over(stream, &addr.to_string(), method, path_and_query).await
            }
            Self::Netns { netns, addr } => {
                let stream = connect_in_netns(netns, *addr).await?;
                http_over(stream, &addr.to_string(), method, path_and_query).await
            }
            Self::File(path) => read_dump_file(path, path_and_query),
        }
    }
}

impl AdminApi for Target {
    fn call<'a>(
        &'a self,
        method: Method,
        path_and_query: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Bytes>> {
        Box::pin(async move {
            tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.request(method.clone(), path_and_query),
            )
            .await
            .with_context(|| {
                format!(
                    "{method} {path_and_query} on {}: no answer in {REQUEST_TIMEOUT:?}",
                    self.describe()
                )
            })?
        })
    }

    fn describe(&self) -> String {
        match self {
            Self::Addr(addr) => format!("http://{addr}"),
            Self::Netns { netns, addr } => format!("http://{addr} (in netns {netns})"),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// One HTTP/1.1 request over an already connected stream (a TCP socket, a
/// port-forward); the body of a 200, else an error naming the URL and the
/// status (with the start of the body, which is where Envoy explains).
pub async fn http_over<S>(
    io: S,
    authority: &str,
    method: Method,
    path_and_query: &str,
) -> anyhow::Result<Bytes>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let url = format!("http://{authority}{path_and_query}");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .with_context(|| format!("{method} {url}"))?;
    // The connection task ends when the response is read and `sender` drops.
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method.clone())
        .uri(path_and_query)
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("{method} {url}: bad request"))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("{method} {url}: reading the body"))?
        .to_bytes();
    if status != http::StatusCode::OK {
        let text = String::from_utf8_lossy(&body);
        let detail: String = text.trim().chars().take(300).collect();
        bail!("{method} {url}: {status}: {detail}");
    }
    Ok(body)
}

/// A TCP connection to `addr` made from inside the network namespace
/// `netns`, ready for tokio.
///
/// `setns` changes the namespace of the calling thread only, for good, so
/// it runs on a thread of its own that ends right after connecting (never
/// on a runtime's pooled thread, which would stay in the pod).
pub async fn connect_in_netns(
    netns: &str,
    addr: SocketAddr,
) -> anyhow::Result<tokio::net::TcpStream> {
    let path = netns_path(netns);
    let handle = File::open(&path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let netns_name = netns.to_string();
    std::thread::Builder::new()
        .name("meshctl-netns".into())
        .spawn(move || {
            let result = (|| -> anyhow::Result<std::net::TcpStream> {
                nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET).with_context(
                    || format!("entering network namespace {netns_name} (needs root)"),
                )?;
                let stream = std::net::TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
                    .with_context(|| format!("connecting to {addr} in netns {netns_name}"))?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })();
            let _ = tx.send(result);
        })
        .context("starting a thread to enter the network namespace")?;
    let stream = rx
        .await
        .context("the network namespace thread ended without an answer")??;
    Ok(tokio::net::TcpStream::from_std(stream)?)
}

/// `/run/netns/<name>`, or `netns` itself when it is a path.
fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new(NETNS_DIR).join(netns)
    }
}

/// A saved dump answers `/config_dump` (with any query) and nothing else.
fn read_dump_file(path: &Path, path_and_query: &str) -> anyhow::Result<Bytes> {
    let endpoint = path_and_query.split('?').next().unwrap_or_default();
    if endpoint != "/config_dump" {
        bail!(
            "{} holds only a config dump; {endpoint} needs a running proxy (use a POD or --admin)",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Bytes::from(bytes))
}

/// Runs `f` on a current-thread runtime: the CLI is synchronous and makes a
/// few requests, one at a time.
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_answers_config_dump_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump.json");
        std::fs::write(&path, "{\"configs\":[]}").unwrap();
        let target = Target::File(path);
        let body = block_on(target.get("/config_dump?include_eds")).unwrap();
        assert_eq!(body.unwrap(), Bytes::from_static(b"{\"configs\":[]}"));
        let err = block_on(target.get("/clusters?format=json"))
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("holds only a config dump"),
            "{err}"
        );
    }

    #[test]
    fn non_200_names_url_and_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nno such x",
            )
            .unwrap();
        });
        let err = block_on(Target::Addr(addr).get("/nope"))
            .unwrap()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("http://{addr}/nope")), "{text}");
        assert!(text.contains("404"), "{text}");
        assert!(text.contains("no such x"), "{text}");
        server.join().unwrap();
    }
}
