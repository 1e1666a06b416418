//! Istio's documented AuthorizationPolicy semantics, end to end through
//! both halves of the mesh: each case's policies are translated by
//! mesh-control (`InboundRbac`, what a sidecar's inbound HTTP chain gets)
//! and the resulting Envoy RBAC filters are compiled and evaluated here
//! against one request. A wrong translation or a wrong evaluation both
//! show up as a wrong decision.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use mesh_api::mesh_config::MeshConfig;
use mesh_control::proxy::ProxyInfo;
use mesh_control::snapshot::Snapshot;
use mesh_control::xds::authz::InboundRbac;
use serde_json::{Value, json};

use super::*;
use crate::runtime::convert::decode_any;
use crate::runtime::metadata::Metadata;
use crate::tls::PeerNames;

const ISS: &str = "https://accounts.example.com";

/// The request of one case.
#[derive(Clone)]
struct Req {
    /// The peer's SPIFFE id (mTLS), if any.
    peer: Option<&'static str>,
    source: &'static str,
    method: Method,
    host: &'static str,
    path: &'static str,
    port: u16,
    headers: Vec<(&'static str, &'static str)>,
    /// The payload of a verified JWT.
    jwt: Option<Value>,
}

fn req() -> Req {
    Req {
        peer: Some("spiffe://cluster.local/ns/shop/sa/frontend"),
        source: "10.1.0.5",
        method: Method::GET,
        host: "web.apps.svc.cluster.local",
        path: "/",
        port: 8080,
        headers: vec![],
        jwt: None,
    }
}

impl Req {
    fn peer(mut self, id: Option<&'static str>) -> Self {
        self.peer = id;
        self
    }
    fn path(mut self, p: &'static str) -> Self {
        self.path = p;
        self
    }
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.host = h;
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn source(mut self, s: &'static str) -> Self {
        self.source = s;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn jwt(mut self, payload: Value) -> Self {
        self.jwt = Some(payload);
        self
    }
}

fn token(sub: &str, extra: Value) -> Value {
    let mut p = json!({"iss": ISS, "sub": sub, "aud": ["web"], "azp": "spa"});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            p[k] = v;
        }
    }
    p
}

/// `(name, namespace, spec)` AuthorizationPolicies as YAML.
fn policies(list: &[(&str, &str, &str)]) -> String {
    list.iter()
        .map(|(name, ns, spec)| {
            format!(
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
            )
        })
        .collect()
}

/// Whether the workload `web` (namespace `apps`) lets `r` through under
/// `yaml`.
fn allowed(yaml: &str, r: &Req) -> bool {
    let loaded = mesh_api::load_str("policies.yaml", yaml);
    for l in &loaded {
        assert!(l.object.is_some(), "{yaml}: {:?}", l.report.diagnostics);
    }
    let snapshot = Snapshot::build(1, &loaded, MeshConfig::default());
    let proxy = ProxyInfo::sidecar(
        "web-0",
        "apps",
        "10.0.0.1".parse::<IpAddr>().unwrap(),
        &[("app", "web"), ("version", "v1")],
    );
    let filters: Vec<Arc<Rbac>> = InboundRbac::of(&snapshot, &proxy)
        .http
        .iter()
        .filter_map(|f| {
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!("{}: no typed config", f.name);
            };
            let pb: HttpRbac = decode_any(any, "rbac").unwrap();
            compile(pb.rules.as_ref(), "rbac").unwrap().map(Arc::new)
        })
        .collect();
    let peer = r.peer.map(|id| PeerNames {
        uris: vec![id.to_string()],
        ..PeerNames::default()
    });
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let mut metadata = Metadata::default();
    if let Some(p) = &r.jwt {
        metadata.insert("envoy.filters.http.jwt_authn", "payload", p.clone());
    }
    let source: IpAddr = r.source.parse().unwrap();
    let input = Input {
        direct_remote: SocketAddr::new(source, 40_000),
        remote: source,
        destination: SocketAddr::new("10.0.0.1".parse().unwrap(), r.port),
        server_name: None,
        peer: peer.as_ref(),
        request: Some(RequestView {
            method: &r.method,
            scheme: "http",
            authority: r.host,
            path: r.path,
            headers: &headers,
        }),
        metadata: Some(&metadata),
    };
    matches!(check(&filters, &input), Verdict::Allowed(_))
}

#[test]
fn istio_authorization_semantics() {
    let allow_frontend_get = (
        "allow-get",
        "apps",
        r#"{selector: {matchLabels: {app: web}}, rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}], to: [{operation: {methods: [GET]}}]}]}"#,
    );
    let deny_admin = (
        "deny-admin",
        "apps",
        r#"{action: DENY, rules: [{to: [{operation: {paths: ["/admin*"]}}]}]}"#,
    );
    let jwt_required = (
        "jwt",
        "apps",
        r#"{rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]}"#,
    );
    let post = Method::POST;
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Req, bool)> = vec![
        // Scope and defaults.
        ("no policy allows everything", policies(&[]), req().peer(None), true),
        ("ALLOW with an empty rule allows everything", policies(&[("all", "apps", "{rules: [{}]}")]), req().peer(None), true),
        ("ALLOW without rules denies everything", policies(&[("none", "apps", "{}")]), req(), false),
        ("DENY without rules does nothing", policies(&[("d", "apps", "{action: DENY}")]), req(), true),
        ("a policy of another namespace does not apply", policies(&[("none", "other", "{}")]), req(), true),
        ("a selector not matching does not apply", policies(&[("none", "apps", "{selector: {matchLabels: {app: db}}}")]), req(), true),
        ("a mesh-wide (root namespace) policy applies", policies(&[("none", "istio-system", "{}")]), req(), false),
        ("a root-namespace selector picks workloads everywhere", policies(&[("none", "istio-system", "{selector: {matchLabels: {app: web}}}")]), req(), false),
        ("AUDIT decides nothing", policies(&[("a", "apps", "{action: AUDIT, rules: [{}]}")]), req(), true),
        // ALLOW and DENY together.
        ("ALLOW matches", policies(&[allow_frontend_get]), req(), true),
        ("ALLOW: another method is denied by default", policies(&[allow_frontend_get]), req().method(post.clone()), false),
        ("ALLOW: another principal is denied by default", policies(&[allow_frontend_get]), req().peer(Some("spiffe://cluster.local/ns/shop/sa/other")), false),
        ("ALLOW: plaintext has no principal", policies(&[allow_frontend_get]), req().peer(None), false),
        ("DENY wins over ALLOW", policies(&[allow_frontend_get, deny_admin]), req().path("/admin/users"), false),
        ("DENY does not touch the rest", policies(&[allow_frontend_get, deny_admin]), req().path("/shop"), true),
        ("DENY alone allows the rest", policies(&[deny_admin]), req().path("/shop").peer(None), true),
        ("any of several ALLOW policies", policies(&[allow_frontend_get, ("posts", "apps", "{rules: [{to: [{operation: {methods: [POST], paths: [/orders]}}]}]}")]), req().method(post.clone()).path("/orders"), true),
        // Principals, namespaces, IP blocks.
        ("principal wildcard prefix", policies(&[("p", "apps", r#"{rules: [{from: [{source: {principals: ["cluster.local/ns/shop/*"]}}]}]}"#)]), req(), true),
        ("principal wildcard suffix", policies(&[("p", "apps", r#"{rules: [{from: [{source: {principals: ["*/sa/frontend"]}}]}]}"#)]), req(), true),
        ("notPrincipals excludes", policies(&[("p", "apps", r#"{rules: [{from: [{source: {notPrincipals: ["cluster.local/ns/shop/sa/frontend"]}}]}]}"#)]), req(), false),
        ("namespaces match the peer's namespace", policies(&[("p", "apps", "{rules: [{from: [{source: {namespaces: [shop]}}]}]}")]), req(), true),
        ("namespaces: another namespace", policies(&[("p", "apps", "{rules: [{from: [{source: {namespaces: [billing]}}]}]}")]), req(), false),
        ("notNamespaces", policies(&[("p", "apps", "{rules: [{from: [{source: {notNamespaces: [shop]}}]}]}")]), req(), false),
        ("ipBlocks: inside the block", policies(&[("p", "apps", r#"{rules: [{from: [{source: {ipBlocks: ["10.1.0.0/16"]}}]}]}"#)]), req(), true),
        ("ipBlocks: outside", policies(&[("p", "apps", r#"{rules: [{from: [{source: {ipBlocks: ["10.2.0.0/16"]}}]}]}"#)]), req(), false),
        ("notIpBlocks in a DENY", policies(&[("p", "apps", r#"{action: DENY, rules: [{from: [{source: {notIpBlocks: ["10.1.0.0/16"]}}]}]}"#)]), req().source("192.168.1.9"), false),
        // Operations.
        ("path exact", policies(&[("p", "apps", "{rules: [{to: [{operation: {paths: [/info]}}]}]}")]), req().path("/info"), true),
        ("path exact ignores the query", policies(&[("p", "apps", "{rules: [{to: [{operation: {paths: [/info]}}]}]}")]), req().path("/info?x=1"), true),
        ("path exact is not a prefix", policies(&[("p", "apps", "{rules: [{to: [{operation: {paths: [/info]}}]}]}")]), req().path("/info/more"), false),
        ("path suffix", policies(&[("p", "apps", r#"{rules: [{to: [{operation: {paths: ["*.png"]}}]}]}"#)]), req().path("/img/logo.png"), true),
        ("path template {*} is one segment", policies(&[("p", "apps", "{rules: [{to: [{operation: {paths: [\"/pets/{*}/info\"]}}]}]}")]), req().path("/pets/dog/info"), true),
        ("path template {*} is not two", policies(&[("p", "apps", "{rules: [{to: [{operation: {paths: [\"/pets/{*}/info\"]}}]}]}")]), req().path("/pets/dog/cat/info"), false),
        ("path template {**} is anything after", policies(&[("p", "apps", "{rules: [{to: [{operation: {paths: [\"/files/{**}\"]}}]}]}")]), req().path("/files/a/b/c.txt"), true),
        ("notPaths", policies(&[("p", "apps", r#"{rules: [{to: [{operation: {notPaths: ["/private*"]}}]}]}"#)]), req().path("/private/x"), false),
        ("hosts ignore case", policies(&[("p", "apps", "{rules: [{to: [{operation: {hosts: [WEB.apps.svc.cluster.local]}}]}]}")]), req(), true),
        ("hosts prefix wildcard", policies(&[("p", "apps", r#"{rules: [{to: [{operation: {hosts: ["*.example.com"]}}]}]}"#)]), req().host("shop.example.com"), true),
        ("ports", policies(&[("p", "apps", r#"{rules: [{to: [{operation: {ports: ["8080"]}}]}]}"#)]), req(), true),
        ("ports: another port", policies(&[("p", "apps", r#"{rules: [{to: [{operation: {ports: ["9090"]}}]}]}"#)]), req().port(8080), false),
        ("methods and paths in one operation both hold", policies(&[("p", "apps", "{rules: [{to: [{operation: {methods: [GET], paths: [/a]}}]}]}")]), req().method(post.clone()).path("/a"), false),
        // Conditions.
        ("when request.headers", policies(&[("p", "apps", "{rules: [{when: [{key: \"request.headers[x-tenant]\", values: [acme]}]}]}")]), req().header("x-tenant", "acme"), true),
        ("when request.headers, other value", policies(&[("p", "apps", "{rules: [{when: [{key: \"request.headers[x-tenant]\", values: [acme]}]}]}")]), req().header("x-tenant", "evil"), false),
        ("when notValues", policies(&[("p", "apps", "{rules: [{when: [{key: \"request.headers[x-tenant]\", notValues: [evil]}]}]}")]), req().header("x-tenant", "evil"), false),
        ("when source.namespace", policies(&[("p", "apps", "{rules: [{when: [{key: source.namespace, values: [shop]}]}]}")]), req(), true),
        ("when destination.port", policies(&[("p", "apps", "{rules: [{when: [{key: destination.port, values: [\"9090\"]}]}]}")]), req(), false),
        // End-user (JWT) attributes.
        ("requestPrincipals *: no token", policies(&[jwt_required]), req(), false),
        ("requestPrincipals *: any verified token", policies(&[jwt_required]), req().jwt(token("alice", json!({}))), true),
        ("requestPrincipals exact", policies(&[("p", "apps", &format!("{{rules: [{{from: [{{source: {{requestPrincipals: [\"{ISS}/alice\"]}}}}]}}]}}"))]), req().jwt(token("alice", json!({}))), true),
        ("requestPrincipals exact, another subject", policies(&[("p", "apps", &format!("{{rules: [{{from: [{{source: {{requestPrincipals: [\"{ISS}/alice\"]}}}}]}}]}}"))]), req().jwt(token("bob", json!({}))), false),
        ("requestPrincipals issuer prefix", policies(&[("p", "apps", &format!("{{rules: [{{from: [{{source: {{requestPrincipals: [\"{ISS}/*\"]}}}}]}}]}}"))]), req().jwt(token("carol", json!({}))), true),
        ("requestPrincipals subject suffix", policies(&[("p", "apps", "{rules: [{from: [{source: {requestPrincipals: [\"*/alice\"]}}]}]}")]), req().jwt(token("alice", json!({}))), true),
        ("requestPrincipals of another issuer", policies(&[("p", "apps", "{rules: [{from: [{source: {requestPrincipals: [\"https://other.example/*\"]}}]}]}")]), req().jwt(token("alice", json!({}))), false),
        ("notRequestPrincipals in a DENY refuses anonymous", policies(&[("p", "apps", "{action: DENY, rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]}")]), req(), false),
        ("claims: a list claim holding the value", policies(&[("p", "apps", "{rules: [{when: [{key: \"request.auth.claims[groups]\", values: [admin]}]}]}")]), req().jwt(token("alice", json!({"groups": ["dev", "admin"]}))), true),
        ("claims: a string claim", policies(&[("p", "apps", "{rules: [{when: [{key: \"request.auth.claims[role]\", values: [admin]}]}]}")]), req().jwt(token("alice", json!({"role": "admin"}))), true),
        ("claims: value missing", policies(&[("p", "apps", "{rules: [{when: [{key: \"request.auth.claims[groups]\", values: [admin]}]}]}")]), req().jwt(token("alice", json!({"groups": ["dev"]}))), false),
        ("claims: nested", policies(&[("p", "apps", "{rules: [{when: [{key: \"request.auth.claims[org][team]\", values: [payments]}]}]}")]), req().jwt(token("alice", json!({"org": {"team": "payments"}}))), true),
        ("request.auth.audiences", policies(&[("p", "apps", "{rules: [{when: [{key: request.auth.audiences, values: [web]}]}]}")]), req().jwt(token("alice", json!({}))), true),
        ("request.auth.presenter", policies(&[("p", "apps", "{rules: [{when: [{key: request.auth.presenter, values: [cli]}]}]}")]), req().jwt(token("alice", json!({}))), false),
        ("JWT and mTLS together", policies(&[("p", "apps", &format!("{{rules: [{{from: [{{source: {{principals: [\"cluster.local/ns/shop/sa/frontend\"], requestPrincipals: [\"{ISS}/alice\"]}}}}]}}]}}"))]), req().peer(None).jwt(token("alice", json!({}))), false),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter(|(_, yaml, r, want)| allowed(yaml, r) != *want)
        .map(|(name, _, _, want)| format!("{name}: want {}", if *want { "allow" } else { "deny" }))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
