//! What the proxy remembers about every request and TCP connection it
//! served: the facts an access log line or Istio's standard metrics are
//! made from (response flags as Envoy prints them, upstream cluster and
//! host, bytes, durations). Records are handed to an [`Observer`] when the
//! request or connection is over.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
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

    /// A TCP-proxied connection is still open: its periodic report, the
    /// record's bytes so far (metrics count what `record.reported` does
    /// not have yet; access logs wait for the close).
    fn connection_progress(&self, record: &TcpRecord) {
        let _ = record;
    }

    /// An RBAC decision: on an HTTP connection manager (`http` with its
    /// stat prefix) or on a connection (`http` is `None`).
    fn rbac(&self, http: Option<&str>, allowed: bool) {
        let _ = (http, allowed);
    }

    /// An authorization event other than an enforced RBAC decision: shadow
    /// rules evaluated, or an external authorization check (on an HTTP
    /// connection manager, `http` with its stat prefix, or on a
    /// connection).
    fn authz(&self, http: Option<&str>, event: AuthzEvent<'_>) {
        let _ = (http, event);
    }
}

/// See [`Observer::authz`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzEvent<'a> {
    /// Shadow rules with this stat prefix would have allowed (`true`) or
    /// denied.
    Shadow(&'a str, bool),
    /// The external authorization service allowed.
    ExtAuthzOk,
    /// It denied.
    ExtAuthzDenied,
    /// The check failed and the request was refused.
    ExtAuthzError,
    /// The check failed and `failure_mode_allow` let the request through.
    ExtAuthzFailureModeAllowed,
    /// The filter did not apply to the request.
    ExtAuthzDisabled,
    /// The JWT filter let the request through (`true`) or refused it.
    Jwt(bool),
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
    /// Method (`-` when the request line could not be parsed, as Envoy
    /// prints it).
    pub method: Method,
    /// `Host` / `:authority`.
    pub authority: String,
    /// Path and query as received (before any rewrite: Envoy's
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`).
    pub path: String,
    /// SNI of the downstream connection, if inspected.
    pub server_name: Option<String>,
    /// `x-forwarded-for` as sent upstream.
    pub forwarded_for: Option<String>,
    /// Whether the request is gRPC (`content-type: application/grpc*`).
    pub grpc: bool,
    /// `grpc-status` of the response (headers or trailers), if any.
    pub grpc_status: Option<u32>,
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
    /// The local address of the upstream connection of the last attempt
    /// (`%UPSTREAM_LOCAL_ADDRESS%`), once it had one.
    pub upstream_local: Option<SocketAddr>,
    /// Why the last attempt's upstream connection failed at the transport
    /// layer (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`): a TLS handshake
    /// error, as [`crate::tls::failure_reason`] writes it.
    pub upstream_transport_failure: Option<Arc<str>>,
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
    /// What the cluster's circuit breakers did to the request.
    pub breakers: BreakerEvents,
    /// How its upstream attempts failed.
    pub failures: AttemptFailures,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` for local replies
    /// (`route_not_found`, `no_healthy_upstream`, ...); `None` for a
    /// response that came from upstream (`via_upstream`).
    pub details: Option<std::borrow::Cow<'static, str>>,
    /// The downstream connection's transport security.
    pub downstream_security: Security,
    /// The first URI SAN (SPIFFE id) of the certificate the downstream
    /// peer presented (Envoy's `%DOWNSTREAM_PEER_URI_SAN%`).
    pub downstream_peer_principal: Option<Arc<str>>,
    /// The first URI SAN of the certificate the upstream host of the last
    /// attempt presented (`%UPSTREAM_PEER_URI_SAN%`).
    pub upstream_peer_principal: Option<Arc<str>>,
    /// The first URI SAN of this proxy's certificate on the side where
    /// the peer is: presented downstream on inbound mTLS, upstream on
    /// outbound (Istio's `destination_principal` / `source_principal`).
    pub local_principal: Option<Arc<str>>,
    /// The workload on the other side of the request, learnt by Istio's
    /// peer metadata exchange: the source for an inbound request, the
    /// destination for an outbound one.
    pub peer: Option<Arc<crate::telemetry::peer::PeerMetadata>>,
    /// The request's trace id (32 lowercase hex digits), when it has a
    /// span (Envoy's `%TRACE_ID%`).
    pub trace_id: Option<String>,
    /// The metric overrides of the connection manager (Telemetry
    /// `metrics` overrides), if any.
    pub stats: Option<Arc<crate::telemetry::overrides::Overrides>>,
}

/// How a downstream connection was secured (Istio's
/// `connection_security_policy` on the destination side).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Security {
    /// No TLS terminated here.
    #[default]
    Plaintext,
    /// TLS without a client certificate.
    Tls,
    /// TLS with a verified client certificate.
    MutualTls,
}

impl Security {
    /// Istio's `connection_security_policy` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext | Self::Tls => "none",
            Self::MutualTls => "mutual_tls",
        }
    }
}

/// Failed upstream attempts of one request, for Envoy's counters, which
/// count every attempt (a retried one included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttemptFailures {
    /// Attempts whose connection could not be made (`upstream_cx_connect_fail`).
    pub connect: u32,
    /// Attempts ended by the per-try timeout (`upstream_rq_per_try_timeout`).
    pub per_try_timeout: u32,
    /// The request ended at the route timeout (`upstream_rq_timeout`).
    pub route_timeout: bool,
}

/// Circuit-breaker events of one request, for Envoy's counters
/// (`upstream_cx_overflow`, `upstream_rq_pending_overflow`,
/// `upstream_rq_retry_overflow`, `upstream_rq_retry_success`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerEvents {
    /// The cluster was at `max_connections` when the request needed a
    /// new connection.
    pub cx_overflow: bool,
    /// The request was refused: `max_pending_requests` or `max_requests`.
    pub rq_overflow: bool,
    /// A retry was not made: `max_retries` or the retry budget.
    pub retry_overflow: bool,
    /// A retry got a response that is not retried again.
    pub retry_success: bool,
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
    /// The local address of the upstream connection
    /// (`%UPSTREAM_LOCAL_ADDRESS%`).
    pub upstream_local: Option<SocketAddr>,
    /// Why the last upstream connection attempt failed at the transport
    /// layer (a TLS handshake error, see [`crate::tls::failure_reason`]).
    pub upstream_transport_failure: Option<Arc<str>>,
    /// Why a network filter closed the connection
    /// (`%CONNECTION_TERMINATION_DETAILS%`): the RBAC filter's
    /// `rbac_access_denied_matched_policy[<policy>]`.
    pub termination_details: Option<String>,
    /// Response flags (`UF`, `UH`, `NC`, ...).
    pub flags: ResponseFlags,
    /// Bytes from the client.
    pub bytes_received: u64,
    /// Bytes to the client.
    pub bytes_sent: u64,
    /// Connection lifetime.
    pub duration: Duration,
    /// The downstream connection's transport security.
    pub downstream_security: Security,
    /// The first URI SAN of the downstream peer's certificate.
    pub downstream_peer_principal: Option<Arc<str>>,
    /// The first URI SAN of the upstream's certificate, when TLS was
    /// originated here.
    pub upstream_peer_principal: Option<Arc<str>>,
    /// This proxy's certificate identity on the side of the peer.
    pub local_principal: Option<Arc<str>>,
    /// The metric overrides of the TCP proxy, if any.
    pub stats: Option<Arc<crate::telemetry::overrides::Overrides>>,
    /// What the other side said of itself in the TCP metadata exchange:
    /// the source on inbound, the destination on outbound.
    pub peer: Option<Arc<crate::telemetry::peer::PeerMetadata>>,
    /// What the metrics already counted while the connection was open
    /// (periodic reports); the close reports the rest.
    pub reported: Reported,
}

/// What the periodic reports of a still-open TCP connection counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    /// The connection was counted as opened.
    pub opened: bool,
    /// Bytes from the downstream counted so far.
    pub bytes_received: u64,
    /// Bytes to the downstream counted so far.
    pub bytes_sent: u64,
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

// Bits follow Envoy's `CoreResponseFlag` order, so a set prints in the
// order Envoy prints it (`UF,URX`, `UT,DC`).
flags! {
    /// The cluster has no usable endpoint.
    NO_HEALTHY_UPSTREAM = 1, "UH";
    /// The upstream timed out.
    UPSTREAM_REQUEST_TIMEOUT = 2, "UT";
    /// The proxy reset the stream itself.
    LOCAL_RESET = 3, "LR";
    /// The upstream reset the stream.
    UPSTREAM_REMOTE_RESET = 4, "UR";
    /// Connecting upstream failed.
    UPSTREAM_CONNECTION_FAILURE = 5, "UF";
    /// The upstream connection closed.
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC";
    /// A circuit breaker tripped.
    UPSTREAM_OVERFLOW = 7, "UO";
    /// No route.
    NO_ROUTE_FOUND = 8, "NR";
    /// A fault delay was injected.
    DELAY_INJECTED = 9, "DI";
    /// A fault abort was injected.
    FAULT_INJECTED = 10, "FI";
    /// The external authorization service refused the request (or could
    /// not be asked).
    UNAUTHORIZED_EXTERNAL_SERVICE = 12, "UAEX";
    /// The client went away.
    DOWNSTREAM_CONNECTION_TERMINATION = 14, "DC";
    /// Retries were exhausted.
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 15, "URX";
    /// A stream or connection was idle for too long.
    STREAM_IDLE_TIMEOUT = 16, "SI";
    /// The request was bad.
    DOWNSTREAM_PROTOCOL_ERROR = 18, "DPE";
    /// The upstream spoke bad HTTP.
    UPSTREAM_PROTOCOL_ERROR = 23, "UPE";
    /// The route's cluster does not exist.
    NO_CLUSTER_FOUND = 24, "NC";
}

impl ResponseFlags {
    /// Clears `other`'s flags.
    pub fn remove(&mut self, other: ResponseFlags) {
        self.0 &= !other.0;
    }

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
        // Envoy's order, whatever the order of insertion.
        let mut f = ResponseFlags::NO_CLUSTER_FOUND;
        f.insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
        f.insert(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
        assert_eq!(f.to_string(), "UT,DC,NC");
    }
}
