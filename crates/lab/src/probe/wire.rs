//! Raw HTTP/1.x on one TCP connection, for the probe: write bytes, read one response with
//! its framing (content-length, chunked, close-delimited), and tell how the peer closed.
//!
//! The probe must see the close exactly as the kernel reports it, so it reads the socket
//! itself: `Ok(0)` is a FIN, `ECONNRESET` is an RST. An HTTP client library would hide the
//! difference, and the difference is what decides whether a request was lost.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The longest status line, header or chunk-size line the probe accepts.
const MAX_LINE: usize = 64 * 1024;

/// How the peer ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseKind {
    /// An orderly close: the read returned 0 bytes.
    Fin,
    /// A reset: the read failed with `ECONNRESET` (bytes the peer had sent but the probe had
    /// not read yet may be lost with it).
    Rst,
}

impl CloseKind {
    pub fn label(self) -> &'static str {
        match self {
            CloseKind::Fin => "FIN",
            CloseKind::Rst => "RST",
        }
    }
}

/// Why reading a response failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The peer closed; `partial` when some bytes of the response had arrived.
    Closed {
        kind: CloseKind,
        partial: bool,
    },
    Timeout,
    Malformed(String),
    Io(String),
}

/// `true` for the errors a reset produces on read or write.
pub(crate) fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A `Keep-Alive: timeout=N, max=M` response header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeepAliveHint {
    /// The header as received (all occurrences joined with ", ").
    pub raw: String,
    /// `timeout=N`, whole seconds.
    pub timeout_s: Option<u64>,
    /// `max=M`: requests the server still allows on the connection.
    pub max: Option<u64>,
}

/// One response head, and how much body followed it.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) version: u8,
    pub(crate) status: u16,
    /// Lower-case names.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body_len: usize,
    /// The body ran until the server closed (no content-length, not chunked).
    pub(crate) close_delimited: bool,
}

// === impl Response ===

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, joined with ", " (the way repeated list headers combine).
    pub(crate) fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// The comma-separated tokens of a list header, lower case.
    fn tokens(&self, name: &str) -> Vec<String> {
        self.joined(name)
            .map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn says_close(&self) -> bool {
        self.tokens("connection").iter().any(|t| t == "close")
    }

    pub(crate) fn says_keep_alive(&self) -> bool {
        self.tokens("connection").iter().any(|t| t == "keep-alive")
    }

    /// The server has told the client this connection ends after this response: by
    /// `Connection: close`, by answering HTTP/1.0 without `Connection: keep-alive`, or by
    /// a body that only the close delimits.
    pub(crate) fn announces_close(&self) -> bool {
        self.says_close() || (self.version == 0 && !self.says_keep_alive()) || self.close_delimited
    }

    pub(crate) fn version_label(&self) -> &'static str {
        if self.version == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }
    }

    /// The `Keep-Alive` header's parameters. Names are case-insensitive, values may be
    /// quoted, other parameters are ignored, and when one appears more than once the
    /// smallest value wins (the same reading as linger's `learn_keep_alive`).
    pub(crate) fn keep_alive_hint(&self) -> Option<KeepAliveHint> {
        let raw = self.joined("keep-alive")?;
        let mut hint = KeepAliveHint {
            raw: raw.clone(),
            timeout_s: None,
            max: None,
        };
        for param in raw.split(',') {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            let Ok(value) = value.trim().trim_matches('"').parse::<u64>() else {
                continue;
            };
            let slot = match name.trim().to_ascii_lowercase().as_str() {
                "timeout" => &mut hint.timeout_s,
                "max" => &mut hint.max,
                _ => continue,
            };
            *slot = Some(slot.map_or(value, |old| old.min(value)));
        }
        Some(hint)
    }
}

/// What happened while waiting for the peer to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseWait {
    /// Closed this long after the wait started, after sending `extra_bytes` unasked.
    Closed {
        kind: CloseKind,
        after: Duration,
        extra_bytes: usize,
    },
    /// Still open when the wait ended.
    Open { extra_bytes: usize },
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) sock: TcpStream,
    /// Bytes read and not yet consumed.
    pub(crate) buf: BytesMut,
}

// === impl Conn ===

impl Conn {
    pub(crate) async fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let sock = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )
            })??;
        let _ = sock.set_nodelay(true);
        Ok(Self {
            sock,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// Writes all of `bytes` within `timeout`.
    pub(crate) async fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), ReadError> {
        match tokio::time::timeout(timeout, self.sock.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if is_reset(&e) => Err(ReadError::Closed {
                kind: CloseKind::Rst,
                partial: false,
            }),
            Ok(Err(e)) => Err(ReadError::Io(e.to_string())),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Reads more bytes into the buffer before `deadline`; `Ok(0)` is the peer's FIN.
    async fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        self.buf.reserve(16 * 1024);
        match tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) if is_reset(&e) => Err(ReadError::Closed {
                kind: CloseKind::Rst,
                partial: true,
            }),
            Ok(Err(e)) => Err(ReadError::Io(e.to_string())),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Like `fill`, but a FIN becomes an error: used inside a response, where the body is
    /// not done yet.
    async fn fill_some(&mut self, deadline: Instant) -> Result<(), ReadError> {
        match self.fill(deadline).await? {
            0 => Err(ReadError::Closed {
                kind: CloseKind::Fin,
                partial: true,
            }),
            _ => Ok(()),
        }
    }

    /// Reads one final response (1xx responses are skipped), head and body, within
    /// `timeout`. `head_only` for responses to HEAD.
    pub(crate) async fn response(
        &mut self,
        head_only: bool,
        timeout: Duration,
    ) -> Result<Response, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut any_bytes = !self.buf.is_empty();
        loop {
            let (mut resp, head_len) = loop {
                let mut hs = [httparse::EMPTY_HEADER; 128];
                let mut r = httparse::Response::new(&mut hs);
                match r.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let headers = r
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).trim().to_string(),
                                )
                            })
                            .collect();
                        let resp = Response {
                            version: r.version.unwrap_or(1),
                            status: r.code.unwrap_or(0),
                            headers,
                            body_len: 0,
                            close_delimited: false,
                        };
                        break (resp, n);
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > MAX_LINE {
                            return Err(ReadError::Malformed(
                                "response head longer than 64 KiB".into(),
                            ));
                        }
                        match self.fill(deadline).await {
                            Ok(0) => {
                                return Err(ReadError::Closed {
                                    kind: CloseKind::Fin,
                                    partial: any_bytes,
                                })
                            }
                            Ok(_) => any_bytes = true,
                            Err(ReadError::Closed { kind, .. }) => {
                                return Err(ReadError::Closed {
                                    kind,
                                    partial: any_bytes,
                                })
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) => {
                        let start = String::from_utf8_lossy(&self.buf[..self.buf.len().min(40)])
                            .to_string();
                        return Err(ReadError::Malformed(format!(
                            "not an HTTP/1.x response ({e}): {start:?}"
                        )));
                    }
                }
            };
            self.buf.advance(head_len);
            if (100..200).contains(&resp.status) && resp.status != 101 {
                continue;
            }
            let chunked = resp
                .tokens("transfer-encoding")
                .last()
                .is_some_and(|t| t == "chunked");
            let no_body =
                head_only || resp.status == 204 || resp.status == 304 || resp.status == 101;
            if no_body {
            } else if chunked {
                resp.body_len = self.skip_chunked(deadline).await?;
            } else if let Some(len) = resp.header("content-length") {
                let len: usize = len
                    .trim()
                    .parse()
                    .map_err(|_| ReadError::Malformed(format!("bad content-length {len:?}")))?;
                self.skip(len, deadline).await?;
                resp.body_len = len;
            } else {
                resp.close_delimited = true;
                loop {
                    let n = self.buf.len();
                    resp.body_len += n;
                    self.buf.clear();
                    if self.fill(deadline).await? == 0 {
                        break;
                    }
                }
            }
            return Ok(resp);
        }
    }

    /// Consumes `len` body bytes.
    async fn skip(&mut self, mut len: usize, deadline: Instant) -> Result<(), ReadError> {
        loop {
            let n = len.min(self.buf.len());
            self.buf.advance(n);
            len -= n;
            if len == 0 {
                return Ok(());
            }
            self.fill_some(deadline).await?;
        }
    }

    /// Reads one CRLF-terminated line and consumes it.
    async fn line(&mut self, deadline: Instant) -> Result<String, ReadError> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..p]).to_string();
                self.buf.advance(p + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(ReadError::Malformed("line longer than 64 KiB".into()));
            }
            self.fill_some(deadline).await?;
        }
    }

    /// Consumes a chunked body and its trailers; returns the decoded length.
    async fn skip_chunked(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        let mut total = 0;
        loop {
            let line = self.line(deadline).await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| ReadError::Malformed(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                while !self.line(deadline).await?.is_empty() {}
                return Ok(total);
            }
            self.skip(size, deadline).await?;
            total += size;
            if !self.line(deadline).await?.is_empty() {
                return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
            }
        }
    }

    /// Waits up to `max` for the peer to close, counting any bytes it sends meanwhile.
    pub(crate) async fn wait_close(&mut self, max: Duration) -> Result<CloseWait, ReadError> {
        let start = Instant::now();
        let deadline = start + max;
        let mut extra_bytes = self.buf.len();
        self.buf.clear();
        loop {
            match self.fill(deadline).await {
                Ok(0) => {
                    return Ok(CloseWait::Closed {
                        kind: CloseKind::Fin,
                        after: start.elapsed(),
                        extra_bytes,
                    })
                }
                Ok(n) => {
                    extra_bytes += n;
                    self.buf.clear();
                }
                Err(ReadError::Closed { kind, .. }) => {
                    return Ok(CloseWait::Closed {
                        kind,
                        after: start.elapsed(),
                        extra_bytes,
                    })
                }
                Err(ReadError::Timeout) => return Ok(CloseWait::Open { extra_bytes }),
                Err(e) => return Err(e),
            }
        }
    }

    /// Without waiting: has the peer already closed? Bytes read here stay in the buffer.
    pub(crate) fn closed_already(&mut self) -> Option<CloseKind> {
        let mut scratch = [0u8; 1024];
        match self.sock.try_read(&mut scratch) {
            Ok(0) => Some(CloseKind::Fin),
            Ok(n) => {
                self.buf.extend_from_slice(&scratch[..n]);
                None
            }
            Err(e) if is_reset(&e) => Some(CloseKind::Rst),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> Response {
        Response {
            version: 1,
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body_len: 0,
            close_delimited: false,
        }
    }

    #[test]
    fn keep_alive_hint_takes_the_smallest_of_repeated_parameters() {
        let r = resp(&[
            ("keep-alive", "Timeout=5, MAX=100"),
            ("keep-alive", "timeout=\"3\", foo=bar"),
        ]);
        let hint = r
            .keep_alive_hint()
            .expect("a Keep-Alive header must give a hint");
        assert_eq!(hint.timeout_s, Some(3));
        assert_eq!(hint.max, Some(100));
    }

    #[test]
    fn connection_tokens_are_case_insensitive() {
        assert!(resp(&[("connection", "Upgrade, CLOSE")]).announces_close());
        assert!(!resp(&[("connection", "Keep-Alive")]).announces_close());
        let mut r10 = resp(&[]);
        r10.version = 0;
        assert!(r10.announces_close(), "HTTP/1.0 without keep-alive closes");
    }
}
