//! `linger probe` against a real nginx with `keepalive_timeout 2s; keepalive_requests 5;`:
//! the probe must find both numbers on the wire.
//!
//! nginx runs as a child process (`daemon off; master_process off;`) with every file it
//! writes inside a temporary directory, and is stopped by its PID when the test ends,
//! however it ends. Without `/usr/sbin/nginx` the test is skipped, unless
//! `LINGER_REQUIRE_NGINX=1` makes a missing nginx a failure (for CI images that ship it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use linger_lab::probe::{self, CloseKind, LimitOutcome, NoProgress, ProbeOptions};

const NGINX: &str = "/usr/sbin/nginx";
/// The outer bound on the test; far above the ~2.5 s a probe of this nginx takes.
const OUTER: Duration = Duration::from_secs(60);
/// How long nginx may take to accept connections after it starts.
const STARTUP: Duration = Duration::from_secs(5);
/// Tolerance on the measured idle close.
const IDLE_TOLERANCE: Duration = Duration::from_millis(500);

/// A running nginx and its directory; dropping it kills the child it spawned and waits
/// for it, then removes the directory.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 2s;
    keepalive_requests 5;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#
    )
}

/// A port that was free a moment ago: nginx binds it itself, so it can be taken in
/// between; the caller retries with another.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("127.0.0.1:0 must bind")
        .port()
}

/// Starts nginx on a free port, retrying a few times if it cannot bind.
async fn start_nginx() -> Nginx {
    let dir = std::env::temp_dir().join(format!(
        "linger-probe-nginx-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    let mut last_error = String::new();
    for attempt in 1..=5 {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("the nginx directory must be created");
        let port = free_port();
        let conf = dir.join("nginx.conf");
        fs::write(&conf, config(&dir, port)).expect("the nginx config must be written");
        let stderr = fs::File::create(dir.join("stderr.log")).expect("stderr.log must open");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            // Without -e nginx first opens its compiled-in error log, which a non-root
            // user cannot write.
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("nginx must start");
        let mut nginx = Nginx {
            child,
            dir: dir.clone(),
            port,
        };
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                last_error = format!(
                    "attempt {attempt}: nginx exited with {status}: {}{}",
                    fs::read_to_string(dir.join("stderr.log")).unwrap_or_default(),
                    fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
                break;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return nginx;
            }
            if tokio::time::Instant::now() > deadline {
                last_error = format!("attempt {attempt}: nginx did not accept within {STARTUP:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Dropping `nginx` kills this attempt's child (if still running) and removes the
        // directory before the next attempt.
        drop(nginx);
    }
    panic!("nginx could not be started: {last_error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_finds_nginx_keepalive_timeout_and_requests() {
    if !Path::new(NGINX).exists() {
        if std::env::var("LINGER_REQUIRE_NGINX").as_deref() == Ok("1") {
            panic!("{NGINX} is missing and LINGER_REQUIRE_NGINX=1 requires it");
        }
        eprintln!("skipped: {NGINX} is not installed (set LINGER_REQUIRE_NGINX=1 to fail instead)");
        return;
    }
    let nginx = start_nginx().await;
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    let opts = ProbeOptions {
        connections: 3,
        max_wait: Duration::from_secs(10),
        max_requests: 1000,
        intrusive: false,
    };
    let report = tokio::time::timeout(OUTER, probe::run(&url, &opts, &NoProgress))
        .await
        .expect("the probe must finish within the outer timeout")
        .expect("nginx must be reachable");
    drop(nginx);

    assert!(
        report
            .first_response
            .server
            .as_deref()
            .is_some_and(|s| s.starts_with("nginx")),
        "the probed port must be nginx's: {:?}",
        report.first_response
    );
    let idle = &report.idle_close;
    let median = idle
        .median()
        .unwrap_or_else(|| panic!("nginx must close idle connections: {idle:?}"));
    let expected = Duration::from_secs(2);
    let diff = median.abs_diff(expected);
    assert!(
        diff <= IDLE_TOLERANCE,
        "idle close: measured {median:?}, expected {expected:?} ± {IDLE_TOLERANCE:?}"
    );
    assert_eq!(idle.close_kind(), Some(CloseKind::Fin), "{idle:?}");

    let limit = &report.requests_per_connection;
    assert_eq!(limit.outcome, LimitOutcome::Limit, "{limit:?}");
    assert_eq!(limit.limit, Some(5), "{limit:?}");
    // nginx says `Connection: close` on the last response of a connection.
    assert_eq!(limit.announced, Some(true), "{limit:?}");
}
