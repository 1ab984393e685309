//! What linger learns of each endpoint's closes, against lab origins that close the way
//! real servers do: resetting late without a hint, closing after every response, closing
//! later than they announce (Node 20), and keeping connections as they should. Each test
//! counts what the client and the origin saw.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use linger_lab::peers::client::gaps;
use linger_lab::peers::{KeepAliveClient, Origin, OriginConfig, Outcome};
use linger_proxy::config::ConfigDuration;
use support::{read_response, send_raw, InProcess};
use tokio::time::Instant;

const TRY: Duration = Duration::from_secs(10);

/// Sends one request per gap on one keep-alive client connection, GET and POST in turn,
/// waiting each gap before the next; each outcome with whether it was a POST.
async fn alternating(
    addr: SocketAddr,
    tag: &'static str,
    schedule: Vec<Duration>,
) -> Vec<(bool, Outcome)> {
    let mut c = KeepAliveClient::new(addr);
    let mut out = Vec::with_capacity(schedule.len());
    for (i, gap) in schedule.into_iter().enumerate() {
        let post = i % 2 == 1;
        let id = format!("{tag}-{i}");
        let (method, body): (&str, &[u8]) = if post {
            ("POST", b"payload")
        } else {
            ("GET", b"")
        };
        let o = c
            .request(method, "/", &[("x-request-id", &id)], body, TRY)
            .await;
        out.push((post, o));
        tokio::time::sleep(gap).await;
    }
    out
}

fn failed(outcomes: &[(bool, Outcome)], post: bool) -> usize {
    outcomes
        .iter()
        .filter(|(p, o)| *p == post && o.is_failure())
        .count()
}

async fn admin(linger: &InProcess) -> SocketAddr {
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = admin.local_addr().unwrap();
    tokio::spawn(linger_proxy::admin::serve(linger.server.clone(), admin));
    addr
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = send_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\n\r\n").as_bytes(),
    )
    .await;
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    String::from_utf8(body).unwrap()
}

/// What linger reports for its one endpoint on `/stats`.
async fn learned(admin: SocketAddr) -> serde_json::Value {
    let stats: serde_json::Value = serde_json::from_str(&get(admin, "/stats").await).unwrap();
    stats["upstreams"][0].clone()
}

/// The log lines linger writes, for every test of this file (one subscriber per process).
fn log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                log().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,linger_proxy::upstream::learn=info",
            ))
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn log_lines(about: &str) -> Vec<String> {
    String::from_utf8_lossy(&log().lock().unwrap())
        .lines()
        .filter(|l| l.contains(about))
        .map(str::to_owned)
        .collect()
}

/// 80 requests, GET and POST in turn, 50-150 ms apart: about half the gaps are longer than
/// the origin's 100 ms.
fn late_reset_schedule() -> Vec<Duration> {
    gaps(7, 80, Duration::from_millis(100), Duration::from_millis(50))
}

/// (a) An origin that resets any request arriving after 100 ms of idleness and sends no
/// hint. Without learning, every POST after a long gap fails; with it, at most the first
/// one, the one that taught linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_resetting_late_without_a_hint_loses_at_most_the_first_post() {
    log();
    let origin_cfg = OriginConfig {
        late_request_reset: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let origin = Origin::start(origin_cfg.clone()).await.unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    let control = Origin::start(origin_cfg).await.unwrap();
    let unlearned = InProcess::start(&[control.addr], |f| {
        f.clusters[0].learn_from_closes = false;
    })
    .unwrap();
    let schedule = late_reset_schedule();
    let (out, control_out) = tokio::join!(
        alternating(linger.addr, "learn", schedule.clone()),
        alternating(unlearned.addr, "control", schedule),
    );

    assert_eq!(failed(&out, false), 0, "every GET succeeds: {out:?}");
    assert!(
        failed(&out, true) <= 1,
        "at most the first POST is lost: {out:?}"
    );
    assert_eq!(origin.stats.duplicates(), 0);
    // The same schedule without learning: the race hits POST after POST.
    assert!(
        failed(&control_out, true) > 3,
        "without learning, POSTs are lost: {control_out:?}"
    );
    assert_eq!(control.stats.duplicates(), 0);
    let limit = linger.server.learned[0][0].reuse_limit().unwrap();
    assert!(limit < Duration::from_millis(100), "{limit:?}");
}

/// (c) An origin like Node 20: it announces `Keep-Alive: timeout=5` and closes idle
/// connections at 6 s. With the hint, linger stops reusing at 4 s; without trusting the
/// hint, it learns the close from the origin's own FIN. Either way no request fails and
/// the limit reported is below 6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_closing_later_than_it_announces_is_learned_below_its_close() {
    log();
    let node_like = || OriginConfig {
        idle_close: Some(Duration::from_secs(6)),
        keep_alive_hint: Some(5),
        ..Default::default()
    };
    let hinted_origin = Origin::start(node_like()).await.unwrap();
    let hinted = InProcess::start(&[hinted_origin.addr], |f| {
        f.clusters[0].idle_timeout = ConfigDuration::from_secs(10);
    })
    .unwrap();
    let unhinted_origin = Origin::start(node_like()).await.unwrap();
    let unhinted = InProcess::start(&[unhinted_origin.addr], |f| {
        f.clusters[0].idle_timeout = ConfigDuration::from_secs(10);
        f.clusters[0].learn_keep_alive = false;
    })
    .unwrap();
    let (admin_hinted, admin_unhinted) = (admin(&hinted).await, admin(&unhinted).await);
    // POSTs around both the announced and the real close.
    let schedule = [
        Duration::from_millis(4500),
        Duration::from_millis(6400),
        Duration::ZERO,
    ];
    let posts = |addr| async move {
        let mut c = KeepAliveClient::new(addr);
        let mut out = Vec::new();
        for gap in schedule {
            out.push(c.request("POST", "/", &[], b"payload", TRY).await);
            tokio::time::sleep(gap).await;
        }
        out
    };
    let (a, b) = tokio::join!(posts(hinted.addr), posts(unhinted.addr));
    assert!(a.iter().chain(&b).all(|o| !o.is_failure()), "{a:?} {b:?}");

    let h = learned(admin_hinted).await;
    assert_eq!(h["idle_limit_s"], 4.0, "{h}");
    assert_eq!(h["hint_s"], 4.0, "{h}");
    let u = learned(admin_unhinted).await;
    let limit = u["idle_limit_s"].as_f64().unwrap();
    assert!(limit < 6.0, "learned from the origin's FIN: {u}");
    assert_eq!(u["learned_s"].as_f64(), Some(limit), "{u}");
    assert_eq!(u["changes"]["idle_close"], 1, "{u}");
}

/// (d) A healthy origin that keeps connections 60 s: nothing is learned, and reuse stays
/// above 99 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_origin_keeps_its_configured_limit_and_its_reuse() {
    log();
    let origin = Origin::start(OriginConfig {
        idle_close: Some(Duration::from_secs(60)),
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    let admin = admin(&linger).await;
    let clients = (0..4u64).map(|k| {
        let schedule = gaps(k, 150, Duration::from_millis(10), Duration::from_millis(10));
        alternating(linger.addr, "healthy", schedule)
    });
    let outcomes: Vec<_> = join_all(clients).await;
    for out in &outcomes {
        assert_eq!(failed(out, false) + failed(out, true), 0, "{out:?}");
    }
    let u = learned(admin).await;
    assert_eq!(u["idle_limit_s"], u["idle_timeout_s"], "{u}");
    assert_eq!(u["learned_s"], serde_json::Value::Null, "{u}");
    let metrics = linger.server.metrics.encode();
    let count = |reused: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("linger_upstream_requests_total{")
                    && l.contains(&format!("reused=\"{reused}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap()
    };
    let (reused, fresh) = (count("true"), count("false"));
    assert_eq!(reused + fresh, 600.0);
    assert!(
        reused / (reused + fresh) > 0.99,
        "reuse {reused} of {}",
        reused + fresh
    );
}

/// Runs the futures side by side and keeps their outputs in order.
async fn join_all<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// A learned change shows on `/stats`, `/upstreams`, `/metrics` and in the log, and
/// `linger check --admin` reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_change_shows_in_stats_metrics_journal_and_log() {
    log();
    let origin = Origin::start(OriginConfig {
        late_request_reset: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    let admin = admin(&linger).await;
    let endpoint = origin.addr.to_string();
    let before = learned(admin).await;
    assert_eq!(before["idle_limit_s"], 1.5, "{before}");

    // A GET after 160 ms: the origin resets it, linger retries it and learns.
    let mut c = KeepAliveClient::new(linger.addr);
    assert_eq!(c.request("GET", "/", &[], b"", TRY).await, Outcome::Ok(200));
    tokio::time::sleep(Duration::from_millis(160)).await;
    assert_eq!(c.request("GET", "/", &[], b"", TRY).await, Outcome::Ok(200));

    let after = learned(admin).await;
    assert_eq!(after["endpoint"], endpoint.as_str(), "{after}");
    let limit = after["idle_limit_s"].as_f64().unwrap();
    assert!((0.05..0.1).contains(&limit), "{after}");
    assert_eq!(after["changes"]["failed_reuse"], 1, "{after}");
    assert_eq!(after["last_change"]["cause"], "failed_reuse", "{after}");

    let upstreams: serde_json::Value =
        serde_json::from_str(&get(admin, "/upstreams").await).unwrap();
    let journal = upstreams["upstreams"][0]["journal"].as_array().unwrap();
    assert!(
        journal
            .iter()
            .any(|e| e["kind"] == "learned" && e["detail"].as_str().unwrap().contains("failed")),
        "{upstreams}"
    );

    let metrics = get(admin, "/metrics").await;
    let sample = |name: &str, extra: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains(&format!("endpoint=\"{endpoint}\""))
                    && l.contains(extra)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} {extra} in {metrics}"))
    };
    assert_eq!(sample("linger_upstream_learned_idle_seconds{", ""), limit);
    assert_eq!(
        sample(
            "linger_upstream_learned_changes_total{",
            "cause=\"failed_reuse\""
        ),
        1.0
    );

    // `linger check --admin` reads the same and calls the configured timeout wrong.
    let url = format!("http://{admin}");
    let facts = tokio::task::spawn_blocking(move || {
        linger_lab::check::learned::fetch(&url, Duration::from_secs(5))
    })
    .await
    .unwrap()
    .unwrap();
    let config = linger.server.config.clone();
    let report = linger_lab::check::check(&linger_lab::check::Chain {
        config: &config,
        front_idle: None,
        measured: Vec::new(),
        learned: Some((format!("http://{admin}"), facts)),
    });
    let race = report
        .races()
        .find(|f| f.pair.contains("live traffic"))
        .unwrap_or_else(|| panic!("{}", report.render()));
    assert_eq!(race.race, "R1", "{}", report.render());
    assert!(race.explanation.contains("failed"), "{}", report.render());

    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = log_lines(&endpoint);
        if !lines.is_empty() || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(lines.len(), 1, "one log line per change: {lines:?}");
    assert!(lines[0].contains("cause=\"failed_reuse\""), "{}", lines[0]);
}
