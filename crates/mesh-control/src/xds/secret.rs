//! SDS: the certificates a router proxy's listeners and clusters name by
//! `credentialName`, read from Kubernetes Secrets and served inline over ADS.
//!
//! Names follow Istio's so the references written by
//! [`crate::xds::listener`] (gateway servers) and [`crate::xds::cluster`]
//! (DestinationRule client TLS) resolve here:
//!
//! - `kubernetes://<name>`: a `TlsCertificate` from Secret `<name>` (keys
//!   `tls.crt`/`tls.key`, or the generic `cert`/`key`);
//! - `kubernetes://<name>-cacert`: a `ValidationContext` from Secret
//!   `<name>-cacert` if it exists, else from `<name>` itself (keys `ca.crt`
//!   or `cacert`, plus an optional CRL in `ca.crl`/`crl`);
//! - `kubernetes://<caCertCredentialName>`: a `ValidationContext` from that
//!   Secret, for gateway servers that keep the CA apart.
//!
//! Istio reads a gateway's Secrets from the gateway *workload's* namespace;
//! we use the Gateway object's namespace, which is the same in every usual
//! deployment and keeps the translation a function of config alone.
//! DestinationRule credentials come from the proxy's namespace, as in Istio.
//!
//! A missing, incomplete or non-PEM Secret emits nothing for that name and a
//! warning naming the gateway (or DestinationRule), the server and the
//! Secret. Envoy does not reject anything: the listener (or cluster) that
//! needs the name stays warming until the Secret appears, or until its SDS
//! `initial_fetch_timeout` (15 s by default) passes, after which it serves
//! with that filter chain failing every handshake. The rest of the push
//! applies. One trap: while Envoy is *starting*, its init manager waits for
//! every listener to warm, so a missing Secret then delays the whole
//! gateway's first readiness by that timeout (tests/envoy_tls.rs shows it).
//!
//! Sidecars get nothing here: their workload certificates (`default`,
//! `ROOTCA`) come from the agent that holds the private keys.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use mesh_api::networking::destination_rule::{ClientTlsMode, ClientTlsSettings, TrafficPolicy};
use mesh_api::networking::gateway::{ServerTlsMode, ServerTlsSettings};

use super::ProxyScope;
use crate::proxy::ProxyRole;
use crate::snapshot::{name_of, namespace_of};

/// Prefix of SDS names served from Kubernetes Secrets.
pub const KUBERNETES_SECRET_PREFIX: &str = "kubernetes://";
/// Suffix of the SDS name (and of the optional separate Secret) holding a
/// credential's CA bundle.
pub const CA_SUFFIX: &str = "-cacert";

/// Certificate/key key pairs, in the order Istio tries them.
const CERT_KEY_PAIRS: [(&str, &str); 2] = [("tls.crt", "tls.key"), ("cert", "key")];
/// Keys that may hold a CA bundle.
const CA_KEYS: [&str; 2] = ["ca.crt", "cacert"];
/// Keys that may hold a certificate revocation list.
const CRL_KEYS: [&str; 2] = ["ca.crl", "crl"];

/// Why a credential could not be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// No Secret of that name exists in the namespace.
    #[error("Secret {namespace}/{name} not found")]
    NotFound {
        /// Namespace searched.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// The Secret has no certificate and key under any known pair of keys.
    #[error("Secret {namespace}/{name} has no certificate and key (tls.crt/tls.key or cert/key)")]
    NoCertificate {
        /// Namespace of the Secret.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// Neither `<name>-cacert` nor `<name>` has a CA bundle.
    #[error("Secret {namespace}/{name} has no CA bundle (ca.crt or cacert)")]
    NoCa {
        /// Namespace of the Secret.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// A value is not PEM text.
    #[error("Secret {namespace}/{name} key {key} is not PEM (does not start with -----BEGIN)")]
    NotPem {
        /// Namespace of the Secret.
        namespace: String,
        /// Secret name.
        name: String,
        /// The offending key.
        key: &'static str,
    },
}

/// Who asked for a credential, for warnings.
#[derive(Clone, Copy)]
enum Referrer<'a> {
    /// A Gateway server (`ns/name`, server port name).
    GatewayServer(&'a str, &'a str, &'a str),
    /// A DestinationRule (`ns/name`).
    DestinationRule(&'a str, &'a str),
}

/// Secrets of the snapshot indexed by (namespace, name).
struct SecretIndex<'a>(BTreeMap<(&'a str, &'a str), &'a KubeSecret>);

/// The SDS resources being built, keyed (and so ordered) by name.
#[derive(Default)]
struct Out(BTreeMap<String, Secret>);

/// Every secret the router proxy's gateway listeners and DestinationRule
/// clusters reference by `credentialName`, sorted by SDS name. Sidecars
/// get none.
pub fn build_secrets(scope: &ProxyScope<'_>) -> Vec<Secret> {
    if scope.proxy.role != ProxyRole::Router {
        return Vec::new();
    }
    let index = SecretIndex::new(&scope.snapshot.secrets);
    let mut out = Out::default();
    gateway_secrets(scope, &index, &mut out);
    destination_rule_secrets(scope, &index, &mut out);
    out.0.into_values().collect()
}

fn gateway_secrets(scope: &ProxyScope<'_>, index: &SecretIndex<'_>, out: &mut Out) {
    for gw in scope.gateways() {
        let ns = namespace_of(gw);
        for server in &gw.spec.servers {
            let Some(tls) = &server.tls else { continue };
            let mode = tls.mode.unwrap_or_default();
            if !matches!(
                mode,
                ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
            ) {
                continue;
            }
            let mutual = mode != ServerTlsMode::Simple;
            let by = Referrer::GatewayServer(ns, name_of(gw), &server.port.name);
            for cred in credential_names(tls) {
                out.certificate(index, ns, cred, by);
                match tls
                    .ca_cert_credential_name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                {
                    // A separate CA Secret is served under its own name.
                    Some(ca) if mutual => out.ca_only(index, ns, ca, by),
                    _ => out.ca_for(index, ns, cred, mutual, by),
                }
            }
        }
    }
}

/// `credentialName`, or every entry of `credentialNames` (Istio's
/// RSA-plus-ECDSA pair), without empties.
fn credential_names(tls: &ServerTlsSettings) -> Vec<&str> {
    tls.credential_name
        .iter()
        .chain(tls.credential_names.iter())
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect()
}

/// DestinationRules that apply to the router's visible services, each once,
/// with every `tls` they carry (top level, per port, per subset): a superset
/// of what the clusters use, so no referenced name is missed.
fn destination_rule_secrets(scope: &ProxyScope<'_>, index: &SecretIndex<'_>, out: &mut Out) {
    let ns = scope.proxy.namespace.as_str();
    let mut seen = BTreeSet::new();
    for service in scope.services() {
        let Some(dr) = scope.destination_rule(&service.hostname) else {
            continue;
        };
        let (dr_ns, dr_name) = (namespace_of(dr), name_of(dr));
        if !seen.insert((dr_ns, dr_name)) {
            continue;
        }
        let by = Referrer::DestinationRule(dr_ns, dr_name);
        let policies = dr.spec.traffic_policy.iter().chain(
            dr.spec
                .subsets
                .iter()
                .filter_map(|s| s.traffic_policy.as_ref()),
        );
        for tls in policies.flat_map(policy_tls) {
            let Some(cred) = tls.credential_name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let mode = tls.mode.unwrap_or_default();
            if !matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) {
                continue;
            }
            if mode == ClientTlsMode::Mutual {
                out.certificate(index, ns, cred, by);
            }
            if tls.insecure_skip_verify != Some(true) {
                out.ca_for(index, ns, cred, true, by);
            }
        }
    }
}

fn policy_tls(tp: &TrafficPolicy) -> impl Iterator<Item = &ClientTlsSettings> {
    tp.tls
        .iter()
        .chain(tp.port_level_settings.iter().filter_map(|p| p.tls.as_ref()))
}

// === impl Referrer ===

impl Referrer<'_> {
    fn warn(&self, err: &SecretError) {
        match self {
            Referrer::GatewayServer(ns, name, server) => tracing::warn!(
                gateway = %format_args!("{ns}/{name}"),
                server = %server,
                error = %err,
                "gateway credential not served; the listener stays warming until the Secret is fixed"
            ),
            Referrer::DestinationRule(ns, name) => tracing::warn!(
                destination_rule = %format_args!("{ns}/{name}"),
                error = %err,
                "DestinationRule credential not served; the cluster stays warming until the Secret is fixed"
            ),
        }
    }
}

// === impl SecretIndex ===

impl<'a> SecretIndex<'a> {
    fn new(secrets: &'a [Arc<KubeSecret>]) -> Self {
        Self(
            secrets
                .iter()
                .map(|s| ((namespace_of(s.as_ref()), name_of(s.as_ref())), s.as_ref()))
                .collect(),
        )
    }

    fn get(&self, ns: &str, name: &str) -> Option<&'a KubeSecret> {
        self.0.get(&(ns, name)).copied()
    }

    fn require(&self, ns: &str, name: &str) -> Result<&'a KubeSecret, SecretError> {
        self.get(ns, name).ok_or_else(|| SecretError::NotFound {
            namespace: ns.into(),
            name: name.into(),
        })
    }
}

// === impl Out ===

impl Out {
    /// `kubernetes://<cred>`: the certificate and key of Secret `<cred>`.
    fn certificate(&mut self, index: &SecretIndex<'_>, ns: &str, cred: &str, by: Referrer<'_>) {
        let name = format!("{KUBERNETES_SECRET_PREFIX}{cred}");
        if self.0.contains_key(&name) {
            return;
        }
        match index.require(ns, cred).and_then(tls_certificate) {
            Ok(cert) => self.insert(name, secret::Type::TlsCertificate(cert)),
            Err(e) => by.warn(&e),
        }
    }

    /// `kubernetes://<cred>-cacert`: from Secret `<cred>-cacert`, else from
    /// `<cred>`'s own CA. A missing CA is only an error when `required`
    /// (MUTUAL); a SIMPLE server's Secret that happens to carry one is
    /// served too, as Istio does.
    fn ca_for(
        &mut self,
        index: &SecretIndex<'_>,
        ns: &str,
        cred: &str,
        required: bool,
        by: Referrer<'_>,
    ) {
        let name = format!("{KUBERNETES_SECRET_PREFIX}{cred}{CA_SUFFIX}");
        if self.0.contains_key(&name) {
            return;
        }
        let separate = format!("{cred}{CA_SUFFIX}");
        let found = match index.get(ns, &separate) {
            // A separate `-cacert` Secret exists only to hold a CA.
            Some(s) => validation_context(s).and_then(|ctx| {
                ctx.map(Some).ok_or_else(|| SecretError::NoCa {
                    namespace: ns.into(),
                    name: separate.clone(),
                })
            }),
            None => match index.get(ns, cred) {
                Some(s) => validation_context(s),
                None if required => Err(SecretError::NotFound {
                    namespace: ns.into(),
                    name: separate,
                }),
                None => Ok(None),
            },
        };
        match found {
            Ok(Some(ctx)) => self.insert(name, secret::Type::ValidationContext(ctx)),
            Ok(None) if required => by.warn(&SecretError::NoCa {
                namespace: ns.into(),
                name: cred.into(),
            }),
            Ok(None) => {}
            Err(e) => by.warn(&e),
        }
    }

    /// `kubernetes://<ca>`: the CA of a Secret named by `caCertCredentialName`.
    fn ca_only(&mut self, index: &SecretIndex<'_>, ns: &str, ca: &str, by: Referrer<'_>) {
        let name = format!("{KUBERNETES_SECRET_PREFIX}{ca}");
        if self.0.contains_key(&name) {
            return;
        }
        let found = index.require(ns, ca).and_then(|s| {
            validation_context(s)?.ok_or_else(|| SecretError::NoCa {
                namespace: ns.into(),
                name: ca.into(),
            })
        });
        match found {
            Ok(ctx) => self.insert(name, secret::Type::ValidationContext(ctx)),
            Err(e) => by.warn(&e),
        }
    }

    fn insert(&mut self, name: String, r#type: secret::Type) {
        self.0.insert(
            name.clone(),
            Secret {
                name,
                r#type: Some(r#type),
            },
        );
    }
}

/// The certificate chain and key of a Secret.
fn tls_certificate(s: &KubeSecret) -> Result<TlsCertificate, SecretError> {
    let (cert_key, key_key) = CERT_KEY_PAIRS
        .into_iter()
        .find(|(c, _)| value(s, c).is_some())
        .ok_or_else(|| no_certificate(s))?;
    let chain = pem(s, cert_key)?.ok_or_else(|| no_certificate(s))?;
    let key = pem(s, key_key)?.ok_or_else(|| no_certificate(s))?;
    Ok(TlsCertificate {
        certificate_chain: Some(inline(chain)),
        private_key: Some(inline(key)),
        ..Default::default()
    })
}

fn no_certificate(s: &KubeSecret) -> SecretError {
    SecretError::NoCertificate {
        namespace: namespace_of(s).into(),
        name: name_of(s).into(),
    }
}

/// The CA bundle (and CRL) of a Secret; `None` when it has no CA.
fn validation_context(s: &KubeSecret) -> Result<Option<CertificateValidationContext>, SecretError> {
    let Some(ca_key) = CA_KEYS.into_iter().find(|k| value(s, k).is_some()) else {
        return Ok(None);
    };
    let Some(ca) = pem(s, ca_key)? else {
        return Ok(None);
    };
    let crl = match CRL_KEYS.into_iter().find(|k| value(s, k).is_some()) {
        Some(k) => pem(s, k)?.map(inline),
        None => None,
    };
    Ok(Some(CertificateValidationContext {
        trusted_ca: Some(inline(ca)),
        crl,
        ..Default::default()
    }))
}

/// A key's bytes: `stringData` wins over `data`, as the API server merges
/// them; empty values count as absent.
fn value(s: &KubeSecret, key: &str) -> Option<Vec<u8>> {
    s.string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            s.data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.clone())
        })
        .filter(|v| !v.is_empty())
}

/// A key's value, checked to look like PEM (a full parse is Envoy's job;
/// this catches the common mistake of pasting DER or double base64).
fn pem(s: &KubeSecret, key: &'static str) -> Result<Option<Vec<u8>>, SecretError> {
    let Some(v) = value(s, key) else {
        return Ok(None);
    };
    if v.trim_ascii_start().starts_with(b"-----BEGIN") {
        Ok(Some(v))
    } else {
        Err(SecretError::NotPem {
            namespace: namespace_of(s).into(),
            name: name_of(s).into(),
            key,
        })
    }
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    // Tests fail by panicking; unwrap is the assertion.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::IpAddr;

    use mesh_api::mesh_config::MeshConfig;

    use super::*;
    use crate::proxy::ProxyInfo;
    use crate::snapshot::Snapshot;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n";
    const CA: &str = "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n";

    /// A gateway with every way of naming a credential, and Secrets in
    /// every shape Istio accepts (`data` base64 as in real YAML, and
    /// `stringData`).
    const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: tls-typed}
  - port: {number: 8443, name: https-mtls, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: MUTUAL, credentialName: generic}
  - port: {number: 8443, name: https-split-ca, protocol: HTTPS}
    hosts: [c.example.com]
    tls: {mode: MUTUAL, credentialName: split}
  - port: {number: 8443, name: https-missing, protocol: HTTPS}
    hosts: [d.example.com]
    tls: {mode: SIMPLE, credentialName: absent}
  - port: {number: 8443, name: https-der, protocol: HTTPS}
    hosts: [e.example.com]
    tls: {mode: SIMPLE, credentialName: not-pem}
  - port: {number: 8443, name: https-ca-name, protocol: HTTPS}
    hosts: [f.example.com]
    tls: {mode: MUTUAL, credentialName: tls-typed, caCertCredentialName: client-ca}
  - port: {number: 8443, name: https-mtls-no-ca, protocol: HTTPS}
    hosts: [g.example.com]
    tls: {mode: MUTUAL, credentialName: no-ca}
  - port: {number: 8444, name: tls, protocol: TLS}
    hosts: [h.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: v1
kind: Secret
metadata: {name: tls-typed, namespace: istio-system}
type: kubernetes.io/tls
data:
  tls.crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClkyVnlkQT09Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K
  tls.key: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCmEyVjUKLS0tLS1FTkQgUFJJVkFURSBLRVktLS0tLQo=
---
apiVersion: v1
kind: Secret
metadata: {name: generic, namespace: istio-system}
stringData:
  cert: "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n"
  key: "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n"
  cacert: "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n"
---
apiVersion: v1
kind: Secret
metadata: {name: split, namespace: istio-system}
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n"
---
apiVersion: v1
kind: Secret
metadata: {name: split-cacert, namespace: istio-system}
stringData:
  ca.crt: "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n"
---
apiVersion: v1
kind: Secret
metadata: {name: client-ca, namespace: istio-system}
stringData:
  ca.crt: "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n"
---
apiVersion: v1
kind: Secret
metadata: {name: not-pem, namespace: istio-system}
data:
  tls.crt: MIIBAA==
  tls.key: MIIBAA==
---
apiVersion: v1
kind: Secret
metadata: {name: no-ca, namespace: istio-system}
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n"
---
apiVersion: v1
kind: Secret
metadata: {name: absent, namespace: default}
stringData:
  tls.crt: "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n"
  tls.key: "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n"
"#;

    fn router() -> ProxyInfo {
        ProxyInfo::router(
            "ingress",
            "istio-system",
            "10.1.0.99".parse::<IpAddr>().unwrap(),
            &[("istio", "ingressgateway")],
        )
    }

    fn secrets_for(yaml: &str, proxy: &ProxyInfo) -> Vec<Secret> {
        let loaded = mesh_api::load_str("t.yaml", yaml);
        for l in &loaded {
            assert!(!l.report.has_errors(), "{:?}", l.report.diagnostics);
        }
        let snapshot = Snapshot::build(1, &loaded, MeshConfig::default());
        build_secrets(&ProxyScope::new(&snapshot, proxy))
    }

    fn bytes(ds: &Option<DataSource>) -> &str {
        match ds.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(data_source::Specifier::InlineBytes(b)) => std::str::from_utf8(b).unwrap(),
            other => panic!("not inline bytes: {other:?}"),
        }
    }

    fn find<'a>(secrets: &'a [Secret], name: &str) -> &'a secret::Type {
        secrets
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.r#type.as_ref())
            .unwrap_or_else(|| panic!("no secret {name}"))
    }

    fn assert_cert(secrets: &[Secret], name: &str) {
        let secret::Type::TlsCertificate(c) = find(secrets, name) else {
            panic!("{name} is not a certificate");
        };
        assert_eq!(bytes(&c.certificate_chain), CERT);
        assert_eq!(bytes(&c.private_key), KEY);
    }

    fn assert_ca(secrets: &[Secret], name: &str) {
        let secret::Type::ValidationContext(v) = find(secrets, name) else {
            panic!("{name} is not a validation context");
        };
        assert_eq!(bytes(&v.trusted_ca), CA);
    }

    #[test]
    fn gateway_credentials_become_sorted_inline_secrets() {
        let secrets = secrets_for(CONFIG, &router());
        let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kubernetes://client-ca",
                "kubernetes://generic",
                "kubernetes://generic-cacert",
                "kubernetes://no-ca",
                "kubernetes://split",
                "kubernetes://split-cacert",
                "kubernetes://tls-typed",
            ],
            "missing (absent: wrong namespace), non-PEM and CA-less MUTUAL credentials are skipped"
        );
        // `data` (base64) and `stringData`, typed and generic keys.
        assert_cert(&secrets, "kubernetes://tls-typed");
        assert_cert(&secrets, "kubernetes://generic");
        assert_cert(&secrets, "kubernetes://split");
        // CA from the Secret itself, from `<name>-cacert`, from caCertCredentialName.
        assert_ca(&secrets, "kubernetes://generic-cacert");
        assert_ca(&secrets, "kubernetes://split-cacert");
        assert_ca(&secrets, "kubernetes://client-ca");
    }

    #[test]
    fn simple_server_serves_the_ca_only_when_the_secret_has_one() {
        let yaml = CONFIG.replace(
            "tls: {mode: MUTUAL, credentialName: generic}",
            "tls: {mode: SIMPLE, credentialName: generic}",
        );
        let secrets = secrets_for(&yaml, &router());
        assert_ca(&secrets, "kubernetes://generic-cacert");
        assert!(
            !secrets
                .iter()
                .any(|s| s.name == "kubernetes://tls-typed-cacert")
        );
    }

    #[test]
    fn sidecars_get_no_secrets() {
        let sidecar = ProxyInfo::sidecar(
            "ingress",
            "istio-system",
            "10.1.0.99".parse::<IpAddr>().unwrap(),
            &[("istio", "ingressgateway")],
        );
        assert!(secrets_for(CONFIG, &sidecar).is_empty());
    }

    #[test]
    fn destination_rule_credentials_come_from_the_proxy_namespace() {
        let yaml = format!(
            r#"{CONFIG}
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  ports: [{{name: https, port: 443}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend, namespace: default}}
spec:
  host: backend
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: MUTUAL, credentialName: upstream}}
  subsets:
  - name: v1
    labels: {{version: v1}}
    trafficPolicy:
      tls: {{mode: SIMPLE, credentialName: generic}}
---
apiVersion: v1
kind: Secret
metadata: {{name: upstream, namespace: istio-system}}
stringData:
  tls.crt: "{cert}"
  tls.key: "{key}"
  ca.crt: "{ca}"
"#,
            cert = CERT.replace('\n', "\\n"),
            key = KEY.replace('\n', "\\n"),
            ca = CA.replace('\n', "\\n"),
        );
        let secrets = secrets_for(&yaml, &router());
        assert_cert(&secrets, "kubernetes://upstream");
        assert_ca(&secrets, "kubernetes://upstream-cacert");
        assert_ca(&secrets, "kubernetes://generic-cacert");
    }

    #[test]
    fn pem_check_and_key_precedence() {
        let mut s = KubeSecret::default();
        s.metadata.name = Some("x".into());
        s.string_data = Some([("ca.crt".to_string(), "  \n-----BEGIN X".to_string())].into());
        s.data = Some(
            [(
                "ca.crt".to_string(),
                k8s_openapi::ByteString(b"ignored".to_vec()),
            )]
            .into(),
        );
        assert!(validation_context(&s).unwrap().is_some(), "stringData wins");
        s.string_data = None;
        assert_eq!(
            validation_context(&s),
            Err(SecretError::NotPem {
                namespace: "default".into(),
                name: "x".into(),
                key: "ca.crt"
            })
        );
        assert_eq!(tls_certificate(&s), Err(no_certificate(&s)));
    }
}
