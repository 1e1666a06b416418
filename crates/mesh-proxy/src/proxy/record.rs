//! What the proxy remembers about every request and TCP connection it
//! served: the facts an access log line or Istio's standard metrics are
//! made from (response flags as Envoy prints them, upstream cluster and
//! host, bytes, durations). Records are handed to an [`Observer`] when the
//! request or connection is over.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::{Method, Version};

use crate::runtime::listener::Direction;

/// Receives a record when a request or connection ends. The access log
/// and metrics code implement it; the default does nothing.
pub trait Observer: Send + Sync + 'static {
    /// An HTTP request finished (its response body ended, failed or was
    /// abandoned by the client).
    fn request(&self, record: &RequestRecord) {
        let _ = record;
    }

    /// A TCP-proxied connection closed.
    fn connection(&self, record: &TcpRecord) {
        let _ = record;
    }
}

/// Envoy's response flags, as a set.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

/// One HTTP request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When the request started.
    pub start: SystemTime,
    /// Listener name.
    pub listener: String,
    /// Listener direction.
    pub direction: Direction,
    /// Filter chain name.
    pub filter_chain: String,
    /// Downstream peer.
    pub downstream_remote: SocketAddr,
    /// Downstream (original) destination.
    pub downstream_local: SocketAddr,
    /// Downstream HTTP version.
    pub protocol: Version,
    /// Method.
    pub method: Method,
    /// `Host` / `:authority`.
    pub authority: String,
    /// Path and query as received.
    pub path: String,
    /// `x-request-id` sent upstream.
    pub request_id: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// Matched virtual host.
    pub virtual_host: Option<String>,
    /// Matched route name.
    pub route_name: Option<String>,
    /// Chosen cluster.
    pub cluster: Option<String>,
    /// Upstream host of the last attempt.
    pub upstream_host: Option<String>,
    /// Status sent downstream (0 if none was sent).
    pub response_code: u16,
    /// Response flags.
    pub flags: ResponseFlags,
    /// Request body bytes received.
    pub bytes_received: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Start to end of the response body.
    pub duration: Duration,
    /// Start of the first upstream attempt to its response headers.
    pub upstream_service_time: Option<Duration>,
    /// Upstream attempts made (1 + retries).
    pub attempts: u32,
    /// Extra detail for local replies (`no_healthy_upstream`, ...).
    pub details: Option<&'static str>,
}

/// One TCP-proxied connection.
#[derive(Clone, Debug)]
pub struct TcpRecord {
    /// When the connection was accepted.
    pub start: SystemTime,
    /// Listener name.
    pub listener: String,
    /// Listener direction.
    pub direction: Direction,
    /// Filter chain name.
    pub filter_chain: String,
    /// Downstream peer.
    pub downstream_remote: SocketAddr,
    /// Downstream (original) destination.
    pub downstream_local: SocketAddr,
    /// SNI, when the chain was chosen by it.
    pub server_name: Option<String>,
    /// Chosen cluster.
    pub cluster: Option<String>,
    /// Upstream host.
    pub upstream_host: Option<String>,
    /// Response flags (`UF`, `UH`, `NC`, ...).
    pub flags: ResponseFlags,
    /// Bytes from the client.
    pub bytes_received: u64,
    /// Bytes to the client.
    pub bytes_sent: u64,
    /// Connection lifetime.
    pub duration: Duration,
}

/// An observer that does nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

// === impl ResponseFlags ===

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $bit:expr, $short:literal;)*) => {
        impl ResponseFlags {
            $($(#[$doc])* pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*
            const ALL: &'static [(ResponseFlags, &'static str)] = &[$((ResponseFlags(1 << $bit), $short)),*];
        }
    };
}

flags! {
    /// No route.
    NO_ROUTE_FOUND = 0, "NR";
    /// The route's cluster does not exist.
    NO_CLUSTER_FOUND = 1, "NC";
    /// The cluster has no usable endpoint.
    NO_HEALTHY_UPSTREAM = 2, "UH";
    /// Connecting upstream failed.
    UPSTREAM_CONNECTION_FAILURE = 3, "UF";
    /// A circuit breaker tripped.
    UPSTREAM_OVERFLOW = 4, "UO";
    /// The upstream timed out.
    UPSTREAM_REQUEST_TIMEOUT = 5, "UT";
    /// Retries were exhausted.
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 6, "URX";
    /// The upstream connection closed.
    UPSTREAM_CONNECTION_TERMINATION = 7, "UC";
    /// The upstream reset the stream.
    UPSTREAM_REMOTE_RESET = 8, "UR";
    /// The client went away.
    DOWNSTREAM_CONNECTION_TERMINATION = 9, "DC";
    /// A fault delay was injected.
    DELAY_INJECTED = 10, "DI";
    /// A fault abort was injected.
    FAULT_INJECTED = 11, "FI";
    /// The upstream spoke bad HTTP.
    UPSTREAM_PROTOCOL_ERROR = 12, "UPE";
    /// The request was bad.
    DOWNSTREAM_PROTOCOL_ERROR = 13, "DPE";
}

impl ResponseFlags {
    /// Adds `other`.
    pub fn insert(&mut self, other: ResponseFlags) {
        self.0 |= other.0;
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ResponseFlags {
    /// Envoy's `%RESPONSE_FLAGS%`: `UF,URX`, or `-` when none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, short) in Self::ALL {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(short)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_as_envoy_does() {
        let mut f = ResponseFlags::default();
        assert_eq!(f.to_string(), "-");
        f.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        f.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        assert_eq!(f.to_string(), "UF,URX");
        assert!(f.contains(ResponseFlags::UPSTREAM_CONNECTION_FAILURE));
        assert!(!f.contains(ResponseFlags::NO_ROUTE_FOUND));
    }
}
