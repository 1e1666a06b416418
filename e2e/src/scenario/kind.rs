//! The kind backend: the same scenarios on a real cluster that
//! `e2e/kind/run.sh` created (kind, the images built and loaded,
//! `meshctl install`, namespace `default` labelled for injection, the
//! sample app applied and ready). Everything goes through `kubectl` with
//! the current context: configuration with `apply`/`delete`, requests with
//! `exec`, the control plane's debug endpoints through the API server's
//! service proxy (`get --raw .../services/istiod:15014/proxy/...`).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;

use super::local::run;
use super::{Backend, Exec};

const LIMIT: Duration = Duration::from_secs(300);

/// A cluster reached with `kubectl`.
pub struct KindBackend {
    kubectl: String,
    meshctl: String,
    applied: BTreeMap<String, String>,
}

impl KindBackend {
    /// Uses `kubectl` (or `$KUBECTL`) on the current context and `meshctl`.
    pub fn new(meshctl: &str) -> anyhow::Result<Self> {
        let backend = Self {
            kubectl: std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string()),
            meshctl: meshctl.to_string(),
            applied: BTreeMap::new(),
        };
        let ready =
            backend.kubectl(&["-n", "istio-system", "rollout", "status", "deploy/istiod"])?;
        ensure!(
            ready.success,
            "istiod is not rolled out (run e2e/kind/run.sh first): {}",
            ready.stderr
        );
        Ok(backend)
    }

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<Exec> {
        let mut c = Command::new(&self.kubectl);
        c.args(args).stdin(Stdio::null());
        run(c, LIMIT)
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<Exec> {
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok(Exec {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// The pod of `pod` (a Pod's name, or a Deployment's: one of its pods).
    fn pod_json(&self, pod: &str) -> anyhow::Result<Value> {
        let out = self.kubectl(&["-n", "default", "get", "pods", "-o", "json"])?;
        ensure!(out.success, "kubectl get pods: {}", out.stderr);
        let list: Value = serde_json::from_str(&out.stdout)?;
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                let owner = p["metadata"]["labels"]["pod-template-hash"]
                    .as_str()
                    .map(|hash| format!("{pod}-{hash}-"));
                name == pod || owner.is_some_and(|prefix| name.starts_with(&prefix))
            })
            .cloned()
            .with_context(|| format!("no pod {pod} in namespace default"))
    }

    fn pod_name(&self, pod: &str) -> anyhow::Result<String> {
        Ok(self.pod_json(pod)?["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

impl Backend for KindBackend {
    fn name(&self) -> &'static str {
        "kind"
    }

    fn apply(&mut self, name: &str, yaml: &str) -> anyhow::Result<()> {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], yaml)?;
        ensure!(out.success, "kubectl apply {name}: {}", out.stderr);
        self.applied.insert(name.to_string(), yaml.to_string());
        Ok(())
    }

    fn delete(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(yaml) = self.applied.remove(name) {
            let out = self.kubectl_stdin(&["delete", "--ignore-not-found", "-f", "-"], &yaml)?;
            ensure!(out.success, "kubectl delete {name}: {}", out.stderr);
        }
        Ok(())
    }

    fn exec(&self, pod: &str, script: &str) -> anyhow::Result<Exec> {
        let name = self.pod_name(pod)?;
        // The app container: the injector makes it the default one.
        self.kubectl(&["-n", "default", "exec", &name, "--", "sh", "-c", script])
    }

    fn logs(&self, pod: &str, proxy: bool) -> anyhow::Result<String> {
        let name = self.pod_name(pod)?;
        let mut args = vec!["-n", "default", "logs", name.as_str()];
        if proxy {
            args.extend(["-c", "istio-proxy"]);
        }
        Ok(self.kubectl(&args)?.stdout)
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
        Ok(self.pod_json(pod)?["status"]["podIP"]
            .as_str()
            .context("pod has no IP")?
            .to_string())
    }

    fn control_plane_get(&self, path: &str) -> anyhow::Result<String> {
        let raw = format!("/api/v1/namespaces/istio-system/services/istiod:15014/proxy{path}");
        let out = self.kubectl(&["get", "--raw", &raw])?;
        ensure!(out.success, "GET {path} on istiod: {}", out.stderr);
        Ok(out.stdout)
    }

    fn restart_control_plane(&mut self) -> anyhow::Result<()> {
        let out = self.kubectl(&["-n", "istio-system", "rollout", "restart", "deploy/istiod"])?;
        ensure!(out.success, "rollout restart: {}", out.stderr);
        let out = self.kubectl(&["-n", "istio-system", "rollout", "status", "deploy/istiod"])?;
        ensure!(out.success, "rollout status: {}", out.stderr);
        Ok(())
    }

    fn ingress(&self, port: u16) -> anyhow::Result<String> {
        Ok(format!(
            "istio-ingressgateway.istio-system.svc.cluster.local:{port}"
        ))
    }

    fn analyze(&self) -> anyhow::Result<String> {
        let mut c = Command::new(&self.meshctl);
        c.args(["analyze", "-n", "default"]);
        let out = run(c, LIMIT)?;
        Ok(format!("{}{}", out.stdout, out.stderr))
    }
}
