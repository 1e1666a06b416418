//! `mesh-control`: see the library's `cli` module.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = mesh_control::cli::Args::parse();
    if let Err(e) = mesh_control::cli::run(args).await {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
