//! linger as a target: the real binary, `linger serve` with a config written by the lab:
//! every key at its default except the timeouts the scenario scales.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use linger_proxy::config::ConfigDuration;

use super::process::{self, Proc, Scratch};
use super::{config_duration, scaled, setting, Running, Spec, StartError, Tuning};

/// The defaults the linger binary reports of itself (`linger check --print-config`), read
/// once per process by [`load_defaults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub idle: Duration,
    pub pool_idle: Duration,
    pub response_timeout: Duration,
    pub user_timeout: Duration,
    pub max_retries: u64,
}

static DEFAULTS: OnceLock<Result<Defaults, String>> = OnceLock::new();

/// Asks `bin` for its defaults; later calls return the first answer.
pub fn load_defaults(bin: &Path) -> Result<Defaults, String> {
    DEFAULTS.get_or_init(|| read_defaults(bin)).clone()
}

fn read_defaults(bin: &Path) -> Result<Defaults, String> {
    let scratch = Scratch::new("linger-defaults").map_err(|e| e.to_string())?;
    let conf = scratch.file("minimal.toml");
    std::fs::write(
        &conf,
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[cluster]]\nname = \"origin\"\nendpoints = [\"127.0.0.1:1\"]\n",
    )
    .map_err(|e| e.to_string())?;
    let out = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&conf)
        .arg("--print-config")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} check --print-config: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_defaults(&String::from_utf8_lossy(&out.stdout))
}

/// The defaults in `linger check --print-config`'s output.
fn parse_defaults(printed: &str) -> Result<Defaults, String> {
    let body: String = printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let v: toml::Value = toml::from_str(&body).map_err(|e| format!("--print-config: {e}"))?;
    let at = |path: &[&str]| -> Result<&toml::Value, String> {
        let mut cur = &v;
        for key in path {
            cur = match cur {
                toml::Value::Array(a) => a.first(),
                other => Some(other),
            }
            .and_then(|c| c.get(key))
            .ok_or_else(|| format!("--print-config has no {}", path.join(".")))?;
        }
        Ok(cur)
    };
    let duration = |path: &[&str]| -> Result<Duration, String> {
        let s = at(path)?
            .as_str()
            .ok_or_else(|| format!("{} is not a duration", path.join(".")))?;
        ConfigDuration::parse(s).map(|d| d.0)
    };
    Ok(Defaults {
        idle: duration(&["listener", "idle_timeout"])?,
        pool_idle: duration(&["cluster", "idle_timeout"])?,
        response_timeout: duration(&["cluster", "response_timeout"])?,
        user_timeout: duration(&["cluster", "tcp", "user_timeout"])?,
        max_retries: at(&["cluster", "retry", "max_retries"])?
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or("cluster.retry.max_retries is not a count")?,
    })
}

pub(super) fn settings(t: Tuning) -> Vec<String> {
    let d = match DEFAULTS.get() {
        Some(Ok(d)) => *d,
        Some(Err(e)) => return vec![format!("defaults (not readable from the binary: {e})")],
        None => return vec!["defaults (docs/config.md)".into()],
    };
    vec![
        "defaults (linger check --print-config)".into(),
        setting(
            "listener.idle_timeout",
            scaled(d.idle, t.downstream_idle),
            d.idle,
            t.downstream_idle,
        ),
        format!("cluster.idle_timeout {}", config_duration(d.pool_idle)),
        setting(
            "cluster.response_timeout",
            scaled(d.response_timeout, t.upstream_dead_path),
            d.response_timeout,
            t.upstream_dead_path,
        ),
        setting(
            "cluster.tcp.user_timeout",
            scaled(d.user_timeout, t.upstream_dead_path),
            d.user_timeout,
            t.upstream_dead_path,
        ),
        format!("cluster.retry.max_retries {}", d.max_retries),
    ]
}

fn config(spec: &Spec, scratch: &Scratch, d: &Defaults) -> String {
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
            config_duration(scaled(d.idle, t.downstream_idle))
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
            config_duration(scaled(d.response_timeout, t.upstream_dead_path)),
            config_duration(scaled(d.user_timeout, t.upstream_dead_path)),
        ));
    }
    c
}

pub(super) async fn start(spec: &Spec) -> Result<Running, StartError> {
    let failed = |e: String| StartError::Failed(e);
    let defaults = load_defaults(&spec.linger_bin).map_err(failed)?;
    let mut scratch = Scratch::new("linger").map_err(|e| failed(e.to_string()))?;
    let conf = scratch.file("linger.toml");
    std::fs::write(&conf, config(spec, &scratch, &defaults)).map_err(|e| failed(e.to_string()))?;
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
    fn defaults_are_read_from_print_config() {
        let printed = "# x.toml: valid.\n\n[[listener]]\naddress = \"a\"\nidle_timeout = \"75s\"\n\n[[cluster]]\nidle_timeout = \"1500ms\"\nresponse_timeout = \"30s\"\n\n[cluster.retry]\nmax_retries = 2\n\n[cluster.tcp]\nuser_timeout = \"30s\"\n";
        assert_eq!(
            parse_defaults(printed),
            Ok(Defaults {
                idle: Duration::from_secs(75),
                pool_idle: Duration::from_millis(1500),
                response_timeout: Duration::from_secs(30),
                user_timeout: Duration::from_secs(30),
                max_retries: 2,
            })
        );
        assert!(parse_defaults("[[listener]]\n")
            .unwrap_err()
            .contains("listener.idle_timeout"));
    }

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
