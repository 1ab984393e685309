//! The recording origin: accepts the proxy's connections, parses what arrives as HTTP/1.1
//! requests (leniently: it must see what a proxy forwarded, not judge it), answers each
//! with `200 ok`, and records every byte, every request and every close by connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A request as the origin parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// Which origin connection carried it (0, 1, ... in accept order).
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
struct Record {
    bytes: usize,
    requests: Vec<SeenRequest>,
    /// Connections the proxy closed (EOF or reset), by number.
    closed: Vec<usize>,
    /// Bytes that did not parse as a request.
    unparsed: usize,
    conns: usize,
}

/// A running recording origin; dropping it stops it.
#[derive(Debug)]
pub struct RecordingOrigin {
    pub addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for RecordingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the origin saw since the last [`RecordingOrigin::take`].
#[derive(Debug, Clone, Default)]
pub struct OriginView {
    /// Connections accepted since the origin started.
    pub accepted: usize,
    pub bytes: usize,
    pub requests: Vec<SeenRequest>,
    pub closed: Vec<usize>,
    pub unparsed: usize,
}

impl OriginView {
    /// Whether every connection that carried a request was closed by the proxy.
    pub fn request_conns_closed(&self) -> bool {
        self.requests.iter().all(|r| self.closed.contains(&r.conn))
    }
}

// === impl RecordingOrigin ===

impl RecordingOrigin {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let record = Arc::new(Mutex::new(Record::default()));
        let changed = Arc::new(Notify::new());
        let (r, c) = (record.clone(), changed.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let conn = {
                    let mut rec = r.lock().expect("origin record");
                    rec.conns += 1;
                    rec.conns - 1
                };
                c.notify_waiters();
                tokio::spawn(serve(sock, conn, r.clone(), c.clone()));
            }
        });
        Ok(Self {
            addr,
            record,
            changed,
            task,
        })
    }

    /// What arrived since the last call, and starts a new record. Connections stay open.
    pub fn take(&self) -> OriginView {
        let mut rec = self.record.lock().expect("origin record");
        OriginView {
            accepted: rec.conns,
            bytes: std::mem::take(&mut rec.bytes),
            requests: std::mem::take(&mut rec.requests),
            closed: std::mem::take(&mut rec.closed),
            unparsed: std::mem::take(&mut rec.unparsed),
        }
    }

    /// What arrived so far, without starting a new record.
    pub fn peek(&self) -> OriginView {
        let rec = self.record.lock().expect("origin record");
        OriginView {
            accepted: rec.conns,
            bytes: rec.bytes,
            requests: rec.requests.clone(),
            closed: rec.closed.clone(),
            unparsed: rec.unparsed,
        }
    }

    /// Waits until `done` holds for what arrived so far, or `limit` passes.
    pub async fn wait_for(
        &self,
        limit: std::time::Duration,
        done: impl Fn(&OriginView) -> bool,
    ) -> OriginView {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            let view = self.peek();
            if done(&view) {
                return view;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.peek();
            }
        }
    }
}

async fn serve(mut sock: TcpStream, conn: usize, record: Arc<Mutex<Record>>, changed: Arc<Notify>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                record.lock().expect("origin record").closed.push(conn);
                changed.notify_waiters();
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        record.lock().expect("origin record").bytes += n;
        changed.notify_waiters();
        loop {
            match parse_request(&buf, conn) {
                Parsed::Partial => break,
                Parsed::Invalid => {
                    record.lock().expect("origin record").unparsed += buf.len();
                    changed.notify_waiters();
                    return;
                }
                Parsed::Complete(req, used) => {
                    buf.drain(..used);
                    let head = req.method == "HEAD";
                    record.lock().expect("origin record").requests.push(req);
                    changed.notify_waiters();
                    let answer: &[u8] = if head {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
                    };
                    if sock.write_all(answer).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

enum Parsed {
    Partial,
    Invalid,
    Complete(SeenRequest, usize),
}

/// One request from the front of `buf`: its head, then a Content-Length or chunked body.
fn parse_request(buf: &[u8], conn: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match httparse::ParserConfig::default()
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .parse_request(&mut req, buf)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
    };
    let rest = &buf[head_len..];
    let (body, used) = if find("transfer-encoding").is_some_and(|t| t.ends_with("chunked")) {
        match dechunk(rest) {
            Some(Some(b)) => b,
            Some(None) => return Parsed::Partial,
            None => return Parsed::Invalid,
        }
    } else if let Some(cl) = find("content-length") {
        let Ok(n) = cl.parse::<usize>() else {
            return Parsed::Invalid;
        };
        if rest.len() < n {
            return Parsed::Partial;
        }
        (rest[..n].to_vec(), n)
    } else {
        (Vec::new(), 0)
    };
    Parsed::Complete(
        SeenRequest {
            conn,
            method: req.method.unwrap_or_default().to_owned(),
            target: req.path.unwrap_or_default().to_owned(),
            headers,
            body,
        },
        head_len + used,
    )
}

/// A chunked body: `None` when invalid, `Some(None)` when incomplete, else the data and
/// the bytes it took (trailers included).
#[allow(clippy::option_option)]
pub(super) fn dechunk(mut rest: &[u8]) -> Option<Option<(Vec<u8>, usize)>> {
    let total = rest.len();
    let mut data = Vec::new();
    loop {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Some(None);
        };
        let line = std::str::from_utf8(&rest[..nl]).ok()?;
        let size_str = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_str, 16).ok()?;
        rest = &rest[nl + 1..];
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    return Some(None);
                };
                let empty = rest[..nl].iter().all(|&b| b == b'\r');
                rest = &rest[nl + 1..];
                if empty {
                    return Some(Some((data, total - rest.len())));
                }
            }
        }
        if rest.len() < size + 2 {
            return Some(None);
        }
        data.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))?;
    }
}
