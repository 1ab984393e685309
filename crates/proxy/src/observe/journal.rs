//! The connection journal: a short, timestamped list of what happened to one connection
//! (accepted, request head in, FIN received, returned to the pool, closed and why), kept
//! in memory next to its socket's counters.
//!
//! It is bounded: past [`MAX_EVENTS`] the oldest events after the first are dropped and
//! counted, so a connection that lives for days still costs a fixed amount. Recording is a
//! short uncontended lock and a push into a ring (nothing shifts). An event is a static
//! kind and a typed [`Detail`] of numbers and static names; text is made only when the
//! admin listener shows the journal, except for the few details that are text (a request's
//! path).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Termination;
use tokio::time::Instant;

/// Events kept per connection. 32 covers the whole life of most connections (accept, a few
/// requests, the close) and the last requests of long-lived ones. An event is 32 bytes plus
/// any detail text (a request's path): 1 KiB plus that text when full.
pub const MAX_EVENTS: usize = 32;

macro_rules! kinds {
    ($($kind:ident = $name:literal,)*) => {
        /// What an event is.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Kind {
            $($kind,)*
        }

        impl Kind {
            const ALL: &'static [Kind] = &[$(Kind::$kind,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$kind => $name,)*
                }
            }
        }
    };
}

kinds! {
    Accepted = "accepted",
    RequestHead = "request_head",
    Upstream = "upstream",
    ResponseHead = "response_head",
    ResponseEnd = "response_end",
    Closing = "closing",
    Closed = "closed",
    Upgraded = "upgraded",
    RstReceived = "rst_received",
    Reused = "reused",
    Refused = "refused",
    Pooled = "pooled",
    Lingered = "lingered",
    LingerTimeout = "linger_timeout",
    FinSent = "fin_sent",
    FinReceived = "fin_received",
    Failed = "failed",
    DeadPeer = "dead_peer",
    Connected = "connected",
    Learned = "learned",
    RequestLost = "request_lost",
    Retry = "retry",
    SocketError = "socket_error",
}

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

/// What an event says beyond its kind.
#[derive(Debug, Clone)]
pub enum Detail {
    None,
    Static(&'static str),
    Text(Box<str>),
    /// A status code.
    Status(u16),
    /// A response's end: `{status} {termination}, {bytes} bytes`.
    End {
        status: u16,
        term: Termination,
        bytes: u64,
    },
    /// The upstream connection a try used: `u{id} reused|new ({endpoint})`.
    Upstream {
        id: u64,
        reused: bool,
        endpoint: std::sync::Arc<String>,
    },
    /// The downstream connection a request on an upstream connection came from:
    /// `{method} for d{id}`.
    For {
        method: Method,
        id: u64,
    },
    /// How long a pooled connection may stay idle: `reusable for {duration}`.
    ReusableFor(Duration),
    /// A request head: `{method} {path} #{index}`.
    Request {
        method: Method,
        index: u32,
        path: Box<str>,
    },
}

/// A request method, in one byte (extension methods are `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Patch,
    Trace,
    Connect,
    Other,
}

impl From<&http::Method> for Method {
    fn from(m: &http::Method) -> Self {
        match *m {
            http::Method::GET => Self::Get,
            http::Method::POST => Self::Post,
            http::Method::PUT => Self::Put,
            http::Method::DELETE => Self::Delete,
            http::Method::HEAD => Self::Head,
            http::Method::OPTIONS => Self::Options,
            http::Method::PATCH => Self::Patch,
            http::Method::TRACE => Self::Trace,
            http::Method::CONNECT => Self::Connect,
            _ => Self::Other,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Head => "HEAD",
            Self::Options => "OPTIONS",
            Self::Patch => "PATCH",
            Self::Trace => "TRACE",
            Self::Connect => "CONNECT",
            Self::Other => "other",
        })
    }
}

impl From<&'static str> for Detail {
    fn from(s: &'static str) -> Self {
        Self::Static(s)
    }
}

impl From<String> for Detail {
    fn from(s: String) -> Self {
        Self::Text(s.into_boxed_str())
    }
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => Ok(()),
            Self::Static(s) => f.write_str(s),
            Self::Text(s) => f.write_str(s),
            Self::Status(s) => write!(f, "{s}"),
            Self::End {
                status,
                term,
                bytes,
            } => write!(f, "{status} {term}, {bytes} bytes"),
            Self::Upstream {
                id,
                reused,
                endpoint,
            } => write!(
                f,
                "u{id} {} ({endpoint})",
                if *reused { "reused" } else { "new" }
            ),
            Self::For { method, id } => write!(f, "{method} for d{id}"),
            Self::ReusableFor(d) => write!(f, "reusable for {d:?}"),
            Self::Request {
                method,
                path,
                index,
            } => write!(f, "{method} {path} #{index}"),
        }
    }
}

/// One event: 32 bytes.
#[derive(Debug, Clone)]
struct Event {
    /// Nanoseconds since the journal was opened (56 bits: two years), and the kind in the
    /// low 8 bits.
    at_kind: u64,
    detail: Detail,
}

impl Event {
    fn new(at: u64, kind: Kind, detail: Detail) -> Self {
        Self {
            at_kind: at.min(u64::MAX >> 8) << 8 | kind as u64,
            detail,
        }
    }

    fn at(&self) -> u64 {
        self.at_kind >> 8
    }

    fn kind(&self) -> Kind {
        Kind::ALL[(self.at_kind & 0xff) as usize]
    }
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
    /// The first event (how the connection began), then the latest ones, at most
    /// [`MAX_EVENTS`] in all. Until it is full the list is in order; once full, each new
    /// event takes the place of the oldest after the first, so the events after the first
    /// are a ring that starts at `oldest`. A push writes one slot: nothing shifts.
    list: Vec<Event>,
    /// Where the oldest event after the first is, once the list is full.
    oldest: u8,
    dropped: u32,
}

const _: () = assert!(MAX_EVENTS >= 2 && MAX_EVENTS <= u8::MAX as usize);

// === impl Events ===

impl Events {
    fn push(&mut self, ev: Event) {
        if self.list.len() < MAX_EVENTS {
            self.list.push(ev);
            if self.list.len() == MAX_EVENTS {
                self.oldest = 1;
            }
            return;
        }
        let at = usize::from(self.oldest);
        self.list[at] = ev;
        self.oldest = if at + 1 == MAX_EVENTS {
            1
        } else {
            at as u8 + 1
        };
        self.dropped = self.dropped.saturating_add(1);
    }

    /// Oldest first, the first event always first.
    fn iter(&self) -> impl Iterator<Item = &Event> {
        // Until the list is full, `oldest` is 0 and the list is in order.
        let (first, rest) = self.list.split_at(self.list.len().min(1));
        let (newer, older) = rest.split_at(usize::from(self.oldest).saturating_sub(1));
        first.iter().chain(older).chain(newer)
    }
}

/// The journal of one connection.
#[derive(Debug)]
pub struct Journal {
    /// When it opened, as [`crate::io::clock::now_ns`] (see [`Journal::opened`]).
    opened_ns: u64,
    state: AtomicU8,
    events: Mutex<Events>,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            opened_ns: crate::io::clock::now_ns(),
            state: AtomicU8::new(ConnState::Idle as u8),
            events: Mutex::new(Events::default()),
        }
    }
}

// === impl Journal ===

impl Journal {
    /// Records an event whose kind says it all.
    pub fn record(&self, kind: Kind) {
        self.push(kind, Detail::None);
    }

    /// Records an event with a detail.
    pub fn record_with(&self, kind: Kind, detail: impl Into<Detail>) {
        self.push(kind, detail.into());
    }

    fn push(&self, kind: Kind, detail: Detail) {
        let at = crate::io::clock::now_ns().saturating_sub(self.opened_ns);
        let ev = Event::new(at, kind, detail);
        self.events.lock().expect("journal lock").push(ev);
    }

    pub fn set_state(&self, s: ConnState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn opened(&self) -> Instant {
        crate::io::clock::at_ns(self.opened_ns)
    }

    /// Wall-clock milliseconds since the Unix epoch when the connection opened.
    pub fn opened_ms(&self) -> f64 {
        wall_ms(crate::io::clock::wall(self.opened()))
    }

    /// The events in order, and how many were dropped to keep the journal bounded.
    pub fn events(&self) -> (Vec<EventView>, u32) {
        let e = self.events.lock().expect("journal lock");
        let list = e
            .iter()
            .map(|ev| EventView {
                t_ms: ev.at() as f64 / 1e6,
                kind: ev.kind().as_str(),
                detail: ev.detail.to_string(),
            })
            .collect();
        (list, e.dropped)
    }

    pub fn len(&self) -> usize {
        let e = self.events.lock().expect("journal lock");
        e.list.len()
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
        j.record(Kind::Accepted);
        for i in 0..100 {
            j.record_with(Kind::RequestHead, format!("GET /{i}"));
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
    fn every_length_keeps_the_first_event_and_the_latest_in_order() {
        for n in 0..(3 * MAX_EVENTS + 5) {
            let j = Journal::default();
            for i in 0..n {
                j.record_with(Kind::RequestHead, format!("{i}"));
            }
            let (events, dropped) = j.events();
            let got: Vec<usize> = events.iter().map(|e| e.detail.parse().unwrap()).collect();
            let kept_latest = n.min(MAX_EVENTS).saturating_sub(1);
            let want: Vec<usize> = (0..n.min(1)).chain(n - kept_latest..n).collect();
            assert_eq!(got, want, "{n} events");
            assert_eq!(dropped as usize, n - want.len(), "{n} events");
        }
    }

    #[test]
    fn an_event_is_32_bytes_and_details_render_as_text() {
        assert_eq!(std::mem::size_of::<Event>(), 32);
        for &k in Kind::ALL {
            let ev = Event::new(123_456_789, k, Detail::None);
            assert_eq!((ev.kind(), ev.at()), (k, 123_456_789));
        }
        // Past two years the time saturates; the kind survives.
        let late = Event::new(u64::MAX, Kind::Closed, Detail::None);
        assert_eq!((late.kind(), late.at()), (Kind::Closed, u64::MAX >> 8));
        let end = Detail::End {
            status: 200,
            term: Termination::Ok,
            bytes: 3,
        };
        assert_eq!(end.to_string(), "200 ok, 3 bytes");
        let up = Detail::Upstream {
            id: 7,
            reused: true,
            endpoint: std::sync::Arc::new("127.0.0.1:80".into()),
        };
        assert_eq!(up.to_string(), "u7 reused (127.0.0.1:80)");
        assert_eq!(
            Detail::ReusableFor(Duration::from_millis(1500)).to_string(),
            "reusable for 1.5s"
        );
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
