//! nginx as a target, from Debian's package: the reverse-proxy setup its documentation
//! gives for keep-alive to upstreams (`keepalive` in the upstream block, HTTP/1.1, an empty
//! `Connection` header), every other directive at its default, including retries
//! (`proxy_next_upstream error timeout`, never for a non-idempotent request).

use std::net::SocketAddr;
use std::time::Duration;

use super::process::{self, Scratch};
use super::{config_duration, launch, scaled, setting, Running, Spec, Tuning};

const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
const PROXY_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn settings(t: Tuning) -> Vec<String> {
    vec![
        "upstream keepalive 32".into(),
        "proxy_http_version 1.1, proxy_set_header Connection \"\"".into(),
        setting(
            "keepalive_timeout",
            scaled(KEEPALIVE_TIMEOUT, t.downstream_idle),
            KEEPALIVE_TIMEOUT,
            t.downstream_idle,
        ),
        setting(
            "proxy_read_timeout/proxy_send_timeout",
            scaled(PROXY_TIMEOUT, t.upstream_dead_path),
            PROXY_TIMEOUT,
            t.upstream_dead_path,
        ),
        "proxy_next_upstream error timeout (default)".into(),
        "upstream keepalive_timeout 60s, keepalive_requests 1000 (defaults)".into(),
    ]
}

fn config(spec: &Spec, scratch: &Scratch, listen: SocketAddr) -> String {
    let t = spec.tuning;
    let dir = scratch.path.display();
    // As root, workers would switch to `nobody` and could not write the scratch directory.
    let user = if rustix::process::geteuid().is_root() {
        "user root root;\n"
    } else {
        ""
    };
    let keepalive_timeout = config_duration(scaled(KEEPALIVE_TIMEOUT, t.downstream_idle));
    let proxy_timeout = config_duration(scaled(PROXY_TIMEOUT, t.upstream_dead_path));
    format!(
        "# Written by `linger lab`.\n\
         {user}daemon off;\n\
         master_process on;\n\
         worker_processes auto;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log notice;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   access_log {dir}/access.log;\n\
         \x20   client_body_temp_path {dir}/body;\n\
         \x20   proxy_temp_path {dir}/proxy;\n\
         \x20   fastcgi_temp_path {dir}/fastcgi;\n\
         \x20   uwsgi_temp_path {dir}/uwsgi;\n\
         \x20   scgi_temp_path {dir}/scgi;\n\
         \x20   keepalive_timeout {keepalive_timeout};\n\
         \x20   upstream origin {{\n\
         \x20       server {upstream};\n\
         \x20       keepalive 32;\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {listen};\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://origin;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_read_timeout {proxy_timeout};\n\
         \x20           proxy_send_timeout {proxy_timeout};\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        upstream = spec.upstream,
    )
}

pub(super) async fn start(spec: &Spec, listen: SocketAddr) -> Result<Running, String> {
    let bin = process::find_program("nginx").ok_or("nginx is not installed")?;
    let scratch = Scratch::new("nginx").map_err(|e| e.to_string())?;
    let conf = scratch.file("nginx.conf");
    std::fs::write(&conf, config(spec, &scratch, listen)).map_err(|e| e.to_string())?;
    let mut cmd = process::command(&bin, spec.place.netns.as_deref());
    cmd.arg("-p")
        .arg(&scratch.path)
        .arg("-e")
        .arg(scratch.file("error.log"))
        .arg("-c")
        .arg(&conf);
    let log = scratch.file("error.log");
    launch(spec, listen, "nginx", cmd, scratch, "stdout.log", &log).await
}
