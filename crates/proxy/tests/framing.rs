//! R12: ambiguous request framing gets a 400 and a closed connection, and puts zero bytes
//! on any upstream.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

/// An upstream that counts every byte it receives.
async fn counting_upstream() -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    let (addr, task) = raw_upstream(move |mut sock| {
        let r = r.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                r.fetch_add(n, Ordering::SeqCst);
            }
        }
    })
    .await;
    (addr, received, task)
}

async fn refused(parts: &[&[u8]]) {
    let (addr, received, _t) = counting_upstream().await;
    let linger = InProcess::start(&[addr], |_| {}).unwrap();
    let mut s = tokio::net::TcpStream::connect(linger.addr).await.unwrap();
    for p in parts {
        let _ = s.write_all(p).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (bytes, end) = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_eq!(end, End::Eof, "closed cleanly");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "the upstream received bytes"
    );
    // The client closing ends linger's lingering close at once.
    drop(s);
    explained(
        &linger,
        "linger.request_head.bad_request",
        &[("downstream", "bad_request")],
    )
    .await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    trace_init();
    refused(&[b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]).await;
    refused(&[b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]).await;
}

#[tokio::test]
async fn duplicate_content_length_is_refused_even_when_equal() {
    trace_init();
    refused(&[
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    ])
    .await;
    refused(&[
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    ])
    .await;
}

#[tokio::test]
async fn invalid_content_length_is_refused() {
    trace_init();
    refused(&[b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5, 5\r\n\r\nhello"]).await;
    refused(&[b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: -5\r\n\r\nhello"]).await;
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_refused() {
    trace_init();
    refused(&[b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\nhello"]).await;
    refused(&[b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, gzip\r\n\r\nhello"])
        .await;
}

#[tokio::test]
async fn invalid_chunk_size_is_refused_in_the_same_packet() {
    trace_init();
    refused(&[
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ])
    .await;
}

#[tokio::test]
async fn invalid_chunk_size_is_refused_in_a_later_packet() {
    trace_init();
    // The head is valid and arrives alone; the broken chunk size comes later. linger waits
    // for the first body bytes before it touches an upstream.
    refused(&[
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n",
        b"zz\r\nhello\r\n0\r\n\r\n",
    ])
    .await;
}

#[tokio::test]
async fn obs_fold_is_refused() {
    trace_init();
    refused(&[b"POST / HTTP/1.1\r\nhost: a\r\nx-folded: a\r\n b\r\ncontent-length: 0\r\n\r\n"])
        .await;
}

#[tokio::test]
async fn valid_chunked_request_after_the_guard_reaches_upstream() {
    trace_init();
    // The guard follows pipelined messages exactly: a valid chunked request with trailers
    // followed by a plain GET both pass.
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nx-t: 1\r\n\r\nGET /2 HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    let (h1, b1) = read_response(&mut s).await;
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert_eq!(b1, b"abc");
    let (h2, _) = read_response(&mut s).await;
    assert!(h2.starts_with("HTTP/1.1 200"), "{h2}");
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn targets_not_in_a_form_their_method_allows_are_refused() {
    trace_init();
    refused(&[b"GET ! HTTP/1.1\r\nhost: a\r\n\r\n"]).await;
    refused(&[b"GET example.com:80 HTTP/1.1\r\nhost: a\r\n\r\n"]).await;
    refused(&[b"GET /\xce\xb4\xc2\xb6/t?q=1#narf HTTP/1.1\r\nhost: a\r\n\r\n"]).await;
}

#[tokio::test]
async fn names_that_fold_into_framing_headers_are_refused() {
    trace_init();
    refused(&[b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer_encoding: chunked\r\n\r\nhello"]).await;
}

#[tokio::test]
async fn a_request_line_split_anywhere_with_a_newer_minor_version_is_served_as_1_1() {
    trace_init();
    let up = Upstream::ok_with_headers(vec![]).await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let line = b"GET /v HTTP/1.2\r\nhost: a\r\n\r\n";
    for split in [3, 12, 14, 15, 16] {
        let mut s = tokio::net::TcpStream::connect(linger.addr).await.unwrap();
        s.write_all(&line[..split]).await.unwrap();
        s.flush().await.unwrap();
        // The rest arrives as a separate read.
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(&line[split..]).await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "split at {split}: {head}");
        assert_eq!(body, b"ok\n");
    }
    assert_eq!(up.seen().len(), 5);
}

#[tokio::test]
async fn a_body_on_get_is_forwarded_and_neither_connection_is_reused() {
    trace_init();
    let up = Upstream::ok_with_headers(vec![]).await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        b"GET /g HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    let (bytes, end) = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert_eq!(end, End::Eof);
    // The client closing ends linger's lingering close at once.
    drop(s);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the upstream was told this connection ends"
    );
    explained(
        &linger,
        "ok",
        &[
            ("downstream", "ambiguous_request"),
            ("upstream", "ambiguous_request"),
        ],
    )
    .await;
}
