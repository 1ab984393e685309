//! `/metrics` in its two exposition formats: the Prometheus text format 0.0.4 for any
//! scraper that does not ask for OpenMetrics first, OpenMetrics for one that does; the
//! process and build-info metrics; every family listed before any traffic; and promtool's
//! verdict on a live scrape.
//!
//! The promtool test skips (saying so on stderr) when `promtool` is not installed, unless
//! `LINGER_REQUIRE_PROMTOOL=1` (set by `.ci/run`), which makes its absence a failure.

mod support;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// linger's families in the text format, with their types: each is there from start-up.
const LINGER_FAMILIES: &[(&str, &str)] = &[
    ("linger_requests_total", "counter"),
    ("linger_request_duration_seconds", "histogram"),
    ("linger_downstream_connections_total", "counter"),
    ("linger_downstream_connections_open", "gauge"),
    ("linger_connections_open", "gauge"),
    ("linger_connection_closes_total", "counter"),
    ("linger_connection_lifetime_seconds", "histogram"),
    ("linger_requests_per_connection", "histogram"),
    ("linger_upstream_connects_total", "counter"),
    ("linger_upstream_connect_errors_total", "counter"),
    ("linger_upstream_connections_open", "gauge"),
    ("linger_upstream_pool_idle", "gauge"),
    ("linger_upstream_requests_total", "counter"),
    ("linger_retries_total", "counter"),
    ("linger_races_total", "counter"),
    ("linger_build_info", "gauge"),
];

/// The process families, as the Prometheus client libraries name them.
const PROCESS_FAMILIES: &[(&str, &str)] = &[
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
];

/// linger in process, in front of an echo upstream, with its admin listener on 127.0.0.1:0.
struct Linger {
    proxy: InProcess,
    _upstream: Upstream,
    admin: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Linger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Linger {
    async fn start() -> Self {
        trace_init();
        let upstream = Upstream::echo().await;
        let proxy = InProcess::start(&[upstream.addr], |_| {}).unwrap();
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = socket.local_addr().unwrap();
        let task = tokio::spawn(linger_proxy::admin::serve(proxy.server.clone(), socket));
        Self {
            proxy,
            _upstream: upstream,
            admin,
            task,
        }
    }

    /// `GET /metrics` with this `Accept` (none for `None`): the content type and the body.
    async fn scrape(&self, accept: Option<&str>) -> (String, String) {
        let accept = accept.map_or(String::new(), |a| format!("accept: {a}\r\n"));
        let mut s = send_raw(
            self.admin,
            format!("GET /metrics HTTP/1.1\r\nhost: admin\r\n{accept}connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let (head, body) = tokio::time::timeout(OUTER, read_response(&mut s))
            .await
            .expect("the admin listener answers in time");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let ctype = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no content type: {head}"));
        (ctype, String::from_utf8(body).unwrap())
    }

    /// One request through the proxy, answered 200.
    async fn request(&self) {
        let mut s = send_raw(
            self.proxy.addr,
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .await;
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
}

/// Checks a text-format exposition the way a scraper reads it: every family has `# HELP`
/// then `# TYPE` (with a type the format knows), and every sample belongs to the family
/// whose TYPE it follows, under the names that type allows. Returns each family's type.
fn text_families(text: &str) -> HashMap<String, String> {
    let mut helped = Vec::new();
    let mut types = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                helped.last().map(String::as_str) == Some(name),
                "TYPE without HELP just before it: {line}"
            );
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "a counter named for its samples: {line}"
                );
            }
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "twice: {line}"
            );
            current = Some((name.to_owned(), kind.to_owned()));
        } else {
            assert!(
                !line.starts_with('#'),
                "a comment the text format lacks: {line}"
            );
            let sample = line.split(['{', ' ']).next().unwrap();
            let (family, kind) = current
                .as_ref()
                .unwrap_or_else(|| panic!("a sample before any TYPE: {line}"));
            let allowed = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample.strip_prefix(family.as_str()) == Some(s)),
                _ => sample == family,
            };
            assert!(
                allowed,
                "sample {sample} in family {family} ({kind}): {line}"
            );
            let value = line.rsplit(' ').next().unwrap();
            assert!(
                value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                "{line}"
            );
        }
    }
    types
}

/// [`text_families`], which must include each of `expected` (name, type).
fn families_with(text: &str, expected: &[(&str, &str)]) {
    let types = text_families(text);
    for (name, kind) in expected {
        assert_eq!(
            types.get(*name).map(String::as_str),
            Some(*kind),
            "{name}:\n{text}"
        );
    }
}

/// The value of the sample line that starts with `series` (name and labels, exactly).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series}:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn scrapers_that_do_not_ask_for_openmetrics_get_the_text_format() {
    let linger = Linger::start().await;
    linger.request().await;
    for accept in [
        None,
        Some("text/plain"),
        Some("*/*"),
        Some("text/plain;version=0.0.4"),
        Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
    ] {
        let (ctype, body) = linger.scrape(accept).await;
        assert_eq!(ctype, TEXT, "Accept: {accept:?}");
        for openmetrics_only in ["# EOF", "# UNIT", "_created"] {
            assert!(
                !body.contains(openmetrics_only),
                "{openmetrics_only}:\n{body}"
            );
        }
        families_with(&body, LINGER_FAMILIES);
        families_with(&body, PROCESS_FAMILIES);
        // The request is counted once its response is done, which may be just after.
        if accept.is_none() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut body = body;
            let ok = "linger_requests_total{listener=\"main\",status=\"2xx\",termination=\"ok\"}";
            while value(&body, ok) < 1.0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
                body = linger.scrape(None).await.1;
            }
            assert_eq!(value(&body, ok), 1.0, "{body}");
            assert_eq!(
                value(
                    &body,
                    "linger_request_duration_seconds_count{listener=\"main\"}"
                ),
                1.0
            );
        }
    }
}

#[tokio::test]
async fn scrapers_that_ask_for_openmetrics_get_it() {
    let linger = Linger::start().await;
    for accept in [
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        // Prometheus's own.
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;\
         q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ] {
        let (ctype, body) = linger.scrape(Some(accept)).await;
        assert_eq!(ctype, OPENMETRICS, "Accept: {accept}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(body.contains("\n# TYPE linger_retries counter\n"), "{body}");
        assert!(body.contains("\n# TYPE linger_build info\n"), "{body}");
        assert!(
            body.contains("\n# TYPE process_cpu_seconds counter\n"),
            "{body}"
        );
        assert!(!body.contains("# TYPE linger_retries_total"), "{body}");
    }
}

#[tokio::test]
async fn process_and_build_info_metrics_are_served() {
    let linger = Linger::start().await;
    let (_, body) = linger.scrape(None).await;
    families_with(&body, PROCESS_FAMILIES);
    // This test process is the one measured.
    let rss = value(&body, "process_resident_memory_bytes");
    assert!(
        rss > 1e6 && rss <= value(&body, "process_virtual_memory_bytes"),
        "{body}"
    );
    // The admin listener, the proxy's listener and the scrape's connection at least.
    assert!(value(&body, "process_open_fds") >= 3.0, "{body}");
    assert!(value(&body, "process_max_fds") >= value(&body, "process_open_fds"));
    // CPU time counts in clock ticks: work until one shows.
    let cpu = "process_cpu_seconds_total";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut spent = value(&body, cpu);
    while spent == 0.0 && std::time::Instant::now() < deadline {
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        spent = value(&linger.scrape(None).await.1, cpu);
    }
    assert!(spent > 0.0 && spent.is_finite(), "{cpu} {spent}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value(&body, "process_start_time_seconds");
    assert!(
        started <= now && started > now - 3600.0,
        "{started} vs {now}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &body,
            &format!("linger_build_info{{version=\"{version}\"}}")
        ),
        1.0
    );
}

#[tokio::test]
async fn every_family_is_listed_before_any_traffic() {
    // Nothing has gone through linger yet.
    let body = Linger::start().await.scrape(None).await.1;
    families_with(&body, LINGER_FAMILIES);
    for zero in [
        "linger_upstream_connect_errors_total{cluster=\"default\"}",
        "linger_upstream_connects_total{cluster=\"default\"}",
        "linger_downstream_connections_total{listener=\"main\"}",
        "linger_races_total{race=\"R1\",what=\"reused_connection_failed\"}",
        "linger_races_total{race=\"R10\",what=\"request_at_idle_close\"}",
        "linger_requests_total{listener=\"main\",status=\"5xx\",termination=\"ok\"}",
    ] {
        assert_eq!(value(&body, zero), 0.0, "{zero}");
    }
}

/// promtool, or why the test cannot run: `Err` fails the test when
/// `LINGER_REQUIRE_PROMTOOL=1`, and skips it loudly otherwise.
fn promtool() -> Option<&'static str> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool");
    }
    if std::env::var("LINGER_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
        panic!(
            "promtool is not installed and LINGER_REQUIRE_PROMTOOL=1 requires it \
             (Debian: apt-get install --no-install-recommends prometheus)"
        );
    }
    // Straight to stderr, past the test harness's capture, so that the skip shows.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: promtool not installed (Debian's prometheus package ships it; \
         LINGER_REQUIRE_PROMTOOL=1 makes this a failure)"
    );
    None
}

/// Runs `promtool check metrics` on `text`: its exit status and what it printed.
fn promtool_check(promtool: &str, text: &str) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("write the scrape to promtool");
    let deadline = std::time::Instant::now() + OUTER;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("promtool did not finish in {OUTER:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, said)
}

#[tokio::test]
async fn promtool_finds_nothing_wrong_with_a_live_scrape() {
    let Some(promtool) = promtool() else {
        return;
    };
    let linger = Linger::start().await;
    // Before any traffic, and after some (histograms and counters with samples).
    let (_, idle) = linger.scrape(None).await;
    linger.request().await;
    linger.request().await;
    let (ctype, busy) = linger.scrape(Some("text/plain;version=0.0.4")).await;
    assert_eq!(ctype, TEXT);
    for scrape in [idle, busy] {
        let (status, said) = tokio::task::spawn_blocking(move || promtool_check(promtool, &scrape))
            .await
            .unwrap();
        assert!(status.success(), "promtool check metrics: {status}\n{said}");
        assert_eq!(said.trim(), "", "promtool check metrics found problems");
    }
    // The check can fail: the OpenMetrics text has counters without `_total` in TYPE.
    let (_, openmetrics) = linger.scrape(Some("application/openmetrics-text")).await;
    let (status, said) =
        tokio::task::spawn_blocking(move || promtool_check(promtool, &openmetrics))
            .await
            .unwrap();
    assert!(
        !status.success(),
        "promtool accepted OpenMetrics as text: {said}"
    );
}
