//! Starting the `linger` binary from a test and reading the addresses it logs.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Starts `linger serve ARGS` with info logging. Its stderr is echoed to the test's, and
/// every `NAME addr=HOST:PORT` line is passed on as (line, address).
pub fn spawn_serve(args: &[&str]) -> (Child, mpsc::Receiver<(String, String)>) {
    let (child, lines) = spawn_serve_lines(args);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            if let Some(addr) = line_addr(&line) {
                let _ = tx.send((line, addr));
            }
        }
    });
    (child, rx)
}

/// The `addr=HOST:PORT` of a logged line, if it has one.
pub fn line_addr(line: &str) -> Option<String> {
    line.split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .map(str::to_owned)
}

/// Waits for the logged address of the proxy listener and, with `admin`, of the admin
/// listener.
pub fn addresses(rx: &mpsc::Receiver<(String, String)>, admin: bool) -> (String, Option<String>) {
    let (mut proxy, mut admin_addr) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.is_none() || (admin && admin_addr.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((line, a)) if line.contains("admin listening") => admin_addr = Some(a),
            Ok((line, a)) if line.contains("listening") => proxy = Some(a),
            Ok(_) => {}
            Err(_) => panic!(
                "linger did not log its addresses within 20 s (proxy {proxy:?}, admin {admin_addr:?})"
            ),
        }
    }
    (proxy.expect("proxy address"), admin_addr)
}

/// Starts `linger serve ARGS` and passes on every line it logs.
pub fn spawn_serve_lines(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_linger"));
    cmd.arg("serve").args(args);
    spawn_lines(cmd, "linger")
}

/// Starts `cmd` (linger, or a program that runs it) with info logging, echoes its stderr
/// to the test's with `tag` in front, and passes on every line.
pub fn spawn_lines(mut cmd: Command, tag: &'static str) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .env("LINGER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tag} must start: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{tag}: {line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits (at most 20 s) for a logged line that contains `text`, and returns it.
pub fn wait_for_line(rx: &mpsc::Receiver<String>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(_) => panic!("linger did not log {text:?} within 20 s"),
        }
    }
}

/// Waits (at most 20 s) for `child` to exit.
pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().expect("wait for linger") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("linger did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A started binary, killed (by its own PID) and reaped when dropped, so that a failed
/// assertion leaves no process behind.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
