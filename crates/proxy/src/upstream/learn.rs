//! What linger learns of one endpoint from its own connections: how long the endpoint
//! really keeps an idle connection (R1), and whether it closes right after a response it
//! did not announce as the last (R9).
//!
//! Most origins announce neither (uvicorn, gunicorn, Go, most Java servers), and some
//! announce wrongly (Node 20 says `timeout=5` and closes at 6 s). A request that may be
//! retried loses nothing when it meets such a close (it goes again on a fresh connection);
//! one that may not (a POST) would fail. So linger keeps, per endpoint and across workers:
//!
//! * **an idle limit**, learned from the upstream's own events only:
//!   - a reused connection that failed before any response byte (RST, EOF, dead peer)
//!     after `A` idle lowers the limit to `A / 2`: the origin closed it somewhere in
//!     `(0, A]`, and the request had no reason to arrive right at that close;
//!   - the upstream's FIN (or RST) on an idle pooled connection, timed by the pool's watch
//!     (within one sweep), gives the close `F` directly: the limit becomes
//!     `F − sweep − min(1 s, F / 4)`, lower or higher than before;
//!   - a reuse that worked after `A` idle, longer than the limit, raises it to
//!     `A − min(1 s, A / 4)`.
//!
//!   Pooled connections idle longer than the limit are not reused, but for one: the pool
//!   keeps its oldest such connection, and once every [`PROBE_EVERY`] a request that may
//!   be retried is allowed onto it. If the origin still drops it, that request is retried
//!   and nothing is lost; if it works, or the origin's FIN on it comes later than the
//!   limit, the limit recovers. A connection expiring without a FIN says nothing (an
//!   origin whose sockets are silently gone never sends one). The limit never goes below
//!   [`FLOOR`] nor above the configured `idle_timeout`.
//! * **the close after response** mark: once the endpoint is seen closing right after its
//!   responses, requests that may not be retried go to a fresh connection, while the others
//!   keep reusing. A reused connection that completes an exchange counts against it, and
//!   the evidence fades after [`EVIDENCE_MEMORY`] without a new sighting.
//!
//! Only upstream events count: nothing a client sends can move what is learned. Every change
//! is counted by cause, set on `linger_upstream_learned_idle_seconds`, logged once, and kept
//! in the endpoint's journal (`/upstreams`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::observe::journal::Kind;
use crate::observe::journal::{wall_ms, Detail, EventView, Journal};
use crate::observe::metrics::{EndpointLabels, LearnedLabels, Name};
use crate::observe::Metrics;

/// A pooled connection the upstream closed within this time of its last response closed
/// "right after" it; idle closes are seconds long (the shortest seen in practice is 2 s).
pub const RIGHT_AFTER: Duration = Duration::from_millis(500);
/// How long a close-after-response sighting is remembered without a new one.
pub const EVIDENCE_MEMORY: Duration = Duration::from_secs(60);
/// The most close-after-response sightings counted; each completed reuse takes one back.
const MAX_SCORE: u32 = 8;
/// The lowest idle limit linger learns. A connection reused within 50 ms (20 requests a
/// second on it, any busy client) keeps being reused, which is where reuse saves the most;
/// a fluke, such as an origin restart resetting every pooled connection at once, cannot
/// turn reuse off altogether.
pub const FLOOR: Duration = Duration::from_millis(50);
/// How often a request that may be retried is allowed onto a connection idle longer than
/// the learned limit, to see whether the origin keeps connections longer again.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How late the pool's watch may see an upstream's close on an idle connection (the
/// worker's reaper sweep).
pub const SWEEP: Duration = Duration::from_millis(250);
/// No learned limit (`limit_ms`, `hint_ms`).
const NONE: u64 = u64::MAX;

/// Why a learned value changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The upstream's `Keep-Alive: timeout` hint (with `learn_keep_alive`).
    KeepAliveHint,
    /// A reused connection failed before any response byte.
    FailedReuse,
    /// The upstream closed an idle pooled connection, timed by the pool's watch.
    IdleClose,
    /// A reuse worked after an idle time longer than the limit.
    ReuseWorked,
    /// The upstream closed right after a response it did not announce as the last (R9).
    CloseAfterResponse,
}

impl Cause {
    pub const ALL: [Cause; 5] = [
        Cause::KeepAliveHint,
        Cause::FailedReuse,
        Cause::IdleClose,
        Cause::ReuseWorked,
        Cause::CloseAfterResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeepAliveHint => "keep_alive_hint",
            Self::FailedReuse => "failed_reuse",
            Self::IdleClose => "idle_close",
            Self::ReuseWorked => "reuse_worked",
            Self::CloseAfterResponse => "close_after_response",
        }
    }
}

/// The last change, for `/stats` and `/upstreams`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub at_ms: f64,
    pub cause: String,
    /// The idle limit before and after, in seconds.
    pub from_s: f64,
    pub to_s: f64,
    pub evidence: String,
}

/// One endpoint's learned behaviour as `/stats` and `/upstreams` show it (and as
/// `linger check --admin` reads it back).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LearnedView {
    pub cluster: String,
    pub endpoint: String,
    /// The idle limit in use: the smallest of `idle_timeout_s`, `hint_s` and `learned_s`.
    pub idle_limit_s: f64,
    pub idle_timeout_s: f64,
    /// From the newest `Keep-Alive: timeout` hint, minus the margin, when shorter.
    pub hint_s: Option<f64>,
    /// From the endpoint's own closes, when shorter than the configured timeout.
    pub learned_s: Option<f64>,
    pub learning: bool,
    pub closes_after_response: bool,
    pub changes: BTreeMap<String, u64>,
    pub last_change: Option<Change>,
}

/// One endpoint's learned close behaviour, shared by every worker.
#[derive(Debug)]
pub struct Learned {
    cluster: Name,
    endpoint: Name,
    configured: Duration,
    enabled: bool,
    born: Instant,
    // close after response (R9)
    score: AtomicU32,
    last_seen: Mutex<Option<Instant>>,
    // idle limit (R1), in milliseconds; NONE when there is none
    limit_ms: AtomicU64,
    hint_ms: AtomicU64,
    /// Milliseconds since `born` of the last probe, plus one (0: none yet).
    last_probe: AtomicU64,
    /// Serialises changes (rare) and keeps the last one.
    last_change: Mutex<Option<Change>>,
    journal: Journal,
    gauge: Gauge<f64, AtomicU64>,
    changes: [Counter; 5],
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NONE - 1)
}

fn from_ms(v: u64) -> Option<Duration> {
    (v != NONE).then(|| Duration::from_millis(v))
}

/// A duration as the log and the journal show it: milliseconds, or seconds to the
/// millisecond.
struct Shown(Duration);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms < 1000 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}.{:03}s", ms / 1000, ms % 1000)
        }
    }
}

/// How far under an observed idle age linger stays: a quarter of it, at most 1 s.
fn margin(age: Duration) -> Duration {
    (age / 4).min(Duration::from_secs(1))
}

// === impl Learned ===

impl Learned {
    /// `configured` is the cluster's `idle_timeout`; `enabled` its `learn_from_closes`.
    pub fn new(
        cluster: Name,
        endpoint: Name,
        configured: Duration,
        enabled: bool,
        metrics: &Metrics,
    ) -> Self {
        let labels = EndpointLabels {
            cluster: cluster.clone(),
            endpoint: endpoint.clone(),
        };
        let gauge = metrics.learned_idle.get_or_create(&labels).clone();
        gauge.set(configured.as_secs_f64());
        let changes = Cause::ALL.map(|cause| {
            metrics
                .learned_changes
                .get_or_create(&LearnedLabels {
                    cluster: cluster.clone(),
                    endpoint: endpoint.clone(),
                    cause: cause.as_str(),
                })
                .clone()
        });
        Self {
            cluster,
            endpoint,
            configured,
            enabled,
            born: Instant::now(),
            score: AtomicU32::new(0),
            last_seen: Mutex::new(None),
            limit_ms: AtomicU64::new(NONE),
            hint_ms: AtomicU64::new(NONE),
            last_probe: AtomicU64::new(0),
            last_change: Mutex::new(None),
            journal: Journal::default(),
            gauge,
            changes,
        }
    }

    /// The limit learned from the endpoint's closes, if one is in force: pooled
    /// connections idle longer are not reused (but for a probe).
    pub fn reuse_limit(&self) -> Option<Duration> {
        from_ms(self.limit_ms.load(Ordering::Relaxed))
    }

    /// The idle limit in use: the configured one, the hint's and the learned one, whichever
    /// is shortest.
    pub fn idle_limit(&self) -> Duration {
        let mut d = self.configured;
        for v in [&self.hint_ms, &self.limit_ms] {
            if let Some(x) = from_ms(v.load(Ordering::Relaxed)) {
                d = d.min(x);
            }
        }
        d
    }

    /// A response left its connection reusable for `idle_for`: shorter than the configured
    /// timeout, it is the upstream's `Keep-Alive` hint speaking.
    pub fn hinted(&self, idle_for: Duration) {
        let v = if idle_for < self.configured {
            ms(idle_for)
        } else {
            NONE
        };
        if self.hint_ms.load(Ordering::Relaxed) == v {
            return;
        }
        let mut last = self.last_change.lock().expect("learned lock");
        let from = self.idle_limit();
        if self.hint_ms.swap(v, Ordering::Relaxed) == v {
            return;
        }
        let evidence = match from_ms(v) {
            Some(d) => format!(
                "the upstream announces Keep-Alive: timeout; reusable for {} after the margin",
                Shown(d)
            ),
            None => "the upstream no longer announces a shorter Keep-Alive: timeout".to_owned(),
        };
        self.changed(&mut last, Cause::KeepAliveHint, from, evidence);
    }

    /// A reused connection failed before any response byte after `age` idle: the origin
    /// had closed it somewhere in `(0, age]`.
    pub fn reuse_failed(&self, age: Duration) {
        if !self.enabled {
            return;
        }
        let new = (age / 2).max(FLOOR);
        let mut last = self.last_change.lock().expect("learned lock");
        let current = self.reuse_limit().unwrap_or(self.configured);
        if new >= current {
            return;
        }
        let from = self.idle_limit();
        self.limit_ms.store(ms(new), Ordering::Relaxed);
        let evidence = format!(
            "a reused connection failed before its response after {} idle; \
             connections idle longer than {} are no longer reused",
            Shown(age),
            Shown(new)
        );
        self.changed(&mut last, Cause::FailedReuse, from, evidence);
    }

    /// The upstream closed (FIN or RST) a pooled connection seen idle for `age`. Right after
    /// a response, it is the close-after-response habit (R9); later, it is the origin's
    /// idle close, timed within one [`SWEEP`]. Returns true when this marks the endpoint as
    /// closing right after its responses (it was not marked before).
    pub fn upstream_closed(&self, age: Duration, now: Instant) -> bool {
        if !self.enabled {
            return false;
        }
        if age <= RIGHT_AFTER {
            return self.closed_after_response(now);
        }
        let new = age.saturating_sub(SWEEP + margin(age)).max(FLOOR);
        let new = (new < self.configured).then_some(new);
        let mut last = self.last_change.lock().expect("learned lock");
        let current = self.reuse_limit();
        // Within a tenth of the limit in force, the same close seen again.
        let same = match (current, new) {
            (Some(c), Some(n)) => c.abs_diff(n) <= c / 10,
            (c, n) => c == n,
        };
        if same {
            return false;
        }
        let from = self.idle_limit();
        self.limit_ms.store(new.map_or(NONE, ms), Ordering::Relaxed);
        let evidence = match new {
            Some(n) => format!(
                "the upstream closed a connection idle for {} (seen within {}): \
                 pooled connections are reused for {} at most",
                Shown(age),
                Shown(SWEEP),
                Shown(n)
            ),
            None => format!(
                "the upstream kept a connection idle for {} before closing it: \
                 back to the configured idle_timeout",
                Shown(age)
            ),
        };
        self.changed(&mut last, Cause::IdleClose, from, evidence);
        false
    }

    fn closed_after_response(&self, now: Instant) -> bool {
        let was = self.closes_after_response(now);
        *self.last_seen.lock().expect("learned lock") = Some(now);
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((s + 1).min(MAX_SCORE))
            });
        if !was {
            let mut last = self.last_change.lock().expect("learned lock");
            let from = self.idle_limit();
            let evidence = "the upstream closes right after its responses without saying so: \
                            requests that may not be retried go to fresh connections"
                .to_owned();
            self.changed(&mut last, Cause::CloseAfterResponse, from, evidence);
        }
        !was
    }

    /// A reused connection carried a whole exchange after `age` idle.
    pub fn reuse_worked(&self, age: Duration) {
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1));
        let Some(limit) = self.reuse_limit() else {
            return;
        };
        if age <= limit {
            return;
        }
        let new = age - margin(age);
        let mut last = self.last_change.lock().expect("learned lock");
        let Some(current) = self.reuse_limit() else {
            return;
        };
        if new <= current {
            return;
        }
        let from = self.idle_limit();
        let new = (new < self.configured).then_some(new);
        self.limit_ms.store(new.map_or(NONE, ms), Ordering::Relaxed);
        let evidence = format!(
            "a connection idle for {} was reused and worked: reused for {} at most",
            Shown(age),
            Shown(new.unwrap_or(self.configured))
        );
        self.changed(&mut last, Cause::ReuseWorked, from, evidence);
    }

    /// May a request that can be retried try a connection idle longer than the limit now?
    /// True at most once every [`PROBE_EVERY`].
    pub fn probe_due(&self, now: Instant) -> bool {
        let t = ms(now.saturating_duration_since(self.born)) + 1;
        let last = self.last_probe.load(Ordering::Relaxed);
        if last != 0 && t.saturating_sub(last) < ms(PROBE_EVERY) {
            return false;
        }
        self.last_probe
            .compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Does the endpoint close right after its responses, as far as linger has seen?
    pub fn closes_after_response(&self, now: Instant) -> bool {
        if self.score.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.last_seen
            .lock()
            .expect("learned lock")
            .is_some_and(|t| now.saturating_duration_since(t) < EVIDENCE_MEMORY)
    }

    /// Records a change everywhere it is shown; `last` is the held change lock.
    fn changed(&self, last: &mut Option<Change>, cause: Cause, from: Duration, evidence: String) {
        let to = self.idle_limit();
        self.gauge.set(to.as_secs_f64());
        self.changes[cause as usize].inc();
        self.journal.record_with(
            Kind::Learned,
            Detail::Text(
                format!(
                    "{}: {} -> {}: {evidence}",
                    cause.as_str(),
                    Shown(from),
                    Shown(to)
                )
                .into(),
            ),
        );
        tracing::info!(
            cluster = %self.cluster,
            endpoint = %self.endpoint,
            cause = cause.as_str(),
            from_ms = ms(from),
            to_ms = ms(to),
            "upstream idle limit learned: {evidence}"
        );
        *last = Some(Change {
            at_ms: wall_ms(SystemTime::now()),
            cause: cause.as_str().to_owned(),
            from_s: from.as_secs_f64(),
            to_s: to.as_secs_f64(),
            evidence,
        });
    }

    pub fn view(&self) -> LearnedView {
        let secs = |v: &AtomicU64| from_ms(v.load(Ordering::Relaxed)).map(|d| d.as_secs_f64());
        LearnedView {
            cluster: self.cluster.to_string(),
            endpoint: self.endpoint.to_string(),
            idle_limit_s: self.idle_limit().as_secs_f64(),
            idle_timeout_s: self.configured.as_secs_f64(),
            hint_s: secs(&self.hint_ms),
            learned_s: secs(&self.limit_ms),
            learning: self.enabled,
            closes_after_response: self.closes_after_response(Instant::now()),
            changes: Cause::ALL
                .iter()
                .map(|c| (c.as_str().to_owned(), self.changes[*c as usize].get()))
                .collect(),
            last_change: self.last_change.lock().expect("learned lock").clone(),
        }
    }

    /// The endpoint's journal: every change with its evidence.
    pub fn events(&self) -> (Vec<EventView>, u32) {
        self.journal.events()
    }

    /// Wall-clock milliseconds the journal's times count from (linger's start).
    pub fn journal_opened_ms(&self) -> f64 {
        self.journal.opened_ms()
    }
}

/// Every endpoint's learned behaviour, per cluster, shared by the workers.
pub type Book = Vec<Vec<Arc<Learned>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn learned(configured: Duration) -> Learned {
        Learned::new(
            Name::new("c".into()),
            Name::new("127.0.0.1:1".into()),
            configured,
            true,
            &Metrics::new(),
        )
    }

    #[test]
    fn closes_right_after_responses_are_learned_and_fade() {
        let t0 = Instant::now();
        let l = learned(Duration::from_secs(60));
        assert!(!l.closes_after_response(t0));
        // An idle close seconds later says nothing about closing after responses.
        assert!(!l.upstream_closed(Duration::from_secs(2), t0));
        assert!(!l.closes_after_response(t0));
        // A FIN right after a response marks the endpoint, once.
        assert!(l.upstream_closed(Duration::from_millis(1), t0));
        assert!(!l.upstream_closed(Duration::from_millis(1), t0));
        assert!(l.closes_after_response(t0));
        // Reuses that work take the sightings back.
        l.reuse_worked(Duration::ZERO);
        assert!(l.closes_after_response(t0));
        l.reuse_worked(Duration::ZERO);
        assert!(!l.closes_after_response(t0));
        // And sightings fade with time.
        l.upstream_closed(Duration::ZERO, t0);
        assert!(!l.closes_after_response(t0 + EVIDENCE_MEMORY));
        assert_eq!(l.view().changes["close_after_response"], 2);
    }

    #[test]
    fn a_failed_reuse_halves_the_limit_down_to_the_floor() {
        let l = learned(Duration::from_millis(1500));
        assert_eq!(l.reuse_limit(), None);
        l.reuse_failed(Duration::from_millis(130));
        assert_eq!(l.reuse_limit(), Some(Duration::from_millis(65)));
        assert_eq!(l.idle_limit(), Duration::from_millis(65));
        // A later failure at a longer age says nothing new.
        l.reuse_failed(Duration::from_millis(140));
        assert_eq!(l.reuse_limit(), Some(Duration::from_millis(65)));
        // Nor can any failure take the limit below the floor.
        l.reuse_failed(Duration::from_millis(3));
        assert_eq!(l.reuse_limit(), Some(FLOOR));
        let v = l.view();
        assert_eq!(v.changes["failed_reuse"], 2);
        assert_eq!(v.learned_s, Some(0.05));
        assert_eq!(v.last_change.unwrap().cause, "failed_reuse");
        assert_eq!(l.events().0.len(), 2);
    }

    #[test]
    fn a_timed_idle_close_sets_the_limit_both_ways() {
        let l = learned(Duration::from_secs(10));
        let t0 = Instant::now();
        // Node 20: closes at 6 s, seen by the watch at 6.1 s.
        l.upstream_closed(Duration::from_millis(6100), t0);
        let limit = l.reuse_limit().unwrap();
        assert!(limit < Duration::from_secs(6), "{limit:?}");
        assert_eq!(limit, Duration::from_millis(6100 - 250 - 1000));
        // The same close seen again changes nothing.
        l.upstream_closed(Duration::from_millis(6000), t0);
        assert_eq!(l.view().changes["idle_close"], 1);
        // A close seen much later raises it again, up to the configured value.
        l.upstream_closed(Duration::from_secs(12), t0);
        assert_eq!(l.reuse_limit(), None);
        assert_eq!(l.idle_limit(), Duration::from_secs(10));
    }

    #[test]
    fn reuses_that_work_beyond_the_limit_raise_it_slowly() {
        let l = learned(Duration::from_millis(1500));
        l.reuse_failed(Duration::from_millis(120));
        assert_eq!(l.reuse_limit(), Some(Duration::from_millis(60)));
        // Within the limit: nothing to learn.
        l.reuse_worked(Duration::from_millis(40));
        assert_eq!(l.reuse_limit(), Some(Duration::from_millis(60)));
        // A probe that worked after 400 ms: three quarters of it.
        l.reuse_worked(Duration::from_millis(400));
        assert_eq!(l.reuse_limit(), Some(Duration::from_millis(300)));
        // Beyond the configured value, the learned limit is gone.
        l.reuse_worked(Duration::from_secs(3));
        assert_eq!(l.reuse_limit(), None);
        assert_eq!(l.view().changes["reuse_worked"], 2);
    }

    #[test]
    fn hints_are_shown_and_probes_are_rationed() {
        let l = learned(Duration::from_secs(10));
        l.hinted(Duration::from_secs(4));
        assert_eq!(l.idle_limit(), Duration::from_secs(4));
        assert_eq!(l.view().hint_s, Some(4.0));
        l.hinted(Duration::from_secs(4));
        assert_eq!(l.view().changes["keep_alive_hint"], 1);
        l.hinted(Duration::from_secs(10));
        assert_eq!(l.view().hint_s, None);
        let t0 = Instant::now();
        assert!(l.probe_due(t0));
        assert!(!l.probe_due(t0 + Duration::from_secs(1)));
        assert!(l.probe_due(t0 + PROBE_EVERY));
        assert_eq!(Shown(Duration::from_millis(2231)).to_string(), "2.231s");
        assert_eq!(Shown(Duration::from_micros(65_400)).to_string(), "65ms");
    }

    #[test]
    fn learning_off_learns_nothing_from_closes() {
        let l = Learned::new(
            Name::new("c".into()),
            Name::new("e".into()),
            Duration::from_secs(2),
            false,
            &Metrics::new(),
        );
        l.reuse_failed(Duration::from_millis(300));
        assert!(!l.upstream_closed(Duration::ZERO, Instant::now()));
        l.upstream_closed(Duration::from_secs(1), Instant::now());
        assert_eq!(l.reuse_limit(), None);
        assert!(!l.closes_after_response(Instant::now()));
    }
}
