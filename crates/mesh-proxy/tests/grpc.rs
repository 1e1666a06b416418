//! gRPC through the real `mesh-proxy` binary: a tonic client and a tonic
//! server speak h2c through a listener of a static bootstrap, and every
//! part of gRPC a client relies on survives the hop: the message, the
//! `grpc-status` and `grpc-message` of a trailers-only error, trailers
//! sent after a stream of messages, every message of a server stream in
//! order, and a route's fault abort answering a gRPC status
//! (`typed_per_filter_config` with `abort.grpc_status`, as a
//! VirtualService fault on a gRPC route is translated).
//!
//! The service is written by hand (no protoc): prost messages derived
//! here and tonic's `server::Grpc` / `client::Grpc` with the prost codec,
//! the way mesh-ca serves `CreateCertificate`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::proxy_process::{ProxyProcess, RunFlags};
use support::{eventually, free_addr};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

const SAY: &str = "/mesh.test.Echo/Say";
const COUNT: &str = "/mesh.test.Echo/Count";
/// Routed like SAY, but the route aborts with UNAVAILABLE.
const FAULTED: &str = "/mesh.test.Faulted/Say";
const TIMEOUT: Duration = Duration::from_secs(10);

/// The request of every method.
#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    /// What to echo; `missing` makes `Say` answer NOT_FOUND.
    #[prost(string, tag = "1")]
    text: String,
    /// How many messages `Count` streams.
    #[prost(uint32, tag = "2")]
    count: u32,
    /// `Count` fails with NOT_FOUND after this many messages, if set.
    #[prost(uint32, optional, tag = "3")]
    fail_after: Option<u32>,
}

/// The answer of every method.
#[derive(Clone, PartialEq, prost::Message)]
struct Answer {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    index: u32,
}

struct SaySvc;

struct CountSvc;

// === impl SaySvc ===

impl tonic::server::UnaryService<Ask> for SaySvc {
    type Response = Answer;
    type Future = std::future::Ready<Result<Response<Answer>, Status>>;

    fn call(&mut self, request: Request<Ask>) -> Self::Future {
        let ask = request.into_inner();
        std::future::ready(if ask.text == "missing" {
            Err(Status::not_found(format!("no greeting for {:?}", ask.text)))
        } else {
            let mut response = Response::new(Answer {
                text: format!("hello {}", ask.text),
                index: 0,
            });
            response
                .metadata_mut()
                .insert("x-served-by", MetadataValue::from_static("tonic"));
            Ok(response)
        })
    }
}

// === impl CountSvc ===

impl tonic::server::ServerStreamingService<Ask> for CountSvc {
    type Response = Answer;
    type ResponseStream = tokio_stream::Iter<std::vec::IntoIter<Result<Answer, Status>>>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Ask>) -> Self::Future {
        let ask = request.into_inner();
        let mut items: Vec<Result<Answer, Status>> = (0..ask.count)
            .take_while(|i| ask.fail_after.is_none_or(|f| *i < f))
            .map(|index| {
                Ok(Answer {
                    text: format!("{} #{index}", ask.text),
                    index,
                })
            })
            .collect();
        if ask.fail_after.is_some() {
            let mut status = Status::not_found("the rest of the stream is gone");
            status
                .metadata_mut()
                .insert("x-detail", MetadataValue::from_static("after-data"));
            items.push(Err(status));
        }
        std::future::ready(Ok(Response::new(tokio_stream::iter(items))))
    }
}

/// Serves the test service over h2c on a loopback port.
async fn grpc_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                let codec = tonic_prost::ProstCodec::<Answer, Ask>::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                let response = match req.uri().path() {
                    SAY | FAULTED => grpc.unary(SaySvc, req).await,
                    COUNT => grpc.server_streaming(CountSvc, req).await,
                    _ => Status::unimplemented("no such method").into_http(),
                };
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A bootstrap: an HTTP listener on `listen` routing everything to the
/// gRPC cluster (HTTP/2 upstream), with a fault abort on `FAULTED`.
fn bootstrap(listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"
node:
  id: router~127.0.0.1~grpc-gateway.istio-system~istio-system.svc.cluster.local
static_resources:
  listeners:
  - name: grpc
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: grpc
          codec_type: AUTO
          http_filters:
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: grpc
            virtual_hosts:
            - name: grpc
              domains: ["*"]
              routes:
              - match: {{prefix: /mesh.test.Faulted/}}
                route: {{cluster: grpc-backend}}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort:
                      grpc_status: 14
                      percentage: {{numerator: 100, denominator: HUNDRED}}
              - match: {{prefix: /, grpc: {{}}}}
                route: {{cluster: grpc-backend, timeout: 0s}}
  clusters:
  - name: grpc-backend
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: grpc-backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend_port}}}}}}}
"#,
        listen_port = listen.port(),
        backend_port = backend.port(),
    )
}

/// The proxy in front of the test server, and a client channel to it.
struct Setup {
    proxy: ProxyProcess,
    channel: tonic::transport::Channel,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Self {
        let backend = grpc_server().await;
        let listen = free_addr();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bootstrap.yaml");
        std::fs::write(&file, bootstrap(listen, backend)).unwrap();
        let mut proxy = ProxyProcess::start(RunFlags::bootstrap(&file));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(TIMEOUT)
            .connect_lazy();
        let setup = Self {
            proxy: {
                proxy.assert_running();
                proxy
            },
            channel,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(20), || async {
            setup.say("ready").await.ok()
        })
        .await;
        assert!(
            up.is_some(),
            "no gRPC answer through the proxy: {:?}\n{}",
            setup.say("ready").await.err(),
            setup.proxy.log()
        );
        setup
    }

    fn client(&self) -> tonic::client::Grpc<tonic::transport::Channel> {
        tonic::client::Grpc::new(self.channel.clone())
    }

    async fn unary(&self, path: &'static str, text: &str) -> Result<Response<Answer>, Status> {
        let mut grpc = self.client();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
        let ask = Ask {
            text: text.into(),
            ..Default::default()
        };
        grpc.unary(
            Request::new(ask),
            PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await
    }

    async fn say(&self, text: &str) -> Result<Response<Answer>, Status> {
        self.unary(SAY, text).await
    }

    /// Calls `Count`; the messages received and how the stream ended.
    async fn count(
        &self,
        count: u32,
        fail_after: Option<u32>,
    ) -> (Vec<Answer>, Result<(), Status>) {
        let mut grpc = self.client();
        grpc.ready().await.unwrap();
        let ask = Ask {
            text: "item".into(),
            count,
            fail_after,
        };
        let response = grpc
            .server_streaming(
                Request::new(ask),
                PathAndQuery::from_static(COUNT),
                tonic_prost::ProstCodec::default(),
            )
            .await;
        let mut stream = match response {
            Ok(r) => r.into_inner(),
            Err(status) => return (Vec::new(), Err(status)),
        };
        let mut messages = Vec::new();
        loop {
            match tokio::time::timeout(TIMEOUT, stream.message()).await {
                Err(_) => return (messages, Err(Status::deadline_exceeded("test timeout"))),
                Ok(Ok(Some(m))) => messages.push(m),
                Ok(Ok(None)) => return (messages, Ok(())),
                Ok(Err(status)) => return (messages, Err(status)),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_gets_its_answer_and_response_metadata() {
    let setup = Setup::start().await;
    let response = setup.say("mesh").await.unwrap();
    assert_eq!(
        response.metadata().get("x-served-by").unwrap(),
        "tonic",
        "response headers pass through"
    );
    assert_eq!(response.into_inner().text, "hello mesh");
    // Many calls share one HTTP/2 connection through the proxy.
    for i in 0..50 {
        let text = format!("call {i}");
        let answer = setup.say(&text).await.unwrap().into_inner();
        assert_eq!(answer.text, format!("hello {text}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_reaches_the_client_with_its_status_and_message() {
    let setup = Setup::start().await;
    let status = setup.say("missing").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no greeting for \"missing\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_delivers_every_message_then_its_trailers() {
    let setup = Setup::start().await;
    let (messages, end) = setup.count(200, None).await;
    assert_eq!(end.map_err(|s| format!("{s:?}")), Ok(()));
    assert_eq!(messages.len(), 200);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.index as usize, i, "messages arrive in order");
        assert_eq!(m.text, format!("item #{i}"));
    }

    // An error after data travels in the trailers, behind the messages.
    let (messages, end) = setup.count(10, Some(3)).await;
    assert_eq!(messages.len(), 3);
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "the rest of the stream is gone");
    assert_eq!(
        status.metadata().get("x-detail").unwrap(),
        "after-data",
        "custom trailers pass through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_abort_answers_its_grpc_status() {
    let setup = Setup::start().await;
    let status = setup.unary(FAULTED, "anyone").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "fault filter abort");
    // The fault is the route's alone: the service itself still answers.
    assert_eq!(
        setup.say("after").await.unwrap().into_inner().text,
        "hello after"
    );
}
