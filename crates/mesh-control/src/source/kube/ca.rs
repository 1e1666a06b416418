//! The CA's root in a cluster. `--ca-dir` is an emptyDir there, so before
//! the CA loads its files come from a Secret in the control plane
//! namespace: the user's `cacerts` (Istio's plug-in CA) when it exists,
//! else `istio-ca-secret`. When neither exists the first replica to hold
//! Lease `istio-ca-root` generates a self-signed root (mesh-ca's
//! [`generate_root`], the same as a local `--ca-dir`) and creates
//! `istio-ca-secret`; a 409 on that create means another replica won, and
//! its Secret is read instead, so all replicas sign with one root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use mesh_ca::authority::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE, generate_root,
};
use mesh_ca::{AuthorityConfig, AuthorityError};

use super::leader::{CA_ROOT_LEASE, LeaderElector, LeaseError, LeaseTiming};

/// The Secret the control plane keeps its generated root in.
pub const CA_SECRET: &str = "istio-ca-secret";
/// The user's plug-in CA Secret, preferred when present.
pub const PLUGGED_CA_SECRET: &str = "cacerts";
/// Istio's type of `istio-ca-secret`.
pub const CA_SECRET_TYPE: &str = "istio.io/ca-root";

/// Why the CA directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// Reading or creating the Secret failed.
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// What the API said.
        #[source]
        source: kube::Error,
    },
    /// The Secret lacks a file the CA needs.
    #[error("Secret {namespace}/{name}: data.{key} is missing")]
    MissingKey {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The key.
        key: &'static str,
    },
    /// Writing into `--ca-dir` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Generating the root failed.
    #[error("generating the mesh root: {0}")]
    Generate(#[from] AuthorityError),
    /// The `istio-ca-root` Lease could not be read or written.
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Where the CA's files came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaSecretSource {
    /// The user's `cacerts`.
    Plugged,
    /// An existing `istio-ca-secret`.
    Existing,
    /// `istio-ca-secret`, created now by this replica.
    Created,
}

/// Writes the CA's files into `dir` from the cluster, creating the Secret
/// once when there is none (see the module docs).
pub async fn prepare_ca_dir(
    client: Client,
    namespace: &str,
    identity: &str,
    dir: &Path,
    trust_domain: &str,
    timing: LeaseTiming,
) -> Result<CaSecretSource, CaSecretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if copy_secret(&secrets, namespace, PLUGGED_CA_SECRET, dir).await? {
        return Ok(CaSecretSource::Plugged);
    }
    let mut lease = LeaderElector::new(client, namespace, CA_ROOT_LEASE, identity, timing);
    loop {
        if copy_secret(&secrets, namespace, CA_SECRET, dir).await? {
            return Ok(CaSecretSource::Existing);
        }
        if !lease.try_acquire_or_renew().await? {
            tracing::info!(
                lease = CA_ROOT_LEASE,
                "another replica is creating {CA_SECRET}; waiting"
            );
            tokio::time::sleep(timing.renew).await;
            continue;
        }
        // Holding the Lease: read once more, a previous holder may have
        // created it since our first read.
        if copy_secret(&secrets, namespace, CA_SECRET, dir).await? {
            release(&mut lease).await;
            return Ok(CaSecretSource::Existing);
        }
        let config = AuthorityConfig {
            trust_domain: trust_domain.to_string(),
            ..AuthorityConfig::default()
        };
        let material = generate_root(dir, &config)?;
        let text = |s: &str| ByteString(s.as_bytes().to_vec());
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            type_: Some(CA_SECRET_TYPE.to_string()),
            data: Some(BTreeMap::from([
                (CA_CERT_FILE.to_string(), text(&material.ca_cert_pem)),
                (CA_KEY_FILE.to_string(), text(&material.ca_key_pem)),
                (CERT_CHAIN_FILE.to_string(), text(&material.ca_cert_pem)),
                (ROOT_CERT_FILE.to_string(), text(&material.root_cert_pem)),
            ])),
            ..Secret::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                write_ca_files(dir, namespace, CA_SECRET, &secret)?;
                release(&mut lease).await;
                tracing::info!(
                    namespace,
                    "created {CA_SECRET} with a new self-signed mesh root"
                );
                return Ok(CaSecretSource::Created);
            }
            // Another replica won despite the Lease (it expired under a
            // slow holder): use its root.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(
                    namespace,
                    "{CA_SECRET} was created by another replica; reading it"
                );
            }
            Err(source) => {
                return Err(CaSecretError::Api {
                    namespace: namespace.to_string(),
                    name: CA_SECRET.to_string(),
                    source,
                });
            }
        }
    }
}

/// Writes Secret `name`'s files into `dir` when it exists.
async fn copy_secret(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    dir: &Path,
) -> Result<bool, CaSecretError> {
    let found = secrets
        .get_opt(name)
        .await
        .map_err(|source| CaSecretError::Api {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?;
    match found {
        Some(secret) => write_ca_files(dir, namespace, name, &secret).map(|()| true),
        None => Ok(false),
    }
}

async fn release(lease: &mut LeaderElector) {
    if let Err(e) = lease.release().await {
        tracing::warn!("{e}");
    }
}

/// Writes Istio's `cacerts` files from `secret` into `dir`, replacing what
/// an earlier start left there.
fn write_ca_files(
    dir: &Path,
    namespace: &str,
    name: &str,
    secret: &Secret,
) -> Result<(), CaSecretError> {
    let io = |path: &Path, source| CaSecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let data = secret.data.clone().unwrap_or_default();
    let strings = secret.string_data.clone().unwrap_or_default();
    let get = |key: &str| {
        data.get(key)
            .map(|b| b.0.clone())
            .or_else(|| strings.get(key).map(|s| s.as_bytes().to_vec()))
    };
    for (key, required) in [
        (CA_CERT_FILE, true),
        (CA_KEY_FILE, true),
        (ROOT_CERT_FILE, true),
        (CERT_CHAIN_FILE, false),
    ] {
        let path = dir.join(key);
        match get(key) {
            Some(bytes) => {
                write_file(&path, &bytes, key == CA_KEY_FILE).map_err(|e| io(&path, e))?
            }
            None if required => {
                return Err(CaSecretError::MissingKey {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    key,
                });
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, e)),
            },
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}
