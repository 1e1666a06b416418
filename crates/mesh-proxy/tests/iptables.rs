//! `mesh-proxy iptables`: the rule set (golden files) and what applying and
//! cleaning up really does to a network namespace's `nat` table, read back
//! with `iptables-save` as an operator would.
//!
//! Golden files live in tests/iptables/; regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p mesh-proxy --test iptables` and review the
//! diff. The namespace tests need root and iptables (CI has both).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use mesh_proxy::iptables::{self, Args, Ipv6Mode};
use mesh_test_support::netns::{Namespace, require_program, run_bounded};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/iptables")
        .join(format!("{name}.golden"))
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "rules differ from {}; if the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

fn parse(argv: &[&str]) -> Args {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }
    let argv = std::iter::once("iptables").chain(argv.iter().copied());
    <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
}

#[test]
fn golden_default_rules() {
    check_golden("default", &iptables::rules(&Args::default()).to_string());
}

#[test]
fn golden_customised_rules() {
    let args = parse(&[
        "--proxy-uid=1000",
        "--proxy-gid=1001",
        "--inbound-capture-port=16006",
        "-p",
        "16001",
        "--exclude-inbound-ports=22,15020",
        "--outbound-cidrs=10.96.0.0/12,fd00:10:96::/112",
        "--exclude-outbound-cidrs=10.96.0.1/32,169.254.169.254,fd00:10:96::1",
        "--exclude-outbound-ports=9999,3306",
        "--include-outbound-ports=443",
    ]);
    check_golden("custom", &iptables::rules(&args).to_string());
}

#[test]
fn golden_listed_inbound_ports_and_no_outbound_capture() {
    let args = parse(&["--inbound-ports=8080,9090", "--outbound-cidrs="]);
    check_golden("inbound-only", &iptables::rules(&args).to_string());
}

// --- in a network namespace ---

fn require_iptables() {
    for program in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables-save",
        "ip6tables-restore",
    ] {
        require_program(program, "iptables");
    }
}

/// `iptables-save -t nat` in `ns` without its comment lines (which carry a
/// timestamp).
fn save(ns: &Namespace, program: &str) -> String {
    let output = run_bounded(
        ns.exec(program).args(["-t", "nat"]),
        Duration::from_secs(10),
    );
    assert!(
        output.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A namespace whose nat table already holds a rule of somebody else's,
/// which neither applying nor cleaning up may touch.
fn namespace_with_foreign_rule(prefix: &str) -> Namespace {
    require_iptables();
    let ns = Namespace::create(prefix);
    let output = run_bounded(
        ns.exec("iptables").args([
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "192.0.2.99/32",
            "-j",
            "RETURN",
        ]),
        Duration::from_secs(10),
    );
    assert!(output.status.success(), "{output:?}");
    ns
}

fn count(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

#[test]
fn applying_twice_leaves_one_copy_and_cleanup_restores_the_table() {
    let ns = namespace_with_foreign_rule("ipt");
    let pristine = save(&ns, "iptables-save");
    let pristine6 = save(&ns, "ip6tables-save");
    let args = Args::default();

    ns.run_in(|| iptables::run(&args)).unwrap();
    let once = save(&ns, "iptables-save");
    ns.run_in(|| iptables::run(&args)).unwrap();
    let twice = save(&ns, "iptables-save");

    assert_eq!(once, twice, "a second apply changed the table");
    // No global IPv6 address here, so `--ipv6 auto` leaves IPv6 alone.
    assert_eq!(save(&ns, "ip6tables-save"), pristine6);
    for line in [
        ":ISTIO_INBOUND - [0:0]",
        ":ISTIO_IN_REDIRECT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A OUTPUT -d 192.0.2.99/32 -j RETURN",
    ] {
        assert_eq!(count(&twice, line), 1, "{line:?} in:\n{twice}");
    }
    // Every rule we generate is installed, plus the foreign one.
    let appended = twice.lines().filter(|l| l.starts_with("-A ")).count();
    assert_eq!(
        appended,
        iptables::rules(&args).ipv4.rules.len() + 1,
        "{twice}"
    );

    let cleanup = Args {
        cleanup: true,
        ..Args::default()
    };
    ns.run_in(|| iptables::run(&cleanup)).unwrap();
    assert_eq!(save(&ns, "iptables-save"), pristine);
    // And again, with nothing left to remove.
    ns.run_in(|| iptables::run(&cleanup)).unwrap();
    assert_eq!(save(&ns, "iptables-save"), pristine);
}

#[test]
fn reapplying_with_other_flags_replaces_the_rules() {
    let ns = namespace_with_foreign_rule("iptre");
    ns.run_in(|| iptables::run(&Args::default())).unwrap();
    let changed = parse(&["-p", "16001", "--inbound-ports=8080"]);
    ns.run_in(|| iptables::run(&changed)).unwrap();
    let table = save(&ns, "iptables-save");
    assert_eq!(
        count(
            &table,
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001"
        ),
        1,
        "{table}"
    );
    assert!(!table.contains("--to-ports 15001"), "{table}");
    assert!(
        !table.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"),
        "{table}"
    );
    assert_eq!(
        count(
            &table,
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT"
        ),
        1
    );
    assert_eq!(count(&table, "-A PREROUTING -p tcp -j ISTIO_INBOUND"), 1);
}

#[test]
fn cleanup_of_a_clean_namespace_succeeds_and_changes_nothing() {
    let ns = namespace_with_foreign_rule("iptcl");
    let before = save(&ns, "iptables-save");
    let cleanup = Args {
        cleanup: true,
        ipv6: Ipv6Mode::Always,
        ..Args::default()
    };
    ns.run_in(|| iptables::run(&cleanup)).unwrap();
    assert_eq!(save(&ns, "iptables-save"), before);
}

#[test]
fn dry_run_changes_nothing() {
    let ns = namespace_with_foreign_rule("iptdry");
    let before = save(&ns, "iptables-save");
    let dry = Args {
        dry_run: true,
        ..Args::default()
    };
    ns.run_in(|| iptables::run(&dry)).unwrap();
    assert_eq!(save(&ns, "iptables-save"), before);

    // A dry-run cleanup of installed rules leaves them installed.
    ns.run_in(|| iptables::run(&Args::default())).unwrap();
    let installed = save(&ns, "iptables-save");
    let dry_cleanup = Args {
        dry_run: true,
        cleanup: true,
        ..Args::default()
    };
    ns.run_in(|| iptables::run(&dry_cleanup)).unwrap();
    assert_eq!(save(&ns, "iptables-save"), installed);
}

#[test]
fn ipv6_rules_are_applied_and_removed_when_asked() {
    let ns = namespace_with_foreign_rule("ipt6");
    let pristine6 = save(&ns, "ip6tables-save");
    let args = Args {
        ipv6: Ipv6Mode::Always,
        ..Args::default()
    };
    ns.run_in(|| iptables::run(&args)).unwrap();
    ns.run_in(|| iptables::run(&args)).unwrap();
    let table = save(&ns, "ip6tables-save");
    assert_eq!(
        count(&table, "-A OUTPUT -p tcp -j ISTIO_OUTPUT"),
        1,
        "{table}"
    );
    assert_eq!(
        count(&table, "-A ISTIO_OUTPUT -d ::1/128 -j RETURN"),
        1,
        "{table}"
    );
    assert_eq!(
        count(&table, "-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"),
        1,
        "{table}"
    );

    // Auto cleanup finds the IPv6 rules even without a global address.
    let cleanup = Args {
        cleanup: true,
        ..Args::default()
    };
    ns.run_in(|| iptables::run(&cleanup)).unwrap();
    assert_eq!(save(&ns, "ip6tables-save"), pristine6);
}

#[test]
fn ipv6_rules_follow_a_global_ipv6_address_in_auto_mode() {
    let ns = namespace_with_foreign_rule("ipt6a");
    ns.add_dummy("dummy0", "10.244.0.5/24");
    ns.add_address("dummy0", "fd00:244::5/64");
    ns.run_in(|| iptables::run(&Args::default())).unwrap();
    let table = save(&ns, "ip6tables-save");
    assert_eq!(
        count(&table, "-A PREROUTING -p tcp -j ISTIO_INBOUND"),
        1,
        "{table}"
    );
    assert_eq!(
        count(&table, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
        1,
        "{table}"
    );
}
