//! One endpoint's idle connections, most recently used last (taken first).
//!
//! An idle connection is a bare socket: no task reads it. At checkout a non-blocking peek
//! catches a FIN, an RST or stray bytes that arrived since its last response (R1, R9), and
//! the worker's reaper looks at every idle connection on each sweep, so an upstream's close
//! is noticed (and explained) without a request to find it.

use std::sync::Mutex;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use super::conn::{Liveness, UpstreamConn};
use super::learn::Learned;
use crate::error::peer_close_reason;
use crate::observe::{CloseReason, Metrics};

#[derive(Debug)]
struct Idle {
    conn: UpstreamConn,
    /// When its last response ended.
    since: Instant,
    expires: Instant,
}

#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

/// Why an idle connection cannot be used, if it cannot. `peek` looks at the socket itself
/// (a syscall); without it only what linger already saw counts.
fn unusable(
    conn: &UpstreamConn,
    expires: Instant,
    now: Instant,
    peek: bool,
) -> Option<CloseReason> {
    if expires <= now {
        return Some(CloseReason::PoolIdleTimeout);
    }
    match conn.liveness(peek) {
        Liveness::Open => None,
        Liveness::StrayBytes => Some(CloseReason::UpstreamUnexpectedData),
        Liveness::Gone(p) => Some(match peer_close_reason(p) {
            // The upstream closed a connection that sat idle in the pool.
            CloseReason::UpstreamFinBusy => CloseReason::UpstreamFinIdle,
            r => r,
        }),
    }
}

/// Closes an idle connection; an upstream FIN right after its last response teaches the
/// endpoint's [`Learned`].
fn closed(
    conn: UpstreamConn,
    reason: CloseReason,
    since: Instant,
    now: Instant,
    metrics: &Metrics,
    learned: &Learned,
) {
    if reason == CloseReason::UpstreamFinIdle && learned.upstream_closed(now - since, now) {
        metrics.race("R9", "close_after_response_learned");
        tracing::info!(
            upstream_conn = conn.id,
            idle_ms = (now - since).as_millis() as u64,
            "the upstream closes right after its responses: requests that may not be retried \
             go to fresh connections to this endpoint"
        );
    }
    conn.close(reason);
}

// === impl Pool ===

impl Pool {
    pub fn new(max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// The most recently used connection that is still usable; the unusable ones met on
    /// the way are closed with their reason.
    pub fn checkout(
        &self,
        now: Instant,
        metrics: &Metrics,
        idle_gauge: &Gauge,
        learned: &Learned,
    ) -> Option<UpstreamConn> {
        loop {
            let entry = self.idle.lock().expect("pool lock").pop()?;
            idle_gauge.dec();
            match unusable(&entry.conn, entry.expires, now, true) {
                None => return Some(entry.conn),
                Some(reason) => {
                    if reason != CloseReason::PoolIdleTimeout {
                        // Caught before a request went out on it (R1, R9).
                        metrics.race("R1", "idle_close_detected_before_reuse");
                    }
                    closed(entry.conn, reason, entry.since, now, metrics, learned);
                }
            }
        }
    }

    /// Pools a connection after a complete exchange, or closes it if the pool is full or
    /// the upstream already ended it.
    pub fn checkin(
        &self,
        mut conn: UpstreamConn,
        expires: Instant,
        idle_gauge: &Gauge,
        metrics: &Metrics,
        learned: &Learned,
    ) {
        let now = Instant::now();
        // The socket is looked at when the connection is next taken (or swept), not now:
        // a connection used again at once costs one look, not two.
        if let Some(reason) = unusable(&conn, expires, now, false) {
            closed(conn, reason, now, now, metrics, learned);
            return;
        }
        conn.reused = false;
        // An idle connection holds no buffer.
        conn.buf = bytes::BytesMut::new();
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() >= self.max_idle {
            drop(idle);
            conn.close(CloseReason::PoolFull);
            return;
        }
        idle.push(Idle {
            conn,
            since: now,
            expires,
        });
        idle_gauge.inc();
    }

    /// Closes idle connections past their deadline or ended by the upstream.
    pub fn reap(&self, now: Instant, idle_gauge: &Gauge, metrics: &Metrics, learned: &Learned) {
        let mut closed_now = Vec::new();
        {
            let mut idle = self.idle.lock().expect("pool lock");
            let mut i = 0;
            while i < idle.len() {
                if let Some(reason) = unusable(&idle[i].conn, idle[i].expires, now, true) {
                    closed_now.push((idle.remove(i), reason));
                } else {
                    i += 1;
                }
            }
        }
        for (e, reason) in closed_now {
            idle_gauge.dec();
            closed(e.conn, reason, e.since, now, metrics, learned);
        }
    }
}
