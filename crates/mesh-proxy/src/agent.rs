//! `mesh-proxy agent`: the workload-certificate agent alone, for a pod
//! whose proxy is a stock Envoy (the part of Istio's pilot-agent that
//! matters to the data plane).
//!
//! It fetches the workload's SVID from the mesh CA with the workload's
//! token, renews it at half life, and serves it over SDS on a Unix socket
//! (`default` for the certificate, `ROOTCA` for the mesh roots), the
//! socket Envoy's bootstrap names in its `sds-grpc` cluster. The private
//! key stays in this process and the socket (mode 0600); it never goes
//! through the control plane. SIGTERM or SIGINT stop it at once and
//! remove the socket.

use std::path::PathBuf;

use anyhow::Context;
use mesh_ca::sds::{ISTIO_SDS_SOCKET, SdsServer};

use crate::cli::{LogFormat, Signals};
use crate::tls::identity::{self, IdentityArgs};

/// Flags of `mesh-proxy agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Where to serve SDS (the path of the bootstrap's `sds-grpc` cluster).
    #[arg(long, default_value = ISTIO_SDS_SOCKET)]
    pub sds_socket: PathBuf,
    /// Pod namespace (the default identity's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Service account (the default identity's service account).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Log level or tracing filter directives.
    #[arg(long, env = "MESH_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// The CA, the token and the identity to request.
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    crate::cli::init_logging(LogFormat::Text, &args.log_level)?;
    let started = identity::start(
        &args.identity,
        args.pod_namespace.as_deref(),
        args.service_account.as_deref(),
    )?
    .context("the agent needs a CA: give --ca-address (or CA_ADDR)")?;
    if let Some(dir) = args
        .sds_socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the SDS socket's directory {}", dir.display()))?;
    }
    // A graceful gRPC shutdown would wait for Envoy to close its SDS
    // stream, which it never does: on a signal the server is dropped and
    // the socket removed here.
    let serve = SdsServer::new(&started.certs, started.roots)
        .serve_uds(&args.sds_socket, std::future::pending());
    tokio::select! {
        result = serve => result.context("serving SDS")?,
        () = signals.next() => {
            let _ = std::fs::remove_file(&args.sds_socket);
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}
