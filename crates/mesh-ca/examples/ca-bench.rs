//! CA benchmark: prints signed certificates per second on one core (CSR
//! parse + signature check + policy + P-256 signing) and the latency of
//! `CreateCertificate` over gRPC+TLS on loopback with 100 concurrent
//! clients, each on its own connection.
//!
//! Run: `cargo run --release -p mesh-ca --example ca-bench [-- CLIENTS CALLS_PER_CLIENT]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_api::spiffe::SpiffeId;
use mesh_ca::auth::Authenticator;
use mesh_ca::auth::local::{DEFAULT_AUDIENCE, LocalTokenAuthority};
use mesh_ca::client::generate_key_and_csr;
use mesh_ca::metrics::CaMetrics;
use mesh_ca::service::{CaClient, CaService, serve_tls};
use mesh_ca::{Authority, AuthorityConfig};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clients = args.first().copied().unwrap_or(100);
    let calls = args.get(1).copied().unwrap_or(20);

    let authority = Arc::new(Authority::generate_in_memory(AuthorityConfig::default()).unwrap());
    let identity = SpiffeId::new("cluster.local", "default", "bench");
    let csrs: Vec<String> = (0..256)
        .map(|_| generate_key_and_csr(&identity).unwrap().1)
        .collect();

    // 1. Signing on one core (this thread only).
    for csr in csrs.iter().take(50) {
        authority.sign(csr, &identity, None).unwrap();
    }
    let start = Instant::now();
    let mut signed = 0usize;
    while start.elapsed() < Duration::from_secs(3) {
        authority
            .sign(&csrs[signed % csrs.len()], &identity, None)
            .unwrap();
        signed += 1;
    }
    let rate = signed as f64 / start.elapsed().as_secs_f64();
    println!(
        "sign (ECDSA P-256, 1 core): {signed} certs in {:.2?} = {rate:.0} certs/s",
        start.elapsed()
    );

    // 2. gRPC+TLS with concurrent clients.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let tokens = Arc::new(LocalTokenAuthority::generate("cluster.local", DEFAULT_AUDIENCE).unwrap());
        let serving = authority.issue_serving_certificate(&["localhost".into()], Duration::from_secs(3600)).unwrap();
        let tls = mesh_ca::tls::ca_server_config(&serving).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let authenticators: Vec<Arc<dyn Authenticator>> = vec![tokens.clone()];
        let service = Arc::new(CaService::new(authority.clone(), authenticators, CaMetrics::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_tls(listener, service, tls, async {
            let _ = stop_rx.await;
        }));
        let token = tokens.issue(&identity, Duration::from_secs(3600)).unwrap();
        let csrs = Arc::new(csrs);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let client = CaClient::new(&format!("https://{addr}"), authority.trust_bundle(), "localhost").unwrap();
            let (token, csrs) = (token.clone(), csrs.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(calls);
                for i in 0..calls {
                    let t = Instant::now();
                    client.create_certificate(&csrs[(c * calls + i) % csrs.len()], None, &token).await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let wall = start.elapsed();
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        println!(
            "gRPC CreateCertificate over TLS, {clients} concurrent clients x {calls} calls ({} workers): \
             {} calls in {wall:.2?} = {:.0} certs/s; latency p50 {:.2?} p99 {:.2?} max {:.2?} \
             (includes each client's first TLS handshake)",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            all.len(),
            all.len() as f64 / wall.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            all[all.len() - 1],
        );
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    });
}
