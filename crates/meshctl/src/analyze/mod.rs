//! `meshctl analyze`: cross-object checks over a set of files, reported with
//! istioctl's message codes, levels, output formats and exit codes so that
//! scripts and habits built around `istioctl analyze` keep working.
//!
//! Flow: load every document (schema/validation problems become IST0106) →
//! build an [`Index`] of what the files declare (services, gateways,
//! destination rules, workloads) → run each check, a pure function over the
//! index → filter by `--output-threshold`, print, and exit 79 when any
//! message reaches `--failure-threshold`.

use std::fmt;
use std::io::Write;

use mesh_api::object::Loaded;
use serde::Serialize;

use crate::{EXIT_ANALYZE_ISSUES, FileArgs, OutputFormat};

pub mod cluster;
mod destination_rule;
mod gateway;
mod index;
mod sidecar;
mod virtual_service;

pub use index::Index;

// === Messages ===

/// Message level, ordered from least to most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
pub enum Level {
    /// Informational.
    Info,
    /// Suboptimal but working configuration.
    Warning,
    /// Configuration that does not do what it says.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "Info",
            Self::Warning => "Warning",
            Self::Error => "Error",
        })
    }
}

/// An analysis message type: Istio's code, name and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Code {
    /// `IST0101` and so on.
    pub code: &'static str,
    /// Istio's message name, e.g. `ReferencedResourceNotFound`.
    pub name: &'static str,
    /// Default level.
    pub level: Level,
}

macro_rules! codes {
    ($($ident:ident = $code:literal, $name:literal, $level:ident;)*) => {
        $(
            #[doc = concat!("`", $code, "` ", $name)]
            pub const $ident: Code = Code { code: $code, name: $name, level: Level::$level };
        )*
        /// Every message type `meshctl analyze` can emit.
        pub const ALL_CODES: &[Code] = &[$($ident),*];
    };
}

codes! {
    REFERENCED_RESOURCE_NOT_FOUND = "IST0101", "ReferencedResourceNotFound", Error;
    SCHEMA_VALIDATION_ERROR = "IST0106", "SchemaValidationError", Error;
    CONFLICTING_MESH_GATEWAY_VS_HOSTS = "IST0109", "ConflictingMeshGatewayVirtualServiceHosts", Error;
    CONFLICTING_SIDECAR_WORKLOAD_SELECTORS = "IST0110", "ConflictingSidecarWorkloadSelectors", Error;
    MULTIPLE_SIDECARS_WITHOUT_SELECTORS = "IST0111", "MultipleSidecarsWithoutWorkloadSelectors", Error;
    VS_DESTINATION_PORT_SELECTOR_REQUIRED = "IST0112", "VirtualServiceDestinationPortSelectorRequired", Error;
    NO_SERVER_CERT_VERIFICATION_DESTINATION = "IST0128", "NoServerCertificateVerificationDestinationLevel", Error;
    NO_SERVER_CERT_VERIFICATION_PORT = "IST0129", "NoServerCertificateVerificationPortLevel", Error;
    VS_UNREACHABLE_RULE = "IST0130", "VirtualServiceUnreachableRule", Warning;
    VS_INEFFECTIVE_MATCH = "IST0131", "VirtualServiceIneffectiveMatch", Info;
    VS_HOST_NOT_FOUND_IN_GATEWAY = "IST0132", "VirtualServiceHostNotFoundInGateway", Warning;
    CONFLICTING_GATEWAYS = "IST0145", "ConflictingGateways", Error;
    DR_SUBSET_SELECTS_NO_PODS = "IST0173", "DestinationRuleSubsetNotSelectPods", Error;
    DR_HOST_NOT_FOUND = "IST0174", "DestinationRuleHostNotFound", Warning;
}

/// The object a message is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Kind, e.g. `VirtualService`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// File the object came from.
    pub file: String,
    /// Line of the object in that file.
    pub line: usize,
}

impl Origin {
    /// The origin of a loaded object.
    pub fn of(l: &Loaded) -> Self {
        Self {
            kind: l.header.kind.clone(),
            namespace: l.header.namespace.clone(),
            name: l.header.name.clone(),
            file: l.source.file.clone(),
            line: l.source.line,
        }
    }

    /// `Kind namespace/name`.
    pub fn object(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One analysis finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Message type.
    pub code: Code,
    /// The object it is about.
    pub origin: Origin,
    /// What is wrong.
    pub text: String,
}

impl Message {
    /// A message of type `code` about `origin`.
    pub fn new(code: Code, origin: &Origin, text: impl Into<String>) -> Self {
        Self {
            code,
            origin: origin.clone(),
            text: text.into(),
        }
    }

    /// The level this message is reported at.
    pub fn level(&self) -> Level {
        self.code.level
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] ({} {}:{}) {}",
            self.level(),
            self.code.code,
            self.origin.object(),
            self.origin.file,
            self.origin.line,
            self.text
        )
    }
}

/// The JSON/YAML shape istioctl prints with `-o json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rendered<'a> {
    code: &'a str,
    documentation_url: String,
    level: Level,
    message: &'a str,
    origin: String,
    reference: String,
}

// === Command ===

/// Arguments of `meshctl analyze`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories of YAML to analyze (`-` reads stdin); without
    /// any, the live cluster is analyzed.
    #[arg(short = 'f', long = "filename", value_name = "PATH", num_args = 1..)]
    files: Vec<std::path::PathBuf>,
    /// Also read the live cluster when files are given (istioctl's
    /// `--use-kube`); without files the cluster is always read.
    #[arg(long)]
    use_kube: bool,
    /// The cluster's namespace to analyze [default: `default`].
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Analyze every namespace of the cluster.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[command(flatten)]
    kube: crate::install::KubeArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Log)]
    output: OutputFormat,
    /// Lowest level of message that makes the command exit 79.
    #[arg(long, value_enum, default_value_t = Level::Error)]
    failure_threshold: Level,
    /// Lowest level of message to print.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    output_threshold: Level,
}

/// Runs every check over the loaded objects and returns the messages,
/// sorted by file, line and code.
pub fn analyze(loaded: &[Loaded]) -> Vec<Message> {
    let mut messages = Vec::new();
    for l in loaded
        .iter()
        .filter(|l| l.is_istio() || l.header.kind.is_empty())
    {
        let origin = Origin::of(l);
        for d in l.report.errors() {
            let text = if d.path.is_empty() {
                d.message.clone()
            } else {
                format!("Schema validation error: {}: {}", d.path, d.message)
            };
            messages.push(Message::new(SCHEMA_VALIDATION_ERROR, &origin, text));
        }
    }
    let index = Index::new(loaded);
    for check in CHECKS {
        check(&index, &mut messages);
    }
    messages.sort_by(|a, b| {
        (&a.origin.file, a.origin.line, a.code.code).cmp(&(
            &b.origin.file,
            b.origin.line,
            b.code.code,
        ))
    });
    messages.dedup();
    messages
}

/// A cross-object check.
type Check = fn(&Index<'_>, &mut Vec<Message>);

/// Every check, in the order they run.
const CHECKS: &[Check] = &[
    virtual_service::references,
    virtual_service::conflicting_mesh_hosts,
    virtual_service::destination_ports,
    virtual_service::unreachable_rules,
    virtual_service::hosts_in_gateways,
    gateway::conflicting_gateways,
    destination_rule::server_verification,
    destination_rule::hosts_and_subsets,
    sidecar::selectors,
];

/// Runs the command.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<i32> {
    let mut loaded = crate::validate::load_all(&FileArgs {
        files: args.files.clone(),
    })?;
    if args.files.is_empty() || args.use_kube {
        let namespace = (!args.all_namespaces).then(|| {
            args.namespace
                .clone()
                .unwrap_or_else(|| "default".to_string())
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        loaded.extend(runtime.block_on(async {
            let client = args.kube.client().await?;
            cluster::load(client, namespace.as_deref()).await
        })?);
    }
    let messages = analyze(&loaded);
    let shown: Vec<&Message> = messages
        .iter()
        .filter(|m| m.level() >= args.output_threshold)
        .collect();
    match args.output {
        OutputFormat::Log => {
            if shown.is_empty() {
                writeln!(
                    out,
                    "\u{2714} No validation issues found when analyzing {} objects.",
                    loaded.len()
                )?;
            }
            for m in &shown {
                writeln!(out, "{m}")?;
            }
        }
        OutputFormat::Json | OutputFormat::Yaml => {
            let rendered: Vec<Rendered<'_>> = shown
                .iter()
                .map(|m| Rendered {
                    code: m.code.code,
                    documentation_url: format!(
                        "https://istio.io/latest/docs/reference/config/analysis/{}/",
                        m.code.code.to_ascii_lowercase()
                    ),
                    level: m.level(),
                    message: &m.text,
                    origin: m.origin.object(),
                    reference: format!("{}:{}", m.origin.file, m.origin.line),
                })
                .collect();
            if args.output == OutputFormat::Json {
                serde_json::to_writer_pretty(&mut *out, &rendered)?;
                writeln!(out)?;
            } else {
                out.write_all(serde_saphyr::to_string(&rendered)?.as_bytes())?;
            }
        }
    }
    let failed = messages.iter().any(|m| m.level() >= args.failure_threshold);
    Ok(if failed { EXIT_ANALYZE_ISSUES } else { 0 })
}
