//! Bad requests get a clear status and a closed connection and never reach an upstream;
//! upstream failures get 502/504 with a body and a log line naming the endpoint.

mod support;

use std::time::Duration;

use support::*;

async fn expect_refusal(
    request: &[u8],
    status: &str,
    termination: &str,
    close: &str,
    tweak: impl FnOnce(&mut linger_proxy::ConfigFile),
) {
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], tweak).unwrap();
    let mut s = send_raw(linger.addr, request).await;
    let (bytes, end) = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert!(
        text.starts_with(&format!("HTTP/1.1 {status}")),
        "want {status}, got: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_eq!(
        end,
        End::Eof,
        "the connection must close cleanly, not reset"
    );
    assert!(
        up.seen().is_empty(),
        "a refused request reached the upstream"
    );
    // The client closing ends linger's lingering close at once.
    drop(s);
    explained(&linger, termination, &[("downstream", close)]).await;
}

#[tokio::test]
async fn missing_host_on_http11_is_400() {
    trace_init();
    expect_refusal(
        b"GET / HTTP/1.1\r\n\r\n",
        "400",
        "linger.request_head.missing_host",
        "bad_request",
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn garbage_request_line_is_400() {
    trace_init();
    expect_refusal(
        b"GARBAGE\r\n\r\n",
        "400",
        "linger.request_head.bad_request",
        "bad_request",
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn obs_fold_is_400() {
    trace_init();
    expect_refusal(
        b"GET / HTTP/1.1\r\nhost: a\r\nx-long: one\r\n two\r\n\r\n",
        "400",
        "linger.request_head.bad_request",
        "bad_request",
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn header_block_over_the_limit_is_431() {
    trace_init();
    let mut req = b"GET / HTTP/1.1\r\nhost: a\r\nx-big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 20_000));
    req.extend_from_slice(b"\r\n\r\n");
    expect_refusal(
        &req,
        "431",
        "linger.request_head.too_large",
        "bad_request",
        |f| f.listeners[0].max_header_bytes = 8192,
    )
    .await;
}

#[tokio::test]
async fn too_many_header_fields_is_431() {
    trace_init();
    let mut req = b"GET / HTTP/1.1\r\nhost: a\r\n".to_vec();
    for i in 0..30 {
        req.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    expect_refusal(
        &req,
        "431",
        "linger.request_head.too_large",
        "bad_request",
        |f| f.listeners[0].max_headers = 20,
    )
    .await;
}

#[tokio::test]
async fn slow_request_head_gets_408_then_close() {
    trace_init();
    expect_refusal(
        b"GET / HTTP/1.1\r\nhost: a\r\nx-slow:",
        "408",
        "downstream.request_head.timeout",
        "header_read_timeout",
        |f| {
            f.listeners[0].header_read_timeout =
                linger_proxy::config::ConfigDuration::from_millis(300)
        },
    )
    .await;
}

#[tokio::test]
async fn connect_failure_is_502_naming_the_endpoint() {
    trace_init();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let linger = InProcess::start(&[dead], |f| {
        f.clusters[0].retry.backoff_base = linger_proxy::config::ConfigDuration::from_millis(1);
        f.clusters[0].retry.backoff_max = linger_proxy::config::ConfigDuration::from_millis(2);
    })
    .unwrap();
    let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // The client learns the code and the request's name; the endpoint and the error stay
    // in linger's log.
    let body = String::from_utf8_lossy(&body);
    // (Connection numbers are per process, so the name's number is whatever it was.)
    assert!(
        body.starts_with("502 Bad Gateway\nupstream.connect.refused (request d")
            && body.ends_with("#1)\n")
            && body.lines().count() == 2,
        "the body names neither the endpoint nor the error: {body}"
    );
    assert!(!body.contains(&dead.to_string()), "{body}");
    let line = logged(&linger, "upstream.connect.refused").await;
    assert!(line.contains(&dead.to_string()), "{line}");
    assert!(line.contains("connect failed"), "{line}");
}

#[tokio::test]
async fn response_timeout_is_504() {
    trace_init();
    let (addr, _t) = raw_upstream(|mut sock| async move {
        let _ = read_head(&mut sock).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let linger = InProcess::start(&[addr], |f| {
        f.clusters[0].response_timeout = linger_proxy::config::ConfigDuration::from_millis(300)
    })
    .unwrap();
    // A POST is never retried after it may have been sent: one try, then 504.
    let mut s = send_raw(
        linger.addr,
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\nx",
    )
    .await;
    let (head, body) = tokio::time::timeout(OUTER, read_response(&mut s))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let body = String::from_utf8_lossy(&body);
    assert!(!body.contains(&addr.to_string()), "{body}");
    assert!(body.contains("linger.waiting.response_timeout"), "{body}");
    let line = logged(&linger, "linger.waiting.response_timeout").await;
    assert!(
        line.contains(&addr.to_string()) && line.contains("no response head within"),
        "{line}"
    );
}

#[tokio::test]
async fn unknown_route_is_404() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |f| {
        f.routes.push(linger_proxy::config::FileRoute {
            listener: String::new(),
            host: "only.example".into(),
            path_prefix: "/".into(),
            cluster: "default".into(),
            request_buffer_bytes: 0,
        });
    })
    .unwrap();
    let mut s = send_raw(
        linger.addr,
        b"GET / HTTP/1.1\r\nhost: other.example\r\n\r\n",
    )
    .await;
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_upstream_fin_before_the_response_is_named_as_the_upstreams_close() {
    trace_init();
    // The origin reads the whole request, then closes without a word (FIN: nothing is
    // left unread, so no RST).
    let (addr, _t) = raw_upstream(|mut sock| async move {
        use tokio::io::AsyncReadExt;
        let _ = read_head(&mut sock).await;
        let mut body = [0u8; 1];
        let _ = sock.read_exact(&mut body).await;
        drop(sock);
    })
    .await;
    let linger = InProcess::start(&[addr], |_| {}).unwrap();
    // A POST that may have arrived is not retried: one try, one close to name.
    let mut s = send_raw(
        linger.addr,
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\nx",
    )
    .await;
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let line = logged(&linger, "upstream.waiting.fin").await;
    assert!(
        line.contains("\"upstream_conn_closed\":\"upstream_fin_busy\""),
        "{line}"
    );
    explained(
        &linger,
        "upstream.waiting.fin",
        &[("upstream", "upstream_fin_busy")],
    )
    .await;
    let metrics = linger.server.metrics.encode();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("linger_connection_closes_total{")
                && l.contains("side=\"upstream\"")
                && l.contains("reason=\"aborted\"")
                && !l.ends_with(" 0")),
        "the origin's close is not linger's abort:\n{metrics}"
    );
}
