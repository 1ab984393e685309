//! `linger probe URL`: measure how a live HTTP/1.1 server closes connections, and turn
//! the measurements into `[[cluster]]` settings for linger.
//!
//! Every number linger's upstream settings depend on is the server's, not linger's: the
//! idle time after which it closes a keep-alive connection (R1), whether its
//! `Keep-Alive: timeout=N` hint tells the truth, how many requests it serves on one
//! connection and whether it says so on the last one (R3), and how it ends connections
//! (FIN or RST). Documentation and defaults are often wrong about all of these; the probe
//! measures them on the wire, with raw sockets, the way a naive keep-alive client meets
//! them.
//!
//! What it does, in order:
//!
//! 1. one request, to prove the server is there and speaks HTTP/1.x;
//! 2. one after the other: requests per connection, a half-closed request, HTTP/1.0 with
//!    and without keep-alive, and (with `intrusive`) an early response to a partly sent
//!    POST;
//! 3. then, with no other traffic from the probe: the idle close on N connections;
//! 4. with `intrusive`: a request sent just after the measured idle close.
//!
//! See docs/probe.md for how to read the report.

mod measure;
mod report;
pub(crate) mod target;
mod wire;

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use self::measure::{
    AfterResponse, EarlyResponseReport, Exchange, FirstResponse, HalfCloseReport, Http10Exchange,
    Http10Report, IdleOutcome, IdleReport, IdleSample, LateRequestReport, LimitOutcome,
    RequestLimitReport, CLOSE_WINDOW, CONNECT_TIMEOUT, EARLY_BODY_LEN, EARLY_FIRST_PART,
    EARLY_WAIT, LATE_BY, REQUEST_TIMEOUT,
};
pub use self::report::{HintComparison, HintReport, IntrusiveReport, Recommendation, Report};
pub use self::target::{parse_url, ParsedUrl, Target};
pub use self::wire::{CloseKind, KeepAliveHint};

/// Idle connections measured at once, by default.
pub const DEFAULT_CONNECTIONS: usize = 3;
/// How long an idle connection is held, by default, before the probe gives up on seeing
/// it closed: above the 60 s of AWS ELB/ALB and the 75 s of nginx's default.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(120);
/// Sequential requests on one connection, by default, before the probe stops counting:
/// above the 100 of nginx before 1.19.10 and Apache, equal to nginx's later default.
pub const DEFAULT_MAX_REQUESTS: u64 = 1000;

/// What to probe and how far to go.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Idle connections measured in parallel.
    pub connections: usize,
    /// Give up waiting for an idle close after this long.
    pub max_wait: Duration,
    /// Stop counting requests per connection here.
    pub max_requests: u64,
    /// Also send a partial 1 MiB POST and a request just after the idle close.
    pub intrusive: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            connections: DEFAULT_CONNECTIONS,
            max_wait: DEFAULT_MAX_WAIT,
            max_requests: DEFAULT_MAX_REQUESTS,
            intrusive: false,
        }
    }
}

/// Why a probe could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    BadUrl { url: String, reason: String },
    Https { url: String },
    BadOption(String),
    Unreachable { url: String, reason: String },
    NotHttp { url: String, reason: String },
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::BadUrl { url, reason } => write!(f, "bad URL {url:?}: {reason}"),
            ProbeError::Https { url } => write!(
                f,
                "{url}: https is not supported; linger probe speaks plain HTTP/1.1 to the \
                 server itself (probe the server behind the TLS terminator with http://HOST:PORT)"
            ),
            ProbeError::BadOption(reason) => write!(f, "{reason}"),
            ProbeError::Unreachable { url, reason } => write!(f, "cannot reach {url}: {reason}"),
            ProbeError::NotHttp { url, reason } => {
                write!(f, "{url} did not answer as an HTTP/1.x server: {reason}")
            }
        }
    }
}

impl std::error::Error for ProbeError {}

/// Where a probe reports what it is doing. A probe can take minutes, most of them
/// waiting for a server to close idle connections; a silent terminal would look hung.
pub trait Progress: Send + Sync {
    /// A step starts.
    fn step(&self, msg: &str);
    /// A long wait goes on (called about once a second).
    fn waiting(&self, msg: &str);
    /// The probe is over.
    fn done(&self);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn step(&self, _: &str) {}
    fn waiting(&self, _: &str) {}
    fn done(&self) {}
}

/// Progress on stderr, leaving stdout to the report. On a terminal a wait rewrites one
/// status line; otherwise (a log file, CI) it prints a line every 10 s.
#[derive(Debug)]
pub struct StderrProgress {
    tty: bool,
    state: Mutex<StderrState>,
}

#[derive(Debug, Default)]
struct StderrState {
    status_line: bool,
    last_wait_line: Option<Instant>,
}

/// How often a wait prints a line when stderr is not a terminal.
const WAIT_LINE_EVERY: Duration = Duration::from_secs(10);

// === impl StderrProgress ===

impl StderrProgress {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(StderrState::default()),
        }
    }
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for StderrProgress {
    fn step(&self, msg: &str) {
        let mut st = self.state.lock().expect("progress lock");
        let mut err = std::io::stderr().lock();
        if st.status_line {
            let _ = write!(err, "\r\x1b[K");
            st.status_line = false;
        }
        let _ = writeln!(err, "{msg}");
    }

    fn waiting(&self, msg: &str) {
        let mut st = self.state.lock().expect("progress lock");
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{msg}");
            let _ = err.flush();
            st.status_line = true;
        } else if st
            .last_wait_line
            .is_none_or(|at| at.elapsed() >= WAIT_LINE_EVERY)
        {
            let _ = writeln!(err, "{msg}");
            st.last_wait_line = Some(Instant::now());
        }
    }

    fn done(&self) {
        let mut st = self.state.lock().expect("progress lock");
        if st.status_line {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            st.status_line = false;
        }
    }
}

/// Probes `url` and returns the report. Fails only when the URL is bad or the server
/// cannot be reached or does not speak HTTP/1.x; everything else is in the report.
pub async fn run(
    url: &str,
    opts: &ProbeOptions,
    progress: &dyn Progress,
) -> Result<Report, ProbeError> {
    if opts.connections == 0 {
        return Err(ProbeError::BadOption(
            "--connections must be at least 1".into(),
        ));
    }
    if opts.max_wait.is_zero() {
        return Err(ProbeError::BadOption(
            "--max-wait must be longer than 0".into(),
        ));
    }
    if opts.max_requests == 0 {
        return Err(ProbeError::BadOption(
            "--max-requests must be at least 1".into(),
        ));
    }
    let target = Arc::new(Target::resolve(url).await?);
    progress.step(&format!("probing {} ({})", target.url, target.addr));
    let first = measure::first_response(&target).await?;
    progress.step(&format!(
        "{} answered {} {}{}",
        target.addr,
        first.version,
        first.status,
        first
            .server
            .as_deref()
            .map(|s| format!(" (server: {s})"))
            .unwrap_or_default()
    ));

    // The other measurements come first and the idle close after them, alone: a server
    // whose event loop checks idle connections on a tick that restarts at every event
    // (gunicorn's gthread workers: at most 1 s after the last one) would otherwise close
    // the idle connections as late as the probe's own traffic shifted that tick.
    progress.step(&format!(
        "counting requests per connection (up to {})…",
        opts.max_requests
    ));
    let limit = measure::requests_per_connection(&target, opts.max_requests).await;
    progress.step("half-closed request, HTTP/1.0 with and without keep-alive…");
    let half = measure::half_close(&target).await;
    let http10 = measure::http10(&target).await;
    let early = if opts.intrusive {
        progress.step(&format!(
            "POST declaring {} KiB, sending {} KiB and waiting for an early answer…",
            EARLY_BODY_LEN / 1024,
            EARLY_FIRST_PART / 1024
        ));
        Some(measure::early_response(&target).await)
    } else {
        None
    };
    let idle = measure::idle_close(&target, opts.connections, opts.max_wait, progress).await;
    progress.step(&match idle.median() {
        Some(m) => format!(
            "idle close after {:.3} s on {} of {} connections",
            m.as_secs_f64(),
            idle.closed(),
            idle.connections
        ),
        None => format!(
            "no idle close within {} on {} connections",
            report::secs(opts.max_wait),
            idle.connections
        ),
    });

    let intrusive = match early {
        Some(early_response) => {
            let late_request = measure::late_request(&target, &idle, progress).await;
            Some(IntrusiveReport {
                early_response,
                late_request,
            })
        }
        None => None,
    };
    progress.done();
    Ok(Report::build(
        &target, opts, first, idle, limit, half, http10, intrusive,
    ))
}
