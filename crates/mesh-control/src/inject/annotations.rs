//! The pod annotations the injector reads (Istio's names), parsed into
//! [`Overrides`]. A malformed value is a warning and the default stays: an
//! annotation never fails a pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use mesh_api::mesh_config::ProxyConfig;
use mesh_api::wellknown;

const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
const REWRITE_PROBES: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";

/// Istio annotations this injector knows but does not act on; they get a
/// warning saying so rather than being silently dropped.
const UNSUPPORTED: [&str; 12] = [
    "sidecar.istio.io/bootstrapOverride",
    "sidecar.istio.io/componentLogLevel",
    "sidecar.istio.io/agentLogLevel",
    "sidecar.istio.io/enableCoreDump",
    "sidecar.istio.io/extraStatTags",
    "sidecar.istio.io/statsInclusionPrefixes",
    "sidecar.istio.io/statsInclusionSuffixes",
    "sidecar.istio.io/statsInclusionRegexps",
    "sidecar.istio.io/userVolume",
    "sidecar.istio.io/userVolumeMount",
    "sidecar.istio.io/templates",
    "traffic.sidecar.istio.io/kubevirtInterfaces",
];

/// Annotations read elsewhere (or only informative); no warning.
const KNOWN: [&str; 3] = [
    wellknown::LABEL_SIDECAR_INJECT,
    wellknown::ANNOTATION_SIDECAR_STATUS,
    "sidecar.istio.io/statsHistogramBuckets",
];

/// Everything the annotations change, defaults filled in.
#[derive(Clone, Debug)]
pub struct Overrides {
    /// `-i`: outbound CIDRs captured.
    pub include_outbound_ranges: String,
    /// `-x`: outbound CIDRs not captured.
    pub exclude_outbound_ranges: String,
    /// `-b`: inbound ports captured.
    pub include_inbound_ports: String,
    /// `-d`: inbound ports not captured.
    pub exclude_inbound_ports: String,
    /// `-o`: outbound ports not captured.
    pub exclude_outbound_ports: String,
    /// `-q`: outbound ports always captured.
    pub include_outbound_ports: String,
    /// Proxy image override.
    pub image: Option<String>,
    /// Proxy log level.
    pub log_level: Option<String>,
    /// Whether app probes go through the status port.
    pub rewrite_probes: bool,
    /// Native sidecar override.
    pub native_sidecar: Option<bool>,
    /// Start the app only once the proxy is ready.
    pub hold_application: bool,
    /// `defaultConfig` merged with `proxy.istio.io/config`.
    pub proxy: ProxyConfig,
    cpu: String,
    memory: String,
    cpu_limit: String,
    memory_limit: String,
}

impl Overrides {
    /// Reads `annotations` over `defaults`, returning the warnings too.
    pub fn parse(
        annotations: &BTreeMap<String, String>,
        defaults: &ProxyConfig,
    ) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let mut proxy = defaults.clone();
        if let Some(text) = annotations.get(wellknown::ANNOTATION_PROXY_CONFIG) {
            match serde_saphyr::from_str::<ProxyConfig>(text) {
                Ok(over) => merge(&mut proxy, over),
                Err(e) => warnings.push(format!(
                    "annotation {}: not a ProxyConfig ({}); mesh defaults used",
                    wellknown::ANNOTATION_PROXY_CONFIG,
                    first_line(&e.to_string())
                )),
            }
        }
        let mut w = |key: &str, problem: String| {
            warnings.push(format!("annotation {key}: {problem}; default used"));
        };
        let mut list = |key: &str, default: &str, check: fn(&str) -> bool| -> String {
            match annotations.get(key) {
                None => default.to_string(),
                Some(v) => {
                    let v = v.trim();
                    let ok = v.is_empty() || v == "*" || v.split(',').map(str::trim).all(check);
                    if ok {
                        v.split(',').map(str::trim).collect::<Vec<_>>().join(",")
                    } else {
                        w(key, format!("{v:?} is not a comma-separated list"));
                        default.to_string()
                    }
                }
            }
        };
        let include_outbound_ranges = list(
            wellknown::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES,
            "*",
            is_cidr,
        );
        let exclude_outbound_ranges = list(
            wellknown::ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES,
            "",
            is_cidr,
        );
        let include_inbound_ports = list(wellknown::ANNOTATION_INCLUDE_INBOUND_PORTS, "*", is_port);
        let exclude_inbound_ports = list(wellknown::ANNOTATION_EXCLUDE_INBOUND_PORTS, "", is_port);
        let exclude_outbound_ports =
            list(wellknown::ANNOTATION_EXCLUDE_OUTBOUND_PORTS, "", is_port);
        let include_outbound_ports = list(INCLUDE_OUTBOUND_PORTS, "", is_port);

        let mut quantity = |key: &str, default: &str| -> String {
            match annotations.get(key) {
                Some(v) if is_quantity(v.trim()) => v.trim().to_string(),
                Some(v) => {
                    w(key, format!("{v:?} is not a resource quantity"));
                    default.to_string()
                }
                None => default.to_string(),
            }
        };
        let cpu = quantity(PROXY_CPU, "100m");
        let memory = quantity(PROXY_MEMORY, "128Mi");
        let cpu_limit = quantity(PROXY_CPU_LIMIT, "2000m");
        let memory_limit = quantity(PROXY_MEMORY_LIMIT, "1024Mi");

        let mut boolean = |key: &str| -> Option<bool> {
            let v = annotations.get(key)?;
            match v.trim().to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => {
                    w(key, format!("{v:?} is not true or false"));
                    None
                }
            }
        };
        let rewrite_probes = boolean(REWRITE_PROBES).unwrap_or(true);
        let native_sidecar = boolean(NATIVE_SIDECAR);

        let image = match annotations.get(PROXY_IMAGE) {
            Some(v) if !v.trim().is_empty() && !v.contains(char::is_whitespace) => {
                Some(v.trim().to_string())
            }
            Some(v) => {
                w(PROXY_IMAGE, format!("{v:?} is not an image reference"));
                None
            }
            None => None,
        };
        let log_level = match annotations
            .get(LOG_LEVEL)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => None,
            Some(level) => match level.as_str() {
                "trace" | "debug" | "info" | "error" | "off" => Some(level),
                "warning" | "warn" => Some("warn".to_string()),
                "critical" => Some("error".to_string()),
                _ => {
                    w(LOG_LEVEL, format!("{level:?} is not a log level"));
                    None
                }
            },
        };
        if let Some(mode) = annotations.get(INTERCEPTION_MODE)
            && !mode.eq_ignore_ascii_case("REDIRECT")
        {
            w(
                INTERCEPTION_MODE,
                format!("{mode:?} is not supported (only REDIRECT)"),
            );
        }
        let hold_application = proxy.hold_application_until_proxy_starts.unwrap_or(false);

        for key in annotations.keys() {
            let ours = [
                "sidecar.istio.io/",
                "traffic.sidecar.istio.io/",
                "proxy.istio.io/",
            ]
            .iter()
            .any(|p| key.starts_with(p));
            if !ours || is_read(key) || KNOWN.contains(&key.as_str()) {
                continue;
            }
            if UNSUPPORTED.contains(&key.as_str()) {
                warnings.push(format!(
                    "annotation {key} is not supported by this mesh; ignored"
                ));
            } else {
                warnings.push(format!("unknown annotation {key}; ignored"));
            }
        }
        let overrides = Self {
            include_outbound_ranges,
            exclude_outbound_ranges,
            include_inbound_ports,
            exclude_inbound_ports,
            exclude_outbound_ports,
            include_outbound_ports,
            image,
            log_level,
            rewrite_probes,
            native_sidecar,
            hold_application,
            proxy,
            cpu,
            memory,
            cpu_limit,
            memory_limit,
        };
        (overrides, warnings)
    }

    /// The proxy's (and init container's) resources.
    pub fn resources(&self) -> ResourceRequirements {
        super::resources(&self.cpu, &self.memory, &self.cpu_limit, &self.memory_limit)
    }
}

fn is_read(key: &str) -> bool {
    [
        PROXY_CPU,
        PROXY_MEMORY,
        PROXY_CPU_LIMIT,
        PROXY_MEMORY_LIMIT,
        PROXY_IMAGE,
        LOG_LEVEL,
        REWRITE_PROBES,
        NATIVE_SIDECAR,
        INTERCEPTION_MODE,
        INCLUDE_OUTBOUND_PORTS,
        wellknown::ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES,
        wellknown::ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES,
        wellknown::ANNOTATION_INCLUDE_INBOUND_PORTS,
        wellknown::ANNOTATION_EXCLUDE_INBOUND_PORTS,
        wellknown::ANNOTATION_EXCLUDE_OUTBOUND_PORTS,
        wellknown::ANNOTATION_PROXY_CONFIG,
    ]
    .contains(&key)
}

/// Fields set in `over` replace those of `base` (Istio merges the
/// annotation over `defaultConfig` the same way, field by field).
fn merge(base: &mut ProxyConfig, over: ProxyConfig) {
    let (Ok(serde_json::Value::Object(mut b)), Ok(serde_json::Value::Object(o))) =
        (serde_json::to_value(&*base), serde_json::to_value(over))
    else {
        return;
    };
    b.extend(o);
    if let Ok(merged) = serde_json::from_value(serde_json::Value::Object(b)) {
        *base = merged;
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn is_port(s: &str) -> bool {
    s.parse::<u16>().is_ok_and(|p| p > 0)
}

fn is_cidr(s: &str) -> bool {
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    match addr.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            len.is_empty() || len.parse::<u8>().is_ok_and(|l| l <= max)
        }
        Err(_) => false,
    }
}

/// A Kubernetes resource quantity: a decimal number with an optional
/// binary (`Ki`..`Ei`), decimal (`n`, `u`, `m`, `k`, `M`..`E`) or
/// exponent suffix.
fn is_quantity(s: &str) -> bool {
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits);
    let number_ok = !number.is_empty()
        && number.trim_start_matches(['+', '-']).parse::<f64>().is_ok()
        && !number.trim_start_matches(['+', '-']).contains(['+', '-']);
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|e| e.trim_start_matches(['+', '-']).parse::<u32>().is_ok());
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for good in ["100m", "1", "0.5", "128Mi", "1Gi", "2e3", "1.5G"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "lots", "10 Mi", "1Q", "-", "m"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn cidrs_and_ports() {
        assert!(is_cidr("10.0.0.0/8") && is_cidr("fd00::/8") && is_cidr("1.2.3.4"));
        assert!(!is_cidr("10.0.0.0/33") && !is_cidr("ten"));
        assert!(is_port("8080") && !is_port("0") && !is_port("70000"));
    }
}
