//! Connection inspection before a filter chain is chosen: the TLS
//! ClientHello (SNI, ALPN) and the HTTP protocol of plaintext traffic,
//! read with `peek` so the bytes stay in the socket for whoever serves
//! the connection. Bounded in size (one TLS record) and time (the
//! listener's filter timeout).

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// The largest TLS record plus its header.
const MAX_PEEK: usize = 16 * 1024 + 5;
/// How long to wait between peeks while a ClientHello is incomplete.
const PEEK_INTERVAL: Duration = Duration::from_millis(5);

/// What inspection learned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// `tls` or `raw_buffer`.
    pub transport: &'static str,
    /// SNI.
    pub server_name: Option<String>,
    /// ALPN offered by a TLS client, or the sniffed HTTP protocol
    /// (`http/1.1`, `h2c`) of a plaintext one.
    pub application_protocols: Vec<String>,
}

/// The result of parsing the first bytes of a connection as TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not TLS.
    NotTls,
    /// TLS, but more bytes are needed.
    Incomplete,
    /// A ClientHello.
    Parsed {
        /// SNI.
        server_name: Option<String>,
        /// ALPN protocols.
        alpn: Vec<String>,
    },
}

/// Peeks at a new connection. `tls`: read a ClientHello; `http`: sniff
/// plaintext HTTP. Returns `None` when the client sent nothing usable in
/// time and the listener does not continue on timeout.
pub async fn inspect(
    stream: &TcpStream,
    tls: bool,
    http: bool,
    timeout: Option<Duration>,
    continue_on_timeout: bool,
) -> Option<Inspection> {
    let raw = Inspection {
        transport: "raw_buffer",
        ..Default::default()
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut buf = vec![0u8; MAX_PEEK];
    loop {
        let peek = stream.peek(&mut buf);
        let n = match deadline {
            None => peek.await,
            Some(d) => match tokio::time::timeout_at(d.into(), peek).await {
                Ok(r) => r,
                Err(_) => return continue_on_timeout.then_some(raw),
            },
        };
        let Ok(n) = n else {
            return Some(raw);
        };
        if n == 0 {
            return Some(raw);
        }
        let data = &buf[..n];
        if tls {
            match parse_client_hello(data) {
                Hello::Parsed { server_name, alpn } => {
                    return Some(Inspection {
                        transport: "tls",
                        server_name,
                        application_protocols: alpn,
                    });
                }
                Hello::Incomplete if n < MAX_PEEK => {}
                Hello::Incomplete => {
                    return Some(Inspection {
                        transport: "tls",
                        ..Default::default()
                    });
                }
                Hello::NotTls if !http => return Some(raw),
                Hello::NotTls => {}
            }
        }
        if http && !data.starts_with(&[0x16]) {
            match sniff_http(data) {
                Some(Some(p)) => {
                    return Some(Inspection {
                        application_protocols: vec![p.to_string()],
                        ..raw
                    });
                }
                Some(None) => return Some(raw),
                None if n < MAX_PEEK => {}
                None => return Some(raw),
            }
        }
        let wait = tokio::time::sleep(PEEK_INTERVAL);
        match deadline {
            Some(d) if Instant::now() + PEEK_INTERVAL >= d => {
                return continue_on_timeout.then_some(raw);
            }
            _ => wait.await,
        }
    }
}

/// Parses a ClientHello from the first bytes of a connection.
pub fn parse_client_hello(data: &[u8]) -> Hello {
    if data.is_empty() {
        return Hello::Incomplete;
    }
    if data[0] != 0x16 || (data.len() > 1 && data[1] != 3) {
        return Hello::NotTls;
    }
    if data.len() < 5 {
        return Hello::Incomplete;
    }
    let record_len = usize::from(u16::from_be_bytes([data[3], data[4]]));
    let Some(record) = data.get(5..5 + record_len) else {
        return Hello::Incomplete;
    };
    let mut r = Reader(record);
    // Handshake type 1 is client_hello.
    if r.u8() != Some(1) {
        return Hello::NotTls;
    }
    let parsed = (|| {
        let len = r.u24()?;
        let mut hello = Reader(r.take(len).unwrap_or(r.0));
        hello.take(2 + 32)?; // version, random
        let session = usize::from(hello.u8()?);
        hello.take(session)?;
        let suites = usize::from(hello.u16()?);
        hello.take(suites)?;
        let compression = usize::from(hello.u8()?);
        hello.take(compression)?;
        let mut server_name = None;
        let mut alpn = Vec::new();
        let Some(ext_len) = hello.u16() else {
            return Some((None, alpn));
        };
        let mut exts = Reader(hello.take(usize::from(ext_len))?);
        while let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) {
            let mut ext = Reader(exts.take(usize::from(len))?);
            match kind {
                0 => {
                    let n = usize::from(ext.u16()?);
                    let mut list = Reader(ext.take(n)?);
                    while let (Some(name_type), Some(len)) = (list.u8(), list.u16()) {
                        let name = list.take(usize::from(len))?;
                        if name_type == 0 {
                            server_name =
                                std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
                        }
                    }
                }
                16 => {
                    let n = usize::from(ext.u16()?);
                    let mut list = Reader(ext.take(n)?);
                    while let Some(len) = list.u8() {
                        let p = list.take(usize::from(len))?;
                        alpn.push(String::from_utf8_lossy(p).into_owned());
                    }
                }
                _ => {}
            }
        }
        Some((server_name, alpn))
    })();
    match parsed {
        Some((server_name, alpn)) => Hello::Parsed { server_name, alpn },
        // A malformed hello is still TLS, just without SNI.
        None => Hello::Parsed {
            server_name: None,
            alpn: Vec::new(),
        },
    }
}

/// `Some(Some(protocol))` for HTTP, `Some(None)` for not HTTP, `None` when
/// more bytes are needed.
pub fn sniff_http(data: &[u8]) -> Option<Option<&'static str>> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if data.len() >= PREFACE.len() && data.starts_with(PREFACE) {
        return Some(Some("h2c"));
    }
    if PREFACE.starts_with(data) {
        return None;
    }
    const METHODS: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    if METHODS.iter().any(|m| data.starts_with(m)) {
        return Some(Some("http/1.1"));
    }
    if METHODS.iter().any(|m| m.starts_with(data)) {
        return None;
    }
    Some(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_test_support::tls::client_hello;
    use test_case::test_case;

    #[test]
    fn reads_sni_and_alpn() {
        let hello = client_hello("DB.example.com", &["h2", "http/1.1"]);
        assert_eq!(
            parse_client_hello(&hello),
            Hello::Parsed {
                server_name: Some("db.example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            }
        );
    }

    #[test]
    fn incomplete_until_the_record_is_whole() {
        let hello = client_hello("a.example.com", &[]);
        for cut in [1, 4, 5, hello.len() - 1] {
            assert_eq!(
                parse_client_hello(&hello[..cut]),
                Hello::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test_case(b"GET / HTTP/1.1\r\n"; "http")]
    #[test_case(b"\x00\x00\x00\x0a"; "binary")]
    #[test_case(b"SSH-2.0-OpenSSH"; "ssh")]
    fn plaintext_is_not_tls(data: &[u8]) {
        assert_eq!(parse_client_hello(data), Hello::NotTls);
    }

    #[test_case(b"GET / HTTP/1.1\r\n", Some(Some("http/1.1")); "http1")]
    #[test_case(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Some("h2c")); "h2 preface")]
    #[test_case(b"PRI * HT", None; "partial preface")]
    #[test_case(b"GE", None; "partial method")]
    #[test_case(b"\x0a\x00\x00", Some(None); "mysql-ish")]
    fn sniffs_http(data: &[u8], expected: Option<Option<&str>>) {
        assert_eq!(sniff_http(data), expected);
    }
}
