//! R1: the origin closes an idle keep-alive connection while the next request is on its
//! way.

use std::time::Duration;

use super::{per_client, Loss, Scenario};
use crate::peers::OriginConfig;
use crate::schedule::{between, stratified, Action, Schedule, Step};
use crate::targets::{TargetKind, Tuning};

/// The origin's idle close: gunicorn's default keep-alive of 2 s, the shortest common one.
const IDLE: Duration = Duration::from_secs(2);
/// How late the origin's FIN reaches the peer (see `OriginConfig::fin_delay`).
const FIN_DELAY: Duration = Duration::from_millis(200);
const CLIENTS: usize = 6;

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R1",
    name: "upstream-idle-close",
    title: "upstream idle close vs reuse",
    about: "The origin closes a keep-alive connection that has been idle for its timeout. \
            A client (or a proxy's pool) that writes its next request on that connection at \
            about the same moment gets a reset or an EOF instead of a response, and a proxy \
            turns that into a 502 or 503. It is the classic 'one 502 in every few hundred \
            thousand requests' behind Envoy and ingress-nginx (Envoy #2715, #6815), and a \
            request that is not idempotent cannot simply be sent again.",
    how: "The origin closes connections idle for 2 s (gunicorn's default) without a \
          Keep-Alive hint; its FIN reaches the peer 200 ms late, and a request that arrives \
          in between is answered by the kernel's RST (the lab widens the sub-millisecond \
          window of a real network so that a small run hits it). Six keep-alive clients \
          send GETs and POSTs (half each, drawn from the seed) in rounds whose gaps cover \
          1.5-2.5 s evenly.",
    promise: "No request fails and none reaches the origin twice: the pool never keeps a \
              connection idle longer than 1.5 s (cluster.idle_timeout), watches idle \
              connections for the origin's FIN, and retries only what provably never \
              arrived or is idempotent.",
    loss: Loss::Requests,
    default_requests: 48,
    quick_requests: 18,
    netns: false,
    tuning: Tuning::NONE,
    origin,
    plan,
    drive: super::keep_alive_tally,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig {
        idle_close: Some(IDLE),
        fin_delay: Some(FIN_DELAY),
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    let counts = per_client(n, CLIENTS);
    let rounds = counts[0];
    // Every client waits about the same gap before its k-th request, so that each
    // pooled connection of a proxy has been idle about that long when it is reused.
    let gaps = stratified(
        rng,
        rounds.saturating_sub(1).max(1),
        IDLE - Duration::from_millis(500),
        IDLE + Duration::from_millis(500),
    );
    for count in counts {
        let mut steps = Vec::new();
        for k in 0..count {
            let base = if k == 0 { Duration::ZERO } else { gaps[k - 1] };
            let jitter = between(rng, Duration::ZERO, Duration::from_millis(5));
            let action = if rng.bool() {
                Action::Get
            } else {
                Action::Post
            };
            steps.push(Step::new(base + jitter, action));
        }
        s.clients.push(steps);
    }
}
