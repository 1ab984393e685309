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

/// A stream still running at the drain deadline is cut then, and its request gets its
/// access-log line (`linger.drain.deadline`) before linger exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_at_the_drain_deadline_is_logged() {
    let origin = Origin::start(OriginConfig {
        stream_every: Some(Duration::from_millis(50)),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("linger-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let conf = dir.join("linger.toml");
    std::fs::write(
        &conf,
        format!(
            "[admin]\nenabled = false\n\n[runtime]\naccess_log = {:?}\ndrain_timeout = \"300ms\"\n\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\n\n[[cluster]]\nname = \"origin\"\n\
             endpoints = [\"{}\"]\n",
            log.display().to_string(),
            origin.addr
        ),
    )
    .unwrap();
    let (mut child, rx) = support::spawn_serve_lines(&["--config", conf.to_str().unwrap()]);
    let line = support::wait_for_line(&rx, "listening");
    let addr = support::line_addr(&line).expect("the listening line has the address");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /events HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    support::wait_for_line(&rx, "closed at the drain deadline");
    // The stream ends: linger closed the connection.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream did not end at the drain deadline"
    );
    let exit = tokio::task::spawn_blocking(move || support::wait_exit(&mut child))
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let text = std::fs::read_to_string(&log).expect("the access log exists");
    let _ = std::fs::remove_dir_all(&dir);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line for the one request: {text}");
    assert!(
        lines[0].contains("\"termination\":\"linger.drain.deadline\""),
        "{text}"
    );
    assert!(
        lines[0].contains("\"downstream_close\":\"drain_deadline\""),
        "{text}"
    );
}
