//! Does a downstream connection stay open after this response? (R3, R4, R10)
//!
//! The invariant: every HTTP/1.1 response after which linger closes carries
//! `Connection: close`. The service asks `decide` before it sends a response head and
//! writes the header itself; the driver then closes after that response.

use std::time::Duration;

use crate::observe::CloseReason;

#[derive(Debug, Clone)]
pub struct DownstreamPolicy {
    pub idle_timeout: Duration,
    pub announce_keep_alive: bool,
    pub max_requests: Option<u64>,
    pub max_age: Option<Duration>,
}

/// Facts at the moment a response head is about to be sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseFacts {
    /// 1-based index of this request on the connection.
    pub request_index: u64,
    pub age: Duration,
    pub draining: bool,
    /// The request asked to close, or is HTTP/1.0 without keep-alive.
    pub request_wants_close: bool,
    /// The request body has not been read to its end (R4).
    pub request_body_unread: bool,
    /// linger is answering with an error after which the connection is unusable.
    pub fatal_error: bool,
    /// The request's framing is one a backend may read otherwise (a body on GET or HEAD).
    pub ambiguous_request: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnDecision {
    /// Keep the connection; announce `Keep-Alive: timeout=N` when `announce` is set.
    KeepAlive {
        announce: Option<u64>,
    },
    Close(CloseReason),
}

// === impl DownstreamPolicy ===

impl DownstreamPolicy {
    /// The `Keep-Alive: timeout=N` to announce: whole seconds, rounded down, so linger never
    /// promises more idle time than it allows (R2); below 1 s there is nothing safe to say.
    pub fn announce(&self) -> Option<u64> {
        let secs = self.idle_timeout.as_secs();
        (self.announce_keep_alive && secs >= 1).then_some(secs)
    }

    pub fn decide(&self, f: ResponseFacts) -> ConnDecision {
        let close = if f.fatal_error {
            Some(CloseReason::ErrorResponse)
        } else if f.request_body_unread {
            Some(CloseReason::EarlyResponse)
        } else if f.ambiguous_request {
            Some(CloseReason::AmbiguousRequest)
        } else if f.draining {
            Some(CloseReason::Drain)
        } else if f.request_wants_close {
            Some(CloseReason::RequestedClose)
        } else if self.max_requests.is_some_and(|m| f.request_index >= m) {
            Some(CloseReason::MaxRequests)
        } else if self.max_age.is_some_and(|m| f.age >= m) {
            Some(CloseReason::MaxAge)
        } else {
            None
        };
        match close {
            Some(reason) => ConnDecision::Close(reason),
            None => ConnDecision::KeepAlive {
                announce: self.announce(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DownstreamPolicy {
        DownstreamPolicy {
            idle_timeout: Duration::from_secs(75),
            announce_keep_alive: true,
            max_requests: Some(3),
            max_age: Some(Duration::from_secs(10)),
        }
    }

    #[test]
    fn keeps_alive_and_announces_idle_timeout() {
        let d = policy().decide(ResponseFacts {
            request_index: 1,
            ..Default::default()
        });
        assert_eq!(d, ConnDecision::KeepAlive { announce: Some(75) });
    }

    #[test]
    fn last_allowed_request_closes() {
        let d = policy().decide(ResponseFacts {
            request_index: 3,
            ..Default::default()
        });
        assert_eq!(d, ConnDecision::Close(CloseReason::MaxRequests));
    }

    #[test]
    fn age_drain_and_unread_body_close() {
        let p = policy();
        let base = ResponseFacts {
            request_index: 1,
            ..Default::default()
        };
        assert_eq!(
            p.decide(ResponseFacts {
                age: Duration::from_secs(10),
                ..base
            }),
            ConnDecision::Close(CloseReason::MaxAge)
        );
        assert_eq!(
            p.decide(ResponseFacts {
                draining: true,
                ..base
            }),
            ConnDecision::Close(CloseReason::Drain)
        );
        assert_eq!(
            p.decide(ResponseFacts {
                request_body_unread: true,
                ..base
            }),
            ConnDecision::Close(CloseReason::EarlyResponse)
        );
    }
}
