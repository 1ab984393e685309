//! Retry rules (R1, R6): when a failed try may be sent again, the budget that bounds
//! retries, and the backoff between them.

use std::sync::Mutex;
use std::time::Duration;

use http::{Method, Request};
use tokio::time::Instant;

/// Is this request safe to send twice? RFC 9110 §9.2.2 idempotent methods, or a request
/// that carries an `Idempotency-Key`.
pub fn is_idempotent<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.headers().contains_key(crate::forward::IDEMPOTENCY_KEY)
}

/// What is known about a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryFailure {
    /// Nothing of the request reached the upstream (the connect failed, or no byte was
    /// written).
    Unsent,
    /// The request may have reached the upstream; no response byte came back.
    MaybeSent,
}

/// The decision about one failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Retry,
    RefuseNotIdempotent,
    RefuseBodyNotReplayable,
    RefuseBudget,
    RefuseMaxRetries,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retried",
            Self::RefuseNotIdempotent => "refused_not_idempotent",
            Self::RefuseBodyNotReplayable => "refused_body_not_replayable",
            Self::RefuseBudget => "refused_budget_exhausted",
            Self::RefuseMaxRetries => "refused_max_retries",
        }
    }
}

/// Pure decision: may a try that failed this way be retried?
pub fn decide(
    failure: TryFailure,
    idempotent: bool,
    replayable: bool,
    retries_done: u32,
    max_retries: u32,
) -> Decision {
    if retries_done >= max_retries {
        return Decision::RefuseMaxRetries;
    }
    match failure {
        TryFailure::Unsent => Decision::Retry,
        TryFailure::MaybeSent if !idempotent => Decision::RefuseNotIdempotent,
        TryFailure::MaybeSent if !replayable => Decision::RefuseBodyNotReplayable,
        TryFailure::MaybeSent => Decision::Retry,
    }
}

/// Full-jitter exponential backoff before retry number `attempt` (1 = the first retry): a
/// random wait in `[0, min(max, base * 2^(attempt - 1))]`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    exp.mul_f64(fastrand::f64())
}

/// A retry budget: each request deposits `ratio` tokens, each retry withdraws one, and
/// `min_per_sec` tokens flow in per second whatever the traffic. Tokens are capped so an
/// idle period cannot save up a storm. Tokens are counted in thousandths.
#[derive(Debug)]
pub struct RetryBudget {
    ratio_milli: i64,
    min_per_sec: i64,
    cap_milli: i64,
    state: Mutex<(i64, Option<Instant>)>,
}

// === impl RetryBudget ===

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: u32) -> Self {
        let min_per_sec = i64::from(min_per_sec);
        let cap_milli = (min_per_sec * 10).max(10) * 1000;
        Self {
            ratio_milli: (ratio * 1000.0).round() as i64,
            min_per_sec,
            cap_milli,
            state: Mutex::new(((min_per_sec * 1000).min(cap_milli), None)),
        }
    }

    fn refill(&self, s: &mut (i64, Option<Instant>), now: Instant) {
        if let Some(last) = s.1 {
            let dt_ms = now.saturating_duration_since(last).as_millis() as i64;
            s.0 = (s.0 + dt_ms * self.min_per_sec).min(self.cap_milli);
        }
        s.1 = Some(now);
    }

    /// Called once per request.
    pub fn deposit(&self) {
        let mut s = self.state.lock().expect("budget lock");
        s.0 = (s.0 + self.ratio_milli).min(self.cap_milli);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        let mut s = self.state.lock().expect("budget lock");
        self.refill(&mut s, Instant::now());
        if s.0 >= 1000 {
            s.0 -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_requests_are_always_retryable() {
        assert_eq!(
            decide(TryFailure::Unsent, false, false, 0, 2),
            Decision::Retry
        );
    }

    #[test]
    fn maybe_sent_post_is_never_retried() {
        assert_eq!(
            decide(TryFailure::MaybeSent, false, true, 0, 2),
            Decision::RefuseNotIdempotent
        );
    }

    #[test]
    fn maybe_sent_idempotent_needs_a_replayable_body() {
        assert_eq!(
            decide(TryFailure::MaybeSent, true, false, 0, 2),
            Decision::RefuseBodyNotReplayable
        );
        assert_eq!(
            decide(TryFailure::MaybeSent, true, true, 0, 2),
            Decision::Retry
        );
        assert_eq!(
            decide(TryFailure::MaybeSent, true, true, 2, 2),
            Decision::RefuseMaxRetries
        );
    }

    #[test]
    fn idempotency_key_makes_post_idempotent() {
        let r = Request::post("/")
            .header("idempotency-key", "k")
            .body(())
            .unwrap();
        assert!(is_idempotent(&r));
        let r = Request::post("/").body(()).unwrap();
        assert!(!is_idempotent(&r));
    }

    #[test]
    fn backoff_stays_within_cap() {
        for attempt in 0..20 {
            let d = backoff(
                Duration::from_millis(25),
                Duration::from_millis(250),
                attempt,
            );
            assert!(d <= Duration::from_millis(250));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_is_bounded_and_refills_with_requests() {
        let b = RetryBudget::new(0.2, 0);
        // With no floor, 10 requests buy 2 retries; 5 more buy one more.
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw(), "a third retry must exceed the budget");
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        // Requests never fill it past its cap (10 retries without a floor), however many.
        for _ in 0..10_000 {
            b.deposit();
        }
        assert_eq!((0..100).filter(|_| b.try_withdraw()).count(), 10);
        // Time alone adds nothing without a floor.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_with_time_up_to_its_cap() {
        // 10 retries a second: it starts with 10, and time refills it.
        let b = RetryBudget::new(0.0, 10);
        assert_eq!((0..100).filter(|_| b.try_withdraw()).count(), 10);
        assert!(!b.try_withdraw());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.try_withdraw(), "100 ms at 10 per second buy one retry");
        assert!(!b.try_withdraw());
        // A long quiet spell fills it only to its cap: ten seconds' worth.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!((0..1000).filter(|_| b.try_withdraw()).count(), 100);
    }
}
