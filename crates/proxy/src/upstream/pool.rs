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

/// Closes an idle connection; the upstream's own close of it, timed, teaches the
/// endpoint's [`Learned`] (right after its last response: R9; later: its idle close).
fn closed(
    conn: UpstreamConn,
    reason: CloseReason,
    since: Instant,
    now: Instant,
    metrics: &Metrics,
    learned: &Learned,
) {
    let by_upstream = matches!(
        reason,
        CloseReason::UpstreamFinIdle | CloseReason::UpstreamRst
    );
    if by_upstream && learned.upstream_closed(now - since, now) {
        metrics.race("R9", "close_after_response_learned");
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
    /// the way are closed with their reason. Connections idle longer than the endpoint's
    /// learned limit are not taken, but by a `probe` (a request that may be retried), which
    /// takes the oldest of them.
    pub fn checkout(
        &self,
        now: Instant,
        metrics: &Metrics,
        idle_gauge: &Gauge,
        learned: &Learned,
        may_retry: bool,
    ) -> Option<UpstreamConn> {
        let limit = learned.reuse_limit();
        loop {
            let entry = {
                let mut idle = self.idle.lock().expect("pool lock");
                let top = idle.last()?;
                if limit.is_some_and(|l| now.saturating_duration_since(top.since) > l) {
                    // Every pooled connection is idle longer than the limit (the newest is
                    // on top).
                    if !(may_retry && learned.probe_due(now)) {
                        return None;
                    }
                    idle.remove(0)
                } else {
                    idle.pop()?
                }
            };
            idle_gauge.dec();
            match unusable(&entry.conn, entry.expires, now, true) {
                None => {
                    let mut conn = entry.conn;
                    conn.idle_age = now.saturating_duration_since(entry.since);
                    return Some(conn);
                }
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
        let now = crate::io::clock::now();
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

    /// Closes idle connections past their deadline or ended by the upstream, and those
    /// idle longer than the learned limit but the oldest (kept for a probe).
    pub fn reap(&self, now: Instant, idle_gauge: &Gauge, metrics: &Metrics, learned: &Learned) {
        let limit = learned.reuse_limit();
        let mut closed_now = Vec::new();
        {
            let mut idle = self.idle.lock().expect("pool lock");
            let mut probe_kept = false;
            let mut i = 0;
            while i < idle.len() {
                let e = &idle[i];
                let reason = unusable(&e.conn, e.expires, now, true).or_else(|| {
                    let over = limit.is_some_and(|l| now.saturating_duration_since(e.since) > l);
                    if over && probe_kept {
                        Some(CloseReason::PoolLearnedIdle)
                    } else {
                        probe_kept |= over;
                        None
                    }
                });
                match reason {
                    Some(reason) => closed_now.push((idle.remove(i), reason)),
                    None => i += 1,
                }
            }
        }
        for (e, reason) in closed_now {
            idle_gauge.dec();
            closed(e.conn, reason, e.since, now, metrics, learned);
        }
    }
}
