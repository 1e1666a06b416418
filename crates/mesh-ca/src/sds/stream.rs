//! State of one state-of-the-world SDS stream, as a pure state machine.
//!
//! The driver feeds it every request and every change of the published
//! certificate or roots; it answers with the response to send, if any. The
//! rule is the xDS one: a request carrying the nonce of the last response is
//! an ACK (or a NACK when it has `error_detail`) and may also change the
//! subscribed names; a request with an older nonce is stale and ignored. A
//! response goes out whenever what the subscribed names resolve to differs
//! from what was last sent, so an ACK or a NACK alone never triggers a
//! resend (no NACK loop), while a rotation always does.

use std::collections::{BTreeMap, BTreeSet};

use mesh_api::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use mesh_api::xds::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Name;
use ring::digest::{SHA256, digest};

use super::resources::{Lookup, Snapshot};

/// What a request meant.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// First request of the stream, or a subscription without a nonce.
    Initial,
    /// Accepted the last response.
    Ack {
        /// The version accepted.
        version: String,
    },
    /// Rejected the last response.
    Nack {
        /// The version rejected.
        version: String,
        /// Envoy's reason.
        detail: String,
    },
    /// Answers a response older than the last one; ignored.
    Stale,
}

/// Why a request cannot be served on this stream.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// The request asks for another resource type.
    #[error("this server only serves {expected}, request asked for {type_url}")]
    TypeUrl {
        /// What the request named.
        type_url: String,
        /// The Secret type URL.
        expected: String,
    },
}

/// What was last sent on the stream.
#[derive(Debug)]
struct Sent {
    nonce: String,
    version: String,
    /// Name -> SHA-256 of the packed resource.
    digests: BTreeMap<String, Vec<u8>>,
}

/// Per-stream protocol state.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    names: BTreeSet<String>,
    sent: Option<Sent>,
    responses: u64,
    warned_unknown: BTreeSet<String>,
}

// === impl StreamState ===

impl StreamState {
    /// Takes in one request: classifies it and, unless stale, adopts its
    /// resource names as the subscription.
    pub fn on_request(&mut self, req: &DiscoveryRequest) -> Result<RequestKind, RequestError> {
        let expected = Secret::type_url();
        // Envoy always sets the type URL; tolerate an empty one on follow-ups.
        if !req.type_url.is_empty() && req.type_url != expected {
            return Err(RequestError::TypeUrl {
                type_url: req.type_url.clone(),
                expected,
            });
        }
        let kind = match (&self.sent, req.response_nonce.as_str()) {
            (_, "") => RequestKind::Initial,
            (Some(sent), nonce) if nonce == sent.nonce => match &req.error_detail {
                Some(status) => RequestKind::Nack {
                    version: sent.version.clone(),
                    detail: status.message.clone(),
                },
                None => RequestKind::Ack {
                    version: req.version_info.clone(),
                },
            },
            _ => RequestKind::Stale,
        };
        if kind != RequestKind::Stale {
            self.names = req.resource_names.iter().cloned().collect();
        }
        Ok(kind)
    }

    /// Names asked for that this server does not know, each reported once
    /// per stream (Envoy repeats them on every ACK).
    pub fn newly_unknown(&mut self, snapshot: &Snapshot) -> Vec<String> {
        let unknown: Vec<String> = self
            .names
            .iter()
            .filter(|n| !self.warned_unknown.contains(*n))
            .filter(|n| matches!(snapshot.lookup(n), Lookup::Unknown))
            .cloned()
            .collect();
        self.warned_unknown.extend(unknown.iter().cloned());
        unknown
    }

    /// The response to send now, if the subscribed names resolve to
    /// something other than what was last sent. Known names with nothing to
    /// serve yet and unknown names are left out.
    pub fn respond(&mut self, snapshot: &Snapshot) -> Option<DiscoveryResponse> {
        let mut resources = Vec::new();
        let mut digests = BTreeMap::new();
        for name in &self.names {
            if let Lookup::Ready(any) = snapshot.lookup(name) {
                digests.insert(name.clone(), digest(&SHA256, &any.value).as_ref().to_vec());
                resources.push(any);
            }
        }
        let previous = self.sent.as_ref().map(|s| &s.digests);
        if previous == Some(&digests) || (previous.is_none() && digests.is_empty()) {
            return None;
        }
        self.responses += 1;
        let nonce = self.responses.to_string();
        let version = version_of(&digests);
        self.sent = Some(Sent {
            nonce: nonce.clone(),
            version: version.clone(),
            digests,
        });
        Some(DiscoveryResponse {
            version_info: version,
            resources,
            type_url: Secret::type_url(),
            nonce,
            ..Default::default()
        })
    }
}

/// A version string naming the content: equal content, equal version, on
/// every stream and across reconnects.
fn version_of(digests: &BTreeMap<String, Vec<u8>>) -> String {
    let mut all = Vec::new();
    for (name, d) in digests {
        all.extend_from_slice(name.as_bytes());
        all.push(0);
        all.extend_from_slice(d);
    }
    digest(&SHA256, &all).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use mesh_api::xds::pb::google::rpc::Status;

    use super::super::resources::{DEFAULT_SECRET, ROOT_SECRET};
    use super::*;
    use crate::TrustBundle;

    fn roots() -> TrustBundle {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        TrustBundle::new([params.self_signed(&key).unwrap().der().clone()]).unwrap()
    }

    fn request(names: &[&str], nonce: &str, error: Option<&str>) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: Secret::type_url(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.to_string(),
            error_detail: error.map(|m| Status {
                code: 3,
                message: m.to_string(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ack_and_nack_do_not_resend_but_a_change_does() {
        let snapshot = Snapshot {
            cert: None,
            roots: roots(),
        };
        let mut state = StreamState::default();
        let kind = state.on_request(&request(&[ROOT_SECRET], "", None));
        assert_eq!(kind, Ok(RequestKind::Initial));
        let first = state.respond(&snapshot).unwrap();
        assert_eq!(first.resources.len(), 1);

        let ack = state.on_request(&request(&[ROOT_SECRET], &first.nonce, None));
        assert!(matches!(ack, Ok(RequestKind::Ack { .. })));
        assert!(state.respond(&snapshot).is_none(), "an ACK is not answered");

        let nack = state.on_request(&request(&[ROOT_SECRET], &first.nonce, Some("bad")));
        assert!(matches!(nack, Ok(RequestKind::Nack { ref detail, .. }) if detail == "bad"));
        assert!(state.respond(&snapshot).is_none(), "no NACK loop");

        let rotated = Snapshot {
            cert: None,
            roots: snapshot
                .roots
                .with_root(roots().roots()[0].clone())
                .unwrap(),
        };
        let second = state.respond(&rotated).unwrap();
        assert_ne!(second.version_info, first.version_info);
        assert_ne!(second.nonce, first.nonce);

        let stale = state.on_request(&request(&[], &first.nonce, None));
        assert_eq!(stale, Ok(RequestKind::Stale));
        assert!(
            state.respond(&rotated).is_none(),
            "stale requests change nothing"
        );
    }

    #[test]
    fn pending_and_unknown_names_are_left_out() {
        let snapshot = Snapshot {
            cert: None,
            roots: roots(),
        };
        let mut state = StreamState::default();
        state
            .on_request(&request(&[DEFAULT_SECRET, "file-cert:x"], "", None))
            .unwrap();
        assert_eq!(
            state.newly_unknown(&snapshot),
            vec!["file-cert:x".to_string()]
        );
        assert!(state.newly_unknown(&snapshot).is_empty(), "warned once");
        assert!(state.respond(&snapshot).is_none());
    }

    #[test]
    fn another_type_url_is_refused() {
        let mut state = StreamState::default();
        let mut req = request(&[ROOT_SECRET], "", None);
        req.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        assert!(matches!(
            state.on_request(&req),
            Err(RequestError::TypeUrl { .. })
        ));
    }
}
