//! One endpoint's idle connections, most recently used last (taken first).

use std::sync::Mutex;

use tokio::time::Instant;

use prometheus_client::metrics::gauge::Gauge;

use super::UpstreamConn;
use crate::observe::{CloseReason, Metrics};

#[derive(Debug)]
struct Idle {
    conn: UpstreamConn,
    expires: Instant,
}

#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

// === impl Pool ===

impl Pool {
    pub fn new(max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    pub fn checkout(
        &self,
        now: Instant,
        metrics: &Metrics,
        idle_gauge: &Gauge,
    ) -> Option<UpstreamConn> {
        loop {
            let entry = self.idle.lock().expect("pool lock").pop()?;
            idle_gauge.dec();
            let conn = entry.conn;
            if entry.expires <= now {
                conn.abort(CloseReason::PoolIdleTimeout);
                continue;
            }
            if conn.sender.is_closed() {
                // The connection's task saw the upstream close while idle (R1, R9).
                metrics.race("R1", "idle_close_detected_before_reuse");
                continue;
            }
            return Some(conn);
        }
    }

    pub fn checkin(&self, mut conn: UpstreamConn, expires: Instant, idle_gauge: &Gauge) {
        if conn.sender.is_closed() {
            return;
        }
        conn.reused = false;
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() >= self.max_idle {
            drop(idle);
            conn.abort(CloseReason::PoolFull);
            return;
        }
        idle.push(Idle { conn, expires });
        idle_gauge.inc();
    }

    pub fn reap(&self, now: Instant, idle_gauge: &Gauge) {
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.lock().expect("pool lock");
            let mut i = 0;
            while i < idle.len() {
                if idle[i].expires <= now || idle[i].conn.sender.is_closed() {
                    expired.push(idle.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        for e in expired {
            idle_gauge.dec();
            if e.expires <= now {
                e.conn.abort(CloseReason::PoolIdleTimeout);
            }
        }
    }
}
