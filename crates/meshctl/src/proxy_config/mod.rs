//! `meshctl proxy-config`: what one proxy is actually running, read from
//! its admin API (`/config_dump`, `/clusters?format=json`, `/logging`) and
//! shown as istioctl shows it: the same subcommands, columns, filters and
//! `-o json|yaml` output of the Envoy resources. The proxy may be our
//! mesh-proxy or a stock Envoy (both print Envoy's JSON), reached through
//! [`crate::admin`], or a saved config dump.
//!
//! ```text
//! TargetArgs -> admin::Target --GET /config_dump--> dump::ConfigDump
//!     -> cluster | listener | route | secret  -> table::Table | JSON/YAML
//! --GET /clusters?format=json--> endpoint -> table::Table | JSON/YAML
//! ```

use std::io::Write;

use anyhow::Context;
use http::Method;
use serde_json::Value;

use crate::admin::{AdminApi, TargetArgs, block_on};

pub mod cluster;
pub mod dump;
pub mod endpoint;
pub mod listener;
pub mod log;
pub mod route;
pub mod secret;
pub mod table;

use cluster::ClusterFilter;
use dump::{ConfigDump, unpacked};
use endpoint::EndpointFilter;
use listener::ListenerFilter;
use route::RouteFilter;

/// `meshctl proxy-config` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// How resources are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table with istioctl's columns.
    #[default]
    Short,
    /// The Envoy resources as JSON.
    Json,
    /// The Envoy resources as YAML.
    Yaml,
}

/// Which proxy, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}

/// The part of the proxy's configuration to show.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Clusters: service, port, subset, direction, type, DestinationRule.
    Cluster {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: ClusterFilter,
    },
    /// Listeners: one row per filter chain, what it matches, where it goes.
    Listener {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: ListenerFilter,
    },
    /// Routes: one row per route of every virtual host, with its VirtualService.
    Route {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: RouteFilter,
    },
    /// Endpoints of every cluster with their health (from /clusters).
    Endpoint {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: EndpointFilter,
    },
    /// Secrets (SDS): certificates, validity, serial numbers.
    Secret {
        #[command(flatten)]
        common: Common,
    },
    /// The bootstrap configuration (JSON unless -o yaml).
    Bootstrap {
        #[command(flatten)]
        common: Common,
    },
    /// Show the proxy's log levels, or change them with --level.
    Log {
        #[command(flatten)]
        target: TargetArgs,
        /// `LEVEL` for every logger, or `name:level[,name:level]`.
        #[arg(long)]
        level: Option<String>,
    },
    /// Clusters, listeners, routes, secrets and endpoints (the whole dump with -o json|yaml).
    All {
        #[command(flatten)]
        common: Common,
    },
}

// === impl Command ===

impl Command {
    fn target(&self) -> &TargetArgs {
        match self {
            Self::Cluster { common, .. }
            | Self::Listener { common, .. }
            | Self::Route { common, .. }
            | Self::Endpoint { common, .. }
            | Self::Secret { common }
            | Self::Bootstrap { common }
            | Self::All { common } => &common.target,
            Self::Log { target, .. } => target,
        }
    }
}

/// Runs `meshctl proxy-config`.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<i32> {
    block_on(async {
        let admin = args.command.target().admin().await?;
        execute(&args.command, admin.as_ref(), out).await
    })??;
    Ok(0)
}

/// Runs one subcommand against any admin API (the Kubernetes backend
/// passes a port-forward).
pub async fn execute(
    command: &Command,
    admin: &dyn AdminApi,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        Command::Cluster { common, filter } => {
            let dump = config_dump(admin).await?;
            let clusters = dump.clusters();
            match common.output {
                Output::Short => write_table(out, &cluster::table(&clusters, filter)),
                format => write_values(out, format, cluster::select(&clusters, filter)),
            }
        }
        Command::Listener { common, filter } => {
            let dump = config_dump(admin).await?;
            let listeners = dump.listeners();
            match common.output {
                Output::Short => write_table(out, &listener::table(&listeners, filter)),
                format => write_values(out, format, listener::select(&listeners, filter)),
            }
        }
        Command::Route { common, filter } => {
            let dump = config_dump(admin).await?;
            let routes = dump.routes();
            match common.output {
                Output::Short => write_table(out, &route::table(&routes, filter)),
                format => write_values(out, format, route::select(&routes, filter)),
            }
        }
        Command::Endpoint { common, filter } => {
            let clusters = clusters_json(admin).await?;
            match common.output {
                Output::Short => write_table(out, &endpoint::table(&clusters, filter)),
                format => write_values(out, format, endpoint::select(&clusters, filter)),
            }
        }
        Command::Secret { common } => {
            let dump = config_dump(admin).await?;
            match common.output {
                Output::Short => write_table(out, &secret::table(&dump)),
                format => write_value(out, format, &section(&dump, "SecretsConfigDump")),
            }
        }
        Command::Bootstrap { common } => {
            let dump = config_dump(admin).await?;
            let format = match common.output {
                Output::Short => Output::Json,
                other => other,
            };
            write_value(out, format, &section(&dump, "BootstrapConfigDump"))
        }
        Command::Log { level, .. } => {
            let mut last = Default::default();
            for request in log::requests(level.as_deref())? {
                last = admin.call(Method::POST, &request).await?;
            }
            out.write_all(&last)?;
            Ok(())
        }
        Command::All { common } => {
            let dump = config_dump(admin).await?;
            if common.output != Output::Short {
                return write_value(out, common.output, &dump.to_value());
            }
            write_table(out, &cluster::table(&dump.clusters(), &Default::default()))?;
            writeln!(out)?;
            write_table(
                out,
                &listener::table(&dump.listeners(), &Default::default()),
            )?;
            writeln!(out)?;
            write_table(out, &route::table(&dump.routes(), &Default::default()))?;
            writeln!(out)?;
            write_table(out, &secret::table(&dump))?;
            // A saved dump has no /clusters; the rest is still worth showing.
            match clusters_json(admin).await {
                Ok(clusters) => {
                    writeln!(out)?;
                    write_table(out, &endpoint::table(&clusters, &Default::default()))
                }
                Err(e) => {
                    eprintln!("warning: endpoints not shown: {e:#}");
                    Ok(())
                }
            }
        }
    }
}

/// `GET /config_dump`, parsed.
pub async fn config_dump(admin: &dyn AdminApi) -> anyhow::Result<ConfigDump> {
    let body = admin.call(Method::GET, "/config_dump").await?;
    ConfigDump::parse(&body)
        .with_context(|| format!("reading /config_dump from {}", admin.describe()))
}

/// `GET /clusters?format=json`, parsed.
pub async fn clusters_json(admin: &dyn AdminApi) -> anyhow::Result<Value> {
    let body = admin.call(Method::GET, "/clusters?format=json").await?;
    serde_json::from_slice(&body)
        .with_context(|| format!("reading /clusters?format=json from {}", admin.describe()))
}

fn section(dump: &ConfigDump, kind: &str) -> Value {
    dump.section(kind).map(unpacked).unwrap_or(Value::Null)
}

fn write_table(out: &mut dyn Write, table: &table::Table) -> anyhow::Result<()> {
    out.write_all(table.render().as_bytes())?;
    Ok(())
}

/// Resources as istioctl's `-o json|yaml` prints them: a list of the
/// messages, without the `Any` wrapper's `@type`.
fn write_values(out: &mut dyn Write, format: Output, values: Vec<&Value>) -> anyhow::Result<()> {
    let list = Value::Array(values.into_iter().map(unpacked).collect());
    write_value(out, format, &list)
}

fn write_value(out: &mut dyn Write, format: Output, value: &Value) -> anyhow::Result<()> {
    match format {
        Output::Yaml => out.write_all(serde_saphyr::to_string(value)?.as_bytes())?,
        Output::Json | Output::Short => {
            writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
