//! Each measurement the probe makes, on its own connections. None of them retries or
//! reuses anything: each one sees exactly what a naive keep-alive client would see.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::target::Target;
use super::wire::{CloseKind, CloseWait, Conn, KeepAliveHint, ReadError, Response};
use super::{ProbeError, Progress};

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one response may take, head and body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// After a response that ends the connection: a close within this window counts as the
/// server closing after the response, not as a later idle close.
pub const CLOSE_WINDOW: Duration = Duration::from_secs(1);
/// The early-response probe declares a `Content-Length` of this many bytes...
pub const EARLY_BODY_LEN: usize = 1024 * 1024;
/// ...sends this many of them at first...
pub const EARLY_FIRST_PART: usize = 64 * 1024;
/// ...and waits this long for an answer before sending the rest.
pub const EARLY_WAIT: Duration = Duration::from_secs(2);
/// The late request is sent this long after the latest idle close measured.
pub const LATE_BY: Duration = Duration::from_millis(200);

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// How one exchange (a request and its response) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exchange {
    /// A complete response.
    Response,
    /// FIN before any byte of a response.
    Eof,
    /// RST before any byte of a response.
    Rst,
    /// The connection closed (FIN or RST) in the middle of the response.
    Truncated,
    /// No complete response in time.
    Timeout,
    /// Not an HTTP/1.x response.
    Malformed,
    /// Some other socket error.
    Failed,
}

impl Exchange {
    fn from_error(e: &ReadError) -> Self {
        match e {
            ReadError::Closed { partial: true, .. } => Exchange::Truncated,
            ReadError::Closed {
                kind: CloseKind::Fin,
                ..
            } => Exchange::Eof,
            ReadError::Closed {
                kind: CloseKind::Rst,
                ..
            } => Exchange::Rst,
            ReadError::Timeout => Exchange::Timeout,
            ReadError::Malformed(_) => Exchange::Malformed,
            ReadError::Io(_) => Exchange::Failed,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Exchange::Response => "a full response",
            Exchange::Eof => "EOF (FIN) with no response",
            Exchange::Rst => "RST with no response",
            Exchange::Truncated => "a truncated response",
            Exchange::Timeout => "no response in time",
            Exchange::Malformed => "a malformed response",
            Exchange::Failed => "a socket error",
        }
    }
}

/// What the server did with the connection right after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterResponse {
    Fin,
    Rst,
    /// Still open at the end of the window.
    KeptOpen,
}

impl AfterResponse {
    fn from_wait(w: Result<CloseWait, ReadError>) -> Option<Self> {
        match w {
            Ok(CloseWait::Closed { kind, .. }) => Some(match kind {
                CloseKind::Fin => AfterResponse::Fin,
                CloseKind::Rst => AfterResponse::Rst,
            }),
            Ok(CloseWait::Open { .. }) => Some(AfterResponse::KeptOpen),
            Err(_) => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            AfterResponse::Fin => "then closed (FIN)",
            AfterResponse::Rst => "then reset (RST)",
            AfterResponse::KeptOpen => "then kept the connection open",
        }
    }
}

/// Sends one request on `conn` and reads its response.
async fn exchange(conn: &mut Conn, req: &[u8], head_only: bool) -> Result<Response, ReadError> {
    conn.send(req, REQUEST_TIMEOUT).await?;
    conn.response(head_only, REQUEST_TIMEOUT).await
}

// === first contact ===

/// The first request: proves the server is there and speaks HTTP/1.x.
#[derive(Debug, Clone, Serialize)]
pub struct FirstResponse {
    pub status: u16,
    pub version: String,
    pub server: Option<String>,
    pub connection: Option<String>,
    pub keep_alive: Option<KeepAliveHint>,
}

pub(crate) async fn first_response(target: &Target) -> Result<FirstResponse, ProbeError> {
    let unreachable = |reason: String| ProbeError::Unreachable {
        url: target.url.clone(),
        reason: format!("{}: {reason}", target.addr),
    };
    let not_http = |reason: String| ProbeError::NotHttp {
        url: target.url.clone(),
        reason,
    };
    let mut conn = Conn::open(target.addr, CONNECT_TIMEOUT)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let resp = exchange(&mut conn, &target.request("GET", "1.1", &[]), false)
        .await
        .map_err(|e| match e {
            ReadError::Malformed(m) => not_http(m),
            ReadError::Timeout => not_http(format!("no response within {REQUEST_TIMEOUT:?}")),
            other => not_http(format!(
                "the connection ended with {}",
                Exchange::from_error(&other).label()
            )),
        })?;
    Ok(FirstResponse {
        status: resp.status,
        version: resp.version_label().to_string(),
        server: resp.header("server").map(str::to_string),
        connection: resp.joined("connection"),
        keep_alive: resp.keep_alive_hint(),
    })
}

// === idle close ===

/// What one idle connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleOutcome {
    Fin,
    Rst,
    /// Still open after `max_wait`.
    NoClose,
    /// The response already ended the connection (`Connection: close` or HTTP/1.0), so
    /// there was no idle time to measure.
    ClosedAfterResponse,
    /// The request on it failed.
    Failed,
}

/// One idle connection: its outcome and when it closed (after the response was read).
#[derive(Debug, Clone, Serialize)]
pub struct IdleSample {
    pub outcome: IdleOutcome,
    pub after_ms: Option<f64>,
    /// Bytes the server sent unasked while idle (a `408` before closing, for instance).
    pub bytes_before_close: usize,
    pub detail: Option<String>,
}

/// The idle close over several connections.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub connections: usize,
    pub max_wait_ms: f64,
    pub fin: usize,
    pub rst: usize,
    pub no_close: usize,
    pub closed_after_response: usize,
    pub failed: usize,
    pub median_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub samples: Vec<IdleSample>,
    /// The `Keep-Alive` header of the responses on these connections.
    #[serde(skip)]
    pub(crate) hint: Option<KeepAliveHint>,
}

// === impl IdleReport ===

impl IdleReport {
    fn from_samples(
        samples: Vec<IdleSample>,
        max_wait: Duration,
        hint: Option<KeepAliveHint>,
    ) -> Self {
        let count = |o: IdleOutcome| samples.iter().filter(|s| s.outcome == o).count();
        let mut closes: Vec<f64> = samples
            .iter()
            .filter(|s| matches!(s.outcome, IdleOutcome::Fin | IdleOutcome::Rst))
            .filter_map(|s| s.after_ms)
            .collect();
        closes.sort_by(f64::total_cmp);
        let median = match closes.len() {
            0 => None,
            n if n % 2 == 1 => Some(closes[n / 2]),
            n => Some(((closes[n / 2 - 1] + closes[n / 2]) / 2.0 * 10.0).round() / 10.0),
        };
        Self {
            connections: samples.len(),
            max_wait_ms: ms(max_wait),
            fin: count(IdleOutcome::Fin),
            rst: count(IdleOutcome::Rst),
            no_close: count(IdleOutcome::NoClose),
            closed_after_response: count(IdleOutcome::ClosedAfterResponse),
            failed: count(IdleOutcome::Failed),
            median_ms: median,
            min_ms: closes.first().copied(),
            max_ms: closes.last().copied(),
            samples,
            hint,
        }
    }

    /// Connections that closed while idle.
    pub fn closed(&self) -> usize {
        self.fin + self.rst
    }

    /// How most idle connections were closed.
    pub fn close_kind(&self) -> Option<CloseKind> {
        match (self.fin, self.rst) {
            (0, 0) => None,
            (f, r) if r > f => Some(CloseKind::Rst),
            _ => Some(CloseKind::Fin),
        }
    }

    /// The shortest idle close seen: the one a client must stay below.
    pub fn shortest(&self) -> Option<Duration> {
        self.min_ms.map(|m| Duration::from_secs_f64(m / 1000.0))
    }

    pub fn median(&self) -> Option<Duration> {
        self.median_ms.map(|m| Duration::from_secs_f64(m / 1000.0))
    }

    pub fn longest(&self) -> Option<Duration> {
        self.max_ms.map(|m| Duration::from_secs_f64(m / 1000.0))
    }
}

async fn idle_one(target: Arc<Target>, max_wait: Duration) -> (IdleSample, Option<KeepAliveHint>) {
    let failed = |detail: String| {
        (
            IdleSample {
                outcome: IdleOutcome::Failed,
                after_ms: None,
                bytes_before_close: 0,
                detail: Some(detail),
            },
            None,
        )
    };
    let mut conn = match Conn::open(target.addr, CONNECT_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => return failed(format!("connect: {e}")),
    };
    let resp = match exchange(&mut conn, &target.request("GET", "1.1", &[]), false).await {
        Ok(r) => r,
        Err(e) => return failed(format!("request: {}", Exchange::from_error(&e).label())),
    };
    let hint = resp.keep_alive_hint();
    if resp.announces_close() {
        return (
            IdleSample {
                outcome: IdleOutcome::ClosedAfterResponse,
                after_ms: None,
                bytes_before_close: 0,
                detail: resp
                    .joined("connection")
                    .map(|c| format!("Connection: {c}")),
            },
            hint,
        );
    }
    // The clock starts at the response's last byte. The server's idle timer starts when
    // it has written that byte (a moment earlier) or when its loop takes the connection
    // back (a moment later, as gunicorn's gthread workers do): either way within a
    // millisecond or so over loopback, and within half a round trip elsewhere.
    let sample = match conn.wait_close(max_wait).await {
        Ok(CloseWait::Closed {
            kind,
            after,
            extra_bytes,
        }) => IdleSample {
            outcome: match kind {
                CloseKind::Fin => IdleOutcome::Fin,
                CloseKind::Rst => IdleOutcome::Rst,
            },
            after_ms: Some(ms(after)),
            bytes_before_close: extra_bytes,
            detail: None,
        },
        Ok(CloseWait::Open { extra_bytes }) => IdleSample {
            outcome: IdleOutcome::NoClose,
            after_ms: None,
            bytes_before_close: extra_bytes,
            detail: None,
        },
        Err(e) => return failed(format!("while idle: {e:?}")),
    };
    (sample, hint)
}

/// Opens `connections` connections at once, sends one request on each, then holds each
/// idle and times the server's close. The caller sends nothing else meanwhile (see
/// `probe::run`).
pub(crate) async fn idle_close(
    target: &Arc<Target>,
    connections: usize,
    max_wait: Duration,
    progress: &dyn Progress,
) -> IdleReport {
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for i in 0..connections {
        let target = target.clone();
        let done = done.clone();
        set.spawn(async move {
            let r = idle_one(target, max_wait).await;
            done.fetch_add(1, Ordering::Relaxed);
            (i, r)
        });
    }
    let mut results: Vec<Option<(IdleSample, Option<KeepAliveHint>)>> = vec![None; connections];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok((i, r))) => results[i] = Some(r),
                Some(Err(e)) => tracing::warn!(error = %e, "idle probe task failed"),
                None => break,
            },
            _ = tick.tick() => {
                let closed = done.load(Ordering::Relaxed);
                progress.waiting(&format!(
                    "waiting for idle close on {connections} connection{}… {} s ({closed} done, gives up at {} s)",
                    if connections == 1 { "" } else { "s" },
                    started.elapsed().as_secs(),
                    max_wait.as_secs(),
                ));
            }
        }
    }
    let mut hint = None;
    let samples = results
        .into_iter()
        .map(|r| {
            let (sample, h) = r.unwrap_or_else(|| {
                (
                    IdleSample {
                        outcome: IdleOutcome::Failed,
                        after_ms: None,
                        bytes_before_close: 0,
                        detail: Some("the measuring task failed".into()),
                    },
                    None,
                )
            });
            if hint.is_none() {
                hint = h;
            }
            sample
        })
        .collect();
    IdleReport::from_samples(samples, max_wait, hint)
}

// === requests per connection ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitOutcome {
    /// The server closed after `limit` requests.
    Limit,
    /// `cap` requests were answered on one connection.
    NoLimitWithinCap,
    /// A request failed in a way that says nothing about a limit.
    Inconclusive,
}

/// Sequential requests on one connection until the server closes it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLimitReport {
    pub cap: u64,
    pub outcome: LimitOutcome,
    /// Requests answered before the close.
    pub limit: Option<u64>,
    /// The last response said it was the last (`Connection: close`).
    pub announced: Option<bool>,
    /// How the connection ended.
    pub close: Option<CloseKind>,
    /// The smallest `Keep-Alive: max=M` seen plus the requests answered before it: the
    /// limit the server's hints add up to.
    pub hinted_limit: Option<u64>,
    pub detail: Option<String>,
}

pub(crate) async fn requests_per_connection(target: &Target, cap: u64) -> RequestLimitReport {
    let mut report = RequestLimitReport {
        cap,
        outcome: LimitOutcome::Inconclusive,
        limit: None,
        announced: None,
        close: None,
        hinted_limit: None,
        detail: None,
    };
    let mut conn = match Conn::open(target.addr, CONNECT_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => {
            report.detail = Some(format!("connect: {e}"));
            return report;
        }
    };
    let req = target.request("GET", "1.1", &[]);
    for n in 1..=cap {
        // A close that already arrived is the answer; writing into it would only add an
        // RST to the picture.
        if n > 1 {
            if let Some(kind) = conn.closed_already() {
                report.outcome = LimitOutcome::Limit;
                report.limit = Some(n - 1);
                report.announced = Some(false);
                report.close = Some(kind);
                return report;
            }
        }
        match exchange(&mut conn, &req, false).await {
            Ok(resp) => {
                if let Some(max) = resp.keep_alive_hint().and_then(|h| h.max) {
                    let total = n - 1 + max;
                    report.hinted_limit = Some(report.hinted_limit.map_or(total, |t| t.min(total)));
                }
                if resp.announces_close() {
                    report.outcome = LimitOutcome::Limit;
                    report.limit = Some(n);
                    report.announced = Some(true);
                    report.close = match conn.wait_close(CLOSE_WINDOW).await {
                        Ok(CloseWait::Closed { kind, .. }) => Some(kind),
                        _ => None,
                    };
                    if resp.close_delimited {
                        report.close = Some(CloseKind::Fin);
                    }
                    return report;
                }
            }
            Err(ReadError::Closed {
                kind,
                partial: false,
            }) if n > 1 => {
                report.outcome = LimitOutcome::Limit;
                report.limit = Some(n - 1);
                report.announced = Some(false);
                report.close = Some(kind);
                return report;
            }
            Err(e) => {
                report.detail = Some(format!(
                    "request {n} got {}",
                    Exchange::from_error(&e).label()
                ));
                return report;
            }
        }
    }
    report.outcome = LimitOutcome::NoLimitWithinCap;
    report
}

// === half-close ===

/// A request followed at once by `shutdown(Write)`.
#[derive(Debug, Clone, Serialize)]
pub struct HalfCloseReport {
    pub outcome: Exchange,
    pub status: Option<u16>,
    pub after: Option<AfterResponse>,
}

pub(crate) async fn half_close(target: &Target) -> HalfCloseReport {
    let mut report = HalfCloseReport {
        outcome: Exchange::Failed,
        status: None,
        after: None,
    };
    let Ok(mut conn) = Conn::open(target.addr, CONNECT_TIMEOUT).await else {
        return report;
    };
    if let Err(e) = conn
        .send(&target.request("GET", "1.1", &[]), REQUEST_TIMEOUT)
        .await
    {
        report.outcome = Exchange::from_error(&e);
        return report;
    }
    use tokio::io::AsyncWriteExt;
    if conn.sock.shutdown().await.is_err() {
        return report;
    }
    match conn.response(false, REQUEST_TIMEOUT).await {
        Ok(resp) => {
            report.outcome = Exchange::Response;
            report.status = Some(resp.status);
            report.after = if resp.close_delimited {
                Some(AfterResponse::Fin)
            } else {
                AfterResponse::from_wait(conn.wait_close(CLOSE_WINDOW).await)
            };
        }
        Err(e) => report.outcome = Exchange::from_error(&e),
    }
    report
}

// === HTTP/1.0 ===

/// One HTTP/1.0 exchange.
#[derive(Debug, Clone, Serialize)]
pub struct Http10Exchange {
    pub outcome: Exchange,
    pub status: Option<u16>,
    /// The version of the response's status line.
    pub response_version: Option<String>,
    /// The response's `Connection` header.
    pub connection: Option<String>,
    /// The body had no length and ran until the server closed.
    pub close_delimited: bool,
}

/// HTTP/1.0 without and with `Connection: keep-alive`.
#[derive(Debug, Clone, Serialize)]
pub struct Http10Report {
    /// A plain HTTP/1.0 request, which asks the server to close after the response.
    pub plain: Http10Exchange,
    /// Whether the server closed after it (within `CLOSE_WINDOW`).
    pub plain_after: Option<AfterResponse>,
    /// An HTTP/1.0 request with `Connection: keep-alive`.
    pub keep_alive: Http10Exchange,
    /// A second HTTP/1.0 keep-alive request on the same connection, when the first one
    /// did not end it.
    pub second: Option<Http10Exchange>,
}

impl Http10Exchange {
    fn from(r: &Result<Response, ReadError>) -> Self {
        match r {
            Ok(resp) => Self {
                outcome: Exchange::Response,
                status: Some(resp.status),
                response_version: Some(resp.version_label().to_string()),
                connection: resp.joined("connection"),
                close_delimited: resp.close_delimited,
            },
            Err(e) => Self {
                outcome: Exchange::from_error(e),
                status: None,
                response_version: None,
                connection: None,
                close_delimited: false,
            },
        }
    }

    fn failed(outcome: Exchange) -> Self {
        Self {
            outcome,
            status: None,
            response_version: None,
            connection: None,
            close_delimited: false,
        }
    }
}

pub(crate) async fn http10(target: &Target) -> Http10Report {
    let (plain, plain_after) = match Conn::open(target.addr, CONNECT_TIMEOUT).await {
        Ok(mut conn) => {
            let r = exchange(&mut conn, &target.request("GET", "1.0", &[]), false).await;
            let after = match &r {
                Ok(resp) if resp.close_delimited => Some(AfterResponse::Fin),
                Ok(_) => AfterResponse::from_wait(conn.wait_close(CLOSE_WINDOW).await),
                Err(_) => None,
            };
            (Http10Exchange::from(&r), after)
        }
        Err(_) => (Http10Exchange::failed(Exchange::Failed), None),
    };
    let ka = [("Connection", "keep-alive")];
    let (keep_alive, second) = match Conn::open(target.addr, CONNECT_TIMEOUT).await {
        Ok(mut conn) => {
            let req = target.request("GET", "1.0", &ka);
            let r = exchange(&mut conn, &req, false).await;
            let second = match &r {
                // A close-delimited body already consumed the connection.
                Ok(resp) if !resp.close_delimited => Some(Http10Exchange::from(
                    &exchange(&mut conn, &req, false).await,
                )),
                _ => None,
            };
            (Http10Exchange::from(&r), second)
        }
        Err(_) => (Http10Exchange::failed(Exchange::Failed), None),
    };
    Http10Report {
        plain,
        plain_after,
        keep_alive,
        second,
    }
}

// === intrusive: early response ===

/// A POST that declares a 1 MiB body and sends only part of it at first.
#[derive(Debug, Clone, Serialize)]
pub struct EarlyResponseReport {
    /// Body bytes sent when the response began (or in all, if it never came early).
    pub body_bytes_sent: usize,
    /// The server answered before the whole body was sent.
    pub answered_early: bool,
    pub outcome: Exchange,
    pub status: Option<u16>,
    /// The response's `Connection` header.
    pub connection: Option<String>,
    /// After an early response: more body sent to it failed with a reset.
    pub reset_while_sending: bool,
    /// How the connection ended after the response.
    pub after: Option<AfterResponse>,
}

pub(crate) async fn early_response(target: &Target) -> EarlyResponseReport {
    let mut report = EarlyResponseReport {
        body_bytes_sent: 0,
        answered_early: false,
        outcome: Exchange::Failed,
        status: None,
        connection: None,
        reset_while_sending: false,
        after: None,
    };
    let Ok(mut conn) = Conn::open(target.addr, CONNECT_TIMEOUT).await else {
        return report;
    };
    let len = EARLY_BODY_LEN.to_string();
    let mut first = target.request(
        "POST",
        "1.1",
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", &len),
        ],
    );
    first.extend(std::iter::repeat_n(b'x', EARLY_FIRST_PART));
    if let Err(e) = conn.send(&first, REQUEST_TIMEOUT).await {
        report.outcome = Exchange::from_error(&e);
        return report;
    }
    report.body_bytes_sent = EARLY_FIRST_PART;

    // Does anything come back while the rest of the body is withheld?
    let early = {
        let mut scratch = [0u8; 16 * 1024];
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(EARLY_WAIT, conn.sock.read(&mut scratch)).await {
            Ok(Ok(0)) => {
                report.outcome = Exchange::Eof;
                return report;
            }
            Ok(Ok(n)) => {
                conn.buf.extend_from_slice(&scratch[..n]);
                true
            }
            Ok(Err(e)) if super::wire::is_reset(&e) => {
                report.outcome = Exchange::Rst;
                return report;
            }
            Ok(Err(_)) => return report,
            Err(_) => false,
        }
    };

    if early {
        report.answered_early = true;
        let resp = conn.response(false, REQUEST_TIMEOUT).await;
        match &resp {
            Ok(r) => {
                report.outcome = Exchange::Response;
                report.status = Some(r.status);
                report.connection = r.joined("connection");
            }
            Err(e) => report.outcome = Exchange::from_error(e),
        }
        if matches!(&resp, Ok(r) if r.close_delimited) {
            report.after = Some(AfterResponse::Fin);
            return report;
        }
        if resp.is_err() {
            return report;
        }
        // A client that does not watch for early responses goes on sending its body; a
        // server that closes with that body unread makes its kernel answer with RST.
        let more = vec![b'x'; EARLY_FIRST_PART];
        if let Err(ReadError::Closed { .. }) = conn.send(&more, Duration::from_secs(2)).await {
            // The write consumed the reset; a read now would return 0 as if it were a FIN.
            report.reset_while_sending = true;
            report.after = Some(AfterResponse::Rst);
            return report;
        }
        report.after = AfterResponse::from_wait(conn.wait_close(Duration::from_secs(5)).await);
        return report;
    }

    // No early answer: send the rest of the body while watching for a response.
    let rest = vec![b'x'; EARLY_BODY_LEN - EARLY_FIRST_PART];
    let sent = {
        let (mut rd, mut wr) = conn.sock.split();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut scratch = [0u8; 16 * 1024];
        tokio::select! {
            w = tokio::time::timeout(REQUEST_TIMEOUT, wr.write_all(&rest)) => match w {
                Ok(Ok(())) => Ok(None),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            },
            r = rd.read(&mut scratch) => match r {
                Ok(n) => Ok(Some(scratch[..n].to_vec())),
                Err(e) => Err(e),
            }
        }
    };
    match sent {
        Ok(None) => report.body_bytes_sent = EARLY_BODY_LEN,
        Ok(Some(bytes)) => {
            // It answered while the rest was on its way: early after all.
            report.answered_early = true;
            conn.buf.extend_from_slice(&bytes);
            if bytes.is_empty() {
                report.outcome = Exchange::Eof;
                return report;
            }
        }
        Err(e) => {
            report.outcome = if super::wire::is_reset(&e) {
                Exchange::Rst
            } else {
                Exchange::Failed
            };
            return report;
        }
    }
    match conn.response(false, REQUEST_TIMEOUT).await {
        Ok(r) => {
            report.outcome = Exchange::Response;
            report.status = Some(r.status);
            report.connection = r.joined("connection");
            report.after = if r.close_delimited {
                Some(AfterResponse::Fin)
            } else if r.announces_close() {
                AfterResponse::from_wait(conn.wait_close(Duration::from_secs(5)).await)
            } else {
                Some(AfterResponse::KeptOpen)
            };
        }
        Err(e) => report.outcome = Exchange::from_error(&e),
    }
    report
}

// === intrusive: late request ===

/// A request sent on a connection just after its measured idle time.
#[derive(Debug, Clone, Serialize)]
pub struct LateRequestReport {
    /// Why it was not sent.
    pub skipped: Option<String>,
    /// How long the connection was idle when the request was written.
    pub idle_ms: Option<f64>,
    /// The server's close had already arrived when the request was written.
    pub closed_before_request: Option<CloseKind>,
    pub outcome: Option<Exchange>,
    pub status: Option<u16>,
}

pub(crate) async fn late_request(
    target: &Target,
    idle: &IdleReport,
    progress: &dyn Progress,
) -> LateRequestReport {
    let mut report = LateRequestReport {
        skipped: None,
        idle_ms: None,
        closed_before_request: None,
        outcome: None,
        status: None,
    };
    let Some(longest) = idle.longest() else {
        report.skipped = Some("no idle close was measured".into());
        return report;
    };
    let wait = longest + LATE_BY;
    let mut conn = match Conn::open(target.addr, CONNECT_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => {
            report.skipped = Some(format!("connect: {e}"));
            return report;
        }
    };
    let req = target.request("GET", "1.1", &[]);
    match exchange(&mut conn, &req, false).await {
        Ok(r) if !r.announces_close() => {}
        Ok(_) => {
            report.skipped = Some("the first response closed the connection".into());
            return report;
        }
        Err(e) => {
            report.skipped = Some(format!(
                "first request: {}",
                Exchange::from_error(&e).label()
            ));
            return report;
        }
    }
    let idle_from = Instant::now();
    let until = idle_from + wait;
    while Instant::now() < until {
        progress.waiting(&format!(
            "holding a connection idle for {:.1} s before a late request… {} s",
            wait.as_secs_f64(),
            idle_from.elapsed().as_secs()
        ));
        tokio::time::sleep_until(until.min(Instant::now() + Duration::from_secs(1))).await;
    }
    report.closed_before_request = conn.closed_already();
    report.idle_ms = Some(ms(idle_from.elapsed()));
    let r = exchange(&mut conn, &req, false).await;
    report.outcome = Some(match &r {
        Ok(_) => Exchange::Response,
        Err(e) => Exchange::from_error(e),
    });
    report.status = r.ok().map(|r| r.status);
    report
}
