//! Istio's peer metadata exchange over TCP (ALPN `istio-peer-exchange`):
//! once Istio mutual TLS negotiated that ALPN, each side writes, as the
//! first bytes of the stream, a header of two big-endian u32 (the magic
//! [`MAGIC`], then the length of what follows) and a serialized
//! `google.protobuf.Any` holding a `google.protobuf.Struct` with the
//! sender's node metadata (`x-envoy-peer-metadata`, a Struct: the keys the
//! HTTP exchange sends) and node id (`x-envoy-peer-metadata-id`). Each
//! side strips the other's header from the first bytes it reads, so the
//! applications never see it.
//!
//! [`encode`] builds a header, [`parse`] reads one from the front of a
//! buffer, and [`PeerReader`] does that on a stream: it holds back the
//! first bytes until they are a whole header, then hands on what follows.
//! Anything that is not an exchange header (another magic, a length past
//! [`MAX_PAYLOAD`], a payload that does not parse, the stream ending or
//! stalling midway) abandons the exchange and every byte held back is
//! handed on untouched: the exchange may lose the metadata, never the
//! application's bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::{METADATA, METADATA_ID, PeerMetadata, workload_of};

/// The ALPN protocol under which both sides exchange.
pub const ALPN: &str = mesh_api::xds::metadata_exchange::PROTOCOL;
/// The first four bytes of a header (Istio's
/// `MetadataExchangeInitialHeader::magic_number`).
pub const MAGIC: u32 = 0x3D23_0467;
/// Magic and length.
const HEADER_LEN: usize = 8;
/// A longer payload is not taken for a header (Istio's are a few hundred
/// bytes).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// How long a header that started arriving may take to complete before
/// the bytes are handed on as they are.
pub const HEADER_WAIT: Duration = Duration::from_secs(10);
/// The payload's type.
const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";

/// What the front of a buffer is.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// The start of a header: more bytes are needed.
    NeedMore,
    /// A whole header of `consumed` bytes, and what the peer said in it
    /// (`None` when it carried no metadata).
    Header {
        /// Bytes of the header.
        consumed: usize,
        /// The peer.
        peer: Option<Arc<PeerMetadata>>,
    },
    /// Not an exchange header: the bytes belong to the application.
    NotExchange,
}

/// The header carrying `metadata` (node metadata) and `id` (node id).
pub fn encode(metadata: &Struct, id: &str) -> Vec<u8> {
    let mut fields = std::collections::HashMap::new();
    fields.insert(
        METADATA.to_string(),
        Value {
            kind: Some(Kind::StructValue(metadata.clone())),
        },
    );
    if !id.is_empty() {
        fields.insert(
            METADATA_ID.to_string(),
            Value {
                kind: Some(Kind::StringValue(id.to_string())),
            },
        );
    }
    let payload = Any {
        type_url: STRUCT_TYPE_URL.into(),
        value: Struct { fields }.encode_to_vec(),
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    // Node metadata is bounded (a few KiB); a length past u32 cannot occur.
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&payload);
    out
}

/// Reads a header from the front of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let magic = MAGIC.to_be_bytes();
    let seen = buf.len().min(magic.len());
    if buf[..seen] != magic[..seen] {
        return Parsed::NotExchange;
    }
    let Some(len) = buf.get(4..HEADER_LEN) else {
        return Parsed::NeedMore;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Parsed::NotExchange;
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Parsed::NeedMore;
    };
    let Ok(any) = Any::decode(payload) else {
        return Parsed::NotExchange;
    };
    if any.type_url != STRUCT_TYPE_URL {
        return Parsed::NotExchange;
    }
    let Ok(data) = Struct::decode(any.value.as_slice()) else {
        return Parsed::NotExchange;
    };
    let metadata = match data.fields.get(METADATA).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => Some(s),
        _ => None,
    };
    let id = match data.fields.get(METADATA_ID).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.chars().take(1024).collect(),
        _ => String::new(),
    };
    Parsed::Header {
        consumed: HEADER_LEN + len,
        peer: metadata.map(|m| {
            Arc::new(PeerMetadata {
                id,
                workload: workload_of(m),
            })
        }),
    }
}

/// A stream whose first bytes read may be the peer's exchange header:
/// [`PeerReader::exchanging`] strips it and keeps what it said;
/// [`PeerReader::plain`] reads and writes the stream as it is. Writes
/// always go straight to the stream.
#[derive(Debug)]
pub struct PeerReader<S> {
    inner: S,
    state: State,
    /// Set once the peer's header is read; shared so that the connection
    /// can name its peer while the stream is still being read.
    peer: Arc<OnceLock<Arc<PeerMetadata>>>,
}

/// Where a [`PeerReader`] is.
#[derive(Debug)]
enum State {
    /// Holding back the first bytes until they are a whole header; the
    /// deadline runs from the first byte.
    Reading {
        held: Vec<u8>,
        deadline: Option<Pin<Box<Sleep>>>,
    },
    /// Handing on bytes held back (what followed the header, or all of
    /// them when the exchange was abandoned) before reading the stream.
    Replaying { held: Vec<u8>, at: usize },
    /// Reading the stream.
    Passing,
}

// === impl PeerReader ===

impl<S> PeerReader<S> {
    /// Strips the peer's header from the first bytes of `inner`.
    pub fn exchanging(inner: S) -> Self {
        Self {
            inner,
            state: State::Reading {
                held: Vec::new(),
                deadline: None,
            },
            peer: Arc::default(),
        }
    }

    /// Reads `inner` as it is.
    pub fn plain(inner: S) -> Self {
        Self {
            inner,
            state: State::Passing,
            peer: Arc::default(),
        }
    }

    /// What the peer said, once its header was read.
    pub fn peer(&self) -> Option<Arc<PeerMetadata>> {
        self.peer.get().cloned()
    }

    /// Where the peer will be once its header is read, for whoever needs
    /// it while the stream is borrowed (periodic TCP metrics).
    pub fn peer_slot(&self) -> Arc<OnceLock<Arc<PeerMetadata>>> {
        self.peer.clone()
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Hands on `held` from the start (the exchange is over).
    fn replay(&mut self, held: Vec<u8>) {
        self.state = if held.is_empty() {
            State::Passing
        } else {
            State::Replaying { held, at: 0 }
        };
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PeerReader<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Passing => return Pin::new(&mut this.inner).poll_read(cx, buf),
                State::Replaying { held, at } => {
                    let n = (held.len() - *at).min(buf.remaining());
                    buf.put_slice(&held[*at..*at + n]);
                    *at += n;
                    if *at == held.len() {
                        this.state = State::Passing;
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Reading { held, deadline } => {
                    if let Some(d) = deadline
                        && d.as_mut().poll(cx).is_ready()
                    {
                        tracing::debug!(held = held.len(), timeout = ?HEADER_WAIT, "peer exchange header incomplete; handing the bytes on");
                        let held = std::mem::take(held);
                        this.replay(held);
                        continue;
                    }
                    let mut chunk = [0u8; 4096];
                    let mut read = ReadBuf::new(&mut chunk);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) if read.filled().is_empty() => {
                            // The stream ended first: what came is the app's.
                            let held = std::mem::take(held);
                            this.replay(held);
                            if matches!(this.state, State::Passing) {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Poll::Ready(Ok(())) => {
                            held.extend_from_slice(read.filled());
                            match parse(held) {
                                Parsed::NeedMore => {
                                    if deadline.is_none() {
                                        *deadline = Some(Box::pin(tokio::time::sleep(HEADER_WAIT)));
                                    }
                                }
                                Parsed::Header { consumed, peer } => {
                                    if let Some(peer) = peer {
                                        let _ = this.peer.set(peer);
                                    }
                                    let rest = held.split_off(consumed);
                                    this.replay(rest);
                                }
                                Parsed::NotExchange => {
                                    tracing::debug!(
                                        "the peer's first bytes are not an exchange header; handing them on"
                                    );
                                    let held = std::mem::take(held);
                                    this.replay(held);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PeerReader<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn metadata() -> Struct {
        let mut labels = std::collections::HashMap::new();
        labels.insert("app".to_string(), super::super::string_value("client"));
        let mut fields = std::collections::HashMap::new();
        fields.insert("WORKLOAD_NAME".into(), super::super::string_value("client"));
        fields.insert("NAMESPACE".into(), super::super::string_value("default"));
        fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(Struct { fields: labels })),
            },
        );
        Struct { fields }
    }

    fn header() -> Vec<u8> {
        encode(
            &metadata(),
            "sidecar~10.0.0.1~client-1.default~default.svc.cluster.local",
        )
    }

    /// Reads everything `reader` hands on, then what it learnt.
    async fn read_all<S: AsyncRead + Unpin>(
        mut reader: PeerReader<S>,
    ) -> (Vec<u8>, Option<Arc<PeerMetadata>>) {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        (out, reader.peer())
    }

    #[test]
    fn a_header_round_trips() {
        let h = header();
        assert_eq!(&h[..4], &[0x3D, 0x23, 0x04, 0x67]);
        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
        assert_eq!(h.len(), 8 + len);
        let Parsed::Header { consumed, peer } = parse(&h) else {
            panic!("not parsed");
        };
        assert_eq!(consumed, h.len());
        let peer = peer.unwrap();
        assert_eq!(peer.workload.name, "client");
        assert_eq!(peer.workload.namespace, "default");
        assert_eq!(peer.workload.app, "client");
        assert!(peer.id.starts_with("sidecar~"), "{}", peer.id);
    }

    #[test]
    fn truncated_headers_need_more_and_foreign_bytes_are_not_headers() {
        let h = header();
        for cut in [0, 1, 3, 4, 7, 8, h.len() - 1] {
            assert_eq!(parse(&h[..cut]), Parsed::NeedMore, "cut at {cut}");
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::NotExchange);
        // The first byte already differs.
        assert_eq!(parse(&[0x3D, 0x24]), Parsed::NotExchange);
        let mut oversize = MAGIC.to_be_bytes().to_vec();
        oversize.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        assert_eq!(parse(&oversize), Parsed::NotExchange);
        let mut garbage = MAGIC.to_be_bytes().to_vec();
        garbage.extend_from_slice(&3u32.to_be_bytes());
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(parse(&garbage), Parsed::NotExchange);
        let wrong_type = Any {
            type_url: "type.googleapis.com/google.protobuf.Empty".into(),
            value: vec![],
        }
        .encode_to_vec();
        let mut other = MAGIC.to_be_bytes().to_vec();
        other.extend_from_slice(&(wrong_type.len() as u32).to_be_bytes());
        other.extend_from_slice(&wrong_type);
        assert_eq!(parse(&other), Parsed::NotExchange);
    }

    #[tokio::test]
    async fn app_bytes_in_the_same_read_as_the_header_are_handed_on() {
        let mut bytes = header();
        bytes.extend_from_slice(b"hello app");
        let (out, peer) = read_all(PeerReader::exchanging(bytes.as_slice())).await;
        assert_eq!(out, b"hello app");
        assert_eq!(peer.unwrap().workload.name, "client");
    }

    #[tokio::test]
    async fn a_header_split_across_reads_is_still_stripped() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let h = header();
        let writer = tokio::spawn(async move {
            for piece in h.chunks(3) {
                tx.write_all(piece).await.unwrap();
                tx.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            tx.write_all(b"payload").await.unwrap();
        });
        let (out, peer) = read_all(PeerReader::exchanging(rx)).await;
        writer.await.unwrap();
        assert_eq!(out, b"payload");
        assert_eq!(peer.unwrap().workload.name, "client");
    }

    #[tokio::test]
    async fn bytes_that_are_not_a_header_pass_untouched() {
        let mut oversize = MAGIC.to_be_bytes().to_vec();
        oversize.extend_from_slice(&u32::MAX.to_be_bytes());
        oversize.extend_from_slice(b"rest");
        for input in [
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            vec![0x3D, 0x23, 0x04, 0x68, 0, 0, 0, 1, 9],
            oversize,
        ] {
            let (out, peer) = read_all(PeerReader::exchanging(input.as_slice())).await;
            assert_eq!(out, input);
            assert!(peer.is_none());
        }
    }

    #[tokio::test]
    async fn a_stream_ending_inside_the_header_hands_on_what_came() {
        let h = header();
        let truncated = &h[..h.len() / 2];
        let (out, peer) = read_all(PeerReader::exchanging(truncated)).await;
        assert_eq!(out, truncated);
        assert!(peer.is_none());
        let (out, _) = read_all(PeerReader::exchanging(&b""[..])).await;
        assert!(out.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_header_is_handed_on_after_the_wait() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let h = header();
        tx.write_all(&h[..5]).await.unwrap();
        let mut reader = PeerReader::exchanging(rx);
        let mut out = [0u8; 16];
        let n = tokio::time::timeout(HEADER_WAIT * 2, reader.read(&mut out))
            .await
            .expect("handed on after HEADER_WAIT")
            .unwrap();
        assert_eq!(&out[..n], &h[..5]);
        assert!(reader.peer().is_none());
        drop(tx);
    }

    #[tokio::test]
    async fn a_plain_reader_changes_nothing() {
        let h = header();
        let (out, peer) = read_all(PeerReader::plain(h.as_slice())).await;
        assert_eq!(out, h);
        assert!(peer.is_none());
    }
}
