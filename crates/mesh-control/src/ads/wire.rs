//! ADS on the wire without copying resources per proxy.
//!
//! Every resource is encoded once per translation (an `Any` in
//! [`Item::encoded`], shared by every proxy of a shape). A response is the
//! few fields that differ per proxy (version, nonce, type, removed names),
//! encoded with prost, followed by the shared resources as repeated field 2
//! — protobuf merges concatenated encodings, so this is exactly the message
//! prost would produce. The chunks go to hyper as they are.
//!
//! This is also why the gRPC service is written here rather than taken from
//! `envoy-types`: tonic's generated server encodes each response into a
//! per-stream buffer that keeps the capacity of the largest message for the
//! life of the stream — with thousands of proxies and multi-megabyte CDS and
//! EDS responses, that alone was gigabytes. Requests are decoded here too
//! ([`Requests`]): Envoy's every EDS ACK lists all the names it wants
//! (hundreds of kilobytes at 10,000 services), and tonic's decoder kept a
//! buffer that large per stream for its whole life.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use super::resources::Item;
use super::stream::StreamSession;
use super::{AdsServer, delta, sotw};

/// Largest request accepted from a proxy (Envoy lists every EDS name it
/// wants in one request).
pub(super) const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// One encoded gRPC message (5-byte prefix included), in chunks.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    chunks: Vec<Bytes>,
}

/// Field 2 (`resources`) of both response messages.
const RESOURCES_FIELD: u32 = 2;

/// Builds a message from its prost-encoded fields plus shared chunks that
/// are appended as repeated length-delimited `field` entries.
struct Builder {
    head: BytesMut,
    chunks: Vec<Bytes>,
    body_len: usize,
}

impl Builder {
    fn new(fields: &impl Message) -> Self {
        let mut head = BytesMut::with_capacity(fields.encoded_len() + 64);
        // The gRPC prefix is written last, once the length is known.
        head.put_bytes(0, 5);
        let _ = fields.encode(&mut head);
        let body_len = head.len() - 5;
        Self {
            head,
            chunks: Vec::new(),
            body_len,
        }
    }

    /// Appends `value` as a length-delimited `field`, with `prefix` (an
    /// already encoded part of the same submessage) in front of it.
    fn push_field(&mut self, field: u32, prefix: &[u8], value: &Bytes) {
        let mut tag = BytesMut::with_capacity(16 + prefix.len());
        prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut tag);
        prost::encoding::encode_varint((prefix.len() + value.len()) as u64, &mut tag);
        tag.put_slice(prefix);
        self.body_len += tag.len() + value.len();
        self.chunks.push(tag.freeze());
        self.chunks.push(value.clone());
    }

    /// Appends a field that is already framed (tag and length included).
    fn push_framed(&mut self, framed: &Bytes) {
        self.body_len += framed.len();
        self.chunks.push(framed.clone());
    }

    fn finish(mut self) -> Encoded {
        let len = u32::try_from(self.body_len).unwrap_or(u32::MAX);
        self.head[0] = 0; // not compressed
        self.head[1..5].copy_from_slice(&len.to_be_bytes());
        let mut chunks = Vec::with_capacity(self.chunks.len() + 1);
        chunks.push(self.head.freeze());
        chunks.extend(self.chunks);
        Encoded { chunks }
    }
}

fn control_plane() -> Option<ControlPlane> {
    Some(ControlPlane {
        identifier: "mesh-control".into(),
    })
}

/// A state-of-the-world response.
pub(super) fn sotw_response(
    version: &str,
    nonce: &str,
    type_url: &str,
    items: &[&Item],
) -> Encoded {
    let mut b = Builder::new(&DiscoveryResponse {
        version_info: version.to_string(),
        type_url: type_url.to_string(),
        nonce: nonce.to_string(),
        control_plane: control_plane(),
        ..Default::default()
    });
    for item in items {
        b.push_framed(&item.framed);
    }
    b.finish()
}

/// An incremental response: `updates` as `Resource { name, version,
/// resource }`, `removed` by name.
pub(super) fn delta_response(
    system_version: &str,
    nonce: &str,
    type_url: &str,
    updates: &[&Item],
    removed: Vec<String>,
) -> Encoded {
    let mut b = Builder::new(&DeltaDiscoveryResponse {
        system_version_info: system_version.to_string(),
        type_url: type_url.to_string(),
        removed_resources: removed,
        nonce: nonce.to_string(),
        control_plane: control_plane(),
        ..Default::default()
    });
    for item in updates {
        let mut head = Resource {
            name: item.name.clone(),
            version: item.version.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        // `Resource.resource` (field 2) is the shared Any.
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut head);
        let any = item.encoded_any();
        prost::encoding::encode_varint(any.len() as u64, &mut head);
        b.push_field(RESOURCES_FIELD, &head, &any);
    }
    b.finish()
}

// === gRPC service ===

/// The `AggregatedDiscoveryService` for tonic's server.
#[derive(Clone)]
pub struct AdsService(pub(super) AdsServer);

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let response = match req.uri().path() {
            SOTW_PATH => open::<sotw::Session, DiscoveryRequest>(&self.0, req),
            DELTA_PATH => open::<delta::Session, DeltaDiscoveryRequest>(&self.0, req),
            _ => Status::unimplemented(format!("{SERVICE} has no method {}", req.uri().path()))
                .into_http(),
        };
        Box::pin(async move { Ok(response) })
    }
}

fn open<S, R>(server: &AdsServer, req: http::Request<Body>) -> http::Response<Body>
where
    S: StreamSession<Request = R, Response = Encoded>,
    R: Message + Default + Send + 'static,
{
    let peer = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr());
    let requests = Requests::new(req.into_body());
    match server.open_stream::<S>(requests, peer) {
        Ok(rx) => {
            let mut response = http::Response::new(Body::new(ResponseBody {
                rx,
                pending: VecDeque::new(),
                done: false,
            }));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

/// The requests of one stream, decoded from the body's gRPC frames
/// (uncompressed, at most [`MAX_REQUEST_BYTES`] each).
pub(super) struct Requests<R> {
    body: Body,
    buf: BytesMut,
    ended: bool,
    _message: std::marker::PhantomData<fn() -> R>,
}

/// Capacity above which an emptied request buffer is released rather than
/// kept for the next request.
const KEEP_REQUEST_BUFFER: usize = 64 * 1024;

/// gRPC frame header: compressed flag and big-endian length.
const FRAME_HEADER: usize = 5;

impl<R: Message + Default> Requests<R> {
    fn new(body: Body) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            ended: false,
            _message: std::marker::PhantomData,
        }
    }

    /// The next request; `None` when the proxy closed its side.
    pub async fn message(&mut self) -> Result<Option<R>, Status> {
        loop {
            if let Some(message) = self.decode_one()? {
                return Ok(Some(message));
            }
            if self.ended {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::invalid_argument(
                        "stream ended in the middle of a request",
                    ))
                };
            }
            let frame = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(Pin::new(&mut self.body), cx)
            })
            .await;
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => return Err(status),
                None => self.ended = true,
            }
        }
    }

    fn decode_one(&mut self) -> Result<Option<R>, Status> {
        if self.buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not supported",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_REQUEST_BYTES {
            return Err(Status::resource_exhausted(format!(
                "request of {len} bytes exceeds the limit of {MAX_REQUEST_BYTES}"
            )));
        }
        if self.buf.len() < FRAME_HEADER + len {
            self.buf.reserve(FRAME_HEADER + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER);
        let bytes = self.buf.split_to(len).freeze();
        if self.buf.is_empty() && self.buf.capacity() > KEEP_REQUEST_BUFFER {
            self.buf = BytesMut::new();
        }
        R::decode(bytes)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
    }
}

/// A stream's responses as HTTP/2 data frames, then the gRPC status.
struct ResponseBody {
    rx: mpsc::Receiver<Result<Encoded, Status>>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let status = match ready!(self.rx.poll_recv(cx)) {
                Some(Ok(message)) => {
                    self.pending.extend(message.chunks);
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            self.done = true;
            let mut trailers = http::HeaderMap::new();
            // Only fails for a message that is not a valid header value,
            // which ours never are; the status code is still sent.
            if status.add_header(&mut trailers).is_err() {
                trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }
}

/// Shared by the sessions: an item's payload length, for logs.
pub(super) fn items_len(items: &[&Item]) -> usize {
    items.iter().map(|i| i.framed.len()).sum()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use mesh_api::xds::pack_any;

    use super::*;
    use crate::ads::resources::Translated;
    use crate::xds::ProxyResources;
    use mesh_api::xds::ResourceType;

    fn joined(e: Encoded) -> Vec<u8> {
        let bytes: Vec<u8> = e.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(bytes[0], 0, "uncompressed");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - 5, "gRPC length prefix");
        bytes[5..].to_vec()
    }

    fn translated() -> Translated {
        let cluster = |name: &str| Cluster {
            name: name.into(),
            ..Default::default()
        };
        Translated::new(ProxyResources {
            clusters: vec![cluster("a"), cluster("b")],
            ..Default::default()
        })
    }

    #[test]
    fn responses_decode_to_what_prost_would_send() {
        let t = translated();
        let items: Vec<&Item> = t
            .get(ResourceType::Cluster)
            .items
            .iter()
            .map(AsRef::as_ref)
            .collect();
        let type_url = ResourceType::Cluster.type_url();

        let sotw = DiscoveryResponse::decode(
            joined(sotw_response("v1", "n1", &type_url, &items)).as_slice(),
        )
        .unwrap();
        assert_eq!(
            sotw,
            DiscoveryResponse {
                version_info: "v1".into(),
                resources: vec![
                    pack_any(Cluster {
                        name: "a".into(),
                        ..Default::default()
                    }),
                    pack_any(Cluster {
                        name: "b".into(),
                        ..Default::default()
                    }),
                ],
                type_url: type_url.clone(),
                nonce: "n1".into(),
                control_plane: control_plane(),
                ..Default::default()
            }
        );

        let delta = DeltaDiscoveryResponse::decode(
            joined(delta_response(
                "v2",
                "n2",
                &type_url,
                &items[1..],
                vec!["gone".into()],
            ))
            .as_slice(),
        )
        .unwrap();
        assert_eq!(delta.system_version_info, "v2");
        assert_eq!(delta.nonce, "n2");
        assert_eq!(delta.removed_resources, ["gone"]);
        assert_eq!(delta.resources.len(), 1);
        assert_eq!(delta.resources[0].name, "b");
        assert_eq!(delta.resources[0].version, items[1].version);
        assert_eq!(
            delta.resources[0].resource,
            Some(pack_any(Cluster {
                name: "b".into(),
                ..Default::default()
            }))
        );
    }
}
