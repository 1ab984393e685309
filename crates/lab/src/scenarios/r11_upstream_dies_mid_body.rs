//! R11: the origin dies in the middle of a response body.

use std::time::Duration;

use super::{keep_alive_clients, one_client, tally, Ctx, Loss, Measured, Scenario};
use crate::peers::{OriginConfig, Outcome};
use crate::schedule::{Action, Schedule};
use crate::targets::{TargetKind, Tuning};

/// The origin sends this many body bytes, then resets; the whole body would be
/// `2 * CUT + 1` bytes.
const CUT: usize = 1000;

pub(super) static SCENARIO: Scenario = Scenario {
    id: "R11",
    name: "upstream-dies-mid-body",
    title: "upstream dies mid-response",
    about: "The origin crashes or resets in the middle of a response body. The client must \
            be able to tell: a chunked response must not get its final zero-length chunk, \
            and a response with a Content-Length must end before that length. A proxy that \
            re-frames the cut body as complete hands the client a short file, a broken JSON \
            document or a half-written page that looks whole.",
    how: "The origin sends the head and 1,000 of 2,001 body bytes, then resets the \
          connection; half of the GETs (drawn from the seed) ask for chunked framing, the \
          others get a Content-Length. One keep-alive client checks every response it \
          reads as complete against the 2,001 bytes the origin meant to send.",
    promise: "No cut response looks complete: every one reaches the client visibly broken \
              (no final chunk, or fewer bytes than its Content-Length).",
    loss: Loss::LookedComplete,
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
        reset_mid_body: Some(CUT),
        ..Default::default()
    }
}

fn plan(s: &mut Schedule, rng: &mut fastrand::Rng, n: usize) {
    one_client(s, rng, n, Duration::from_millis(2), |rng| {
        if rng.bool() {
            Action::GetChunked
        } else {
            Action::Get
        }
    });
}

fn drive(ctx: Ctx) -> super::BoxFuture<Measured> {
    Box::pin(async move {
        let sent = keep_alive_clients(&ctx, None, Duration::from_secs(10)).await;
        let mut m = tally(&sent);
        let mut looked_complete = 0;
        for s in &sent {
            let short = s
                .response
                .as_ref()
                .is_some_and(|r| r.body.len() < 2 * CUT + 1);
            if matches!(s.outcome, Outcome::Ok(_)) && short {
                looked_complete += 1;
            }
        }
        m.ok -= looked_complete;
        m.looked_complete = Some(looked_complete);
        m
    })
}
