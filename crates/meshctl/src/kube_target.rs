//! Proxies and the control plane inside a Kubernetes cluster, reached the
//! way `istioctl` reaches them: through a port-forward of the API server
//! (`pods/portforward`, kube-rs's WebSocket `v4.channel.k8s.io` stream) to
//! the pod's port, with the admin requests sent over that stream by
//! [`http_over`]. Nothing listens on a local port.
//!
//! ```text
//! POD[.NS] | deploy/NAME --GET pod / list pods by selector--> a Running pod
//!     -> PortForward { pod, port 15000 } : AdminApi (one forward per request)
//! --istio-namespace --list pods app=istiod--> PortForward { each istiod, 15014 }
//! ```
//!
//! Every API failure is turned into a sentence naming the object: a pod
//! that is not there, not running, a forward the caller's RBAC refuses
//! (`create` on `pods/portforward`), an API server that cannot be reached.

use anyhow::{Context, anyhow, bail};
use http::Method;
use hyper::body::Bytes;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::admin::{AdminApi, BoxFuture, http_over};

/// The admin port of a sidecar or gateway (Envoy's, Istio's 15000).
pub const ADMIN_PORT: u16 = mesh_api::wellknown::PROXY_ADMIN_PORT;

/// mesh-control's monitoring port, where `/debug/syncz` is (istiod's 15014).
pub const MONITORING_PORT: u16 = 15014;

/// How long a failed request waits for the port-forward's error channel.
const ERROR_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The label of the control plane's pods (meshctl install's and Istio's).
pub const CONTROL_PLANE_SELECTOR: &str = "app=istiod";

/// The Kubernetes flags shared by `proxy-config` and `proxy-status`.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeTargetArgs {
    /// Read the proxy (and control plane) from the Kubernetes cluster,
    /// through a port-forward, instead of the local mesh (implied by
    /// --kubeconfig or --context).
    #[arg(long, conflicts_with_all = ["admin", "file"])]
    pub use_kube: bool,
    /// The pod's namespace when POD does not say `.namespace` [default: `default`].
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub kube: crate::install::KubeArgs,
}

// === impl KubeTargetArgs ===

impl KubeTargetArgs {
    /// Whether the cluster, not the local mesh, is asked.
    pub fn enabled(&self) -> bool {
        self.use_kube || self.kube.kubeconfig.is_some() || self.kube.context.is_some()
    }

    /// A client for the chosen cluster, with the server's URL for messages.
    pub async fn cluster(&self) -> anyhow::Result<Cluster> {
        use kube::config::{Config, KubeConfigOptions, Kubeconfig};
        let options = KubeConfigOptions {
            context: self.kube.context.clone(),
            ..Default::default()
        };
        let config = match &self.kube.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .with_context(|| format!("kubeconfig {}", path.display()))?
            }
            None if self.kube.context.is_some() => Config::from_kubeconfig(&options).await?,
            None => Config::infer().await.context("finding a kubeconfig")?,
        };
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .with_context(|| format!("a client for the Kubernetes API server at {url}"))?;
        Ok(Cluster { client, url })
    }
}

/// A cluster's API server: the client and its URL, for messages.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: kube::Client,
    /// The API server's URL.
    pub url: String,
}

/// A pod as `POD[.NS]`, `pod/NAME` or `deployment/NAME` (`deploy/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRef {
    /// A pod by name.
    Pod { name: String, namespace: String },
    /// A running pod of a Deployment's selector.
    Deployment { name: String, namespace: String },
}

// === impl PodRef ===

impl PodRef {
    /// Parses istioctl's forms; `namespace` is `-n`, used when the name
    /// carries none.
    pub fn parse(spec: &str, namespace: Option<&str>) -> anyhow::Result<Self> {
        let (kind, rest) = match spec.split_once('/') {
            Some((kind, rest)) => (Some(kind), rest),
            None => (None, spec),
        };
        let (name, ns) = match rest.split_once('.') {
            Some((name, ns)) => (name, ns),
            None => (rest, namespace.unwrap_or("default")),
        };
        if name.is_empty() || ns.is_empty() {
            bail!("{spec:?} is not a pod: expected POD[.NAMESPACE] or deployment/NAME[.NAMESPACE]");
        }
        let (name, namespace) = (name.to_string(), ns.to_string());
        match kind {
            None | Some("pod" | "pods" | "po") => Ok(Self::Pod { name, namespace }),
            Some("deployment" | "deployments" | "deploy") => {
                Ok(Self::Deployment { name, namespace })
            }
            Some(other) => {
                bail!(
                    "{spec:?}: {other:?} is not a kind meshctl resolves (use pod/ or deployment/)"
                )
            }
        }
    }
}

/// A running pod, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPod {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
}

impl std::fmt::Display for FoundPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// The running pod `pod` names.
pub async fn resolve(cluster: &Cluster, pod: &PodRef) -> anyhow::Result<FoundPod> {
    match pod {
        PodRef::Pod { name, namespace } => {
            let api: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
            let found = api.get(name).await.map_err(|e| {
                api_error(cluster, e, &format!("pod {name} in namespace {namespace}"))
            })?;
            running(&found)?;
            Ok(FoundPod {
                name: name.clone(),
                namespace: namespace.clone(),
            })
        }
        PodRef::Deployment { name, namespace } => {
            let what = format!("deployment {name} in namespace {namespace}");
            let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), namespace);
            let deployment = api
                .get(name)
                .await
                .map_err(|e| api_error(cluster, e, &what))?;
            let labels = deployment
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.as_ref())
                .filter(|l| !l.is_empty())
                .with_context(|| format!("{what} has no spec.selector.matchLabels"))?;
            let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let selector = selector.join(",");
            first_running(cluster, namespace, &selector)
                .await?
                .with_context(|| format!("{what} has no running pod (selector {selector})"))
        }
    }
}

/// The first Running pod (by name) matching `selector` in `namespace`.
pub async fn first_running(
    cluster: &Cluster,
    namespace: &str,
    selector: &str,
) -> anyhow::Result<Option<FoundPod>> {
    Ok(running_pods(cluster, namespace, selector)
        .await?
        .into_iter()
        .next())
}

/// The Running pods matching `selector` in `namespace`, by name.
pub async fn running_pods(
    cluster: &Cluster,
    namespace: &str,
    selector: &str,
) -> anyhow::Result<Vec<FoundPod>> {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            api_error(
                cluster,
                e,
                &format!("pods {selector} in namespace {namespace}"),
            )
        })?;
    let mut names: Vec<String> = list
        .items
        .iter()
        .filter(|p| running(p).is_ok())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| FoundPod {
            name,
            namespace: namespace.to_string(),
        })
        .collect())
}

/// The control plane pods to ask: every Running `app=istiod` pod of
/// `namespace`, by name; an error when there is none.
pub async fn control_planes(cluster: &Cluster, namespace: &str) -> anyhow::Result<Vec<FoundPod>> {
    let pods = running_pods(cluster, namespace, CONTROL_PLANE_SELECTOR).await?;
    if pods.is_empty() {
        bail!(
            "no running control plane pod (label {CONTROL_PLANE_SELECTOR}) in namespace {namespace}: is the mesh installed there? (--istio-namespace)"
        );
    }
    Ok(pods)
}

/// An error unless the pod's phase is Running (and it is not being deleted).
fn running(pod: &Pod) -> anyhow::Result<()> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Unknown");
    if phase != "Running" {
        bail!("pod {name} in namespace {namespace} is {phase}, not Running");
    }
    if pod.metadata.deletion_timestamp.is_some() {
        bail!("pod {name} in namespace {namespace} is terminating");
    }
    Ok(())
}

/// A sentence for a failed API call about `what`.
fn api_error(cluster: &Cluster, e: kube::Error, what: &str) -> anyhow::Error {
    match e {
        kube::Error::Api(status) if status.code == 404 => anyhow!("{what}: not found"),
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => anyhow!(
            "{what}: access denied by the API server ({}): {}",
            status.code,
            status.message
        ),
        kube::Error::Api(status) => anyhow!("{what}: {} {}", status.code, status.message),
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => anyhow!(
            "{what}: cannot reach the Kubernetes API server at {}: {} (check --kubeconfig/--context)",
            cluster.url,
            error_chain(&e)
        ),
        other => anyhow!(
            "{what}: the Kubernetes API server at {}: {}",
            cluster.url,
            error_chain(&other)
        ),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// An admin-style HTTP endpoint of a pod, reached through a port-forward
/// per request (a proxy's admin, mesh-control's monitoring port).
pub struct PortForward {
    cluster: Cluster,
    pod: FoundPod,
    port: u16,
}

// === impl PortForward ===

impl PortForward {
    /// `port` of `pod`.
    pub fn new(cluster: Cluster, pod: FoundPod, port: u16) -> Self {
        Self { cluster, pod, port }
    }

    /// The pod forwarded to.
    pub fn pod(&self) -> &FoundPod {
        &self.pod
    }

    async fn request(&self, method: Method, path_and_query: &str) -> anyhow::Result<Bytes> {
        let FoundPod { name, namespace } = &self.pod;
        let port = self.port;
        let api: Api<Pod> = Api::namespaced(self.cluster.client.clone(), namespace);
        let mut forward = api.portforward(name, &[port]).await.map_err(|e| match e {
            kube::Error::Api(status) if status.code == 403 => anyhow!(
                "port-forward to pod {name} in namespace {namespace} refused: you need RBAC permission to create pods/portforward in namespace {namespace} ({})",
                status.message
            ),
            e => api_error(
                &self.cluster,
                e,
                &format!("port-forward to pod {name} in namespace {namespace}"),
            ),
        })?;
        let stream = forward
            .take_stream(port)
            .context("the port-forward has no stream for the port")?;
        let errors = forward
            .take_error(port)
            .context("the port-forward has no error channel for the port")?;
        let authority = format!("{name}.{namespace}:{port}");
        // The API server reports a port nothing listens on (or a pod that
        // went away) on the error channel, and the data stream just ends.
        let refused = |message: String| {
            anyhow!(
                "port-forward to pod {name} in namespace {namespace} port {port}: {}",
                message.trim()
            )
        };
        let mut errors = std::pin::pin!(errors);
        let mut http = std::pin::pin!(http_over(
            stream,
            &authority,
            method.clone(),
            path_and_query
        ));
        let result = tokio::select! {
            result = &mut http => match result {
                // The stream may end before the error frame is read: the
                // API server's reason beats hyper's "connection closed".
                Err(e) => match tokio::time::timeout(ERROR_GRACE, errors).await {
                    Ok(Some(message)) => Err(refused(message)),
                    _ => Err(e),
                },
                ok => ok,
            },
            message = &mut errors => match message {
                Some(message) => Err(refused(message)),
                // No error will come (the forward's task ended): the
                // request says how it went.
                None => http.await,
            },
        };
        forward.abort();
        result
    }
}

impl AdminApi for PortForward {
    fn call<'a>(
        &'a self,
        method: Method,
        path_and_query: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Bytes>> {
        Box::pin(async move {
            tokio::time::timeout(
                crate::admin::REQUEST_TIMEOUT,
                self.request(method.clone(), path_and_query),
            )
            .await
            .with_context(|| {
                format!(
                    "{method} {path_and_query} on {}: no answer in {:?}",
                    self.describe(),
                    crate::admin::REQUEST_TIMEOUT
                )
            })?
        })
    }

    fn describe(&self) -> String {
        format!(
            "pod {} in namespace {} port {} (port-forward)",
            self.pod.name, self.pod.namespace, self.port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_forms_follow_istioctl() {
        let pod = |n: &str, ns: &str| PodRef::Pod {
            name: n.into(),
            namespace: ns.into(),
        };
        assert_eq!(PodRef::parse("a", None).unwrap(), pod("a", "default"));
        assert_eq!(PodRef::parse("a", Some("x")).unwrap(), pod("a", "x"));
        assert_eq!(PodRef::parse("a.y", Some("x")).unwrap(), pod("a", "y"));
        assert_eq!(PodRef::parse("pod/a.y", None).unwrap(), pod("a", "y"));
        assert_eq!(
            PodRef::parse("deploy/web", Some("x")).unwrap(),
            PodRef::Deployment {
                name: "web".into(),
                namespace: "x".into()
            }
        );
        let err = PodRef::parse("svc/web", None).unwrap_err().to_string();
        assert!(err.contains("\"svc\""), "{err}");
        assert!(PodRef::parse(".ns", None).is_err());
    }
}
