//! The lab's scenarios, one per race of `docs/races.md`. Each file holds one: what happens
//! and why it matters, the origin that makes it happen, the schedule its clients follow
//! (drawn from the seed), and how the run is measured.

mod r01_upstream_idle_close;
mod r01b_late_reset;
mod r02_downstream_idle_close;
mod r03_unannounced_close;
mod r04_early_response;
mod r05_half_close_streaming;
mod r06_silent_drop;
mod r07_client_leaves_waiting;
mod r08_close_delimited;
mod r09_close_after_response;
mod r10_drain;
mod r11_upstream_dies_mid_body;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::netns::NetLab;
use crate::peers::client::{request_then_leave, Leave, Left, Response};
use crate::peers::{KeepAliveClient, Origin, OriginConfig, Outcome};
use crate::schedule::{Action, EventKind, Schedule, Step};
use crate::targets::{Place, TargetKind, Tuning};

/// A boxed future, as scenario functions return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One race, reproduced.
#[derive(Debug)]
pub struct Scenario {
    /// `R1` ... `R11` (`R1b`: a second kind of R1).
    pub id: &'static str,
    /// A short name that `linger lab run` also accepts.
    pub name: &'static str,
    pub title: &'static str,
    /// What happens and why it matters.
    pub about: &'static str,
    /// How the lab's peers make it happen, and what is measured.
    pub how: &'static str,
    /// What linger promises here (from `docs/races.md`).
    pub promise: &'static str,
    /// What counts as a loss in this race.
    pub loss: Loss,
    pub default_requests: usize,
    /// A small count that still shows the race: `linger demo` and the test suite.
    pub quick_requests: usize,
    /// Runs in network namespaces (needs root, `ip`, `nft`).
    pub netns: bool,
    pub tuning: Tuning,
    origin: fn(TargetKind) -> OriginConfig,
    plan: fn(&mut Schedule, &mut fastrand::Rng, usize),
    drive: fn(Ctx) -> BoxFuture<Measured>,
}

impl Scenario {
    /// The schedule of a run: the same `seed` and `requests` give the same schedule.
    pub fn schedule(&self, seed: u64, requests: usize) -> Schedule {
        let mut s = Schedule::new(self.id, seed);
        let mut rng = crate::schedule::rng(seed, self.id);
        (self.plan)(&mut s, &mut rng, requests.max(1));
        s
    }

    /// The origin's behaviour when `target` is in front of it.
    pub fn origin(&self, target: TargetKind) -> OriginConfig {
        (self.origin)(target)
    }

    pub(crate) fn drive(&self, ctx: Ctx) -> BoxFuture<Measured> {
        (self.drive)(ctx)
    }

    /// `id` or `name`, any case.
    pub fn matches(&self, s: &str) -> bool {
        self.id.eq_ignore_ascii_case(s) || self.name.eq_ignore_ascii_case(s)
    }
}

/// What a scenario counts as lost. Duplicate deliveries always count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// A request without a complete response, or a time past its bound.
    Requests,
    /// A response cut by the origin that reached the client looking complete (every
    /// request fails visibly here: the origin died).
    LookedComplete,
    /// The origin kept working for a client that left: a close not seen within the bound,
    /// a stream still open, bytes written after the client left (every request ends
    /// without a response here: the client gave up).
    Late,
}

impl Measured {
    /// Whether this run shows the loss that `loss` describes.
    pub fn lost(&self, loss: Loss, duplicates: u64) -> bool {
        let missed = self.timing.as_ref().is_some_and(|t| t.missed > 0);
        duplicates > 0
            || match loss {
                Loss::Requests => self.failures() > 0 || missed,
                Loss::LookedComplete => self.looked_complete.unwrap_or(0) > 0,
                Loss::Late => {
                    missed
                        || self.streams_open.unwrap_or(0) > 0
                        || self.after_leave_bytes.unwrap_or(0) > 0
                }
            }
    }
}

/// Every scenario, in order.
pub fn all() -> [&'static Scenario; 12] {
    [
        &r01_upstream_idle_close::SCENARIO,
        &r01b_late_reset::SCENARIO,
        &r02_downstream_idle_close::SCENARIO,
        &r03_unannounced_close::SCENARIO,
        &r04_early_response::SCENARIO,
        &r05_half_close_streaming::SCENARIO,
        &r06_silent_drop::SCENARIO,
        &r07_client_leaves_waiting::SCENARIO,
        &r08_close_delimited::SCENARIO,
        &r09_close_after_response::SCENARIO,
        &r10_drain::SCENARIO,
        &r11_upstream_dies_mid_body::SCENARIO,
    ]
}

/// Finds a scenario by id (`R1`) or name.
pub fn find(s: &str) -> Option<&'static Scenario> {
    all().into_iter().find(|sc| sc.matches(s))
}

/// What a scenario's run can reach.
pub(crate) struct Ctx {
    pub target: TargetKind,
    /// Where the clients connect.
    pub addr: SocketAddr,
    pub origin: Arc<Origin>,
    pub schedule: Arc<Schedule>,
    /// Where the clients run.
    pub place: Place,
    /// Tells the target (or, with no proxy, the origin) to stop gracefully.
    pub drain: Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>,
    pub netlab: Option<Arc<NetLab>>,
}

impl Ctx {
    /// Runs the schedule's events at their times, from now.
    pub fn start_events(&self) -> tokio::task::JoinHandle<()> {
        let events = self.schedule.events.clone();
        let drain = self.drain.clone();
        let netlab = self.netlab.clone();
        let origin = self.origin.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            for e in events {
                tokio::time::sleep_until(start + e.at()).await;
                match e.kind {
                    EventKind::Drain => {
                        if let Err(err) = drain() {
                            tracing::warn!(%err, "drain signal failed");
                        }
                    }
                    EventKind::DropFlows => {
                        if let Some(lab) = &netlab {
                            for peer in origin.stats.peer_addrs() {
                                if let Err(err) = lab.drop_flow(&lab.b, peer.port()) {
                                    tracing::warn!(%err, "dropping a flow failed");
                                }
                            }
                        }
                    }
                }
            }
        })
    }
}

/// A summary of times measured in a run (detection, close).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    /// What was timed.
    pub what: &'static str,
    /// Samples beyond this count as missed.
    pub bound_ms: u64,
    pub samples_ms: Vec<f64>,
    /// Expected events that did not happen within the bound.
    pub missed: u64,
}

impl Timing {
    pub fn new(what: &'static str, bound: Duration) -> Self {
        Self {
            what,
            bound_ms: bound.as_millis() as u64,
            ..Default::default()
        }
    }

    pub fn add(&mut self, d: Duration) {
        self.samples_ms.push(d.as_secs_f64() * 1000.0);
    }

    pub fn median_ms(&self) -> Option<f64> {
        let mut v = self.samples_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.samples_ms.iter().copied().max_by(f64::total_cmp)
    }
}

/// What the clients (and the origin) saw in one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    pub sent: u64,
    pub ok: u64,
    /// A complete 5xx response (the origins of the lab never send one: it is the
    /// proxy's).
    pub server_error: u64,
    /// Reset before a complete response.
    pub reset: u64,
    /// EOF before a response.
    pub eof: u64,
    /// A response whose body was cut short, visibly.
    pub truncated: u64,
    /// No response within the client's timeout (or the client gave up, R7).
    pub timeout: u64,
    pub connect_failed: u64,
    /// R11: responses cut short by the origin that reached the client looking complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub looked_complete: Option<u64>,
    /// R10: requests not sent because the draining target no longer accepted
    /// connections (a load balancer sends them elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_sent: Option<u64>,
    /// R7: bytes that reached clients after they left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_leave_bytes: Option<u64>,
    /// R5: streams the origin was still writing at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams_open: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
}

impl Measured {
    pub fn add(&mut self, o: &Outcome) {
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

    /// Requests that did not get a complete, non-5xx response.
    pub fn failures(&self) -> u64 {
        self.sent - self.ok
    }
}

/// One request a keep-alive client sent, and what came back.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub at: Instant,
    /// From the request to its outcome.
    pub took: Duration,
    pub outcome: Outcome,
    pub response: Option<Response>,
}

/// Runs every client of the schedule, each on its own keep-alive connection, each step
/// after its gap; returns what each request got, in the order they were sent.
pub(crate) async fn keep_alive_clients(
    ctx: &Ctx,
    max_idle: Option<Duration>,
    timeout: Duration,
) -> Vec<Sent> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (c, steps) in ctx.schedule.clients.iter().enumerate() {
        let steps: Vec<Step> = steps.clone();
        let (addr, target, out) = (ctx.addr, ctx.target, out.clone());
        tasks.push(ctx.place.spawn(async move {
            let mut client = KeepAliveClient::new(addr);
            client.max_idle = max_idle;
            for (i, step) in steps.iter().enumerate() {
                tokio::time::sleep(step.gap()).await;
                let id = format!("{target}-{c}-{i}");
                let (method, path, body): (&str, &str, &[u8]) = match step.action {
                    Action::Post => ("POST", "/", b"payload"),
                    Action::GetChunked => ("GET", "/chunked", b""),
                    _ => ("GET", "/", b""),
                };
                let at = Instant::now();
                client.last = None;
                let outcome = client
                    .request(method, path, &[("x-request-id", &id)], body, timeout)
                    .await;
                let response = client.last.take();
                out.lock().expect("results lock").push(Sent {
                    at,
                    took: at.elapsed(),
                    outcome,
                    response,
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut sent = std::mem::take(&mut *out.lock().expect("results lock"));
    sent.sort_by_key(|s| s.at);
    sent
}

/// Runs the schedule's keep-alive clients and counts what they got.
pub(crate) fn keep_alive_tally(ctx: Ctx) -> BoxFuture<Measured> {
    Box::pin(async move {
        let sent = keep_alive_clients(&ctx, None, Duration::from_secs(10)).await;
        tally(&sent)
    })
}

/// One client that takes `n` steps, each after a gap of up to `max_gap`, doing what
/// `action` draws.
pub(crate) fn one_client(
    s: &mut Schedule,
    rng: &mut fastrand::Rng,
    n: usize,
    max_gap: Duration,
    mut action: impl FnMut(&mut fastrand::Rng) -> Action,
) {
    let steps = (0..n)
        .map(|_| {
            let a = action(rng);
            Step::new(crate::schedule::between(rng, Duration::ZERO, max_gap), a)
        })
        .collect();
    s.clients.push(steps);
}

/// Starts every client of a schedule whose clients send `GET path` at their first step and
/// all leave together at their second (a FIN and then reading, or a RST, as the step
/// says); returns when they leave and their tasks.
pub(crate) fn leave_together(
    ctx: &Ctx,
    path: &'static str,
    bound: Duration,
) -> (Instant, Vec<tokio::task::JoinHandle<Result<Left, Outcome>>>) {
    let start = Instant::now();
    let first = &ctx.schedule.clients[0];
    let leave_at = start + first[0].gap() + first[1].gap();
    let clients = ctx
        .schedule
        .clients
        .iter()
        .map(|steps| {
            let (addr, open) = (ctx.addr, start + steps[0].gap());
            let how = if steps[1].action == Action::Reset {
                Leave::Reset
            } else {
                Leave::HalfClose
            };
            ctx.place.spawn(async move {
                tokio::time::sleep_until(open).await;
                request_then_leave(addr, path, leave_at, how, bound).await
            })
        })
        .collect();
    (leave_at, clients)
}

/// Waits until the origin has seen `expected` connections close after `since`, or
/// `bound` has passed since then; returns the times it saw them, after `since`.
pub(crate) async fn origin_closes(
    origin: &Origin,
    since: Instant,
    expected: u64,
    bound: Duration,
    what: &'static str,
) -> Timing {
    let deadline = since + bound;
    tokio::time::sleep_until(since).await;
    while Instant::now() < deadline
        && (origin.stats.peer_closes_after(since).len() as u64) < expected
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut timing = Timing::new(what, bound);
    for d in origin.stats.peer_closes_after(since) {
        if d <= bound {
            timing.add(d);
        }
    }
    timing.missed = expected.saturating_sub(timing.samples_ms.len() as u64);
    timing
}

/// The tally of `sent`.
pub(crate) fn tally(sent: &[Sent]) -> Measured {
    let mut m = Measured::default();
    for s in sent {
        m.add(&s.outcome);
    }
    m
}

/// `n` split over `clients` as evenly as possible.
pub(crate) fn per_client(n: usize, clients: usize) -> Vec<usize> {
    let clients = clients.clamp(1, n.max(1));
    (0..clients)
        .map(|c| n / clients + usize::from(c < n % clients))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_of_gaps_and_faults() {
        for sc in all() {
            for n in [sc.quick_requests, sc.default_requests] {
                let a = sc.schedule(42, n);
                let b = sc.schedule(42, n);
                assert_eq!(a, b, "{}: same seed, same schedule", sc.id);
                assert_eq!(a.fingerprint(), b.fingerprint(), "{}", sc.id);
                let other = sc.schedule(43, n);
                assert_ne!(a, other, "{}: another seed, another schedule", sc.id);
                assert_ne!(a.fingerprint(), other.fingerprint(), "{}", sc.id);
                assert!(a.requests() > 0, "{}: a schedule that sends nothing", sc.id);
                assert!(
                    a.requests() <= n,
                    "{}: {} requests for a count of {n}",
                    sc.id,
                    a.requests()
                );
            }
        }
    }

    #[test]
    fn scenarios_are_found_by_id_or_name_and_cover_r1_to_r11() {
        let ids: Vec<&str> = all().iter().map(|s| s.id).collect();
        let mut want: Vec<String> = (1..=11).map(|i| format!("R{i}")).collect();
        want.insert(1, "R1b".into());
        assert_eq!(ids, want);
        for sc in all() {
            assert_eq!(find(sc.id).map(|s| s.id), Some(sc.id));
            assert_eq!(find(&sc.id.to_lowercase()).map(|s| s.id), Some(sc.id));
            assert_eq!(find(sc.name).map(|s| s.id), Some(sc.id));
            assert!(sc.about.len() > 200 && sc.how.len() > 100, "{}", sc.id);
        }
        assert!(find("R12").is_none());
    }

    #[test]
    fn quick_schedules_still_reach_past_the_timeouts_they_race() {
        // R1: with any seed, some round waits past the origin's idle close, so a client
        // with no proxy must fail.
        for seed in 0..50 {
            let r1 = find("R1")
                .unwrap()
                .schedule(seed, find("R1").unwrap().quick_requests);
            assert!(
                r1.clients[0]
                    .iter()
                    .any(|s| s.gap() >= Duration::from_millis(2000)),
                "seed {seed}"
            );
        }
        // R2: some round reuses a connection idle past the origin's 100 ms.
        let r2 = find("R2")
            .unwrap()
            .schedule(11, find("R2").unwrap().quick_requests);
        assert!(r2.clients[0].len() >= 2);
        // R3: enough requests to cross the origin's limit of 100.
        let r3 = find("R3").unwrap();
        assert!(r3.quick_requests > 100);
        // R10: with any seed, the drain falls inside the clients' schedule.
        let sc = find("R10").unwrap();
        for seed in 0..50 {
            let r10 = sc.schedule(seed, sc.quick_requests);
            let span = r10
                .clients
                .iter()
                .map(|c| c.iter().map(Step::gap).sum::<Duration>())
                .max()
                .unwrap();
            let at = r10.events[0].at();
            assert!(
                at < span,
                "seed {seed}: drain at {at:?}, clients run {span:?}"
            );
        }
    }
}
