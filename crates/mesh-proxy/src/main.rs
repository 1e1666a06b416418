//! `mesh-proxy`: the sidecar and gateway proxy. A thin entry point over
//! [`mesh_proxy::cli`], so tests and tools reuse everything it does.

fn main() -> std::process::ExitCode {
    mesh_proxy::cli::main(mesh_proxy::cli::parse(std::env::args_os()))
}
