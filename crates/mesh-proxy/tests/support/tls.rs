//! TLS pieces the data-path tests share: transport sockets and inline
//! certificates as proto3 JSON, and a rustls client trusting a test CA.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_test_support::certs::{Leaf, TestCa};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};

/// A socket address as proto3 JSON.
pub fn address(addr: SocketAddr) -> Value {
    json!({"socketAddress": {"address": addr.ip().to_string(), "portValue": addr.port()}})
}

/// A TLS transport socket of `kind` (`DownstreamTlsContext`, ...).
pub fn tls_socket(kind: &str, config: Value) -> Value {
    let mut typed = config;
    typed["@type"] = json!(format!(
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}"
    ));
    json!({"name": "envoy.transport_sockets.tls", "typedConfig": typed})
}

/// A TLS certificate with its key, inline.
pub fn inline_cert(leaf: &Leaf) -> Value {
    json!({"certificateChain": {"inlineString": leaf.cert_pem}, "privateKey": {"inlineString": leaf.key_pem}})
}

/// A client trusting `ca`, presenting `cert` if given.
pub fn client_config(ca: &TestCa, cert: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = ClientConfig::builder_with_provider(mesh_ca::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.private_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}
