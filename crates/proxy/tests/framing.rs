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
