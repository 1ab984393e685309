//! What a proxy did with a row, and whether that is what the row expects.

use std::fmt;

use super::send::{ClientEnd, Observed};
use super::{Expect, Row};

/// What happened, whatever the row expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The proxy answered itself and the origin got nothing.
    Refused { status: u16, closed: bool },
    /// Bytes reached the origin.
    Forwarded {
        /// Requests the origin parsed.
        requests: usize,
        /// The first status the client got, if any.
        status: Option<u16>,
        /// Both the client connection and every origin connection that carried a request
        /// were closed by the proxy afterwards.
        isolated: bool,
        /// Bytes the origin could not parse as a request.
        unparsed: usize,
    },
    /// No answer and nothing upstream.
    NoAnswer { closed: bool },
}

impl Outcome {
    /// A short class for tallies: refused, forwarded, isolated, no answer.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Refused { closed: true, .. } => "refused",
            Self::Refused { closed: false, .. } => "refused, kept open",
            Self::Forwarded { isolated: true, .. } => "forwarded, isolated",
            Self::Forwarded { .. } => "forwarded",
            Self::NoAnswer { .. } => "no answer",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { status, closed } => {
                write!(f, "refused {status}")?;
                if !closed {
                    f.write_str(", connection kept open")?;
                }
                Ok(())
            }
            Self::Forwarded {
                requests,
                status,
                isolated,
                unparsed,
            } => {
                write!(f, "forwarded as {requests} request(s)")?;
                match status {
                    Some(s) => write!(f, ", answered {s}")?,
                    None => f.write_str(", no answer")?,
                }
                if *unparsed > 0 {
                    write!(f, ", {unparsed} bytes the origin could not parse")?;
                }
                if *isolated {
                    f.write_str(", neither connection reused")?;
                }
                Ok(())
            }
            Self::NoAnswer { closed: true } => f.write_str("closed without an answer"),
            Self::NoAnswer { closed: false } => f.write_str("no answer, connection open"),
        }
    }
}

/// A row's outcome and whether it met the row's expectation.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub outcome: Outcome,
    pub pass: bool,
    /// Whether it met the source's own verdict (differs from `pass` only on rows where
    /// linger deviates).
    pub source_pass: bool,
    /// Why it failed, when it did.
    pub why: Option<String>,
}

/// A status that refuses a request: 4xx, or 501 (an unknown transfer coding) and 505 (an
/// unsupported version), which RFC 9112 names for those cases.
fn refusal_status(s: u16) -> bool {
    (400..500).contains(&s) || s == 501 || s == 505
}

/// Judges what `obs` shows against `row`.
pub fn judge(row: &Row, obs: &Observed) -> Verdict {
    let closed = obs.end != ClientEnd::Open;
    let first = obs.responses.first().copied();
    let o = &obs.origin;
    let outcome = if o.bytes == 0 {
        match first {
            Some(status) => Outcome::Refused { status, closed },
            None => Outcome::NoAnswer { closed },
        }
    } else {
        Outcome::Forwarded {
            requests: o.requests.len(),
            status: first,
            isolated: closed && !o.requests.is_empty() && o.request_conns_closed(),
            unparsed: o.unparsed,
        }
    };
    let refused_ok = match &outcome {
        Outcome::Refused { status, closed } => {
            if !closed {
                Err("the proxy kept the connection open after refusing".to_owned())
            } else if row.status.map_or(refusal_status(*status), |s| s == *status) {
                Ok(())
            } else {
                Err(format!(
                    "refused with {status}, expected {}",
                    row.status.map_or("a 4xx".to_owned(), |s| s.to_string())
                ))
            }
        }
        other => Err(format!("expected a refusal, got: {other}")),
    };
    let forwarded_ok = forwarded_as_expected(row, obs, &outcome);
    let meets = |expect: Expect| match expect {
        Expect::Refuse => refused_ok.clone(),
        Expect::Forward => forwarded_ok.clone(),
        Expect::RefuseOrIsolate => refused_ok.clone().or_else(|_| {
            forwarded_ok.clone().and_then(|()| match &outcome {
                Outcome::Forwarded { isolated: true, .. } => Ok(()),
                other => Err(format!(
                    "expected a refusal, or forwarding with neither connection reused; got: {other}"
                )),
            })
        }),
    };
    let result = meets(row.expect);
    let source_pass = meets(row.source_expect).is_ok();
    Verdict {
        pass: result.is_ok(),
        source_pass,
        why: result.err(),
        outcome,
    }
}

fn forwarded_as_expected(row: &Row, obs: &Observed, outcome: &Outcome) -> Result<(), String> {
    let Outcome::Forwarded {
        requests,
        unparsed: 0,
        ..
    } = outcome
    else {
        return Err(format!("expected forwarding, got: {outcome}"));
    };
    if *requests != row.requests {
        return Err(format!(
            "the origin parsed {requests} request(s), the client sent {}",
            row.requests
        ));
    }
    let answered: Vec<u16> = obs.responses.iter().copied().take(row.requests).collect();
    if answered.len() < row.requests || answered.iter().any(|s| !(200..300).contains(s)) {
        return Err(format!(
            "the client got {:?}, expected {} 2xx answer(s)",
            obs.responses, row.requests
        ));
    }
    let seen = &obs.origin.requests[0];
    if let Some(m) = &row.upstream_method {
        if &seen.method != m {
            return Err(format!(
                "the origin got method {:?}, expected {m:?}",
                seen.method
            ));
        }
    }
    if let Some(t) = &row.upstream_target {
        if &seen.target != t {
            return Err(format!(
                "the origin got target {:?}, expected {t:?}",
                seen.target
            ));
        }
    }
    if let Some(b) = &row.upstream_body {
        if &seen.body != b {
            return Err(format!(
                "the origin got body {:?}, expected {:?}",
                super::escape(&seen.body),
                super::escape(b)
            ));
        }
    }
    Ok(())
}
