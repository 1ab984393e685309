//! `linger probe` against real servers: uvicorn, gunicorn's gthread worker, Node's
//! `http.createServer` and Go's `net/http`, each with a short idle timeout. Three probes in a
//! row must each measure the server's idle close within 50 ms.
//!
//! "The server's idle close" is the one it really makes, which is not always the number it
//! is configured with (Node 20 adds 1 s to `keepAliveTimeout`). So each test first measures
//! it with a plain socket, as a client with no probe code would (one request, then the time
//! from the response's last byte to the FIN), checks that against what the server is known
//! to do, and then holds each probe to it.
//!
//! The servers are in `tests/servers/` (see its README). Each listens on 127.0.0.1 on a port
//! the kernel picks: Node and Go bind port 0 and print the port; uvicorn and gunicorn get a
//! socket bound by `fd_launch.py`, which prints its port and becomes the server (same PID).
//! Every server is stopped by its PID when its test ends, however it ends. A missing tool
//! (python module, `node`, `go`) skips its test with `SKIPPED:` on stderr, unless
//! `LINGER_REQUIRE_REAL_SERVERS=1` makes it a failure (CI installs them all).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use linger_lab::probe::{self, NoProgress, ProbeOptions};
use linger_lab::targets::process::{tail, Proc, Scratch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How far a probe's (or the plain socket's) idle close may be from the server's.
const TOLERANCE: Duration = Duration::from_millis(50);
/// Probes in a row against each server.
const RUNS: usize = 3;
/// The outer bound on one probe; far above the 2-3 s one takes here.
const OUTER: Duration = Duration::from_secs(60);
/// How long a server may take to print its port.
const STARTUP: Duration = Duration::from_secs(30);
/// How long the plain socket waits for a response, and then for the close.
const SOCKET_WAIT: Duration = Duration::from_secs(15);

fn servers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers")
}

/// Whether `check` runs and succeeds. When it does not: a loud skip, or a failure with
/// `LINGER_REQUIRE_REAL_SERVERS=1`.
fn available(tool: &str, mut check: Command) -> bool {
    let ok = check
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("LINGER_REQUIRE_REAL_SERVERS").as_deref() == Ok("1") {
            panic!("{tool} is not installed and LINGER_REQUIRE_REAL_SERVERS=1 requires it");
        }
        // Straight to stderr: the test harness would hide eprintln! output of a test that
        // passes.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {tool} not installed (set LINGER_REQUIRE_REAL_SERVERS=1 to fail instead)"
        );
    }
    ok
}

/// Whether `name ARG` runs (`node --version`, `go version`).
fn program(name: &str, arg: &str) -> bool {
    let mut c = Command::new(name);
    c.arg(arg);
    available(name, c)
}

fn python_module(module: &str) -> bool {
    let mut c = Command::new("python3");
    c.args(["-c", &format!("import {module}")]);
    available(&format!("python module {module}"), c)
}

/// `python3 fd_launch.py python3 -m MODULE ARGS...`: `{fd}` in ARGS is the bound socket.
fn python_server(module: &str, args: &[&str]) -> Command {
    let dir = servers_dir();
    let mut c = Command::new("python3");
    c.arg(dir.join("fd_launch.py"))
        .args(["python3", "-m", module])
        .args(args)
        // Nothing written into the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(dir);
    c
}

/// A server that printed its port.
struct Server {
    proc: Proc,
    scratch: Scratch,
    port: u16,
}

/// Starts `cmd` with its output in `scratch` and waits for the port on its first line.
async fn start(name: &'static str, mut cmd: Command, scratch: Scratch) -> Server {
    let stdout = std::fs::File::create(scratch.file("stdout.log")).expect("stdout.log");
    let stderr = std::fs::File::create(scratch.file("stderr.log")).expect("stderr.log");
    cmd.stdout(stdout).stderr(stderr);
    let mut proc = Proc::spawn(name, cmd).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + STARTUP;
    loop {
        let out = std::fs::read_to_string(scratch.file("stdout.log")).unwrap_or_default();
        if let Some(port) = out
            .lines()
            .next()
            .filter(|_| out.contains('\n'))
            .and_then(|l| l.trim().parse().ok())
        {
            return Server {
                proc,
                scratch,
                port,
            };
        }
        if proc.exited() || Instant::now() > deadline {
            panic!(
                "{name} printed no port within {STARTUP:?} (exited: {}): {}",
                proc.exited(),
                tail(&scratch.file("stderr.log"), 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The idle close as a plain client sees it: one GET on a new connection, then the time from
/// the response's last byte to the server's FIN (or RST).
async fn socket_idle_close(port: u16) -> Duration {
    let mut sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the server accepts");
    sock.set_nodelay(true).expect("nodelay");
    sock.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("the request is sent");
    // Every server here answers "ok\n" with Content-Length: 3.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = tokio::time::timeout(SOCKET_WAIT, sock.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("a response");
        assert!(n > 0, "closed before the response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let idle_from = Instant::now();
    match tokio::time::timeout(SOCKET_WAIT, sock.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => idle_from.elapsed(),
        Ok(Ok(n)) => panic!("{n} bytes unasked on an idle connection"),
        Err(_) => panic!("no idle close within {SOCKET_WAIT:?}"),
    }
}

/// Starts the server, measures its idle close with a plain socket (which must be one of
/// `known`, the closes the server is documented to make), then probes it `RUNS` times.
async fn probe_matches_the_real_close(name: &'static str, cmd: Command, known: &[Duration]) {
    let scratch = Scratch::new(name).expect("a scratch directory");
    let mut server = start(name, cmd, scratch).await;
    let url = format!("http://127.0.0.1:{}/", server.port);
    let reference = socket_idle_close(server.port).await;
    // The defaults (3 connections, up to 1000 requests on one), as `linger probe` runs.
    let opts = ProbeOptions {
        max_wait: Duration::from_secs(10),
        ..Default::default()
    };
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let report = tokio::time::timeout(OUTER, probe::run(&url, &opts, &NoProgress))
            .await
            .expect("a probe finishes within the outer timeout")
            .expect("the server is reachable");
        let idle = &report.idle_close;
        assert_eq!(
            idle.closed(),
            3,
            "{name}: every idle connection closes: {idle:?}"
        );
        runs.push(idle.shortest().expect("an idle close"));
    }
    server.proc.stop().await;
    eprintln!("{name}: plain socket {reference:?}, probes {runs:?}");

    let close = known
        .iter()
        .copied()
        .find(|k| k.abs_diff(reference) <= TOLERANCE);
    if close.is_none_or(|c| runs.iter().any(|r| r.abs_diff(c) > TOLERANCE)) {
        server.scratch.keep();
        eprintln!("{name}'s logs: {}", server.scratch.path.display());
    }
    let close = close.unwrap_or_else(|| {
        panic!(
            "{name}: a plain socket saw the idle close after {reference:?}, expected one of \
             {known:?} ± {TOLERANCE:?}"
        )
    });
    for (i, r) in runs.iter().enumerate() {
        assert!(
            r.abs_diff(close) <= TOLERANCE,
            "{name}: probe {} measured {r:?}, the server closes after {close:?} ± {TOLERANCE:?} \
             (all runs: {runs:?})",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uvicorn_timeout_keep_alive_1() {
    if !python_module("uvicorn") {
        return;
    }
    let cmd = python_server(
        "uvicorn",
        &[
            "--fd",
            "{fd}",
            "--timeout-keep-alive",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
            "app:asgi",
        ],
    );
    // uvicorn starts its timer when the response is complete.
    probe_matches_the_real_close("uvicorn", cmd, &[Duration::from_secs(1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_gthread_keep_alive_2() {
    if !python_module("gunicorn") {
        return;
    }
    let mut args = vec![
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--keep-alive",
        "2",
        "--bind",
        "fd://{fd}",
        "--graceful-timeout",
        "2",
        "--log-level",
        "warning",
    ];
    // gunicorn 25 and later open a control socket in ~/.gunicorn unless told not to.
    let help = Command::new("python3")
        .args(["-m", "gunicorn", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if help.contains("--no-control-socket") {
        args.push("--no-control-socket");
    }
    args.push("app:wsgi");
    // Its loop checks for expired keep-alive connections at most 1 s apart, but with no
    // other traffic the check falls right after the 2 s (docs/probe.md, "Idle close").
    let cmd = python_server("gunicorn", &args);
    probe_matches_the_real_close("gunicorn", cmd, &[Duration::from_secs(2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_keep_alive_timeout_1000() {
    if !program("node", "--version") {
        return;
    }
    let mut cmd = Command::new("node");
    cmd.arg(servers_dir().join("node_server.js")).arg("1000");
    // Node 20.20 closes 1 s after keepAliveTimeout (its keep-alive timeout buffer); releases
    // without that buffer close at keepAliveTimeout.
    let known = [Duration::from_secs(2), Duration::from_secs(1)];
    probe_matches_the_real_close("node", cmd, &known).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_net_http_idle_timeout_1s() {
    if !program("go", "version") {
        return;
    }
    // Built from the standard library alone, with the build cache under target/tmp: no
    // module download, no network, nothing written to the user's Go directories.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-servers");
    let bin = tmp.join("go_server");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(servers_dir().join("go_server.go"))
        .env("GOCACHE", tmp.join("cache"))
        .env("GOPATH", tmp.join("path"))
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .status()
        .expect("go build runs");
    assert!(
        status.success(),
        "go build of tests/servers/go_server.go failed"
    );
    let mut cmd = Command::new(&bin);
    cmd.arg("1s");
    // net/http sets a read deadline of IdleTimeout when it starts waiting for the next
    // request.
    probe_matches_the_real_close("go", cmd, &[Duration::from_secs(1)]).await;
}
