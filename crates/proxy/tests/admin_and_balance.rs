//! The admin listener's endpoints, and the two balancing policies.

mod support;

use std::time::Duration;

use linger_proxy::config::Balance;
use support::*;
use tokio::io::AsyncWriteExt;

async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = send_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\n\r\n").as_bytes(),
    )
    .await;
    let (head, body) = read_response(&mut s).await;
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn metrics_ready_and_live_are_served_and_ready_turns_false_on_drain() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(linger_proxy::admin::serve(linger.server.clone(), admin));

    let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let _ = read_response(&mut s).await;
    s.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (head, body) = get(admin_addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains(
            "linger_requests_total{listener=\"main\",status=\"2xx\",termination=\"ok\"} 1"
        ),
        "{body}"
    );
    assert!(
        body.contains("linger_upstream_requests_total{cluster=\"default\",reused=\"false\"} 1"),
        "{body}"
    );
    assert!(body.contains("linger_connection_closes_total"), "{body}");

    assert!(get(admin_addr, "/live").await.0.starts_with("HTTP/1.1 200"));
    assert!(get(admin_addr, "/ready")
        .await
        .0
        .starts_with("HTTP/1.1 200"));
    linger.server.start_drain();
    assert!(get(admin_addr, "/ready")
        .await
        .0
        .starts_with("HTTP/1.1 503"));
}

async fn spread(balance: Balance, requests: usize) -> (usize, usize) {
    let a = Upstream::echo().await;
    let b = Upstream::echo().await;
    let linger = InProcess::start(&[a.addr, b.addr], |f| f.clusters[0].balance = balance).unwrap();
    for _ in 0..requests {
        let mut s = send_raw(
            linger.addr,
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    (a.seen().len(), b.seen().len())
}

#[tokio::test]
async fn round_robin_alternates_endpoints() {
    trace_init();
    let (a, b) = spread(Balance::RoundRobin, 10).await;
    assert_eq!((a, b), (5, 5));
}

#[tokio::test]
async fn least_request_uses_every_endpoint() {
    trace_init();
    let (a, b) = spread(Balance::LeastRequest, 40).await;
    assert_eq!(a + b, 40);
    assert!(a > 0 && b > 0, "both endpoints get traffic: {a} / {b}");
}
