//! Install values: a profile's defaults overlaid with `--set key=value`
//! and `--revision`, decoded into [`Values`].
//!
//! The tree mirrors Istio's install keys (`hub`, `tag`, `revision`,
//! `components.*`, `meshConfig.*`, `values.pilot.*`,
//! `values.gateways.istio-ingressgateway.*`) and the Helm chart's
//! `values.yaml`. A profile's tree lists every key there is, so a `--set`
//! of a key the tree lacks is a typo and an error naming it; a value takes
//! the type of the default it replaces. Two subtrees are open: `meshConfig`
//! (checked against the MeshConfig API, unknown fields are errors) and
//! `values.pilot.env` (extra environment variables for mesh-control).

use std::collections::BTreeMap;

use clap::ValueEnum;
use mesh_api::mesh_config::MeshConfig;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Default image registry.
pub const DEFAULT_HUB: &str = "ghcr.io/mesh-rs";

/// Subtrees whose keys are not fixed by the profile.
const OPEN_SUBTREES: [&str; 2] = ["meshConfig", "values.pilot.env"];

/// Installation profiles, with Istio's meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// The control plane and an ingress gateway.
    #[default]
    Default,
    /// The control plane only.
    Minimal,
    /// `default` with debug logs, 100 % trace sampling, stdout access logs
    /// and small resource requests, for trying the mesh on a laptop cluster.
    Demo,
}

/// What can be wrong with the values.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    /// `--set` without `=`.
    #[error("--set {0:?}: expected key=value")]
    NoEquals(String),
    /// A key no profile has (a typo, or a key this mesh does not support).
    #[error(
        "--set {key}: unknown key {missing:?}; see `docs/kubernetes.md` for the keys there are"
    )]
    UnknownKey {
        /// The key as given.
        key: String,
        /// The first path segment that does not exist.
        missing: String,
    },
    /// A value of the wrong type for its key.
    #[error("--set {key}={value}: expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
    /// A key that sets a subtree (`--set values.pilot=1`).
    #[error("--set {0}: this key holds other keys; set one of them, e.g. {0}.<name>")]
    NotALeaf(String),
    /// The revision is not a DNS-1123 label.
    #[error(
        "revision {0:?}: must be a lowercase DNS-1123 label of at most 40 characters (letters, digits, '-')"
    )]
    BadRevision(String),
    /// `meshConfig` does not decode as MeshConfig.
    #[error("--set meshConfig.{path}: {message}")]
    MeshConfig {
        /// Path inside meshConfig.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A value out of its range.
    #[error("{key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The values tree does not decode (a type the coercion let through).
    #[error("values: {0}")]
    Decode(String),
}

/// The decoded values everything is rendered from.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    /// Image registry.
    pub hub: String,
    /// Image tag.
    pub tag: String,
    /// Control plane revision; empty for the default one.
    pub revision: String,
    /// Which components are installed.
    pub components: Components,
    /// The mesh config (the `mesh` key of ConfigMap `istio`), before the
    /// discovery address is added.
    #[serde(skip)]
    pub mesh_config: MeshConfig,
    /// Component settings.
    pub values: ComponentValues,
}

/// `components.*`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Components {
    /// `components.ingressGateways`.
    pub ingress_gateways: Enabled,
}

/// A component switch.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Enabled {
    /// Whether the component is installed.
    pub enabled: bool,
}

/// `values.*`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentValues {
    /// `values.global`.
    pub global: Global,
    /// `values.pilot`: the control plane (istiod).
    pub pilot: Pilot,
    /// `values.gateways`.
    pub gateways: Gateways,
}

/// `values.global`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Global {
    /// JSON log lines instead of text.
    pub log_as_json: bool,
}

/// `values.pilot`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pilot {
    /// Replicas when autoscaling is off.
    pub replica_count: i32,
    /// Whether an HPA scales istiod (then the Deployment leaves replicas to it).
    pub autoscale_enabled: bool,
    /// HPA minimum.
    pub autoscale_min: i32,
    /// HPA maximum.
    pub autoscale_max: i32,
    /// HPA CPU target.
    pub cpu: CpuTarget,
    /// mesh-control's log filter (`RUST_LOG`).
    pub log_level: String,
    /// Default trace sampling percentage of the proxies.
    pub trace_sampling: f64,
    /// Container resources.
    pub resources: Resources,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
}

/// `values.pilot.cpu`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuTarget {
    /// Average CPU utilization target in percent.
    pub target_average_utilization: i32,
}

/// Requests and limits; an empty string leaves one unset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `requests.cpu`, `requests.memory`.
    pub requests: CpuMemory,
    /// `limits.cpu`, `limits.memory`.
    pub limits: CpuMemory,
}

/// A cpu/memory pair of quantities.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuMemory {
    /// CPU quantity (`500m`), or empty.
    pub cpu: String,
    /// Memory quantity (`512Mi`), or empty.
    pub memory: String,
}

/// `values.gateways`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gateways {
    /// The ingress gateway.
    #[serde(rename = "istio-ingressgateway")]
    pub ingress: Gateway,
}

/// One gateway's settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Replicas.
    pub replica_count: i32,
    /// Service type (`LoadBalancer`, `NodePort`, `ClusterIP`).
    #[serde(rename = "type")]
    pub service_type: String,
    /// mesh-proxy's log level.
    pub log_level: String,
    /// Container resources.
    pub resources: Resources,
}

impl Profile {
    /// The profile's complete values tree (every settable key).
    pub fn tree(self) -> Value {
        let demo = self == Profile::Demo;
        let (pilot_cpu, pilot_memory) = if demo {
            ("10m", "100Mi")
        } else {
            ("500m", "512Mi")
        };
        let (gw_requests, gw_limits) = if demo {
            (
                json!({"cpu": "10m", "memory": "40Mi"}),
                json!({"cpu": "2000m", "memory": "1024Mi"}),
            )
        } else {
            (
                json!({"cpu": "100m", "memory": "128Mi"}),
                json!({"cpu": "2000m", "memory": "1024Mi"}),
            )
        };
        let mesh_config = if demo {
            json!({"accessLogFile": "/dev/stdout"})
        } else {
            json!({})
        };
        json!({
            "hub": DEFAULT_HUB,
            "tag": env!("CARGO_PKG_VERSION"),
            "revision": "",
            "components": {
                "ingressGateways": {"enabled": self != Profile::Minimal},
            },
            "meshConfig": mesh_config,
            "values": {
                "global": {"logAsJson": false},
                "pilot": {
                    "replicaCount": 1,
                    "autoscaleEnabled": true,
                    "autoscaleMin": 1,
                    "autoscaleMax": 5,
                    "cpu": {"targetAverageUtilization": 80},
                    "logLevel": if demo { "debug" } else { "info" },
                    "traceSampling": if demo { 100.0 } else { 1.0 },
                    "resources": {
                        "requests": {"cpu": pilot_cpu, "memory": pilot_memory},
                        "limits": {"cpu": "", "memory": ""},
                    },
                    "env": {},
                },
                "gateways": {
                    "istio-ingressgateway": {
                        "replicaCount": 1,
                        "type": "LoadBalancer",
                        "logLevel": if demo { "debug" } else { "info" },
                        "resources": {"requests": gw_requests, "limits": gw_limits},
                    },
                },
            },
        })
    }
}

/// Builds the values for `profile` with the `--set` pairs applied in order
/// and `revision` (when given) overriding `--set revision=`.
pub fn build(
    profile: Profile,
    sets: &[String],
    revision: Option<&str>,
) -> Result<Values, ValuesError> {
    let mut tree = profile.tree();
    for set in sets {
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| ValuesError::NoEquals(set.clone()))?;
        set_key(&mut tree, key.trim(), value)?;
    }
    if let Some(rev) = revision {
        set_key(&mut tree, "revision", rev)?;
    }
    decode(tree)
}

/// Decodes a complete tree (a profile's, after `--set`).
fn decode(mut tree: Value) -> Result<Values, ValuesError> {
    let mesh = tree
        .as_object_mut()
        .and_then(|t| t.remove("meshConfig"))
        .unwrap_or_else(|| json!({}));
    let mut values: Values =
        serde_json::from_value(tree).map_err(|e| ValuesError::Decode(e.to_string()))?;
    values.mesh_config = decode_mesh_config(mesh)?;
    if values.revision == "default" {
        values.revision.clear();
    }
    let rev = &values.revision;
    if !rev.is_empty() && (rev.len() > 40 || !mesh_api::validation::is_dns1123_label(rev)) {
        return Err(ValuesError::BadRevision(rev.clone()));
    }
    let pilot = &values.values.pilot;
    if pilot.autoscale_min < 1 || pilot.autoscale_max < pilot.autoscale_min {
        return Err(ValuesError::Invalid {
            key: "values.pilot.autoscaleMax",
            message: format!(
                "autoscaleMin {} and autoscaleMax {} must satisfy 1 <= min <= max",
                pilot.autoscale_min, pilot.autoscale_max
            ),
        });
    }
    for (key, n) in [
        ("values.pilot.replicaCount", pilot.replica_count),
        (
            "values.gateways.istio-ingressgateway.replicaCount",
            values.values.gateways.ingress.replica_count,
        ),
    ] {
        if n < 0 {
            return Err(ValuesError::Invalid {
                key,
                message: format!("{n} replicas"),
            });
        }
    }
    Ok(values)
}

fn decode_mesh_config(value: Value) -> Result<MeshConfig, ValuesError> {
    let mut report = mesh_api::validation::Report::default();
    let config = mesh_api::object::decode::<MeshConfig>(value, &mut report, true);
    // Unknown fields are warnings for a ConfigMap someone wrote; on the
    // command line they are typos, so every finding stops the install.
    if let Some(d) = report.diagnostics.first() {
        let message = if d.severity == mesh_api::validation::Severity::Warning {
            "not a MeshConfig field; check its spelling (Istio's camelCase names)".to_string()
        } else {
            d.message.clone()
        };
        return Err(ValuesError::MeshConfig {
            path: d.path.clone(),
            message,
        });
    }
    config.ok_or_else(|| ValuesError::MeshConfig {
        path: String::new(),
        message: "does not decode".into(),
    })
}

/// Sets the dotted `key` in `tree` to `raw`, typed like the default it
/// replaces (or inferred inside an open subtree).
fn set_key(tree: &mut Value, key: &str, raw: &str) -> Result<(), ValuesError> {
    let segments: Vec<&str> = key.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ValuesError::UnknownKey {
            key: key.into(),
            missing: key.into(),
        });
    }
    let open_at = OPEN_SUBTREES.iter().find_map(|open| {
        let open: Vec<&str> = open.split('.').collect();
        (segments.len() > open.len() && segments[..open.len()] == open[..]).then_some(open.len())
    });
    let mut node = tree;
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let open = open_at.is_some_and(|at| i >= at);
        let Value::Object(map) = node else {
            // A leaf on the way: `--set hub.x=1`.
            return Err(ValuesError::UnknownKey {
                key: key.into(),
                missing: segments[..=i].join("."),
            });
        };
        if last {
            return set_leaf(map, key, segment, raw, open);
        }
        if !map.contains_key(*segment) {
            if !open {
                return Err(ValuesError::UnknownKey {
                    key: key.into(),
                    missing: segments[..=i].join("."),
                });
            }
            map.insert((*segment).to_string(), Value::Object(Map::new()));
        }
        node = map
            .get_mut(*segment)
            .ok_or_else(|| ValuesError::NotALeaf(key.into()))?;
    }
    Ok(())
}

fn set_leaf(
    map: &mut Map<String, Value>,
    key: &str,
    segment: &str,
    raw: &str,
    open: bool,
) -> Result<(), ValuesError> {
    let wrong = |expected| ValuesError::WrongType {
        key: key.into(),
        value: raw.into(),
        expected,
    };
    let value = match map.get(segment) {
        None if !open => {
            return Err(ValuesError::UnknownKey {
                key: key.into(),
                missing: key.into(),
            });
        }
        None | Some(Value::Null) => {
            if key.starts_with("values.pilot.env.") {
                Value::String(raw.into())
            } else {
                infer(raw)
            }
        }
        Some(Value::Object(_)) | Some(Value::Array(_)) => {
            return Err(ValuesError::NotALeaf(key.into()));
        }
        Some(Value::String(_)) => Value::String(raw.into()),
        Some(Value::Bool(_)) => Value::Bool(raw.parse().map_err(|_| wrong("true or false"))?),
        Some(Value::Number(n)) if n.is_f64() => {
            json!(raw.parse::<f64>().map_err(|_| wrong("a number"))?)
        }
        Some(Value::Number(_)) => json!(raw.parse::<i32>().map_err(|_| wrong("an integer"))?),
    };
    map.insert(segment.to_string(), value);
    Ok(())
}

/// The type of a value in an open subtree, as Helm's `--set` infers it.
fn infer(raw: &str) -> Value {
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => raw
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| raw.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(raw.into())),
    }
}

impl Values {
    /// The revision's label value: `default` for the default revision.
    pub fn revision_label(&self) -> &str {
        if self.revision.is_empty() {
            "default"
        } else {
            &self.revision
        }
    }

    /// `name`, or `name-R` for revision R.
    pub fn revisioned(&self, name: &str) -> String {
        if self.revision.is_empty() {
            name.to_string()
        } else {
            format!("{name}-{}", self.revision)
        }
    }

    /// `<hub>/<image>:<tag>`.
    pub fn image(&self, image: &str) -> String {
        format!("{}/{image}:{}", self.hub.trim_end_matches('/'), self.tag)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn set(sets: &[&str]) -> Result<Values, ValuesError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        build(Profile::Default, &sets, None)
    }

    #[test]
    fn profiles_decode() {
        for p in [Profile::Default, Profile::Minimal, Profile::Demo] {
            build(p, &[], None).unwrap();
        }
        assert!(
            !build(Profile::Minimal, &[], None)
                .unwrap()
                .components
                .ingress_gateways
                .enabled
        );
        assert_eq!(
            build(Profile::Demo, &[], None)
                .unwrap()
                .values
                .pilot
                .log_level,
            "debug"
        );
    }

    #[test]
    fn typed_sets() {
        let v = set(&[
            "values.pilot.replicaCount=3",
            "values.pilot.autoscaleEnabled=false",
            "tag=1.2",
        ])
        .unwrap();
        assert_eq!(v.values.pilot.replica_count, 3);
        assert!(!v.values.pilot.autoscale_enabled);
        assert_eq!(v.tag, "1.2");
        let err = set(&["values.pilot.replicaCount=three"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("values.pilot.replicaCount") && err.contains("integer"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = set(&["values.pilot.replicas=3"]).unwrap_err().to_string();
        assert!(err.contains("values.pilot.replicas"), "{err}");
        let err = set(&["meshConfig.acessLogFile=/dev/stdout"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("meshConfig.acessLogFile"), "{err}");
        let err = set(&["hub.x=1"]).unwrap_err().to_string();
        assert!(err.contains("hub.x"), "{err}");
        assert!(matches!(
            set(&["values.pilot=1"]),
            Err(ValuesError::NotALeaf(_))
        ));
        assert!(matches!(set(&["hub"]), Err(ValuesError::NoEquals(_))));
    }

    #[test]
    fn open_subtrees() {
        let v = set(&[
            "meshConfig.accessLogFile=/dev/stdout",
            "meshConfig.defaultConfig.holdApplicationUntilProxyStarts=true",
            "values.pilot.env.FOO=1",
        ])
        .unwrap();
        assert_eq!(
            v.mesh_config.access_log_file.as_deref(),
            Some("/dev/stdout")
        );
        assert_eq!(v.values.pilot.env["FOO"], "1");
    }

    #[test]
    fn revisions() {
        assert_eq!(
            set(&["revision=canary"]).unwrap().revisioned("istiod"),
            "istiod-canary"
        );
        assert_eq!(
            build(Profile::Default, &[], Some("default"))
                .unwrap()
                .revision,
            ""
        );
        assert!(matches!(
            set(&["revision=Canary_1"]),
            Err(ValuesError::BadRevision(_))
        ));
    }
}
