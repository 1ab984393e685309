//! The admin live page in a real browser: the linger binary proxies to an origin that
//! closes idle connections after 300 ms, a few clients open and close connections through
//! it, and `tests/browser/live_page.mjs` loads the page in Debian's Chromium, waits for the
//! state counts, the closes chart and the connection table, opens a closed connection's
//! timeline and takes a screenshot (`target/browser/live-page.png`).
//!
//! It needs /usr/bin/chromium and tests/browser/node_modules (`tests/browser/setup.sh`
//! installs both). Without them the test prints why and passes, unless
//! `LINGER_REQUIRE_BROWSER=1`, which makes their absence a failure.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linger_lab::peers::origin::{Origin, OriginConfig};
use linger_lab::peers::{KeepAliveClient, Outcome};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The longest the browser script may run; it has its own, shorter, limits.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// What is missing for the browser check, if anything.
fn browser_missing(root: &Path) -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing"));
    }
    let modules = root.join("tests/browser/node_modules/playwright-core");
    if !modules.exists() {
        return Some(format!("{} is missing", modules.display()));
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("node is not on PATH".into()),
    }
}

/// Starts `linger serve` with an admin listener; returns it with the proxy's and the
/// admin listener's addresses, read from its log.
fn spawn_linger(upstream: &str) -> (support::Running, String, String) {
    let (child, rx) = support::spawn_serve(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--access-log",
        "off",
    ]);
    let linger = support::Running(child);
    let (proxy, admin) = support::addresses(&rx, true);
    (linger, proxy, admin.expect("admin address"))
}

/// One request on `c`, which must succeed.
async fn get(c: &mut KeepAliveClient, path: &str) {
    let o = c.request("GET", path, &[], b"", REQUEST_TIMEOUT).await;
    assert_eq!(o, Outcome::Ok(200), "GET {path} through linger");
}

/// Runs the browser script with a time limit; returns its exit status and output.
fn run_script(root: &Path, admin: &str, shot: &Path) -> (Option<i32>, String) {
    let mut child = Command::new("node")
        .arg(root.join("tests/browser/live_page.mjs"))
        .arg(format!("http://{admin}"))
        .arg(shot)
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must start");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for node") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!("{}{}", out_t.join().unwrap(), err_t.join().unwrap());
    match status {
        Some(s) => (s.code(), text),
        None => (
            None,
            format!("{text}\n(killed after {} s)", SCRIPT_TIMEOUT.as_secs()),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_page_shows_connections_closes_and_a_journal_in_chromium() {
    let root = workspace_root();
    if let Some(why) = browser_missing(&root) {
        if std::env::var("LINGER_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("LINGER_REQUIRE_BROWSER=1 but {why}: run tests/browser/setup.sh");
        }
        println!("skipped: {why} (run tests/browser/setup.sh; LINGER_REQUIRE_BROWSER=1 makes this a failure)");
        return;
    }

    // An origin that closes connections idle for 300 ms: upstream closes happen on their own.
    let origin = Origin::start(OriginConfig {
        idle_close: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await
    .unwrap();
    let (linger, proxy, admin) = spawn_linger(&origin.addr.to_string());
    let proxy: std::net::SocketAddr = proxy.parse().expect("a socket address");

    // 30 requests: a keep-alive client that stays open (so the page has an open
    // connection to count), fresh connections the client closes, and a slow client
    // whose upstream connections the origin closes between its requests.
    let mut held = KeepAliveClient::new(proxy);
    for i in 0..10 {
        get(&mut held, &format!("/held/{i}")).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for i in 0..5 {
        let mut c = KeepAliveClient::new(proxy);
        get(&mut c, &format!("/fresh/{i}/a")).await;
        get(&mut c, &format!("/fresh/{i}/b")).await;
        drop(c);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let mut slow = KeepAliveClient::new(proxy);
    for i in 0..10 {
        get(&mut slow, &format!("/slow/{i}")).await;
        tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 450 } else { 50 })).await;
    }
    drop(slow);

    // The page charts closes that happen while it is open: keep a trickle of short
    // connections going until the browser is done (bounded in count too).
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut c = KeepAliveClient::new(proxy);
                let _ = c
                    .request("GET", &format!("/trickle/{i}"), &[], b"", REQUEST_TIMEOUT)
                    .await;
                drop(c);
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

    let shot = root.join("target/browser/live-page.png");
    let _ = std::fs::remove_file(&shot);
    let (code, output) = {
        let (root, shot, admin) = (root.clone(), shot.clone(), admin.clone());
        tokio::task::spawn_blocking(move || run_script(&root, &admin, &shot))
            .await
            .unwrap()
    };
    stop.store(true, Ordering::Relaxed);
    let _ = trickle.await;
    drop(held);
    drop(linger);

    println!("{output}");
    assert_eq!(
        code,
        Some(0),
        "tests/browser/live_page.mjs against http://{admin} failed:\n{output}"
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "no screenshot at {}", shot.display());
}
