//! Access log lines, one per HTTP request and one per TCP connection, in
//! Istio's default text format (Envoy's command operators) or as JSON
//! with the same fields (Istio's `accessLogEncoding: JSON`).
//!
//! Lines are formatted on the request path and handed to a writer thread
//! over a bounded queue, so a slow disk or a full pipe never stalls
//! traffic: when the queue is full the line is dropped and counted, as
//! Envoy's access log buffer would rather lose lines than block.
//!
//! The text format is Istio's:
//!
//! ```text
//! [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
//! %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
//! "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
//! %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
//! "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER%
//! %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
//! %REQUESTED_SERVER_NAME% %ROUTE_NAME%
//! ```
//!
//! (one line). Values the proxy does not know print as `-`, as in Envoy.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::Version;
use serde::Serialize;

use crate::proxy::record::{RequestRecord, TcpRecord};
use crate::runtime::access_log::LogSink;

/// The access logs of connection managers and TCP proxies, by path and
/// encoding: every listener logging to one file shares its writer.
/// A file that cannot be opened is reported once and not retried.
static SHARED: Mutex<Option<SharedLogs>> = Mutex::new(None);

/// Opened logs by path and JSON-ness (`None`: could not be opened).
type SharedLogs = HashMap<(PathBuf, bool), Option<Arc<AccessLog>>>;

/// The shared access log for `sink`.
pub fn shared(sink: &LogSink) -> Option<Arc<AccessLog>> {
    let mut logs = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let logs = logs.get_or_insert_with(HashMap::new);
    logs.entry((sink.path.clone(), sink.json))
        .or_insert_with(|| {
            let mode = if sink.json {
                AccessLogMode::Json
            } else {
                AccessLogMode::Text
            };
            if sink.custom_format {
                tracing::warn!(path = %sink.path.display(), "custom access log formats are not supported; writing Istio's default format");
            }
            match AccessLog::open(mode, &sink.path) {
                Ok(log) => Some(Arc::new(log)),
                Err(e) => {
                    tracing::warn!(path = %sink.path.display(), error = %e, "cannot open the access log; not logging there");
                    None
                }
            }
        })
        .clone()
}

/// Logs a finished request to every sink.
pub fn log_request(sinks: &[LogSink], r: &RequestRecord) {
    for sink in sinks.iter().filter(|s| s.accepts(r)) {
        if let Some(log) = shared(sink) {
            log.request(r);
        }
    }
}

/// Logs a closed TCP connection to every sink.
pub fn log_connection(sinks: &[LogSink], r: &TcpRecord) {
    for sink in sinks {
        if let Some(log) = shared(sink) {
            log.connection(r);
        }
    }
}

/// Lines waiting for the writer thread before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// `--access-log`: whether and how requests are logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogMode {
    /// No access log (Istio's default).
    Off,
    /// Istio's default text format.
    Text,
    /// One JSON object per line.
    Json,
}

/// An access log: formats records and queues them for its writer thread.
#[derive(Debug)]
pub struct AccessLog {
    json: bool,
    lines: SyncSender<String>,
    dropped: AtomicU64,
}

/// A JSON access log line: Istio's JSON format, field for field.
#[derive(Serialize)]
struct JsonLine<'a> {
    start_time: String,
    method: Option<&'a str>,
    path: Option<&'a str>,
    protocol: Option<&'static str>,
    response_code: u16,
    response_flags: String,
    response_code_details: Option<&'a str>,
    connection_termination_details: Option<&'a str>,
    upstream_transport_failure_reason: Option<&'a str>,
    bytes_received: u64,
    bytes_sent: u64,
    duration: u128,
    upstream_service_time: Option<String>,
    x_forwarded_for: Option<&'a str>,
    user_agent: Option<&'a str>,
    request_id: Option<&'a str>,
    authority: Option<&'a str>,
    upstream_host: Option<&'a str>,
    upstream_cluster: Option<&'a str>,
    upstream_local_address: Option<&'a str>,
    downstream_local_address: String,
    downstream_remote_address: String,
    requested_server_name: Option<&'a str>,
    route_name: Option<&'a str>,
}

// === impl AccessLog ===

impl AccessLog {
    /// An access log in `mode` (not `Off`) writing to `writer` from a
    /// thread of its own.
    pub fn new(mode: AccessLogMode, writer: Box<dyn Write + Send>) -> io::Result<Self> {
        let (lines, queue) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&queue, writer))?;
        Ok(Self {
            json: mode == AccessLogMode::Json,
            lines,
            dropped: AtomicU64::new(0),
        })
    }

    /// An access log writing to `path`: `/dev/stdout` (Istio's usual
    /// `accessLogFile`) and `/dev/stderr` are the process's own streams,
    /// anything else a file appended to.
    pub fn open(mode: AccessLogMode, path: &Path) -> io::Result<Self> {
        let writer: Box<dyn Write + Send> = match path.to_str() {
            Some("/dev/stdout" | "-") => Box::new(io::stdout()),
            Some("/dev/stderr") => Box::new(io::stderr()),
            _ => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        Self::new(mode, writer)
    }

    /// Logs a finished request.
    pub fn request(&self, r: &RequestRecord) {
        let line = if self.json {
            request_json(r)
        } else {
            request_text(r)
        };
        self.send(line);
    }

    /// Logs a closed TCP connection.
    pub fn connection(&self, r: &TcpRecord) {
        let line = if self.json {
            connection_json(r)
        } else {
            connection_text(r)
        };
        self.send(line);
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, line: String) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    tracing::warn!(
                        dropped = self.dropped(),
                        "access log writer is behind; dropping lines"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread: writes what is queued, flushing whenever the queue
/// runs dry, until every sender is gone.
fn write_lines(queue: &Receiver<String>, writer: Box<dyn Write + Send>) {
    let mut out = BufWriter::new(writer);
    let mut failing = false;
    let mut report = |result: io::Result<()>| match result {
        Ok(()) => failing = false,
        Err(e) if !failing => {
            failing = true;
            tracing::warn!(error = %e, "cannot write the access log");
        }
        Err(_) => {}
    };
    while let Ok(line) = queue.recv() {
        report(out.write_all(line.as_bytes()));
        while let Ok(more) = queue.try_recv() {
            report(out.write_all(more.as_bytes()));
        }
        report(out.flush());
    }
}

/// Envoy's `%PROTOCOL%`.
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// `%RESPONSE_CODE_DETAILS%`: the local reply's reason, or `via_upstream`.
fn details(r: &RequestRecord) -> Option<&str> {
    r.details
        .as_deref()
        .or_else(|| r.upstream_service_time.map(|_| "via_upstream"))
}

fn dash(v: Option<&str>) -> &str {
    v.filter(|s| !s.is_empty()).unwrap_or("-")
}

fn some(v: &str) -> Option<&str> {
    Some(v).filter(|s| !s.is_empty())
}

/// A request in Istio's default text format, with its newline.
pub fn request_text(r: &RequestRecord) -> String {
    let mut line = String::with_capacity(384);
    let ust = r.upstream_service_time.map(|d| d.as_millis().to_string());
    // `write!` to a String cannot fail.
    let _ = writeln!(
        line,
        "[{}] \"{} {} {}\" {} {} {} - \"-\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} {} {}",
        start_time(r.start),
        r.method,
        dash(some(&r.path)),
        protocol(r.protocol),
        r.response_code,
        r.flags,
        dash(details(r)),
        r.bytes_received,
        r.bytes_sent,
        r.duration.as_millis(),
        dash(ust.as_deref()),
        dash(r.forwarded_for.as_deref()),
        dash(r.user_agent.as_deref()),
        dash(r.request_id.as_deref()),
        dash(some(&r.authority)),
        dash(r.upstream_host.as_deref()),
        dash(r.cluster.as_deref()),
        r.downstream_local,
        r.downstream_remote,
        dash(r.server_name.as_deref()),
        dash(r.route_name.as_deref()),
    );
    line
}

/// A TCP connection in the same format (request fields are `-`).
pub fn connection_text(r: &TcpRecord) -> String {
    let mut line = String::with_capacity(256);
    let _ = writeln!(
        line,
        "[{}] \"- - -\" 0 {} - - \"-\" {} {} {} - \"-\" \"-\" \"-\" \"-\" \"{}\" {} - {} {} {} -",
        start_time(r.start),
        r.flags,
        r.bytes_received,
        r.bytes_sent,
        r.duration.as_millis(),
        dash(r.upstream_host.as_deref()),
        dash(r.cluster.as_deref()),
        r.downstream_local,
        r.downstream_remote,
        dash(r.server_name.as_deref()),
    );
    line
}

/// A request as one JSON object, with its newline.
pub fn request_json(r: &RequestRecord) -> String {
    json_line(&JsonLine {
        start_time: start_time(r.start),
        method: Some(r.method.as_str()).filter(|m| *m != "-"),
        path: some(&r.path),
        protocol: Some(protocol(r.protocol)),
        response_code: r.response_code,
        response_flags: r.flags.to_string(),
        response_code_details: details(r),
        connection_termination_details: None,
        upstream_transport_failure_reason: None,
        bytes_received: r.bytes_received,
        bytes_sent: r.bytes_sent,
        duration: r.duration.as_millis(),
        upstream_service_time: r.upstream_service_time.map(|d| d.as_millis().to_string()),
        x_forwarded_for: r.forwarded_for.as_deref(),
        user_agent: r.user_agent.as_deref(),
        request_id: r.request_id.as_deref(),
        authority: some(&r.authority),
        upstream_host: r.upstream_host.as_deref(),
        upstream_cluster: r.cluster.as_deref(),
        upstream_local_address: None,
        downstream_local_address: r.downstream_local.to_string(),
        downstream_remote_address: r.downstream_remote.to_string(),
        requested_server_name: r.server_name.as_deref(),
        route_name: r.route_name.as_deref(),
    })
}

/// A TCP connection as one JSON object, with its newline.
pub fn connection_json(r: &TcpRecord) -> String {
    json_line(&JsonLine {
        start_time: start_time(r.start),
        method: None,
        path: None,
        protocol: None,
        response_code: 0,
        response_flags: r.flags.to_string(),
        response_code_details: None,
        connection_termination_details: None,
        upstream_transport_failure_reason: None,
        bytes_received: r.bytes_received,
        bytes_sent: r.bytes_sent,
        duration: r.duration.as_millis(),
        upstream_service_time: None,
        x_forwarded_for: None,
        user_agent: None,
        request_id: None,
        authority: None,
        upstream_host: r.upstream_host.as_deref(),
        upstream_cluster: r.cluster.as_deref(),
        upstream_local_address: None,
        downstream_local_address: r.downstream_local.to_string(),
        downstream_remote_address: r.downstream_remote.to_string(),
        requested_server_name: r.server_name.as_deref(),
        route_name: None,
    })
}

fn json_line(line: &JsonLine<'_>) -> String {
    // Serialising plain strings and numbers cannot fail.
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    text
}

/// Envoy's `%START_TIME%`: UTC, millisecond precision
/// (`2024-05-01T12:00:00.123Z`).
pub fn start_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::record::ResponseFlags;
    use crate::runtime::listener::Direction;
    use crate::telemetry::fixtures::request;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use test_case::test_case;

    #[test_case(0, "1970-01-01T00:00:00.000Z"; "epoch")]
    #[test_case(951_782_400_123, "2000-02-29T00:00:00.123Z"; "leap day")]
    #[test_case(1_714_564_800_999, "2024-05-01T12:00:00.999Z"; "recent")]
    fn start_times_are_utc_with_millis(millis: u64, expected: &str) {
        let t = UNIX_EPOCH + Duration::from_millis(millis);
        assert_eq!(start_time(t), expected);
    }

    fn upstream_request() -> RequestRecord {
        let mut r = request(
            200,
            ResponseFlags::default(),
            Some("outbound|9080||reviews.default.svc.cluster.local"),
        );
        r.start = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
        r.method = http::Method::POST;
        r.path = "/reviews/1?x=1".into();
        r.user_agent = Some("curl/8.5.0".into());
        r.request_id = Some("b9c2-4".into());
        r.forwarded_for = Some("10.0.0.1".into());
        r.route_name = Some("default".into());
        r.upstream_service_time = Some(Duration::from_millis(2));
        r
    }

    #[test]
    fn text_lines_follow_istios_default_format() {
        assert_eq!(
            request_text(&upstream_request()),
            "[2024-05-01T12:00:00.123Z] \"POST /reviews/1?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 10 2000 3 2 \
             \"10.0.0.1\" \"curl/8.5.0\" \"b9c2-4\" \"reviews:9080\" \"10.1.0.7:9080\" \
             outbound|9080||reviews.default.svc.cluster.local - 10.96.0.5:9080 10.0.0.1:40000 - default\n"
        );
        let mut nr = request(404, ResponseFlags::NO_ROUTE_FOUND, None);
        nr.details = Some("route_not_found".into());
        nr.protocol = Version::HTTP_2;
        let line = request_text(&nr);
        assert!(
            line.contains("\"GET / HTTP/2\" 404 NR route_not_found - \"-\" 10 2000 3 - \"-\" \"-\" \"-\" \"reviews:9080\" \"-\" - -"),
            "{line}"
        );
        let mut failed = request(503, ResponseFlags::UPSTREAM_CONNECTION_FAILURE, Some("c"));
        failed
            .flags
            .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        assert!(request_text(&failed).contains(" 503 UF,URX "));
    }

    #[test]
    fn json_lines_carry_the_same_fields() {
        let line = request_json(&upstream_request());
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["start_time"], "2024-05-01T12:00:00.123Z");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/reviews/1?x=1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["response_code_details"], "via_upstream");
        assert_eq!(v["bytes_received"], 10);
        assert_eq!(v["bytes_sent"], 2000);
        assert_eq!(v["duration"], 3);
        assert_eq!(v["upstream_service_time"], "2");
        assert_eq!(v["upstream_host"], "10.1.0.7:9080");
        assert_eq!(
            v["upstream_cluster"],
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        assert_eq!(v["downstream_remote_address"], "10.0.0.1:40000");
        assert_eq!(v["requested_server_name"], serde_json::Value::Null);
        assert_eq!(v["route_name"], "default");
    }

    fn tcp() -> TcpRecord {
        TcpRecord {
            start: UNIX_EPOCH,
            listener: "l".into(),
            direction: Direction::Outbound,
            filter_chain: String::new(),
            downstream_remote: "10.0.0.1:1234".parse().unwrap(),
            downstream_local: "10.96.0.9:3306".parse().unwrap(),
            server_name: Some("db.example.com".into()),
            cluster: Some("outbound|3306||db.example.com".into()),
            upstream_host: Some("10.1.0.9:3306".into()),
            flags: ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::from_millis(1),
            downstream_security: Default::default(),
            downstream_peer_principal: None,
            upstream_peer_principal: None,
            local_principal: None,
        }
    }

    #[test]
    fn tcp_connections_print_dashes_for_http_fields() {
        assert_eq!(
            connection_text(&tcp()),
            "[1970-01-01T00:00:00.000Z] \"- - -\" 0 UF - - \"-\" 0 0 1 - \"-\" \"-\" \"-\" \"-\" \
             \"10.1.0.9:3306\" outbound|3306||db.example.com - 10.96.0.9:3306 10.0.0.1:1234 db.example.com -\n"
        );
        let v: serde_json::Value = serde_json::from_str(&connection_json(&tcp())).unwrap();
        assert_eq!(v["response_flags"], "UF");
        assert_eq!(v["method"], serde_json::Value::Null);
        assert_eq!(v["requested_server_name"], "db.example.com");
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_writer() {
        let capture = Capture::default();
        let log = AccessLog::new(AccessLogMode::Json, Box::new(capture.clone())).unwrap();
        log.request(&upstream_request());
        log.connection(&tcp());
        drop(log);
        let text = mesh_test_support::wait_for(Duration::from_secs(5), || {
            let bytes = capture.0.lock().unwrap().clone();
            (bytes.iter().filter(|b| **b == b'\n').count() == 2).then_some(bytes)
        })
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("{\"start_time\":\"2024-05-01T12:00:00.123Z\""),
            "{text}"
        );
    }
}
