//! The registry of connections on both sides: every open one, and the last N closed ones
//! with their journals, for the admin listener's `/connections` and `/stats`.
//!
//! The registry is process-wide (one lock) and touched once when a connection opens and
//! once when it closes, never per request; a connection's own events go to its journal.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::SystemTime;

use serde::Serialize;

use rustc_hash::FxHashMap;

use crate::io::IoStats;
use crate::observe::journal::Kind;
use crate::observe::journal::{wall_ms, ConnState, EventView, Journal};
use crate::observe::metrics::Name;
use crate::observe::termination::CloseReason;

/// Which side of linger a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Downstream,
    Upstream,
}

impl Side {
    /// 0 or 1, for tables kept per side.
    pub fn index(self) -> usize {
        match self {
            Self::Downstream => 0,
            Self::Upstream => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downstream => "downstream",
            Self::Upstream => "upstream",
        }
    }

    fn prefix(self) -> char {
        match self {
            Self::Downstream => 'd',
            Self::Upstream => 'u',
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Closed {
    reason: &'static str,
    at: SystemTime,
}

/// One connection as the registry knows it.
#[derive(Debug)]
pub struct ConnEntry {
    pub id: u64,
    pub side: Side,
    /// The listener (downstream) or cluster (upstream) name.
    pub scope: Name,
    /// The two ends, as addresses and ports apart: 40 bytes where two `SocketAddr`s take
    /// 64 (an IPv6 peer's flow label and scope id are not kept).
    peer_ip: IpAddr,
    local_ip: Option<IpAddr>,
    peer_port: u16,
    local_port: u16,
    pub stats: Arc<IoStats>,
    requests: AtomicU64,
    /// Boxed: an open connection keeps 8 bytes for it, not 32.
    closed: Mutex<Option<Box<Closed>>>,
    /// The task serving a downstream connection, woken when the drain changes
    /// ([`Registry::wake_downstream`]).
    waker: Mutex<Option<Waker>>,
}

// === impl ConnEntry ===

impl ConnEntry {
    pub fn new(
        id: u64,
        side: Side,
        scope: Name,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        stats: Arc<IoStats>,
    ) -> Self {
        Self {
            id,
            side,
            scope,
            peer_ip: peer.ip(),
            local_ip: local.map(|a| a.ip()),
            peer_port: peer.port(),
            local_port: local.map_or(0, |a| a.port()),
            stats,
            requests: AtomicU64::new(0),
            closed: Mutex::new(None),
            waker: Mutex::new(None),
        }
    }

    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.peer_ip, self.peer_port)
    }

    pub fn local(&self) -> Option<SocketAddr> {
        self.local_ip.map(|ip| SocketAddr::new(ip, self.local_port))
    }

    /// `d17`, `u4`: the id the admin listener uses.
    pub fn key(&self) -> String {
        format!("{}{}", self.side.prefix(), self.id)
    }

    pub fn journal(&self) -> &Journal {
        self.stats.journal()
    }

    /// The journal's events, and how many it dropped. A downstream connection's first
    /// event, its accept, is made from the entry here: its time is the journal's start and
    /// its detail the peer, both kept already.
    pub fn events(&self) -> (Vec<EventView>, u32) {
        let (mut events, dropped) = self.journal().events();
        if self.side == Side::Downstream {
            events.insert(
                0,
                EventView {
                    t_ms: 0.0,
                    kind: Kind::Accepted.as_str(),
                    detail: self.peer().to_string(),
                },
            );
        }
        (events, dropped)
    }

    /// The connection's task is to be woken by [`Registry::wake_downstream`].
    pub fn set_waker(&self, waker: &Waker) {
        let mut slot = self.waker.lock().expect("waker lock");
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// Counts a request on this connection; returns its index (1 = the first).
    pub fn add_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn view(&self) -> ConnView {
        let closed = self.closed.lock().expect("closed lock").as_deref().copied();
        let journal = self.journal();
        ConnView {
            id: self.key(),
            side: self.side.as_str(),
            state: if closed.is_some() {
                "closed"
            } else {
                journal.state().as_str()
            },
            peer: self.peer().to_string(),
            local: self.local().map(|a| a.to_string()),
            scope: self.scope.to_string(),
            opened_ms: journal.opened_ms(),
            closed_ms: closed.map(|c| wall_ms(c.at)),
            requests: self.requests(),
            bytes_in: self.stats.bytes_read(),
            bytes_out: self.stats.bytes_written(),
            close_reason: closed.map(|c| c.reason),
            events: journal.len() + usize::from(self.side == Side::Downstream),
        }
    }
}

/// One connection, as `/connections` shows it.
#[derive(Debug, Serialize)]
pub struct ConnView {
    pub id: String,
    pub side: &'static str,
    pub state: &'static str,
    pub peer: String,
    pub local: Option<String>,
    pub scope: String,
    pub opened_ms: f64,
    pub closed_ms: Option<f64>,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub close_reason: Option<&'static str>,
    pub events: usize,
}

/// One connection with its journal, as `/connections/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct ConnDetail {
    #[serde(flatten)]
    pub conn: ConnView,
    pub journal: Vec<EventView>,
    pub journal_dropped: u32,
}

#[derive(Debug, Serialize)]
struct ConnList {
    now_ms: f64,
    open: Vec<ConnView>,
    closed: Vec<ConnView>,
}

#[derive(Debug, Default)]
struct Inner {
    /// By side and id. Ids are counters, not input an attacker picks: a fast hash will do.
    open: FxHashMap<(Side, u64), Arc<ConnEntry>>,
    closed: VecDeque<Arc<ConnEntry>>,
    /// Closes since start, by side (downstream, upstream) and reason.
    closes: [[u64; CloseReason::COUNT]; 2],
}

/// Every open connection and the last closed ones.
#[derive(Debug)]
pub struct Registry {
    keep_closed: usize,
    inner: Mutex<Inner>,
}

// === impl Registry ===

impl Registry {
    /// Keeps the journals of the last `keep_closed` closed connections.
    pub fn new(keep_closed: usize) -> Self {
        Self {
            keep_closed,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn open(&self, entry: ConnEntry) -> Arc<ConnEntry> {
        let entry = Arc::new(entry);
        self.inner
            .lock()
            .expect("registry lock")
            .open
            .insert((entry.side, entry.id), entry.clone());
        entry
    }

    /// Records the close and its reason, and moves the entry to the closed list.
    pub fn close(&self, entry: &Arc<ConnEntry>, reason: CloseReason) {
        let reason_str = reason.as_str();
        {
            let mut c = entry.closed.lock().expect("closed lock");
            if c.is_some() {
                return;
            }
            *c = Some(Box::new(Closed {
                reason: reason_str,
                // On the clock `opened_ms` reads, so the two differ by the time open.
                at: crate::io::clock::wall(crate::io::clock::now()),
            }));
        }
        let journal = entry.journal();
        journal.set_state(ConnState::Closed);
        journal.record_with(Kind::Closed, reason_str);
        // The oldest closed entry, let go after the lock: freeing its journal is no work
        // for every other connection's open and close to wait on.
        let _evicted = {
            let mut inner = self.inner.lock().expect("registry lock");
            inner.open.remove(&(entry.side, entry.id));
            inner.closes[entry.side.index()][reason.index()] += 1;
            if self.keep_closed == 0 {
                return;
            }
            let evicted = if inner.closed.len() >= self.keep_closed {
                inner.closed.pop_front()
            } else {
                None
            };
            inner.closed.push_back(entry.clone());
            evicted
        };
    }

    /// Wakes the task of every open downstream connection: the drain changed, and each
    /// reads the new state from its worker. (A connection keeps no waiter on the drain's
    /// channel, which would cost every idle connection about a hundred bytes.)
    pub fn wake_downstream(&self) {
        let inner = self.inner.lock().expect("registry lock");
        for e in inner.open.values().filter(|e| e.side == Side::Downstream) {
            if let Some(w) = e.waker.lock().expect("waker lock").as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// Wakes the task of one open connection, if it is waiting.
    pub fn wake(&self, side: Side, id: u64) {
        let inner = self.inner.lock().expect("registry lock");
        if let Some(w) = inner
            .open
            .get(&(side, id))
            .and_then(|e| e.waker.lock().expect("waker lock").clone())
        {
            drop(inner);
            w.wake();
        }
    }

    /// `/connections`: open connections (oldest first) and closed ones (latest first).
    pub fn list_json(&self) -> String {
        let (open, closed) = {
            let inner = self.inner.lock().expect("registry lock");
            let open: Vec<_> = inner.open.values().cloned().collect();
            let closed: Vec<_> = inner.closed.iter().rev().cloned().collect();
            (open, closed)
        };
        let mut open: Vec<ConnView> = open.iter().map(|e| e.view()).collect();
        open.sort_by(|a, b| a.opened_ms.total_cmp(&b.opened_ms));
        let list = ConnList {
            now_ms: wall_ms(SystemTime::now()),
            open,
            closed: closed.iter().map(|e| e.view()).collect(),
        };
        serde_json::to_string(&list).expect("connection list serializes")
    }

    /// `/connections/{id}`: one connection, open or recently closed, with its journal.
    pub fn detail_json(&self, key: &str) -> Option<String> {
        let entry = self.find(key)?;
        let (journal, journal_dropped) = entry.events();
        let detail = ConnDetail {
            conn: entry.view(),
            journal,
            journal_dropped,
        };
        Some(serde_json::to_string(&detail).expect("connection detail serializes"))
    }

    pub fn find(&self, key: &str) -> Option<Arc<ConnEntry>> {
        let side = match key.chars().next()? {
            'd' => Side::Downstream,
            'u' => Side::Upstream,
            _ => return None,
        };
        let id: u64 = key[1..].parse().ok()?;
        let inner = self.inner.lock().expect("registry lock");
        inner.open.get(&(side, id)).cloned().or_else(|| {
            inner
                .closed
                .iter()
                .rev()
                .find(|e| e.side == side && e.id == id)
                .cloned()
        })
    }

    /// Open connections by side and state.
    pub fn open_by_state(&self) -> BTreeMap<&'static str, BTreeMap<&'static str, u64>> {
        let open: Vec<_> = {
            let inner = self.inner.lock().expect("registry lock");
            inner.open.values().cloned().collect()
        };
        let mut out: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        out.insert("downstream", BTreeMap::new());
        out.insert("upstream", BTreeMap::new());
        for e in open {
            *out.entry(e.side.as_str())
                .or_default()
                .entry(e.journal().state().as_str())
                .or_insert(0) += 1;
        }
        out
    }

    /// Closes since start, by side and reason.
    pub fn closes(&self) -> BTreeMap<&'static str, BTreeMap<&'static str, u64>> {
        let inner = self.inner.lock().expect("registry lock");
        let mut out: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        out.insert("downstream", BTreeMap::new());
        out.insert("upstream", BTreeMap::new());
        for side in [Side::Downstream, Side::Upstream] {
            let counts = &inner.closes[side.index()];
            let by_reason = out.entry(side.as_str()).or_default();
            for r in CloseReason::ALL {
                if counts[r.index()] > 0 {
                    by_reason.insert(r.as_str(), counts[r.index()]);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(reg: &Registry, side: Side, id: u64) -> Arc<ConnEntry> {
        reg.open(ConnEntry::new(
            id,
            side,
            Arc::new("l".into()),
            "127.0.0.1:1".parse().unwrap(),
            None,
            Arc::new(IoStats::default()),
        ))
    }

    #[test]
    fn closed_connections_are_kept_up_to_the_bound_latest_first() {
        let reg = Registry::new(2);
        let a = entry(&reg, Side::Downstream, 1);
        let b = entry(&reg, Side::Upstream, 1);
        let c = entry(&reg, Side::Downstream, 2);
        a.journal().record(Kind::Accepted);
        reg.close(&a, CloseReason::IdleTimeout);
        reg.close(&b, CloseReason::UpstreamFinIdle);
        reg.close(&c, CloseReason::IdleTimeout);
        reg.close(&c, CloseReason::Drain); // a second close is ignored
        assert!(reg.find("d1").is_none(), "evicted: only 2 kept");
        let list: serde_json::Value = serde_json::from_str(&reg.list_json()).unwrap();
        let ids: Vec<_> = list["closed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["d2", "u1"]);
        assert_eq!(reg.closes()["downstream"]["idle_timeout"], 2);
        assert_eq!(reg.closes()["upstream"]["upstream_fin_idle"], 1);
        let d: serde_json::Value = serde_json::from_str(&reg.detail_json("u1").unwrap()).unwrap();
        assert_eq!(d["close_reason"], "upstream_fin_idle");
        assert_eq!(d["journal"][0]["kind"], "closed");
        assert!(reg.detail_json("x1").is_none());
        assert!(reg.detail_json("d99").is_none());
    }

    #[test]
    fn open_connections_are_counted_by_state() {
        let reg = Registry::new(8);
        let a = entry(&reg, Side::Downstream, 1);
        let _b = entry(&reg, Side::Downstream, 2);
        a.journal().set_state(ConnState::Waiting);
        let p = entry(&reg, Side::Upstream, 1);
        p.journal().set_state(ConnState::Pooled);
        let s = reg.open_by_state();
        assert_eq!(s["downstream"]["waiting"], 1);
        assert_eq!(s["downstream"]["idle"], 1);
        assert_eq!(s["upstream"]["pooled"], 1);
    }
}
