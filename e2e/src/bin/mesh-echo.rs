//! `mesh-echo`: the mesh's sample and test application. See `e2e::echo`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use clap::Parser;
use e2e::echo::{Behaviour, EchoConfig};

/// An HTTP server that answers with who it is and what it received.
#[derive(Debug, Parser)]
#[command(name = "mesh-echo", disable_version_flag = true)]
struct Args {
    /// Workload name reported in every answer (e.g. `reviews-v2`).
    #[arg(long, env = "ECHO_NAME", default_value = "mesh-echo")]
    name: String,
    /// Version reported in every answer (e.g. `v2`).
    #[arg(long, env = "ECHO_VERSION", default_value = "v1")]
    version: String,
    /// Namespace reported in every answer.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Ports to listen on (HTTP/1.1 and h2c on each); repeatable.
    #[arg(long = "port", default_value = "8080")]
    ports: Vec<u16>,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Status code to answer with unless the request asks otherwise.
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// Delay before every answer, e.g. `250ms`.
    #[arg(long)]
    delay: Option<mesh_api::Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    e2e::echo::print_requests();
    let config = Arc::new(EchoConfig {
        name: args.name,
        version: args.version,
        namespace: args.namespace,
        behaviour: Behaviour {
            status: args.status,
            delay: args.delay.map(|d| d.as_std()),
        },
        log: None,
    });
    let mut tasks = Vec::new();
    for port in args.ports {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind, port)).await?;
        eprintln!(
            "mesh-echo {} listening on {}",
            config.name,
            listener.local_addr()?
        );
        tasks.push(tokio::spawn(e2e::echo::serve(listener, config.clone())));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = futures_all(tasks) => {}
    }
    Ok(())
}

async fn futures_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
