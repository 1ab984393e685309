//! R9: the origin closes right after each response; the FIN is in the kernel but not yet
//! seen when the next request wants the connection.

use std::time::Duration;

use super::{one_client, Loss, Scenario};
use crate::peers::OriginConfig;
use crate::schedule::{Action, Schedule};
use crate::targets::{TargetKind, Tuning};

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R9",
    name: "close-after-response",
    title: "reuse right after a response",
    about: "The origin closes each connection right after its response, without saying so. \
            Its FIN reaches the proxy's kernel a moment after the response, before the \
            proxy's event loop has seen it, and a pool that hands the connection to the next \
            request loses that request (Envoy PR 2871 and PR 7159). With POSTs \
            nothing can be retried safely, so the pool itself must not make the mistake.",
    how: "The origin closes after every response with no `Connection: close`. One \
          keep-alive client sends POSTs back to back (gaps of 0-0.3 ms from the seed).",
    promise: "No POST fails and none reaches the origin twice: linger checks a pooled \
              connection for a pending EOF at checkout, and a POST that may have arrived is \
              never sent twice.",
    loss: Loss::Requests,
    default_requests: 200,
    quick_requests: 100,
    netns: false,
    tuning: Tuning::NONE,
    origin,
    plan,
    drive: super::keep_alive_tally,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig {
        close_after_response: true,
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    one_client(s, rng, n, Duration::from_micros(300), |_| Action::Post);
}
