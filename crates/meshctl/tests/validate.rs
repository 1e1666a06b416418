//! `meshctl validate` through the real binary: exit codes, the exact line
//! format, and that one broken object never hides the others.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn meshctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bundled_samples_validate_cleanly() {
    let out = meshctl(&["validate", "-f", "samples/"], None);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("Error:"), "{text}");
    assert!(
        !text.contains("Warning:"),
        "samples use no unknown field: {text}"
    );
    assert!(text.contains("validation succeeded"), "{text}");
}

const GOOD_PA: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: good\n  namespace: foo\nspec:\n  mtls:\n    mode: STRICT\n";

#[test]
fn one_broken_object_is_reported_and_the_rest_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    // a.yaml: a good object, then one with a bad enum value.
    std::fs::write(
        dir.path().join("a.yaml"),
        format!("{GOOD_PA}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: bad\n  namespace: foo\nspec:\n  mtls:\n    mode: STRICTEST\n"),
    )
    .unwrap();
    // b.yaml: a Deployment (skipped) and a good object.
    std::fs::write(
        dir.path().join("b.yaml"),
        format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n---\n{GOOD_PA}"),
    )
    .unwrap();
    let a = dir.path().join("a.yaml");
    let out = meshctl(&["validate", "-f", dir.path().to_str().unwrap()], None);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error:")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    let expected_prefix = format!(
        "Error: PeerAuthentication foo/bad ({}:10) spec.mtls.mode: unknown variant `STRICTEST`",
        a.display()
    );
    assert!(
        errors[0].starts_with(&expected_prefix),
        "{}\nwanted prefix {expected_prefix}",
        errors[0]
    );
    assert!(text.contains("1 error"), "{text}");
}

#[test]
fn malformed_yaml_names_file_and_line_without_hiding_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.yaml");
    std::fs::write(
        &f,
        format!("{GOOD_PA}---\napiVersion: v1\nkind: Service\nmetadata: {{name: [oops\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: port-only\nspec:\n  portLevelMtls:\n    8080: {{mode: DISABLE}}\n"),
    )
    .unwrap();
    let out = meshctl(&["validate", "-f", f.to_str().unwrap()], None);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("Error: ({}:10) malformed YAML", f.display()))),
        "{text}"
    );
    // The document after the malformed one is still validated.
    assert!(
        text.contains(&format!(
            "Error: PeerAuthentication default/port-only ({}:14) spec.portLevelMtls:",
            f.display()
        )),
        "{text}"
    );
    assert!(!stderr_has_panic(&out));
}

#[test]
fn reads_standard_input_and_warns_on_unknown_fields() {
    let doc = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec:\n  mtls: {mode: STRICT}\n  mtlsMode: STRICT\n";
    let out = meshctl(&["validate", "-f", "-"], Some(doc));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "warnings do not fail: {text}");
    assert!(
        text.contains("Warning: PeerAuthentication default/x (-:1) spec.mtlsMode: unknown field"),
        "{text}"
    );
}

#[test]
fn unserved_version_and_missing_file_are_clear_errors() {
    let doc = "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: x}\n";
    let out = meshctl(&["validate", "-f", "-"], Some(doc));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("apiVersion: networking.istio.io/v2 is not a served version"),
        "{text}"
    );

    let out = meshctl(&["validate", "-f", "does/not/exist.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does/not/exist.yaml"), "{err}");
    assert!(!stderr_has_panic(&out));
}

fn stderr_has_panic(o: &Output) -> bool {
    String::from_utf8_lossy(&o.stderr).contains("panicked")
}
