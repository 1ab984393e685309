//! R3: a close after a response that did not say `Connection: close`.

use std::time::Duration;

use super::{one_client, Loss, Scenario};
use crate::peers::OriginConfig;
use crate::schedule::{Action, Schedule};
use crate::targets::{TargetKind, Tuning};

/// The origin closes after this many requests on a connection, saying nothing.
const ORIGIN_LIMIT: u64 = 100;

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R3",
    name: "unannounced-close",
    title: "a close without Connection: close",
    about: "A server closes a connection right after a response that did not announce it, \
            and even said `Connection: keep-alive` (akka-http #2403: an application forwarded the \
            header it got). The load balancer, told the connection stays open, sends the \
            next request into it and loses it. Every hop must announce each close it makes \
            and must never pass a hop-by-hop header on.",
    how: "The origin says `Connection: keep-alive` on every response and closes after 100 \
          requests on a connection without a word. One keep-alive client sends 1,100 GETs \
          back to back (gaps of 0-0.5 ms from the seed), so it also crosses the proxies' own \
          limit of requests per connection (1,000 for linger and nginx).",
    promise: "No request fails: linger strips the origin's Connection header, checks a \
              pooled connection for a pending close before reuse, retries a GET that \
              provably never arrived, and says `Connection: close` on every response \
              after which it closes.",
    loss: Loss::Requests,
    default_requests: 1100,
    quick_requests: 1100,
    netns: false,
    tuning: Tuning::NONE,
    origin,
    plan,
    drive: super::keep_alive_tally,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig {
        max_requests: Some(ORIGIN_LIMIT),
        announce_last: false,
        claim_keep_alive: true,
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    one_client(s, rng, n, Duration::from_micros(500), |_| Action::Get);
}
