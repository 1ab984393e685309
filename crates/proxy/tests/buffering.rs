//! Request buffering (`route.request_buffer_bytes`): a body with a `Content-Length` up to
//! the route's limit is read whole before an upstream is chosen, so a client that trickles
//! its upload holds no upstream connection; larger bodies, chunked bodies and
//! `Expect: 100-continue` stream. A buffered body that stalls gets 408 after the
//! listener's `request_body_timeout`, and the upstream never hears of it.

mod support;

use std::time::Duration;

use linger_lab::corpus::RecordingOrigin;
use linger_proxy::config::{ConfigDuration, File, FileRoute};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn route(buffer: usize) -> impl FnOnce(&mut File) {
    move |f: &mut File| {
        f.routes.push(FileRoute {
            listener: String::new(),
            host: String::new(),
            path_prefix: "/".into(),
            cluster: "default".into(),
            request_buffer_bytes: buffer,
        });
        f.listeners[0].request_body_timeout = ConfigDuration::from_millis(300);
    }
}

/// Sends `head`, then `body` in `parts` writes 50 ms apart; returns after the last write,
/// with what the origin had seen before that last write.
async fn trickle(
    addr: std::net::SocketAddr,
    origin: &RecordingOrigin,
    head: &str,
    body: &[u8],
    parts: usize,
) -> (TcpStream, usize, usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = body.len().div_ceil(parts);
    let mut before_last = (0, 0);
    for (i, piece) in body.chunks(chunk).enumerate() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if i == body.len().div_ceil(chunk) - 1 {
            let v = origin.peek();
            before_last = (v.accepted, v.bytes);
        }
        s.write_all(piece).await.unwrap();
    }
    (s, before_last.0, before_last.1)
}

#[tokio::test]
async fn a_slow_upload_within_the_limit_holds_no_upstream_connection() {
    trace_init();
    let origin = RecordingOrigin::start().await.unwrap();
    let linger = InProcess::start(&[origin.addr], route(1024)).unwrap();
    let body = vec![b'b'; 1000];
    let head = "POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\n";
    let (mut s, accepted, bytes) = trickle(linger.addr, &origin, head, &body, 5).await;
    assert_eq!(
        (accepted, bytes),
        (0, 0),
        "the origin heard of the upload before its end"
    );
    let (head, answer) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(answer, b"ok\n");
    let seen = origin.peek();
    assert_eq!(seen.requests.len(), 1);
    assert_eq!(seen.requests[0].body, body, "the whole body, once");
}

#[tokio::test]
async fn a_body_over_the_limit_or_with_the_limit_off_streams() {
    trace_init();
    let body = vec![b'b'; 1000];
    let head = "POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\n";
    for limit in [0, 999] {
        let origin = RecordingOrigin::start().await.unwrap();
        let linger = InProcess::start(&[origin.addr], route(limit)).unwrap();
        let (mut s, accepted, bytes) = trickle(linger.addr, &origin, head, &body, 5).await;
        assert_eq!(
            accepted, 1,
            "limit {limit}: the upload streams on one connection"
        );
        assert!(
            bytes > 0 && bytes < 1000 + head.len() + 200,
            "limit {limit}: {bytes} bytes upstream before the last write"
        );
        let (h, _) = read_response(&mut s).await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(origin.peek().requests[0].body, body);
    }
}

#[tokio::test]
async fn chunked_bodies_and_expect_continue_stream() {
    trace_init();
    let origin = RecordingOrigin::start().await.unwrap();
    let linger = InProcess::start(&[origin.addr], route(64 * 1024)).unwrap();
    // Chunked: a body of unknown length may be a long-lived stream.
    let mut s = TcpStream::connect(linger.addr).await.unwrap();
    s.write_all(b"POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    let v = origin
        .wait_for(OUTER, |v| v.requests.is_empty() && v.bytes > 0)
        .await;
    assert!(v.bytes > 0, "a chunked body streams");
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let (h, _) = read_response(&mut s).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    // Expect: 100-continue: the origin decides before the body is sent.
    origin.take();
    let mut s = TcpStream::connect(linger.addr).await.unwrap();
    s.write_all(
        b"POST /e HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let v = origin.wait_for(OUTER, |v| v.bytes > 0).await;
    assert!(v.bytes > 0, "the head went up before the body");
    s.write_all(b"hello").await.unwrap();
    let (h, _) = read_response(&mut s).await;
    assert!(
        h.starts_with("HTTP/1.1 200") || h.starts_with("HTTP/1.1 100"),
        "{h}"
    );
}

#[tokio::test]
async fn a_buffered_body_that_stalls_gets_408_and_never_reaches_the_upstream() {
    trace_init();
    let origin = RecordingOrigin::start().await.unwrap();
    let linger = InProcess::start(&[origin.addr], route(64 * 1024)).unwrap();
    let mut s = TcpStream::connect(linger.addr).await.unwrap();
    s.write_all(b"POST /s HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nonly part of it")
        .await
        .unwrap();
    let (bytes, end) = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert_eq!(end, End::Eof);
    drop(s);
    let v = origin.peek();
    assert_eq!(
        (v.accepted, v.bytes),
        (0, 0),
        "the upstream heard of the stalled request"
    );
    explained(
        &linger,
        "downstream.request_body.timeout",
        &[("downstream", "request_body_timeout")],
    )
    .await;
}
