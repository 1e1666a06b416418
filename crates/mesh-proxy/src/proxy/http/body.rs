//! Body types of the HTTP path. Bodies stream both ways; the only
//! buffering is [`ReplayBody`]'s copy of the first bytes of a request, so a
//! retry (or a mirror) can send them again. A request whose body outgrows
//! that buffer is no longer retried or mirrored.
//!
//! [`Observed`] wraps a response body sent downstream: it counts bytes,
//! enforces what is left of the route timeout and the stream idle timeout
//! while the body streams,
//! reads a gRPC status from the trailers, and hands the finished
//! [`RequestRecord`] to the observer at the end.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderMap;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::Notify;

use crate::proxy::record::{Observer, RequestRecord, ResponseFlags};

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the proxy handles.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How much of a request body is kept for retries and mirrors when
/// nothing says otherwise: Envoy's default
/// `per_connection_buffer_limit_bytes` (1 MiB), which bounds its retry
/// buffer too.
pub const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// An empty body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// Boxes any body.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body error with a message.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The route timeout passed while the body streamed.
    #[error("upstream request timeout while streaming the response")]
    Timeout,
    /// No byte moved either way for the stream idle timeout.
    #[error("stream idle timeout while streaming the response")]
    StreamIdle,
    /// A replayed request body lost data (its buffer overflowed).
    #[error("request body can no longer be replayed")]
    NotReplayable,
    /// A newer attempt took over the request body.
    #[error("request body was taken by a newer attempt")]
    Superseded,
}

// === ReplayBody ===

/// A request body shared by the attempts of one request: each attempt
/// reads what was already read (from the buffer), then continues from the
/// client. Only the newest attempt may read from the client.
pub struct ReplayBody {
    shared: Arc<Shared>,
    position: usize,
    generation: u64,
    trailers_sent: bool,
}

struct Shared {
    state: Mutex<State>,
    complete: Notify,
}

struct State {
    inner: Option<ProxyBody>,
    buffer: VecDeque<Bytes>,
    buffered: usize,
    /// What `buffer` may hold.
    limit: usize,
    overflowed: bool,
    trailers: Option<HeaderMap>,
    done: bool,
    failed: bool,
    generation: u64,
}

impl ReplayBody {
    /// Wraps the client's body, keeping up to `limit` bytes of it.
    pub fn new(inner: ProxyBody, limit: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    inner: Some(inner),
                    buffer: VecDeque::new(),
                    buffered: 0,
                    limit,
                    overflowed: false,
                    trailers: None,
                    done: false,
                    failed: false,
                    generation: 0,
                }),
                complete: Notify::new(),
            }),
            position: 0,
            generation: 0,
            trailers_sent: false,
        }
    }

    /// A body for a new attempt, reading from the start; `None` when the
    /// buffer overflowed (the request cannot be sent again). Older
    /// attempts stop reading.
    pub fn replay(&self) -> Option<Self> {
        let mut state = self.shared.state.lock().ok()?;
        if state.overflowed || state.failed {
            return None;
        }
        state.generation += 1;
        Some(Self {
            shared: self.shared.clone(),
            position: 0,
            generation: state.generation,
            trailers_sent: false,
        })
    }

    /// A handle that can only wait for the whole body ([`Self::whole`]);
    /// it never reads from the client (mirrors hold one).
    pub fn share(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            position: 0,
            generation: u64::MAX,
            trailers_sent: false,
        }
    }

    /// Whether the body can still be sent again.
    pub fn is_replayable(&self) -> bool {
        self.shared
            .state
            .lock()
            .map(|s| !s.overflowed && !s.failed)
            .unwrap_or(false)
    }

    /// Resolves with the whole body once the client sent all of it, or
    /// `None` if it was too large or failed (mirrors use this: they never
    /// read from the client themselves).
    pub async fn whole(&self) -> Option<(Vec<Bytes>, Option<HeaderMap>)> {
        loop {
            let notified = self.shared.complete.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.shared.state.lock().ok()?;
                if state.overflowed || state.failed {
                    return None;
                }
                if state.done {
                    return Some((
                        state.buffer.iter().cloned().collect(),
                        state.trailers.clone(),
                    ));
                }
            }
            notified.await;
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Ok(mut state) = this.shared.state.lock() else {
            return Poll::Ready(Some(Err(BodyError::NotReplayable.into())));
        };
        if state.generation != this.generation {
            return Poll::Ready(Some(Err(BodyError::Superseded.into())));
        }
        if !state.overflowed && this.position < state.buffer.len() {
            let chunk = state.buffer[this.position].clone();
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.done {
            if !this.trailers_sent
                && let Some(t) = state.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        }
        let Some(inner) = state.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.done = true;
                state.inner = None;
                drop(state);
                this.shared.complete.notify_waiters();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                state.failed = true;
                drop(state);
                this.shared.complete.notify_waiters();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if !state.overflowed {
                            if state.buffered + data.len() <= state.limit {
                                state.buffered += data.len();
                                state.buffer.push_back(data.clone());
                                this.position += 1;
                            } else {
                                state.overflowed = true;
                                state.buffer.clear();
                                this.position = usize::MAX;
                                drop(state);
                                this.shared.complete.notify_waiters();
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let Some(t) = frame.trailers_ref() {
                            state.trailers = Some(t.clone());
                            this.trailers_sent = true;
                        }
                        frame
                    }
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared.state.lock().is_ok_and(|s| {
            s.generation == self.generation
                && s.done
                && self.position >= s.buffer.len()
                && (s.trailers.is_none() || self.trailers_sent)
        })
    }

    fn size_hint(&self) -> SizeHint {
        self.shared
            .state
            .lock()
            .ok()
            .and_then(|s| {
                if self.position == 0 && s.buffer.is_empty() {
                    s.inner.as_ref().map(|b| b.size_hint())
                } else {
                    None
                }
            })
            .unwrap_or_default()
    }
}

// === Counted ===

/// Counts the bytes of a body into a shared counter.
pub struct Counted {
    inner: ProxyBody,
    count: Arc<AtomicU64>,
}

impl Counted {
    /// Wraps `inner`.
    pub fn new(inner: ProxyBody, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(d) = frame.data_ref()
        {
            self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === Observed ===

/// A response body on its way downstream: counts bytes, keeps request
/// guards (circuit-breaker and load-balancer counters) alive until the
/// end, enforces the route deadline, and reports the record.
pub struct Observed {
    inner: ProxyBody,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    idle: Option<Box<IdleTimer>>,
    finish: Option<Box<Finish>>,
}

/// The stream idle timer of a response body. It is re-armed only when it
/// fires, from the last activity, so a busy stream costs one clock read
/// per frame.
struct IdleTimer {
    timeout: std::time::Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    last: tokio::time::Instant,
    received: u64,
}

/// What is reported when an observed body ends.
pub struct Finish {
    /// The record so far.
    pub record: RequestRecord,
    /// Where it goes.
    pub observer: Arc<dyn Observer>,
    /// The connection manager's access logs.
    pub access_logs: Arc<[crate::runtime::access_log::LogSink]>,
    /// Request body bytes, counted as they stream.
    pub received: Arc<AtomicU64>,
    /// When the request started.
    pub started: Instant,
    /// Dropped when the response ends.
    pub guards: Vec<Box<dyn Send>>,
    /// The request's span, finished from the final record.
    pub span: Option<Box<crate::telemetry::trace::HopSpan>>,
}

impl Observed {
    /// Wraps `inner`; `deadline` cuts the stream off (flag `UT`), so does
    /// `idle` passing with no byte either way (flag `SI`).
    pub fn new(
        inner: ProxyBody,
        deadline: Option<Instant>,
        idle: Option<std::time::Duration>,
        finish: Finish,
    ) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            inner,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            idle: idle.map(|timeout| {
                Box::new(IdleTimer {
                    timeout,
                    sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
                    last: now,
                    received: finish.received.load(Ordering::Relaxed),
                })
            }),
            finish: Some(Box::new(finish)),
        }
    }

    /// Whether the stream idle timer has run out; re-arms it when
    /// something moved meanwhile (a response frame, or request bytes).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(t), Some(f)) = (self.idle.as_mut(), self.finish.as_ref()) else {
            return false;
        };
        while t.sleep.as_mut().poll(cx).is_ready() {
            let received = f.received.load(Ordering::Relaxed);
            let now = tokio::time::Instant::now();
            if received != t.received {
                t.received = received;
                t.last = now;
            }
            if t.last + t.timeout <= now {
                return true;
            }
            let next = t.last + t.timeout;
            t.sleep.as_mut().reset(next);
        }
        false
    }

    fn end(&mut self, flags: ResponseFlags) {
        if let Some(f) = self.finish.take() {
            let Finish {
                mut record,
                observer,
                access_logs,
                received,
                started,
                guards,
                span,
            } = *f;
            drop(guards);
            record.flags.insert(flags);
            record.bytes_received = received.load(Ordering::Relaxed);
            record.duration = started.elapsed();
            observer.request(&record);
            crate::telemetry::access_log::log_request(&access_logs, &record);
            if let Some(span) = span {
                span.finish(&record);
            }
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            this.end(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
            return Poll::Ready(Some(Err(BodyError::Timeout.into())));
        }
        if this.idle_expired(cx) {
            this.end(ResponseFlags::STREAM_IDLE_TIMEOUT);
            return Poll::Ready(Some(Err(BodyError::StreamIdle.into())));
        }
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = this.idle.as_mut() {
                    t.last = tokio::time::Instant::now();
                }
                if let (Some(d), Some(f)) = (frame.data_ref(), this.finish.as_mut()) {
                    f.record.bytes_sent += d.len() as u64;
                }
                if let (Some(t), Some(f)) = (frame.trailers_ref(), this.finish.as_mut())
                    && let Some(status) = super::grpc_status(t)
                {
                    f.record.grpc_status = Some(status);
                }
                if this.inner.is_end_stream() {
                    this.end(ResponseFlags::default());
                }
            }
            Poll::Ready(Some(Err(_))) => this.end(ResponseFlags::UPSTREAM_REMOTE_RESET),
            Poll::Ready(None) => this.end(ResponseFlags::default()),
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // Dropped before the end: the client went away.
        if self.finish.is_some() {
            let flags = if self.inner.is_end_stream() {
                ResponseFlags::default()
            } else {
                ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION
            };
            self.end(flags);
        }
    }
}

/// Frames read ahead (to look at the start of a body), then the rest of
/// the body as it arrives.
pub struct Prefixed {
    head: VecDeque<Frame<Bytes>>,
    rest: Option<ProxyBody>,
}

impl Prefixed {
    /// `head` first, then `rest` (`None`: the body ended within `head`).
    pub fn new(head: Vec<Frame<Bytes>>, rest: Option<ProxyBody>) -> Self {
        Self {
            head: head.into(),
            rest,
        }
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let head: u64 = self
            .head
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |r| r.size_hint());
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint.set_lower(rest.lower() + head);
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(tokio_stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn replays_what_the_first_attempt_read() {
        let first = ReplayBody::new(chunks(&["ab", "cd"]), DEFAULT_BUFFER_LIMIT);
        let mut attempt = first.replay().unwrap();
        // The first attempt reads one chunk, then is abandoned.
        let f = attempt.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let second = first.replay().unwrap();
        // The older attempt may no longer read.
        assert!(attempt.frame().await.unwrap().is_err());
        let all = second.collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcd");
        let (whole, _) = first.whole().await.unwrap();
        assert_eq!(whole.concat(), b"abcd");
    }

    #[tokio::test]
    async fn a_large_body_is_not_replayable() {
        let big = "x".repeat(64 * 1024 + 1).leak();
        let first = ReplayBody::new(chunks(&["a", big]), 64 * 1024);
        let attempt = first.replay().unwrap();
        let all = attempt.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 64 * 1024 + 2);
        assert!(first.replay().is_none());
        assert!(first.whole().await.is_none());
    }
}
