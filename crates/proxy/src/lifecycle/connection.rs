//! One downstream connection's lifecycle, as a state machine: events in (a head's first
//! byte, a request, a response that ends, the drain, the peer's close, a timer), actions
//! out (re-arm the one timer, close gracefully with a reason, answer 408, cut). `now` is an
//! argument; nothing here reads a clock or touches a socket.
//!
//! The close reason lives in the state that ends the connection: the first transition to
//! `Closing` names it, and every later event leaves it as it is.

use std::time::Duration;

use tokio::time::Instant;

use crate::io::PeerClose;
use crate::observe::CloseReason;

/// During a drain, how long a connection that just answered may stay open for one more
/// request before linger closes it.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);

/// The drain, in the order it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drain {
    Running,
    Draining,
    /// The drain deadline passed: every connection still open is closed now.
    Cut,
}

/// Where a downstream connection is (`docs/lifecycle.md` draws these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No request in flight; waiting for the first byte of the next head.
    Idle,
    /// A head's first byte arrived; the head is not complete.
    Reading,
    /// A request is in flight (waiting for the upstream, or answering).
    Busy,
    /// linger decided to close after the response in flight (it carries
    /// `Connection: close`).
    Finishing(CloseReason),
    /// linger is closing: FIN, then linger.
    Closing(CloseReason),
}

/// What the driver does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing now; the timer is at [`Connection::deadline`].
    Wait,
    /// Close gracefully: no response is in flight (FIN, then linger).
    Close(CloseReason),
    /// The head did not complete in time: answer 408 and close.
    AnswerTimeout,
    /// Close at once, whatever is in flight (the drain deadline).
    Cut,
}

/// The timers of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_age: Option<Duration>,
}

/// One downstream connection's state.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The listener's timers, shared by its connections.
    timers: std::sync::Arc<Timers>,
    state: State,
    started: Instant,
    /// When the state began where it matters: idle, when the last response ended (or the
    /// connection opened); reading, when the head's first byte arrived.
    since: Instant,
    drain: Drain,
}

// === impl Connection ===

impl Connection {
    pub fn new(timers: impl Into<std::sync::Arc<Timers>>, now: Instant) -> Self {
        Self {
            timers: timers.into(),
            state: State::Idle,
            started: now,
            since: now,
            drain: Drain::Running,
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    /// The reason linger closes (or will close) the connection, once decided.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.state {
            State::Finishing(r) | State::Closing(r) => Some(r),
            _ => None,
        }
    }

    /// The first byte of a head arrived: the header read timeout starts.
    pub fn head_started(&mut self, at: Instant) {
        if self.state == State::Idle {
            self.state = State::Reading;
            self.since = at;
        }
    }

    /// A complete request head was handed to the request path.
    pub fn request_started(&mut self) {
        if matches!(self.state, State::Idle | State::Reading) {
            self.state = State::Busy;
        }
    }

    /// The response in flight carries `Connection: close` for `reason`: the connection
    /// closes after it.
    pub fn close_after_response(&mut self, reason: CloseReason) {
        if self.state == State::Busy {
            self.state = State::Finishing(reason);
        }
    }

    /// The response ended (sent, failed or abandoned).
    pub fn response_ended(&mut self, now: Instant) -> Action {
        self.since = now;
        match self.state {
            State::Finishing(r) => {
                self.state = State::Closing(r);
                Action::Close(r)
            }
            State::Busy => {
                self.state = State::Idle;
                Action::Wait
            }
            _ => Action::Wait,
        }
    }

    /// The drain moved on.
    pub fn drain(&mut self, drain: Drain, now: Instant) -> Action {
        self.drain = self.drain.max(drain);
        if self.drain == Drain::Cut {
            if let State::Closing(_) = self.state {
                return Action::Wait;
            }
            self.state = State::Closing(CloseReason::DrainDeadline);
            return Action::Cut;
        }
        self.on_timer(now)
    }

    /// The one timer: when something is due, if anything.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Closing(_) | State::Busy | State::Finishing(_) => None,
            State::Reading => Some(self.since + self.timers.header_read_timeout),
            State::Idle => {
                let mut d = self.since + self.timers.idle_timeout;
                if self.drain != Drain::Running {
                    d = d.min(self.since + DRAIN_IDLE_GRACE.min(self.timers.idle_timeout));
                }
                if let Some(age) = self.timers.max_age {
                    d = d.min(self.started + age);
                }
                Some(d)
            }
        }
    }

    /// Time passed: what is due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Action {
        let Some(deadline) = self.deadline() else {
            return Action::Wait;
        };
        if now < deadline {
            return Action::Wait;
        }
        match self.state {
            State::Reading => {
                self.state = State::Closing(CloseReason::HeaderReadTimeout);
                Action::AnswerTimeout
            }
            State::Idle => {
                let aged = self.timers.max_age.is_some_and(|m| now >= self.started + m);
                let reason = if self.drain != Drain::Running {
                    CloseReason::Drain
                } else if now >= self.since + self.timers.idle_timeout {
                    CloseReason::IdleTimeout
                } else if aged {
                    CloseReason::MaxAge
                } else {
                    return Action::Wait;
                };
                self.state = State::Closing(reason);
                Action::Close(reason)
            }
            _ => Action::Wait,
        }
    }

    /// The connection ended: why. linger's own decision if it made one; otherwise what
    /// the peer did, busy or idle (`busy_at_peer_close`: a request was being read, waited
    /// on or answered when the peer closed).
    pub fn ended(&self, peer: PeerClose, busy_at_peer_close: bool) -> CloseReason {
        if let Some(r) = self.close_reason() {
            return r;
        }
        let busy = self.state != State::Idle || busy_at_peer_close;
        match peer {
            PeerClose::Rst => CloseReason::PeerRst,
            PeerClose::TimedOut => CloseReason::DownstreamDeadPeer,
            PeerClose::Error => CloseReason::SocketError,
            PeerClose::Fin if busy => CloseReason::PeerFinBusy,
            _ => CloseReason::PeerFinIdle,
        }
    }

    /// Did a close for `reason` meet an idle connection, so that bytes arriving after it
    /// are a request linger never served (R2, R10)?
    pub fn closed_idle(reason: CloseReason) -> bool {
        matches!(
            reason,
            CloseReason::IdleTimeout | CloseReason::Drain | CloseReason::MaxAge
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(75);
    const HEAD: Duration = Duration::from_secs(10);

    fn conn(max_age: Option<Duration>) -> (Connection, Instant) {
        let t0 = Instant::now();
        let timers = Timers {
            idle_timeout: IDLE,
            header_read_timeout: HEAD,
            max_age,
        };
        (Connection::new(timers, t0), t0)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// R2: an idle connection closes at its idle timeout, gracefully, not a moment
    /// before; a request that started just before keeps it open.
    #[test]
    fn r2_idle_timeout_closes_only_idle_connections() {
        let (mut c, t0) = conn(None);
        assert_eq!(c.deadline(), Some(t0 + IDLE));
        assert_eq!(c.on_timer(t0 + IDLE - ms(1)), Action::Wait);
        let (mut busy, _) = (c.clone(), ());
        assert_eq!(
            c.on_timer(t0 + IDLE),
            Action::Close(CloseReason::IdleTimeout)
        );
        assert_eq!(c.ended(PeerClose::Fin, false), CloseReason::IdleTimeout);
        assert!(Connection::closed_idle(CloseReason::IdleTimeout));
        // A head that started 1 ms before the deadline moves the timer to the head's.
        busy.head_started(t0 + IDLE - ms(1));
        assert_eq!(busy.on_timer(t0 + IDLE), Action::Wait);
        assert_eq!(busy.deadline(), Some(t0 + IDLE - ms(1) + HEAD));
    }

    /// A head that does not complete gets 408 at the header read timeout.
    #[test]
    fn a_head_cut_short_is_answered_408() {
        let (mut c, t0) = conn(None);
        c.head_started(t0 + ms(5));
        assert_eq!(c.on_timer(t0 + ms(5) + HEAD), Action::AnswerTimeout);
        assert_eq!(c.close_reason(), Some(CloseReason::HeaderReadTimeout));
    }

    /// A busy connection has no timer: the request path bounds its own waits.
    #[test]
    fn requests_hold_the_timer_and_responses_rearm_it() {
        let (mut c, t0) = conn(None);
        c.head_started(t0);
        c.request_started();
        assert_eq!(c.state(), State::Busy);
        assert_eq!(c.deadline(), None);
        assert_eq!(c.on_timer(t0 + IDLE * 2), Action::Wait);
        assert_eq!(c.response_ended(t0 + IDLE * 2), Action::Wait);
        assert_eq!(c.deadline(), Some(t0 + IDLE * 3));
    }

    /// R3: a response that carries `Connection: close` ends the connection after it,
    /// with its reason; nothing later renames the close.
    #[test]
    fn r3_a_close_decided_on_a_response_is_the_close_reason() {
        let (mut c, t0) = conn(None);
        c.request_started();
        c.close_after_response(CloseReason::MaxRequests);
        c.close_after_response(CloseReason::Drain);
        assert_eq!(
            c.response_ended(t0 + ms(1)),
            Action::Close(CloseReason::MaxRequests)
        );
        assert_eq!(c.ended(PeerClose::Rst, true), CloseReason::MaxRequests);
    }

    /// R5, R7: a peer that leaves while a request is in flight is named busy; one that
    /// leaves idle is named idle.
    #[test]
    fn r5_r7_the_peer_leaving_is_named_by_what_was_in_flight() {
        let (mut c, t0) = conn(None);
        assert_eq!(c.ended(PeerClose::Fin, false), CloseReason::PeerFinIdle);
        c.request_started();
        assert_eq!(c.ended(PeerClose::Fin, false), CloseReason::PeerFinBusy);
        assert_eq!(c.ended(PeerClose::Rst, false), CloseReason::PeerRst);
        c.response_ended(t0);
        assert_eq!(c.ended(PeerClose::Fin, true), CloseReason::PeerFinBusy);
    }

    /// R6: a peer the kernel gave up on is a dead peer, not a FIN.
    #[test]
    fn r6_a_dead_peer_is_named_so() {
        let (c, _) = conn(None);
        assert_eq!(
            c.ended(PeerClose::TimedOut, false),
            CloseReason::DownstreamDeadPeer
        );
    }

    /// R10: during a drain an idle connection closes after a short grace; a busy one
    /// after its response; at the deadline everything is cut.
    #[test]
    fn r10_drain_closes_idle_connections_after_a_grace_and_cuts_at_the_deadline() {
        let (mut c, t0) = conn(None);
        assert_eq!(c.drain(Drain::Draining, t0 + ms(100)), Action::Wait);
        assert_eq!(c.deadline(), Some(t0 + DRAIN_IDLE_GRACE));
        assert_eq!(
            c.on_timer(t0 + DRAIN_IDLE_GRACE),
            Action::Close(CloseReason::Drain)
        );
        assert!(Connection::closed_idle(CloseReason::Drain));

        let (mut busy, t0) = conn(None);
        busy.request_started();
        assert_eq!(busy.drain(Drain::Draining, t0 + ms(600)), Action::Wait);
        assert_eq!(busy.response_ended(t0 + ms(700)), Action::Wait);
        assert_eq!(
            busy.on_timer(t0 + ms(1200)),
            Action::Close(CloseReason::Drain)
        );

        let (mut stream, t0) = conn(None);
        stream.request_started();
        assert_eq!(stream.drain(Drain::Cut, t0), Action::Cut);
        assert_eq!(
            stream.ended(PeerClose::Open, true),
            CloseReason::DrainDeadline
        );
        assert_eq!(stream.drain(Drain::Cut, t0), Action::Wait);
    }

    /// `docs/lifecycle.md` draws the machine's states by their names.
    #[test]
    fn the_lifecycle_page_draws_these_states() {
        let page = include_str!("../../../../docs/lifecycle.md");
        let start = page
            .find("## Downstream side")
            .expect("a downstream section");
        let diagram = &page[start..];
        let diagram = &diagram[..diagram.find("```\n\n").expect("the diagram ends")];
        let r = CloseReason::Drain;
        for state in [
            State::Idle,
            State::Reading,
            State::Busy,
            State::Finishing(r),
            State::Closing(r),
        ] {
            let name = format!("{state:?}");
            let name = name.split('(').next().unwrap_or_default();
            assert!(
                diagram.contains(&format!("    {name} -->")),
                "the diagram has no transition from {name}"
            );
        }
    }

    /// Max age closes an idle connection when it is reached, and is the reason only
    /// when the idle timeout has not passed.
    #[test]
    fn max_age_closes_an_idle_connection() {
        let (mut c, t0) = conn(Some(Duration::from_secs(10)));
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(
            c.on_timer(t0 + Duration::from_secs(10)),
            Action::Close(CloseReason::MaxAge)
        );
        assert!(Connection::closed_idle(CloseReason::MaxAge));
        assert!(!Connection::closed_idle(CloseReason::MaxRequests));
    }
}
