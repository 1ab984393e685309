//! R1, the silent kind: the origin has dropped an idle connection without a FIN or a hint,
//! and resets the next request on it.

use std::time::Duration;

use super::{Loss, Scenario};
use crate::peers::OriginConfig;
use crate::schedule::{between, Action, Schedule, Step};
use crate::targets::{TargetKind, Tuning};

/// How long the origin keeps an idle connection usable.
const IDLE: Duration = Duration::from_millis(100);

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R1b",
    name: "upstream-late-reset",
    title: "upstream drops idle connections without a FIN or a hint",
    about: "The origin (or a NAT or firewall on the way) forgets a keep-alive connection \
            after a short idle time without closing it, and answers the next request on it \
            with a reset. No FIN arrives for a pool to watch and no Keep-Alive hint says how \
            long connections last, so every pool reuses them. A GET can be retried; a POST \
            cannot, and is lost every time the race strikes.",
    how: "The origin resets any request that arrives on a connection idle for 100 ms or \
          more, and sends no hint. One keep-alive client sends GETs and POSTs in turn, \
          with gaps drawn from the seed between 50 and 150 ms.",
    promise: "At most the first POST is lost and none reaches the origin twice: linger \
              learns the endpoint's idle limit from the first reuse that fails (GET or POST) \
              and sends no request onto a connection idle longer than that again.",
    loss: Loss::Requests,
    default_requests: 80,
    quick_requests: 40,
    netns: false,
    tuning: Tuning::NONE,
    origin,
    plan,
    drive: super::keep_alive_tally,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig {
        late_request_reset: Some(IDLE),
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    let steps = (0..n)
        .map(|k| {
            let gap = if k == 0 {
                Duration::ZERO
            } else {
                between(rng, IDLE / 2, IDLE * 3 / 2)
            };
            let action = if k % 2 == 0 {
                Action::Get
            } else {
                Action::Post
            };
            Step::new(gap, action)
        })
        .collect();
    s.clients.push(steps);
}
