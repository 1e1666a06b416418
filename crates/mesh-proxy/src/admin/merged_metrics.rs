//! Istio's merged metrics on the status port (15020 `/stats/prometheus`):
//! the proxy's own metrics followed by the application's, so one scrape
//! target per pod carries both. The injector moves the pod's original
//! `prometheus.io/port|path` annotations into `ISTIO_PROMETHEUS_ANNOTATIONS`
//! (JSON `{"scrape":"true","port":"9080","path":"/metrics"}`) and points the
//! annotations at this endpoint; each scrape here scrapes the app over
//! loopback (the proxy's own connections are never captured).
//!
//! The proxy's registry encodes OpenMetrics; the merged answer is the
//! Prometheus text format (0.0.4, what Envoy's `/stats/prometheus` serves),
//! because an app's plain-text counters without `_total` are not valid
//! OpenMetrics. So the proxy's part is rewritten (no `# EOF`, no `# UNIT`,
//! counter families named by their `_total` samples) and the app's part
//! loses the `# HELP`/`# TYPE` lines of families the proxy already declared:
//! a second `# TYPE` line for one name fails the whole scrape.
//!
//! An app that does not answer within the scrape timeout, or answers an
//! error, costs only its own part: the proxy's metrics are still served and
//! `istio_agent_scrape_failures_total{type="application"}` counts it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use serde::Deserialize;

/// Environment variable with the app's original scrape annotations
/// (Istio's name).
pub const ANNOTATIONS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";

/// Content type of the merged answer.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The longest an app scrape may take when Prometheus does not say
/// (`X-Prometheus-Scrape-Timeout-Seconds`); Prometheus' default scrape
/// timeout is 10 s, and the proxy's part must still make it in time.
const DEFAULT_APP_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest app answer read (larger ones count as a failure).
const MAX_APP_BODY: usize = 16 << 20;

/// The JSON the injector writes (all values are strings, as the
/// annotations were).
#[derive(Debug, Default, Deserialize)]
struct Annotations {
    #[serde(default)]
    scrape: Option<String>,
    #[serde(default)]
    port: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
}

/// Where the app serves its metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppTarget {
    /// The app's port on loopback.
    pub port: u16,
    /// Path (and query) of its metrics.
    pub path: String,
}

/// Parses [`ANNOTATIONS_ENV`]'s value: `None` when the app asked not to be
/// scraped (`scrape` other than `true`) or named no port. Errors name the
/// variable and the field.
pub fn parse(json: &str) -> Result<Option<AppTarget>, String> {
    let a: Annotations =
        serde_json::from_str(json).map_err(|e| format!("{ANNOTATIONS_ENV}: {e}"))?;
    if a.scrape.as_deref().is_some_and(|s| s != "true") {
        return Ok(None);
    }
    let Some(port) = a.port.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{ANNOTATIONS_ENV}: port: {port:?} is not a port number (1-65535)"))?;
    if port == 0 {
        return Err(format!("{ANNOTATIONS_ENV}: port: 0 is not a port number"));
    }
    if let Some(scheme) = a.scheme.filter(|s| !s.eq_ignore_ascii_case("http")) {
        return Err(format!(
            "{ANNOTATIONS_ENV}: scheme: {scheme:?} is not supported (only http)"
        ));
    }
    let path = match a.path.filter(|p| !p.is_empty()) {
        None => "/metrics".to_string(),
        Some(p) if p.starts_with('/') => p,
        Some(p) => format!("/{p}"),
    };
    Ok(Some(AppTarget { port, path }))
}

/// The merge state: the app target and the agent's scrape counters.
#[derive(Debug, Default)]
pub struct Merger {
    app: Option<AppTarget>,
    scrapes: AtomicU64,
    app_failures: AtomicU64,
}

// === impl Merger ===

impl Merger {
    /// A merger scraping `app`, if any.
    pub fn new(app: Option<AppTarget>) -> Arc<Self> {
        Arc::new(Self {
            app,
            ..Self::default()
        })
    }

    /// The merged text: `proxy` (OpenMetrics from the registry), the app's
    /// metrics when it answers within `timeout`, and the agent counters.
    pub async fn merge(&self, proxy: &str, timeout: Option<Duration>) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let mut out = openmetrics_to_text(proxy);
        let mut declared = declared_families(&out);
        if let Some(app) = &self.app {
            let timeout = timeout.unwrap_or(DEFAULT_APP_TIMEOUT);
            match tokio::time::timeout(timeout, scrape(app)).await {
                Ok(Ok(text)) => append_app(&mut out, &text, &mut declared),
                Ok(Err(e)) => {
                    self.app_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(port = app.port, path = %app.path, "app metrics: {e}");
                }
                Err(_) => {
                    self.app_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        port = app.port,
                        path = %app.path,
                        "app metrics: no answer within {timeout:?}"
                    );
                }
            }
        }
        self.append_agent(&mut out, &declared);
        out
    }

    fn append_agent(&self, out: &mut String, declared: &HashSet<String>) {
        use std::fmt::Write;
        for (name, help, value) in [
            (
                "istio_agent_scrapes_total",
                "The total number of scrapes.",
                self.scrapes.load(Ordering::Relaxed),
            ),
            (
                "istio_agent_scrape_failures_total",
                "The total number of failed scrapes.",
                self.app_failures.load(Ordering::Relaxed),
            ),
        ] {
            if declared.contains(name) {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            if name == "istio_agent_scrape_failures_total" {
                let _ = writeln!(out, "{name}{{type=\"application\"}} {value}");
            } else {
                let _ = writeln!(out, "{name} {value}");
            }
        }
    }
}

/// The timeout Prometheus announces, less a margin for the proxy's part.
pub fn scrape_timeout(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get("x-prometheus-scrape-timeout-seconds")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    if !secs.is_finite() || secs <= 0.0 {
        return None;
    }
    let margin = (secs * 0.1).min(0.5);
    Some(Duration::from_secs_f64(secs - margin).min(DEFAULT_APP_TIMEOUT * 6))
}

async fn scrape(app: &AppTarget) -> Result<String, String> {
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, app.port));
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to port {}: {e}", app.port))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::get(app.path.as_str())
        .header(hyper::header::HOST, format!("localhost:{}", app.port))
        .header(
            hyper::header::ACCEPT,
            "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5,*/*;q=0.1",
        )
        .header(hyper::header::USER_AGENT, "mesh-proxy/merged-metrics")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let openmetrics = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/openmetrics-text"));
    let body = Limited::new(response.into_body(), MAX_APP_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("the app answered {}", status.as_u16()));
    }
    let text = String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8")?;
    Ok(if openmetrics {
        openmetrics_to_text(&text)
    } else {
        text
    })
}

/// OpenMetrics text as Prometheus text 0.0.4: drops `# EOF` and `# UNIT`,
/// names counter families by their `_total` samples, turns `unknown` into
/// `untyped`, and strips exemplars.
pub fn openmetrics_to_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // A `# HELP` waits for its `# TYPE`: a counter's family name changes.
    let mut help: Option<(&str, &str)> = None;
    let flush_help = |out: &mut String, help: &mut Option<(&str, &str)>| {
        if let Some((name, rest)) = help.take() {
            out.push_str(&format!("# HELP {name} {rest}\n"));
        }
    };
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, &mut help);
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, doc));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = family;
            let (name, kind) = match kind.trim() {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" | "gaugehistogram" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            match help.take() {
                Some((help_name, doc)) if help_name == family => {
                    out.push_str(&format!("# HELP {name} {doc}\n"));
                }
                other => {
                    let mut other = other;
                    flush_help(&mut out, &mut other);
                }
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        flush_help(&mut out, &mut help);
        if line.starts_with('#') {
            out.push_str(line);
        } else {
            // ` # {trace_id="..."} 1.0` after the value is an exemplar.
            out.push_str(line.split_once(" # ").map_or(line, |(sample, _)| sample));
        }
        out.push('\n');
    }
    flush_help(&mut out, &mut help);
    out
}

/// The family names a text declares with `# TYPE`.
fn declared_families(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Appends the app's text, dropping `# HELP`/`# TYPE` lines of families
/// already declared (by the proxy, or earlier in the app's own text).
fn append_app(out: &mut String, app: &str, declared: &mut HashSet<String>) {
    let mut seen_help = HashSet::new();
    for line in app.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            if !declared.insert(name.to_string()) {
                continue;
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            if declared.contains(name) || !seen_help.insert(name.to_string()) {
                continue;
            }
        } else if line.trim().is_empty() || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_injectors_json() {
        assert_eq!(
            parse(r#"{"scrape":"true","port":"9080","path":"/metrics"}"#),
            Ok(Some(AppTarget {
                port: 9080,
                path: "/metrics".into()
            }))
        );
        assert_eq!(
            parse(r#"{"scrape":"true","port":"8080"}"#).unwrap(),
            Some(AppTarget {
                port: 8080,
                path: "/metrics".into()
            })
        );
        assert_eq!(parse(r#"{"scrape":"false","port":"9080"}"#), Ok(None));
        assert_eq!(parse(r#"{"scrape":"true"}"#), Ok(None));
        let err = parse(r#"{"port":"http"}"#).expect_err("not a number");
        assert!(
            err.starts_with(ANNOTATIONS_ENV) && err.contains("port"),
            "{err}"
        );
        let err = parse(r#"{"port":"9080","scheme":"https"}"#).expect_err("https");
        assert!(err.contains("scheme"), "{err}");
        assert!(parse("[").is_err());
    }

    #[test]
    fn rewrites_openmetrics_as_prometheus_text() {
        let om = "# HELP istio_requests Total requests.\n\
                  # TYPE istio_requests counter\n\
                  istio_requests_total{response_code=\"200\"} 3\n\
                  # HELP istio_request_duration_milliseconds Duration.\n\
                  # TYPE istio_request_duration_milliseconds histogram\n\
                  # UNIT istio_request_duration_milliseconds milliseconds\n\
                  istio_request_duration_milliseconds_bucket{le=\"1.0\"} 1 # {trace_id=\"ab\"} 0.5\n\
                  istio_request_duration_milliseconds_count 1\n\
                  # TYPE build unknown\n\
                  build 1\n\
                  # EOF\n";
        let text = openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP istio_requests_total Total requests.\n\
             # TYPE istio_requests_total counter\n\
             istio_requests_total{response_code=\"200\"} 3\n\
             # HELP istio_request_duration_milliseconds Duration.\n\
             # TYPE istio_request_duration_milliseconds histogram\n\
             istio_request_duration_milliseconds_bucket{le=\"1.0\"} 1\n\
             istio_request_duration_milliseconds_count 1\n\
             # TYPE build untyped\n\
             build 1\n"
        );
    }

    #[test]
    fn app_families_the_proxy_declared_lose_their_type_lines() {
        let mut out = "# TYPE istio_requests_total counter\nistio_requests_total 1\n".to_string();
        let mut declared = declared_families(&out);
        append_app(
            &mut out,
            "# HELP istio_requests_total app's own.\n# TYPE istio_requests_total counter\n\
             istio_requests_total{app=\"x\"} 2\n\n# HELP http_hits Hits.\n# TYPE http_hits counter\n\
             http_hits 5\n# TYPE http_hits counter\n",
            &mut declared,
        );
        assert_eq!(out.matches("# TYPE istio_requests_total").count(), 1);
        assert_eq!(out.matches("# TYPE http_hits").count(), 1);
        assert!(out.contains("istio_requests_total{app=\"x\"} 2\n"), "{out}");
        assert!(
            out.contains("# HELP http_hits Hits.\n# TYPE http_hits counter\nhttp_hits 5\n"),
            "{out}"
        );
        assert!(!out.contains("app's own"), "{out}");
        assert!(!out.contains("\n\n"), "{out}");
    }

    #[tokio::test]
    async fn an_app_that_fails_costs_only_its_part() {
        // A port nobody listens on: bind, read the port, drop.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let merger = Merger::new(Some(AppTarget {
            port,
            path: "/metrics".into(),
        }));
        let proxy = "# TYPE istio_requests counter\nistio_requests_total 1\n# EOF\n";
        let out = merger.merge(proxy, Some(Duration::from_secs(1))).await;
        assert!(out.contains("istio_requests_total 1\n"), "{out}");
        assert!(
            out.contains("istio_agent_scrape_failures_total{type=\"application\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("istio_agent_scrapes_total 1\n"), "{out}");
    }

    #[tokio::test]
    async fn an_app_that_hangs_is_cut_at_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and never answers.
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                if let Ok((s, _)) = listener.accept().await {
                    held.push(s);
                }
            }
        });
        let merger = Merger::new(Some(AppTarget {
            port,
            path: "/metrics".into(),
        }));
        let started = std::time::Instant::now();
        let out = merger
            .merge("# EOF\n", Some(Duration::from_millis(300)))
            .await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            out.contains("istio_agent_scrape_failures_total{type=\"application\"} 1\n"),
            "{out}"
        );
        hold.abort();
    }
}
