//! R4: the origin answers before it has read the request body, and closes with unread
//! bytes.

use std::time::Duration;

use super::{Ctx, Loss, Measured, Scenario};
use crate::peers::client::slow_upload;
use crate::peers::OriginConfig;
use crate::schedule::{between, Action, Schedule, Step};
use crate::targets::{TargetKind, Tuning};

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R4",
    name: "early-response",
    title: "early response",
    about: "A server rejects an upload (413, 401) as soon as it has read the request head, \
            and closes the connection with the body still arriving. Closing a socket with \
            unread bytes makes the kernel send RST, and the client, still writing its body, \
            gets 'connection reset' and never reads the answer (akka-http's early-response warning; \
            behind Envoy a 413 became a 503, #2929). A proxy must deliver the answer and \
            close gracefully: FIN, then read and discard what the client still sends.",
    how: "The origin answers 413 with `Connection: close` as soon as a request head \
          arrives and closes without reading the body (the kernel resets). The client \
          uploads bodies of 256-960 KiB (sizes from the seed) in 64 KiB pieces 5 ms apart, \
          and reads the answer once its body is sent, as most HTTP clients do.",
    promise: "No request fails: the client gets the origin's 413 whole, then a FIN, never a \
              reset (early_response = \"close\": the response goes out with Connection: \
              close, then FIN, then linger reads and discards the rest of the body).",
    loss: Loss::Requests,
    default_requests: 12,
    quick_requests: 6,
    netns: false,
    tuning: Tuning::NONE,
    origin,
    plan,
    drive,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig {
        early_status: Some(413),
        early_drain: false,
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    let steps = (0..n)
        .map(|_| {
            let kib = rng.u64(256..=960);
            Step::new(
                between(rng, Duration::ZERO, Duration::from_millis(20)),
                Action::SlowUpload {
                    bytes: kib * 1024,
                    chunk: 64 * 1024,
                    every_ms: 5,
                },
            )
        })
        .collect();
    s.clients.push(steps);
}

fn drive(ctx: Ctx) -> super::BoxFuture<Measured> {
    Box::pin(async move {
        let steps = ctx.schedule.clients[0].clone();
        let addr = ctx.addr;
        ctx.place
            .run(async move {
                let mut m = Measured::default();
                for step in steps {
                    tokio::time::sleep(step.gap()).await;
                    if let Action::SlowUpload {
                        bytes,
                        chunk,
                        every_ms,
                    } = step.action
                    {
                        let o = slow_upload(
                            addr,
                            bytes,
                            chunk,
                            Duration::from_millis(every_ms),
                            Duration::from_secs(10),
                        )
                        .await;
                        m.add(&o);
                    }
                }
                m
            })
            .await
    })
}
