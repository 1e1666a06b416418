//! Upstreams for the tests: mesh-echo (answers with its name, version and
//! the request it saw, and logs every request), a backend that holds each
//! answer until the test lets it go, one that counts the connections it
//! was given and saw closed, a TCP echo (optionally server-first), and an
//! address nothing listens on.
//! Backends serve on sockets bound wherever the test wants them: on
//! loopback, or inside a network namespace ([`bind`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use e2e::echo::{Behaviour, EchoConfig, RequestLog};
use http::Request;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_test_support::netns::Namespace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A mesh-echo backend; stops when dropped.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `(host, path)` of every request it saw.
    pub log: RequestLog,
    task: JoinHandle<()>,
}

/// A backend that answers each request only when told: `arrived` gets
/// the path of every request as it arrives, `release` lets one answer go.
pub struct Held {
    pub addr: SocketAddr,
    pub arrived: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub release: Arc<tokio::sync::Semaphore>,
    task: JoinHandle<()>,
}

/// An HTTP/1.1 and HTTP/2 backend answering `ok` that counts its
/// connections: `opened`, and `closed` by the other side.
pub struct Counting {
    pub addr: SocketAddr,
    pub opened: Arc<AtomicUsize>,
    pub closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// A std listener on `addr`, inside `ns` when given.
pub fn bind(ns: Option<&Namespace>, addr: &str) -> std::net::TcpListener {
    let bind = || std::net::TcpListener::bind(addr);
    match ns {
        Some(ns) => ns.run_in(bind),
        None => bind(),
    }
    .unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

/// A mesh-echo backend named `name`, version `version`, on a loopback port.
pub async fn echo(name: &str, version: &str) -> Backend {
    Backend::serve(bind(None, "127.0.0.1:0"), name, version)
}

/// A [`Held`] backend on a loopback port answering `name`.
pub async fn held(name: &'static str) -> Held {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            let (tx, gate) = (tx.clone(), gate.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (tx, gate) = (tx.clone(), gate.clone());
                        async move {
                            let _ = tx.send(req.uri().path().to_string());
                            if let Ok(permit) = gate.acquire().await {
                                permit.forget();
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(name),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Held {
        addr,
        arrived,
        release,
        task,
    }
}

/// A [`Counting`] backend on a loopback port.
pub async fn counting() -> Counting {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, c) = (opened.clone(), closed.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            o.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from("ok"),
                        )))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Counting {
        addr,
        opened,
        closed,
        task,
    }
}

/// A TCP backend: greets with `greeting` (if any), then answers every
/// read with `name:` followed by what it read.
pub async fn tcp_backend(name: &'static str, greeting: Option<&'static str>) -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = socket.accept().await {
            tokio::spawn(async move {
                if let Some(g) = greeting {
                    let _ = s.write_all(g.as_bytes()).await;
                }
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = format!("{name}:").into_bytes();
                            out.extend_from_slice(&buf[..n]);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A loopback address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    mesh_test_support::free_addr()
}

// === impl Backend ===

impl Backend {
    /// Serves mesh-echo as workload `name`, version `version`, on
    /// `listener` (bound on loopback or in a namespace).
    pub fn serve(listener: std::net::TcpListener, name: &str, version: &str) -> Self {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
        let config = Arc::new(EchoConfig {
            name: name.into(),
            version: version.into(),
            namespace: "default".into(),
            behaviour: Behaviour::default(),
            log: Some(log.clone()),
        });
        let task = tokio::spawn(e2e::echo::serve(listener, config));
        Self { addr, log, task }
    }

    /// Requests seen for `path`, by host.
    pub fn seen(&self, path: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(h, _)| h.clone())
            .collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl Counting ===

impl Counting {
    /// Connections opened so far.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Connections the other side closed so far.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl Held ===

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}
