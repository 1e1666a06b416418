//! The pure half of `mesh-proxy iptables`: which `nat` rules Istio's
//! sidecar capture needs for a given [`Args`], and what to delete given what
//! `iptables-save` reports is installed.
//!
//! Nothing here runs a program. [`rules`] turns the flags into one
//! [`NatTable`] per address family in the order `istio-iptables` (REDIRECT
//! mode) writes them; [`stale_jumps`] and [`cleanup_input`] read
//! `iptables-save -t nat` output so that applying twice leaves one copy and
//! cleaning up removes exactly what a previous run (ours or Istio's) added.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::Args;

/// The chains we own, in the order Istio creates them. Another tool's rules
/// that jump into them are ours too: `istio-iptables` uses the same names,
/// so either tool can clean up after the other.
pub const CHAINS: [&str; 4] = [
    CHAIN_INBOUND,
    CHAIN_REDIRECT,
    CHAIN_IN_REDIRECT,
    CHAIN_OUTPUT,
];

/// Entered from `PREROUTING` for inbound TCP: decides which ports go to the
/// inbound capture port.
const CHAIN_INBOUND: &str = "ISTIO_INBOUND";
/// `REDIRECT`s to the outbound capture port (15001).
const CHAIN_REDIRECT: &str = "ISTIO_REDIRECT";
/// `REDIRECT`s to the inbound capture port (15006).
const CHAIN_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
/// Entered from `OUTPUT` for locally generated TCP: decides what the proxy
/// captures outbound.
const CHAIN_OUTPUT: &str = "ISTIO_OUTPUT";

/// Ports of the proxy itself that inbound capture always leaves alone, as
/// Istio's injector passes them: Prometheus (15090), health (15021) and the
/// agent's status port (15020).
pub const ALWAYS_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];

/// Which inbound ports are captured: `*` (all) or a comma-separated list;
/// an empty string captures none (Istio's convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSelection {
    /// `*`: every port except the excluded ones.
    All,
    /// Only these ports (empty: inbound capture off).
    Only(Vec<u16>),
}

/// Which outbound destinations are captured: `*` (all) or comma-separated
/// CIDRs; an empty string captures none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrSelection {
    /// `*`: every destination except the excluded ones.
    All,
    /// Only these ranges (empty: outbound capture by address off).
    Only(Vec<Cidr>),
}

/// A comma-separated list of ports; the empty string is the empty list, as
/// Istio's injector passes `-d ""`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

/// A comma-separated list of CIDRs; the empty string is the empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

/// An IPv4 or IPv6 range. Host bits are cleared (`10.1.2.3/8` is
/// `10.0.0.0/8`, as iptables itself would print it); a bare address is a
/// single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// The address family a [`NatTable`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

/// The `nat` table content for one family: the chains to create (or flush,
/// when they exist) and the rules to append, as `iptables-restore` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatTable {
    /// Chains declared at the top of the restore input.
    pub chains: Vec<&'static str>,
    /// `-A CHAIN ...` lines, in order.
    pub rules: Vec<String>,
}

/// What [`rules`] produces: one table per family. Both are always computed;
/// `run` decides whether IPv6 is applied (see `--ipv6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// For `iptables-restore`.
    pub ipv4: NatTable,
    /// For `ip6tables-restore`.
    pub ipv6: NatTable,
}

/// A list or CIDR flag that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// A port is not a number from 1 to 65535.
    #[error("invalid port {value:?}: expected a number from 1 to 65535")]
    Port {
        /// The offending list element.
        value: String,
    },
    /// A range is not `address/prefix` or a bare address.
    #[error(
        "invalid CIDR {value:?}: expected an address with an optional /prefix, like 10.96.0.0/12"
    )]
    Cidr {
        /// The offending list element.
        value: String,
    },
}

/// The `nat` rules `args` asks for, for both families. Pure: reads nothing
/// from the system.
pub fn rules(args: &Args) -> RuleSet {
    RuleSet {
        ipv4: nat_table(args, Family::V4),
        ipv6: nat_table(args, Family::V6),
    }
}

/// `-D` lines removing every jump from a chain we do not own into one we
/// own, found in `iptables-save -t nat` output. Deleting them in the same
/// restore transaction that re-adds the jumps is what makes applying twice
/// leave one copy.
pub fn stale_jumps(saved: &str) -> Vec<String> {
    saved
        .lines()
        .filter_map(|line| {
            let spec = line.strip_prefix("-A ")?;
            let chain = spec.split_whitespace().next()?;
            if CHAINS.contains(&chain) {
                return None;
            }
            let mut tokens = spec.split_whitespace();
            let target = tokens.find(|t| *t == "-j").and_then(|_| tokens.next())?;
            CHAINS.contains(&target).then(|| format!("-D {spec}"))
        })
        .collect()
}

/// The restore input that removes everything of ours from the table
/// `saved` (`iptables-save -t nat` output) describes: the jumps into our
/// chains, then the chains. `None` when nothing of ours is installed.
pub fn cleanup_input(saved: &str) -> Option<String> {
    let jumps = stale_jumps(saved);
    let present: Vec<&str> = CHAINS
        .into_iter()
        .filter(|chain| {
            saved.lines().any(|l| {
                l.strip_prefix(':')
                    .and_then(|r| r.split_whitespace().next())
                    == Some(*chain)
            })
        })
        .collect();
    if jumps.is_empty() && present.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for line in &jumps {
        out.push_str(line);
        out.push('\n');
    }
    // Our chains jump into each other: empty all before deleting any.
    for chain in &present {
        out.push_str(&format!("-F {chain}\n"));
    }
    for chain in &present {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

fn nat_table(args: &Args, family: Family) -> NatTable {
    let mut rules = Vec::new();
    let mut add = |chain: &str, spec: String| rules.push(format!("-A {chain} {spec}"));
    let localhost = family.localhost();
    let tunnel = args.inbound_tunnel_port;

    // Mesh-internal tunnel traffic (HBONE) is terminated by the proxy on its
    // own port; never redirect it.
    add(CHAIN_INBOUND, format!("-p tcp --dport {tunnel} -j RETURN"));
    add(
        CHAIN_REDIRECT,
        format!(
            "-p tcp -j REDIRECT --to-ports {}",
            args.outbound_capture_port
        ),
    );
    add(
        CHAIN_IN_REDIRECT,
        format!(
            "-p tcp -j REDIRECT --to-ports {}",
            args.inbound_capture_port
        ),
    );

    match &args.inbound_ports {
        PortSelection::Only(ports) if ports.is_empty() => {}
        PortSelection::Only(ports) => {
            add("PREROUTING", format!("-p tcp -j {CHAIN_INBOUND}"));
            for port in ports {
                add(
                    CHAIN_INBOUND,
                    format!("-p tcp --dport {port} -j {CHAIN_IN_REDIRECT}"),
                );
            }
        }
        PortSelection::All => {
            add("PREROUTING", format!("-p tcp -j {CHAIN_INBOUND}"));
            let excluded = ALWAYS_EXCLUDED_INBOUND_PORTS
                .iter()
                .chain(&args.exclude_inbound_ports.0);
            for port in dedup(excluded) {
                add(CHAIN_INBOUND, format!("-p tcp --dport {port} -j RETURN"));
            }
            add(CHAIN_INBOUND, format!("-p tcp -j {CHAIN_IN_REDIRECT}"));
        }
    }

    add("OUTPUT", format!("-p tcp -j {CHAIN_OUTPUT}"));
    // Port exclusions come before the loopback rules so that even an app
    // calling itself on an excluded port is left alone.
    for port in dedup(&args.exclude_outbound_ports.0) {
        add(CHAIN_OUTPUT, format!("-p tcp --dport {port} -j RETURN"));
    }
    // The proxy's inbound passthrough connects to the app from 127.0.0.6
    // (::6); that hop must reach the app, not come back to the proxy.
    add(
        CHAIN_OUTPUT,
        format!("-o lo -s {} -j RETURN", family.passthrough_source()),
    );

    let includes_loopback = match &args.outbound_cidrs {
        CidrSelection::All => false,
        CidrSelection::Only(cidrs) => cidrs.iter().any(|c| c.addr.is_loopback()),
    };
    for (owner, id) in [
        ("--uid-owner", args.proxy_uid),
        ("--gid-owner", args.proxy_gid),
    ] {
        // The app calls its own service VIP: the proxy's outbound side sends
        // it over lo to the pod's own address, and it must enter the
        // proxy's inbound side (app -> proxy -> proxy -> app).
        add(
            CHAIN_OUTPUT,
            format!(
                "-o lo ! -d {localhost} -p tcp ! --dport {tunnel} -m owner {owner} {id} -j {CHAIN_IN_REDIRECT}"
            ),
        );
        // The app calls itself by address over lo: leave it alone, unless
        // the user explicitly asked to capture loopback ranges.
        if !includes_loopback {
            add(
                CHAIN_OUTPUT,
                format!("-o lo -m owner ! {owner} {id} -j RETURN"),
            );
        }
        // Everything else the proxy sends goes out as-is; capturing it would
        // loop the proxy's upstream connections back into itself.
        add(CHAIN_OUTPUT, format!("-m owner {owner} {id} -j RETURN"));
    }

    // Apps that talk to localhost mean it (sidecar-aware apps, containers
    // of one pod talking to each other).
    add(CHAIN_OUTPUT, format!("-d {localhost} -j RETURN"));
    for cidr in args
        .exclude_outbound_cidrs
        .0
        .iter()
        .filter(|c| c.family() == family)
    {
        add(CHAIN_OUTPUT, format!("-d {cidr} -j RETURN"));
    }
    for port in dedup(&args.include_outbound_ports.0) {
        add(
            CHAIN_OUTPUT,
            format!("-p tcp --dport {port} -j {CHAIN_REDIRECT}"),
        );
    }
    match &args.outbound_cidrs {
        CidrSelection::All => add(CHAIN_OUTPUT, format!("-j {CHAIN_REDIRECT}")),
        CidrSelection::Only(cidrs) => {
            let cidrs: Vec<&Cidr> = cidrs.iter().filter(|c| c.family() == family).collect();
            if !cidrs.is_empty() {
                for cidr in cidrs {
                    add(CHAIN_OUTPUT, format!("-d {cidr} -j {CHAIN_REDIRECT}"));
                }
                add(CHAIN_OUTPUT, "-j RETURN".to_string());
            }
        }
    }

    NatTable {
        chains: CHAINS.to_vec(),
        rules,
    }
}

/// Keeps the first occurrence of each port, in order.
fn dedup<'a>(ports: impl IntoIterator<Item = &'a u16>) -> Vec<u16> {
    let mut seen = Vec::new();
    for &port in ports {
        if !seen.contains(&port) {
            seen.push(port);
        }
    }
    seen
}

fn parse_port(value: &str) -> Result<u16, ParseError> {
    match value.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ParseError::Port {
            value: value.to_string(),
        }),
    }
}

/// Splits a comma-separated flag value, ignoring blanks (`""`, `"80,"`).
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

// === impl PortSelection ===

impl FromStr for PortSelection {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.trim() == "*" {
            return Ok(Self::All);
        }
        split_list(value)
            .map(parse_port)
            .collect::<Result<_, _>>()
            .map(Self::Only)
    }
}

impl fmt::Display for PortSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Only(ports) => write_joined(f, ports),
        }
    }
}

// === impl CidrSelection ===

impl FromStr for CidrSelection {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.trim() == "*" {
            return Ok(Self::All);
        }
        value.parse::<CidrList>().map(|list| Self::Only(list.0))
    }
}

impl fmt::Display for CidrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Only(cidrs) => write_joined(f, cidrs),
        }
    }
}

// === impl PortList ===

impl FromStr for PortList {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        split_list(value)
            .map(parse_port)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_joined(f, &self.0)
    }
}

// === impl CidrList ===

impl FromStr for CidrList {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        split_list(value)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_joined(f, &self.0)
    }
}

fn write_joined<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

// === impl Cidr ===

impl Cidr {
    /// The range's address family.
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl FromStr for Cidr {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::Cidr {
            value: value.to_string(),
        };
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(u32::from(32 - prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(u32::from(128 - prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// === impl Family ===

impl Family {
    fn localhost(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.1/32",
            Self::V6 => "::1/128",
        }
    }

    fn passthrough_source(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.6/32",
            Self::V6 => "::6/128",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

// === impl NatTable ===

impl NatTable {
    /// The `iptables-restore --noflush` input installing this table.
    /// Declaring a chain that exists flushes it, so re-applying replaces our
    /// chains' rules in place.
    pub fn restore_input(&self) -> String {
        self.restore_input_replacing(&[])
    }

    /// Like [`restore_input`](Self::restore_input), also deleting `stale`
    /// jumps (from [`stale_jumps`]) in the same transaction, before the new
    /// ones are appended: the table is never seen without capture, and never
    /// with two copies.
    pub fn restore_input_replacing(&self, stale: &[String]) -> String {
        let mut out = String::from("*nat\n");
        for chain in &self.chains {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for line in stale.iter().chain(&self.rules) {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }
}

// === impl RuleSet ===

impl fmt::Display for RuleSet {
    /// Both tables as a dry run prints them; `#` lines are comments to
    /// `iptables-restore`, so each half can be fed to it as is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# IPv4: iptables-restore --noflush")?;
        f.write_str(&self.ipv4.restore_input())?;
        writeln!(f, "# IPv6: ip6tables-restore --noflush")?;
        f.write_str(&self.ipv6.restore_input())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_accept_istio_forms() {
        assert_eq!("*".parse(), Ok(PortSelection::All));
        assert_eq!("".parse(), Ok(PortSelection::Only(vec![])));
        assert_eq!(" 80, 443,".parse(), Ok(PortSelection::Only(vec![80, 443])));
        assert_eq!("".parse(), Ok(PortList(vec![])));
        assert_eq!(
            "80,x".parse::<PortList>(),
            Err(ParseError::Port { value: "x".into() })
        );
        assert_eq!(
            "0".parse::<PortList>(),
            Err(ParseError::Port { value: "0".into() })
        );
        assert_eq!("*".parse(), Ok(CidrSelection::All));
        assert_eq!("".parse(), Ok(CidrSelection::Only(vec![])));
    }

    #[test]
    fn cidrs_are_normalised_like_iptables_prints_them() {
        let show = |s: &str| s.parse::<Cidr>().map(|c| c.to_string());
        assert_eq!(show("10.1.2.3/8"), Ok("10.0.0.0/8".into()));
        assert_eq!(show("10.96.0.10"), Ok("10.96.0.10/32".into()));
        assert_eq!(show("0.0.0.0/0"), Ok("0.0.0.0/0".into()));
        assert_eq!(show("2001:db8::1/32"), Ok("2001:db8::/32".into()));
        assert_eq!(show("::/0"), Ok("::/0".into()));
        assert!(show("10.0.0.0/33").is_err());
        assert!(show("10.0.0/8").is_err());
        assert!(show("*").is_err());
    }

    #[test]
    fn cidrs_go_to_their_own_family() {
        let args = Args {
            outbound_cidrs: "10.96.0.0/12,fd00::/8".parse().unwrap(),
            exclude_outbound_cidrs: "192.168.0.0/16,fd00:1::/64".parse().unwrap(),
            ..Args::default()
        };
        let set = rules(&args);
        let v4 = set.ipv4.rules.join("\n");
        let v6 = set.ipv6.rules.join("\n");
        assert!(v4.contains("-d 10.96.0.0/12 -j ISTIO_REDIRECT"));
        assert!(v4.contains("-d 192.168.0.0/16 -j RETURN"));
        assert!(!v4.contains("fd00"));
        assert!(v6.contains("-d fd00::/8 -j ISTIO_REDIRECT"));
        assert!(v6.contains("-d fd00:1::/64 -j RETURN"));
        assert!(!v6.contains("10.96"));
    }

    #[test]
    fn no_inbound_ports_means_no_prerouting_jump() {
        let args = Args {
            inbound_ports: PortSelection::Only(vec![]),
            ..Args::default()
        };
        let set = rules(&args);
        assert!(
            !set.ipv4
                .rules
                .iter()
                .any(|r| r.starts_with("-A PREROUTING"))
        );
        assert!(set.ipv4.rules.iter().any(|r| r.starts_with("-A OUTPUT")));
    }

    #[test]
    fn capturing_loopback_ranges_drops_the_loopback_return() {
        let args = Args {
            outbound_cidrs: "127.0.0.0/8".parse().unwrap(),
            ..Args::default()
        };
        let v4 = rules(&args).ipv4.rules.join("\n");
        assert!(!v4.contains("-o lo -m owner ! --uid-owner 1337 -j RETURN"));
        assert!(v4.contains("-m owner --uid-owner 1337 -j RETURN"));
    }

    const SAVED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_OUTPUT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
";

    #[test]
    fn stale_jumps_are_every_copy_of_a_jump_into_our_chains() {
        assert_eq!(
            stale_jumps(SAVED),
            vec![
                "-D PREROUTING -p tcp -j ISTIO_INBOUND",
                "-D OUTPUT -p tcp -j ISTIO_OUTPUT",
                "-D OUTPUT -p tcp -j ISTIO_OUTPUT",
            ]
        );
    }

    #[test]
    fn cleanup_removes_jumps_then_flushes_then_deletes_present_chains() {
        let input = cleanup_input(SAVED).unwrap();
        assert_eq!(
            input,
            "*nat\n\
             -D PREROUTING -p tcp -j ISTIO_INBOUND\n\
             -D OUTPUT -p tcp -j ISTIO_OUTPUT\n\
             -D OUTPUT -p tcp -j ISTIO_OUTPUT\n\
             -F ISTIO_INBOUND\n-F ISTIO_OUTPUT\n\
             -X ISTIO_INBOUND\n-X ISTIO_OUTPUT\n\
             COMMIT\n"
        );
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
        assert_eq!(cleanup_input(clean), None);
        assert_eq!(cleanup_input(""), None);
    }
}
