//! `linger serve` as an operator meets it: signals other than the drain's, and a port
//! that another process already holds.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;

/// One GET through `addr`; returns the status line.
fn get(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to linger");
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_owned()
}

/// A blocking origin that answers `ok` to every request on its connection.
fn origin() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
                    }
                }
            });
        }
    });
    addr
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sighup_is_logged_and_linger_keeps_serving() {
    let up = origin();
    let (mut child, rx) = support::spawn_serve_lines(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
        "--admin",
        "off",
        "--access-log",
        "off",
    ]);
    let line = support::wait_for_line(&rx, "listening");
    let addr = support::line_addr(&line).expect("the listening line has the address");
    assert!(get(&addr).starts_with("HTTP/1.1 200"));
    signal(child.id(), "-HUP");
    let logged = support::wait_for_line(&rx, "SIGHUP");
    assert!(logged.contains("reload is not supported"), "{logged}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not end linger"
    );
    assert!(
        get(&addr).starts_with("HTTP/1.1 200"),
        "still serving after SIGHUP"
    );
    signal(child.id(), "-TERM");
    assert_eq!(support::wait_exit(&mut child).code(), Some(0));
}

#[test]
fn an_admin_port_in_use_names_the_admin_listener_and_what_to_change() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_linger"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
            "--admin",
            &port,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the admin listener cannot bind {port}")),
        "{err}"
    );
    assert!(
        err.contains("--admin off") && err.contains("[admin] address"),
        "{err}"
    );
    drop(taken);
}
