//! Accept loops and the start of every connection: original destination,
//! hand-off between listeners, inspection, filter chain choice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{ConnInfo, Generation, Shared, Stream, ext_authz, http, inspect, tcp};
use crate::drain;
use crate::proxy::record::ResponseFlags;
use crate::runtime::Runtime;
use crate::runtime::listener::{
    ConnectionInfo, FilterChain, Listener, NetworkAuthz, NetworkFilter,
};
use crate::runtime::metadata::Metadata;

/// How long a client has to complete a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `socket` for listener `name` until aborted.
pub(super) async fn accept_loop(
    socket: TcpListener,
    name: String,
    shared: Arc<Shared>,
    drain: drain::Watch,
    tracker: mpsc::Sender<()>,
) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Transient (EMFILE, ECONNABORTED): back off a little.
                tracing::debug!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::debug_span!("conn", listener = %name, %peer);
        let (shared, drain, tracker, name) =
            (shared.clone(), drain.clone(), tracker.clone(), name.clone());
        tokio::spawn(
            async move {
                let _tracker = tracker;
                serve(stream, peer, &name, shared, drain).await;
            }
            .instrument(span),
        );
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    name: &str,
    shared: Arc<Shared>,
    drain: drain::Watch,
) {
    let generation = shared.current();
    let Some(mut listener) = generation.runtime.listener(name).cloned() else {
        // Removed while the connection was being accepted.
        return;
    };
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let original = if listener.use_original_dst || listener.original_dst_filter {
        crate::socket::original_dst(&stream).ok()
    } else {
        None
    };
    let destination = original.unwrap_or(local);
    if listener.use_original_dst
        && original.is_some()
        && let Some(target) = handoff(&generation.runtime, destination, &listener.name)
    {
        tracing::debug!(to = %target.name, %destination, "handed off by original destination");
        listener = target.clone();
    }
    let needs_tls = listener.needs_tls_inspection(destination);
    let needs_http = listener.needs_http_inspection(destination);
    let inspection = if needs_tls || needs_http {
        match inspect::inspect(
            &stream,
            needs_tls,
            needs_http,
            listener.inspect_timeout,
            listener.continue_on_inspect_timeout,
        )
        .await
        {
            Some(i) => i,
            None => {
                tracing::debug!("no ClientHello before the listener filter timeout; closing");
                return;
            }
        }
    } else {
        inspect::Inspection {
            transport: "raw_buffer",
            ..Default::default()
        }
    };
    let info = ConnectionInfo {
        destination,
        source: peer,
        server_name: inspection.server_name.as_deref(),
        transport_protocol: inspection.transport,
        application_protocols: &inspection.application_protocols,
    };
    let Some(chain) = listener.select(&info) else {
        tracing::debug!(%destination, "no filter chain matches; closing");
        return;
    };
    let (stream, session) = match &chain.tls {
        None => (Stream::Tcp(stream), None),
        Some(tls) => {
            let configs = match generation.tls.server(
                &generation.runtime,
                shared.identity().as_ref(),
                tls,
            ) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(listener = %listener.name, chain = %chain.name, error = %e, "cannot terminate TLS; closing the connection");
                    return;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, crate::tls::accept(stream, &configs))
                .await
            {
                Ok(Ok(s)) => {
                    let session = crate::tls::Session::of(&s, &configs.local);
                    (Stream::ServerTls(Box::new(s)), Some(session))
                }
                Ok(Err(e)) => {
                    tracing::debug!(chain = %chain.name, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(chain = %chain.name, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let conn = Arc::new(ConnInfo {
        listener: listener.clone(),
        chain: chain.name.clone(),
        peer,
        destination,
        server_name: inspection.server_name.clone(),
        tls: session.is_some(),
        session,
    });
    if !chain.authz.is_empty()
        && let Err((flags, details)) = connection_allowed(chain, &conn, &generation, &shared).await
    {
        // A TCP proxy logs the connections closed before it.
        if let NetworkFilter::Tcp(proxy) = &chain.filter {
            tcp::refused(&conn, proxy, flags, details);
        }
        return;
    }
    match &chain.filter {
        NetworkFilter::Http(hcm) => http::serve(stream, conn, hcm.clone(), shared, drain).await,
        NetworkFilter::Tcp(proxy) => {
            tcp::proxy(stream, conn, proxy, generation.clone(), shared).await
        }
    }
}

/// Runs the chain's network authorization filters in order on a new
/// connection: whether it may go on. Refused connections are closed
/// without a word, as Envoy's network RBAC and ext_authz filters do; the
/// error has the response flags and connection termination details the
/// refusing filter sets: RBAC none and
/// `rbac_access_denied_matched_policy[<policy>]`, ext_authz `UAEX`.
async fn connection_allowed(
    chain: &FilterChain,
    conn: &Arc<ConnInfo>,
    generation: &Generation,
    shared: &Shared,
) -> Result<(), (ResponseFlags, Option<String>)> {
    use crate::proxy::record::AuthzEvent;
    use crate::runtime::rbac::{Input, Verdict};
    let mut metadata = Metadata::default();
    let mut enforced = false;
    for filter in &chain.authz {
        match filter {
            NetworkAuthz::Rbac(f) => {
                let (verdict, shadow) = {
                    let input = Input {
                        direct_remote: conn.peer,
                        remote: conn.peer.ip(),
                        destination: conn.destination,
                        server_name: conn.server_name.as_deref(),
                        peer: conn.session.as_ref().and_then(|s| s.peer.as_ref()),
                        request: None,
                        metadata: None,
                    };
                    (
                        f.rules.as_ref().map(|r| r.evaluate(&input)),
                        f.shadow(&input),
                    )
                };
                if let (Some(result), Some(rules)) = (shadow, &f.shadow) {
                    shared
                        .observer
                        .authz(None, AuthzEvent::Shadow(&rules.prefix, result.allowed));
                    f.record_shadow(&result, "envoy.filters.network.rbac", &mut metadata);
                }
                enforced |= verdict.is_some();
                if let Some(Verdict::Denied(policy)) = verdict {
                    shared.observer.rbac(None, false);
                    let policy = policy.as_deref().unwrap_or("none");
                    tracing::debug!(peer = %conn.peer, chain = %chain.name, policy, "connection refused by RBAC");
                    let details = format!("rbac_access_denied_matched_policy[{policy}]");
                    return Err((ResponseFlags::default(), Some(details)));
                }
            }
            NetworkAuthz::ExtAuthz(f) => {
                if !f.applies(&metadata) {
                    shared.observer.authz(None, AuthzEvent::ExtAuthzDisabled);
                    continue;
                }
                let subject = ext_authz::Subject {
                    conn,
                    request: None,
                    metadata: None,
                    include_tls_session: f.include_tls_session,
                };
                let decision =
                    ext_authz::check_grpc(&f.target, subject, generation, shared.identity()).await;
                let refused = match decision {
                    ext_authz::Decision::Allowed(_) => {
                        shared.observer.authz(None, AuthzEvent::ExtAuthzOk);
                        false
                    }
                    ext_authz::Decision::Denied(_) => {
                        shared.observer.authz(None, AuthzEvent::ExtAuthzDenied);
                        true
                    }
                    ext_authz::Decision::Error(why) => {
                        tracing::debug!(peer = %conn.peer, chain = %chain.name, error = %why, "external authorization check failed");
                        // Counted as an error either way, as Envoy counts it.
                        shared.observer.authz(None, AuthzEvent::ExtAuthzError);
                        if f.failure_mode_allow {
                            shared
                                .observer
                                .authz(None, AuthzEvent::ExtAuthzFailureModeAllowed);
                        }
                        !f.failure_mode_allow
                    }
                };
                if refused {
                    tracing::debug!(peer = %conn.peer, chain = %chain.name, "connection refused by external authorization");
                    return Err((ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE, None));
                }
            }
        }
    }
    if enforced {
        shared.observer.rbac(None, true);
    }
    Ok(())
}

/// The listener a `use_original_dst` listener hands a connection to: the
/// one bound to exactly `destination`, else the wildcard one on its port
/// (`0.0.0.0:port` / `[::]:port`), never one that itself hands off.
pub(super) fn handoff<'a>(
    runtime: &'a Runtime,
    destination: SocketAddr,
    own: &str,
) -> Option<&'a Arc<Listener>> {
    let eligible = |l: &&Arc<Listener>| l.name != own && !l.use_original_dst;
    let same_family = |a: &SocketAddr| a.is_ipv4() == destination.ip().to_canonical().is_ipv4();
    runtime
        .listeners
        .values()
        .filter(eligible)
        .find(|l| l.address == destination)
        .or_else(|| {
            runtime.listeners.values().filter(eligible).find(|l| {
                l.address.ip().is_unspecified()
                    && l.address.port() == destination.port()
                    && same_family(&l.address)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Origin, Resource, Resources};
    use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
    use serde_json::json;
    use test_case::test_case;

    fn runtime() -> Runtime {
        let mut resources = Resources::default();
        let tcp = |cluster: &str| {
            json!([{"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "statPrefix": cluster, "cluster": cluster}}])
        };
        for (name, address, port, extra) in [
            (
                "virtualOutbound",
                "0.0.0.0",
                15001,
                json!({"useOriginalDst": true}),
            ),
            (
                "10.96.0.10_3306",
                "10.96.0.10",
                3306,
                json!({"bindToPort": false}),
            ),
            (
                "0.0.0.0_9080",
                "0.0.0.0",
                9080,
                json!({"bindToPort": false}),
            ),
        ] {
            let mut l = json!({"name": name, "address": {"socketAddress": {"address": address, "portValue": port}},
                "filterChains": [{"filters": tcp(name)}]});
            for (k, v) in extra.as_object().unwrap() {
                l[k] = v.clone();
            }
            let l: PbListener = mesh_api::xds::json::from_json(&l).unwrap();
            resources.insert(Resource::Listener(Box::new(l)), Origin::Static);
        }
        crate::runtime::compile(&resources)
    }

    #[test_case("10.96.0.10:3306", Some("10.96.0.10_3306"); "exact address")]
    #[test_case("10.96.0.99:9080", Some("0.0.0.0_9080"); "wildcard on the port")]
    #[test_case("10.96.0.99:5432", None; "nothing: the capturing listener serves")]
    #[test_case("10.96.0.99:15001", None; "never to a capturing listener")]
    fn hands_off_by_original_destination(destination: &str, expected: Option<&str>) {
        let rt = runtime();
        let got =
            handoff(&rt, destination.parse().unwrap(), "virtualOutbound").map(|l| l.name.as_str());
        assert_eq!(got, expected);
    }
}
