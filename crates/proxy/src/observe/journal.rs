//! The connection journal: a short, timestamped list of what happened to one connection
//! (accepted, request head in, FIN received, returned to the pool, closed and why), kept
//! in memory next to its socket's counters.
//!
//! It is bounded: past [`MAX_EVENTS`] the oldest events after the first are dropped and
//! counted, so a connection that lives for days still costs a fixed amount. Recording is a
//! short uncontended lock and a push; details are only formatted where they say something
//! the kind does not.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;

/// Events kept per connection. 32 covers the whole life of most connections (accept, a few
/// requests, the close) and the last requests of long-lived ones. An event is 48 bytes plus
/// its detail text: 1.5 KiB plus the details when full.
pub const MAX_EVENTS: usize = 32;

/// Where a connection is in its life. Downstream: idle, reading, waiting, responding,
/// closing. Upstream: active, pooled, closing. Both end closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    /// Downstream: no request in flight, waiting for the next one.
    Idle = 0,
    /// Downstream: the first bytes of a request head arrived.
    Reading = 1,
    /// Downstream: the request went to the upstream; no response head yet.
    Waiting = 2,
    /// Downstream: the response is being sent.
    Responding = 3,
    /// Upstream: carrying a request.
    Active = 4,
    /// Upstream: idle in the pool.
    Pooled = 5,
    /// Closing: FIN sent or being sent, lingering.
    Closing = 6,
    Closed = 7,
}

impl ConnState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Reading,
            2 => Self::Waiting,
            3 => Self::Responding,
            4 => Self::Active,
            5 => Self::Pooled,
            6 => Self::Closing,
            7 => Self::Closed,
            _ => Self::Idle,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Reading => "reading",
            Self::Waiting => "waiting",
            Self::Responding => "responding",
            Self::Active => "active",
            Self::Pooled => "pooled",
            Self::Closing => "closing",
            Self::Closed => "closed",
        }
    }
}

/// One event.
#[derive(Debug, Clone)]
struct Event {
    /// Since the journal was opened.
    at: Duration,
    kind: &'static str,
    detail: Option<Box<str>>,
}

/// One event, as the admin listener shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    /// Milliseconds since the connection opened.
    pub t_ms: f64,
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Debug, Default)]
struct Events {
    list: VecDeque<Event>,
    dropped: u32,
}

/// The journal of one connection.
#[derive(Debug)]
pub struct Journal {
    opened: Instant,
    opened_wall: SystemTime,
    state: AtomicU8,
    events: Mutex<Events>,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            opened: Instant::now(),
            opened_wall: SystemTime::now(),
            state: AtomicU8::new(ConnState::Idle as u8),
            events: Mutex::new(Events::default()),
        }
    }
}

// === impl Journal ===

impl Journal {
    /// Records an event whose kind says it all.
    pub fn record(&self, kind: &'static str) {
        self.push(kind, None);
    }

    /// Records an event with a detail.
    pub fn record_with(&self, kind: &'static str, detail: impl Into<String>) {
        self.push(kind, Some(detail.into().into_boxed_str()));
    }

    fn push(&self, kind: &'static str, detail: Option<Box<str>>) {
        let at = self.opened.elapsed();
        let mut e = self.events.lock().expect("journal lock");
        if e.list.len() >= MAX_EVENTS {
            // Keep the first event (how the connection began) and the most recent ones.
            e.list.remove(1);
            e.dropped += 1;
        }
        e.list.push_back(Event { at, kind, detail });
    }

    pub fn set_state(&self, s: ConnState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Wall-clock milliseconds since the Unix epoch when the connection opened.
    pub fn opened_ms(&self) -> f64 {
        wall_ms(self.opened_wall)
    }

    /// The events in order, and how many were dropped to keep the journal bounded.
    pub fn events(&self) -> (Vec<EventView>, u32) {
        let e = self.events.lock().expect("journal lock");
        let list = e
            .list
            .iter()
            .map(|ev| EventView {
                t_ms: ev.at.as_secs_f64() * 1000.0,
                kind: ev.kind,
                detail: ev.detail.as_deref().unwrap_or("").to_owned(),
            })
            .collect();
        (list, e.dropped)
    }

    pub fn len(&self) -> usize {
        self.events.lock().expect("journal lock").list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn wall_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_and_the_latest_events_and_counts_the_rest() {
        let j = Journal::default();
        j.record("accepted");
        for i in 0..100 {
            j.record_with("request_head", format!("GET /{i}"));
        }
        let (events, dropped) = j.events();
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!(dropped as usize, 101 - MAX_EVENTS);
        assert_eq!(events[0].kind, "accepted");
        assert_eq!(events.last().unwrap().detail, "GET /99");
        assert_eq!(events[1].detail, format!("GET /{}", 100 - (MAX_EVENTS - 1)));
        assert!(events.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
    }

    #[test]
    fn an_event_is_48_bytes_before_its_detail() {
        assert_eq!(std::mem::size_of::<Event>(), 48);
    }

    #[test]
    fn state_round_trips() {
        let j = Journal::default();
        for s in [
            ConnState::Idle,
            ConnState::Reading,
            ConnState::Waiting,
            ConnState::Responding,
            ConnState::Active,
            ConnState::Pooled,
            ConnState::Closing,
            ConnState::Closed,
        ] {
            j.set_state(s);
            assert_eq!(j.state(), s);
        }
    }
}
