//! R6, silent drops: two network namespaces joined by veth, linger in `a`, its peers in
//! `b`, and nftables in `b` dropping one flow's packets without telling either end (a
//! middlebox that forgot the flow).
//!
//! Needs root, `ip` and `nft`. Without them the tests say why and pass, unless
//! `LINGER_REQUIRE_NETNS=1` (set by `.ci/run`) makes that a failure.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use linger_lab::netns::NetLab;
use linger_lab::peers::{KeepAliveClient, Origin, OriginConfig, Outcome};
use linger_proxy::config::ConfigDuration;
use support::*;
use tokio::time::Instant;

fn lab() -> Option<NetLab> {
    if let Some(why) = NetLab::unavailable() {
        assert!(
            std::env::var("LINGER_REQUIRE_NETNS").as_deref() != Ok("1"),
            "LINGER_REQUIRE_NETNS=1 but network namespaces are unavailable: {why}"
        );
        eprintln!("skipped: {why}");
        return None;
    }
    Some(NetLab::create().expect("create namespaces"))
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A pooled upstream connection whose packets vanish: the GET on it fails after the
/// cluster's `TCP_USER_TIMEOUT` and is retried on a fresh connection, well before the
/// 30 s response timeout and the ~15 min of `tcp_retries2`.
#[tokio::test]
async fn r6_dropped_pooled_connection_completes_by_retry_within_user_timeout() {
    trace_init();
    let Some(lab) = lab() else { return };
    let in_a = lab.runtime(&lab.a).unwrap();
    let in_b = lab.runtime(&lab.b).unwrap();
    let b_addr = lab.b.addr;
    let origin = in_b
        .run(async move {
            let l = tokio::net::TcpListener::bind((b_addr, 0)).await.unwrap();
            Origin::serve(l, OriginConfig::default())
        })
        .await;
    let user_timeout = Duration::from_secs(2);
    let upstream = origin.addr;
    let linger = in_a
        .run(async move {
            InProcess::start(&[upstream], |f| {
                let c = &mut f.clusters[0];
                c.idle_timeout = ConfigDuration::from_secs(60);
                c.tcp.user_timeout = ConfigDuration(user_timeout);
            })
            .unwrap()
        })
        .await;
    let front = linger.addr;
    let first = in_a.run(get_once(front)).await;
    assert_eq!(first, Outcome::Ok(200), "first request");
    let pooled = origin.stats.peer_addrs();
    assert_eq!(pooled.len(), 1, "one upstream connection so far");
    // The middlebox forgets the pooled flow: its packets are dropped both ways, in `b`.
    lab.drop_flow(&lab.b, pooled[0].port()).unwrap();

    let started = Instant::now();
    let second = tokio::time::timeout(OUTER, in_a.run(get_once(front)))
        .await
        .expect("the GET must not hang");
    let took = started.elapsed();
    eprintln!("GET on the dropped pooled connection answered after {took:?}");
    let log = linger.log_lines();
    assert_eq!(second, Outcome::Ok(200), "log: {log:#?}");
    assert!(
        took <= user_timeout + Duration::from_secs(2),
        "took {took:?}, more than the user timeout {user_timeout:?} + 2 s; log: {log:#?}"
    );
    // The retry went to a fresh connection; the dropped request never reached the origin.
    assert_eq!(origin.stats.connections(), 2);
    assert_eq!(origin.stats.requests(), 2);
    assert_eq!(origin.stats.duplicates(), 0);
    let line = log.last().expect("an access-log line");
    assert!(
        line.contains("\"termination\":\"ok\"") && line.contains("reused_connection_dead"),
        "the line names the retry and its reason: {line}"
    );
    let m = linger.server.metrics.encode();
    assert_eq!(
        metric(
            &m,
            "linger_connection_closes_total",
            &["side=\"upstream\"", "reason=\"upstream_dead_peer\""]
        ),
        1.0,
        "{m}"
    );
}

/// A keep-alive client that vanishes (its packets are dropped) is found by linger's TCP
/// keepalive and its connection closed, long before the 75 s idle timeout.
#[tokio::test]
async fn r6_vanished_idle_client_is_reaped_by_tcp_keepalive() {
    trace_init();
    let Some(lab) = lab() else { return };
    let in_a = lab.runtime(&lab.a).unwrap();
    let in_b = lab.runtime(&lab.b).unwrap();
    let origin = in_a
        .run(async { Origin::start(OriginConfig::default()).await.unwrap() })
        .await;
    let upstream = origin.addr;
    let listen: SocketAddr = (lab.a.addr, 0).into();
    let linger = in_a
        .run(async move {
            InProcess::start(&[upstream], |f| {
                let l = &mut f.listeners[0];
                l.address = listen.to_string();
                l.idle_timeout = ConfigDuration::from_secs(75);
                l.tcp.keepalive_idle = ConfigDuration::from_secs(1);
                l.tcp.keepalive_interval = ConfigDuration::from_secs(1);
                l.tcp.keepalive_count = 2;
                // Keepalive alone decides here (a user timeout would override its count).
                l.tcp.user_timeout = ConfigDuration::from_secs(0);
            })
            .unwrap()
        })
        .await;
    let front = linger.addr;
    // The client in `b` keeps its connection open after one request.
    let (outcome, client) = in_b
        .run(async move {
            let mut c = KeepAliveClient::new(front);
            let o = c
                .request("GET", "/", &[], b"", Duration::from_secs(5))
                .await;
            (o, c)
        })
        .await;
    assert_eq!(outcome, Outcome::Ok(200));
    let port = client.local_addr().expect("connection still open").port();
    assert_eq!(linger.server.conns.open(), 1);
    lab.drop_flow(&lab.b, port).unwrap();

    // 1 s idle + 2 probes 1 s apart: the kernel gives up after about 3 s.
    let started = Instant::now();
    tokio::time::timeout(OUTER, linger.server.conns.wait_zero())
        .await
        .expect("the vanished client's connection must be closed");
    let took = started.elapsed();
    eprintln!("vanished client's connection closed after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "keepalive took {took:?} to reap the connection"
    );
    let m = linger.server.metrics.encode();
    assert_eq!(
        metric(
            &m,
            "linger_connection_closes_total",
            &["side=\"downstream\"", "reason=\"downstream_dead_peer\""]
        ),
        1.0,
        "{m}"
    );
    drop(client);
}

async fn get_once(addr: SocketAddr) -> Outcome {
    let mut c = KeepAliveClient::new(addr);
    c.request("GET", "/", &[], b"", Duration::from_secs(15))
        .await
}
