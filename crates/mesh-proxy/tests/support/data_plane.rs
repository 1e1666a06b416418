//! The proxy's data path in this process: `proxy::run_with` over a runtime
//! compiled from resources the test lists (see [`super::resources`]), an
//! observer that keeps every request and connection record, runtime
//! updates and drains on demand.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_proxy::drain;
use mesh_proxy::proxy::{Observer, Options, ProxyError, RequestRecord, TcpRecord};
use mesh_proxy::resources::Resource;
use mesh_proxy::runtime::{self, Runtime};
use mesh_test_support::eventually;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::resources::resources;

/// Every record the proxy wrote.
#[derive(Default)]
pub struct Records {
    pub requests: Mutex<Vec<RequestRecord>>,
    pub connections: Mutex<Vec<TcpRecord>>,
}

/// A running data path; its listeners close when the task ends.
pub struct Proxy {
    runtime: watch::Sender<Arc<Runtime>>,
    trigger: Option<drain::Trigger>,
    pub task: JoinHandle<Result<(), ProxyError>>,
    pub records: Arc<Records>,
}

/// Waits (bounded) until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    let listening = eventually(Duration::from_secs(2), || async {
        tokio::net::TcpStream::connect(addr).await.ok()
    })
    .await;
    assert!(listening.is_some(), "{addr} never started listening");
}

// === impl Records ===

impl Observer for Records {
    fn request(&self, record: &RequestRecord) {
        self.requests.lock().unwrap().push(record.clone());
    }
    fn connection(&self, record: &TcpRecord) {
        self.connections.lock().unwrap().push(record.clone());
    }
}

// === impl Proxy ===

impl Proxy {
    /// Runs the proxy over `list` and waits until `ready` accepts.
    pub async fn start(list: Vec<Resource>, ready: SocketAddr) -> Self {
        let (tx, rx) = watch::channel(Arc::new(runtime::compile(&resources(list))));
        let (trigger, watch) = drain::channel();
        let records = Arc::new(Records::default());
        let options = Options {
            observer: records.clone(),
            ..Options::default()
        };
        let task = tokio::spawn(mesh_proxy::proxy::run_with(rx, watch, options));
        wait_listening(ready).await;
        Self {
            runtime: tx,
            trigger: Some(trigger),
            task,
            records,
        }
    }

    /// Publishes a runtime compiled from `list`.
    pub fn update(&self, list: Vec<Resource>) {
        self.runtime
            .send_replace(Arc::new(runtime::compile(&resources(list))));
    }

    /// Starts a drain; returns the trigger's verdict once every watch is gone.
    pub async fn drain(&mut self, deadline: Duration) -> bool {
        self.trigger.take().unwrap().drain(deadline).await
    }

    /// The last request record, waiting for it to be written.
    pub async fn last_request(&self) -> RequestRecord {
        eventually(Duration::from_secs(2), || async {
            self.records.requests.lock().unwrap().last().cloned()
        })
        .await
        .expect("no request record")
    }
}
