//! R6: a middlebox forgets an idle flow and drops its packets without telling either end.

use std::time::Duration;

use tokio::time::Instant;

use super::{keep_alive_clients, per_client, tally, Ctx, Loss, Measured, Scenario, Timing};
use crate::peers::OriginConfig;
use crate::schedule::{between, Action, Event, EventKind, Schedule, Step};
use crate::targets::{TargetKind, Tuning};

/// The timeouts that end a request on a dead path are their defaults divided by this.
const SCALE: u32 = 10;
/// The clients' own patience.
const BOUND: Duration = Duration::from_secs(10);
const CLIENTS: usize = 4;

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R6",
    name: "silent-drop",
    title: "silent middlebox drop",
    about: "A NAT gateway, firewall or load balancer evicts the state of a flow that has \
            been idle, and from then on drops its packets without a word. Both ends still \
            believe the connection is up; the next request on it is retransmitted for about \
            15 minutes (tcp_retries2) before anyone gives up (a request through a NAT gateway to \
            ElastiCache). A hop must find the dead path in seconds, fail the try, \
            and retry it elsewhere when that is safe.",
    how: "Runs in two network namespaces joined by a veth pair: the clients and the proxy \
          in one, the origin in the other. Four keep-alive clients each send a GET; then \
          nftables in the origin's namespace drops every packet of the flows open at that \
          moment (a middlebox that forgot them), and each client sends more GETs on its \
          connection, 400-600 ms apart (from the seed). The clients wait at most 10 s. The \
          proxies' timeouts for a dead path are their defaults divided by 10 (linger: \
          TCP_USER_TIMEOUT and response_timeout 30 s; nginx: proxy_read_timeout 60 s; \
          HAProxy: timeout server 50 s).",
    promise: "No GET fails: the try on the dead connection ends at the user timeout (30 s, \
              3 s here) and is retried on a fresh connection, well before the client gives \
              up.",
    loss: Loss::Requests,
    default_requests: 8,
    quick_requests: 8,
    netns: true,
    tuning: Tuning {
        downstream_idle: None,
        upstream_dead_path: Some(SCALE),
    },
    origin,
    plan,
    drive,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig::default()
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    let drop_at = Duration::from_millis(250);
    for count in per_client(n.max(2 * CLIENTS), CLIENTS) {
        let mut steps = vec![Step::new(
            between(rng, Duration::ZERO, Duration::from_millis(20)),
            Action::Get,
        )];
        for _ in 1..count {
            steps.push(Step::new(
                between(rng, Duration::from_millis(400), Duration::from_millis(600)),
                Action::Get,
            ));
        }
        s.clients.push(steps);
    }
    s.events.push(Event {
        at_us: drop_at.as_micros() as u64,
        kind: EventKind::DropFlows,
    });
}

fn drive(ctx: Ctx) -> super::BoxFuture<Measured> {
    Box::pin(async move {
        let drop_at = Instant::now() + ctx.schedule.events[0].at();
        let events = ctx.start_events();
        let sent = keep_alive_clients(&ctx, None, BOUND).await;
        let _ = events.await;
        let mut m = tally(&sent);
        let mut timing = Timing::new("answer to a request sent after the drop", BOUND);
        for s in sent.iter().filter(|s| s.at >= drop_at) {
            if s.took < BOUND {
                timing.add(s.took);
            } else {
                timing.missed += 1;
            }
        }
        m.timing = Some(timing);
        m
    })
}
