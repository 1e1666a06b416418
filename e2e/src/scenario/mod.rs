//! The end-to-end scenario suite: the mesh's promises checked as a user
//! checks them, written once against [`Backend`] and run on the local
//! mesh ([`local::LocalBackend`], in CI) and on a kind cluster
//! ([`kind::KindBackend`], where Docker exists).
//!
//! Every scenario deploys nothing itself: the sample app
//! (`e2e/manifests/app.yaml`: `reviews` v1/v2/v3, `ratings` with a good and
//! a failing pod, a mesh `client` and an `outside` pod without a sidecar)
//! is up before the first one. A scenario applies Istio configuration,
//! waits for the mesh to converge ([`converge`]: mesh-control has read it
//! and every proxy has ACKed the snapshot holding it, never a fixed sleep),
//! sends requests from a pod with `curl`, checks what came back, and
//! removes its configuration again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

pub mod kind;
pub mod local;
mod scenarios;

pub use scenarios::{SCENARIOS, Scenario};

/// Where the mesh runs.
pub trait Backend {
    /// `local` or `kind`.
    fn name(&self) -> &'static str;
    /// Creates or replaces the configuration called `name` (a multi-document
    /// YAML of Istio or Kubernetes objects).
    fn apply(&mut self, name: &str, yaml: &str) -> anyhow::Result<()>;
    /// Removes the configuration called `name`.
    fn delete(&mut self, name: &str) -> anyhow::Result<()>;
    /// Runs `script` with `sh -c` in `pod` (namespace `default`).
    fn exec(&self, pod: &str, script: &str) -> anyhow::Result<Exec>;
    /// The app's log of `pod`, or its proxy's with `proxy`.
    fn logs(&self, pod: &str, proxy: bool) -> anyhow::Result<String>;
    /// GET `path` on `pod`'s proxy admin API.
    fn proxy_admin(&self, pod: &str, path: &str) -> anyhow::Result<String>;
    /// The address of `pod` (namespace `default`).
    fn pod_ip(&self, pod: &str) -> anyhow::Result<String>;
    /// GET `path` on the control plane's monitoring port.
    fn control_plane_get(&self, path: &str) -> anyhow::Result<String>;
    /// Restarts the control plane (`kubectl rollout restart deploy/istiod`).
    fn restart_control_plane(&mut self) -> anyhow::Result<()>;
    /// `host:port` of the ingress gateway's `port` (80 or 443) as the
    /// `outside` pod reaches it.
    fn ingress(&self, port: u16) -> anyhow::Result<String>;
    /// Runs `meshctl analyze` over the applied configuration; its output.
    fn analyze(&self) -> anyhow::Result<String>;
}

/// What a command in a pod did.
#[derive(Clone, Debug)]
pub struct Exec {
    /// Exit status was 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// One HTTP exchange seen by `curl` in a pod.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code (0 when the request failed).
    pub status: u16,
    /// Response body (mesh-echo's JSON for answered requests).
    pub body: String,
    /// Seconds the exchange took.
    pub seconds: f64,
    /// `x-envoy-overloaded` response header (empty when absent).
    pub overloaded: String,
}

impl Reply {
    /// mesh-echo's JSON answer.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The `version` of the answering workload.
    pub fn version(&self) -> String {
        self.json()["version"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

const MARK: &str = "@@mesh-e2e@@";

/// Sends one curl run of `url` (curl's `[1-N]` globbing makes N requests
/// on one connection) from `pod` with extra curl `args` (shell-quoted by
/// the caller) and returns every reply.
pub fn curl(b: &dyn Backend, pod: &str, args: &str, url: &str) -> anyhow::Result<Vec<Reply>> {
    let script = format!(
        "curl -s --max-time 10 {args} -w '\\n{MARK} %{{http_code}} %{{time_total}} %header{{x-envoy-overloaded}}\\n' '{url}' || true"
    );
    let out = b.exec(pod, &script)?;
    Ok(parse_replies(&out.stdout))
}

fn parse_replies(text: &str) -> Vec<Reply> {
    let mut replies = Vec::new();
    let mut body = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(MARK) {
            let mut fields = rest.split_whitespace();
            let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let seconds = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
            let overloaded = fields.next().unwrap_or_default().to_string();
            replies.push(Reply {
                status,
                body: std::mem::take(&mut body).trim().to_string(),
                seconds,
                overloaded,
            });
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    replies
}

/// `n` requests to `url` (no `[..]` glob in it) from `pod`.
pub fn requests(
    b: &dyn Backend,
    pod: &str,
    args: &str,
    url: &str,
    n: usize,
) -> anyhow::Result<Vec<Reply>> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let replies = curl(b, pod, args, &format!("{url}{sep}n=[1-{n}]"))?;
    ensure!(
        replies.len() == n,
        "{n} requests to {url} from {pod}: curl reported {}",
        replies.len()
    );
    Ok(replies)
}

/// Counts of each reply's `key(reply)`.
pub fn tally(replies: &[Reply], key: impl Fn(&Reply) -> String) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in replies {
        *counts.entry(key(r)).or_insert(0) += 1;
    }
    counts
}

/// The 99.9 % normal-approximation interval of a binomial share `p` over
/// `n` draws: a traffic split of `p` is wrong when the observed share falls
/// outside it (a correct proxy fails such a check once in a thousand runs).
pub fn binomial_bounds(p: f64, n: usize) -> (f64, f64) {
    let sd = (p * (1.0 - p) / n as f64).sqrt();
    (p - 3.29 * sd, p + 3.29 * sd)
}

/// Checks that `hits` of `n` is a share compatible with `p`.
pub fn check_share(what: &str, hits: usize, n: usize, p: f64) -> anyhow::Result<()> {
    let (lo, hi) = binomial_bounds(p, n);
    let share = hits as f64 / n as f64;
    ensure!(
        (lo..=hi).contains(&share),
        "{what}: {hits} of {n} ({share:.3}), outside the 99.9 % interval [{lo:.3}, {hi:.3}] of {p}"
    );
    Ok(())
}

/// How long convergence may take.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The control plane's newest snapshot version.
pub fn snapshot_version(b: &dyn Backend) -> anyhow::Result<u64> {
    let configz: Value =
        serde_json::from_str(&b.control_plane_get("/debug/configz")?).context("/debug/configz")?;
    Ok(configz["snapshot_version"].as_u64().unwrap_or(0))
}

/// Waits until the control plane has published a snapshot (newer than
/// `after`, when given) holding the configuration (`/debug/configz` has no pending
/// change and `ready(configz)` holds) and every connected proxy serves
/// that snapshot with each xDS type ACKed (`/debug/syncz`). Polls; never
/// sleeps a fixed time.
pub fn converge(
    b: &dyn Backend,
    after: Option<u64>,
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut last = String::new();
    loop {
        match synced(b, after, &ready) {
            Ok(Some(version)) => return Ok(version),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "the mesh did not converge within {CONVERGE_TIMEOUT:?} {last}\n{}",
                unconverged(b)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What keeps the mesh from converging: objects that are not `ok`, the
/// snapshot versions and every proxy not in sync.
fn unconverged(b: &dyn Backend) -> String {
    let get = |path| {
        b.control_plane_get(path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .unwrap_or(Value::Null)
    };
    let configz = get("/debug/configz");
    let syncz = get("/debug/syncz");
    let mut out = format!(
        "configz: snapshot {} pending {}; syncz: snapshot {}\n",
        configz["snapshot_version"], configz["pending"], syncz["snapshot_version"]
    );
    for o in configz["objects"].as_array().into_iter().flatten() {
        if o["status"] != "ok" {
            out.push_str(&format!(
                "  {} {}/{}: {} {}\n",
                o["kind"], o["namespace"], o["name"], o["status"], o["messages"]
            ));
        }
    }
    for p in syncz["proxies"].as_array().into_iter().flatten() {
        if p["snapshot_version"] != syncz["snapshot_version"]
            || p["status"]
                .as_object()
                .is_some_and(|s| s.values().any(|v| v != "SYNCED"))
        {
            out.push_str(&format!(
                "  proxy {} at {}: {}\n",
                p["proxy_id"], p["snapshot_version"], p["status"]
            ));
        }
    }
    out
}

fn synced(
    b: &dyn Backend,
    after: Option<u64>,
    ready: &impl Fn(&Value) -> bool,
) -> anyhow::Result<Option<u64>> {
    let configz: Value =
        serde_json::from_str(&b.control_plane_get("/debug/configz")?).context("/debug/configz")?;
    let published = configz["snapshot_version"].as_u64().unwrap_or(0);
    if configz["pending"] != false || after.is_some_and(|a| published <= a) || !ready(&configz) {
        return Ok(None);
    }
    let syncz: Value =
        serde_json::from_str(&b.control_plane_get("/debug/syncz")?).context("/debug/syncz")?;
    let version = syncz["snapshot_version"].as_u64().unwrap_or(0);
    if version < published {
        return Ok(None);
    }
    let proxies = syncz["proxies"].as_array().cloned().unwrap_or_default();
    if proxies.is_empty() {
        return Ok(None);
    }
    let all = proxies.iter().all(|p| {
        p["snapshot_version"].as_u64() == Some(version)
            && p["status"]
                .as_object()
                .is_some_and(|s| s.values().all(|v| v == "SYNCED" || v == "NOT SENT"))
    });
    Ok(all.then_some(version))
}

/// Whether `/debug/configz` lists `kind namespace/name` with a status
/// starting with `status`.
pub fn has_object(configz: &Value, kind: &str, name: &str, status: &str) -> bool {
    configz["objects"].as_array().is_some_and(|objects| {
        objects.iter().any(|o| {
            o["kind"] == kind
                && o["name"] == name
                && o["status"].as_str().is_some_and(|s| s.starts_with(status))
        })
    })
}

/// Whether `/debug/configz` lists no `kind` object called `name`.
pub fn lacks_object(configz: &Value, kind: &str, name: &str) -> bool {
    !configz["objects"].as_array().is_some_and(|objects| {
        objects
            .iter()
            .any(|o| o["kind"] == kind && o["name"] == name)
    })
}

/// Applies `yaml` as `name` and waits until every object in it is in
/// effect everywhere.
pub fn apply(b: &mut dyn Backend, name: &str, yaml: &str) -> anyhow::Result<()> {
    let objects = objects_of(yaml)?;
    let before = snapshot_version(b)?;
    b.apply(name, yaml)
        .with_context(|| format!("applying {name}"))?;
    converge(b, Some(before), |c| {
        objects
            .iter()
            .all(|(kind, n)| has_object(c, kind, n, "ok") || has_object(c, kind, n, "warning"))
    })
    .with_context(|| format!("after applying {name}"))?;
    Ok(())
}

/// Deletes `name` (holding `yaml`) and waits until its objects are gone
/// everywhere.
pub fn delete(b: &mut dyn Backend, name: &str, yaml: &str) -> anyhow::Result<()> {
    let objects = objects_of(yaml)?;
    let before = snapshot_version(b)?;
    b.delete(name).with_context(|| format!("deleting {name}"))?;
    converge(b, Some(before), |c| {
        objects.iter().all(|(kind, n)| lacks_object(c, kind, n))
    })
    .with_context(|| format!("after deleting {name}"))?;
    Ok(())
}

/// `(kind, name)` of each document.
fn objects_of(yaml: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for doc in mesh_api::object::split_documents(yaml) {
        let v: Value = header_of(doc.text)?;
        if v.is_null() {
            continue;
        }
        out.push((
            v["kind"].as_str().unwrap_or_default().to_string(),
            v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ));
    }
    Ok(out)
}

fn header_of(text: &str) -> anyhow::Result<Value> {
    let loaded = mesh_api::object::load_str("scenario", text);
    match loaded.first() {
        Some(l) if !l.header.kind.is_empty() => Ok(serde_json::json!({
            "kind": l.header.kind,
            "metadata": {"name": l.header.name, "namespace": l.header.namespace},
        })),
        Some(_) => bail!("a scenario document has no kind: {text}"),
        None => Ok(Value::Null),
    }
}

/// The outcome of one scenario.
#[derive(Debug)]
pub struct Outcome {
    /// Its name.
    pub name: &'static str,
    /// How long it took.
    pub elapsed: Duration,
    /// Why it failed.
    pub error: Option<String>,
}

/// Runs `scenarios` in order on `b`, each cleaning up after itself (also
/// when it fails), and returns what happened to each.
pub fn run(b: &mut dyn Backend, scenarios: &[Scenario]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for s in scenarios {
        let started = Instant::now();
        eprintln!("=== scenario {} on {}", s.name, b.name());
        let result = (s.run)(b);
        let cleanup = scenarios::cleanup(b);
        let error = match (result, cleanup) {
            (Ok(()), Ok(())) => None,
            (Err(e), _) => Some(format!("{e:#}")),
            (Ok(()), Err(e)) => Some(format!("cleaning up: {e:#}")),
        };
        let elapsed = started.elapsed();
        match &error {
            None => eprintln!("--- ok   {} ({:.1} s)", s.name, elapsed.as_secs_f64()),
            Some(e) => eprintln!("--- FAIL {} ({:.1} s): {e}", s.name, elapsed.as_secs_f64()),
        }
        outcomes.push(Outcome {
            name: s.name,
            elapsed,
            error,
        });
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_split_on_the_marker() {
        let text = format!(
            "{{\"version\": \"v1\"}}\n{MARK} 200 0.004 \n\n{MARK} 503 0.001 true\n{MARK} 000 0.000 \n"
        );
        let r = parse_replies(&text);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].status, r[0].version().as_str()), (200, "v1"));
        assert_eq!((r[1].status, r[1].overloaded.as_str()), (503, "true"));
        assert_eq!(r[2].status, 0);
    }

    #[test]
    fn shares() {
        assert!(check_share("v2", 100, 1000, 0.1).is_ok());
        assert!(check_share("v2", 150, 1000, 0.1).is_err());
    }
}
