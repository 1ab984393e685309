//! R10: a deploy stops the hop while clients keep their connections.

use std::time::Duration;

use tokio::time::Instant;

use super::{keep_alive_clients, per_client, Ctx, Loss, Measured, Scenario};
use crate::peers::{OriginConfig, Outcome};
use crate::schedule::{between, Action, Event, EventKind, Schedule, Step};
use crate::targets::{TargetKind, Tuning};

const CLIENTS: usize = 8;

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R10",
    name: "drain",
    title: "deploys and drains",
    about: "Every deploy, reload or scale-in stops a hop while clients hold keep-alive \
            connections to it. A hop that closes idle connections at once, or answers \
            without `Connection: close` and then closes, races every client that is about \
            to send its next request; those requests fail on each rolling update.",
    how: "Eight keep-alive clients send GETs with gaps of 20-200 ms. Between 400 and 600 ms \
          into the run (from the seed) the hop is told to stop gracefully: SIGTERM for \
          linger, SIGQUIT for nginx, SIGUSR1 for HAProxy; with no proxy, the origin stops \
          the way application servers do (stop accepting, close idle connections). A \
          client whose new connection is refused counts the request as not sent (a load \
          balancer would send it to another instance), not as a failure.",
    promise: "No request fails: on SIGTERM linger stops accepting, says `Connection: close` \
              on every further response, gives a connection that just answered 500 ms for \
              one more request, and lets requests in flight finish.",
    loss: Loss::Requests,
    default_requests: 80,
    quick_requests: 64,
    netns: false,
    tuning: Tuning::NONE,
    origin,
    plan,
    drive,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig::default()
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    for count in per_client(n, CLIENTS) {
        let steps = (0..count)
            .map(|k| {
                let gap = if k == 0 {
                    between(rng, Duration::ZERO, Duration::from_millis(50))
                } else {
                    between(rng, Duration::from_millis(20), Duration::from_millis(200))
                };
                Step::new(gap, Action::Get)
            })
            .collect();
        s.clients.push(steps);
    }
    let at = between(rng, Duration::from_millis(400), Duration::from_millis(600));
    s.events.push(Event {
        at_us: at.as_micros() as u64,
        kind: EventKind::Drain,
    });
}

fn drive(ctx: Ctx) -> super::BoxFuture<Measured> {
    Box::pin(async move {
        let drain_at = Instant::now() + ctx.schedule.events[0].at();
        let events = ctx.start_events();
        let sent = keep_alive_clients(&ctx, None, Duration::from_secs(10)).await;
        let _ = events.await;
        let mut m = Measured {
            not_sent: Some(0),
            ..Default::default()
        };
        for s in &sent {
            if s.outcome == Outcome::ConnectFailed && s.at >= drain_at {
                *m.not_sent.as_mut().expect("set above") += 1;
            } else {
                m.add(&s.outcome);
            }
        }
        m
    })
}
