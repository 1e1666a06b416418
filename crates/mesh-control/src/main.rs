//! `mesh-control`: see the library's `cli` module.

use clap::Parser;

/// mimalloc instead of glibc's allocator: translations allocate and free
/// large transient structures on several threads, and glibc's per-thread
/// arenas kept that memory resident (about 1 GB at 10,000 services; see
/// docs/benchmarks/control.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args = mesh_control::cli::Args::parse();
    if let Err(e) = mesh_control::cli::run(args).await {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
