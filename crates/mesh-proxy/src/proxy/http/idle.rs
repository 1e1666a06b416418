//! The timers of a downstream HTTP connection and of its requests, kept
//! as Envoy's connection manager keeps them:
//!
//! - the idle timeout (`common_http_protocol_options.idle_timeout`, 1 h
//!   by default): a connection with no request in flight for that long is
//!   closed (HTTP/2 gets a GOAWAY first);
//! - the request headers timeout: once the first byte of an HTTP/1
//!   request arrives, its headers must be complete within it, else the
//!   connection is closed. An idle keep-alive connection is not a slow
//!   request: between requests only the idle timeout applies;
//! - the stream idle timeout (`stream_idle_timeout`, 5 min): a request
//!   with no bytes moving either way for that long gets 408, or is cut
//!   off once its response has started (flag `SI`).
//!
//! The connection's socket ([`Tracked`]) and its requests ([`InFlight`])
//! report to one [`Activity`], which the connection task waits on with
//! [`expired`]. Request-level timing lives in [`stream_idle`] (until the
//! response head) and in the response body (`body::Observed`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// `head_started` when no request has begun.
const NONE: u64 = u64::MAX;

/// What a connection's socket and requests report to its timers.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `base` when the last request ended.
    idle_since: AtomicU64,
    /// Milliseconds after `base` when the first byte of the next request
    /// arrived, or [`NONE`].
    head_started: AtomicU64,
    changed: Notify,
}

/// Which timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// No request in flight for the idle timeout.
    Idle,
    /// A request's headers did not arrive in time.
    Headers,
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

/// A downstream socket that reports the bytes it reads.
#[derive(Debug)]
pub(crate) struct Tracked<T> {
    io: T,
    activity: Arc<Activity>,
}

// === impl Activity ===

impl Activity {
    /// A connection that just opened: idle from now.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            changed: Notify::new(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.base + Duration::from_millis(millis)
    }

    /// Bytes arrived: between requests they start the next one.
    fn read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == NONE
        {
            self.head_started.store(self.now(), Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// When the next timer fires, and which, given what is in flight.
    fn deadline(
        &self,
        idle: Option<Duration>,
        headers: Option<Duration>,
    ) -> Option<(Instant, Expired)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let started = self.head_started.load(Ordering::Relaxed);
        if started != NONE
            && let Some(h) = headers
        {
            return Some((self.at(started) + h, Expired::Headers));
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        idle.map(|i| (self.at(since) + i, Expired::Idle))
    }
}

/// Resolves when the connection has been idle for `idle`, or a request
/// has taken longer than `headers` to send its headers (`None` disables
/// either).
pub(crate) async fn expired(
    activity: &Activity,
    idle: Option<Duration>,
    headers: Option<Duration>,
) -> Expired {
    loop {
        // `notify_one` keeps a permit when nobody waits, so a change made
        // between reading the state and waiting is not lost.
        let changed = activity.changed.notified();
        match activity.deadline(idle, headers) {
            None => changed.await,
            Some((at, why)) => {
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep_until(at) => {
                        if activity
                            .deadline(idle, headers)
                            .is_some_and(|(at, _)| at <= Instant::now())
                        {
                            return why;
                        }
                    }
                }
            }
        }
    }
}

// === impl InFlight ===

impl InFlight {
    /// A request has started on the connection.
    pub(crate) fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_started.store(NONE, Ordering::Relaxed);
        activity.changed.notify_one();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            a.idle_since.store(a.now(), Ordering::Relaxed);
            a.changed.notify_one();
        }
    }
}

// === impl Tracked ===

impl<T> Tracked<T> {
    /// Wraps `io`, reporting to `activity`.
    pub(crate) fn new(io: T, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Runs `fut` (a request until its response head) unless `timeout`
/// passes with no request body byte arriving (`received` counts them);
/// `None` when it did.
pub(crate) async fn stream_idle<F: Future>(
    fut: F,
    timeout: Option<Duration>,
    received: &AtomicU64,
) -> Option<F::Output> {
    let Some(timeout) = timeout else {
        return Some(fut.await);
    };
    tokio::pin!(fut);
    let mut seen = received.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(timeout, fut.as_mut()).await {
            Ok(out) => return Some(out),
            Err(_) => {
                let now = received.load(Ordering::Relaxed);
                if now == seen {
                    return None;
                }
                seen = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_between_requests_headers_once_one_starts() {
        let a = Activity::new();
        let (idle, headers) = (Some(Duration::from_secs(60)), Some(Duration::from_secs(1)));
        // Idle: only the idle timeout runs.
        let started = Instant::now();
        assert_eq!(expired(&a, idle, headers).await, Expired::Idle);
        assert!(started.elapsed() >= Duration::from_secs(60));

        // A first byte starts the headers timer; a request in flight stops both.
        let a = Activity::new();
        a.read();
        let started = Instant::now();
        assert_eq!(expired(&a, idle, headers).await, Expired::Headers);
        assert!(started.elapsed() < Duration::from_secs(2));

        let a = Activity::new();
        a.read();
        let request = InFlight::new(&a);
        let waiting = tokio::time::timeout(Duration::from_secs(600), expired(&a, idle, headers));
        assert!(
            waiting.await.is_err(),
            "no timer runs while a request is in flight"
        );
        drop(request);
        let started = Instant::now();
        assert_eq!(expired(&a, idle, headers).await, Expired::Idle);
        assert!(started.elapsed() >= Duration::from_secs(59));
    }

    #[tokio::test(start_paused = true)]
    async fn stream_idle_restarts_while_the_body_moves() {
        let received = Arc::new(AtomicU64::new(0));
        let feeding = received.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                feeding.fetch_add(1, Ordering::Relaxed);
            }
        });
        let slow = tokio::time::sleep(Duration::from_secs(4));
        let out = stream_idle(slow, Some(Duration::from_secs(2)), &received).await;
        assert!(out.is_some(), "a body that keeps moving is not idle");
        let never = std::future::pending::<()>();
        let out = stream_idle(never, Some(Duration::from_secs(2)), &received).await;
        assert!(out.is_none());
    }
}
