//! Typed errors of the request path. A failed upstream try says which side failed, what
//! happened, and whether any of the request reached the upstream: the retry rules, the
//! termination code and the close reason are read off these types, never off an error's
//! text.

use std::fmt;
use std::time::Duration;

use crate::io::PeerClose;
use crate::observe::{CloseReason, Termination};
use crate::retry::TryFailure;

/// What went wrong during one upstream try, before a response head was complete.
#[derive(Debug)]
pub enum TryErrorKind {
    /// The connect was refused or failed.
    Connect(std::io::Error),
    /// The connect did not finish in time.
    ConnectTimeout(Duration),
    /// The upstream closed, reset or went dead before a complete response head.
    PeerGone(PeerClose),
    /// The response head was malformed or framed its body ambiguously.
    Protocol(&'static str),
    /// No response head within the cluster's `response_timeout`.
    ResponseTimeout(Duration),
    /// The downstream request body failed while it was forwarded.
    RequestBody,
}

/// One failed try.
#[derive(Debug)]
pub struct TryError {
    pub kind: TryErrorKind,
    /// Did any byte of the request reach the upstream's socket?
    pub written: bool,
    /// Was the connection a reused one from the pool?
    pub reused: bool,
    /// The connection's id, once there was one.
    pub conn: Option<u64>,
}

// === impl TryError ===

impl TryError {
    pub fn new(kind: TryErrorKind, written: bool, reused: bool) -> Self {
        Self {
            kind,
            written,
            reused,
            conn: None,
        }
    }

    /// May the request be sent again? Nothing written means nothing reached the upstream.
    pub fn failure(&self) -> TryFailure {
        match self.kind {
            TryErrorKind::Connect(_) | TryErrorKind::ConnectTimeout(_) => TryFailure::Unsent,
            _ if !self.written => TryFailure::Unsent,
            _ => TryFailure::MaybeSent,
        }
    }

    /// The termination code if no retry follows, and the retry reason logged with the
    /// decision.
    pub fn classify(&self) -> (Termination, &'static str) {
        let reused = self.reused;
        match &self.kind {
            TryErrorKind::Connect(_) => (Termination::ConnectFailed, "connect_failed"),
            TryErrorKind::ConnectTimeout(_) => (Termination::ConnectTimeout, "connect_timeout"),
            TryErrorKind::ResponseTimeout(_) => (Termination::ResponseTimeout, "per_try_timeout"),
            TryErrorKind::Protocol(_) => (
                Termination::UpstreamProtocolError,
                "upstream_protocol_error",
            ),
            TryErrorKind::RequestBody => (
                Termination::DownstreamBodyError,
                "downstream_request_body_error",
            ),
            TryErrorKind::PeerGone(PeerClose::TimedOut) => (
                Termination::UpstreamDeadBeforeResponse,
                if reused {
                    "reused_connection_dead"
                } else {
                    "connection_dead"
                },
            ),
            TryErrorKind::PeerGone(PeerClose::Rst) => (
                Termination::UpstreamResetBeforeResponse,
                if reused {
                    "reused_connection_reset"
                } else {
                    "connection_reset"
                },
            ),
            TryErrorKind::PeerGone(_) => (
                Termination::UpstreamClosedBeforeResponse,
                if reused {
                    "reused_connection_closed"
                } else {
                    "connection_closed"
                },
            ),
        }
    }

    /// Does the failure say something about the endpoint's health? A stale pooled
    /// connection does not; then the retry neither backs off nor avoids the endpoint.
    pub fn says_upstream_unhealthy(&self) -> bool {
        match self.kind {
            TryErrorKind::PeerGone(_) => !self.reused,
            TryErrorKind::RequestBody => false,
            _ => true,
        }
    }

    /// Why the try's connection is closed.
    pub fn close_reason(&self) -> CloseReason {
        match &self.kind {
            TryErrorKind::PeerGone(p) => peer_close_reason(*p),
            TryErrorKind::Protocol(_) => CloseReason::UpstreamUnexpectedData,
            _ => CloseReason::Aborted,
        }
    }
}

impl fmt::Display for TryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TryErrorKind::Connect(e) => write!(f, "connect failed: {e}"),
            TryErrorKind::ConnectTimeout(d) => write!(f, "connect timed out after {d:?}"),
            TryErrorKind::PeerGone(p) => write!(
                f,
                "connection ended before a response head (peer {})",
                p.as_str()
            ),
            TryErrorKind::Protocol(what) => write!(f, "invalid response: {what}"),
            TryErrorKind::ResponseTimeout(d) => write!(f, "no response head within {d:?}"),
            TryErrorKind::RequestBody => f.write_str("the request body failed while forwarded"),
        }
    }
}

/// How a response body from the upstream failed before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// The upstream closed, reset or went dead inside the body.
    PeerGone(PeerClose),
    /// The body broke its framing (a bad chunk line).
    Malformed(linger_h1::BodyError),
}

// === impl BodyFailure ===

impl BodyFailure {
    pub fn close_reason(self) -> CloseReason {
        match self {
            Self::PeerGone(p) => peer_close_reason(p),
            Self::Malformed(_) => CloseReason::UpstreamUnexpectedData,
        }
    }
}

impl fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerGone(p) => {
                write!(f, "connection ended inside the body (peer {})", p.as_str())
            }
            Self::Malformed(e) => write!(f, "malformed body: {e}"),
        }
    }
}

impl std::error::Error for BodyFailure {}

/// Why an upstream connection that the peer ended during an exchange is closed. The
/// upstream's own close is never named as one linger made.
pub fn peer_close_reason(peer: PeerClose) -> CloseReason {
    match peer {
        PeerClose::Rst => CloseReason::UpstreamRst,
        PeerClose::TimedOut => CloseReason::UpstreamDeadPeer,
        PeerClose::Fin => CloseReason::UpstreamFinBusy,
        PeerClose::Error => CloseReason::SocketError,
        PeerClose::Open => CloseReason::Aborted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_class_follows_what_reached_the_upstream() {
        let unsent = TryError::new(TryErrorKind::PeerGone(PeerClose::Rst), false, true);
        assert_eq!(unsent.failure(), TryFailure::Unsent);
        let sent = TryError::new(TryErrorKind::PeerGone(PeerClose::Rst), true, true);
        assert_eq!(sent.failure(), TryFailure::MaybeSent);
        assert_eq!(
            sent.classify(),
            (
                Termination::UpstreamResetBeforeResponse,
                "reused_connection_reset"
            )
        );
        assert!(!sent.says_upstream_unhealthy());
        let fresh = TryError::new(TryErrorKind::PeerGone(PeerClose::Fin), true, false);
        assert_eq!(fresh.classify().1, "connection_closed");
        assert!(fresh.says_upstream_unhealthy());
        assert_eq!(fresh.close_reason(), CloseReason::UpstreamFinBusy);
        let refused = TryError::new(
            TryErrorKind::Connect(std::io::ErrorKind::ConnectionRefused.into()),
            false,
            false,
        );
        assert_eq!(refused.failure(), TryFailure::Unsent);
        assert_eq!(refused.classify().0, Termination::ConnectFailed);
    }
}
