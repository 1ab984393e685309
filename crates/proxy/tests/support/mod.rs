//! Loopback test support: linger in process, fake upstreams, raw-socket clients.
#![allow(dead_code)] // each test binary uses a different part of the support module

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use linger_lab::inproc::InProcess;

/// Generous outer bound for every wait in a test.
pub const OUTER: Duration = Duration::from_secs(20);

pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LINGER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A request as the fake upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

/// A hyper-based upstream that records every request head and answers with `respond`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Response<BoxBody<Bytes, hyper::Error>> + Send + Sync>;

impl Upstream {
    pub async fn start(handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        s.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            uri: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        let resp = handler(req);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// Echoes the request body back as it arrives (streaming, with backpressure).
    pub async fn echo() -> Self {
        Self::start(Arc::new(|req: Request<Incoming>| {
            Response::new(req.into_body().boxed())
        }))
        .await
    }

    /// Answers `ok\n` with the given extra response headers.
    pub async fn ok_with_headers(headers: Vec<(&'static str, &'static str)>) -> Self {
        Self::start(Arc::new(move |_req| {
            let mut r = Response::new(full("ok\n"));
            for (k, v) in &headers {
                r.headers_mut().append(*k, v.parse().unwrap());
            }
            r
        }))
        .await
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub fn full(s: &'static str) -> BoxBody<Bytes, hyper::Error> {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// A raw upstream: accepts connections and hands each to `handle`.
pub async fn raw_upstream<F, Fut>(handle: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw upstream");
    let addr = listener.local_addr().unwrap();
    let handle = Arc::new(handle);
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn((handle)(sock));
        }
    });
    (addr, task)
}

/// Reads a request head (through the blank line) from a raw socket.
pub async fn read_head(sock: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = sock.read(&mut byte).await.expect("read head");
        assert!(
            n > 0,
            "peer closed before the end of the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8(buf).expect("head is text")
}

/// How a raw read of everything until the peer closes ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
}

/// Reads until EOF or reset, returning the bytes and how it ended.
pub async fn read_to_close(sock: &mut TcpStream) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(OUTER, sock.read(&mut buf))
            .await
            .expect("peer must close in time")
        {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, End::Reset),
            Err(e) => panic!("unexpected read error: {e}"),
        }
    }
}

/// Sends raw bytes to `addr` and returns the connected socket.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect to linger");
    s.write_all(bytes).await.expect("write request");
    s
}

/// Parses one response (head + content-length or chunked body) from a raw socket.
pub async fn read_response(sock: &mut TcpStream) -> (String, Vec<u8>) {
    let head = read_head(sock).await;
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(cl) = lower.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    }) {
        body.resize(cl, 0);
        sock.read_exact(&mut body).await.expect("read body");
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                sock.read_exact(&mut b).await.expect("chunk size");
                line.push(b[0]);
            }
            let size =
                usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            sock.read_exact(&mut chunk).await.expect("chunk");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    (head, body)
}

/// What linger says about a race: the termination code on an access-log line, and each
/// connection close reason (side, reason) counted in `/metrics`. Closes are counted when a
/// connection's task ends, so this waits a little for them.
pub async fn explained(linger: &InProcess, termination: &str, closes: &[(&str, &str)]) {
    let code = format!("\"termination\":\"{termination}\"");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logged = linger.log_lines().iter().any(|l| l.contains(&code));
        let metrics = linger.server.metrics.encode();
        let missing: Vec<_> = closes
            .iter()
            .filter(|(side, reason)| {
                !metrics.lines().any(|l| {
                    l.starts_with("linger_connection_closes_total{")
                        && l.contains(&format!("side=\"{side}\""))
                        && l.contains(&format!("reason=\"{reason}\""))
                        && !l.ends_with(" 0")
                })
            })
            .collect();
        if logged && missing.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let closes: Vec<_> = metrics
                .lines()
                .filter(|l| l.starts_with("linger_connection_closes_total{"))
                .collect();
            panic!(
                "termination {termination} logged: {logged}; closes missing: {missing:?}\n\
                 closes counted: {closes:#?}\nlog: {:#?}",
                linger.log_lines()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 5 s) for the access-log line whose termination is `termination`.
pub async fn logged(linger: &InProcess, termination: &str) -> String {
    let code = format!("\"termination\":\"{termination}\"");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = linger.log_lines().into_iter().find(|l| l.contains(&code)) {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no access-log line with {termination}: {:#?}",
            linger.log_lines()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
