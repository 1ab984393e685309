//! Every request linger ends gets exactly one access-log line, whatever ended it: one
//! scenario per termination path (the drain deadline included), each counting the lines
//! against the requests sent once every connection has closed.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use linger_lab::peers::{Origin, OriginConfig};
use linger_proxy::config::{ConfigDuration, File as ConfigFile, FileRoute};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `client` against a linger in front of `upstream`, then waits until every
/// downstream connection has closed, and checks the log holds exactly the lines
/// `expected` names (one termination code each), in any order.
async fn accounted<F, Fut>(
    name: &str,
    upstream: SocketAddr,
    tweak: impl FnOnce(&mut ConfigFile),
    expected: &[&str],
    client: F,
) where
    F: FnOnce(InProcess) -> Fut,
    Fut: Future<Output = InProcess>,
{
    let linger = InProcess::start(&[upstream], |f| {
        f.listeners[0].header_read_timeout = ConfigDuration::from_millis(200);
        f.listeners[0].request_body_timeout = ConfigDuration::from_millis(200);
        f.listeners[0].linger_time = ConfigDuration::from_millis(100);
        f.clusters[0].response_timeout = ConfigDuration::from_millis(300);
        f.clusters[0].retry.backoff_base = ConfigDuration::from_millis(1);
        f.clusters[0].retry.backoff_max = ConfigDuration::from_millis(2);
        tweak(f);
    })
    .unwrap();
    eprintln!("scenario: {name}");
    let linger = client(linger).await;
    let deadline = tokio::time::Instant::now() + OUTER;
    while linger.server.conns.open() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: connections still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines = linger.log_lines();
    let mut got: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["termination"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{name}: one line per request\n{lines:#?}");
}

/// Sends `bytes` and reads until linger closes.
async fn exchange(linger: &InProcess, bytes: &[u8]) {
    let mut s = send_raw(linger.addr, bytes).await;
    let _ = read_to_close(&mut s).await;
}

async fn origin(cfg: OriginConfig) -> Origin {
    Origin::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_termination_path_logs_exactly_one_line_per_request() {
    trace_init();
    let ok = origin(OriginConfig::default()).await;
    let get_close = b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";

    accounted(
        "ok, three on one connection",
        ok.addr,
        |_| {},
        &["ok"; 3],
        |l| async move {
            let mut s = send_raw(
                l.addr,
                b"GET / HTTP/1.1\r\nhost: a\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n",
            )
            .await;
            s.write_all(get_close).await.unwrap();
            let _ = read_to_close(&mut s).await;
            l
        },
    )
    .await;

    accounted(
        "ambiguous framing",
        ok.addr,
        |_| {},
        &["linger.request_head.bad_request"],
        |l| async move {
            exchange(
                &l,
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            )
            .await;
            l
        },
    )
    .await;

    accounted(
        "missing host",
        ok.addr,
        |_| {},
        &["linger.request_head.missing_host"],
        |l| async move {
            exchange(&l, b"GET / HTTP/1.1\r\n\r\n").await;
            l
        },
    )
    .await;

    accounted(
        "head too large",
        ok.addr,
        |f| f.listeners[0].max_header_bytes = 8192,
        &["linger.request_head.too_large"],
        |l| async move {
            let big = format!(
                "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
                "b".repeat(20_000)
            );
            exchange(&l, big.as_bytes()).await;
            l
        },
    )
    .await;

    accounted(
        "head never finished",
        ok.addr,
        |_| {},
        &["downstream.request_head.timeout"],
        |l| async move {
            exchange(&l, b"GET / HTTP/1.1\r\nhost: a\r\n").await;
            l
        },
    )
    .await;

    accounted(
        "no route",
        ok.addr,
        |f| {
            f.routes = vec![FileRoute {
                listener: String::new(),
                host: "only.example".into(),
                path_prefix: "/".into(),
                cluster: "default".into(),
                request_buffer_bytes: 65536,
            }];
        },
        &["linger.request_head.no_route"],
        |l| async move {
            exchange(&l, get_close).await;
            l
        },
    )
    .await;

    // A port nothing listens on: bound, then closed.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    accounted(
        "connect refused",
        refused,
        |_| {},
        &["upstream.connect.refused"],
        |l| async move {
            exchange(&l, get_close).await;
            l
        },
    )
    .await;

    let stall = origin(OriginConfig {
        stall: true,
        ..Default::default()
    })
    .await;
    accounted(
        "response timeout",
        stall.addr,
        |f| f.clusters[0].retry.max_retries = 0,
        &["linger.waiting.response_timeout"],
        |l| async move {
            exchange(&l, get_close).await;
            l
        },
    )
    .await;

    let (fin_first, _task) = raw_upstream(|mut s| async move {
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b).await;
        drop(s);
    })
    .await;
    accounted(
        "upstream closed before the response",
        fin_first,
        |_| {},
        &["upstream.waiting.fin"],
        |l| async move {
            exchange(
                &l,
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
            )
            .await;
            l
        },
    )
    .await;

    let mid_body = origin(OriginConfig {
        reset_mid_body: Some(1000),
        ..Default::default()
    })
    .await;
    accounted(
        "upstream reset mid-body",
        mid_body.addr,
        |_| {},
        &["upstream.response_body.reset"],
        |l| async move {
            exchange(&l, get_close).await;
            l
        },
    )
    .await;

    let slow = origin(OriginConfig {
        think: Some(Duration::from_secs(2)),
        ..Default::default()
    })
    .await;
    // Borrowed, so that the origin outlives the scenario: still thinking when the client
    // leaves, not shut down with the client's future.
    let slow = &slow;
    accounted(
        "client left while waiting",
        slow.addr,
        |f| f.clusters[0].response_timeout = ConfigDuration::from_secs(10),
        &["downstream.waiting.closed"],
        |l| async move {
            let s = send_raw(l.addr, get_close).await;
            wait_for_origin_request(slow).await;
            drop(s);
            l
        },
    )
    .await;

    let stream = origin(OriginConfig {
        stream_every: Some(Duration::from_millis(20)),
        ..Default::default()
    })
    .await;
    accounted(
        "client left during the body",
        stream.addr,
        |_| {},
        &["downstream.response_body.closed"],
        |l| async move {
            let mut s = send_raw(l.addr, get_close).await;
            let _ = read_head(&mut s).await;
            drop(s);
            l
        },
    )
    .await;

    accounted(
        "request body stalled",
        ok.addr,
        |_| {},
        &["downstream.request_body.timeout"],
        |l| async move {
            exchange(
                &l,
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nab",
            )
            .await;
            l
        },
    )
    .await;

    accounted(
        "cut at the drain deadline",
        stream.addr,
        |_| {},
        &["linger.drain.deadline"],
        |l| async move {
            let mut s = send_raw(l.addr, get_close).await;
            let _ = read_head(&mut s).await;
            l.server.start_drain();
            l.server.cut();
            let _ = read_to_close(&mut s).await;
            l
        },
    )
    .await;
}

/// Waits until `origin` has seen a request.
async fn wait_for_origin_request(origin: &Origin) {
    let deadline = tokio::time::Instant::now() + OUTER;
    while origin.stats.requests() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
