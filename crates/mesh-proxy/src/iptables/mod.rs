//! `mesh-proxy iptables`: installs (and with `--cleanup` removes) Istio's
//! sidecar traffic-capture rules in the current network namespace, as the
//! init container of an injected pod and the local mesh backend run it.
//!
//! Inbound TCP is `REDIRECT`ed to the inbound capture port (15006), outbound
//! TCP to the outbound capture port (15001), except traffic of the proxy's
//! own UID/GID (1337), loopback traffic and the configured exclusions. The
//! rule set, chain names and flags follow `istio-iptables` in REDIRECT mode,
//! so a pod set up by either tool looks the same to `iptables-save` and
//! either tool can clean up after the other.
//!
//! [`rules`] is the pure part (flags in, `iptables-restore` text out);
//! [`run`] reads the installed state with `iptables-save` and applies one
//! atomic `iptables-restore --noflush` transaction per address family that
//! replaces any previous copy, so running twice leaves one copy.

mod apply;
mod rules;

use std::io;
use std::process::ExitStatus;

pub use rules::{
    ALWAYS_EXCLUDED_INBOUND_PORTS, CHAINS, Cidr, CidrList, CidrSelection, Family, NatTable,
    ParseError, PortList, PortSelection, RuleSet, cleanup_input, rules, stale_jumps,
};

/// Flags of `mesh-proxy iptables`. Long names are ours; Istio's
/// `istio-iptables` names and short flags are accepted as aliases so an
/// init container written for Istio keeps working.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Args {
    /// UID of the proxy process; its own connections are never captured.
    #[arg(long, short = 'u', default_value_t = 1337)]
    pub proxy_uid: u32,

    /// GID of the proxy process; its own connections are never captured.
    #[arg(long, short = 'g', default_value_t = 1337)]
    pub proxy_gid: u32,

    /// Port inbound TCP is redirected to.
    #[arg(long, short = 'z', default_value_t = 15006)]
    pub inbound_capture_port: u16,

    /// Port outbound TCP is redirected to.
    #[arg(
        long,
        short = 'p',
        visible_alias = "envoy-port",
        default_value_t = 15001
    )]
    pub outbound_capture_port: u16,

    /// The proxy's tunnel (HBONE) port; inbound traffic to it is never
    /// redirected.
    #[arg(long, short = 'e', default_value_t = 15008)]
    pub inbound_tunnel_port: u16,

    /// How inbound traffic is captured. Only Istio's default, `REDIRECT`,
    /// is supported (`TPROXY` is refused rather than silently ignored).
    #[arg(
        long,
        short = 'm',
        visible_alias = "istio-inbound-interception-mode",
        value_enum,
        default_value_t = InterceptionMode::Redirect
    )]
    pub inbound_interception_mode: InterceptionMode,

    /// Inbound ports to capture: `*` for all, a comma-separated list, or ""
    /// for none.
    #[arg(
        long,
        short = 'b',
        visible_alias = "istio-inbound-ports",
        default_value = "*"
    )]
    pub inbound_ports: PortSelection,

    /// Inbound ports never captured when `--inbound-ports` is `*`; 15090,
    /// 15021 and 15020 (the proxy's own) are always added.
    #[arg(
        long,
        short = 'd',
        visible_alias = "istio-local-exclude-ports",
        default_value = "",
        hide_default_value = true
    )]
    pub exclude_inbound_ports: PortList,

    /// Outbound destinations to capture: `*` for all, comma-separated CIDRs,
    /// or "" for none.
    #[arg(
        long,
        short = 'i',
        visible_alias = "istio-service-cidr",
        default_value = "*"
    )]
    pub outbound_cidrs: CidrSelection,

    /// Outbound destinations (CIDRs) never captured.
    #[arg(
        long,
        short = 'x',
        visible_alias = "istio-service-exclude-cidr",
        default_value = "",
        hide_default_value = true
    )]
    pub exclude_outbound_cidrs: CidrList,

    /// Outbound destination ports never captured.
    #[arg(
        long,
        short = 'o',
        visible_alias = "istio-local-outbound-ports-exclude",
        default_value = "",
        hide_default_value = true
    )]
    pub exclude_outbound_ports: PortList,

    /// Outbound destination ports captured whatever the destination address.
    #[arg(
        long,
        short = 'q',
        visible_alias = "istio-outbound-ports",
        default_value = "",
        hide_default_value = true
    )]
    pub include_outbound_ports: PortList,

    /// Whether to apply the IPv6 rules too: `auto` when the namespace has a
    /// global IPv6 address.
    #[arg(long, value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,

    /// Remove the rules instead of installing them (safe when none are
    /// installed).
    #[arg(long, visible_alias = "cleanup-only")]
    pub cleanup: bool,

    /// Print what would be applied and change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// How inbound connections reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InterceptionMode {
    /// `nat` table `REDIRECT`: the proxy sees the original destination
    /// through `SO_ORIGINAL_DST` and the client's address as the source.
    #[value(name = "REDIRECT", alias = "redirect")]
    Redirect,
}

/// When the IPv6 table is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// When the namespace has a global IPv6 address (cleanup: whenever
    /// `ip6tables` shows our chains).
    Auto,
    /// Always; a missing `ip6tables` is an error.
    Always,
    /// Never.
    Never,
}

/// Why installing or removing the rules failed. Each message names the
/// command and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The program is not installed (or not on `PATH`).
    #[error("{program} not found: install the Debian package iptables (apt-get install iptables)")]
    NotFound {
        /// `iptables-restore`, `ip6tables-save`, ...
        program: &'static str,
    },

    /// The program exists but could not be started.
    #[error("could not run {program}: {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why the kernel refused.
        #[source]
        source: io::Error,
    },

    /// The program did not finish in time and was killed.
    #[error(
        "{command} did not finish within {seconds} s and was killed; is another process holding the xtables lock?"
    )]
    TimedOut {
        /// The command line.
        command: String,
        /// The limit.
        seconds: u64,
    },

    /// The program ran and failed.
    #[error("{command} failed ({status}): {stderr}{hint}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed, with the offending input line when
        /// `iptables-restore` names one.
        stderr: String,
        /// What to do about it, when the error is a known one (starts with
        /// "; ").
        hint: &'static str,
    },

    /// Writing the dry-run output failed.
    #[error("writing the dry-run output: {0}")]
    Output(#[source] io::Error),
}

/// Installs the rules `args` describe in the current network namespace (of
/// the calling thread), or removes them with `--cleanup`, or prints them with
/// `--dry-run`.
pub fn run(args: &Args) -> Result<(), IptablesError> {
    apply::run(args, &mut io::stdout().lock())
}

// === impl Args ===

impl Default for Args {
    /// The flags' defaults: Istio's sidecar capture of everything.
    fn default() -> Self {
        Self {
            proxy_uid: 1337,
            proxy_gid: 1337,
            inbound_capture_port: 15006,
            outbound_capture_port: 15001,
            inbound_tunnel_port: 15008,
            inbound_interception_mode: InterceptionMode::Redirect,
            inbound_ports: PortSelection::All,
            exclude_inbound_ports: PortList::default(),
            outbound_cidrs: CidrSelection::All,
            exclude_outbound_cidrs: CidrList::default(),
            exclude_outbound_ports: PortList::default(),
            include_outbound_ports: PortList::default(),
            ipv6: Ipv6Mode::Auto,
            cleanup: false,
            dry_run: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("iptables").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_are_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn defaults_match_default_impl() {
        assert_eq!(parse(&[]).unwrap(), Args::default());
    }

    #[test]
    fn istio_init_container_arguments_parse() {
        // What Istio's injector passes to istio-iptables.
        let args = parse(&[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "--istio-local-outbound-ports-exclude",
            "9999",
        ])
        .unwrap();
        assert_eq!(args.exclude_outbound_ports, PortList(vec![9999]));
        assert_eq!(
            args.exclude_inbound_ports,
            PortList(vec![15090, 15021, 15020])
        );
        assert_eq!(args.outbound_cidrs, CidrSelection::All);
        assert_eq!(args.exclude_outbound_cidrs, CidrList(vec![]));

        let tproxy = parse(&["-m", "TPROXY"]).unwrap_err().to_string();
        assert!(tproxy.contains("REDIRECT"), "{tproxy}");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = parse(&["--exclude-outbound-ports", "80,http"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--exclude-outbound-ports"), "{msg}");
        assert!(msg.contains("invalid port \"http\""), "{msg}");
    }
}
