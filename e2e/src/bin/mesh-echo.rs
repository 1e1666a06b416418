//! `mesh-echo`: the mesh's sample and test application. See `e2e::echo`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use clap::Parser;
use e2e::echo::{Behaviour, Cue, EchoConfig};

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
    /// Answer 503 to the first N requests of each path (a request's
    /// `fail_first=`/`fail_every=` query overrides it).
    #[arg(long, env = "ECHO_FAIL_FIRST")]
    fail_first: Option<u64>,
    /// Answer 503 to every K-th request of each path, the first included
    /// (2 alternates).
    #[arg(long, env = "ECHO_FAIL_EVERY")]
    fail_every: Option<u64>,
    /// Close the connection without answering instead of answering 503
    /// (every request unless --fail-first or --fail-every picks some).
    #[arg(long, env = "ECHO_RESET")]
    reset: bool,
    /// Serve the sample external authorizer (`e2e::ext_authz`: allows
    /// requests with `x-ext-authz: allow`) over Envoy's HTTP protocol on
    /// this port; repeatable.
    #[arg(long = "ext-authz-http")]
    ext_authz_http: Vec<u16>,
    /// Serve the sample external authorizer over Envoy's gRPC protocol
    /// (`envoy.service.auth.v3.Authorization`) on this port; repeatable.
    #[arg(long = "ext-authz-grpc")]
    ext_authz_grpc: Vec<u16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    e2e::echo::print_requests();
    let cue = Cue {
        fail_first: args.fail_first,
        fail_every: args.fail_every.filter(|k| *k > 0),
        reset: args.reset,
    };
    if cue != Cue::default() {
        e2e::echo::set_default_cue(cue);
    }
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
    let seen = e2e::ext_authz::Seen::default();
    for (port, grpc) in args
        .ext_authz_http
        .iter()
        .map(|p| (*p, false))
        .chain(args.ext_authz_grpc.iter().map(|p| (*p, true)))
    {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind, port)).await?;
        let protocol = if grpc { "gRPC" } else { "HTTP" };
        eprintln!(
            "mesh-echo {} serving external authorization ({protocol}) on {}",
            config.name,
            listener.local_addr()?
        );
        tasks.push(if grpc {
            tokio::spawn(e2e::ext_authz::serve_grpc(listener, seen.clone()))
        } else {
            tokio::spawn(e2e::ext_authz::serve_http(listener, seen.clone()))
        });
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
