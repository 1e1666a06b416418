//! `meshctl kube-inject`: the injection webhook's code run offline over a
//! manifest (istioctl's `kube-inject`). Pods and the pod templates of
//! Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs,
//! also inside `List`s, get the proxy; everything else is printed
//! unchanged. Notes (skipped workloads, annotation warnings) go to stderr.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use mesh_control::inject::Settings;
use mesh_control::inject::workload::inject_documents;

/// Arguments of `meshctl kube-inject`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest to inject (`-` reads stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Write the result here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Namespace of objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The proxy image.
    #[arg(long, default_value = mesh_control::inject::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// The control plane's namespace.
    #[arg(long, default_value = mesh_api::wellknown::DEFAULT_ROOT_NAMESPACE)]
    pub control_plane_namespace: String,
    /// The control plane revision the pods belong to.
    #[arg(long, default_value = "default")]
    pub revision: String,
    /// Inject the proxy as a native sidecar (Kubernetes 1.29+); `false`
    /// makes it a regular container.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecars: bool,
    /// MeshConfig YAML (as in the `istio` ConfigMap's `mesh` key) whose
    /// `defaultConfig` the pods' proxies start from.
    #[arg(
        long = "meshConfigFile",
        alias = "mesh-config-file",
        value_name = "FILE"
    )]
    pub mesh_config_file: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<i32> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let mut settings = Settings::new(args.proxy_image.clone(), &args.control_plane_namespace);
    settings.revision = args.revision.clone();
    settings.native_sidecars = args.native_sidecars;
    if let Some(path) = &args.mesh_config_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let (mesh, report) = mesh_api::mesh_config::parse_mesh_config(&text);
        let Some(mesh) = mesh.filter(|_| !report.has_errors()) else {
            let errors: Vec<String> = report
                .errors()
                .map(|d| format!("{}: {}", d.path, d.message))
                .collect();
            anyhow::bail!("{}: {}", path.display(), errors.join("; "));
        };
        settings.prometheus_merge = mesh.enable_prometheus_merge.unwrap_or(true);
        settings.default_config = mesh.default_config.unwrap_or_default();
    }
    let docs = inject_documents(&text, &args.namespace, &settings)
        .with_context(|| format!("{}", args.file.display()))?;
    let mut rendered = String::new();
    for (i, doc) in docs.iter().enumerate() {
        for note in &doc.notes {
            eprintln!("Warning: {note}");
        }
        if i > 0 {
            rendered.push_str("---\n");
        }
        rendered.push_str(&serde_saphyr::to_string(&doc.value)?);
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, rendered).with_context(|| format!("writing {}", path.display()))?
        }
        None => out.write_all(rendered.as_bytes())?,
    }
    Ok(0)
}
