//! One endpoint's idle connections, most recently used last (taken first).

use std::io;
use std::mem::MaybeUninit;
use std::sync::Mutex;

use tokio::time::Instant;

use super::UpstreamConn;
use crate::observe::metrics::ClusterLabels;
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

/// What a non-blocking look at an idle socket found.
enum Peek {
    Alive,
    Eof,
    Data,
    Error,
}

fn peek(conn: &UpstreamConn) -> Peek {
    let mut buf = [MaybeUninit::<u8>::uninit(); 1];
    // The socket is non-blocking: no data and no EOF gives WouldBlock.
    match socket2::SockRef::from(&*conn.shared.stream).peek(&mut buf) {
        Ok(0) => Peek::Eof,
        Ok(_) => Peek::Data,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Peek::Alive,
        Err(_) => Peek::Error,
    }
}

// === impl Pool ===

impl Pool {
    pub fn new(max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }

    pub fn checkout(
        &self,
        now: Instant,
        metrics: &Metrics,
        labels: &ClusterLabels,
    ) -> Option<UpstreamConn> {
        loop {
            let entry = self.idle.lock().expect("pool lock").pop()?;
            metrics.pool_idle.get_or_create(labels).dec();
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
            match peek(&conn) {
                Peek::Alive => return Some(conn),
                Peek::Eof => {
                    metrics.race("R9", "fin_detected_at_checkout");
                    conn.abort(CloseReason::UpstreamFinIdle);
                }
                Peek::Data => conn.abort(CloseReason::UpstreamUnexpectedData),
                Peek::Error => conn.abort(CloseReason::UpstreamRst),
            }
        }
    }

    pub fn checkin(
        &self,
        mut conn: UpstreamConn,
        expires: Instant,
        metrics: &Metrics,
        labels: &ClusterLabels,
    ) {
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
        metrics.pool_idle.get_or_create(labels).inc();
    }

    pub fn reap(&self, now: Instant, metrics: &Metrics, labels: &ClusterLabels) {
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
            metrics.pool_idle.get_or_create(labels).dec();
            if e.expires <= now {
                e.conn.abort(CloseReason::PoolIdleTimeout);
            }
        }
    }
}
