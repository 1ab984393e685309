//! R2: the hop behind a load balancer closes an idle connection while the load balancer
//! sends a request on it.

use std::time::Duration;

use super::{keep_alive_clients, per_client, tally, Ctx, Loss, Measured, Scenario};
use crate::peers::OriginConfig;
use crate::schedule::{between, stratified, Action, Schedule, Step};
use crate::targets::{TargetKind, Tuning};

/// Every idle timeout of this scenario is its production value divided by this.
const SCALE: u32 = 50;
/// The load balancer's own idle timeout: AWS ELB/ALB's 60 s.
const LB_IDLE: Duration = Duration::from_millis(60_000 / SCALE as u64);
/// With no proxy, the origin faces the load balancer: Node's 5 s keep-alive timeout.
const ORIGIN_IDLE: Duration = Duration::from_millis(5_000 / SCALE as u64);
const CLIENTS: usize = 8;

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R2",
    name: "downstream-idle-close",
    title: "downstream idle close vs reuse",
    about: "A load balancer keeps idle connections to the hop behind it for its own idle \
            timeout (60 s on AWS). When that hop closes idle connections sooner, the load \
            balancer sometimes sends a request on a connection the hop has just closed, and \
            answers the client with a 502 or 504 (an ELB's 504s; Node's 5 s \
            behind a 60 s ingress). The hop facing the load balancer must keep idle \
            connections longer than the load balancer does.",
    how: "Every idle timeout is divided by 50: the clients play a load balancer that reuses \
          a connection idle up to 1.2 s (60 s) and opens a new one after that, with gaps \
          that cover 0.6-1.3 s. The hop facing them closes idle connections at its own \
          default divided by 50: linger 75 s, nginx 75 s, HAProxy `timeout client` 50 s; \
          with no proxy, the origin closes at 100 ms (Node's 5 s). Behind a proxy the \
          origin keeps connections open, so only the front hop is measured.",
    promise: "No request fails: linger's idle timeout (75 s) is above the load balancers' \
              60 s, it announces it with Keep-Alive: timeout=N, and it closes with a FIN.",
    loss: Loss::Requests,
    default_requests: 40,
    quick_requests: 16,
    netns: false,
    tuning: Tuning {
        downstream_idle: Some(SCALE),
        upstream_dead_path: None,
    },
    origin,
    plan,
    drive,
};

fn origin(target: TargetKind) -> OriginConfig {
    OriginConfig {
        idle_close: (target == TargetKind::Direct).then_some(ORIGIN_IDLE),
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    let counts = per_client(n, CLIENTS);
    let gaps = stratified(
        rng,
        counts[0].saturating_sub(1).max(1),
        LB_IDLE / 2,
        LB_IDLE + Duration::from_millis(100),
    );
    for count in counts {
        let steps = (0..count)
            .map(|k| {
                let base = if k == 0 { Duration::ZERO } else { gaps[k - 1] };
                Step::new(
                    base + between(rng, Duration::ZERO, Duration::from_millis(5)),
                    Action::Get,
                )
            })
            .collect();
        s.clients.push(steps);
    }
}

fn drive(ctx: Ctx) -> super::BoxFuture<Measured> {
    Box::pin(async move {
        let sent = keep_alive_clients(&ctx, Some(LB_IDLE), Duration::from_secs(10)).await;
        tally(&sent)
    })
}
