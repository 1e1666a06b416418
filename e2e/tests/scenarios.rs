//! The end-to-end scenario suite (issue 10) on the backend `E2E_BACKEND`
//! names: `local` (the default: the whole mesh on this machine with
//! `meshctl local`, root needed) or `kind` (a cluster `e2e/kind/run.sh`
//! prepared). `E2E_SCENARIOS=a,b` runs only those; `E2E_DATA_PLANE=envoy`
//! runs the local mesh's sidecars as stock Envoys. Prints each scenario's
//! result and the suite's total time.
//!
//! Not root with the local backend is a failure, not a quiet pass, unless
//! `E2E_SKIP_LOCAL=1` asks for the skip (then it says so loudly).

use std::path::PathBuf;
use std::time::Instant;

use e2e::scenario::kind::KindBackend;
use e2e::scenario::local::LocalBackend;
use e2e::scenario::{Backend, SCENARIOS, run};

fn binary_dir() -> PathBuf {
    // target/<profile>/deps/scenarios-<hash> -> target/<profile>
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

#[test]
fn scenarios() {
    let backend = std::env::var("E2E_BACKEND").unwrap_or_else(|_| "local".to_string());
    let meshctl = binary_dir().join("meshctl");
    let wanted: Option<Vec<String>> = std::env::var("E2E_SCENARIOS")
        .ok()
        .map(|s| s.split(',').map(|n| n.trim().to_string()).collect());
    let selected: Vec<_> = SCENARIOS
        .iter()
        .filter(|s| {
            wanted
                .as_ref()
                .is_none_or(|w| w.iter().any(|n| n == s.name))
        })
        .collect();
    assert!(!selected.is_empty(), "E2E_SCENARIOS names no scenario");
    let started = Instant::now();
    let mut b: Box<dyn Backend> = match backend.as_str() {
        "local" => {
            if !nix::unistd::geteuid().is_root() {
                if std::env::var("E2E_SKIP_LOCAL").is_ok_and(|v| v == "1") {
                    loud(
                        "\n!!! SKIPPED: the local scenario suite needs root (network namespaces, iptables); E2E_SKIP_LOCAL=1 asked to skip it\n\n",
                    );
                    return;
                }
                panic!(
                    "the local scenario suite needs root (network namespaces, iptables): run it as root, or set E2E_SKIP_LOCAL=1 to skip it knowingly"
                );
            }
            let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests");
            let plane = std::env::var("E2E_DATA_PLANE").unwrap_or_else(|_| "mesh-proxy".into());
            match LocalBackend::up(&meshctl, &manifests, &plane) {
                Ok(b) => Box::new(b),
                Err(e) => panic!("the local mesh did not come up: {e:#}"),
            }
        }
        "kind" => match KindBackend::new(&meshctl.display().to_string()) {
            Ok(b) => Box::new(b),
            Err(e) => panic!("the kind backend is not ready: {e:#}"),
        },
        other => panic!("E2E_BACKEND={other}: use local or kind"),
    };
    let setup = started.elapsed();
    let scenarios: Vec<_> = selected.into_iter().copied().collect();
    let outcomes = run(b.as_mut(), &scenarios);
    drop(b);
    let mut summary = format!(
        "\nscenario suite on {backend} (setup {:.1} s):\n",
        setup.as_secs_f64()
    );
    for o in &outcomes {
        summary += &format!(
            "  {:<36} {:>6.1} s  {}\n",
            o.name,
            o.elapsed.as_secs_f64(),
            if o.error.is_some() { "FAIL" } else { "ok" }
        );
    }
    summary += &format!("total {:.1} s\n", started.elapsed().as_secs_f64());
    loud(&summary);
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.name)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} scenario(s) failed:\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

/// Writes straight to the process's stderr, past libtest's capture, so the
/// suite's times (and a skip) show in `cargo test` output even when the
/// test passes.
fn loud(text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}
