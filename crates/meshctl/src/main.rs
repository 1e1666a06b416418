//! `meshctl`: the mesh's command-line interface. All logic lives in the
//! library so tests drive the same code paths the binary runs.

fn main() {
    std::process::exit(meshctl::run(std::env::args_os()));
}
