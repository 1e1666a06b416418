//! `x-forwarded-client-cert`, as the HTTP connection manager's
//! `forward_client_cert_details` and `set_current_client_cert_details`
//! ask: dropped (SANITIZE, Envoy's default, and every mode on a connection
//! without a client certificate, except ALWAYS_FORWARD_ONLY), passed on,
//! or extended with an element for the current peer:
//! `By=<our URI SAN>;Hash=<SHA-256 of the peer leaf>;Subject="...";URI=...;DNS=...`
//! (Envoy's key order; `By` and the other keys only when there is a value).

use http::HeaderMap;
use http::header::HeaderValue;

use crate::runtime::listener::{ForwardClientCert, Xfcc};
use crate::tls::Session;

/// The header's name.
pub(crate) const XFCC: &str = "x-forwarded-client-cert";

/// Applies `config` to a request arriving over `session`.
pub(crate) fn apply(headers: &mut HeaderMap, config: &Xfcc, session: Option<&Session>) {
    let mtls = session.filter(|s| s.peer.is_some());
    match (config.mode, mtls) {
        (ForwardClientCert::AlwaysForwardOnly, _) | (ForwardClientCert::ForwardOnly, Some(_)) => {}
        (ForwardClientCert::Sanitize, _) | (_, None) => {
            headers.remove(XFCC);
        }
        (ForwardClientCert::AppendForward, Some(s)) => {
            let element = element(config, s);
            let value = match headers.get(XFCC).and_then(|v| v.to_str().ok()) {
                Some(existing) if !existing.is_empty() => format!("{existing},{element}"),
                _ => element,
            };
            set(headers, &value);
        }
        (ForwardClientCert::SanitizeSet, Some(s)) => {
            let element = element(config, s);
            set(headers, &element);
        }
    }
}

fn set(headers: &mut HeaderMap, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(XFCC, v);
        }
        Err(_) => {
            headers.remove(XFCC);
        }
    }
}

fn element(config: &Xfcc, s: &Session) -> String {
    let mut parts = Vec::new();
    if let Some(by) = s.local.uris.first() {
        parts.push(format!("By={by}"));
    }
    if let Some(hash) = &s.peer_hash {
        parts.push(format!("Hash={hash}"));
    }
    if let Some(peer) = &s.peer {
        if config.subject {
            parts.push(format!("Subject=\"{}\"", peer.subject.replace('"', "\\\"")));
        }
        if config.uri {
            parts.extend(peer.uris.iter().map(|u| format!("URI={u}")));
        }
        if config.dns {
            parts.extend(peer.dns.iter().map(|d| format!("DNS={d}")));
        }
    }
    parts.join(";")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PeerNames;

    fn session() -> Session {
        Session {
            peer: Some(PeerNames {
                uris: vec!["spiffe://cluster.local/ns/a/sa/client".into()],
                dns: vec!["client.a".into()],
                subject: String::new(),
                ..PeerNames::default()
            }),
            peer_hash: Some("abcd".into()),
            local: PeerNames {
                uris: vec!["spiffe://cluster.local/ns/b/sa/server".into()],
                ..PeerNames::default()
            },
            alpn: None,
        }
    }

    fn istio() -> Xfcc {
        Xfcc {
            mode: ForwardClientCert::AppendForward,
            subject: true,
            uri: true,
            dns: true,
        }
    }

    #[test]
    fn istio_sidecar_appends_the_peer_identity() {
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("By=x;URI=y"));
        apply(&mut h, &istio(), Some(&session()));
        assert_eq!(
            h[XFCC],
            "By=x;URI=y,By=spiffe://cluster.local/ns/b/sa/server;Hash=abcd;Subject=\"\";URI=spiffe://cluster.local/ns/a/sa/client;DNS=client.a"
        );
    }

    #[test]
    fn plaintext_and_sanitize_drop_a_forged_header() {
        let forged = HeaderValue::from_static("URI=spiffe://cluster.local/ns/x/sa/admin");
        let mut h = HeaderMap::new();
        h.insert(XFCC, forged.clone());
        apply(&mut h, &istio(), None);
        assert!(!h.contains_key(XFCC));
        h.insert(XFCC, forged.clone());
        apply(&mut h, &Xfcc::default(), Some(&session()));
        assert!(!h.contains_key(XFCC));
        h.insert(XFCC, forged);
        let set = Xfcc {
            mode: ForwardClientCert::SanitizeSet,
            ..istio()
        };
        apply(&mut h, &set, Some(&session()));
        assert!(!h[XFCC].to_str().unwrap().contains("admin"));
    }
}
