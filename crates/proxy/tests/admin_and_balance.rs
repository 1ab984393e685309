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
    // The request is counted once its response is done: wait for it.
    let counted = "linger_requests_total{listener=\"main\",status=\"2xx\",termination=\"ok\"} 1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (head, body) = loop {
        let (head, body) = get(admin_addr, "/metrics").await;
        if body.contains(counted) || tokio::time::Instant::now() > deadline {
            break (head, body);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
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

fn kinds(journal: &serde_json::Value) -> Vec<String> {
    journal["journal"]
        .as_array()
        .expect("a journal")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap(),
                e["detail"].as_str().unwrap()
            )
        })
        .collect()
}

/// A connection that went through R1 (its pooled upstream connection reset on reuse, then
/// a retry on a fresh one): `/connections/{id}` shows every step in order, with times.
#[tokio::test]
async fn connection_journal_shows_a_reset_on_reuse_and_the_retry_in_order() {
    trace_init();
    let origin = linger_lab::peers::Origin::start(linger_lab::peers::OriginConfig {
        late_request_reset: Some(Duration::from_millis(40)),
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |f| {
        f.clusters[0].idle_timeout = linger_proxy::config::ConfigDuration::from_secs(60);
    })
    .unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(linger_proxy::admin::serve(linger.server.clone(), admin));

    let mut client = linger_lab::peers::KeepAliveClient::new(linger.addr);
    let t = Duration::from_secs(5);
    let first = client.request("GET", "/a", &[], b"", t).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    let second = client.request("GET", "/b", &[], b"", t).await;
    assert_eq!(first, linger_lab::peers::Outcome::Ok(200));
    assert_eq!(second, linger_lab::peers::Outcome::Ok(200));

    let log = linger.log_lines();
    let line: serde_json::Value = serde_json::from_str(log.last().unwrap()).unwrap();
    assert_eq!(
        line["retries"][0]["reason"], "reused_connection_reset",
        "{line}"
    );
    let ds = line["downstream_conn"].as_u64().unwrap();
    let (head, body) = get(admin_addr, &format!("/connections/d{ds}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    eprintln!("access log: {}\njournal: {body}", log.last().unwrap());
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["id"], format!("d{ds}"));
    assert_eq!(j["side"], "downstream");
    assert_eq!(j["requests"], 2);
    let got = kinds(&j);
    // The second request, step by step.
    let from = got
        .iter()
        .position(|k| k == "request_head GET /b #2")
        .unwrap_or_else(|| panic!("{got:#?}"));
    let second: Vec<&str> = got[from..]
        .iter()
        .map(|k| k.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        second,
        [
            "request_head",
            "upstream",
            "retry",
            "upstream",
            "response_head",
            "response_end"
        ],
        "{got:#?}"
    );
    assert!(
        got[from + 1].ends_with(&format!("reused ({})", origin.addr)),
        "{got:#?}"
    );
    assert_eq!(
        got[from + 2],
        "retry try 1 failed: reused_connection_reset; retried"
    );
    assert!(got[from + 3].contains(" new "), "{got:#?}");
    assert_eq!(got[from + 4], "response_head 200");
    let times: Vec<f64> = j["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["t_ms"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        times[from] >= 80.0,
        "the second request came after the 80 ms pause: {times:?}"
    );

    // The pooled connection that was reset: reused, request out, RST, failed, closed.
    let reused_id = got[from + 1]
        .split(' ')
        .nth(1)
        .unwrap()
        .trim_start_matches('u')
        .to_owned();
    let (_, body) = get(admin_addr, &format!("/connections/u{reused_id}")).await;
    let u: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ukinds: Vec<String> = kinds(&u)
        .iter()
        .map(|k| k.split(' ').next().unwrap().to_owned())
        .collect();
    // The socket's own events (RST seen, closed) and the exchange's verdict (failed) come
    // from two tasks; the exchange learns of the failure after the socket saw it.
    assert_eq!(
        ukinds[..8],
        [
            "connected",
            "request_head",
            "response_head",
            "response_end",
            "pooled",
            "reused",
            "request_head",
            "rst_received",
        ],
        "{u:#}"
    );
    assert!(ukinds[8..].contains(&"closed".to_owned()), "{u:#}");
    assert!(
        kinds(&u).contains(&"failed reused_connection_reset".to_owned()),
        "{u:#}"
    );
    assert_eq!(u["close_reason"], "upstream_rst");
    assert_eq!(u["requests"], 2, "two requests went out on it");
    assert_eq!(u["state"], "closed");

    let (head, body) = get(admin_addr, "/connections/u999999").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(body.contains("error"), "{body}");
    let (_, body) = get(admin_addr, "/connections").await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(list["open"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == format!("d{ds}")));
    let (_, body) = get(admin_addr, "/stats").await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["closes"]["upstream"]["upstream_rst"], 1, "{stats}");
    assert_eq!(stats["requests"]["ok"], 2, "{stats}");
    assert_eq!(stats["retries"]["reused_connection_reset"], 1, "{stats}");
}
