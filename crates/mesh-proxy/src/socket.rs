//! Socket options the traffic-capture path needs.
//!
//! When iptables `REDIRECT`s a connection to the proxy's capture port
//! (15001 outbound, 15006 inbound), the accepted socket's local address is
//! the capture port; the address the application actually dialled is kept by
//! conntrack and read back with `SO_ORIGINAL_DST` (IPv4) or
//! `IP6T_SO_ORIGINAL_DST` (IPv6). The `nix` crate wraps both safely, so this
//! module needs no `unsafe` (forbidden workspace-wide).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::getsockopt;
use nix::sys::socket::sockopt::{Ip6tOriginalDst, OriginalDst};
use tokio::net::TcpStream;

/// The destination the client originally connected to, before an iptables
/// `REDIRECT` rewrote it to the proxy's capture port.
///
/// The address family of the connection picks the option: IPv4 (including
/// IPv4 accepted on a dual-stack socket) asks `SO_ORIGINAL_DST`, IPv6
/// `IP6T_SO_ORIGINAL_DST`.
/// A connection that was not redirected fails with `ENOENT` (conntrack has no
/// NAT entry for it) — callers typically fall back to the local address.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    // An IPv4 connection accepted on a dual-stack socket has an IPv4-mapped
    // local address; its conntrack entry is IPv4, and the kernel routes a
    // SOL_IP query on such a socket to the IPv4 handler.
    let is_v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    if is_v4 {
        let sin = getsockopt(stream, OriginalDst).map_err(io::Error::from)?;
        // sockaddr_in fields are in network byte order.
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let port = u16::from_be(sin.sin_port);
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    } else {
        let sin6 = getsockopt(stream, Ip6tOriginalDst).map_err(io::Error::from)?;
        let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        let port = u16::from_be(sin6.sin6_port);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            port,
            sin6.sin6_flowinfo,
            sin6.sin6_scope_id,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_redirected_connection_reports_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let _client = client.unwrap();
        let (accepted, _) = accepted.unwrap();
        // No NAT happened, so conntrack has nothing to report (ENOENT), or
        // the nf_conntrack module is not loaded at all (ENOPROTOOPT).
        assert!(original_dst(&accepted).is_err());
    }
}
