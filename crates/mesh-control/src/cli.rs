//! The `mesh-control` process: the config source (a directory, or the
//! Kubernetes API with `--kubernetes`), the ADS server,
//! the secure port (embedded CA + ADS over TLS, with `--ca-dir`) and the
//! monitoring endpoints, wired together and shut down together on SIGTERM
//! or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::routing::get;
use clap::Parser;
use mesh_ca::auth::kube::{TokenReviewAuthenticator, TokenReviewConfig};
use tokio::sync::watch;

use crate::ads::metrics::Metrics;
use crate::ads::{self, AdsServer, DEFAULT_PUSH_CONCURRENCY};
use crate::jwks::{JwksResolver, JwksSettings};
use crate::secure::{Secure, SecureConfig};
use crate::snapshot::Snapshot;
use crate::source::{ConfigStatus, DirSource, DirSourceConfig, KubeSource, KubeSourceConfig};

/// Command-line arguments of `mesh-control`.
#[derive(Debug, Parser)]
#[command(
    name = "mesh-control",
    version,
    about = "Control plane: Istio configuration to Envoy xDS over ADS"
)]
pub struct Args {
    /// Directory of Istio and Kubernetes YAML to serve (watched for
    /// changes); repeat it to read several directories as one, a later
    /// directory's object overriding the same kind/namespace/name.
    #[arg(
        long,
        env = "MESH_CONFIG_DIR",
        required_unless_present_any = ["issue_token", "kubernetes"],
        conflicts_with = "kubernetes"
    )]
    pub config_dir: Vec<PathBuf>,
    /// Read configuration from the Kubernetes API (in-cluster config or
    /// KUBECONFIG) instead of a directory; with `--ca-dir` the CA's root
    /// lives in a Secret and workloads prove themselves with TokenReview.
    #[arg(long, env = "MESH_KUBERNETES")]
    pub kubernetes: bool,
    /// The control plane namespace (`--kubernetes`).
    #[arg(long, env = "POD_NAMESPACE", default_value = mesh_api::wellknown::DEFAULT_ROOT_NAMESPACE)]
    pub namespace: String,
    /// The control plane revision: Istio objects labelled `istio.io/rev`
    /// for another revision are ignored; MeshConfig is ConfigMap
    /// `istio-<revision>` unless it is `default`.
    #[arg(long, env = "REVISION", default_value = "default")]
    pub revision: String,
    /// Audience ServiceAccount tokens must carry for the CA (`--kubernetes`).
    #[arg(long, default_value = mesh_ca::auth::local::DEFAULT_AUDIENCE)]
    pub token_audience: String,
    /// Address of the plaintext ADS server (local mode only).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_address: SocketAddr,
    /// Address of the monitoring server (/metrics, /debug/syncz, /debug/configz, /ready).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub monitoring_address: SocketAddr,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
    /// Istio's `cacerts` directory (generated with a self-signed root on
    /// first start): enables the embedded CA and ADS over TLS on
    /// `--secure-address`.
    #[arg(long, env = "MESH_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Address of the secure port (CA + ADS over TLS), with `--ca-dir`.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub secure_address: SocketAddr,
    /// Extra DNS name or IP address for the secure port's certificate
    /// (repeatable; istiod's names are always in it).
    #[arg(long = "secure-name", value_name = "NAME")]
    pub secure_names: Vec<String>,
    /// Trust domain of the identities the CA signs.
    #[arg(long, default_value = mesh_api::wellknown::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Print a local-mode CA token proving this SPIFFE id (signed with the
    /// key in `--ca-dir`) and exit.
    #[arg(long, value_name = "SPIFFE_ID", requires = "ca_dir")]
    pub issue_token: Option<String>,
    /// Lifetime of `--issue-token`'s token.
    #[arg(long, default_value = "24h")]
    pub token_ttl: mesh_api::Duration,
    /// Address of the sidecar injection webhook (HTTPS, `POST /inject`;
    /// Istio's 15017), with `--ca-dir`.
    #[arg(long, env = "MESH_WEBHOOK_ADDRESS", requires = "ca_dir")]
    pub webhook_address: Option<SocketAddr>,
    /// The proxy image the webhook injects.
    #[arg(long, env = "MESH_PROXY_IMAGE", default_value = crate::inject::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// The MutatingWebhookConfiguration whose `caBundle` gets the mesh
    /// root (`--kubernetes`).
    #[arg(long, env = "MESH_WEBHOOK_CONFIG")]
    pub webhook_config: Option<String>,
}

// === impl Args ===

impl Args {
    fn secure_config(&self) -> Option<SecureConfig> {
        self.ca_dir.as_ref().map(|dir| SecureConfig {
            ca_dir: dir.clone(),
            trust_domain: self.trust_domain.clone(),
            extra_names: self.secure_names.clone(),
        })
    }
}

/// `--issue-token`: prints the token.
fn issue_token(args: &Args, identity: &str) -> anyhow::Result<()> {
    let config = args
        .secure_config()
        .ok_or_else(|| anyhow::anyhow!("--issue-token needs --ca-dir"))?;
    let identity: mesh_api::SpiffeId = identity
        .parse()
        .map_err(|e| anyhow::anyhow!("--issue-token {identity:?}: {e}"))?;
    let secure = Secure::load(&config)?;
    println!(
        "{}",
        secure.issue_token(&identity, args.token_ttl.as_std())?
    );
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless; ignore it.
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn shutdown_signal(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the control plane until SIGTERM/Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    if let Some(identity) = &args.issue_token {
        return issue_token(&args, identity);
    }
    let kube = kube_client(&args).await?;
    // Load the CA before anything listens: a broken CA directory is fatal.
    let secure = match args.secure_config() {
        Some(config) => Some((
            load_secure(&args, &config, kube.as_ref()).await?,
            crate::secure::bind(args.secure_address).await?,
        )),
        None => None,
    };
    // RequestAuthentication jwksUris are fetched here and sent inline.
    let jwks = JwksResolver::new(JwksSettings::default());
    let root_cert = secure.as_ref().map(|(s, _)| s.root_pem());
    let webhook = match (args.webhook_address, &secure) {
        (Some(address), Some((s, _))) => Some((
            webhook_options(&args, address),
            s.webhook_tls(),
            s.root_pem(),
        )),
        _ => None,
    };
    let webhook_kube = kube.clone();
    let (source, snapshot) = build_source(&args, kube, root_cert, jwks.clone()).await?;
    let status: Arc<Mutex<ConfigStatus>> = source.status_handle();
    tracing::info!(
        dirs = ?args.config_dir,
        kubernetes = args.kubernetes,
        version = snapshot.version,
        services = snapshot.registry.services.len(),
        "loaded configuration"
    );
    let (snapshots_tx, snapshots_rx) = watch::channel(Arc::new(snapshot));
    let (stop_tx, stop_rx) = watch::channel(false);

    let source_task = tokio::spawn(source.run(snapshots_tx, shutdown_signal(stop_rx.clone())));
    let jwks_task = tokio::spawn(jwks.run(shutdown_signal(stop_rx.clone())));
    let mut metrics = Metrics::new();
    let ca_metrics = crate::secure::register_metrics(metrics.registry_mut());
    metrics
        .registry_mut()
        .register_collector(Box::new(crate::source::publish::ConfigMetrics(
            status.clone(),
        )));
    let webhook_task = webhook.map(|(options, tls, root)| {
        let injection = crate::inject::webhook::Metrics::register(metrics.registry_mut());
        let snapshots = snapshots_rx.clone();
        let stop = shutdown_signal(stop_rx.clone());
        tokio::spawn(async move {
            let served = crate::inject::webhook::run(
                options,
                tls,
                root,
                snapshots,
                webhook_kube,
                injection,
                stop,
            );
            if let Err(e) = served.await {
                tracing::error!("{e:#}");
            }
        })
    });
    let server = AdsServer::with_options(snapshots_rx, Arc::new(metrics), DEFAULT_PUSH_CONCURRENCY);
    let secure_task = secure.map(|(secure, listener)| {
        tracing::info!(address = %args.secure_address, "serving the CA and xDS over TLS");
        let ads = server.clone();
        let stop = shutdown_signal(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = secure.serve(listener, ads, ca_metrics, stop).await {
                tracing::error!("{e:#}");
            }
        })
    });

    let configz = get(move || {
        let status = status.lock().map(|s| s.clone()).unwrap_or_default();
        async move { Json(status) }
    });
    let monitoring = server.debug_router().route("/debug/configz", configz);
    let listener = tokio::net::TcpListener::bind(args.monitoring_address)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot bind monitoring address {}: {e}",
                args.monitoring_address
            )
        })?;
    let monitoring_stop = shutdown_signal(stop_rx.clone());
    let monitoring_task = tokio::spawn(async move {
        axum::serve(listener, monitoring)
            .with_graceful_shutdown(monitoring_stop)
            .await
    });
    tracing::info!(xds = %args.xds_address, monitoring = %args.monitoring_address, "serving");

    let xds = ads::serve(args.xds_address, server, shutdown_signal(stop_rx.clone()));
    tokio::pin!(xds);
    let result = tokio::select! {
        r = &mut xds => r.map_err(anyhow::Error::from),
        _ = terminate() => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            xds.await.map_err(anyhow::Error::from)
        }
    };
    let _ = stop_tx.send(true);
    let _ = source_task.await;
    let _ = jwks_task.await;
    let _ = monitoring_task.await;
    if let Some(task) = secure_task {
        let _ = task.await;
    }
    if let Some(task) = webhook_task {
        let _ = task.await;
    }
    result
}

/// The injector's settings: the proxy image, this control plane's
/// service (`istiod`, or `istiod-<revision>`) for xDS and the CA.
fn webhook_options(args: &Args, address: SocketAddr) -> crate::inject::webhook::WebhookOptions {
    let mut settings = crate::inject::Settings::new(args.proxy_image.clone(), &args.namespace);
    settings.revision = args.revision.clone();
    settings.trust_domain = args.trust_domain.clone();
    if args.revision != "default" {
        let host = format!("istiod-{}.{}.svc", args.revision, args.namespace);
        settings.xds_address = format!("https://{host}:{}", mesh_api::wellknown::XDS_TLS_PORT);
        settings.ca_address = settings.xds_address.clone();
    }
    crate::inject::webhook::WebhookOptions {
        address,
        settings,
        config_name: args.webhook_config.clone(),
    }
}

/// Where configuration comes from (boxed: both are large and moved once).
enum ConfigSource {
    Dir(Box<DirSource>),
    Kube(Box<KubeSource>),
}

impl ConfigSource {
    fn status_handle(&self) -> Arc<Mutex<ConfigStatus>> {
        match self {
            Self::Dir(s) => s.status_handle(),
            Self::Kube(s) => s.status_handle(),
        }
    }

    async fn run(self, tx: watch::Sender<Arc<Snapshot>>, shutdown: impl Future<Output = ()>) {
        match self {
            Self::Dir(s) => s.run(tx, shutdown).await,
            Self::Kube(s) => s.run(tx, shutdown).await,
        }
    }
}

/// The Kubernetes client with `--kubernetes`.
async fn kube_client(args: &Args) -> anyhow::Result<Option<kube::Client>> {
    if !args.kubernetes {
        return Ok(None);
    }
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("--kubernetes: no in-cluster config or KUBECONFIG: {e}"))?;
    Ok(Some(client))
}

/// Loads the CA (what `run` does with `--ca-dir`). In a cluster its files
/// first come from a Secret, and workloads prove who they are with
/// TokenReview.
pub async fn load_secure(
    args: &Args,
    config: &SecureConfig,
    kube: Option<&kube::Client>,
) -> anyhow::Result<Secure> {
    let Some(client) = kube else {
        return Secure::load(config);
    };
    let from = crate::source::kube::ca::prepare_ca_dir(
        client.clone(),
        &args.namespace,
        &crate::source::kube::default_identity(),
        &config.ca_dir,
        &args.trust_domain,
        Default::default(),
    )
    .await?;
    tracing::info!(?from, namespace = %args.namespace, "CA root from the cluster");
    let mut secure = Secure::load(config)?;
    let reviews = TokenReviewAuthenticator::new(
        client.clone(),
        TokenReviewConfig {
            trust_domain: args.trust_domain.clone(),
            audiences: vec![args.token_audience.clone()],
            ..TokenReviewConfig::default()
        },
    );
    secure.set_authenticators(vec![Arc::new(reviews)]);
    Ok(secure)
}

/// The directory source, or the Kubernetes one with `--kubernetes`, with
/// its first snapshot.
async fn build_source(
    args: &Args,
    kube: Option<kube::Client>,
    root_cert: Option<String>,
    jwks: JwksResolver,
) -> anyhow::Result<(ConfigSource, Snapshot)> {
    if let Some(client) = kube {
        let mut config = KubeSourceConfig::new(
            &args.namespace,
            &args.revision,
            &crate::source::kube::default_identity(),
        );
        config.root_cert = root_cert;
        let (mut source, _) = KubeSource::start(client, config).await;
        let snapshot = source.with_jwks(jwks);
        return Ok((ConfigSource::Kube(Box::new(source)), snapshot));
    }
    let mut dirs = args.config_dir.iter();
    let first = dirs
        .next()
        .ok_or_else(|| anyhow::anyhow!("--config-dir is required"))?;
    let config = dirs.fold(DirSourceConfig::new(first), |c, d| c.with_dir(d));
    let (mut source, _) = DirSource::load(config)
        .map_err(|e| anyhow::anyhow!("cannot read the configuration: {e}"))?;
    let snapshot = source.with_jwks(jwks);
    Ok((ConfigSource::Dir(Box::new(source)), snapshot))
}

async fn terminate() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
