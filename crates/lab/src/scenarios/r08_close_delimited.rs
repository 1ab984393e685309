//! R8: graceful closing where nothing is unread must cost nothing.

use std::time::Duration;

use super::{one_client, Ctx, Loss, Measured, Scenario, Timing};
use crate::peers::client::http10_get;
use crate::peers::OriginConfig;
use crate::schedule::{Action, Schedule};
use crate::targets::{TargetKind, Tuning};

const BOUND: Duration = Duration::from_secs(1);

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R8",
    name: "close-delimited",
    title: "close-delimited responses and delay-close cost",
    about: "The remedy for R4 is to close gracefully: FIN, then read for a while before the \
            last close. Applied where nothing is left unread, for an HTTP/1.0 client or a \
            response whose end is the close itself, it adds a whole timeout to every \
            response: Envoy's delayed close made HTTP/1.0 clients wait a second for each \
            response (Envoy #19821). This is a cost only a proxy can add; the run \
            with no proxy is the reference.",
    how: "The origin answers HTTP/1.0 without a length: the body ends when the connection \
          closes. The client sends HTTP/1.0 GETs without keep-alive, one connection each, \
          gaps of 0-5 ms from the seed, and times each from the request to the end of the \
          connection.",
    promise: "Each response ends (FIN) right after its last byte: linger does not wait its \
              linger_time (5 s) when nothing is unread.",
    loss: Loss::Requests,
    default_requests: 20,
    quick_requests: 10,
    netns: false,
    tuning: Tuning::NONE,
    origin,
    plan,
    drive,
};

fn origin(_: TargetKind) -> OriginConfig {
    OriginConfig {
        close_delimited: true,
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    one_client(s, rng, n, Duration::from_millis(5), |_| Action::Http10Get);
}

fn drive(ctx: Ctx) -> super::BoxFuture<Measured> {
    Box::pin(async move {
        let steps = ctx.schedule.clients[0].clone();
        let addr = ctx.addr;
        ctx.place
            .run(async move {
                let mut m = Measured::default();
                let mut timing = Timing::new("request to end of connection", BOUND);
                for step in steps {
                    tokio::time::sleep(step.gap()).await;
                    let (o, took) = http10_get(addr, Duration::from_secs(10)).await;
                    m.add(&o);
                    match took {
                        Some(d) if d <= BOUND => timing.add(d),
                        _ => timing.missed += 1,
                    }
                }
                m.timing = Some(timing);
                m
            })
            .await
    })
}
