//! R7: the client leaves while the origin is still working on its request.

use std::time::Duration;

use super::{leave_together, origin_closes, Ctx, Loss, Measured, Scenario};
use crate::peers::OriginConfig;
use crate::schedule::{between, Action, Schedule, Step};
use crate::targets::{TargetKind, Tuning};

/// The origin's think time: longer than the clients wait.
const THINK: Duration = Duration::from_secs(3);
const BOUND: Duration = Duration::from_secs(2);

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R7",
    name: "client-leaves-waiting",
    title: "client leaves while upstream is slow",
    about: "A load balancer gives up on a slow request when its own timeout runs out and \
            closes its connection (FIN, or RST). A hop that does not watch the client while \
            it waits keeps the origin working for nobody, and later writes its answer (a \
            504, or the late response) into a closed socket (an ELB's FIN at \
            60 s, the proxy's 504 half a second later). The origin should learn at once \
            that the client is gone.",
    how: "The origin takes 3 s to answer, and notices at once when its own connection \
          closes. Six clients send a GET and leave together 150-300 ms later (from the \
          seed), half with a FIN (then they keep reading), half with a RST. Every request \
          counts as timed out (the client gave up). The run measures how long after the \
          clients leave the origin sees its connections close, and what still reaches a \
          client after its FIN.",
    promise: "The origin sees every connection close within 1 s of the client leaving, and \
              nothing is written to a client that left (the log says 'client aborted while \
              waiting').",
    loss: Loss::Late,
    default_requests: 6,
    quick_requests: 4,
    netns: false,
    tuning: Tuning::NONE,
    origin,
    plan,
    drive,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig {
        think: Some(THINK),
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    // Every client leaves at the same moment, 150-300 ms after the last one sent.
    let opens: Vec<Duration> = (0..n)
        .map(|_| between(rng, Duration::ZERO, Duration::from_millis(50)))
        .collect();
    let leave = opens.iter().max().copied().unwrap_or_default()
        + between(rng, Duration::from_millis(150), Duration::from_millis(300));
    for open in opens {
        let how = if rng.bool() {
            Action::HalfClose
        } else {
            Action::Reset
        };
        s.clients.push(vec![
            Step::new(open, Action::Get),
            Step::new(leave - open, how),
        ]);
    }
}

fn drive(ctx: Ctx) -> super::BoxFuture<Measured> {
    Box::pin(async move {
        let (leave_at, clients) = leave_together(&ctx, "/slow", BOUND);
        let timing = origin_closes(
            &ctx.origin,
            leave_at,
            clients.len() as u64,
            BOUND,
            "close seen by the origin after the client left",
        )
        .await;
        let mut m = Measured {
            after_leave_bytes: Some(0),
            timing: Some(timing),
            ..Default::default()
        };
        for c in clients {
            match c.await.expect("client task") {
                Ok(left) => {
                    m.sent += 1;
                    match left.status_before {
                        Some(s) if s >= 500 => m.server_error += 1,
                        Some(_) => m.ok += 1,
                        // The client gave up before any answer.
                        None => m.timeout += 1,
                    }
                    *m.after_leave_bytes.as_mut().expect("set above") += left.bytes_after;
                }
                Err(o) => m.add(&o),
            }
        }
        m
    })
}
