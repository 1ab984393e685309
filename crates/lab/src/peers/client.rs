//! Clients written for the lab. [`KeepAliveClient`] reuses one connection for sequential
//! requests the way most HTTP clients do: it writes the next request on the pooled
//! connection without checking it first, honours `Connection: close`, and never retries,
//! so every race it meets shows up as a failure.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the client saw for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A complete response with this status (below 500, or 5xx from the origin itself).
    Ok(u16),
    /// A complete 5xx response.
    ServerError(u16),
    /// The connection was reset before a complete response.
    Reset,
    /// The connection closed (FIN) before a complete response.
    EofBeforeResponse,
    /// A response head arrived but its body was cut short.
    Truncated,
    /// No complete response within the timeout.
    Timeout,
    ConnectFailed,
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Ok(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::ServerError(_) => "5xx",
            Outcome::Reset => "reset",
            Outcome::EofBeforeResponse => "eof",
            Outcome::Truncated => "truncated",
            Outcome::Timeout => "timeout",
            Outcome::ConnectFailed => "connect_failed",
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One reused connection, reopened only after a close or failure.
#[derive(Debug)]
pub struct KeepAliveClient {
    addr: SocketAddr,
    conn: Option<TcpStream>,
    buf: BytesMut,
    /// Close the connection instead of reusing it after this much idle time (a load
    /// balancer's own idle timeout).
    pub max_idle: Option<Duration>,
    idle_since: Option<tokio::time::Instant>,
    pub connects: u64,
    pub last: Option<Response>,
}

enum ReadErr {
    Reset,
    Eof,
    Truncated,
}

fn io_err(e: &std::io::Error) -> ReadErr {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionAborted => ReadErr::Reset,
        _ => ReadErr::Eof,
    }
}

// === impl KeepAliveClient ===

impl KeepAliveClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            conn: None,
            buf: BytesMut::with_capacity(16 * 1024),
            max_idle: None,
            idle_since: None,
            connects: 0,
            last: None,
        }
    }

    /// The local address of the open connection, if one is open.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.conn.as_ref().and_then(|c| c.local_addr().ok())
    }

    /// Sends one request and reads the response, without any retry.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Outcome {
        match tokio::time::timeout(
            timeout,
            self.request_inner(method, path, extra_headers, body),
        )
        .await
        {
            Ok(o) => o,
            Err(_) => {
                self.conn = None;
                Outcome::Timeout
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
        body: &[u8],
    ) -> Outcome {
        if let (Some(max), Some(since)) = (self.max_idle, self.idle_since) {
            if since.elapsed() > max {
                self.conn = None;
            }
        }
        self.idle_since = None;
        if self.conn.is_none() {
            match TcpStream::connect(self.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    self.conn = Some(s);
                    self.buf.clear();
                    self.connects += 1;
                }
                Err(_) => return Outcome::ConnectFailed,
            }
        }
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: lab\r\n");
        for (k, v) in extra_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let sock = self.conn.as_mut().expect("connected above");
        if let Err(e) = sock.write_all(&bytes).await {
            self.conn = None;
            return match io_err(&e) {
                ReadErr::Reset => Outcome::Reset,
                _ => Outcome::EofBeforeResponse,
            };
        }
        match read_response(sock, &mut self.buf, method == "HEAD").await {
            Ok((resp, close)) => {
                if close {
                    self.conn = None;
                } else {
                    self.idle_since = Some(tokio::time::Instant::now());
                }
                let status = resp.status;
                self.last = Some(resp);
                if status >= 500 {
                    Outcome::ServerError(status)
                } else {
                    Outcome::Ok(status)
                }
            }
            Err(e) => {
                self.conn = None;
                match e {
                    ReadErr::Reset => Outcome::Reset,
                    ReadErr::Eof => Outcome::EofBeforeResponse,
                    ReadErr::Truncated => Outcome::Truncated,
                }
            }
        }
    }
}

async fn fill(sock: &mut TcpStream, buf: &mut BytesMut) -> Result<usize, ReadErr> {
    buf.reserve(16 * 1024);
    match sock.read_buf(buf).await {
        Ok(n) => Ok(n),
        Err(e) => Err(io_err(&e)),
    }
}

/// Reads one response; returns it and whether the connection must be closed after it.
async fn read_response(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    head_only: bool,
) -> Result<(Response, bool), ReadErr> {
    loop {
        // Skip 1xx responses.
        let (status, headers, head_len, version_10) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).to_string(),
                            )
                        })
                        .collect();
                    break (r.code.unwrap_or(0), headers, n, r.version == Some(0));
                }
                Ok(httparse::Status::Partial) => {
                    if fill(sock, buf).await? == 0 {
                        return Err(ReadErr::Eof);
                    }
                }
                Err(_) => return Err(ReadErr::Truncated),
            }
        };
        buf.advance(head_len);
        if (100..200).contains(&status) {
            continue;
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let close = get("connection").is_some_and(|v| v.contains("close"))
            || (version_10 && !get("connection").is_some_and(|v| v.contains("keep-alive")));
        let mut body = Vec::new();
        let no_body = head_only || status == 204 || status == 304;
        if no_body {
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if fill(sock, buf).await.map_err(|_| ReadErr::Truncated)? == 0 {
                        return Err(ReadErr::Truncated);
                    }
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&buf[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .map_err(|_| ReadErr::Truncated)?;
                buf.advance(line_end + 2);
                if size == 0 {
                    loop {
                        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                            buf.advance(p + 2);
                            if p == 0 {
                                break;
                            }
                        } else if fill(sock, buf).await.map_err(|_| ReadErr::Truncated)? == 0 {
                            return Err(ReadErr::Truncated);
                        }
                    }
                    break;
                }
                while buf.len() < size + 2 {
                    if fill(sock, buf).await.map_err(|_| ReadErr::Truncated)? == 0 {
                        return Err(ReadErr::Truncated);
                    }
                }
                body.extend_from_slice(&buf[..size]);
                buf.advance(size + 2);
            }
        } else if let Some(len) = get("content-length").and_then(|v| v.trim().parse::<usize>().ok())
        {
            while buf.len() < len {
                if fill(sock, buf).await.map_err(|_| ReadErr::Truncated)? == 0 {
                    return Err(ReadErr::Truncated);
                }
            }
            body.extend_from_slice(&buf[..len]);
            buf.advance(len);
        } else {
            // Close-delimited.
            loop {
                match fill(sock, buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return Err(ReadErr::Truncated),
                }
            }
            body.extend_from_slice(buf);
            buf.clear();
            return Ok((
                Response {
                    status,
                    headers,
                    body,
                },
                true,
            ));
        }
        return Ok((
            Response {
                status,
                headers,
                body,
            },
            close,
        ));
    }
}

/// Gaps between requests drawn from a seed: uniform in `[center - spread, center + spread]`.
pub fn gaps(seed: u64, n: usize, center: Duration, spread: Duration) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let lo = center.saturating_sub(spread).as_micros() as u64;
    let hi = (center + spread).as_micros() as u64;
    (0..n)
        .map(|_| Duration::from_micros(rng.u64(lo..=hi)))
        .collect()
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Outcome> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|_| Outcome::ConnectFailed)?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn write_failed(e: &std::io::Error) -> Outcome {
    match io_err(e) {
        ReadErr::Reset => Outcome::Reset,
        _ => Outcome::EofBeforeResponse,
    }
}

fn read_failed(e: ReadErr) -> Outcome {
    match e {
        ReadErr::Reset => Outcome::Reset,
        ReadErr::Eof => Outcome::EofBeforeResponse,
        ReadErr::Truncated => Outcome::Truncated,
    }
}

fn judged(resp: &Response) -> Outcome {
    if resp.status >= 500 {
        Outcome::ServerError(resp.status)
    } else {
        Outcome::Ok(resp.status)
    }
}

/// A POST whose body of `bytes` goes out in `chunk`-byte pieces `every` apart; the
/// response is read only once the whole body is sent, as most clients do. A write that
/// fails ends the request (the client never reads the answer).
pub async fn slow_upload(
    addr: SocketAddr,
    bytes: u64,
    chunk: u64,
    every: Duration,
    timeout: Duration,
) -> Outcome {
    let run = async {
        let mut s = match connect(addr).await {
            Ok(s) => s,
            Err(o) => return o,
        };
        let head = format!("POST /upload HTTP/1.1\r\nhost: lab\r\ncontent-length: {bytes}\r\n\r\n");
        if let Err(e) = s.write_all(head.as_bytes()).await {
            return write_failed(&e);
        }
        let piece = vec![b'u'; chunk.max(1) as usize];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(piece.len() as u64) as usize;
            if let Err(e) = s.write_all(&piece[..n]).await {
                return write_failed(&e);
            }
            left -= n as u64;
            if left > 0 {
                tokio::time::sleep(every).await;
            }
        }
        let mut buf = BytesMut::with_capacity(16 * 1024);
        match read_response(&mut s, &mut buf, false).await {
            Ok((resp, _)) => judged(&resp),
            Err(e) => read_failed(e),
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Outcome::Timeout)
}

/// A GET in HTTP/1.0 without keep-alive, on its own connection; the outcome, and how
/// long after the request was written the connection ended (EOF), when it did.
pub async fn http10_get(addr: SocketAddr, timeout: Duration) -> (Outcome, Option<Duration>) {
    let run = async {
        let mut s = match connect(addr).await {
            Ok(s) => s,
            Err(o) => return (o, None),
        };
        if let Err(e) = s.write_all(b"GET / HTTP/1.0\r\nhost: lab\r\n\r\n").await {
            return (write_failed(&e), None);
        }
        let sent = tokio::time::Instant::now();
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let outcome = match read_response(&mut s, &mut buf, false).await {
            Ok((resp, _)) => judged(&resp),
            Err(e) => return (read_failed(e), None),
        };
        // A close-delimited body ended at EOF; otherwise wait for it.
        loop {
            buf.clear();
            match fill(&mut s, &mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return (outcome, None),
            }
        }
        (outcome, Some(sent.elapsed()))
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or((Outcome::Timeout, None))
}

/// How a client leaves a request it no longer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// FIN (shutdown of the write side), then keep reading until the end.
    HalfClose,
    /// RST (SO_LINGER 0, close).
    Reset,
}

/// What a client that left saw.
#[derive(Debug, Clone, Default)]
pub struct Left {
    /// The response's status, if its head arrived before the client left.
    pub status_before: Option<u16>,
    /// Whether anything arrived before the client left.
    pub bytes_before: u64,
    /// Bytes that arrived after the client left.
    pub bytes_after: u64,
    /// The connection ended (EOF or reset) within the bound after leaving.
    pub ended: bool,
}

/// Sends `GET path`, reads whatever arrives until `leave_at`, leaves the way `how` says,
/// then (after a half-close) counts what still arrives until the connection ends or
/// `bound` passes.
pub async fn request_then_leave(
    addr: SocketAddr,
    path: &str,
    leave_at: tokio::time::Instant,
    how: Leave,
    bound: Duration,
) -> Result<Left, Outcome> {
    let mut s = connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: lab\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| write_failed(&e))?;
    let mut left = Left::default();
    let mut before = BytesMut::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(leave_at, s.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                left.ended = true;
                break;
            }
            Ok(Ok(n)) => before.extend_from_slice(&chunk[..n]),
        }
    }
    left.bytes_before = before.len() as u64;
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    if let Ok(httparse::Status::Complete(_)) = r.parse(&before) {
        left.status_before = r.code;
    }
    if left.ended {
        return Ok(left);
    }
    match how {
        Leave::Reset => {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
            left.ended = true;
        }
        Leave::HalfClose => {
            let _ = s.shutdown().await;
            let deadline = tokio::time::Instant::now() + bound;
            loop {
                match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                    Err(_) => break,
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        left.ended = true;
                        break;
                    }
                    Ok(Ok(n)) => left.bytes_after += n as u64,
                }
            }
        }
    }
    Ok(left)
}
