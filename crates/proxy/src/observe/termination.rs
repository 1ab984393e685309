//! Termination codes: who ended a request or a connection, in which phase, and why.
//!
//! Each code is `side.phase.cause`, e.g. `upstream.waiting.rst`: the upstream reset the
//! connection while linger waited for the response head. `docs/termination-codes.md`
//! documents every code.

use std::fmt;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Termination {
    /// Response fully sent.
    Ok,
    // --- linger refused the request before any upstream work ---
    /// Malformed request or ambiguous framing (R12): 400, connection closed.
    BadRequest,
    /// HTTP/1.1 request without `Host`: 400.
    MissingHost,
    /// A request head over `max_header_bytes` or `max_headers`: 431, connection closed.
    HeadTooLarge,
    /// A request head started but did not finish within `header_read_timeout`: 408,
    /// connection closed.
    RequestHeadTimeout,
    /// No route matched: 404.
    NoRoute,
    // --- upstream failures ---
    /// Could not connect to any endpoint (refused, unreachable): 502.
    ConnectFailed,
    /// Connect timeout: 502.
    ConnectTimeout,
    /// The per-try response timeout ran out: 504.
    ResponseTimeout,
    /// The upstream reset before a response head: 502.
    UpstreamResetBeforeResponse,
    /// The upstream closed (FIN) before a response head: 502.
    UpstreamClosedBeforeResponse,
    /// The upstream path died before a response head: TCP keepalive or `TCP_USER_TIMEOUT`
    /// gave up on a connection whose packets went unanswered (R6): 502.
    UpstreamDeadBeforeResponse,
    /// The upstream sent something that is not HTTP: 502.
    UpstreamProtocolError,
    /// The upstream failed in the middle of the response body; the downstream response was
    /// aborted visibly (R11).
    UpstreamResetMidBody,
    /// A retry was needed but the retry budget was spent: 502.
    RetryBudgetExhausted,

    // --- downstream went away ---
    /// The downstream closed (FIN or RST) while linger waited for the upstream (R7).
    DownstreamClosedWaiting,
    /// The downstream closed while the response body was being sent (R5).
    DownstreamClosedStreaming,
    /// The downstream request body failed (reset, bad chunk) after forwarding began.
    DownstreamBodyError,
    /// A request body linger was buffering stalled for `request_body_timeout`: 408,
    /// connection closed, nothing sent upstream.
    RequestBodyTimeout,
    /// A request arrived just as linger closed the idle connection (idle timeout, drain,
    /// age): never served, no answer (R2, R10).
    RequestAtIdleClose,
    /// linger was still waiting for, or sending, the response when the drain deadline
    /// passed: the connection was closed (R10).
    DrainDeadline,
}

// === impl Termination ===

impl Termination {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::BadRequest => "linger.request_head.bad_request",
            Self::MissingHost => "linger.request_head.missing_host",
            Self::HeadTooLarge => "linger.request_head.too_large",
            Self::RequestHeadTimeout => "downstream.request_head.timeout",
            Self::NoRoute => "linger.request_head.no_route",
            Self::ConnectFailed => "upstream.connect.refused",
            Self::ConnectTimeout => "upstream.connect.timeout",
            Self::ResponseTimeout => "linger.waiting.response_timeout",
            Self::UpstreamResetBeforeResponse => "upstream.waiting.rst",
            Self::UpstreamClosedBeforeResponse => "upstream.waiting.fin",
            Self::UpstreamDeadBeforeResponse => "upstream.waiting.dead_peer",
            Self::UpstreamProtocolError => "upstream.waiting.protocol_error",
            Self::UpstreamResetMidBody => "upstream.response_body.reset",
            Self::RetryBudgetExhausted => "linger.retry.budget_exhausted",
            Self::DownstreamClosedWaiting => "downstream.waiting.closed",
            Self::DownstreamClosedStreaming => "downstream.response_body.closed",
            Self::DownstreamBodyError => "downstream.request_body.error",
            Self::RequestBodyTimeout => "downstream.request_body.timeout",
            Self::RequestAtIdleClose => "linger.idle_close.request_lost",
            Self::DrainDeadline => "linger.drain.deadline",
        }
    }
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection (either side) closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    // downstream
    /// The downstream closed an idle connection (FIN).
    PeerFinIdle,
    /// The downstream reset the connection.
    PeerRst,
    /// The downstream closed in the middle of a request or response.
    PeerFinBusy,
    /// linger's downstream idle timeout.
    IdleTimeout,
    /// A request head did not arrive in time: 408.
    HeaderReadTimeout,
    /// A request body linger was buffering stalled: 408.
    RequestBodyTimeout,
    /// `max_requests_per_connection` reached.
    MaxRequests,
    /// `max_connection_age` reached.
    MaxAge,
    /// linger is draining (SIGTERM).
    Drain,
    /// The drain deadline passed with the connection still open: closed at once.
    DrainDeadline,
    /// The request asked for `Connection: close`, or was HTTP/1.0 without keep-alive.
    RequestedClose,
    /// An early response (R4) or an unread request body.
    EarlyResponse,
    /// A malformed request (400) or a head over the limits (431).
    BadRequest,
    /// An error response after which the connection cannot be reused.
    ErrorResponse,
    /// The kernel gave up on the downstream peer: TCP keepalive probes or data went
    /// unanswered (R6: the client vanished).
    DownstreamDeadPeer,
    /// Another socket error.
    SocketError,
    /// The connection was upgraded (WebSocket) and the tunnel ended.
    UpgradeEnded,
    // upstream
    /// The upstream closed a pooled connection (FIN) while idle.
    UpstreamFinIdle,
    /// The upstream closed (FIN) during an exchange, before or inside its response.
    UpstreamFinBusy,
    /// The upstream sent bytes on an idle pooled connection.
    UpstreamUnexpectedData,
    /// linger's pool idle timeout (or the learned `Keep-Alive: timeout`).
    PoolIdleTimeout,
    /// Idle longer than the endpoint's learned idle limit (the upstream was seen dropping
    /// connections idle that long).
    PoolLearnedIdle,
    /// The response said `Connection: close`, or was HTTP/1.0.
    UpstreamConnectionClose,
    /// The learned `Keep-Alive: max` or `max_requests_per_connection` was reached.
    UpstreamMaxRequests,
    /// The pool was full.
    PoolFull,
    /// The exchange failed or was cancelled; the connection's state is unknown.
    Aborted,
    /// A `Keep-Alive: timeout` hint of 1 s or less: no reuse.
    HintNoReuse,
    /// The upstream reset the connection.
    UpstreamRst,
    /// The kernel gave up on the upstream peer: keepalive probes or data went unanswered
    /// (R6: a silent drop on the path).
    UpstreamDeadPeer,
    /// The response came before the request body was fully sent (R12).
    UnknownState,
    /// A body on GET or HEAD: a backend that ignores such bodies reads the body as the
    /// next request, so neither side's connection is reused (R12).
    AmbiguousRequest,
}

// === impl CloseReason ===

impl CloseReason {
    /// Every reason, in declaration order: `ALL[r.index()] == r`.
    pub const ALL: [Self; 31] = [
        Self::PeerFinIdle,
        Self::PeerRst,
        Self::PeerFinBusy,
        Self::IdleTimeout,
        Self::HeaderReadTimeout,
        Self::RequestBodyTimeout,
        Self::MaxRequests,
        Self::MaxAge,
        Self::Drain,
        Self::DrainDeadline,
        Self::RequestedClose,
        Self::EarlyResponse,
        Self::BadRequest,
        Self::ErrorResponse,
        Self::DownstreamDeadPeer,
        Self::SocketError,
        Self::UpgradeEnded,
        Self::UpstreamFinIdle,
        Self::UpstreamFinBusy,
        Self::UpstreamUnexpectedData,
        Self::PoolIdleTimeout,
        Self::PoolLearnedIdle,
        Self::UpstreamConnectionClose,
        Self::UpstreamMaxRequests,
        Self::PoolFull,
        Self::Aborted,
        Self::HintNoReuse,
        Self::UpstreamRst,
        Self::UpstreamDeadPeer,
        Self::UnknownState,
        Self::AmbiguousRequest,
    ];

    /// How many reasons there are: the length of a table indexed by [`CloseReason::index`].
    pub const COUNT: usize = Self::ALL.len();

    /// This reason's place in [`CloseReason::ALL`], for tables kept per reason.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Did the connection end in a way worth a look (its journal goes to the log)? Timeouts,
    /// limits, drains and orderly closes by either peer are normal.
    pub fn is_abnormal(self) -> bool {
        matches!(
            self,
            Self::PeerRst
                | Self::PeerFinBusy
                | Self::BadRequest
                | Self::HeaderReadTimeout
                | Self::RequestBodyTimeout
                | Self::ErrorResponse
                | Self::DownstreamDeadPeer
                | Self::SocketError
                | Self::UpstreamUnexpectedData
                | Self::Aborted
                | Self::UpstreamRst
                | Self::UpstreamFinBusy
                | Self::UpstreamDeadPeer
                | Self::UnknownState
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeerFinIdle => "downstream_fin_idle",
            Self::PeerRst => "downstream_rst",
            Self::PeerFinBusy => "downstream_fin_busy",
            Self::IdleTimeout => "idle_timeout",
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::RequestBodyTimeout => "request_body_timeout",
            Self::MaxRequests => "max_requests",
            Self::MaxAge => "max_age",
            Self::Drain => "drain",
            Self::DrainDeadline => "drain_deadline",
            Self::RequestedClose => "requested_close",
            Self::EarlyResponse => "early_response",
            Self::BadRequest => "bad_request",
            Self::ErrorResponse => "error_response",
            Self::DownstreamDeadPeer => "downstream_dead_peer",
            Self::SocketError => "socket_error",
            Self::UpgradeEnded => "upgrade_ended",
            Self::UpstreamFinIdle => "upstream_fin_idle",
            Self::UpstreamFinBusy => "upstream_fin_busy",
            Self::UpstreamUnexpectedData => "upstream_unexpected_data",
            Self::PoolIdleTimeout => "pool_idle_timeout",
            Self::PoolLearnedIdle => "pool_learned_idle",
            Self::UpstreamConnectionClose => "upstream_connection_close",
            Self::UpstreamMaxRequests => "upstream_max_requests",
            Self::PoolFull => "pool_full",
            Self::Aborted => "aborted",
            Self::HintNoReuse => "keep_alive_hint_no_reuse",
            Self::UpstreamRst => "upstream_rst",
            Self::UpstreamDeadPeer => "upstream_dead_peer",
            Self::UnknownState => "unknown_state",
            Self::AmbiguousRequest => "ambiguous_request",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_in_its_place() {
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r} is out of place in CloseReason::ALL");
            assert!(names.insert(r.as_str()), "{r} is listed twice");
        }
        // The last reason declared closes the list: a reason declared after it would
        // have an index past every table kept per reason.
        assert_eq!(
            CloseReason::AmbiguousRequest.index() + 1,
            CloseReason::COUNT
        );
    }
}
