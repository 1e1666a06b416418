//! The local backend: `meshctl local up` on a copy of the sample app (each
//! pod a network namespace with real iptables capture, the real
//! `mesh-control`, `mesh-proxy` and `mesh-echo`), configuration applied as
//! files in the directory mesh-control watches, requests sent with
//! `meshctl local exec POD -- curl ...`. Needs root. Everything it creates
//! (namespaces, bridge, rules, processes, directories) is removed by
//! `meshctl local down` when the backend is dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use super::{Backend, Exec};

/// Longest any one `meshctl` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// A running local mesh.
pub struct LocalBackend {
    meshctl: PathBuf,
    root: PathBuf,
    config: PathBuf,
    run_dir: PathBuf,
    restarted: Vec<std::process::Child>,
}

impl LocalBackend {
    /// Copies `manifests` (the sample app) into a fresh directory and runs
    /// `meshctl local up` on it with its own bridge and subnet, so it never
    /// meets a mesh a user has up. `meshctl` is the binary; mesh-control,
    /// mesh-proxy and mesh-echo must be next to it.
    pub fn up(meshctl: &Path, manifests: &Path, data_plane: &str) -> anyhow::Result<Self> {
        let dir = meshctl.parent().context("meshctl has no directory")?;
        for binary in ["mesh-control", "mesh-proxy", "mesh-echo"] {
            ensure!(
                dir.join(binary).is_file(),
                "{binary} is not built next to meshctl in {}: run `cargo build --bins`",
                dir.display()
            );
        }
        let id = std::process::id();
        let root = std::env::temp_dir().join(format!("mesh-e2e-{id}"));
        let _ = std::fs::remove_dir_all(&root);
        let config = root.join("config");
        let run_dir = root.join("run");
        std::fs::create_dir_all(&config)?;
        std::fs::create_dir_all(&run_dir)?;
        for entry in std::fs::read_dir(manifests)
            .with_context(|| format!("reading {}", manifests.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                std::fs::copy(&path, config.join(path.file_name().unwrap_or_default()))?;
            }
        }
        let backend = Self {
            meshctl: meshctl.to_path_buf(),
            root,
            config,
            run_dir,
            restarted: Vec::new(),
        };
        let config = backend.config.display().to_string();
        let bridge = format!("mse{}", id % 100_000);
        let subnet = format!("10.125.{}.0/24", id % 250);
        let up = backend.meshctl(&[
            "local",
            "up",
            &config,
            "--bridge",
            &bridge,
            "--subnet",
            &subnet,
            "--data-plane",
            data_plane,
        ])?;
        if !up.success {
            bail!(
                "meshctl local up failed:\n{}\n{}\nmesh-control log:\n{}",
                up.stdout,
                up.stderr,
                backend.log_file("mesh-control.log")
            );
        }
        eprint!("{}", up.stdout);
        Ok(backend)
    }

    fn meshctl(&self, args: &[&str]) -> anyhow::Result<Exec> {
        let mut command = Command::new(&self.meshctl);
        command
            .args(args)
            .env("MESHCTL_LOCAL_DIR", &self.run_dir)
            .stdin(Stdio::null());
        run(command, COMMAND_LIMIT)
    }

    fn log_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.run_dir.join("logs").join(name)).unwrap_or_default()
    }

    fn state(&self) -> anyhow::Result<Value> {
        let path = self.run_dir.join("state.json");
        Ok(serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?)
    }

    /// The local pod of `pod` (a Pod's name, or a Deployment's: its first
    /// pod, `<deployment>-0`) in `namespace`.
    fn pod(&self, pod: &str, namespace: &str) -> anyhow::Result<Value> {
        let state = self.state()?;
        let pods = state["pods"].as_array().cloned().unwrap_or_default();
        pods.into_iter()
            .find(|p| {
                p["namespace"] == namespace
                    && (p["name"] == pod || p["name"] == format!("{pod}-0").as_str())
            })
            .with_context(|| format!("no local pod {pod}.{namespace}"))
    }

    fn pod_name(&self, pod: &str) -> anyhow::Result<String> {
        Ok(self.pod(pod, "default")?["name"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    fn file_of(&self, name: &str) -> PathBuf {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.config.join(format!("zz-scenario-{safe}.yaml"))
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn apply(&mut self, name: &str, yaml: &str) -> anyhow::Result<()> {
        // Written whole then renamed, so mesh-control never reads half a file.
        let file = self.file_of(name);
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }

    fn delete(&mut self, name: &str) -> anyhow::Result<()> {
        match std::fs::remove_file(self.file_of(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn exec(&self, pod: &str, script: &str) -> anyhow::Result<Exec> {
        let name = self.pod_name(pod)?;
        self.meshctl(&["local", "exec", &name, "--", "sh", "-c", script])
    }

    fn logs(&self, pod: &str, proxy: bool) -> anyhow::Result<String> {
        let name = self.pod_name(pod)?;
        let mut args = vec!["local", "logs", name.as_str()];
        if proxy {
            args.extend(["-c", "istio-proxy"]);
        }
        Ok(self.meshctl(&args)?.stdout)
    }

    fn proxy_admin(&self, pod: &str, path: &str) -> anyhow::Result<String> {
        let out = self.exec(
            pod,
            &format!("curl -s --max-time 5 'http://127.0.0.1:15000{path}'"),
        )?;
        ensure!(out.success, "admin {path} of {pod}: {}", out.stderr);
        Ok(out.stdout)
    }

    fn pod_ip(&self, pod: &str) -> anyhow::Result<String> {
        Ok(self.pod(pod, "default")?["ip"]
            .as_str()
            .context("pod has no address")?
            .to_string())
    }

    fn control_plane_get(&self, path: &str) -> anyhow::Result<String> {
        let state = self.state()?;
        let addr = state["monitoring"]
            .as_str()
            .context("no monitoring address in the run state")?;
        http_get(addr, path)
    }

    fn restart_control_plane(&mut self) -> anyhow::Result<()> {
        let mut state = self.state()?;
        let pid = state["control_pid"]
            .as_u64()
            .context("no mesh-control pid in the run state")?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .with_context(|| format!("mesh-control (pid {pid}) is not running"))?;
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let (program, args) = argv.split_first().context("empty command line")?;
        // As a Deployment's pod is replaced: SIGTERM, wait, start anew.
        let kill = run(
            {
                let mut c = Command::new("kill");
                c.args(["-TERM", &pid.to_string()]);
                c
            },
            Duration::from_secs(5),
        )?;
        ensure!(kill.success, "kill {pid}: {}", kill.stderr);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists() && !zombie(pid) {
            ensure!(
                Instant::now() < deadline,
                "mesh-control (pid {pid}) did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.run_dir.join("logs").join("mesh-control.log"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().context("restarting mesh-control")?;
        state["control_pid"] = child.id().into();
        std::fs::write(
            self.run_dir.join("state.json"),
            serde_json::to_vec_pretty(&state)?,
        )?;
        self.restarted.push(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.control_plane_get("/ready").is_err() {
            ensure!(
                Instant::now() < deadline,
                "restarted mesh-control is not ready:\n{}",
                self.log_file("mesh-control.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn ingress(&self, port: u16) -> anyhow::Result<String> {
        let gateway = self.pod("istio-ingressgateway", "istio-system")?;
        let ip = gateway["ip"]
            .as_str()
            .context("the gateway has no address")?;
        // The Service's 80 and 443 are the gateway's 8080 and 8443.
        let target = match port {
            80 => 8080,
            443 => 8443,
            p => p,
        };
        Ok(format!("{ip}:{target}"))
    }

    fn analyze(&self) -> anyhow::Result<String> {
        let config = self.config.display().to_string();
        let out = self.meshctl(&["analyze", "-f", &config])?;
        Ok(format!("{}{}", out.stdout, out.stderr))
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        if let Ok(down) = self.meshctl(&["local", "down"])
            && !down.success
        {
            eprintln!("meshctl local down: {}", down.stderr);
        }
        for child in &mut self.restarted {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn zombie(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// Runs `command`, killing it after `limit`.
pub fn run(mut command: Command, limit: Duration) -> anyhow::Result<Exec> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Exec {
        success: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A plain HTTP/1.0 GET of `path` at `addr` (`host:port`); the body of a
/// 2xx answer.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    ensure!(status.starts_with('2'), "GET {path}: {head}");
    Ok(body.to_string())
}
