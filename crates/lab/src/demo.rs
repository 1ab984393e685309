//! `linger demo`: a built-in origin that closes idle keep-alive connections (like Node,
//! gunicorn or uvicorn do), a keep-alive client that reuses connections with gaps around
//! that idle time (like a load balancer or an SDK), once straight to the origin and once
//! through linger. Straight to the origin, requests die in the race (R1); through linger,
//! none does.

use std::net::SocketAddr;
use std::time::Duration;

use crate::inproc::InProcess;
use crate::peers::client::gaps;
use crate::peers::{KeepAliveClient, Origin, OriginConfig, Outcome};

/// The result of one target's run.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub target: String,
    pub sent: u64,
    pub ok: u64,
    pub server_error: u64,
    pub reset: u64,
    pub eof: u64,
    pub truncated: u64,
    pub timeout: u64,
    pub connect_failed: u64,
    pub origin_requests: u64,
    pub origin_connections: u64,
    pub duplicates: u64,
}

// === impl Tally ===

impl Tally {
    pub fn failures(&self) -> u64 {
        self.sent - self.ok
    }

    fn add(&mut self, o: &Outcome) {
        self.sent += 1;
        match o {
            Outcome::Ok(_) => self.ok += 1,
            Outcome::ServerError(_) => self.server_error += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::EofBeforeResponse => self.eof += 1,
            Outcome::Truncated => self.truncated += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::ConnectFailed => self.connect_failed += 1,
        }
    }
}

/// Sends `n` sequential requests on one reused connection with seeded gaps.
pub async fn sequential(
    target: &str,
    addr: SocketAddr,
    method: &str,
    schedule: &[Duration],
) -> Tally {
    let mut client = KeepAliveClient::new(addr);
    let mut tally = Tally {
        target: target.to_string(),
        ..Default::default()
    };
    for (i, gap) in schedule.iter().enumerate() {
        let id = format!("{target}-{i}");
        let body: &[u8] = if method == "POST" { b"payload" } else { b"" };
        let o = client
            .request(
                method,
                "/",
                &[("x-request-id", &id)],
                body,
                Duration::from_secs(5),
            )
            .await;
        tally.add(&o);
        tokio::time::sleep(*gap).await;
    }
    tally
}

/// Runs the demo and returns the two tallies (direct, linger).
pub async fn run(requests: usize, seed: u64) -> std::io::Result<Vec<Tally>> {
    let idle = Duration::from_millis(200);
    let origin_cfg = OriginConfig {
        idle_close: Some(idle),
        ..Default::default()
    };
    let direct_origin = Origin::start(origin_cfg.clone()).await?;
    let linger_origin = Origin::start(origin_cfg).await?;
    let linger = InProcess::start(&[linger_origin.addr], |_| {})?;
    let schedule = gaps(seed, requests, idle, Duration::from_millis(100));
    let (mut d, mut l) = tokio::join!(
        sequential("direct", direct_origin.addr, "GET", &schedule),
        sequential("linger", linger.addr, "GET", &schedule),
    );
    d.origin_requests = direct_origin.stats.requests();
    d.origin_connections = direct_origin.stats.connections();
    d.duplicates = direct_origin.stats.duplicates();
    l.origin_requests = linger_origin.stats.requests();
    l.origin_connections = linger_origin.stats.connections();
    l.duplicates = linger_origin.stats.duplicates();
    Ok(vec![d, l])
}

/// The table the demo prints.
pub fn render(tallies: &[Tally]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<8} {:>5} {:>5} {:>8} {:>5} {:>5} {:>5} {:>7} {:>8} {:>10} {:>5}\n",
        "target",
        "sent",
        "ok",
        "failed",
        "5xx",
        "reset",
        "eof",
        "timeout",
        "origin",
        "origin",
        "dup"
    ));
    out.push_str(&format!(
        "{:<8} {:>5} {:>5} {:>8} {:>5} {:>5} {:>5} {:>7} {:>8} {:>10} {:>5}\n",
        "", "", "", "", "", "", "", "", "requests", "conns", ""
    ));
    for t in tallies {
        out.push_str(&format!(
            "{:<8} {:>5} {:>5} {:>8} {:>5} {:>5} {:>5} {:>7} {:>8} {:>10} {:>5}\n",
            t.target,
            t.sent,
            t.ok,
            t.failures(),
            t.server_error,
            t.reset,
            t.eof + t.truncated,
            t.timeout,
            t.origin_requests,
            t.origin_connections,
            t.duplicates
        ));
    }
    out
}
