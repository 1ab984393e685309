//! When may a pooled upstream connection be reused? (R1, R9, R12)

use std::time::Duration;

use http::{header, HeaderMap, Version};

use crate::observe::CloseReason;

/// What an upstream announced in `Keep-Alive: timeout=N, max=M`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepAliveHint {
    pub timeout: Option<Duration>,
    pub max: Option<u64>,
}

/// Parses every `Keep-Alive` header value; unknown parameters are ignored, the smallest of
/// repeated parameters wins. (Heads read their fields where they are parsed; this is the
/// same reading of a map, for the tests.)
#[cfg(test)]
pub fn parse_keep_alive(headers: &HeaderMap) -> KeepAliveHint {
    let mut hint = KeepAliveHint::default();
    for value in headers.get_all(crate::forward::KEEP_ALIVE) {
        hint.add(value.as_bytes());
    }
    hint
}

impl KeepAliveHint {
    /// Adds the parameters of one `Keep-Alive` value.
    pub fn add(&mut self, value: &[u8]) {
        for param in value.split(|&b| b == b',') {
            let Some(eq) = param.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (k, v) = (param[..eq].trim_ascii(), param[eq + 1..].trim_ascii());
            let v = v.strip_prefix(b"\"").unwrap_or(v);
            let v = v.strip_suffix(b"\"").unwrap_or(v);
            let Some(n) = std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            if k.eq_ignore_ascii_case(b"timeout") {
                let d = Duration::from_secs(n);
                self.timeout = Some(self.timeout.map_or(d, |t| t.min(d)));
            } else if k.eq_ignore_ascii_case(b"max") {
                self.max = Some(self.max.map_or(n, |x| x.min(n)));
            }
        }
    }
}

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), trimmed; empty ones
/// are skipped.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// What a message's `Connection` and `Keep-Alive` fields say of its connection: read once,
/// where the head is parsed (those fields go no further: they are hop-by-hop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnFields {
    /// `Connection` lists `close`.
    pub close: bool,
    /// `Connection` lists `keep-alive`.
    pub keep_alive: bool,
    /// `Connection` lists `upgrade`.
    pub upgrade: bool,
    /// `Keep-Alive: timeout=N, max=M`.
    pub hint: KeepAliveHint,
}

impl ConnFields {
    /// Reads them from a header map (the tests' heads).
    #[cfg(test)]
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut c = Self {
            hint: parse_keep_alive(headers),
            ..Self::default()
        };
        for v in headers.get_all(header::CONNECTION) {
            c.add_connection(v.as_bytes(), |_| {});
        }
        c
    }

    /// Adds the tokens of one `Connection` value; `other` gets each token that is none of
    /// `close`, `keep-alive` and `upgrade` (the name of another hop-by-hop field).
    pub fn add_connection<'v>(&mut self, value: &'v [u8], mut other: impl FnMut(&'v [u8])) {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                other(token);
            }
        }
    }
}

/// The reuse rules of one cluster.
#[derive(Debug, Clone)]
pub struct ReusePolicy {
    pub idle_timeout: Duration,
    pub learn_keep_alive: bool,
    pub margin: Duration,
    pub max_requests: Option<u64>,
}

/// The decision after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Return the connection to the pool; do not reuse it after `idle_for` of idleness, nor
    /// for more than `requests_left` further requests.
    Keep {
        idle_for: Duration,
        requests_left: Option<u64>,
    },
    Close(CloseReason),
}

/// Facts about one finished exchange.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub version: Version,
    /// What the response's `Connection` and `Keep-Alive` fields said.
    pub conn: ConnFields,
    /// Requests served on this connection, this one included.
    pub served: u64,
    /// Further requests allowed by an earlier hint.
    pub requests_left: Option<u64>,
    /// Was the whole request body written before the response arrived?
    pub request_body_complete: bool,
}

// === impl ReusePolicy ===

impl ReusePolicy {
    pub fn after_response(&self, ex: Exchange) -> Reuse {
        if !ex.request_body_complete {
            // A final status before the body was fully sent (early response, or a status
            // instead of 100 Continue): the upstream's view of the framing is unknown (R12).
            return Reuse::Close(CloseReason::UnknownState);
        }
        if ex.version == Version::HTTP_10 && !ex.conn.keep_alive {
            return Reuse::Close(CloseReason::UpstreamConnectionClose);
        }
        if ex.version < Version::HTTP_10 || ex.conn.close {
            return Reuse::Close(CloseReason::UpstreamConnectionClose);
        }
        let mut idle_for = self.idle_timeout;
        let mut requests_left = ex.requests_left.map(|n| n.saturating_sub(1));
        if let Some(max) = self.max_requests {
            let left = max.saturating_sub(ex.served);
            requests_left = Some(requests_left.map_or(left, |l| l.min(left)));
        }
        if self.learn_keep_alive {
            let hint = ex.conn.hint;
            if let Some(t) = hint.timeout {
                if t <= Duration::from_secs(1) {
                    return Reuse::Close(CloseReason::HintNoReuse);
                }
                idle_for = idle_for.min(t.saturating_sub(self.margin));
                if idle_for.is_zero() {
                    return Reuse::Close(CloseReason::HintNoReuse);
                }
            }
            if let Some(m) = hint.max {
                requests_left = Some(requests_left.map_or(m, |l| l.min(m)));
            }
        }
        if requests_left == Some(0) {
            return Reuse::Close(CloseReason::UpstreamMaxRequests);
        }
        Reuse::Keep {
            idle_for,
            requests_left,
        }
    }
}

/// Does any `Connection` header list `token`?
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    has_token(headers, header::CONNECTION, token)
}

/// Does any `name` header list `token` (comma-separated, case-insensitive)?
pub fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok() && tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy() -> ReusePolicy {
        ReusePolicy {
            idle_timeout: Duration::from_secs(60),
            learn_keep_alive: true,
            margin: Duration::from_secs(1),
            max_requests: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ex(h: &HeaderMap) -> Exchange {
        Exchange {
            version: Version::HTTP_11,
            conn: ConnFields::from_headers(h),
            served: 1,
            requests_left: None,
            request_body_complete: true,
        }
    }

    #[test]
    fn keep_alive_timeout_hint_caps_idle_time_minus_margin() {
        let h = headers(&[("keep-alive", "timeout=5, max=100")]);
        assert_eq!(
            policy().after_response(ex(&h)),
            Reuse::Keep {
                idle_for: Duration::from_secs(4),
                requests_left: Some(100)
            }
        );
    }

    #[test]
    fn hint_of_one_second_or_less_means_no_reuse() {
        let h = headers(&[("keep-alive", "timeout=1")]);
        assert_eq!(
            policy().after_response(ex(&h)),
            Reuse::Close(CloseReason::HintNoReuse)
        );
    }

    #[test]
    fn configured_idle_timeout_wins_when_shorter_than_hint() {
        let mut p = policy();
        p.idle_timeout = Duration::from_millis(1500);
        let h = headers(&[("keep-alive", "timeout=5")]);
        assert_eq!(
            p.after_response(ex(&h)),
            Reuse::Keep {
                idle_for: Duration::from_millis(1500),
                requests_left: None
            }
        );
    }

    #[test]
    fn max_counts_down_and_zero_closes() {
        let h = HeaderMap::new();
        let mut e = ex(&h);
        e.requests_left = Some(1);
        assert_eq!(
            policy().after_response(e),
            Reuse::Close(CloseReason::UpstreamMaxRequests)
        );
    }

    #[test]
    fn connection_close_and_http10_are_never_reused() {
        let h = headers(&[("connection", "Close")]);
        assert_eq!(
            policy().after_response(ex(&h)),
            Reuse::Close(CloseReason::UpstreamConnectionClose)
        );
        let h = HeaderMap::new();
        let mut e = ex(&h);
        e.version = Version::HTTP_10;
        assert_eq!(
            policy().after_response(e),
            Reuse::Close(CloseReason::UpstreamConnectionClose)
        );
    }

    #[test]
    fn response_before_body_complete_is_unknown_state() {
        let h = HeaderMap::new();
        let mut e = ex(&h);
        e.request_body_complete = false;
        assert_eq!(
            policy().after_response(e),
            Reuse::Close(CloseReason::UnknownState)
        );
    }

    #[test]
    fn ignored_hint_when_learning_is_off() {
        let mut p = policy();
        p.learn_keep_alive = false;
        let h = headers(&[("keep-alive", "timeout=1")]);
        assert!(matches!(p.after_response(ex(&h)), Reuse::Keep { .. }));
    }
}
