//! Forwarding on loopback: every framing in both directions, streaming with backpressure,
//! pipelining, HTTP/1.0, Expect: 100-continue and trailers.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use linger_proxy::config::ConfigDuration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[tokio::test]
async fn get_and_content_length_post_are_forwarded() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        b"POST /echo?x=1 HTTP/1.1\r\nhost: a.test\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello");
    s.write_all(b"GET /second HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.is_empty());
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/echo?x=1");
    assert_eq!(
        seen[0].headers["host"], "a.test",
        "Host is preserved by default"
    );
}

#[tokio::test]
async fn chunked_request_and_chunked_response_are_forwarded() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let (head, body) = read_response(&mut s).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(body, b"hello world");
}

#[tokio::test]
async fn close_delimited_upstream_response_reaches_client_whole() {
    trace_init();
    let (addr, _t) = raw_upstream(|mut sock| async move {
        let _ = read_head(&mut sock).await;
        // HTTP/1.0-style response: no length, the end is the close.
        sock.write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
            .await
            .unwrap();
        drop(sock);
    })
    .await;
    let linger = InProcess::start(&[addr], |_| {}).unwrap();
    let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"until the end");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        b"POST /1 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\none\
          POST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\ntwo\
          POST /3 HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nthree",
    )
    .await;
    for want in [&b"one"[..], b"two", b"three"] {
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, want);
    }
}

#[tokio::test]
async fn http10_client_gets_a_close_delimited_or_sized_response_and_a_close() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        b"POST / HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi",
    )
    .await;
    let (bytes, end) = read_to_close(&mut s).await;
    assert_eq!(
        end,
        End::Eof,
        "HTTP/1.0 without keep-alive ends with a clean close"
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.ends_with("hi"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("chunked"),
        "no chunked to HTTP/1.0: {text}"
    );
}

#[tokio::test]
async fn request_body_streams_before_the_client_finishes() {
    trace_init();
    // The upstream reports the first body bytes it receives; the client sends the rest only
    // after that report: the proxy cannot have buffered the whole body.
    let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
    let (addr, _t) = raw_upstream(move |mut sock| {
        let tx = tx.clone();
        async move {
            let _head = read_head(&mut sock).await;
            let mut got = 0usize;
            let mut buf = [0u8; 8192];
            let total = 2 * 65536;
            while got < total {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                if got == 0 {
                    tx.send(n).unwrap();
                }
                got += n;
            }
            sock.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{got}",
                    got.to_string().len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        }
    })
    .await;
    let linger = InProcess::start(&[addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        format!(
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
            2 * 65536
        )
        .as_bytes(),
    )
    .await;
    s.write_all(&vec![b'a'; 65536]).await.unwrap();
    let first = tokio::time::timeout(OUTER, rx.recv())
        .await
        .expect("upstream must see body bytes before the client sent the rest")
        .unwrap();
    assert!(first > 0);
    s.write_all(&vec![b'b'; 65536]).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"131072");
}

#[tokio::test]
async fn fifty_megabytes_echo_byte_for_byte() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let len = 50 * 1024 * 1024;
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let s = send_raw(
        linger.addr,
        format!("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
    )
    .await;
    let (mut rd, mut wr) = s.into_split();
    let p2 = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&p2).await.unwrap();
        wr
    });
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 256 * 1024];
    // Skip the head.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        rd.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).contains("content-length: 52428800"));
    while got.len() < len {
        let n = tokio::time::timeout(OUTER, rd.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "linger closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    let _ = writer.await.unwrap();
    assert!(got == payload, "echoed body differs");
}

/// A large chunked response whose client stops reading for a while and then reads fast:
/// linger's reads of the upstream grow while the client keeps up, come back down when it
/// makes linger wait, and grow again, each time on a buffer of the new size; the client
/// gets every byte in order, with the chunking undone exactly.
#[tokio::test]
async fn a_chunked_body_arrives_whole_across_a_client_that_pauses_and_resumes() {
    trace_init();
    let sizes: Vec<usize> = (0..60)
        .map(|i| [1_000, 70_000, 300_000, 5][i % 4])
        .collect();
    let total: usize = sizes.iter().sum();
    let body: Arc<Vec<u8>> = Arc::new((0..total).map(|i| (i % 253) as u8).collect());
    let (sizes2, body2) = (sizes.clone(), body.clone());
    let (addr, _t) = raw_upstream(move |mut sock| {
        let (sizes, body) = (sizes2.clone(), body2.clone());
        async move {
            read_head(&mut sock).await;
            sock.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let mut at = 0;
            for n in sizes {
                let mut chunk = format!("{n:x}\r\n").into_bytes();
                chunk.extend_from_slice(&body[at..at + n]);
                chunk.extend_from_slice(b"\r\n");
                sock.write_all(&chunk).await.unwrap();
                at += n;
            }
            sock.write_all(b"0\r\n\r\n").await.unwrap();
        }
    })
    .await;
    let linger = InProcess::start(&[addr], |_| {}).unwrap();
    let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let head = tokio::time::timeout(OUTER, read_head(&mut s))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut first = vec![0u8; 1];
    s.read_exact(&mut first).await.unwrap();
    // The pause is the stimulus, not a wait for a result: meanwhile linger's writes to
    // this client fill the socket and wait, and its reads come back down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut raw = first;
    tokio::time::timeout(OUTER, async {
        let mut buf = vec![0u8; 256 * 1024];
        while !raw.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "linger closed after {} bytes", raw.len());
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the whole body within the outer timeout");
    let mut got = Vec::with_capacity(total);
    let mut rest = &raw[..];
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if n == 0 {
            assert_eq!(rest, b"\r\n", "nothing after the last chunk");
            break;
        }
        got.extend_from_slice(&rest[..n]);
        assert_eq!(&rest[n..n + 2], b"\r\n");
        rest = &rest[n + 2..];
    }
    assert_eq!(got.len(), total);
    assert!(got == *body, "the body differs");
}

#[tokio::test]
async fn expect_100_continue_is_answered_and_the_body_forwarded() {
    trace_init();
    // An upstream that answers 100 only after it saw the head, then reads the body.
    let (addr, _t) = raw_upstream(|mut sock| async move {
        let head = read_head(&mut sock).await.to_ascii_lowercase();
        assert!(head.contains("expect: 100-continue"), "{head}");
        sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        let mut body = [0u8; 4];
        sock.read_exact(&mut body).await.unwrap();
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
            .await
            .unwrap();
        sock.write_all(&body).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let linger = InProcess::start(&[addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        b"PUT /x HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = tokio::time::timeout(OUTER, read_head(&mut s))
        .await
        .unwrap();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s.write_all(b"data").await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"data");
}

/// R12: an upstream that answers `Expect: 100-continue` with a final status and keeps the
/// connection open has an unknown state (will it read the body or the next request?): linger
/// does not reuse it, and the next request goes to a fresh connection.
#[tokio::test]
async fn expect_answered_with_a_final_status_is_never_reused() {
    trace_init();
    let conns = Arc::new(AtomicUsize::new(0));
    let after_final = Arc::new(AtomicUsize::new(0));
    let (c, a) = (conns.clone(), after_final.clone());
    let (addr, _t) = raw_upstream(move |mut sock| {
        let (c, a) = (c.clone(), a.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            let head = read_head(&mut sock).await.to_ascii_lowercase();
            if head.contains("expect: 100-continue") {
                // A final status instead of 100, keep-alive, body never read.
                sock.write_all(b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    a.fetch_add(n, Ordering::SeqCst);
                }
            } else {
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    })
    .await;
    let linger = InProcess::start(&[addr], |f| {
        f.clusters[0].idle_timeout = ConfigDuration::from_secs(60);
    })
    .unwrap();
    let mut s = send_raw(
        linger.addr,
        b"PUT /x HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    let (head, _) = tokio::time::timeout(OUTER, read_response(&mut s))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 417"), "{head}");
    // The client sends its body anyway (clients may): linger must not forward it.
    let _ = s.write_all(b"data").await;

    let mut s2 = send_raw(linger.addr, b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, body) = tokio::time::timeout(OUTER, read_response(&mut s2))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok\n");
    // The second request was answered, so its connection was accepted.
    assert_eq!(conns.load(Ordering::SeqCst), 2, "a fresh connection");
    // That nothing more arrives on the first connection can only be watched for a while.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        after_final.load(Ordering::SeqCst),
        0,
        "nothing more was written on the connection in an unknown state"
    );
    let m = linger.server.metrics.encode();
    assert!(
        m.lines()
            .any(|l| l.starts_with("linger_connection_closes_total")
                && l.contains("reason=\"unknown_state\"")
                && l.ends_with(" 1")),
        "{m}"
    );
}

#[tokio::test]
async fn response_trailers_reach_a_client_that_accepts_them() {
    trace_init();
    let (addr, _t) = raw_upstream(|mut sock| async move {
        let _ = read_head(&mut sock).await;
        sock.write_all(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n2\r\nhi\r\n0\r\nx-checksum: abc\r\n\r\n",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let linger = InProcess::start(&[addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nte: trailers\r\nconnection: close\r\n\r\n",
    )
    .await;
    let (bytes, _) = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(
        text.contains("\r\n2\r\nhi\r\n0\r\nx-checksum: abc\r\n\r\n"),
        "{text}"
    );
}
