//! An HTTP/1.1 origin written for the lab: every behaviour that makes a race happen is a
//! setting (close idle connections at T, with or without a `Keep-Alive` hint; reset instead
//! of close; close right after a response; answer before reading the body; stall; stream
//! forever; reset mid-body). It counts connections, requests and copies of each request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How an origin closes a connection it is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CloseStyle {
    /// `close()`: FIN; later bytes from the peer get RST from the kernel.
    #[default]
    Fin,
    /// SO_LINGER 0: RST at once.
    Rst,
}

/// What the origin does.
#[derive(Debug, Clone, Default)]
pub struct OriginConfig {
    /// Close a keep-alive connection idle this long.
    pub idle_close: Option<Duration>,
    pub idle_close_style: CloseStyle,
    /// Send `Keep-Alive: timeout=N` (whole seconds) on every response.
    pub keep_alive_hint: Option<u64>,
    /// Close right after each response without saying `Connection: close` (R9).
    pub close_after_response: bool,
    /// Serve at most this many requests per connection, then close.
    pub max_requests: Option<u64>,
    /// With `max_requests`: say `Connection: close` on the last response.
    pub announce_last: bool,
    /// Do not close idle connections; instead reset a connection when a request arrives on
    /// it after it was idle this long (a server whose socket is already gone, R1).
    pub late_request_reset: Option<Duration>,
    /// Answer this status as soon as the head arrives, without reading the body, then
    /// close (R4).
    pub early_status: Option<u16>,
    /// After an early response: read and discard the body before closing (a graceful
    /// server), instead of closing with unread bytes (the kernel then sends RST).
    pub early_drain: bool,
    /// Wait this long before answering (R7).
    pub think: Option<Duration>,
    /// Never answer (R6 and timeouts).
    pub stall: bool,
    /// Stream a chunk every interval, forever (R5).
    pub stream_every: Option<Duration>,
    /// Send the head and this many body bytes of a larger body, then RST (R11).
    pub reset_mid_body: Option<usize>,
    /// Use chunked framing for responses.
    pub chunked: bool,
    /// Echo the request body (otherwise `ok\n`).
    pub echo: bool,
}

/// What the origin saw.
#[derive(Debug, Default)]
pub struct OriginStats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Copies received per `x-request-id`.
    copies: Mutex<HashMap<String, u32>>,
    /// Connections whose peer closed or reset them, and when (since the origin started).
    peer_closes: Mutex<Vec<Duration>>,
    /// The peer address of every accepted connection, in order.
    peer_addrs: Mutex<Vec<SocketAddr>>,
    started: Mutex<Option<Instant>>,
}

// === impl OriginStats ===

impl OriginStats {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Request ids that arrived more than once.
    pub fn duplicates(&self) -> u64 {
        self.copies
            .lock()
            .expect("copies lock")
            .values()
            .filter(|&&n| n > 1)
            .map(|&n| u64::from(n - 1))
            .sum()
    }

    pub fn copies_of(&self, id: &str) -> u32 {
        self.copies
            .lock()
            .expect("copies lock")
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    pub fn peer_closes(&self) -> usize {
        self.peer_closes.lock().expect("closes lock").len()
    }

    /// The peer address of every accepted connection, in accept order: a test finds the
    /// pooled connection whose packets it then drops (R6).
    pub fn peer_addrs(&self) -> Vec<SocketAddr> {
        self.peer_addrs.lock().expect("peers lock").clone()
    }

    fn record_peer_close(&self) {
        let started = self
            .started
            .lock()
            .expect("started lock")
            .unwrap_or_else(Instant::now);
        self.peer_closes
            .lock()
            .expect("closes lock")
            .push(started.elapsed());
    }
}

/// A running origin; dropping the handle stops it.
#[derive(Debug)]
pub struct Origin {
    pub addr: SocketAddr,
    pub stats: Arc<OriginStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

// === impl Origin ===

impl Origin {
    /// Binds 127.0.0.1:0 and serves.
    pub async fn start(cfg: OriginConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(Self::serve(listener, cfg))
    }

    pub fn serve(listener: TcpListener, cfg: OriginConfig) -> Self {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let stats = Arc::new(OriginStats::default());
        *stats.started.lock().expect("started lock") = Some(Instant::now());
        let (stop, stop_rx) = watch::channel(false);
        let cfg = Arc::new(cfg);
        let st = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, peer)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                st.peer_addrs.lock().expect("peers lock").push(peer);
                st.connections.fetch_add(1, Ordering::Relaxed);
                let cfg = cfg.clone();
                let st = st.clone();
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_conn(sock, cfg, st) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            stats,
            stop,
            task,
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    id: Option<String>,
    content_length: usize,
    chunked: bool,
    close: bool,
    expect_continue: bool,
}

fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let mut head = Head {
                method: req.method.unwrap_or("GET").to_owned(),
                id: None,
                content_length: 0,
                chunked: false,
                close: req.version == Some(0),
                expect_continue: false,
            };
            for h in req.headers.iter() {
                let v = String::from_utf8_lossy(h.value).to_string();
                match h.name.to_ascii_lowercase().as_str() {
                    "content-length" => head.content_length = v.trim().parse().unwrap_or(0),
                    "transfer-encoding" => {
                        head.chunked = v.to_ascii_lowercase().contains("chunked")
                    }
                    "x-request-id" => head.id = Some(v),
                    "connection" => {
                        let v = v.to_ascii_lowercase();
                        if v.contains("close") {
                            head.close = true;
                        }
                        if v.contains("keep-alive") {
                            head.close = false;
                        }
                    }
                    "expect" => head.expect_continue = v.eq_ignore_ascii_case("100-continue"),
                    _ => {}
                }
            }
            Ok(Some((head, n)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(16 * 1024);
    sock.read_buf(buf).await
}

/// Reads a chunked body out of `buf` (reading more as needed); returns the decoded bytes.
async fn read_chunked(sock: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            if read_more(sock, buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        buf.advance(line_end + 2);
        if size == 0 {
            // Trailers until an empty line.
            loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    let empty = p == 0;
                    buf.advance(p + 2);
                    if empty {
                        return Ok(out);
                    }
                } else if read_more(sock, buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        while buf.len() < size + 2 {
            if read_more(sock, buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        out.extend_from_slice(&buf[..size]);
        buf.advance(size + 2);
    }
}

fn set_rst(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

async fn serve_conn(mut sock: TcpStream, cfg: Arc<OriginConfig>, stats: Arc<OriginStats>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut served = 0u64;
    let mut last_response_at: Option<Instant> = None;
    loop {
        // Wait for a request head, closing when idle too long.
        let head = loop {
            match parse_head(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(_) => {
                    let _ = sock
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
            let read = match (cfg.idle_close, buf.is_empty()) {
                (Some(t), true) => {
                    match tokio::time::timeout(t, read_more(&mut sock, &mut buf)).await {
                        Ok(r) => r,
                        Err(_) => {
                            if cfg.idle_close_style == CloseStyle::Rst {
                                set_rst(&sock);
                            }
                            return;
                        }
                    }
                }
                _ => read_more(&mut sock, &mut buf).await,
            };
            match read {
                Ok(0) | Err(_) => {
                    stats.record_peer_close();
                    return;
                }
                Ok(_) => {}
            }
        };
        let (head, head_len) = head;
        if let Some(t) = cfg.late_request_reset {
            if served > 0 && last_response_at.is_some_and(|at| at.elapsed() >= t) {
                set_rst(&sock);
                return;
            }
        }
        buf.advance(head_len);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        served += 1;
        if let Some(id) = &head.id {
            *stats
                .copies
                .lock()
                .expect("copies lock")
                .entry(id.clone())
                .or_insert(0) += 1;
        }

        if let Some(status) = cfg.early_status {
            let body = format!("{status} early\n");
            let resp = format!(
                "HTTP/1.1 {status} Early\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            if cfg.early_drain {
                let _ = sock.shutdown().await;
                let mut scratch = vec![0u8; 64 * 1024];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(5), sock.read(&mut scratch)).await
                {
                    if n == 0 {
                        break;
                    }
                }
            }
            // Otherwise close() with the request body unread: the kernel sends RST (R4).
            return;
        }
        if head.expect_continue {
            let _ = sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }

        // Read the body.
        let body = if head.chunked {
            match read_chunked(&mut sock, &mut buf).await {
                Ok(b) => b,
                Err(_) => return,
            }
        } else {
            while buf.len() < head.content_length {
                match read_more(&mut sock, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            let b = buf[..head.content_length].to_vec();
            buf.advance(head.content_length);
            b
        };

        if cfg.stall {
            // Hold the connection and never answer; notice when the peer goes away.
            let mut scratch = [0u8; 1024];
            loop {
                match sock.read(&mut scratch).await {
                    Ok(0) | Err(_) => {
                        stats.record_peer_close();
                        return;
                    }
                    Ok(_) => {}
                }
            }
        }
        if let Some(t) = cfg.think {
            // Think, but notice a peer that goes away meanwhile (R7).
            let mut scratch = [0u8; 1024];
            let gone = tokio::time::timeout(t, async {
                loop {
                    match sock.read(&mut scratch).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            if gone.is_ok() {
                stats.record_peer_close();
                return;
            }
        }

        let last = cfg.max_requests.is_some_and(|m| served >= m);
        let mut extra = String::new();
        if let Some(n) = cfg.keep_alive_hint {
            extra.push_str(&format!("keep-alive: timeout={n}\r\n"));
        }
        if head.close || (last && cfg.announce_last) {
            extra.push_str("connection: close\r\n");
        }

        if let Some(every) = cfg.stream_every {
            let h = format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{extra}\r\n");
            if sock.write_all(h.as_bytes()).await.is_err() {
                stats.record_peer_close();
                return;
            }
            let mut n = 0u64;
            loop {
                let event = format!("data: {n}\n\n");
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if sock.write_all(chunk.as_bytes()).await.is_err() {
                    stats.record_peer_close();
                    return;
                }
                n += 1;
                let mut scratch = [0u8; 1024];
                match tokio::time::timeout(every, sock.read(&mut scratch)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        stats.record_peer_close();
                        return;
                    }
                    _ => {}
                }
            }
        }

        let payload: Vec<u8> = if head.method == "HEAD" {
            Vec::new()
        } else if cfg.echo {
            body
        } else {
            b"ok\n".to_vec()
        };
        if let Some(n) = cfg.reset_mid_body {
            let total = payload.len().max(n * 2 + 1);
            let h = if cfg.chunked {
                format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{extra}\r\n")
            } else {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n{extra}\r\n")
            };
            let mut out = h.into_bytes();
            let part = vec![b'x'; n];
            if cfg.chunked {
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&part);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&part);
            }
            let _ = sock.write_all(&out).await;
            let _ = sock.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            set_rst(&sock);
            return;
        }
        let mut out = Vec::with_capacity(payload.len() + 128);
        if cfg.chunked {
            out.extend_from_slice(
                format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{extra}\r\n").as_bytes(),
            );
            if !payload.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(&payload);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n",
                    payload.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&payload);
        }
        if sock.write_all(&out).await.is_err() {
            stats.record_peer_close();
            return;
        }
        last_response_at = Some(Instant::now());
        if head.close || last || cfg.close_after_response {
            return;
        }
    }
}
