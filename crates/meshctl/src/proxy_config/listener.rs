//! `proxy-config listener`: one row per filter chain, with what the chain
//! matches (SNI, transport, ALPN, destination) and where it sends traffic
//! (an RDS route name, a TCP cluster, or an inline route), in istioctl's
//! words.

use serde_json::Value;

use super::dump::{array, field, path, str_field, strings, type_name, u64_field};
use super::route::describe_match;
use super::table::Table;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const BLACK_HOLE: &str = "BlackHoleCluster";

/// ALPN lists istioctl names instead of spelling out.
const ALPN_NAMES: [(&str, &[&str]); 4] = [
    (
        "App: HTTP TLS",
        &[
            "http/1.0",
            "http/1.1",
            "h2c",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2",
        ],
    ),
    (
        "App: Istio HTTP Plain",
        &["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
    ),
    ("App: TCP TLS", &["istio-peer-exchange", "istio"]),
    ("App: HTTP", &["http/1.0", "http/1.1", "h2c"]),
];

/// `--address`, `--port`, `--type`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListenerFilter {
    /// Only listeners on this address.
    #[arg(long)]
    pub address: Option<String>,
    /// Only listeners on this port.
    #[arg(long)]
    pub port: Option<u32>,
    /// Only listeners of this type (HTTP, TCP, HTTP+TCP).
    #[arg(long = "type")]
    pub kind: Option<String>,
}

// === impl ListenerFilter ===

impl ListenerFilter {
    /// Whether `listener` passes.
    pub fn matches(&self, listener: &Value) -> bool {
        let address_ok = self.address.as_deref().is_none_or(|want| {
            addresses(listener)
                .iter()
                .any(|a| a.eq_ignore_ascii_case(want))
        });
        let port_ok = self.port.is_none_or(|p| port(listener) == u64::from(p));
        let kind_ok = self
            .kind
            .as_deref()
            .is_none_or(|k| listener_type(listener).eq_ignore_ascii_case(k));
        address_ok && port_ok && kind_ok
    }
}

/// The listeners that pass `filter`, by port, address, then type.
pub fn select<'a>(listeners: &[&'a Value], filter: &ListenerFilter) -> Vec<&'a Value> {
    let mut selected: Vec<&Value> = listeners
        .iter()
        .copied()
        .filter(|l| filter.matches(l))
        .collect();
    selected.sort_by_cached_key(|l| (port(l), address(l).to_string(), listener_type(l)));
    selected
}

/// The listener table.
pub fn table(listeners: &[&Value], filter: &ListenerFilter) -> Table {
    let mut table = Table::new(&["ADDRESSES", "PORT", "MATCH", "DESTINATION"], 1);
    for listener in select(listeners, filter) {
        let addresses = addresses(listener).join(",");
        let port = port(listener).to_string();
        let mut chains: Vec<(String, String)> = chains(listener)
            .map(|chain| {
                (
                    describe_chain_match(field(chain, "filter_chain_match")),
                    destination(array(chain, "filters")),
                )
            })
            .collect();
        // istioctl lists a listener's chains by destination, descending.
        chains.sort_by(|a, b| b.1.cmp(&a.1));
        for (matched, destination) in chains {
            table.push(vec![addresses.clone(), port.clone(), matched, destination]);
        }
    }
    table
}

/// Filter chains, the default chain last.
fn chains(listener: &Value) -> impl Iterator<Item = &Value> {
    array(listener, "filter_chains")
        .iter()
        .chain(field(listener, "default_filter_chain"))
}

fn address(listener: &Value) -> &str {
    let Some(addr) = field(listener, "address") else {
        return "";
    };
    if let Some(sa) = field(addr, "socket_address") {
        return str_field(sa, "address");
    }
    path(addr, &["pipe", "path"])
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The main address and the additional ones.
fn addresses(listener: &Value) -> Vec<&str> {
    let extra = array(listener, "additional_addresses")
        .iter()
        .filter_map(|a| path(a, &["address", "socket_address", "address"]).and_then(Value::as_str));
    std::iter::once(address(listener)).chain(extra).collect()
}

fn port(listener: &Value) -> u64 {
    path(listener, &["address", "socket_address"])
        .and_then(|sa| u64_field(sa, "port_value"))
        .unwrap_or(0)
}

/// `HTTP`, `TCP`, `HTTP+TCP` or `UNKNOWN`, by the filters of its chains.
fn listener_type(listener: &Value) -> String {
    let (mut http, mut tcp) = (0, 0);
    for chain in chains(listener) {
        for filter in array(chain, "filters") {
            if is_filter(filter, HCM, "HttpConnectionManager") {
                http += 1;
            } else if is_filter(filter, TCP_PROXY, "TcpProxy") && !is_black_hole(filter) {
                tcp += 1;
            }
        }
    }
    match (http > 0, tcp > 0) {
        (true, false) => "HTTP",
        (true, true) => "HTTP+TCP",
        (false, true) => "TCP",
        (false, false) => "UNKNOWN",
    }
    .into()
}

/// Whether `filter` is the named network filter (by name, or by the type of
/// its config, since a filter's name is free-form).
fn is_filter(filter: &Value, name: &str, config_type: &str) -> bool {
    str_field(filter, "name") == name
        || field(filter, "typed_config").is_some_and(|c| type_name(c).ends_with(config_type))
}

fn is_black_hole(filter: &Value) -> bool {
    field(filter, "typed_config").is_some_and(|c| c.to_string().contains(BLACK_HOLE))
}

/// What a filter chain matches, as istioctl shows it (`ALL` for nothing).
pub fn describe_chain_match(matched: Option<&Value>) -> String {
    let empty = Value::Null;
    let m = matched.unwrap_or(&empty);
    let mut parts = Vec::new();
    let sni = strings(m, "server_names");
    if !sni.is_empty() {
        parts.push(format!("SNI: {}", sni.join(",")));
    }
    let transport = str_field(m, "transport_protocol");
    if !transport.is_empty() {
        parts.push(format!("Trans: {transport}"));
    }
    let alpn = strings(m, "application_protocols");
    if !alpn.is_empty() {
        match ALPN_NAMES.iter().find(|(_, list)| *list == alpn.as_slice()) {
            Some((name, _)) => parts.push((*name).into()),
            None => parts.push(format!("App: {}", alpn.join(","))),
        }
    }
    let port = u64_field(m, "destination_port")
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let ranges: Vec<String> = array(m, "prefix_ranges")
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                str_field(r, "address_prefix"),
                u64_field(r, "prefix_len").unwrap_or(0)
            )
        })
        .collect();
    if !ranges.is_empty() {
        parts.push(format!("Addr: {}{port}", ranges.join(",")));
    } else if !port.is_empty() {
        parts.push(format!("Addr: *{port}"));
    }
    if parts.is_empty() {
        return "ALL".into();
    }
    parts.join("; ")
}

/// Where a chain's filters send traffic.
fn destination(filters: &[Value]) -> String {
    for filter in filters {
        if is_filter(filter, HCM, "HttpConnectionManager") {
            let config = field(filter, "typed_config");
            if let Some(route_config) = config.and_then(|c| field(c, "route_config")) {
                return describe_inline_routes(route_config);
            }
            let rds = config
                .and_then(|c| path(c, &["rds", "route_config_name"]))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !rds.is_empty() {
                return format!("Route: {rds}");
            }
            return "HTTP".into();
        }
        if is_filter(filter, TCP_PROXY, "TcpProxy") && !is_black_hole(filter) {
            let cluster = field(filter, "typed_config")
                .map(|c| str_field(c, "cluster"))
                .unwrap_or_default();
            return if cluster.contains("Cluster") {
                cluster.into()
            } else {
                format!("Cluster: {cluster}")
            };
        }
    }
    "Non-HTTP/Non-TCP".into()
}

/// An inline route configuration: its cluster when it sends everything to
/// one, else its virtual hosts' domains and matches.
fn describe_inline_routes(route_config: &Value) -> String {
    let vhosts = array(route_config, "virtual_hosts");
    if let [vh] = vhosts
        && strings(vh, "domains") == ["*"]
        && let [route] = array(vh, "routes")
        && path(route, &["match", "prefix"]).and_then(Value::as_str) == Some("/")
        && let Some(cluster) = path(route, &["route", "cluster"]).and_then(Value::as_str)
    {
        return if cluster.contains("Cluster") {
            cluster.into()
        } else {
            format!("Cluster: {cluster}")
        };
    }
    let described: Vec<String> = vhosts
        .iter()
        .map(|vh| {
            let routes: Vec<String> = array(vh, "routes")
                .iter()
                .map(|r| describe_match(field(r, "match")))
                .collect();
            let domains = strings(vh, "domains");
            if domains == ["*"] {
                routes.join(", ")
            } else {
                format!("{} {}", domains.join("/"), routes.join(", "))
            }
        })
        .collect();
    format!("Inline Route: {}", described.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chain_matches_in_istioctl_words() {
        assert_eq!(describe_chain_match(None), "ALL");
        assert_eq!(
            describe_chain_match(Some(&json!({"destination_port": 9080}))),
            "Addr: *:9080"
        );
        assert_eq!(
            describe_chain_match(Some(&json!({
                "transport_protocol": "tls",
                "application_protocols": ["istio-peer-exchange", "istio"],
                "prefix_ranges": [{"address_prefix": "10.0.0.1", "prefix_len": 32}],
                "destination_port": 8080
            }))),
            "Trans: tls; App: TCP TLS; Addr: 10.0.0.1/32:8080"
        );
        assert_eq!(
            describe_chain_match(Some(&json!({"applicationProtocols": ["http/1.1", "h2c"]}))),
            "App: http/1.1,h2c"
        );
    }

    #[test]
    fn destinations() {
        let hcm = |config: Value| {
            json!([{"name": HCM, "typed_config": config}])
                .as_array()
                .unwrap()
                .clone()
        };
        assert_eq!(
            destination(&hcm(json!({"rds": {"route_config_name": "9080"}}))),
            "Route: 9080"
        );
        assert_eq!(
            destination(&hcm(json!({"route_config": {"virtual_hosts": [
                {"domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound|9080||"}}]}
            ]}}))),
            "Cluster: inbound|9080||"
        );
        let tcp = json!([{"name": TCP_PROXY, "typed_config": {"cluster": "PassthroughCluster"}}]);
        assert_eq!(destination(tcp.as_array().unwrap()), "PassthroughCluster");
        let hole = json!([{"name": TCP_PROXY, "typed_config": {"cluster": "BlackHoleCluster"}}]);
        assert_eq!(destination(hole.as_array().unwrap()), "Non-HTTP/Non-TCP");
    }
}
