//! The workload identity: the proxy's own SVID, obtained from the mesh CA
//! with the workload's token and kept current by mesh-ca's certificate
//! client (key generated in memory, renewed at half life, retried with
//! backoff while the CA is away). It is what the SDS names `default` (the
//! certificate) and `ROOTCA` (the mesh roots) resolve to when a config
//! asks for them from the workload SDS source (Istio's `sds-grpc`).
//!
//! Flags and environment follow istio-agent: `CA_ADDR`, the root
//! certificate at `./var/run/secrets/istio/root-cert.pem`, the token at
//! `./var/run/secrets/tokens/istio-token`; the identity defaults to
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use mesh_api::spiffe::SpiffeId;
use mesh_api::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use mesh_ca::TrustBundle;
use mesh_ca::client::{Backoff, CertClient, CertClientConfig, CertWatch, TokenFile};
use mesh_ca::service::CaClient;

/// Flags of the workload identity.
#[derive(Clone, Debug, clap::Args)]
pub struct IdentityArgs {
    /// The mesh CA (`https://host:port`, e.g. mesh-control's 15012); no
    /// CA, no workload certificate.
    #[arg(long, env = "CA_ADDR")]
    pub ca_address: Option<String>,
    /// PEM roots of the mesh: trusted for the CA's serving certificate,
    /// and the trust bundle served as `ROOTCA`.
    #[arg(long, default_value = "./var/run/secrets/istio/root-cert.pem")]
    pub ca_root_cert: PathBuf,
    /// DNS name or address in the CA's serving certificate [default: the
    /// host of --ca-address].
    #[arg(long)]
    pub ca_server_name: Option<String>,
    /// The workload token, re-read for every certificate request.
    #[arg(
        long,
        env = "MESH_TOKEN_FILE",
        default_value = "./var/run/secrets/tokens/istio-token"
    )]
    pub token_file: PathBuf,
    /// The SPIFFE id to request [default: from the trust domain, the pod
    /// namespace and the service account].
    #[arg(long)]
    pub identity: Option<String>,
    /// Trust domain of the default identity.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Requested certificate lifetime [default: the CA's].
    #[arg(long)]
    pub cert_ttl: Option<mesh_api::Duration>,
}

/// A started workload identity: the certificate kept current by the
/// client, and the mesh roots it trusts.
#[derive(Clone, Debug)]
pub struct Started {
    /// The current SVID (none until the CA first answers).
    pub certs: CertWatch,
    /// The mesh roots from `--ca-root-cert` (what `ROOTCA` serves).
    pub roots: TrustBundle,
}

// === impl Started ===

impl Started {
    /// The workload's SDS secrets as an agent would serve them, for the
    /// admin API: `default` once the CA has answered, and `ROOTCA`.
    pub fn secrets(&self) -> Vec<Secret> {
        let leaf = self
            .certs
            .current()
            .and_then(|tls| mesh_ca::sds::workload_secret(&tls, &self.roots));
        leaf.into_iter()
            .chain([mesh_ca::sds::root_secret(&self.roots)])
            .collect()
    }

    /// Whether the workload certificate has been obtained.
    pub fn has_certificate(&self) -> bool {
        self.certs.current().is_some()
    }
}

/// Starts the certificate client when a CA is configured; `namespace` and
/// `service_account` make the default identity.
pub fn start(
    args: &IdentityArgs,
    namespace: Option<&str>,
    service_account: Option<&str>,
) -> anyhow::Result<Option<Started>> {
    let Some(address) = &args.ca_address else {
        return Ok(None);
    };
    let identity: SpiffeId = match &args.identity {
        Some(id) => id.parse().with_context(|| format!("--identity {id:?}"))?,
        None => format!(
            "spiffe://{}/ns/{}/sa/{}",
            args.trust_domain,
            namespace.unwrap_or("default"),
            service_account.unwrap_or("default")
        )
        .parse()
        .context("the default identity (set --identity, POD_NAMESPACE or SERVICE_ACCOUNT)")?,
    };
    let pem = std::fs::read_to_string(&args.ca_root_cert).with_context(|| {
        format!(
            "reading the mesh root certificate --ca-root-cert {}",
            args.ca_root_cert.display()
        )
    })?;
    let bundle = TrustBundle::from_pem(&pem)
        .with_context(|| format!("--ca-root-cert {}", args.ca_root_cert.display()))?;
    let server_name = match &args.ca_server_name {
        Some(n) => n.clone(),
        None => host_of(address)
            .with_context(|| format!("--ca-address {address:?}: no host; give --ca-server-name"))?,
    };
    let ca = CaClient::new(address, &bundle, &server_name)
        .with_context(|| format!("--ca-address {address:?}"))?;
    let (client, watch) = CertClient::new(CertClientConfig {
        identity: identity.clone(),
        ca,
        token: Arc::new(TokenFile(args.token_file.clone())),
        bundle: bundle.clone(),
        ttl: args.cert_ttl.map(|d| d.0),
        backoff: Backoff::default(),
    });
    tracing::info!(%identity, ca = %address, "requesting the workload certificate");
    tokio::spawn(client.run());
    Ok(Some(Started {
        certs: watch,
        roots: bundle,
    }))
}

/// The host of `https://host:port` (brackets removed from IPv6).
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_comes_from_the_ca_url() {
        assert_eq!(
            host_of("https://10.99.0.1:15012").as_deref(),
            Some("10.99.0.1")
        );
        assert_eq!(
            host_of("https://istiod.istio-system.svc:15012/").as_deref(),
            Some("istiod.istio-system.svc")
        );
        assert_eq!(host_of("https://[::1]:15012").as_deref(), Some("::1"));
        assert_eq!(host_of("https://:15012"), None);
    }
}
