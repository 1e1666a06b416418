//! `mesh-bench`: the mesh's benchmarks, one subcommand per area. Each prints
//! its numbers and writes `docs/benchmarks/<area>.md` and `<area>.png`.
//! Run in release: `cargo run --release -p e2e --bin mesh-bench -- ca`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use e2e::bench;

#[derive(Debug, Parser)]
#[command(name = "mesh-bench", version, about = "Benchmarks of the mesh")]
struct Args {
    /// Directory the reports are written to.
    #[arg(long, global = true, default_value_os_t = default_out_dir())]
    out_dir: PathBuf,
    #[command(subcommand)]
    area: Area,
}

#[derive(Debug, Subcommand)]
enum Area {
    /// Certificate authority: signing rate and CreateCertificate latency.
    Ca {
        /// Seconds the one-core signing loop runs.
        #[arg(long, default_value_t = 3.0)]
        sign_secs: f64,
        /// Concurrent gRPC clients to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        clients: Vec<usize>,
        /// Calls per concurrency level, split between its clients.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
    },
}

/// `docs/benchmarks` of the workspace this binary was built from.
fn default_out_dir() -> PathBuf {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
    e2e.parent().unwrap_or(e2e).join("docs").join("benchmarks")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; numbers are not comparable (use --release)");
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    match args.area {
        Area::Ca {
            sign_secs,
            clients,
            calls,
        } => {
            let sign_duration = Duration::try_from_secs_f64(sign_secs)
                .context("--sign-secs must be a positive number of seconds")?;
            let report = bench::ca::run(bench::ca::Params {
                sign_duration,
                clients,
                calls,
                ..bench::ca::Params::default()
            })?;
            let md = args.out_dir.join("ca.md");
            std::fs::write(&md, bench::ca::markdown(&report))
                .with_context(|| format!("writing {}", md.display()))?;
            let png = args.out_dir.join("ca.png");
            let labelled = bench::register_plot_font();
            if !labelled {
                eprintln!(
                    "warning: no TrueType font found (set MESH_BENCH_FONT); plot has no labels"
                );
            }
            bench::ca::plot(&report, &png, labelled)
                .with_context(|| format!("plotting {}", png.display()))?;
            println!("wrote {} and {}", md.display(), png.display());
        }
    }
    Ok(())
}
