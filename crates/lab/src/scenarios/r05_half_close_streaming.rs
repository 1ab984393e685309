//! R5: a load balancer half-closes while the origin streams forever.

use std::time::Duration;

use super::{leave_together, origin_closes, Ctx, Loss, Measured, Scenario};
use crate::peers::OriginConfig;
use crate::schedule::{between, Action, Schedule, Step};
use crate::targets::{TargetKind, Tuning};

/// How long after the clients leave the run waits for the origin to notice.
const BOUND: Duration = Duration::from_secs(2);

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R5",
    name: "half-close-streaming",
    title: "half-close ignored while streaming",
    about: "A client behind a load balancer goes away during a server-sent-events stream; \
            the load balancer passes on only a FIN. The server never reads, so it never \
            sees the FIN, and keeps streaming keep-alive events forever: its actors, \
            buffers and connections leak until a restart (an SSE service behind an F5). The \
            hop in front must treat the FIN as the end and close the stream upstream, so \
            that the server's next write fails and its cleanup runs.",
    how: "The origin streams an event every 50 ms and never reads from the connection. \
          Each client opens a stream, reads the first events, and sends a FIN at the same \
          moment as the others (300-500 ms into the run, from the seed). The run measures \
          how long the origin takes to see its stream end, and how many streams it is \
          still writing 2 s later.",
    promise: "The origin sees every stream end within 1 s of the FIN (linger closes the \
              upstream connection at once, half_close = \"abort\"); no stream is left open.",
    loss: Loss::Late,
    default_requests: 8,
    quick_requests: 4,
    netns: false,
    tuning: Tuning::NONE,
    origin,
    plan,
    drive,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig {
        stream_every: Some(Duration::from_millis(50)),
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    let leave = between(rng, Duration::from_millis(300), Duration::from_millis(500));
    for _ in 0..n {
        let open = between(rng, Duration::ZERO, Duration::from_millis(50));
        s.clients.push(vec![
            Step::new(open, Action::OpenStream),
            Step::new(leave - open, Action::HalfClose),
        ]);
    }
}

fn drive(ctx: Ctx) -> super::BoxFuture<Measured> {
    Box::pin(async move {
        let (leave_at, clients) = leave_together(&ctx, "/events", BOUND);
        let timing = origin_closes(
            &ctx.origin,
            leave_at,
            clients.len() as u64,
            BOUND,
            "stream end seen by the origin after the FIN",
        )
        .await;
        let mut m = Measured {
            streams_open: Some(ctx.origin.stats.open_streams()),
            timing: Some(timing),
            ..Default::default()
        };
        for c in clients {
            m.sent += 1;
            match c.await.expect("client task") {
                Ok(left) if left.status_before == Some(200) => m.ok += 1,
                Ok(left) => match left.status_before {
                    Some(s) if s >= 500 => m.server_error += 1,
                    _ => m.eof += 1,
                },
                Err(o) => {
                    m.sent -= 1;
                    m.add(&o);
                }
            }
        }
        m
    })
}
