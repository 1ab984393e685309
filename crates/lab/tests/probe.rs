//! `linger probe` against lab origins whose closing behaviour is known: each measured value
//! must match the configured one within a stated tolerance.
//!
//! Real sockets, real time: the origins close idle connections after 0.5 s or 1.5 s, each probe gives up
//! after 10 s, and every test sits inside a 60 s outer timeout.

use std::time::Duration;

use linger_lab::peers::origin::{CloseStyle, Origin, OriginConfig};
use linger_lab::probe::{
    self, CloseKind, HintComparison, LimitOutcome, NoProgress, ProbeError, ProbeOptions, Report,
};

/// The outer bound on any one test; far above what a probe of these origins takes.
const OUTER: Duration = Duration::from_secs(60);
/// Tolerance on a measured idle close.
const IDLE_TOLERANCE: Duration = Duration::from_millis(300);

fn options() -> ProbeOptions {
    ProbeOptions {
        connections: 3,
        max_wait: Duration::from_secs(10),
        max_requests: 1000,
        intrusive: false,
    }
}

/// Starts an origin with `cfg` and probes it.
async fn probe_origin(cfg: OriginConfig) -> Report {
    let origin = Origin::start(cfg)
        .await
        .expect("an origin must bind 127.0.0.1:0");
    let url = format!("http://{}/", origin.addr);
    let report = tokio::time::timeout(OUTER, probe::run(&url, &options(), &NoProgress))
        .await
        .expect("a probe of a lab origin must finish within the outer timeout")
        .expect("a lab origin must be reachable");
    drop(origin);
    report
}

fn assert_close_to(measured: Option<Duration>, expected: Duration, what: &str) {
    let m = measured.unwrap_or_else(|| panic!("{what}: no idle close was measured"));
    let diff = m.abs_diff(expected);
    assert!(
        diff <= IDLE_TOLERANCE,
        "{what}: measured {m:?}, expected {expected:?} ± {IDLE_TOLERANCE:?}"
    );
}

#[tokio::test]
async fn probe_measures_an_idle_close_by_fin() {
    let report = probe_origin(OriginConfig {
        idle_close: Some(Duration::from_millis(1500)),
        idle_close_style: CloseStyle::Fin,
        ..Default::default()
    })
    .await;
    let idle = &report.idle_close;
    assert_close_to(idle.median(), Duration::from_millis(1500), "median");
    assert_close_to(idle.shortest(), Duration::from_millis(1500), "min");
    assert_close_to(idle.longest(), Duration::from_millis(1500), "max");
    assert_eq!(
        idle.fin, 3,
        "every idle connection must end with FIN: {idle:?}"
    );
    assert_eq!(idle.close_kind(), Some(CloseKind::Fin));
    assert!(report.keep_alive_hint.is_none(), "the origin sends no hint");
    // 1.5 s minus the 500 ms margin.
    assert_eq!(
        report.recommendation.idle_timeout.as_deref(),
        Some("1s"),
        "{}",
        report.recommendation.toml
    );
    assert_eq!(
        report.requests_per_connection.outcome,
        LimitOutcome::NoLimitWithinCap
    );
}

#[tokio::test]
async fn probe_sees_an_idle_close_by_rst() {
    let report = probe_origin(OriginConfig {
        idle_close: Some(Duration::from_millis(500)),
        idle_close_style: CloseStyle::Rst,
        ..Default::default()
    })
    .await;
    let idle = &report.idle_close;
    assert_eq!(
        idle.rst, 3,
        "every idle connection must end with RST: {idle:?}"
    );
    assert_eq!(idle.fin, 0);
    assert_eq!(idle.close_kind(), Some(CloseKind::Rst));
    // 0.5 s leaves no room for the 500 ms margin: no reuse.
    assert_eq!(report.recommendation.max_idle_per_endpoint, Some(0));
}

#[tokio::test]
async fn probe_flags_a_keep_alive_hint_longer_than_the_idle_close() {
    let report = probe_origin(OriginConfig {
        idle_close: Some(Duration::from_millis(1500)),
        keep_alive_hint: Some(5),
        ..Default::default()
    })
    .await;
    assert_close_to(
        report.idle_close.median(),
        Duration::from_millis(1500),
        "median",
    );
    let hint = report
        .keep_alive_hint
        .as_ref()
        .expect("the origin's Keep-Alive header must be reported");
    assert_eq!(hint.hint.timeout_s, Some(5));
    assert_eq!(hint.comparison, HintComparison::LongerThanReal);
    assert!(hint.hint_longer_than_real);
    assert!(
        !report.recommendation.learn_keep_alive,
        "a hint longer than the real close must not be learned: {}",
        report.recommendation.toml
    );
}

#[tokio::test]
async fn probe_counts_requests_when_the_last_response_announces_the_close() {
    let report = probe_origin(OriginConfig {
        // Long enough for reuse to be worth a recommendation.
        idle_close: Some(Duration::from_millis(1500)),
        max_requests: Some(5),
        announce_last: true,
        ..Default::default()
    })
    .await;
    let limit = &report.requests_per_connection;
    assert_eq!(limit.outcome, LimitOutcome::Limit, "{limit:?}");
    assert_eq!(limit.limit, Some(5));
    assert_eq!(limit.announced, Some(true));
    // linger honours Connection: close; no need to count.
    assert_eq!(report.recommendation.max_requests_per_connection, 0);
}

#[tokio::test]
async fn probe_counts_requests_when_the_server_closes_without_announcing() {
    let report = probe_origin(OriginConfig {
        // Long enough for reuse to be worth a recommendation.
        idle_close: Some(Duration::from_millis(1500)),
        max_requests: Some(5),
        announce_last: false,
        ..Default::default()
    })
    .await;
    let limit = &report.requests_per_connection;
    assert_eq!(limit.outcome, LimitOutcome::Limit, "{limit:?}");
    assert_eq!(limit.limit, Some(5));
    assert_eq!(limit.announced, Some(false));
    assert_eq!(report.recommendation.max_requests_per_connection, 5);
}

#[tokio::test]
async fn probe_names_the_url_it_cannot_reach() {
    // A port that was just free: nothing listens there any more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("127.0.0.1:0 must bind");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    drop(listener);
    let url = format!("http://{addr}/");
    let err = tokio::time::timeout(OUTER, probe::run(&url, &options(), &NoProgress))
        .await
        .expect("a refused connect must fail fast")
        .expect_err("nothing listens, so the probe must fail");
    assert!(matches!(err, ProbeError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");

    let err = probe::run("https://example.invalid/", &options(), &NoProgress)
        .await
        .expect_err("https must be refused");
    assert!(matches!(err, ProbeError::Https { .. }), "{err:?}");
}

#[tokio::test]
async fn probe_tells_a_graceful_early_response_from_one_cut_by_rst() {
    let probe_intrusive = |early_drain: bool| async move {
        let origin = Origin::start(OriginConfig {
            early_status: Some(413),
            early_drain,
            ..Default::default()
        })
        .await
        .expect("an origin must bind 127.0.0.1:0");
        let url = format!("http://{}/", origin.addr);
        let opts = ProbeOptions {
            intrusive: true,
            ..options()
        };
        tokio::time::timeout(OUTER, probe::run(&url, &opts, &NoProgress))
            .await
            .expect("a probe of a lab origin must finish within the outer timeout")
            .expect("a lab origin must be reachable")
    };
    let (graceful, cut) = tokio::join!(probe_intrusive(true), probe_intrusive(false));
    let graceful = graceful.intrusive.expect("--intrusive must report");
    let cut = cut.intrusive.expect("--intrusive must report");
    assert!(graceful.early_response.answered_early);
    assert_eq!(graceful.early_response.status, Some(413));
    assert_eq!(
        graceful.early_response.after,
        Some(probe::AfterResponse::Fin)
    );
    assert!(!graceful.early_response.reset_while_sending);
    assert!(cut.early_response.answered_early);
    assert!(
        cut.early_response.reset_while_sending
            || cut.early_response.after == Some(probe::AfterResponse::Rst)
            || cut.early_response.outcome == probe::Exchange::Rst,
        "closing with the body unread must show as RST: {:?}",
        cut.early_response
    );
}

/// `--admin`: what a running linger learned of the probed endpoint from live traffic
/// becomes a finding, and a shorter learned limit replaces the recommended idle_timeout.
#[tokio::test]
async fn a_limit_learned_by_a_running_linger_tightens_the_recommendation() {
    let mut report = probe_origin(OriginConfig {
        idle_close: Some(Duration::from_millis(1500)),
        ..Default::default()
    })
    .await;
    assert_eq!(report.recommendation.idle_timeout.as_deref(), Some("1s"));
    let learned = |endpoint: &str, learned_s: Option<f64>| linger_lab::check::LearnedFacts {
        cluster: "app".into(),
        endpoint: endpoint.into(),
        idle_limit_s: learned_s.unwrap_or(1.5),
        idle_timeout_s: 1.5,
        hint_s: None,
        learned_s,
        learning: true,
        closes_after_response: false,
        changes: Default::default(),
        last_change: None,
    };
    let admin = "http://127.0.0.1:9901";
    // Another endpoint's values are not this one's.
    assert!(!report.learned_by_linger(admin, &[learned("127.0.0.1:1", Some(0.3))]));
    assert_eq!(report.recommendation.idle_timeout.as_deref(), Some("1s"));
    let here = report.address.clone();
    assert!(report.learned_by_linger(admin, &[learned(&here, Some(0.345))]));
    assert_eq!(report.recommendation.idle_timeout.as_deref(), Some("300ms"));
    let line = report
        .recommendation
        .toml
        .lines()
        .find(|l| l.starts_with("idle_timeout"))
        .unwrap();
    assert!(
        line.starts_with("idle_timeout = \"300ms\"") && line.contains("# learned by the linger at"),
        "{}",
        report.recommendation.toml
    );
    assert_eq!(
        report.recommendation.toml.matches("idle_timeout").count(),
        1
    );
    assert!(report
        .findings
        .iter()
        .any(|f| f.contains("learned from live traffic")));
}
