//! `meshctl manifest generate` / `install --dry-run`: every document parses
//! back into its k8s-openapi type, and the fields users and the cluster
//! depend on are what the names contract says (webhook selectors, RBAC,
//! revision naming, --set overrides). The committed `deploy/manifests/`
//! files are this output (`UPDATE_GOLDEN=1` rewrites them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::de::DeserializeOwned;

/// Every generated object, parsed into its type.
#[derive(Default)]
struct Parsed {
    kinds: Vec<String>,
    crds: Vec<CustomResourceDefinition>,
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    hpas: Vec<HorizontalPodAutoscaler>,
    webhooks: Vec<MutatingWebhookConfiguration>,
}

fn meshctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn typed<T: DeserializeOwned>(doc: &str) -> T {
    // serde_path_to_error would be nicer; the document index is in the panic.
    serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"))
}

fn parse(yaml: &str) -> Parsed {
    let mut p = Parsed::default();
    for doc in mesh_api::object::split_documents(yaml) {
        let v: serde_json::Value = serde_saphyr::from_str(doc.text).unwrap();
        let kind = v["kind"].as_str().unwrap().to_string();
        let t = doc.text;
        match kind.as_str() {
            "CustomResourceDefinition" => p.crds.push(typed(t)),
            "Namespace" => p.namespaces.push(typed(t)),
            "ServiceAccount" => p.service_accounts.push(typed(t)),
            "ClusterRole" => p.cluster_roles.push(typed(t)),
            "ClusterRoleBinding" => p.cluster_role_bindings.push(typed(t)),
            "Role" => p.roles.push(typed(t)),
            "RoleBinding" => p.role_bindings.push(typed(t)),
            "ConfigMap" => p.config_maps.push(typed(t)),
            "Deployment" => p.deployments.push(typed(t)),
            "Service" => p.services.push(typed(t)),
            "PodDisruptionBudget" => p.pdbs.push(typed(t)),
            "HorizontalPodAutoscaler" => p.hpas.push(typed(t)),
            "MutatingWebhookConfiguration" => p.webhooks.push(typed(t)),
            other => panic!("unexpected kind {other}"),
        }
        p.kinds.push(kind);
    }
    p
}

fn generate(args: &[&str]) -> Parsed {
    let mut all = vec!["manifest", "generate"];
    all.extend_from_slice(args);
    let (code, out, err) = meshctl(&all);
    assert_eq!(code, 0, "{err}");
    parse(&out)
}

fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap()
}

fn deployment<'a>(p: &'a Parsed, n: &str) -> &'a Deployment {
    p.deployments
        .iter()
        .find(|d| name(&d.metadata) == n)
        .unwrap_or_else(|| panic!("no Deployment {n}"))
}

fn expr(sel: &LabelSelector, key: &str) -> (String, Vec<String>) {
    let e = sel
        .match_expressions
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no expression on {key} in {sel:?}"));
    (e.operator.clone(), e.values.clone().unwrap_or_default())
}

#[test]
fn default_profile_is_ordered_crds_namespace_rbac_config_workloads_webhooks() {
    let p = generate(&[]);
    let first_non_crd = p
        .kinds
        .iter()
        .position(|k| k != "CustomResourceDefinition")
        .unwrap();
    assert_eq!(first_non_crd, mesh_api::IstioKind::ALL.len());
    assert_eq!(p.crds, mesh_api::crd::all_crds());
    let order: Vec<&str> = p.kinds[first_non_crd..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        order,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "MutatingWebhookConfiguration",
        ]
    );
    // dry-run prints the same stream.
    let (code, dry, _) = meshctl(&["install", "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(dry, meshctl(&["manifest", "generate"]).1);
}

#[test]
fn istiod_deployment_follows_the_contract() {
    let p = generate(&[]);
    let d = deployment(&p, "istiod");
    assert_eq!(d.metadata.namespace.as_deref(), Some("istio-system"));
    let spec = d.spec.as_ref().unwrap();
    // The HPA owns the replica count.
    assert_eq!(spec.replicas, None);
    let pod = spec.template.spec.as_ref().unwrap();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(labels["app"], "istiod");
    assert_eq!(labels["istio"], "pilot");
    assert_eq!(labels["istio.io/rev"], "default");
    assert_eq!(pod.service_account_name.as_deref(), Some("istiod"));
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/mesh-rs/mesh-control:0.1.0")
    );
    let mut line = c.command.clone().unwrap();
    line.extend(c.args.clone().unwrap());
    assert_eq!(
        line.join(" "),
        "mesh-control --kubernetes --xds-address 0.0.0.0:15010 --monitoring-address 0.0.0.0:15014 \
         --secure-address 0.0.0.0:15012 --webhook-address 0.0.0.0:15017 --ca-dir /var/run/mesh/ca"
    );
    let env = |n: &str| {
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("no env {n}"))
            .clone()
    };
    assert_eq!(
        env("POD_NAMESPACE")
            .value_from
            .unwrap()
            .field_ref
            .unwrap()
            .field_path,
        "metadata.namespace"
    );
    assert_eq!(env("REVISION").value.as_deref(), Some("default"));
    assert_eq!(
        env("MESH_PROXY_IMAGE").value.as_deref(),
        Some("ghcr.io/mesh-rs/mesh-proxy:0.1.0")
    );
    assert_eq!(
        env("MESH_WEBHOOK_CONFIG").value.as_deref(),
        Some("istio-sidecar-injector")
    );
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/ready"));
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15014)
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let mount = &c.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.mount_path, "/var/run/mesh/ca");
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert!(volume.empty_dir.is_some());

    let svc = p
        .services
        .iter()
        .find(|s| name(&s.metadata) == "istiod")
        .unwrap();
    let ports: Vec<(String, i32, String)> = svc
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| {
            let target = match p.target_port.as_ref().unwrap() {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
            };
            (p.name.clone().unwrap(), p.port, target)
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("grpc-xds".into(), 15010, "15010".into()),
            ("https-dns".into(), 15012, "15012".into()),
            ("https-webhook".into(), 443, "15017".into()),
            ("http-monitoring".into(), 15014, "15014".into()),
        ]
    );

    let pdb = p
        .pdbs
        .iter()
        .find(|x| name(&x.metadata) == "istiod")
        .unwrap();
    assert_eq!(
        pdb.spec.as_ref().unwrap().min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let hpa = p.hpas[0].spec.as_ref().unwrap();
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(1), 5));
    assert_eq!(hpa.scale_target_ref.name, "istiod");
    let target = &hpa.metrics.as_ref().unwrap()[0]
        .resource
        .as_ref()
        .unwrap()
        .target;
    assert_eq!(target.average_utilization, Some(80));

    let cm = p
        .config_maps
        .iter()
        .find(|c| name(&c.metadata) == "istio")
        .unwrap();
    let mesh = &cm.data.as_ref().unwrap()["mesh"];
    let (config, report) = mesh_api::mesh_config::parse_mesh_config(mesh);
    assert!(report.diagnostics.is_empty(), "{report:?}");
    assert_eq!(
        config
            .unwrap()
            .default_config
            .unwrap()
            .discovery_address
            .as_deref(),
        Some("istiod.istio-system.svc:15012")
    );
}

#[test]
fn webhooks_never_inject_kube_system_or_istio_system() {
    for rev in [None, Some("canary")] {
        let p = match rev {
            None => generate(&[]),
            Some(r) => generate(&["--revision", r]),
        };
        let config = &p.webhooks[0];
        let webhooks = config.webhooks.as_ref().unwrap();
        assert_eq!(webhooks.len(), 2);
        for w in webhooks {
            let ns = w.namespace_selector.as_ref().unwrap();
            assert_eq!(
                expr(ns, "kubernetes.io/metadata.name"),
                (
                    "NotIn".into(),
                    vec!["kube-system".into(), "istio-system".into()]
                ),
                "{}",
                w.name
            );
            assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
            assert_eq!(w.side_effects, "None");
            assert_eq!(w.admission_review_versions, ["v1"]);
            assert_eq!(w.reinvocation_policy.as_deref(), Some("Never"));
            assert_eq!(w.timeout_seconds, Some(10));
            assert_eq!(w.client_config.ca_bundle, None);
            let svc = w.client_config.service.as_ref().unwrap();
            assert_eq!(svc.namespace, "istio-system");
            assert_eq!(svc.path.as_deref(), Some("/inject"));
            assert_eq!(svc.port, Some(443));
            let rule = &w.rules.as_ref().unwrap()[0];
            assert_eq!(
                rule.operations.as_deref(),
                Some(&["CREATE".to_string()][..])
            );
            assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
        }
        match rev {
            None => {
                assert_eq!(name(&config.metadata), "istio-sidecar-injector");
                let (ns, obj) = (&webhooks[0], &webhooks[1]);
                assert_eq!(ns.name, "namespace.sidecar-injector.istio.io");
                assert_eq!(
                    expr(ns.namespace_selector.as_ref().unwrap(), "istio-injection"),
                    ("In".into(), vec!["enabled".into()])
                );
                assert_eq!(
                    expr(
                        ns.object_selector.as_ref().unwrap(),
                        "sidecar.istio.io/inject"
                    ),
                    ("NotIn".into(), vec!["false".into()])
                );
                assert_eq!(obj.name, "object.sidecar-injector.istio.io");
                let obj_ns = obj.namespace_selector.as_ref().unwrap();
                assert_eq!(expr(obj_ns, "istio-injection").0, "DoesNotExist");
                assert_eq!(expr(obj_ns, "istio.io/rev").0, "DoesNotExist");
                assert_eq!(
                    expr(
                        obj.object_selector.as_ref().unwrap(),
                        "sidecar.istio.io/inject"
                    ),
                    ("In".into(), vec!["true".into()])
                );
                assert_eq!(
                    webhooks[0].client_config.service.as_ref().unwrap().name,
                    "istiod"
                );
            }
            Some(r) => {
                assert_eq!(
                    name(&config.metadata),
                    format!("istio-sidecar-injector-{r}")
                );
                let (ns, obj) = (&webhooks[0], &webhooks[1]);
                assert_eq!(ns.name, "rev.namespace.sidecar-injector.istio.io");
                let sel = ns.namespace_selector.as_ref().unwrap();
                assert_eq!(expr(sel, "istio.io/rev"), ("In".into(), vec![r.into()]));
                assert_eq!(expr(sel, "istio-injection").0, "DoesNotExist");
                assert_eq!(obj.name, "rev.object.sidecar-injector.istio.io");
                assert_eq!(
                    expr(obj.object_selector.as_ref().unwrap(), "istio.io/rev"),
                    ("In".into(), vec![r.into()])
                );
                assert_eq!(
                    webhooks[0].client_config.service.as_ref().unwrap().name,
                    format!("istiod-{r}")
                );
            }
        }
    }
}

/// (apiGroup, resource, verb) triples a set of rules grants.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for g in rule.api_groups.as_deref().unwrap_or_default() {
            for r in rule.resources.as_deref().unwrap_or_default() {
                for v in &rule.verbs {
                    assert!(g != "*" && r != "*" && v != "*", "wildcard in {rule:?}");
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn triples(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for g in groups {
        for r in resources {
            for v in verbs {
                out.push((g.to_string(), r.to_string(), v.to_string()));
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_the_contract() {
    let p = generate(&[]);
    assert_eq!(p.cluster_roles.len(), 1);
    let cr = &p.cluster_roles[0];
    assert_eq!(name(&cr.metadata), "istiod-istio-system");
    let mut want: BTreeSet<_> = triples(
        &[""],
        &[
            "services",
            "endpoints",
            "pods",
            "namespaces",
            "nodes",
            "configmaps",
            "secrets",
        ],
        &["list", "watch"],
    )
    .into_iter()
    .collect();
    want.extend(triples(
        &["discovery.k8s.io"],
        &["endpointslices"],
        &["list", "watch"],
    ));
    for crd in mesh_api::crd::all_crds() {
        let (g, plural) = (crd.spec.group.as_str(), crd.spec.names.plural.as_str());
        want.extend(triples(&[g], &[plural], &["get", "list", "watch"]));
        want.extend(triples(
            &[g],
            &[&format!("{plural}/status")],
            &["get", "update", "patch"],
        ));
    }
    want.extend(triples(&[""], &["configmaps"], &["create", "update"]));
    want.extend(triples(
        &["authentication.k8s.io"],
        &["tokenreviews"],
        &["create"],
    ));
    want.extend(triples(
        &["admissionregistration.k8s.io"],
        &["mutatingwebhookconfigurations"],
        &["get", "patch"],
    ));
    want.extend(triples(
        &["", "events.k8s.io"],
        &["events"],
        &["create", "patch"],
    ));
    let got = grants(cr.rules.as_ref().unwrap());
    assert_eq!(
        got,
        want,
        "extra: {:?}\nmissing: {:?}",
        got.difference(&want),
        want.difference(&got)
    );
    // The webhook rule is limited to our own configuration.
    let webhook_rule = cr
        .rules
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| {
            r.resources.as_deref() == Some(&["mutatingwebhookconfigurations".to_string()][..])
        })
        .unwrap();
    assert_eq!(
        webhook_rule.resource_names.as_deref(),
        Some(&["istio-sidecar-injector".to_string()][..])
    );
    // No rule grants secrets or anything else beyond read cluster-wide.
    assert!(
        !got.iter()
            .any(|(_, r, v)| r == "secrets" && v != "list" && v != "watch")
    );

    let role = &p.roles[0];
    assert_eq!(name(&role.metadata), "istiod");
    assert_eq!(role.metadata.namespace.as_deref(), Some("istio-system"));
    let mut want_ns: BTreeSet<_> = triples(&[""], &["secrets"], &["get", "create", "update"])
        .into_iter()
        .collect();
    want_ns.extend(triples(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "create", "update"],
    ));
    assert_eq!(grants(role.rules.as_ref().unwrap()), want_ns);

    let crb = &p.cluster_role_bindings[0];
    assert_eq!(crb.role_ref.name, "istiod-istio-system");
    let subject = &crb.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("ServiceAccount", "istiod")
    );
    assert_eq!(subject.namespace.as_deref(), Some("istio-system"));
    assert_eq!(p.role_bindings[0].role_ref.name, "istiod");
}

#[test]
fn revision_renames_and_labels_every_control_plane_object() {
    let p = generate(&["--revision", "canary"]);
    let d = deployment(&p, "istiod-canary");
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("istiod-canary"));
    assert_eq!(
        d.spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()["istio.io/rev"],
        "canary"
    );
    let env = pod.containers[0].env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "REVISION" && e.value.as_deref() == Some("canary"))
    );
    assert!(env.iter().any(|e| e.name == "MESH_WEBHOOK_CONFIG"
        && e.value.as_deref() == Some("istio-sidecar-injector-canary")));
    assert!(
        p.services
            .iter()
            .any(|s| name(&s.metadata) == "istiod-canary")
    );
    assert!(
        p.service_accounts
            .iter()
            .any(|s| name(&s.metadata) == "istiod-canary")
    );
    assert_eq!(
        name(&p.cluster_roles[0].metadata),
        "istiod-canary-istio-system"
    );
    assert_eq!(
        p.cluster_role_bindings[0].subjects.as_ref().unwrap()[0].name,
        "istiod-canary"
    );
    for meta in p
        .deployments
        .iter()
        .map(|x| &x.metadata)
        .chain(p.services.iter().map(|x| &x.metadata))
        .chain(p.service_accounts.iter().map(|x| &x.metadata))
        .chain(p.cluster_roles.iter().map(|x| &x.metadata))
        .chain(p.roles.iter().map(|x| &x.metadata))
        .chain(p.config_maps.iter().map(|x| &x.metadata))
        .chain(p.webhooks.iter().map(|x| &x.metadata))
    {
        assert_eq!(
            meta.labels.as_ref().unwrap()["istio.io/rev"],
            "canary",
            "{:?}",
            meta.name
        );
    }
    // Proxies talk to the revision's istiod; the revision's MeshConfig is istio-R.
    assert_eq!(name(&p.config_maps[0].metadata), "istio-canary");
    let mesh = &p.config_maps[0].data.as_ref().unwrap()["mesh"];
    assert!(
        mesh.contains("discoveryAddress: istiod-canary.istio-system.svc:15012"),
        "{mesh}"
    );
    let gw = deployment(&p, "istio-ingressgateway");
    let args = gw
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"istiod-canary.istio-system.svc:15010".to_string()),
        "{args:?}"
    );
}

#[test]
fn profiles_choose_the_components() {
    let minimal = generate(&["--profile", "minimal"]);
    assert!(
        minimal
            .deployments
            .iter()
            .all(|d| name(&d.metadata) != "istio-ingressgateway")
    );
    assert_eq!(minimal.deployments.len(), 1);
    assert!(
        minimal
            .services
            .iter()
            .all(|s| name(&s.metadata) != "istio-ingressgateway")
    );

    let default = generate(&[]);
    let gw = deployment(&default, "istio-ingressgateway");
    let labels = gw.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["istio"], "ingressgateway");
    assert_eq!(labels["app"], "istio-ingressgateway");
    let pod = gw.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/mesh-rs/mesh-proxy:0.1.0"));
    assert_eq!(
        c.args.clone().unwrap().join(" "),
        "run --role router --xds-address istiod.istio-system.svc:15010"
    );
    let envs: Vec<&str> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .filter(|e| e.value_from.is_some())
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        envs,
        [
            "POD_NAME",
            "POD_NAMESPACE",
            "INSTANCE_IP",
            "SERVICE_ACCOUNT"
        ]
    );
    assert_eq!(c.security_context.as_ref().unwrap().run_as_user, Some(1337));
    let svc = default
        .services
        .iter()
        .find(|s| name(&s.metadata) == "istio-ingressgateway")
        .unwrap()
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
    let ports: Vec<(String, i32)> = svc
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("status-port".into(), 15021),
            ("http2".into(), 80),
            ("https".into(), 443)
        ]
    );
    assert!(
        default
            .pdbs
            .iter()
            .any(|x| name(&x.metadata) == "istio-ingressgateway")
    );
    assert!(
        default
            .service_accounts
            .iter()
            .any(|x| name(&x.metadata) == "istio-ingressgateway")
    );

    let demo = generate(&["--profile", "demo"]);
    let requests = |p: &Parsed| {
        deployment(p, "istiod")
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .resources
            .as_ref()
            .unwrap()
            .requests
            .clone()
            .unwrap()
    };
    assert_eq!(requests(&demo)["cpu"].0, "10m");
    assert_eq!(requests(&default)["cpu"].0, "500m");
    let mesh = &demo.config_maps[0].data.as_ref().unwrap()["mesh"];
    let config = mesh_api::mesh_config::parse_mesh_config(mesh).0.unwrap();
    assert_eq!(config.access_log_file.as_deref(), Some("/dev/stdout"));
    assert_eq!(
        config.default_config.unwrap().tracing.unwrap().sampling,
        Some(100.0)
    );
    let demo_env = deployment(&demo, "istiod")
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        demo_env
            .iter()
            .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug"))
    );
}

#[test]
fn set_overrides_land_in_their_fields() {
    let p = generate(&[
        "--set",
        "hub=registry.local:5000/mesh",
        "--set",
        "tag=dev",
        "--set",
        "values.pilot.autoscaleEnabled=false",
        "--set",
        "values.pilot.replicaCount=3",
        "--set",
        "values.pilot.resources.requests.cpu=250m",
        "--set",
        "values.pilot.resources.limits.memory=1Gi",
        "--set",
        "values.pilot.env.EXTRA=yes",
        "--set",
        "components.ingressGateways.enabled=false",
        "--set",
        "meshConfig.accessLogFile=/dev/stdout",
        "--set",
        "meshConfig.trustDomain=example.org",
        "--set",
        "values.global.logAsJson=true",
    ]);
    let d = deployment(&p, "istiod");
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert!(p.hpas.is_empty(), "no HPA with autoscaling off");
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.local:5000/mesh/mesh-control:dev")
    );
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "250m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "512Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "1Gi");
    assert!(!res.limits.as_ref().unwrap().contains_key("cpu"));
    let env = c.env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "EXTRA" && e.value.as_deref() == Some("yes"))
    );
    assert!(env.iter().any(|e| e.name == "MESH_PROXY_IMAGE"
        && e.value.as_deref() == Some("registry.local:5000/mesh/mesh-proxy:dev")));
    assert!(
        c.args
            .as_ref()
            .unwrap()
            .windows(2)
            .any(|w| w == ["--log-format", "json"])
    );
    assert_eq!(p.deployments.len(), 1, "gateway disabled");
    let mesh = &p.config_maps[0].data.as_ref().unwrap()["mesh"];
    let config = mesh_api::mesh_config::parse_mesh_config(mesh).0.unwrap();
    assert_eq!(config.access_log_file.as_deref(), Some("/dev/stdout"));
    assert_eq!(config.trust_domain.as_deref(), Some("example.org"));
}

#[test]
fn bad_values_fail_naming_the_key() {
    for (set, needle) in [
        ("values.pilot.replicas=3", "values.pilot.replicas"),
        (
            "values.pilot.replicaCount=many",
            "values.pilot.replicaCount",
        ),
        (
            "meshConfig.acessLogFile=/dev/stdout",
            "meshConfig.acessLogFile",
        ),
        (
            "components.egressGateways.enabled=true",
            "components.egressGateways",
        ),
        (
            "values.pilot.resources.requests.cpu=lots",
            "values.pilot.resources.requests.cpu",
        ),
        ("values.pilot.autoscaleMax=0", "values.pilot.autoscaleMax"),
    ] {
        for cmd in [&["manifest", "generate"][..], &["install", "--dry-run"][..]] {
            let mut args = cmd.to_vec();
            args.extend(["--set", set]);
            let (code, out, err) = meshctl(&args);
            assert_eq!(code, 1, "{set}: {out}");
            assert!(out.is_empty(), "{set}: nothing printed on error");
            assert!(err.contains(needle), "{set}: {err}");
        }
    }
    let (code, _, err) = meshctl(&["manifest", "generate", "--revision", "Bad_Rev"]);
    assert_eq!(code, 1);
    assert!(err.contains("Bad_Rev"), "{err}");
}

#[test]
fn committed_manifests_are_generated() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/manifests");
    for profile in ["default", "minimal", "demo"] {
        let (code, generated, err) = meshctl(&["manifest", "generate", "--profile", profile]);
        assert_eq!(code, 0, "{err}");
        let file = dir.join(format!("{profile}.yaml"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            committed == generated,
            "deploy/manifests/{profile}.yaml is stale: rerun with UPDATE_GOLDEN=1 and review the diff"
        );
    }
}
