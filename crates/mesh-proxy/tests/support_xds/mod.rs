//! Shared by the xDS, admin and binary tests: an in-process proxy (xDS
//! client + admin and health servers on loopback), a real hyper client,
//! bounded async polling, and sample Envoy resources.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod ads;
pub mod control_plane;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_api::xds::pack_any;
use mesh_proxy::admin::{self, AdminState, LogControl};
use mesh_proxy::resources::Resources;
use mesh_proxy::xds::{self, ConfigWatch, XdsConfig};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// Polls `check` every 20 ms for up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request with a real hyper client; (status, body).
pub async fn request(method: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// GET; (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request("GET", addr, path).await
}

/// `/config_dump` parsed.
pub async fn config_dump(addr: SocketAddr, query: &str) -> serde_json::Value {
    let (status, body) = get(addr, &format!("/config_dump{query}")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The `configs[]` entry whose `@type` ends with `suffix`.
pub fn dump_section<'a>(dump: &'a serde_json::Value, suffix: &str) -> &'a serde_json::Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"].as_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("no {suffix} in {dump:#}"))
}

/// The proxy's control side running in this process.
pub struct Proxy {
    pub config: ConfigWatch,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub registry: admin::SharedRegistry,
    pub shutdown: admin::Lifecycle,
    pub requests: tokio::sync::mpsc::UnboundedReceiver<admin::ShutdownRequest>,
    stop: watch::Sender<bool>,
}

impl Proxy {
    /// Starts the xDS client (if `xds` is given) and the admin and health
    /// servers on loopback over `statics`.
    pub async fn start(xds: Option<XdsConfig>, statics: Resources) -> Self {
        Self::start_with(xds, statics, LogControl::detached("info")).await
    }

    /// [`Proxy::start`] with the given log control.
    pub async fn start_with(
        xds: Option<XdsConfig>,
        statics: Resources,
        logging: LogControl,
    ) -> Self {
        let (publisher, config) = xds::channels(statics, xds.is_none());
        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let (lifecycle, requests) = admin::lifecycle();
        let registry: admin::SharedRegistry = Arc::new(RwLock::new(Registry::default()));
        let state = AdminState {
            config: config.clone(),
            bootstrap: Arc::new(Bootstrap {
                node: xds.as_ref().map(|x| x.node.clone()),
                ..Default::default()
            }),
            registry: registry.clone(),
            logging,
            lifecycle: lifecycle.clone(),
            started: (Instant::now(), SystemTime::now()),
        };
        let admin_listener = admin::bind("admin", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let health_listener = admin::bind("health", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let health_addr = health_listener.local_addr().unwrap();
        tokio::spawn(admin::serve(
            admin_listener,
            admin::router(state.clone()),
            until_stopped(),
        ));
        tokio::spawn(admin::serve(
            health_listener,
            admin::health_router(state),
            until_stopped(),
        ));
        if let Some(x) = xds {
            tokio::spawn(xds::run(x, publisher, until_stopped()));
        }
        Self {
            config,
            admin: admin_addr,
            health: health_addr,
            registry,
            shutdown: lifecycle,
            requests,
            stop,
        }
    }

    /// Waits until `/healthz/ready` answers 200.
    pub async fn wait_ready(&self) {
        let health = self.health;
        let ok = eventually(Duration::from_secs(20), || async move {
            get(health, "/healthz/ready")
                .await
                .filter(|(s, _)| *s == 200)
        })
        .await;
        assert!(
            ok.is_some(),
            "proxy never became ready: {:?}",
            self.config.status.borrow()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A loopback socket address.
pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// An EDS cluster.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A load assignment of one endpoint.
pub fn assignment(cluster: &str, ip: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(ip, port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An HTTP listener on `port` loading route `route` over RDS.
pub fn rds_listener(name: &str, port: u32, route: &str) -> Listener {
    let router = envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default();
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(router))),
            ..Default::default()
        }],
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: route.into(),
            config_source: Some(envoy_types::pb::envoy::config::core::v3::ConfigSource {
                config_source_specifier: Some(
                    envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(
                        Default::default(),
                    ),
                ),
                ..Default::default()
            }),
        })),
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: Some(socket_address("127.0.0.1", port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route configuration with no virtual hosts.
pub fn route(name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        ..Default::default()
    }
}

/// `(name, Any)` pairs for the test server.
pub fn named<T: prost::Message + prost::Name>(items: Vec<(&str, T)>) -> Vec<(String, Any)> {
    items
        .into_iter()
        .map(|(n, r)| (n.to_string(), pack_any(r)))
        .collect()
}
