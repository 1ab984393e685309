//! linger runs under valgrind. `bench/instructions.sh` counts the proxy's work per request
//! under callgrind, and valgrind is how a user chases a memory or descriptor leak, so a
//! worker that cannot start there is a defect. Valgrind gives a program no vDSO of the
//! kernel's: code that finds the vDSO itself, from the auxiliary vector, reads memory
//! that is not mapped (rustix's own system-call backend does, for `clock_gettime`,
//! bytecodealliance/rustix#1559; linger builds rustix on libc for this reason).
//!
//! Without valgrind the test says so and passes; `LINGER_REQUIRE_VALGRIND=1` (CI sets it)
//! makes that a failure.
#![cfg(target_os = "linux")]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use linger_lab::peers::{KeepAliveClient, Origin, OriginConfig, Outcome};

fn valgrind_present() -> bool {
    let found = Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("LINGER_REQUIRE_VALGRIND").as_deref() == Ok("1") {
            panic!("valgrind is not installed and LINGER_REQUIRE_VALGRIND=1 requires it");
        }
        eprintln!(
            "SKIPPED: valgrind not installed (set LINGER_REQUIRE_VALGRIND=1 to fail instead)"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_under_valgrind() {
    if !valgrind_present() {
        return;
    }
    let origin = Origin::start(OriginConfig::default()).await.unwrap();
    let upstream = origin.addr.to_string();
    // `--tool=none` runs the program on valgrind's core, as every tool does, without a
    // tool's slowdown. The worker's first poll reads its CPU clock, so one request takes
    // every worker through it.
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--tool=none",
        "--quiet",
        env!("CARGO_BIN_EXE_linger"),
        "serve",
    ])
    .args(["--listen", "127.0.0.1:0", "--upstream", &upstream])
    .args(["--workers", "2", "--access-log", "off", "--admin", "off"]);
    let (child, rx) = support::spawn_lines(cmd, "valgrind linger");
    let mut child = support::Running(child);

    // Its log, echoed to the test's stderr, says why if it never listens.
    let line = support::wait_for_line(&rx, "listening");
    let addr = support::line_addr(&line).expect("the listening line has the address");

    // Connections at once, so that both workers take some, each with a few requests.
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        set.spawn(async move {
            let mut c = KeepAliveClient::new(addr);
            let mut answers = Vec::new();
            for _ in 0..3 {
                answers.push(
                    c.request("GET", "/", &[], b"", Duration::from_secs(30))
                        .await,
                );
            }
            answers
        });
    }
    while let Some(done) = set.join_next().await {
        for a in done.unwrap() {
            assert!(matches!(a, Outcome::Ok(200)), "{a:?}");
        }
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "linger under valgrind exited after serving"
    );
}
