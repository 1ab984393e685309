//! The seeded part of a scenario run: every random choice (gaps between requests, methods,
//! body sizes, when a client leaves, when a fault strikes) is drawn here, before anything
//! runs, from the seed and the scenario's id. The same seed gives the same schedule, which
//! the report prints with a fingerprint so that a run can be replayed with `--seed`.

use std::time::Duration;

use serde::Serialize;

/// What one client does at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "do")]
pub enum Action {
    /// A GET on the client's keep-alive connection.
    Get,
    /// A GET of `/chunked`, which the lab's origin answers with chunked framing.
    GetChunked,
    /// A POST with a small body (not idempotent: it must never arrive twice).
    Post,
    /// A POST whose body of `bytes` is sent in `chunk`-byte pieces, `every_ms` apart, before
    /// the client reads anything (as most clients do).
    SlowUpload {
        bytes: u64,
        chunk: u64,
        every_ms: u64,
    },
    /// A GET in HTTP/1.0 without keep-alive: one request per connection.
    Http10Get,
    /// Open a stream (GET of an endless response).
    OpenStream,
    /// Send a FIN (shutdown of the write side) and keep reading.
    HalfClose,
    /// Close with RST (SO_LINGER 0).
    Reset,
}

/// One step of one client: wait `gap_us`, then act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Step {
    pub gap_us: u64,
    #[serde(flatten)]
    pub action: Action,
}

impl Step {
    pub fn new(gap: Duration, action: Action) -> Self {
        Self {
            gap_us: gap.as_micros() as u64,
            action,
        }
    }

    pub fn gap(&self) -> Duration {
        Duration::from_micros(self.gap_us)
    }
}

/// Something that happens to the target or the network, at `at_us` after the clients
/// start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at_us: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The target is told to stop gracefully (a deploy): SIGTERM for linger, SIGQUIT for
    /// nginx, SIGUSR1 for HAProxy; the origin itself drains when there is no proxy.
    Drain,
    /// A middlebox forgets every flow to the origin: their packets are dropped silently.
    DropFlows,
}

impl Event {
    pub fn at(&self) -> Duration {
        Duration::from_micros(self.at_us)
    }
}

/// Everything a run of one scenario will do, decided before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub scenario: &'static str,
    pub seed: u64,
    /// Per client, its steps in order.
    pub clients: Vec<Vec<Step>>,
    pub events: Vec<Event>,
}

impl Schedule {
    pub fn new(scenario: &'static str, seed: u64) -> Self {
        Self {
            scenario,
            seed,
            clients: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Requests the schedule sends (steps that carry a request).
    pub fn requests(&self) -> usize {
        self.clients
            .iter()
            .flatten()
            .filter(|s| !matches!(s.action, Action::HalfClose | Action::Reset))
            .count()
    }

    /// A short digest of the whole schedule: two runs with the same fingerprint did the
    /// same things at the same offsets.
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).expect("a schedule serializes");
        format!("{:016x}", fnv1a(text.as_bytes()))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The random source of one scenario under one seed. Scenarios draw from their own
/// stream, so adding a scenario never changes another's schedule.
pub fn rng(seed: u64, scenario: &str) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed ^ fnv1a(scenario.as_bytes()))
}

/// `n` durations that cover `[lo, hi)` evenly, one drawn from each of `n` equal strata,
/// in a random order: a small count still spans the whole range around a timeout.
pub fn stratified(rng: &mut fastrand::Rng, n: usize, lo: Duration, hi: Duration) -> Vec<Duration> {
    let (lo, hi) = (lo.as_micros() as u64, hi.as_micros() as u64);
    let width = (hi.saturating_sub(lo) / n.max(1) as u64).max(1);
    let mut out: Vec<Duration> = (0..n as u64)
        .map(|k| Duration::from_micros(lo + k * width + rng.u64(0..width)))
        .collect();
    rng.shuffle(&mut out);
    out
}

/// A duration drawn uniformly from `[lo, hi]`.
pub fn between(rng: &mut fastrand::Rng, lo: Duration, hi: Duration) -> Duration {
    let (lo, hi) = (lo.as_micros() as u64, hi.as_micros() as u64);
    Duration::from_micros(rng.u64(lo..=hi.max(lo)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_covers_the_range_once_per_stratum() {
        let mut rng = rng(3, "R1");
        let ms = Duration::from_millis;
        let mut got = stratified(&mut rng, 4, ms(1000), ms(2000));
        got.sort();
        for (k, d) in got.iter().enumerate() {
            let lo = ms(1000 + 250 * k as u64);
            assert!(*d >= lo && *d < lo + ms(250), "stratum {k}: {d:?}");
        }
    }

    #[test]
    fn scenarios_draw_from_separate_streams() {
        assert_ne!(rng(1, "R1").u64(..), rng(1, "R2").u64(..));
        assert_eq!(rng(1, "R1").u64(..), rng(1, "R1").u64(..));
    }
}
