//! The races of connection lifecycles, made to happen on loopback with purpose-built peers.
//! Each test asserts what the peers saw on the wire: responses, clean EOF versus reset,
//! and how many copies of a request the origin received.

mod support;

use std::time::Duration;

use linger_lab::peers::client::gaps;
use linger_lab::peers::{KeepAliveClient, Origin, OriginConfig, Outcome};
use linger_proxy::config::{ConfigDuration, EarlyResponsePolicy, HalfClosePolicy};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TRY: Duration = Duration::from_secs(10);

/// Sends `schedule.len()` sequential requests on one reused client connection.
async fn sequential(
    addr: std::net::SocketAddr,
    method: &str,
    schedule: &[Duration],
) -> Vec<Outcome> {
    let mut c = KeepAliveClient::new(addr);
    let mut out = Vec::with_capacity(schedule.len());
    for (i, gap) in schedule.iter().enumerate() {
        let id = format!("{method}-{i}");
        let body: &[u8] = if method == "POST" { b"payload" } else { b"" };
        out.push(
            c.request(method, "/", &[("x-request-id", &id)], body, TRY)
                .await,
        );
        tokio::time::sleep(*gap).await;
    }
    out
}

/// An origin with `cfg`, and linger in front of it with `tweak` applied.
async fn origin_and_linger(
    cfg: OriginConfig,
    tweak: impl FnOnce(&mut linger_proxy::config::File),
) -> (Origin, InProcess) {
    let origin = Origin::start(cfg).await.unwrap();
    let linger = InProcess::start(&[origin.addr], tweak).unwrap();
    (origin, linger)
}

fn failures(outcomes: &[Outcome]) -> Vec<(usize, &Outcome)> {
    outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.is_failure())
        .collect()
}

// ---------------------------------------------------------------- R1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_gets_across_an_origin_idle_close_never_fail() {
    trace_init();
    // The origin closes idle connections after 10 ms and says nothing about it; the client
    // reuses its connection to linger with gaps spread around that time.
    let origin = Origin::start(OriginConfig {
        idle_close: Some(Duration::from_millis(10)),
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    let schedule = gaps(7, 1000, Duration::from_millis(10), Duration::from_millis(6));
    let outcomes = sequential(linger.addr, "GET", &schedule).await;
    let failed = failures(&outcomes);
    let log = linger.log_lines();
    let failed_lines: Vec<_> = log
        .iter()
        .filter(|l| !l.contains("\"termination\":\"ok\""))
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{failed_lines:#?}");
    assert_eq!(origin.stats.requests(), 1000 + origin.stats.duplicates());
    explained(&linger, "ok", &[("upstream", "upstream_fin_idle")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_posts_to_an_origin_with_a_keep_alive_hint_never_fail() {
    trace_init();
    // The origin says `Keep-Alive: timeout=2` and closes idle connections at 2 s; linger
    // must not reuse a connection idle for more than 1 s (2 s minus the 1 s margin).
    let (origin, linger) = origin_and_linger(
        OriginConfig {
            idle_close: Some(Duration::from_secs(2)),
            keep_alive_hint: Some(2),
            ..Default::default()
        },
        |f| {
            // A pool idle timeout far above the origin's: only the learned hint protects reuse.
            f.clusters[0].idle_timeout = ConfigDuration::from_secs(60);
        },
    )
    .await;
    // 1,000 POSTs: mostly back to back, with 12 pauses around the learned cutoff and the
    // origin's own close.
    let mut schedule = vec![Duration::from_millis(1); 1000];
    let pauses = gaps(
        3,
        12,
        Duration::from_millis(1600),
        Duration::from_millis(700),
    );
    for (i, p) in pauses.into_iter().enumerate() {
        schedule[i * 80 + 40] = p;
    }
    let outcomes = sequential(linger.addr, "POST", &schedule).await;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    assert_eq!(origin.stats.duplicates(), 0);
    assert_eq!(origin.stats.requests(), 1000);
    explained(&linger, "ok", &[("upstream", "pool_idle_timeout")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_reset_on_reuse_retries_gets_and_never_duplicates_posts() {
    trace_init();
    // The origin keeps idle connections open but resets one when a request arrives on it
    // after 40 ms of idleness: linger cannot see it coming. With learning off, this shows
    // what happens to the POSTs that meet it (tests/learning.rs has the same origin with
    // learning on).
    let (origin, linger) = origin_and_linger(
        OriginConfig {
            late_request_reset: Some(Duration::from_millis(40)),
            ..Default::default()
        },
        |f| {
            f.clusters[0].idle_timeout = ConfigDuration::from_secs(60);
            f.clusters[0].learn_from_closes = false;
        },
    )
    .await;
    let schedule: Vec<Duration> = (0..40)
        .map(|i| Duration::from_millis(if i % 2 == 0 { 60 } else { 1 }))
        .collect();
    let gets = sequential(linger.addr, "GET", &schedule).await;
    assert!(
        failures(&gets).is_empty(),
        "every GET succeeds by retry: {:?}",
        failures(&gets)
    );

    let posts = sequential(linger.addr, "POST", &schedule).await;
    assert_eq!(
        origin.stats.duplicates(),
        0,
        "no request reached the origin twice"
    );
    let failed = failures(&posts);
    assert!(!failed.is_empty(), "the race must have hit some POSTs");
    for (_, o) in &failed {
        assert_eq!(
            **o,
            Outcome::ServerError(502),
            "a POST that failed gets a 502"
        );
    }
    // Each failed POST has its line once its response is done; wait for them.
    let is_refusal = |l: &String| l.contains("\"method\":\"POST\"") && l.contains("\"status\":502");
    let deadline = Instant::now() + Duration::from_secs(5);
    while linger.log_lines().iter().filter(|l| is_refusal(l)).count() < failed.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = linger.log_lines();
    let refusals: Vec<_> = log.iter().filter(|l| is_refusal(l)).collect();
    assert_eq!(refusals.len(), failed.len());
    for l in refusals {
        assert!(
            l.contains("refused_not_idempotent"),
            "the log says why: {l}"
        );
        assert!(l.contains("\"upstream_reused\":true"), "{l}");
    }
    explained(
        &linger,
        // The failure names who acted (the upstream's RST while linger waited); the
        // refusal to retry is in the line's retries.
        "upstream.waiting.rst",
        &[("upstream", "upstream_rst")],
    )
    .await;
}

// ---------------------------------------------------------------- R2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_request_at_the_idle_close_sees_eof_never_reset() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |f| {
        f.listeners[0].idle_timeout = ConfigDuration::from_millis(100);
    })
    .unwrap();
    let mut eofs = 0;
    for (i, gap) in gaps(
        11,
        60,
        Duration::from_millis(100),
        Duration::from_millis(15),
    )
    .into_iter()
    .enumerate()
    {
        let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let _ = read_response(&mut s).await;
        tokio::time::sleep(gap).await;
        // The second request races linger's idle close.
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let (bytes, end) = read_to_close_after_optional_response(&mut s).await;
        assert_eq!(end, End::Eof, "try {i}: a reset instead of a clean close");
        if bytes.is_empty() {
            eofs += 1;
        }
    }
    tracing::info!(eofs, "requests that met the idle close");
    // Gaps past the idle timeout always meet the close: the race was really run.
    assert!(eofs > 0, "no request met linger's idle close");
    explained(&linger, "ok", &[("downstream", "idle_timeout")]).await;
    // Every request that met the close has its line, named, with what it asked for.
    let lost = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains("\"termination\":\"linger.idle_close.request_lost\""))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while lost(&linger.log_lines()).len() < eofs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = lost(&linger.log_lines());
    assert_eq!(
        lines.len(),
        eofs,
        "one line per request that met the close: {lines:#?}"
    );
    for l in &lines {
        assert!(
            l.contains("\"method\":\"GET\"") && l.contains("\"path\":\"/\""),
            "{l}"
        );
        assert!(l.contains("\"downstream_close\":\"idle_timeout\""), "{l}");
    }
    let metrics = linger.server.metrics.encode();
    assert!(
        metrics.lines().any(|l| l.starts_with("linger_races_total{")
            && l.contains("race=\"R2\"")
            && l.contains("what=\"request_at_idle_close\"")
            && l.ends_with(&format!(" {eofs}"))),
        "{metrics}"
    );
}

/// Reads what comes (a response, or nothing) until linger closes.
async fn read_to_close_after_optional_response(s: &mut tokio::net::TcpStream) -> (Vec<u8>, End) {
    read_to_close(s).await
}

#[tokio::test]
async fn r2_responses_announce_the_idle_timeout() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |f| {
        f.listeners[0].idle_timeout = ConfigDuration::from_secs(30);
    })
    .unwrap();
    let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, _) = read_response(&mut s).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("keep-alive: timeout=30\r\n"),
        "{head}"
    );
}

/// The idle timeout starts over after every response: a connection used again after its
/// first idle deadline would have passed stays open, and closes one idle timeout after
/// its last response.
#[tokio::test]
async fn r2_the_idle_timeout_starts_over_after_each_response() {
    trace_init();
    const IDLE: Duration = Duration::from_millis(400);
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |f| {
        f.listeners[0].idle_timeout = ConfigDuration::from_millis(400);
    })
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(linger.addr).await.unwrap();
    for _ in 0..3 {
        // 0, 250 and 500 ms: the third request comes after the first response's idle
        // deadline (400 ms), before the second's (650 ms).
        s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let last = Instant::now() - Duration::from_millis(250);
    let (rest, end) = tokio::time::timeout(TRY, read_to_close(&mut s))
        .await
        .expect("the idle connection closes");
    let idle = last.elapsed();
    assert!(rest.is_empty(), "nothing after the last response: {rest:?}");
    assert_eq!(end, End::Eof, "an idle close is graceful");
    assert!(
        idle >= IDLE - Duration::from_millis(50),
        "closed {idle:?} after the last response, before the idle timeout ({IDLE:?})"
    );
    drop(s);
    explained(&linger, "ok", &[("downstream", "idle_timeout")]).await;
}

// ---------------------------------------------------------------- R3

async fn last_response_head(linger: &InProcess, requests: usize, gap: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(linger.addr).await.unwrap();
    let mut head = String::new();
    for _ in 0..requests {
        s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        head = read_response(&mut s).await.0;
        tokio::time::sleep(gap).await;
    }
    let (rest, end) = read_to_close(&mut s).await;
    assert!(rest.is_empty(), "nothing after the last response");
    assert_eq!(
        end,
        End::Eof,
        "linger closes after the response that said close"
    );
    head.to_ascii_lowercase()
}

/// The response `head` said `Connection: close`, linger then closed
/// the connection cleanly, and counted the close with `reason`.
async fn closed_after_announcing(
    linger: &InProcess,
    mut s: tokio::net::TcpStream,
    head: &str,
    reason: &str,
) {
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let (rest, end) = read_to_close(&mut s).await;
    assert!(rest.is_empty(), "nothing after the response: {rest:?}");
    assert_eq!(end, End::Eof);
    // The client closing ends linger's lingering close at once.
    drop(s);
    explained(linger, "ok", &[("downstream", reason)]).await;
}

#[tokio::test]
async fn r3_max_requests_close_says_connection_close() {
    trace_init();
    let up = Upstream::ok_with_headers(vec![("connection", "keep-alive")]).await;
    let linger = InProcess::start(&[up.addr], |f| {
        f.listeners[0].max_requests_per_connection = 3;
    })
    .unwrap();
    let head = last_response_head(&linger, 3, Duration::ZERO).await;
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        !head.contains("keep-alive"),
        "the upstream's keep-alive never reaches the client: {head}"
    );
    explained(&linger, "ok", &[("downstream", "max_requests")]).await;
}

#[tokio::test]
async fn r3_max_age_close_says_connection_close() {
    trace_init();
    // The origin thinks 300 ms; the connection's age limit passes while the request is in
    // flight, so that response must announce the close.
    let (_origin, linger) = origin_and_linger(
        OriginConfig {
            think: Some(Duration::from_millis(300)),
            ..Default::default()
        },
        |f| {
            f.listeners[0].max_connection_age = ConfigDuration::from_millis(200);
        },
    )
    .await;
    let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (head, body) = read_response(&mut s).await;
    assert_eq!(body, b"ok\n");
    closed_after_announcing(&linger, s, &head, "max_age").await;
}

#[tokio::test]
async fn r3_drain_close_says_connection_close() {
    trace_init();
    let origin = Origin::start(OriginConfig {
        think: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    wait_for_origin_requests(&origin, 1).await;
    linger.server.start_drain();
    let (head, body) = read_response(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the in-flight request completes: {head}"
    );
    assert_eq!(body, b"ok\n");
    closed_after_announcing(&linger, s, &head, "drain").await;
}

#[tokio::test]
async fn r3_http10_response_says_connection_close() {
    trace_init();
    let up = Upstream::echo().await;
    let linger = InProcess::start(&[up.addr], |_| {}).unwrap();
    let mut s = send_raw(linger.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    let (bytes, end) = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(text.contains("connection: close"), "{text}");
    assert!(!text.contains("keep-alive: timeout"), "{text}");
    assert_eq!(end, End::Eof);
    // The client closing ends linger's lingering close at once.
    drop(s);
    explained(&linger, "ok", &[("downstream", "requested_close")]).await;
}

// ---------------------------------------------------------------- R4

/// Streams an 8 MB body; returns the response bytes and how the connection ended.
async fn upload_8mb(addr: std::net::SocketAddr) -> (Vec<u8>, End) {
    let len = 8 * 1024 * 1024;
    let s = send_raw(
        addr,
        format!("POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
    )
    .await;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        match tokio::time::timeout(OUTER, rd.read(&mut buf))
            .await
            .expect("linger must close")
        {
            Ok(0) => break End::Eof,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
            Err(e) => panic!("{e}"),
        }
    };
    let _ = writer.await;
    (out, end)
}

/// `runs` 8 MB uploads to an origin that answers 413 before reading the body, then
/// drains it (`early_drain`) or closes with it unread (its kernel resets): each client
/// reads the whole 413 with `Connection: close`, then EOF, never a reset.
async fn early_413_reaches_the_client_whole(early_drain: bool, runs: usize) {
    let origin = Origin::start(OriginConfig {
        early_status: Some(413),
        early_drain,
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    for run in 0..runs {
        let (bytes, end) = upload_8mb(linger.addr).await;
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        assert!(
            text.starts_with("http/1.1 413"),
            "run {run}: {text}\n{:#?}",
            linger.log_lines().last()
        );
        assert!(
            text.ends_with("413 early\n"),
            "run {run}: the whole body: {text}"
        );
        assert!(text.contains("connection: close"), "run {run}: {text}");
        assert_eq!(end, End::Eof, "run {run}: the client saw a reset");
    }
    explained(
        &linger,
        "ok",
        // The origin announced its close (`Connection: close`) before it drained or
        // reset: the response head names the close.
        &[
            ("downstream", "early_response"),
            ("upstream", "upstream_connection_close"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_early_413_is_read_whole_then_eof_never_reset() {
    trace_init();
    early_413_reaches_the_client_whole(true, 100).await;
}

/// The origin answers 413 and closes with the body unread, so its kernel resets linger's
/// connection while linger is still sending the body. The 413 is in linger's receive
/// buffer; hyper's client alone fails the exchange on the failed body write ("error
/// writing a body to connection", a 502), so the upstream socket reports such a write as
/// done and lets hyper read the answer (`SensorIo::upstream`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_early_413_from_an_origin_that_resets_still_reaches_the_client() {
    trace_init();
    early_413_reaches_the_client_whole(false, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_hold_policy_sends_the_early_response_after_the_body() {
    trace_init();
    let (_origin, linger) = origin_and_linger(
        OriginConfig {
            early_status: Some(413),
            early_drain: true,
            ..Default::default()
        },
        |f| {
            f.listeners[0].early_response = EarlyResponsePolicy::Hold;
            // The body streams (a buffered body is read whole first, so nothing is early).
            f.routes.push(linger_proxy::config::FileRoute {
                listener: String::new(),
                host: String::new(),
                path_prefix: "/".into(),
                cluster: "default".into(),
                request_buffer_bytes: 0,
            });
        },
    )
    .await;
    let mut s = send_raw(
        linger.addr,
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 40\r\n\r\n",
    )
    .await;
    // Send the body slowly; no response byte may arrive before its last byte is sent.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(1), s.peek(&mut probe)).await;
        assert!(
            early.is_err(),
            "a response byte arrived before the body was forwarded"
        );
        s.write_all(&[b'h'; 10]).await.unwrap();
    }
    let (bytes, end) = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 413"), "{text}");
    assert_eq!(end, End::Eof);
    // The client closing ends linger's lingering close at once.
    drop(s);
    explained(&linger, "ok", &[("downstream", "early_response")]).await;
}

// ---------------------------------------------------------------- R5, R7

/// Waits (at most 5 s) until the origin has received `n` requests.
async fn wait_for_origin_requests(origin: &Origin, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.stats.requests() < n {
        assert!(
            Instant::now() < deadline,
            "the origin never got request {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for_origin_close(origin: &Origin, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(5);
    while origin.stats.peer_closes() == 0 {
        assert!(
            Instant::now() < deadline,
            "the origin never saw its connection close"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    since.elapsed()
}

#[tokio::test]
async fn r5_half_close_during_an_endless_stream_closes_the_origin_within_1s() {
    trace_init();
    let origin = Origin::start(OriginConfig {
        stream_every: Some(Duration::from_millis(50)),
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    let mut s = send_raw(linger.addr, b"GET /events HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    // The stream is under way: more events arrive.
    let _ = s.read(&mut buf).await.unwrap();
    // The load balancer sends only a FIN.
    s.shutdown().await.unwrap();
    let fin_at = Instant::now();
    let took = wait_for_origin_close(&origin, fin_at).await;
    assert!(
        took < Duration::from_secs(1),
        "origin saw the close after {took:?}"
    );
    logged(&linger, "downstream.response_body.closed").await;
    // The client closing ends linger's lingering close at once.
    drop(s);
    explained(
        &linger,
        "downstream.response_body.closed",
        &[
            ("downstream", "downstream_fin_busy"),
            ("upstream", "aborted"),
        ],
    )
    .await;
}

/// R7's outcome: the origin sees its connection close within 1 s of the client's FIN,
/// nothing is written to the client that left, and the log says why.
async fn aborted_while_waiting(
    origin: &Origin,
    linger: &InProcess,
    s: &mut tokio::net::TcpStream,
    fin_at: Instant,
) {
    let took = wait_for_origin_close(origin, fin_at).await;
    assert!(
        took < Duration::from_secs(1),
        "origin saw the close after {took:?}"
    );
    let (bytes, _) = read_to_close(s).await;
    assert!(bytes.is_empty(), "nothing is written to a client that left");
    let line = logged(linger, "downstream.waiting.closed").await;
    assert!(line.contains("client aborted while waiting"), "{line}");
}

#[tokio::test]
async fn r7_half_close_while_the_origin_thinks_closes_the_origin_within_1s() {
    trace_init();
    let origin = Origin::start(OriginConfig {
        think: Some(Duration::from_secs(10)),
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    let mut s = send_raw(linger.addr, b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n").await;
    wait_for_origin_requests(&origin, 1).await;
    s.shutdown().await.unwrap();
    let fin_at = Instant::now();
    aborted_while_waiting(&origin, &linger, &mut s, fin_at).await;
    // The client closing ends linger's lingering close at once.
    drop(s);
    explained(
        &linger,
        "downstream.waiting.closed",
        &[
            ("downstream", "downstream_fin_busy"),
            ("upstream", "aborted"),
        ],
    )
    .await;
}

/// R7 on a connection that never waited: the request and the client's FIN are both in
/// the socket before linger accepts it (the client writes them without yielding to the
/// runtime linger runs on), so linger reads and forwards the request without registering
/// the socket with its event loop, and starts watching the client only once the wait for
/// the origin has lasted a moment. The watch must still start on its own (nothing else
/// wakes the connection while the origin thinks) and cancel the upstream request.
#[tokio::test]
async fn r7_fin_already_there_at_accept_still_closes_the_origin_within_1s() {
    trace_init();
    let (origin, linger) = origin_and_linger(
        OriginConfig {
            think: Some(Duration::from_secs(10)),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let mut plain = std::net::TcpStream::connect(linger.addr).unwrap();
    std::io::Write::write_all(&mut plain, b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
    plain.shutdown(std::net::Shutdown::Write).unwrap();
    let fin_at = Instant::now();
    plain.set_nonblocking(true).unwrap();
    let mut s = tokio::net::TcpStream::from_std(plain).unwrap();
    wait_for_origin_requests(&origin, 1).await;
    aborted_while_waiting(&origin, &linger, &mut s, fin_at).await;
}

/// With `half_close = "allow"`, a client that half-closes after its request (a valid
/// HTTP/1.1 pattern some clients use) still gets the whole response, then EOF.
#[tokio::test]
async fn r7_half_close_allowed_still_gets_the_response() {
    trace_init();
    let (origin, linger) = origin_and_linger(
        OriginConfig {
            think: Some(Duration::from_millis(300)),
            ..Default::default()
        },
        |f| {
            f.listeners[0].half_close = HalfClosePolicy::Allow;
        },
    )
    .await;
    let mut s = send_raw(linger.addr, b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n").await;
    s.shutdown().await.unwrap();
    let (bytes, end) = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok\n"), "the whole body arrives: {text}");
    assert!(matches!(end, End::Eof), "then a clean EOF");
    assert_eq!(origin.stats.requests(), 1);
    logged(&linger, "ok").await;
    // With half-closes allowed, linger reads the client's FIN only after the response.
    // The client closing ends linger's lingering close at once.
    drop(s);
    explained(&linger, "ok", &[("downstream", "downstream_fin_idle")]).await;
}

// ---------------------------------------------------------------- R9, R11

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_origin_closing_after_each_response_loses_no_post() {
    trace_init();
    let origin = Origin::start(OriginConfig {
        close_after_response: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    let schedule = vec![Duration::ZERO; 1000];
    let outcomes = sequential(linger.addr, "POST", &schedule).await;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    assert_eq!(origin.stats.duplicates(), 0);
    explained(&linger, "ok", &[("upstream", "upstream_fin_idle")]).await;
    // linger learned that the origin closes after each response: POSTs go to fresh
    // connections rather than race its FIN.
    let metrics = linger.server.metrics.encode();
    assert!(
        metrics.lines().any(|l| l.starts_with("linger_races_total{")
            && l.contains("what=\"close_after_response_learned\"")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

async fn mid_body_reset(chunked: bool) {
    let origin = Origin::start(OriginConfig {
        reset_mid_body: Some(1000),
        chunked,
        ..Default::default()
    })
    .await
    .unwrap();
    let linger = InProcess::start(&[origin.addr], |_| {}).unwrap();
    let mut s = send_raw(linger.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (bytes, _end) = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    if chunked {
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        assert!(
            !body.ends_with("0\r\n\r\n"),
            "no final chunk on an aborted response"
        );
    } else {
        let cl: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.parse().unwrap())
            })
            .expect("content-length");
        assert!(
            body.len() < cl,
            "closed before the announced length: {} of {cl}",
            body.len()
        );
    }
    logged(&linger, "upstream.response_body.reset").await;
    // The client closing ends linger's lingering close at once.
    drop(s);
    explained(
        &linger,
        "upstream.response_body.reset",
        &[
            ("upstream", "upstream_rst"),
            ("downstream", "error_response"),
        ],
    )
    .await;
}

#[tokio::test]
async fn r11_reset_mid_chunked_body_reaches_client_broken() {
    trace_init();
    mid_body_reset(true).await;
}

#[tokio::test]
async fn r11_reset_mid_content_length_body_reaches_client_short() {
    trace_init();
    mid_body_reset(false).await;
}

// ---------------------------------------------------------------- R8

#[tokio::test]
async fn r8_http10_and_close_delimited_responses_close_without_added_wait() {
    trace_init();
    // An upstream whose response is delimited by its close.
    let (addr, _t) = raw_upstream(|mut sock| async move {
        let _ = read_head(&mut sock).await;
        sock.write_all(b"HTTP/1.0 200 OK\r\n\r\nbody until close")
            .await
            .unwrap();
    })
    .await;
    let linger = InProcess::start(&[addr], |f| {
        // A long linger time: the client must not wait for any of it.
        f.listeners[0].linger_time = ConfigDuration::from_secs(5);
    })
    .unwrap();
    for _ in 0..5 {
        let started = Instant::now();
        let mut s = send_raw(linger.addr, b"GET / HTTP/1.0\r\n\r\n").await;
        let (bytes, end) = read_to_close(&mut s).await;
        let took = started.elapsed();
        assert_eq!(end, End::Eof);
        assert!(String::from_utf8_lossy(&bytes).ends_with("body until close"));
        assert!(
            took < Duration::from_millis(500),
            "the close came after {took:?}"
        );
    }
    explained(&linger, "ok", &[("downstream", "requested_close")]).await;
}
