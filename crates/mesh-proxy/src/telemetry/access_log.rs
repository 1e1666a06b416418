//! Access log lines, one per HTTP request and one per TCP connection,
//! formatted by the sink's [`Formatter`] (Envoy's command operators: a
//! listener's own format, or Istio's default text or JSON). Sinks that
//! are OpenTelemetry loggers hand their records to
//! [`super::otel_log`] instead, which exports them as OTLP logs.
//!
//! Lines are formatted on the request path and handed to the file's
//! writer thread over a bounded queue, so a slow disk or a full pipe never
//! stalls traffic: when the queue is full the line is dropped and counted,
//! as Envoy's access log buffer would rather lose lines than block. There
//! is one writer per path, whatever the formats of the sinks writing
//! there, so lines of different listeners never interleave mid-line.
//!
//! Istio's default text format is
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
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use super::format::{self, Formatter};
use crate::proxy::record::{RequestRecord, TcpRecord};
use crate::runtime::access_log::{LogSink, LogTarget};

/// The writers of access log files, by path: every sink writing to one
/// file shares its writer thread. A file that cannot be opened is
/// reported once and not retried (the error is kept).
static SHARED: Mutex<Option<SharedWriters>> = Mutex::new(None);

/// Opened writers by path (`Err`: the file could not be opened, and why).
type SharedWriters = HashMap<PathBuf, Result<Arc<LogWriter>, String>>;

/// The shared writer of `path`, opened on first use.
pub fn shared_writer(path: &Path) -> io::Result<Arc<LogWriter>> {
    let mut logs = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let logs = logs.get_or_insert_with(HashMap::new);
    logs.entry(path.to_path_buf())
        .or_insert_with(|| match LogWriter::open(path) {
            Ok(w) => Ok(Arc::new(w)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the access log; not logging there");
                Err(e.to_string())
            }
        })
        .clone()
        .map_err(io::Error::other)
}

/// Logs a finished request to every sink that accepts it.
pub fn log_request(sinks: &[LogSink], r: &RequestRecord) {
    for sink in sinks.iter().filter(|s| s.accepts(r)) {
        match &sink.target {
            LogTarget::File { path, format } => {
                if let Ok(writer) = shared_writer(path) {
                    writer.send(format.request(r));
                }
            }
            LogTarget::OpenTelemetry(otel) => otel.request(r),
        }
    }
}

/// Logs a closed TCP connection to every sink.
pub fn log_connection(sinks: &[LogSink], r: &TcpRecord) {
    for sink in sinks {
        match &sink.target {
            LogTarget::File { path, format } => {
                if let Ok(writer) = shared_writer(path) {
                    writer.send(format.connection(r));
                }
            }
            LogTarget::OpenTelemetry(otel) => otel.connection(r),
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
    /// One JSON object per line (Istio's JSON format).
    Json,
}

/// The writer of one file: a thread fed over a bounded queue.
#[derive(Debug)]
pub struct LogWriter {
    lines: SyncSender<String>,
    dropped: AtomicU64,
}

/// An access log of `--access-log`: a format and the writer it writes to.
#[derive(Debug)]
pub struct AccessLog {
    format: Arc<Formatter>,
    writer: Arc<LogWriter>,
}

// === impl LogWriter ===

impl LogWriter {
    /// A writer to `writer`, from a thread of its own.
    pub fn new(writer: Box<dyn Write + Send>) -> io::Result<Self> {
        let (lines, queue) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&queue, writer))?;
        Ok(Self {
            lines,
            dropped: AtomicU64::new(0),
        })
    }

    /// A writer to `path`: `/dev/stdout` (Istio's usual `accessLogFile`)
    /// and `/dev/stderr` are the process's own streams, anything else a
    /// file appended to.
    pub fn open(path: &Path) -> io::Result<Self> {
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
        Self::new(writer)
    }

    /// Queues a line (dropped and counted when the writer is behind).
    pub fn send(&self, line: String) {
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

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

// === impl AccessLog ===

impl AccessLog {
    /// An access log in `mode` (not `Off`) writing to `writer` from a
    /// thread of its own.
    pub fn new(mode: AccessLogMode, writer: Box<dyn Write + Send>) -> io::Result<Self> {
        Ok(Self {
            format: mode_format(mode),
            writer: Arc::new(LogWriter::new(writer)?),
        })
    }

    /// An access log writing to `path`, through the writer listeners
    /// logging to the same path share.
    pub fn open(mode: AccessLogMode, path: &Path) -> io::Result<Self> {
        Ok(Self {
            format: mode_format(mode),
            writer: shared_writer(path)?,
        })
    }

    /// Logs a finished request.
    pub fn request(&self, r: &RequestRecord) {
        self.writer.send(self.format.request(r));
    }

    /// Logs a closed TCP connection.
    pub fn connection(&self, r: &TcpRecord) {
        self.writer.send(self.format.connection(r));
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.writer.dropped()
    }
}

fn mode_format(mode: AccessLogMode) -> Arc<Formatter> {
    match mode {
        AccessLogMode::Json => format::istio_json(),
        AccessLogMode::Off | AccessLogMode::Text => format::istio_text(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::record::ResponseFlags;
    use crate::runtime::listener::Direction;
    use crate::telemetry::fixtures::request;
    use crate::telemetry::format::start_time;
    use http::Version;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};
    use test_case::test_case;

    // Istio's default formats, through the formatter: these tests were
    // written against the hand-written renderer it replaced, and their
    // expected lines are unchanged.
    fn request_text(r: &RequestRecord) -> String {
        format::istio_text().request(r)
    }
    fn connection_text(r: &TcpRecord) -> String {
        format::istio_text().connection(r)
    }
    fn request_json(r: &RequestRecord) -> String {
        format::istio_json().request(r)
    }
    fn connection_json(r: &TcpRecord) -> String {
        format::istio_json().connection(r)
    }

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
            upstream_local: None,
            upstream_transport_failure: None,
            termination_details: None,
            flags: ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::from_millis(1),
            downstream_security: Default::default(),
            downstream_peer_principal: None,
            upstream_peer_principal: None,
            local_principal: None,
            stats: None,
            peer: None,
            reported: Default::default(),
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
        // Keys sorted, as Envoy writes Istio's JSON format.
        assert!(
            text.starts_with("{\"authority\":\"reviews:9080\","),
            "{text}"
        );
        assert!(
            text.contains(",\"start_time\":\"2024-05-01T12:00:00.123Z\","),
            "{text}"
        );
    }
}
