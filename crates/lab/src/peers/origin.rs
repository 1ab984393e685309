//! An HTTP/1.1 origin written for the lab: every behaviour that makes a race happen is a
//! setting (close idle connections at T, with or without a `Keep-Alive` hint, with the FIN
//! arriving late; reset instead of close; close right after a response; answer before
//! reading the body; stall; stream forever without reading; reset mid-body; shut down like
//! an app server being deployed). It counts connections, requests, copies of each request,
//! open streams, and when its peers closed.

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
    /// With `idle_close`: the FIN reaches the peer this long after the origin stopped
    /// serving the connection, and a request that arrives in between is answered by the
    /// kernel's RST. This is the window in which R1 strikes: on a real network it is the
    /// one-way delay plus the peer's reaction time; the lab widens it to make it visible.
    pub fin_delay: Option<Duration>,
    /// Say `Connection: keep-alive` on every response, also on the last one before a close
    /// (an application that copies the header, R3).
    pub claim_keep_alive: bool,
    /// Answer `HTTP/1.0 200` without a length, the body delimited by the close (R8).
    pub close_delimited: bool,
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
    /// Stream a chunk every interval, forever, never reading from the peer: a half-close
    /// goes unnoticed, only a failed write ends the stream (R5).
    pub stream_every: Option<Duration>,
    /// Send the head and this many body bytes of a larger body, then RST (R11).
    pub reset_mid_body: Option<usize>,
    /// Use chunked framing for responses (a request for `/chunked` always gets it).
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
    /// When each connection whose peer closed or reset it found out.
    peer_closes: Mutex<Vec<Instant>>,
    /// The peer address of every accepted connection, in order.
    peer_addrs: Mutex<Vec<SocketAddr>>,
    /// Streams being written now.
    streams: AtomicU64,
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

    /// How long after `since` each peer close was noticed, for closes noticed after it.
    pub fn peer_closes_after(&self, since: Instant) -> Vec<Duration> {
        self.peer_closes
            .lock()
            .expect("closes lock")
            .iter()
            .filter(|&&t| t >= since)
            .map(|&t| t - since)
            .collect()
    }

    /// Endless streams still being written.
    pub fn open_streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// The peer address of every accepted connection, in accept order: a test finds the
    /// pooled connection whose packets it then drops (R6).
    pub fn peer_addrs(&self) -> Vec<SocketAddr> {
        self.peer_addrs.lock().expect("peers lock").clone()
    }

    fn record_peer_close(&self) {
        self.peer_closes
            .lock()
            .expect("closes lock")
            .push(Instant::now());
    }
}

/// Counts a stream as open while it lives.
struct StreamGuard(Arc<OriginStats>);

impl StreamGuard {
    fn new(stats: &Arc<OriginStats>) -> Self {
        stats.streams.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running origin; dropping the handle stops it.
#[derive(Debug)]
pub struct Origin {
    pub addr: SocketAddr,
    pub stats: Arc<OriginStats>,
    stop: watch::Sender<bool>,
    drain: watch::Sender<bool>,
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
        let (stop, stop_rx) = watch::channel(false);
        let (drain, drain_rx) = watch::channel(false);
        let cfg = Arc::new(cfg);
        let st = stats.clone();
        let mut draining = drain_rx.clone();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = drained(&mut draining) => {
                        // Stop accepting: the listener closes, new connections are refused.
                        drop(listener);
                        std::future::pending::<()>().await;
                        unreachable!("pending never completes")
                    }
                };
                let Ok((sock, peer)) = accepted else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                st.peer_addrs.lock().expect("peers lock").push(peer);
                st.connections.fetch_add(1, Ordering::Relaxed);
                let cfg = cfg.clone();
                let st = st.clone();
                let mut stop = stop_rx.clone();
                let drain = drain_rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_conn(sock, cfg, st, drain) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            stats,
            stop,
            drain,
            task,
        }
    }

    /// Shuts down the way most application servers do when a deploy stops them: stop
    /// accepting, close idle keep-alive connections at once (FIN, with nothing announced),
    /// finish requests in flight and close their connections after the response (R10).
    pub fn drain(&self) {
        let _ = self.drain.send(true);
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
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
                path: req.path.unwrap_or("/").to_owned(),
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

/// Waits for the origin to start draining.
async fn drained(drain: &mut watch::Receiver<bool>) {
    let started = drain.wait_for(|d| *d).await.is_ok();
    if !started {
        // The origin is gone; its connections stop with it.
        std::future::pending::<()>().await;
    }
}

/// The idle close at `idle`: with a `fin_delay`, a request that arrives before the FIN
/// reached the peer is reset. Returns how the wait for the next request head ended.
async fn idle_read(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    cfg: &OriginConfig,
    drain: &mut watch::Receiver<bool>,
) -> Option<std::io::Result<usize>> {
    let idle = cfg.idle_close.unwrap_or(Duration::MAX);
    tokio::select! {
        r = tokio::time::timeout(idle, read_more(sock, buf)) => match r {
            Ok(r) => Some(r),
            Err(_) => {
                if let Some(d) = cfg.fin_delay {
                    // Closed for the origin; the peer does not know yet.
                    if let Ok(Ok(())) = tokio::time::timeout(d, sock.readable()).await {
                        set_rst(sock);
                        return None;
                    }
                }
                if cfg.idle_close_style == CloseStyle::Rst {
                    set_rst(sock);
                }
                None
            }
        },
        _ = drained(drain) => None,
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    cfg: Arc<OriginConfig>,
    stats: Arc<OriginStats>,
    mut drain: watch::Receiver<bool>,
) {
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
            let read = if buf.is_empty() {
                match idle_read(&mut sock, &mut buf, &cfg, &mut drain).await {
                    Some(r) => r,
                    None => return,
                }
            } else {
                read_more(&mut sock, &mut buf).await
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
        } else if cfg.claim_keep_alive {
            extra.push_str("connection: keep-alive\r\n");
        }

        if let Some(every) = cfg.stream_every {
            let h = format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{extra}\r\n");
            if sock.write_all(h.as_bytes()).await.is_err() {
                stats.record_peer_close();
                return;
            }
            let _open = StreamGuard::new(&stats);
            let mut n = 0u64;
            loop {
                let event = format!("data: {n}\n\n");
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if sock.write_all(chunk.as_bytes()).await.is_err() {
                    stats.record_peer_close();
                    return;
                }
                n += 1;
                // Like R5's SSE server behind an F5: it never reads, so a FIN goes unnoticed.
                tokio::time::sleep(every).await;
            }
        }

        let chunked = cfg.chunked || head.path == "/chunked";
        let payload: Vec<u8> = if head.method == "HEAD" {
            Vec::new()
        } else if cfg.echo {
            body
        } else {
            b"ok\n".to_vec()
        };
        if let Some(n) = cfg.reset_mid_body {
            let total = payload.len().max(n * 2 + 1);
            let h = if chunked {
                format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{extra}\r\n")
            } else {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n{extra}\r\n")
            };
            let mut out = h.into_bytes();
            let part = vec![b'x'; n];
            if chunked {
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
        if cfg.close_delimited {
            let mut out = b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n".to_vec();
            out.extend_from_slice(&payload);
            let _ = sock.write_all(&out).await;
            return;
        }
        let mut out = Vec::with_capacity(payload.len() + 128);
        if chunked {
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
        if head.close || last || cfg.close_after_response || *drain.borrow() {
            return;
        }
    }
}
