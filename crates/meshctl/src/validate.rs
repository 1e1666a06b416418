//! `meshctl validate`: admission-style validation of every Istio object in
//! the given files, without a cluster. Kubernetes and other kinds are
//! accepted and skipped. A malformed document is reported with its file and
//! line and the rest of the file is still checked.

use std::io::Write;

use mesh_api::object::{Loaded, load_path};
use mesh_api::validation::{Diagnostic, Severity};

use crate::FileArgs;

/// Arguments of `meshctl validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    files: FileArgs,
    /// Also print warnings (unknown fields, ignored settings).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    warnings: bool,
}

/// Loads every path; an unreadable path is an error for the whole command.
pub fn load_all(files: &FileArgs) -> anyhow::Result<Vec<Loaded>> {
    let mut loaded = Vec::new();
    for path in &files.files {
        loaded.extend(load_path(path)?);
    }
    Ok(loaded)
}

/// `<kind> <namespace>/<name> (<file>:<line>)`, or just the location when
/// the document could not be read far enough to know what it is.
pub fn origin(l: &Loaded) -> String {
    if l.header.kind.is_empty() {
        format!("({}:{})", l.source.file, l.source.line)
    } else {
        format!(
            "{} {}/{} ({}:{})",
            l.header.kind, l.header.namespace, l.header.name, l.source.file, l.source.line
        )
    }
}

fn format_finding(l: &Loaded, d: &Diagnostic) -> String {
    if d.path.is_empty() {
        format!("{}: {} {}", d.severity, origin(l), d.message)
    } else {
        format!("{}: {} {}: {}", d.severity, origin(l), d.path, d.message)
    }
}

/// Runs the command; returns 1 when any object has an error.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<i32> {
    let loaded = load_all(&args.files)?;
    let (mut objects, mut errors, mut warnings) = (0, 0, 0);
    for l in &loaded {
        // Kubernetes and other kinds are the API server's to validate; a
        // malformed document (no kind known) is always reported.
        if !l.is_istio() && !l.header.kind.is_empty() {
            continue;
        }
        objects += 1;
        for d in &l.report.diagnostics {
            match d.severity {
                Severity::Error => errors += 1,
                Severity::Warning if args.warnings => warnings += 1,
                Severity::Warning => continue,
            }
            writeln!(out, "{}", format_finding(l, d))?;
        }
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    writeln!(
        out,
        "{}: {}, {}",
        if errors == 0 {
            "validation succeeded"
        } else {
            "validation failed"
        },
        plural(errors, "error"),
        plural(warnings, "warning"),
    )?;
    let _ = objects;
    Ok(if errors > 0 { 1 } else { 0 })
}
