//! One VirtualService's HTTP rules → Envoy routes, in rule order, one
//! route per match. Each rule's action becomes a redirect, a direct
//! response, or a route to one or weighted clusters, decorated with
//! timeout, retries, mirrors, rewrites, header operations, and per-route
//! fault and CORS configuration for the listener's HTTP filters.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, RetryPolicy, Route, RouteAction, WeightedCluster,
    redirect_action, retry_policy, route, route_action, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use mesh_api::networking::Gateway;
use mesh_api::networking::virtual_service::{
    CorsPolicy, Destination, HeaderOperations, HttpMatchRequest, HttpRetry, HttpRoute,
    RedirectPortSelection, UnmatchedPreflights, VirtualService,
};
use mesh_api::xds::pack_any;
use mesh_api::{Duration, Percent, StringMatch};

use super::matches::{is_catch_all, merge_all, regex, route_match, string_matcher};
use super::source_matches;
use crate::snapshot::{name_of, namespace_of};
use crate::xds::listener::{CORS_FILTER, FAULT_FILTER, destination_port};
use crate::xds::{ProxyScope, outbound_cluster_name};

/// What route translation needs besides the rule: who the proxy is, the
/// port the traffic arrived on, the gateway being built (none for a
/// sidecar) and the clusters that exist.
pub(crate) struct RouteContext<'s, 'a> {
    /// The proxy's view.
    pub scope: &'s ProxyScope<'a>,
    /// Listener (sidecar) or server (gateway) port.
    pub port: u16,
    /// The gateway whose routes are built; `None` for the mesh.
    pub gateway: Option<&'a Gateway>,
    /// Names of the clusters sent to the proxy.
    pub clusters: &'s BTreeSet<String>,
}

/// Istio's retry policy for routes without `retries`.
pub(crate) fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pack_any(PreviousHostsPredicate::default()),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// Istio's `retries` translation: unset → default policy; `attempts: 0` →
/// none; numeric `retryOn` entries become retriable status codes.
pub(crate) fn retry_policy(retries: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let Some(r) = retries else {
        return Some(default_retry_policy());
    };
    let attempts = r.attempts.unwrap_or(0);
    if attempts <= 0 {
        return None;
    }
    let mut out = default_retry_policy();
    out.num_retries = Some(UInt32Value {
        value: attempts as u32,
    });
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let mut policies = Vec::new();
        let mut codes = Vec::new();
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) => codes.push(code),
                Err(_) => policies.push(part.to_string()),
            }
        }
        if !codes.is_empty() && !policies.iter().any(|p| p == "retriable-status-codes") {
            policies.push("retriable-status-codes".into());
        }
        out.retry_on = policies.join(",");
        out.retriable_status_codes = codes;
    }
    out.per_try_timeout = r.per_try_timeout.as_ref().map(pb_duration);
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(retry_policy::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(
                pack_any(PreviousPrioritiesConfig {
                    update_frequency: 2,
                }),
            )),
        });
    }
    if r.retry_ignore_previous_hosts == Some(false) {
        out.retry_host_predicate.clear();
        out.host_selection_retry_max_attempts = 0;
    }
    if let Some(b) = &r.backoff {
        out.retry_back_off = Some(retry_policy::RetryBackOff {
            base_interval: Some(pb_duration(b)),
            ..Default::default()
        });
    }
    Some(out)
}

pub(crate) fn pb_duration(d: &Duration) -> PbDuration {
    let d = d.as_std();
    PbDuration {
        seconds: d.as_secs().min(i64::MAX as u64) as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Percent (0–100, fractional) in millionths, as Istio encodes it.
fn fraction(p: Option<&Percent>) -> FractionalPercent {
    match p {
        Some(p) => FractionalPercent {
            numerator: (p.value.clamp(0.0, 100.0) * 10_000.0).round() as u32,
            denominator: fractional_percent::DenominatorType::Million as i32,
        },
        None => FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        },
    }
}

fn fraction_int(percent: i32) -> FractionalPercent {
    FractionalPercent {
        numerator: percent.clamp(0, 100) as u32,
        denominator: fractional_percent::DenominatorType::Hundred as i32,
    }
}

impl RouteContext<'_, '_> {
    fn route_name(rule: &HttpRoute, m: Option<&HttpMatchRequest>) -> String {
        match (rule.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
            (Some(r), Some(m)) => format!("{r}.{m}"),
            (Some(n), None) | (None, Some(n)) => n.to_string(),
            (None, None) => String::new(),
        }
    }

    fn match_applies(&self, m: &HttpMatchRequest) -> bool {
        m.port.is_none_or(|p| p == u32::from(self.port))
            && source_matches(
                self.scope,
                &m.source_labels,
                m.source_namespace.as_deref(),
                &m.gateways,
                self.gateway,
            )
    }

    fn cluster_for(&self, dest: &Destination, vs_ns: &str) -> String {
        let host = self.scope.resolve(&dest.host, vs_ns);
        let port = destination_port(
            self.scope.service(&host).map(AsRef::as_ref),
            dest.port.as_ref().map(|p| p.number),
            self.port,
        );
        outbound_cluster_name(port, dest.subset.as_deref().unwrap_or(""), &host)
    }

    /// A route to one cluster, or a 503 when the cluster is not sent:
    /// Envoy would accept a dangling name and answer 503 anyway, but the
    /// reference is checked here so the config never points at nothing.
    pub(crate) fn single_cluster_action(
        &self,
        cluster: String,
        retry: Option<RetryPolicy>,
        timeout: Option<PbDuration>,
        hash_policy: Vec<route_action::HashPolicy>,
    ) -> route::Action {
        if !self.clusters.contains(&cluster) {
            tracing::warn!(cluster = %cluster, "route destination has no cluster; answering 503");
            return route::Action::DirectResponse(DirectResponseAction {
                status: 503,
                ..Default::default()
            });
        }
        route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(timeout.unwrap_or_default()),
            retry_policy: retry,
            hash_policy,
            ..Default::default()
        })
    }
}

/// Routes of one VirtualService for the context's port, rule order kept,
/// delegates expanded one level.
pub(crate) fn virtual_service_routes(
    ctx: &RouteContext<'_, '_>,
    vs: &VirtualService,
) -> Vec<Route> {
    let mut out = Vec::new();
    for rule in &vs.spec.http {
        let done = match &rule.delegate {
            Some(d) => {
                let ns = d
                    .namespace
                    .clone()
                    .unwrap_or_else(|| namespace_of(vs).to_string());
                let Some(child) = ctx
                    .scope
                    .snapshot
                    .virtual_services
                    .iter()
                    .find(|c| name_of(c.as_ref()) == d.name && namespace_of(c.as_ref()) == ns)
                else {
                    tracing::warn!(virtual_service = name_of(vs), delegate = %d.name, namespace = %ns, "delegate VirtualService not found; rule skipped");
                    continue;
                };
                let mut done = false;
                for child_rule in child.spec.http.iter().filter(|r| r.delegate.is_none()) {
                    let matches = merge_all(&rule.r#match, &child_rule.r#match);
                    if translate_rule(ctx, child_rule, &matches, child.as_ref(), &mut out) {
                        done = true;
                        break;
                    }
                }
                done
            }
            None => translate_rule(ctx, rule, &rule.r#match, vs, &mut out),
        };
        if done {
            break;
        }
    }
    out
}

/// Appends the routes of one rule of `vs`; returns whether a catch-all
/// was emitted.
fn translate_rule(
    ctx: &RouteContext<'_, '_>,
    rule: &HttpRoute,
    matches: &[HttpMatchRequest],
    vs: &VirtualService,
    out: &mut Vec<Route>,
) -> bool {
    let vs_ns = namespace_of(vs);
    let selected: Vec<Option<&HttpMatchRequest>> = if matches.is_empty() {
        vec![None]
    } else {
        matches
            .iter()
            .filter(|m| ctx.match_applies(m))
            .map(Some)
            .collect()
    };
    for m in selected {
        let mut route = build_route(ctx, rule, m, vs_ns);
        route.metadata = Some(crate::xds::istio_config_metadata(
            "virtual-service",
            vs_ns,
            name_of(vs),
        ));
        let catch_all = route.r#match.as_ref().is_some_and(is_catch_all);
        out.push(route);
        if catch_all {
            return true;
        }
    }
    false
}

fn build_route(
    ctx: &RouteContext<'_, '_>,
    rule: &HttpRoute,
    m: Option<&HttpMatchRequest>,
    vs_ns: &str,
) -> Route {
    let mut route = Route {
        name: RouteContext::route_name(rule, m),
        r#match: Some(route_match(m)),
        ..Default::default()
    };
    let (req_add, req_remove, host_rewrite) =
        header_ops(rule.headers.as_ref().and_then(|h| h.request.as_ref()));
    let (resp_add, resp_remove, _) =
        header_ops(rule.headers.as_ref().and_then(|h| h.response.as_ref()));
    route.request_headers_to_add = req_add;
    route.request_headers_to_remove = req_remove;
    route.response_headers_to_add = resp_add;
    route.response_headers_to_remove = resp_remove;
    let mut filters: HashMap<String, Any> = HashMap::new();
    if let Some(fault) = rule.fault.as_ref().and_then(http_fault) {
        filters.insert(FAULT_FILTER.into(), pack_any(fault));
    }
    if let Some(cors) = &rule.cors_policy {
        filters.insert(CORS_FILTER.into(), pack_any(cors_policy(cors)));
    }
    route.typed_per_filter_config = filters;

    if let Some(redirect) = &rule.redirect {
        route.action = Some(route::Action::Redirect(redirect_action(redirect, ctx.port)));
        return route;
    }
    if let Some(dr) = &rule.direct_response {
        let body = dr.body.as_ref().and_then(|b| {
            let specifier = match (&b.string, &b.bytes) {
                (Some(s), _) => data_source::Specifier::InlineString(s.clone()),
                (None, Some(b64)) => data_source::Specifier::InlineBytes(base64_decode(b64)?),
                (None, None) => return None,
            };
            Some(DataSource {
                specifier: Some(specifier),
                ..Default::default()
            })
        });
        route.action = Some(route::Action::DirectResponse(DirectResponseAction {
            status: dr.status,
            body,
            ..Default::default()
        }));
        return route;
    }
    route.action = Some(forward_action(
        ctx,
        rule,
        m,
        vs_ns,
        host_rewrite,
        &mut route,
    ));
    route
}

fn forward_action(
    ctx: &RouteContext<'_, '_>,
    rule: &HttpRoute,
    m: Option<&HttpMatchRequest>,
    vs_ns: &str,
    host_rewrite: Option<String>,
    route: &mut Route,
) -> route::Action {
    // Zero-weight destinations take no traffic; Envoy refuses them in a
    // weighted set that would sum to zero.
    let dests: Vec<_> = rule
        .route
        .iter()
        .filter(|d| d.weight.is_none_or(|w| w > 0) || rule.route.len() == 1)
        .collect();
    let timeout = Some(rule.timeout.as_ref().map(pb_duration).unwrap_or_default());
    let retry = retry_policy(rule.retries.as_ref());
    let hash = dests
        .first()
        .map(|d| hash_policy(ctx, &d.destination, vs_ns))
        .unwrap_or_default();
    let mut action = match dests.as_slice() {
        [] => {
            return route::Action::DirectResponse(DirectResponseAction {
                status: 503,
                ..Default::default()
            });
        }
        [only] => {
            // A single destination's header operations apply to the route.
            let (add, remove, dest_host) =
                header_ops(only.headers.as_ref().and_then(|h| h.request.as_ref()));
            let (radd, rremove, _) =
                header_ops(only.headers.as_ref().and_then(|h| h.response.as_ref()));
            route.request_headers_to_add.extend(add);
            route.request_headers_to_remove.extend(remove);
            route.response_headers_to_add.extend(radd);
            route.response_headers_to_remove.extend(rremove);
            match ctx.single_cluster_action(
                ctx.cluster_for(&only.destination, vs_ns),
                retry,
                timeout,
                hash,
            ) {
                route::Action::Route(mut a) => {
                    if let Some(h) = dest_host {
                        a.host_rewrite_specifier =
                            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h));
                    }
                    a
                }
                other => return other,
            }
        }
        many => {
            let clusters: Vec<_> = many
                .iter()
                .filter_map(|d| {
                    let name = ctx.cluster_for(&d.destination, vs_ns);
                    if !ctx.clusters.contains(&name) {
                        tracing::warn!(cluster = %name, "weighted destination has no cluster; dropped");
                        return None;
                    }
                    let (add, remove, _) = header_ops(d.headers.as_ref().and_then(|h| h.request.as_ref()));
                    let (radd, rremove, _) = header_ops(d.headers.as_ref().and_then(|h| h.response.as_ref()));
                    Some(weighted_cluster::ClusterWeight {
                        name,
                        weight: Some(UInt32Value { value: d.weight.unwrap_or(0).max(0) as u32 }),
                        request_headers_to_add: add,
                        request_headers_to_remove: remove,
                        response_headers_to_add: radd,
                        response_headers_to_remove: rremove,
                        ..Default::default()
                    })
                })
                .collect();
            if clusters
                .iter()
                .map(|c| c.weight.as_ref().map_or(0, |w| w.value))
                .sum::<u32>()
                == 0
            {
                return route::Action::DirectResponse(DirectResponseAction {
                    status: 503,
                    ..Default::default()
                });
            }
            RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                    WeightedCluster {
                        clusters,
                        ..Default::default()
                    },
                )),
                timeout,
                retry_policy: retry,
                hash_policy: hash,
                ..Default::default()
            }
        }
    };
    if let Some(h) = host_rewrite {
        action.host_rewrite_specifier =
            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h));
    }
    apply_rewrite(rule, m, &mut action);
    action.request_mirror_policies = mirrors(ctx, rule, vs_ns);
    route::Action::Route(action)
}

fn apply_rewrite(rule: &HttpRoute, m: Option<&HttpMatchRequest>, action: &mut RouteAction) {
    let Some(rw) = &rule.rewrite else { return };
    if let Some(authority) = &rw.authority {
        action.host_rewrite_specifier = Some(
            route_action::HostRewriteSpecifier::HostRewriteLiteral(authority.clone()),
        );
    }
    if let Some(uri) = &rw.uri {
        match m.and_then(|m| m.uri.as_ref()) {
            // A prefix rewrite of an exact match would keep any suffix the
            // client sent; the whole path is replaced instead.
            Some(StringMatch::Exact(exact)) => {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex(&format!("^{}$", regex_escape(exact)))),
                    substitution: uri.clone(),
                });
            }
            _ => action.prefix_rewrite = uri.clone(),
        }
    }
    if let Some(rr) = &rw.uri_regex_rewrite {
        action.regex_rewrite = Some(RegexMatchAndSubstitute {
            pattern: Some(regex(&rr.r#match)),
            substitution: rr.rewrite.clone(),
        });
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `mirror` + `mirrorPercentage`/`mirrorPercent`, and `mirrors`. Envoy
/// appends `-shadow` to the mirrored request's host itself.
fn mirrors(
    ctx: &RouteContext<'_, '_>,
    rule: &HttpRoute,
    vs_ns: &str,
) -> Vec<route_action::RequestMirrorPolicy> {
    let mut out = Vec::new();
    let mut push = |dest: &Destination, pct: FractionalPercent| {
        if pct.numerator == 0 {
            return;
        }
        let cluster = ctx.cluster_for(dest, vs_ns);
        if !ctx.clusters.contains(&cluster) {
            tracing::warn!(cluster = %cluster, "mirror destination has no cluster; mirror dropped");
            return;
        }
        out.push(route_action::RequestMirrorPolicy {
            cluster,
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(pct),
                runtime_key: String::new(),
            }),
            trace_sampled: Some(BoolValue { value: false }),
            ..Default::default()
        });
    };
    if let Some(dest) = &rule.mirror {
        let pct = match (&rule.mirror_percentage, rule.mirror_percent) {
            (Some(p), _) => fraction(Some(p)),
            (None, Some(p)) => fraction_int(p.min(100) as i32),
            (None, None) => fraction(None),
        };
        push(dest, pct);
    }
    for m in &rule.mirrors {
        push(&m.destination, fraction(m.percentage.as_ref()));
    }
    out
}

/// Consistent-hash keys of the destination's DestinationRule (header,
/// cookie, source IP or query parameter), so ring-hash and Maglev clusters
/// hash on what the user asked for.
fn hash_policy(
    ctx: &RouteContext<'_, '_>,
    dest: &Destination,
    vs_ns: &str,
) -> Vec<route_action::HashPolicy> {
    let host = ctx.scope.resolve(&dest.host, vs_ns);
    let port = destination_port(
        ctx.scope.service(&host).map(AsRef::as_ref),
        dest.port.as_ref().map(|p| p.number),
        ctx.port,
    );
    crate::xds::cluster::hash_policy_for(
        ctx.scope,
        &host,
        dest.subset.as_deref().unwrap_or(""),
        port,
    )
}

fn redirect_action(
    r: &mesh_api::networking::virtual_service::HttpRedirect,
    port: u16,
) -> RedirectAction {
    let code = match r.redirect_code.unwrap_or(301) {
        302 => redirect_action::RedirectResponseCode::Found,
        303 => redirect_action::RedirectResponseCode::SeeOther,
        307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
        308 => redirect_action::RedirectResponseCode::PermanentRedirect,
        _ => redirect_action::RedirectResponseCode::MovedPermanently,
    };
    let path = match (&r.uri, &r.prefix_rewrite) {
        (Some(uri), _) => Some(redirect_action::PathRewriteSpecifier::PathRedirect(
            uri.clone(),
        )),
        (None, Some(p)) => Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
            p.clone(),
        )),
        (None, None) => None,
    };
    // Envoy cannot read the request's port; routes are built per port, so
    // FROM_REQUEST_PORT is that port (Istio does the same).
    let port_redirect = match (r.port, r.derive_port) {
        (Some(p), _) => p,
        (None, Some(RedirectPortSelection::FromRequestPort)) => port.into(),
        _ => 0,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect,
        response_code: code as i32,
        scheme_rewrite_specifier: r
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: path,
        ..Default::default()
    }
}

/// `set` overwrites, `add` appends; Envoy refuses to edit pseudo-headers
/// and `host`, so setting `host`/`:authority` becomes a host rewrite and
/// other pseudo-headers are skipped with a warning.
fn header_ops(
    ops: Option<&HeaderOperations>,
) -> (Vec<HeaderValueOption>, Vec<String>, Option<String>) {
    let Some(ops) = ops else {
        return (Vec::new(), Vec::new(), None);
    };
    let mut host = None;
    let mut add = Vec::new();
    let entries = ops
        .set
        .iter()
        .map(|kv| {
            (
                kv,
                header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd,
            )
        })
        .chain(ops.add.iter().map(|kv| {
            (
                kv,
                header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
            )
        }));
    for ((k, v), append) in entries {
        let key = k.to_ascii_lowercase();
        if key == "host" || key == ":authority" {
            host = Some(v.clone());
            continue;
        }
        if key.starts_with(':') {
            tracing::warn!(header = %k, "pseudo-headers cannot be set; skipped");
            continue;
        }
        add.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: append as i32,
            ..Default::default()
        });
    }
    let remove = ops
        .remove
        .iter()
        .filter(|h| {
            let key = h.to_ascii_lowercase();
            !(key == "host" || key.starts_with(':'))
        })
        .cloned()
        .collect();
    (add, remove, host)
}

fn grpc_code(status: &str) -> Option<u32> {
    mesh_api::common::grpc_status_code(status)
}

fn http_fault(f: &mesh_api::networking::virtual_service::HttpFaultInjection) -> Option<HttpFault> {
    let delay = f.delay.as_ref().and_then(|d| {
        let Some(fixed) = &d.fixed_delay else {
            tracing::warn!("fault.delay.exponentialDelay is not supported by Envoy; delay skipped");
            return None;
        };
        Some(FaultDelay {
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(pb_duration(
                fixed,
            ))),
            percentage: Some(match (d.percentage.as_ref(), d.percent) {
                (None, Some(p)) if p > 0 => fraction_int(p),
                (p, _) => fraction(p),
            }),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error = match (a.http_status, a.grpc_status.as_deref()) {
            (Some(s), _) => fault_abort::ErrorType::HttpStatus(s.max(0) as u32),
            (None, Some(g)) => fault_abort::ErrorType::GrpcStatus(grpc_code(g)?),
            (None, None) => {
                tracing::warn!("fault.abort.http2Error is not supported by Envoy; abort skipped");
                return None;
            }
        };
        Some(FaultAbort {
            error_type: Some(error),
            percentage: Some(fraction(a.percentage.as_ref())),
            ..Default::default()
        })
    });
    (delay.is_some() || abort.is_some()).then(|| HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

fn cors_policy(c: &CorsPolicy) -> EnvoyCorsPolicy {
    let mut origins: Vec<_> = c.allow_origins.iter().filter_map(string_matcher).collect();
    origins.extend(
        c.allow_origin
            .iter()
            .filter_map(|o| string_matcher(&StringMatch::Exact(o.clone()))),
    );
    EnvoyCorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.as_std().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        forward_not_matching_preflights: Some(BoolValue {
            value: c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}

/// Standard base64 (the proto3 JSON form of `bytes`); `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
