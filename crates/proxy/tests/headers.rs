//! Hop-by-hop headers are removed in both directions (RFC 9110 §7.6.1), including every
//! header named in `Connection`; forwarding headers are added.

mod support;

use support::*;

#[tokio::test]
async fn connection_named_request_header_never_reaches_upstream() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let mut s = send_raw(
        linger.addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=9\r\nproxy-connection: keep-alive\r\nte: gzip\r\nx-forwarded-for: 10.1.1.1\r\n\r\n",
    )
    .await;
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = &up.seen()[0];
    for h in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(
            !seen.headers.contains_key(h),
            "{h} reached the upstream: {:?}",
            seen.headers
        );
    }
    // linger decides its own Connection header towards the upstream (keep-alive).
    assert!(
        seen.headers
            .get("connection")
            .is_none_or(|v| !v.to_str().unwrap().contains("x-secret")),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.headers["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "a");
    assert_eq!(seen.headers["via"], "1.1 linger");
}

#[tokio::test]
async fn connection_named_response_header_never_reaches_client() {
    trace_init();
    let up = Upstream::ok_with_headers(vec![
        ("connection", "keep-alive, x-internal"),
        ("x-internal", "1"),
        ("keep-alive", "timeout=30"),
        ("x-public", "1"),
    ])
    .await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, body) = read_response(&mut s).await;
    let lower = head.to_ascii_lowercase();
    assert_eq!(body, b"ok\n");
    assert!(!lower.contains("x-internal"), "{head}");
    assert!(
        !lower.contains("connection: keep-alive"),
        "the upstream's keep-alive must not pass: {head}"
    );
    assert!(
        !lower.contains("timeout=30"),
        "the upstream's Keep-Alive must not pass: {head}"
    );
    assert!(lower.contains("x-public: 1"), "{head}");
    assert!(
        lower.contains("keep-alive: timeout=75"),
        "linger announces its own idle timeout: {head}"
    );
}

#[tokio::test]
async fn forwarding_headers_follow_the_listener_config() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |f| {
        let h = &mut f.listeners[0].headers;
        h.x_forwarded_for = linger_proxy::config::ForwardedFor::Replace;
        h.x_forwarded_proto = false;
        h.x_forwarded_host = false;
        h.via = false;
        h.preserve_host = false;
    })
    .unwrap();
    let mut s = send_raw(
        linger.addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 10.9.9.9\r\n\r\n",
    )
    .await;
    let _ = read_response(&mut s).await;
    let seen = &up.seen()[0];
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(!seen.headers.contains_key("x-forwarded-proto"));
    assert!(!seen.headers.contains_key("x-forwarded-host"));
    assert!(!seen.headers.contains_key("via"));
    assert_eq!(
        seen.headers["host"],
        up.addr.to_string().as_str(),
        "host rewritten to the endpoint"
    );
}
