//! `meshctl analyze` on crafted multi-file inputs, through the real binary.
//! Each directory under `tests/analyze/` is one case; its `expected` file
//! holds the exit code on the first line and the exact output after it.
//! `UPDATE_GOLDEN=1 cargo test -p meshctl --test analyze` rewrites them;
//! review the diff.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn run_case(dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["analyze", "-f", "."])
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn crafted_inputs_give_istioctl_messages_and_exit_codes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analyze");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10);
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let (code, stdout) = run_case(&case);
        let got = format!("exit {code}\n{stdout}");
        let expected_file = case.join("expected");
        if update {
            std::fs::write(&expected_file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "== {}\n-- want\n{want}-- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn json_output_carries_code_level_origin_and_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analyze/ist0145");
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["analyze", "-f", ".", "-o", "json"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(79));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &v[0];
    assert_eq!(first["code"], "IST0145");
    assert_eq!(first["level"], "Error");
    assert_eq!(first["origin"], "Gateway default/alpha");
    assert_eq!(first["reference"], "./gateways.yaml:1");
    assert!(
        first["documentationUrl"]
            .as_str()
            .unwrap()
            .ends_with("/ist0145/")
    );
}

#[test]
fn thresholds_control_exit_code_and_output() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analyze/ist0132");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["analyze", "-f", "."])
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    // Warnings alone do not fail by default...
    assert_eq!(run(&[]).status.code(), Some(0));
    // ...but do with --failure-threshold warning.
    assert_eq!(
        run(&["--failure-threshold", "warning"]).status.code(),
        Some(79)
    );
    // And are hidden with --output-threshold error.
    let out = run(&["--output-threshold", "error"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("IST0132"));
}
