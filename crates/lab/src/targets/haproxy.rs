//! HAProxy as a target, from Debian's package: the `defaults` of Debian's
//! `/etc/haproxy/haproxy.cfg` (mode http, `timeout connect 5s`, `client 50s`,
//! `server 50s`), and HAProxy's own defaults for the rest: keep-alive on both sides,
//! idle server connections pooled with `http-reuse safe`, `retries 3` with
//! `retry-on conn-failure`.

use std::net::SocketAddr;
use std::time::Duration;

use super::process::{self, Scratch};
use super::{config_duration, launch, scaled, setting, Running, Spec, Tuning};

const CLIENT: Duration = Duration::from_secs(50);
const SERVER: Duration = Duration::from_secs(50);
const CONNECT: Duration = Duration::from_secs(5);

pub(super) fn settings(t: Tuning) -> Vec<String> {
    vec![
        "Debian's defaults section; http-reuse safe, option http-keep-alive (defaults)".into(),
        setting(
            "timeout client (keep-alive idle)",
            scaled(CLIENT, t.downstream_idle),
            CLIENT,
            t.downstream_idle,
        ),
        setting(
            "timeout server",
            scaled(SERVER, t.upstream_dead_path),
            SERVER,
            t.upstream_dead_path,
        ),
        setting(
            "timeout connect",
            scaled(CONNECT, t.upstream_dead_path),
            CONNECT,
            t.upstream_dead_path,
        ),
        "retries 3, retry-on conn-failure (defaults)".into(),
    ]
}

fn config(spec: &Spec, listen: SocketAddr) -> String {
    let t = spec.tuning;
    let client = config_duration(scaled(CLIENT, t.downstream_idle));
    let server = config_duration(scaled(SERVER, t.upstream_dead_path));
    let connect = config_duration(scaled(CONNECT, t.upstream_dead_path));
    format!(
        "# Written by `linger lab`.\n\
         global\n\
         \x20   maxconn 4096\n\
         \n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect {connect}\n\
         \x20   timeout client {client}\n\
         \x20   timeout server {server}\n\
         \n\
         frontend fe\n\
         \x20   bind {listen}\n\
         \x20   default_backend be\n\
         \n\
         backend be\n\
         \x20   server origin {upstream}\n",
        upstream = spec.upstream,
    )
}

pub(super) async fn start(spec: &Spec, listen: SocketAddr) -> Result<Running, String> {
    let bin = process::find_program("haproxy").ok_or("haproxy is not installed")?;
    let scratch = Scratch::new("haproxy").map_err(|e| e.to_string())?;
    let conf = scratch.file("haproxy.cfg");
    std::fs::write(&conf, config(spec, listen)).map_err(|e| e.to_string())?;
    let mut cmd = process::command(&bin, spec.place.netns.as_deref());
    // -db: stay in the foreground, so the PID we hold is HAProxy's.
    cmd.arg("-db").arg("-f").arg(&conf);
    let log = scratch.file("haproxy.log");
    launch(spec, listen, "haproxy", cmd, scratch, "haproxy.log", &log).await
}
