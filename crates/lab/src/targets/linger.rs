//! linger as a target: the real binary, `linger serve` with a config written by the lab:
//! every key at its default except the timeouts the scenario scales.

use std::fs::File;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use super::process::{self, Proc, Scratch};
use super::{config_duration, scaled, setting, Running, Spec, StartError, Tuning};

const IDLE: Duration = Duration::from_secs(75);
const USER_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn settings(t: Tuning) -> Vec<String> {
    vec![
        "defaults (docs/config.md)".into(),
        setting(
            "listener.idle_timeout",
            scaled(IDLE, t.downstream_idle),
            IDLE,
            t.downstream_idle,
        ),
        "cluster.idle_timeout 1500ms".into(),
        setting(
            "cluster.response_timeout",
            scaled(RESPONSE_TIMEOUT, t.upstream_dead_path),
            RESPONSE_TIMEOUT,
            t.upstream_dead_path,
        ),
        setting(
            "cluster.tcp.user_timeout",
            scaled(USER_TIMEOUT, t.upstream_dead_path),
            USER_TIMEOUT,
            t.upstream_dead_path,
        ),
        "cluster.retry.max_retries 2".into(),
    ]
}

fn config(spec: &Spec, scratch: &Scratch) -> String {
    let t = spec.tuning;
    let mut c = String::new();
    c.push_str("# Written by `linger lab`: defaults, except the timeouts the scenario scales.\n");
    c.push_str("[admin]\nenabled = false\n\n");
    c.push_str(&format!(
        "[runtime]\naccess_log = {:?}\n\n",
        scratch.file("access.log").display().to_string()
    ));
    c.push_str("[[listener]]\naddress = \"127.0.0.1:0\"\n");
    if t.downstream_idle.is_some() {
        c.push_str(&format!(
            "idle_timeout = {:?}\n",
            config_duration(scaled(IDLE, t.downstream_idle))
        ));
    }
    c.push_str("\n[[route]]\ncluster = \"origin\"\n\n");
    c.push_str(&format!(
        "[[cluster]]\nname = \"origin\"\nendpoints = [{:?}]\n",
        spec.upstream.to_string()
    ));
    if t.upstream_dead_path.is_some() {
        c.push_str(&format!(
            "response_timeout = {:?}\n\n[cluster.tcp]\nuser_timeout = {:?}\n",
            config_duration(scaled(RESPONSE_TIMEOUT, t.upstream_dead_path)),
            config_duration(scaled(USER_TIMEOUT, t.upstream_dead_path)),
        ));
    }
    c
}

pub(super) async fn start(spec: &Spec) -> Result<Running, StartError> {
    let failed = |e: String| StartError::Failed(e);
    let mut scratch = Scratch::new("linger").map_err(|e| failed(e.to_string()))?;
    let conf = scratch.file("linger.toml");
    std::fs::write(&conf, config(spec, &scratch)).map_err(|e| failed(e.to_string()))?;
    let log = scratch.file("linger.log");
    let log_file = File::create(&log).map_err(|e| failed(e.to_string()))?;
    let mut cmd = process::command(&spec.linger_bin, spec.place.netns.as_deref());
    cmd.arg("serve")
        .arg("--config")
        .arg(&conf)
        .env("LINGER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file);
    let mut proc = Proc::spawn("linger", cmd).map_err(|e| failed(e.to_string()))?;
    // linger binds port 0 itself and logs the address it got.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = listening_addr(&text) {
            break addr;
        }
        if proc.exited() || tokio::time::Instant::now() > deadline {
            scratch.keep();
            return Err(failed(format!(
                "linger did not start (log in {}): {}",
                scratch.path.display(),
                process::tail(&log, 5)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(Running {
        kind: spec.kind,
        addr,
        proc: Some(proc),
        _scratch: Some(scratch),
    })
}

/// The address of the proxy listener in linger's log (`... listening ... addr=H:P`).
fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("listening") && !l.contains("admin listening"))
        .find_map(|l| {
            l.split("addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_address_is_read_from_the_log() {
        let log = "2026 INFO listener=main addr=127.0.0.1:41234 workers=2 listening\n";
        assert_eq!(
            listening_addr(log),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(
            listening_addr("2026 INFO admin listening addr=127.0.0.1:9\n"),
            None
        );
    }
}
