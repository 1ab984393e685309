//! R10: SIGTERM to the linger binary under steady keep-alive load: clients that honour
//! `Connection: close` lose nothing, in-flight requests complete, exit code 0, and the
//! access log holds a line for every request when the process has exited.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use linger_lab::peers::{KeepAliveClient, Origin, OriginConfig, Outcome};

/// Starts the binary and returns it with the address it listens on (read from its log).
fn spawn_linger(upstream: &str, access_log: &str) -> (std::process::Child, String) {
    let (child, rx) = support::spawn_serve(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--admin",
        "off",
        "--access-log",
        access_log,
        "--workers",
        "2",
    ]);
    let (addr, _) = support::addresses(&rx, false);
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_request_and_exits_0() {
    let origin = Origin::start(OriginConfig {
        think: Some(Duration::from_millis(20)),
        ..Default::default()
    })
    .await
    .unwrap();
    let log = std::env::temp_dir().join(format!("linger-drain-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let (mut child, addr) = spawn_linger(&origin.addr.to_string(), log.to_str().unwrap());
    let addr: std::net::SocketAddr = addr.parse().expect("a socket address");
    let ok = Arc::new(AtomicU64::new(0));
    let closes = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let ok = ok.clone();
        let closes = closes.clone();
        clients.push(tokio::spawn(async move {
            let mut c = KeepAliveClient::new(addr);
            let mut failures = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline {
                match c
                    .request("GET", "/", &[], b"", Duration::from_secs(10))
                    .await
                {
                    Outcome::Ok(200) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let said_close = c
                            .last
                            .as_ref()
                            .and_then(|r| r.header("connection"))
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                        if said_close {
                            // The server asked to close: a load balancer would now send
                            // this client's traffic elsewhere.
                            closes.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    Outcome::ConnectFailed => break,
                    other => failures.push(other),
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0, "traffic flows before the signal");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut all_failures = Vec::new();
    for c in clients {
        all_failures.extend(c.await.unwrap());
    }
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("linger did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(all_failures.is_empty(), "failed requests: {all_failures:?}");
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    assert_eq!(
        closes.load(Ordering::Relaxed),
        8,
        "every client was told to close"
    );
    // Flushed before exit, with no grace sleep: one line per answered request.
    let text = std::fs::read_to_string(&log).expect("the access log exists");
    let _ = std::fs::remove_file(&log);
    let lines = text
        .lines()
        .filter(|l| l.contains("\"termination\":\"ok\""))
        .count();
    assert_eq!(
        lines as u64,
        ok.load(Ordering::Relaxed),
        "access-log lines vs answers"
    );
}
