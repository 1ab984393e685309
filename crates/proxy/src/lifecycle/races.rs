//! Every race of `docs/races.md`, one test each, against the sans-io decisions that handle
//! it: plain values and `Instant`s in, decisions out; no socket, no task, no clock read.
//! The wire tests (`tests/lifecycle.rs`, the lab) show the same races end to end.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Version};
use linger_h1::{response_framing, BodyDecoder, Framing, FramingGuard, FramingViolation};
use tokio::time::Instant;

use super::connection::{Action, Connection, Drain, Timers, DRAIN_IDLE_GRACE};
use super::downstream::{ConnDecision, DownstreamPolicy, ResponseFacts};
use super::upstream::{ConnFields, Exchange, Reuse, ReusePolicy};
use crate::error::{BodyFailure, TryError, TryErrorKind};
use crate::io::PeerClose;
use crate::observe::{CloseReason, Termination};
use crate::retry::{decide, Decision};
use crate::upstream::learn::{Learned, RIGHT_AFTER};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn connection(now: Instant) -> Connection {
    Connection::new(
        Timers {
            idle_timeout: Duration::from_secs(75),
            header_read_timeout: Duration::from_secs(10),
            max_age: None,
        },
        now,
    )
}

fn reuse() -> ReusePolicy {
    ReusePolicy {
        idle_timeout: Duration::from_secs(60),
        learn_keep_alive: true,
        margin: Duration::from_secs(1),
        max_requests: None,
    }
}

fn exchange(headers: &HeaderMap) -> Exchange {
    Exchange {
        version: Version::HTTP_11,
        conn: ConnFields::from_headers(headers),
        served: 1,
        requests_left: None,
        request_body_complete: true,
    }
}

fn downstream() -> DownstreamPolicy {
    DownstreamPolicy {
        idle_timeout: Duration::from_secs(75),
        announce_keep_alive: true,
        max_requests: Some(1000),
        max_age: None,
    }
}

/// R1: the upstream's idle close. A hinted timeout caps reuse below it; a request that
/// meets a stale connection is retried when nothing of it was sent, or when it is
/// idempotent and replayable, and never twice otherwise; the stale connection says
/// nothing about the endpoint's health.
#[test]
fn r1_upstream_idle_close() {
    let mut h = HeaderMap::new();
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    assert_eq!(
        reuse().after_response(exchange(&h)),
        Reuse::Keep {
            idle_for: Duration::from_secs(4),
            requests_left: None
        }
    );
    let unsent = TryError::new(TryErrorKind::PeerGone(PeerClose::Rst), false, true);
    assert_eq!(
        decide(unsent.failure(), false, false, 0, 2),
        Decision::Retry
    );
    let sent = TryError::new(TryErrorKind::PeerGone(PeerClose::Rst), true, true);
    assert_eq!(sent.classify().1, "reused_connection_reset");
    assert!(!sent.says_upstream_unhealthy());
    assert_eq!(
        decide(sent.failure(), false, true, 0, 2),
        Decision::RefuseNotIdempotent
    );
    assert_eq!(decide(sent.failure(), true, true, 0, 2), Decision::Retry);
    // An origin that drops idle connections without a hint is learned from the failure:
    // connections idle as long are no longer reused.
    let learned = learned();
    learned.reuse_failed(ms(130));
    assert!(learned.reuse_limit().is_some_and(|l| l < ms(100)));
}

/// What an endpoint has shown of its closes, with nothing learned yet.
fn learned() -> Learned {
    Learned::new(
        std::sync::Arc::new("c".into()),
        std::sync::Arc::new("e".into()),
        Duration::from_secs(60),
        true,
        &crate::observe::Metrics::new(),
    )
}

/// R2: linger's own idle close. It meets only an idle connection, at its deadline; bytes
/// that arrive after it are a request linger never served (and are logged as one).
#[test]
fn r2_downstream_idle_close() {
    let t0 = Instant::now();
    let mut c = connection(t0);
    let idle = Duration::from_secs(75);
    assert_eq!(c.on_timer(t0 + idle - ms(1)), Action::Wait);
    assert_eq!(
        c.on_timer(t0 + idle),
        Action::Close(CloseReason::IdleTimeout)
    );
    assert!(Connection::closed_idle(CloseReason::IdleTimeout));
    assert_eq!(
        downstream().announce(),
        Some(75),
        "the announced timeout is never above the real one"
    );
}

/// R3: every close after a response is announced on it, and the reason it names is the
/// connection's close reason.
#[test]
fn r3_unannounced_close() {
    let d = downstream().decide(ResponseFacts {
        request_index: 1000,
        ..Default::default()
    });
    assert_eq!(d, ConnDecision::Close(CloseReason::MaxRequests));
    let t0 = Instant::now();
    let mut c = connection(t0);
    c.request_started();
    c.close_after_response(CloseReason::MaxRequests);
    assert_eq!(
        c.response_ended(t0),
        Action::Close(CloseReason::MaxRequests)
    );
    assert_eq!(c.ended(PeerClose::Fin, false), CloseReason::MaxRequests);
}

/// R4: an early response. The downstream closes after it (gracefully, so the client reads
/// it), and the upstream connection, whose view of the framing is unknown, is not reused.
#[test]
fn r4_early_response() {
    let d = downstream().decide(ResponseFacts {
        request_index: 1,
        request_body_unread: true,
        ..Default::default()
    });
    assert_eq!(d, ConnDecision::Close(CloseReason::EarlyResponse));
    let h = HeaderMap::new();
    let mut e = exchange(&h);
    e.request_body_complete = false;
    assert_eq!(
        reuse().after_response(e),
        Reuse::Close(CloseReason::UnknownState)
    );
}

/// R5: the client half-closes while a response streams (policy `abort`): the close is the
/// client's, named busy.
#[test]
fn r5_half_close_while_streaming() {
    let t0 = Instant::now();
    let mut c = connection(t0);
    c.request_started();
    assert_eq!(c.ended(PeerClose::Fin, true), CloseReason::PeerFinBusy);
    assert_eq!(c.ended(PeerClose::Rst, true), CloseReason::PeerRst);
}

/// R6: a silently dropped flow. The kernel's give-up (keepalive or user timeout) is named
/// a dead peer on either side, never a FIN.
#[test]
fn r6_silent_drop() {
    let c = connection(Instant::now());
    assert_eq!(
        c.ended(PeerClose::TimedOut, false),
        CloseReason::DownstreamDeadPeer
    );
    let dead = TryError::new(TryErrorKind::PeerGone(PeerClose::TimedOut), true, false);
    assert_eq!(
        dead.classify(),
        (Termination::UpstreamDeadBeforeResponse, "connection_dead")
    );
    assert_eq!(dead.close_reason(), CloseReason::UpstreamDeadPeer);
}

/// R7: the client leaves while linger waits for the upstream: named busy, and the
/// upstream connection goes with the request (`aborted`, linger's own close).
#[test]
fn r7_client_leaves_waiting() {
    let t0 = Instant::now();
    let mut c = connection(t0);
    c.head_started(t0);
    c.request_started();
    assert_eq!(
        c.deadline(),
        None,
        "no timer of the connection's cuts a wait"
    );
    assert_eq!(c.ended(PeerClose::Fin, false), CloseReason::PeerFinBusy);
    assert!(CloseReason::Aborted.is_abnormal());
}

/// R8: a response that ends at the close has nothing unread after it; HEAD, 204 and 304
/// have no body whatever their head says.
#[test]
fn r8_close_delimited() {
    let until_close = response_framing("GET", 200, &[]).unwrap();
    assert_eq!(until_close.framing, Framing::UntilClose);
    assert!(until_close.must_close);
    let cl = [httparse::Header {
        name: "content-length",
        value: b"10",
    }];
    assert_eq!(
        response_framing("HEAD", 200, &cl).unwrap().framing,
        Framing::Empty
    );
    assert_eq!(
        response_framing("GET", 304, &cl).unwrap().framing,
        Framing::Empty
    );
}

/// R9: reuse right after an unannounced close. An announced close is never pooled; an
/// endpoint seen closing right after its responses sends requests that may not be
/// retried to fresh connections, and the sightings fade as reuse works again.
#[test]
fn r9_close_after_response() {
    let mut h = HeaderMap::new();
    h.insert("connection", HeaderValue::from_static("close"));
    assert_eq!(
        reuse().after_response(exchange(&h)),
        Reuse::Close(CloseReason::UpstreamConnectionClose)
    );
    let t0 = Instant::now();
    let learned = learned();
    assert!(!learned.upstream_closed(RIGHT_AFTER + ms(1), t0));
    assert!(learned.upstream_closed(ms(1), t0));
    assert!(learned.closes_after_response(t0 + ms(10)));
    learned.reuse_worked(Duration::ZERO);
    assert!(!learned.closes_after_response(t0 + ms(10)));
}

/// R10: a drain. Idle connections close after a short grace, busy ones after their
/// response, and the deadline cuts the rest with a reason of its own.
#[test]
fn r10_drain() {
    let t0 = Instant::now();
    let mut idle = connection(t0);
    idle.drain(Drain::Draining, t0);
    assert_eq!(
        idle.on_timer(t0 + DRAIN_IDLE_GRACE),
        Action::Close(CloseReason::Drain)
    );
    let d = downstream().decide(ResponseFacts {
        request_index: 1,
        draining: true,
        ..Default::default()
    });
    assert_eq!(d, ConnDecision::Close(CloseReason::Drain));
    let mut busy = connection(t0);
    busy.request_started();
    assert_eq!(busy.drain(Drain::Cut, t0), Action::Cut);
    assert_eq!(
        busy.ended(PeerClose::Open, true),
        CloseReason::DrainDeadline
    );
}

/// R11: the upstream dies mid-body. The body's end never comes: the failure is named by
/// what the upstream did, and the downstream response is cut, never completed.
#[test]
fn r11_upstream_dies_mid_body() {
    let mut body = BodyDecoder::new(Framing::Length(10));
    body.decode(b"12345").unwrap();
    assert!(body.eof().is_err(), "a short body is no complete response");
    assert_eq!(
        BodyFailure::PeerGone(PeerClose::Rst).close_reason(),
        CloseReason::UpstreamRst
    );
    assert_eq!(
        BodyFailure::PeerGone(PeerClose::Fin).close_reason(),
        CloseReason::UpstreamFinBusy
    );
}

/// R12: framing two hops read differently is refused before any byte goes upstream, and a
/// response framed both ways is not reused.
#[test]
fn r12_ambiguous_framing() {
    let mut guard = FramingGuard::new(64 * 1024);
    let mut req =
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    assert_eq!(
        guard.feed(&mut req),
        Err(FramingViolation::ContentLengthAndTransferEncoding)
    );
    let both = [
        httparse::Header {
            name: "content-length",
            value: b"3",
        },
        httparse::Header {
            name: "transfer-encoding",
            value: b"chunked",
        },
    ];
    let f = response_framing("GET", 200, &both).unwrap();
    assert_eq!(f.framing, Framing::Chunked);
    assert!(f.must_close);
}
