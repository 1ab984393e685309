//! The probe's report: the measurements, what they mean for a client that reuses
//! connections, and the `[[cluster]]` settings that follow from them.

use std::fmt::Write as _;
use std::time::Duration;

use linger_proxy::config::ConfigDuration;
use serde::Serialize;

use super::measure::{
    AfterResponse, EarlyResponseReport, Exchange, FirstResponse, HalfCloseReport, Http10Exchange,
    Http10Report, IdleReport, LateRequestReport, LimitOutcome, RequestLimitReport, LATE_BY,
};
use super::target::Target;
use super::wire::KeepAliveHint;
use super::ProbeOptions;
use crate::check::{longest_safe_idle, IDLE_CLOSE_MARGIN};

/// A hint and a measured close within this of each other are taken as equal: the probe
/// measures from the end of its read, a little after the server's timer started.
pub const HINT_TOLERANCE: Duration = Duration::from_millis(250);

/// A duration as linger's config writes it: `"4s"`, `"1500ms"`, `"2m"`.
pub(crate) fn secs(d: Duration) -> String {
    ConfigDuration(d).to_string()
}

fn s3(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// How a `Keep-Alive: timeout=N` hint compares with the measured idle close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HintComparison {
    /// The hint promises more idle time than the server allows: a client that trusts it
    /// reuses connections the server has already closed (R1).
    LongerThanReal,
    /// Within `HINT_TOLERANCE` of the shortest measured close.
    MatchesReal,
    /// The server keeps connections longer than it says: safe.
    ShorterThanReal,
    /// No idle close was measured and the hint is not below `max_wait`.
    Unknown,
    /// The header has no `timeout=`.
    NoTimeout,
}

/// The server's `Keep-Alive` hint, against the measurement.
#[derive(Debug, Clone, Serialize)]
pub struct HintReport {
    #[serde(flatten)]
    pub hint: KeepAliveHint,
    pub comparison: HintComparison,
    pub hint_longer_than_real: bool,
}

/// The checks that only run with `--intrusive`.
#[derive(Debug, Clone, Serialize)]
pub struct IntrusiveReport {
    pub early_response: EarlyResponseReport,
    pub late_request: LateRequestReport,
}

/// The `[[cluster]]` settings that follow from the measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    /// `None`: keep linger's default (`"1500ms"`).
    pub idle_timeout: Option<String>,
    /// `Some(0)` when connections should not be reused at all.
    pub max_idle_per_endpoint: Option<u64>,
    pub max_requests_per_connection: u64,
    pub learn_keep_alive: bool,
    /// The settings as a TOML snippet, each with its reason.
    pub toml: String,
    /// The snippet's lines: the setting, and why.
    #[serde(skip)]
    lines: Vec<(String, String)>,
}

fn render_toml(lines: &[(String, String)]) -> String {
    let width = lines.iter().map(|(kv, _)| kv.len()).max().unwrap_or(0);
    let mut toml = String::from("[[cluster]]\n");
    for (kv, why) in lines {
        let _ = writeln!(toml, "{kv:<width$}  # {why}");
    }
    toml
}

/// Everything the probe found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub address: String,
    pub first_response: FirstResponse,
    pub idle_close: IdleReport,
    pub keep_alive_hint: Option<HintReport>,
    pub requests_per_connection: RequestLimitReport,
    pub half_close: HalfCloseReport,
    pub http10: Http10Report,
    /// Present with `--intrusive`.
    pub intrusive: Option<IntrusiveReport>,
    /// What the measurements mean for a client that reuses connections.
    pub findings: Vec<String>,
    pub recommendation: Recommendation,
    /// What a running linger learned of this endpoint (`--admin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learned: Option<crate::check::LearnedFacts>,
}

fn compare_hint(hint: &KeepAliveHint, idle: &IdleReport) -> HintComparison {
    let Some(n) = hint.timeout_s else {
        return HintComparison::NoTimeout;
    };
    let hinted = Duration::from_secs(n);
    match idle.shortest() {
        Some(real) if hinted > real + HINT_TOLERANCE => HintComparison::LongerThanReal,
        Some(real) if hinted + HINT_TOLERANCE < real => HintComparison::ShorterThanReal,
        Some(_) => HintComparison::MatchesReal,
        None if idle.no_close > 0
            && hinted < Duration::from_secs_f64(idle.max_wait_ms / 1000.0) =>
        {
            HintComparison::ShorterThanReal
        }
        None => HintComparison::Unknown,
    }
}

// === impl Report ===

impl Report {
    #[allow(clippy::too_many_arguments)] // one argument per measurement, built in one place
    pub(crate) fn build(
        target: &Target,
        opts: &ProbeOptions,
        first_response: FirstResponse,
        idle_close: IdleReport,
        requests_per_connection: RequestLimitReport,
        half_close: HalfCloseReport,
        http10: Http10Report,
        intrusive: Option<IntrusiveReport>,
    ) -> Self {
        let hint = idle_close
            .hint
            .clone()
            .or_else(|| first_response.keep_alive.clone());
        let keep_alive_hint = hint.map(|hint| {
            let comparison = compare_hint(&hint, &idle_close);
            HintReport {
                hint,
                comparison,
                hint_longer_than_real: comparison == HintComparison::LongerThanReal,
            }
        });
        let mut report = Self {
            url: target.url.clone(),
            address: target.addr.to_string(),
            first_response,
            idle_close,
            keep_alive_hint,
            requests_per_connection,
            half_close,
            http10,
            intrusive,
            findings: Vec::new(),
            recommendation: Recommendation {
                idle_timeout: None,
                max_idle_per_endpoint: None,
                max_requests_per_connection: 0,
                learn_keep_alive: true,
                toml: String::new(),
                lines: Vec::new(),
            },
            learned: None,
        };
        report.findings = report.findings(opts);
        report.recommendation = report.recommend(target);
        report
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    fn closes_every_response(&self) -> bool {
        let idle = &self.idle_close;
        let answered = idle.connections - idle.failed;
        (answered > 0 && idle.closed_after_response == answered)
            || self.requests_per_connection.limit == Some(1)
    }

    fn findings(&self, opts: &ProbeOptions) -> Vec<String> {
        let mut out = Vec::new();
        let idle = &self.idle_close;
        let limit = &self.requests_per_connection;

        if self.closes_every_response() {
            out.push(
                "The server closes the connection after every response: there is no \
                 keep-alive to reuse."
                    .to_string(),
            );
        } else if let Some(shortest) = idle.shortest() {
            if longest_safe_idle(shortest).is_none() {
                out.push(format!(
                    "The server closes idle connections after {}: too short for linger's {} \
                     margin, so a reused connection would race its close (R1).",
                    s3(shortest),
                    secs(IDLE_CLOSE_MARGIN)
                ));
            }
            if let (Some(lo), Some(hi)) = (idle.shortest(), idle.longest()) {
                if hi.saturating_sub(lo) > Duration::from_millis(500) {
                    out.push(format!(
                        "Idle closes spread from {} to {}: the server's idle timer is coarse; \
                         the recommendation keeps below the shortest.",
                        s3(lo),
                        s3(hi)
                    ));
                }
            }
        }
        if idle.closed() > 0 && idle.no_close > 0 {
            out.push(format!(
                "{} of {} idle connections were not closed within {}, while the others were.",
                idle.no_close,
                idle.connections,
                secs(opts.max_wait)
            ));
        } else if idle.closed() == 0 && idle.no_close > 0 {
            out.push(format!(
                "No idle close within {}: the server keeps idle connections at least this long. \
                 A NAT or firewall on the way may drop them silently first (R6).",
                secs(opts.max_wait)
            ));
        }
        if idle.rst > 0 {
            out.push(format!(
                "The server resets idle connections (RST on {} of {}) instead of closing \
                 them: a request that races the close fails with ECONNRESET, not a clean EOF \
                 (R1).",
                idle.rst,
                idle.closed()
            ));
        }
        let unasked: usize = idle.samples.iter().map(|s| s.bytes_before_close).sum();
        if unasked > 0 {
            out.push(format!(
                "The server sent {unasked} bytes unasked on idle connections before closing \
                 them (typically a 408 response); a client that reuses the connection then \
                 reads it as the answer to its next request."
            ));
        }
        if idle.failed > 0 {
            out.push(format!(
                "{} of {} idle measurements failed: {}.",
                idle.failed,
                idle.connections,
                idle.samples
                    .iter()
                    .filter_map(|s| s.detail.as_deref())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }

        if let Some(h) = &self.keep_alive_hint {
            if let (true, Some(n), Some(real)) =
                (h.hint_longer_than_real, h.hint.timeout_s, idle.shortest())
            {
                out.push(format!(
                    "The Keep-Alive hint says timeout={n} but the server closed idle \
                     connections after {}: a client that trusts the hint reuses connections \
                     the server has already closed (R1).",
                    s3(real)
                ));
            }
            if let (Some(hinted), Some(real)) = (limit.hinted_limit, limit.limit) {
                if hinted > real {
                    out.push(format!(
                        "The Keep-Alive hint allows {hinted} requests but the server closed \
                         after {real}."
                    ));
                }
            }
        }

        match (limit.outcome, limit.limit, limit.announced) {
            (LimitOutcome::Limit, Some(n), Some(false)) if n > 1 => out.push(format!(
                "The server closes a connection after {n} requests without saying \
                 `Connection: close` on the last response: a client that reuses it sends its \
                 next request into the close (R3, R9)."
            )),
            (LimitOutcome::Inconclusive, _, _) => out.push(format!(
                "Requests per connection could not be counted: {}.",
                limit.detail.as_deref().unwrap_or("unknown failure")
            )),
            _ => {}
        }

        match self.half_close.outcome {
            Exchange::Response => {}
            other => out.push(format!(
                "After the client half-closed (shutdown(Write) right after its request), the \
                 server answered with {}: a client or proxy that half-closes loses its \
                 response (R5).",
                other.label()
            )),
        }

        let h10 = &self.http10;
        if h10.plain.outcome == Exchange::Response
            && h10.plain_after == Some(AfterResponse::KeptOpen)
        {
            out.push(format!(
                "After a plain HTTP/1.0 request the server kept the connection open for more \
                 than {} s, although HTTP/1.0 closes by default.",
                super::CLOSE_WINDOW.as_secs()
            ));
        }

        if let Some(intr) = &self.intrusive {
            let e = &intr.early_response;
            let reset = e.reset_while_sending
                || e.after == Some(AfterResponse::Rst)
                || matches!(e.outcome, Exchange::Rst | Exchange::Truncated);
            if e.answered_early && reset {
                out.push(
                    "The server answers before reading a request body and then resets the \
                     connection: the client may lose the response to the RST (R4)."
                        .to_string(),
                );
            } else if e.answered_early && e.after == Some(AfterResponse::Fin) {
                out.push(
                    "The server answers before reading a request body and closes gracefully \
                     (FIN after the response): the client can read the whole answer (R4)."
                        .to_string(),
                );
            } else if e.answered_early && e.after == Some(AfterResponse::KeptOpen) {
                out.push(
                    "The server answers before reading a request body and keeps the \
                     connection open while the rest of the body is due: the client can read \
                     the whole answer (R4)."
                        .to_string(),
                );
            }
            let l = &intr.late_request;
            match (l.outcome, l.idle_ms) {
                (Some(Exchange::Response), Some(ms)) => out.push(format!(
                    "A request sent after {:.3} s idle was still answered, beyond the idle \
                     close measured on other connections.",
                    ms / 1000.0
                )),
                (Some(other), Some(ms)) => out.push(format!(
                    "A request sent after {:.3} s idle got {}: the R1 race that a client \
                     reusing connections past the idle close loses.",
                    ms / 1000.0,
                    other.label()
                )),
                _ => {}
            }
        }
        out
    }

    fn recommend(&self, target: &Target) -> Recommendation {
        let idle = &self.idle_close;
        let limit = &self.requests_per_connection;
        let mut lines: Vec<(String, String)> = Vec::new();
        let endpoint = if target.host.contains(':') {
            format!("[{}]:{}", target.host, target.port)
        } else {
            format!("{}:{}", target.host, target.port)
        };
        lines.push(("name = \"app\"".into(), "your cluster's name".into()));
        lines.push((
            format!("endpoints = [\"{endpoint}\"]"),
            "the probed server".into(),
        ));

        let mut idle_timeout = None;
        let mut max_idle = None;
        let how = idle
            .close_kind()
            .map(|k| format!(", {}", k.label()))
            .unwrap_or_default();
        if self.closes_every_response() {
            max_idle = Some(0);
            lines.push((
                "max_idle_per_endpoint = 0".into(),
                "the server closes after every response: nothing to reuse".into(),
            ));
        } else if let Some(shortest) = idle.shortest() {
            match longest_safe_idle(shortest) {
                None => {
                    max_idle = Some(0);
                    lines.push((
                        "max_idle_per_endpoint = 0".into(),
                        format!(
                            "idle close {}{how}: no room for the {} margin, do not reuse",
                            s3(shortest),
                            secs(IDLE_CLOSE_MARGIN)
                        ),
                    ));
                }
                Some(safe) => {
                    let t = secs(safe);
                    lines.push((
                        format!("idle_timeout = \"{t}\""),
                        format!(
                            "shortest idle close {}{how}, minus the {} margin (R1)",
                            s3(shortest),
                            secs(IDLE_CLOSE_MARGIN)
                        ),
                    ));
                    idle_timeout = Some(t);
                }
            }
        } else if idle.no_close > 0 {
            lines.push((
                "idle_timeout = \"1500ms\"".into(),
                format!(
                    "default; no idle close within {}, any value below that is safe",
                    secs(Duration::from_secs_f64(idle.max_wait_ms / 1000.0))
                ),
            ));
        } else {
            lines.push((
                "idle_timeout = \"1500ms\"".into(),
                "default; the idle close could not be measured".into(),
            ));
        }

        let max_requests = match (limit.outcome, limit.limit, limit.announced) {
            (LimitOutcome::Limit, Some(n), Some(false)) if max_idle.is_none() => {
                lines.push((
                    format!("max_requests_per_connection = {n}"),
                    format!("the server closes after {n} requests without saying so (R3)"),
                ));
                n
            }
            (LimitOutcome::Limit, Some(n), Some(true)) if max_idle.is_none() => {
                lines.push((
                    "max_requests_per_connection = 0".into(),
                    format!(
                        "its limit ({n}) is announced with Connection: close, which linger honours"
                    ),
                ));
                0
            }
            (LimitOutcome::NoLimitWithinCap, _, _) => {
                lines.push((
                    "max_requests_per_connection = 0".into(),
                    format!("no limit within {} requests", limit.cap),
                ));
                0
            }
            _ => 0,
        };

        let hint_longer = self
            .keep_alive_hint
            .as_ref()
            .is_some_and(|h| h.hint_longer_than_real);
        let learn = !hint_longer;
        let why = match &self.keep_alive_hint {
            Some(h) if hint_longer => format!(
                "its hint ({}) is longer than the real close: do not trust it",
                h.hint.raw
            ),
            Some(h) => match h.comparison {
                HintComparison::MatchesReal => {
                    format!("its hint ({}) matches the real close", h.hint.raw)
                }
                HintComparison::ShorterThanReal => format!(
                    "its hint ({}) is shorter than the real close: safe to follow",
                    h.hint.raw
                ),
                _ => format!(
                    "its hint ({}) could not be checked; linger keeps a margin",
                    h.hint.raw
                ),
            },
            None => "no Keep-Alive hint; harmless".into(),
        };
        lines.push((format!("learn_keep_alive = {learn}"), why));

        Recommendation {
            idle_timeout,
            max_idle_per_endpoint: max_idle,
            max_requests_per_connection: max_requests,
            learn_keep_alive: learn,
            toml: render_toml(&lines),
            lines,
        }
    }

    /// Takes in what a running linger (its admin listener at `admin`) learned of the
    /// endpoints; the one at this report's address, if any, becomes a finding, and a
    /// learned idle limit shorter than the recommended `idle_timeout` replaces it.
    /// Returns whether the running linger knows this endpoint.
    pub fn learned_by_linger(&mut self, admin: &str, facts: &[crate::check::LearnedFacts]) -> bool {
        let Some(f) = facts.iter().find(|f| f.endpoint == self.address) else {
            return false;
        };
        self.learned = Some(f.clone());
        let Some(learned) = f.learned_s.map(Duration::from_secs_f64) else {
            self.findings.push(format!(
                "The linger at {admin} (cluster \"{}\") has learned nothing shorter than \
                 its idle limit of {} for this endpoint from live traffic.",
                f.cluster,
                secs(Duration::from_secs_f64(f.idle_limit_s))
            ));
            return true;
        };
        let evidence = f
            .last_change
            .as_ref()
            .map_or(String::new(), |c| format!(": {}", c.evidence));
        self.findings.push(format!(
            "The linger at {admin} (cluster \"{}\") learned from live traffic that this \
             endpoint drops connections idle for less than its configured {}: it reuses them \
             for {} at most{evidence}.",
            f.cluster,
            secs(Duration::from_secs_f64(f.idle_timeout_s)),
            secs(learned)
        ));
        let rec = &mut self.recommendation;
        if rec.max_idle_per_endpoint == Some(0) {
            return true;
        }
        let recommended = rec
            .idle_timeout
            .as_deref()
            .and_then(|t| ConfigDuration::parse(t).ok())
            .map_or(Duration::from_millis(1500), |d| d.0);
        let safe = crate::check::learned_idle_timeout(learned);
        if safe < recommended {
            let t = secs(safe);
            let line = (
                format!("idle_timeout = \"{t}\""),
                format!("learned by the linger at {admin} from live traffic (R1)"),
            );
            match rec
                .lines
                .iter_mut()
                .find(|(kv, _)| kv.starts_with("idle_timeout"))
            {
                Some(l) => *l = line,
                None => rec.lines.insert(2, line),
            }
            rec.idle_timeout = Some(t);
            rec.toml = render_toml(&rec.lines);
        }
        true
    }

    /// The report as text: measurements, findings, then the recommended settings.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let f = &self.first_response;
        let _ = writeln!(o, "linger probe {} ({})", self.url, self.address);
        let _ = writeln!(
            o,
            "  first response     {} {}{}",
            f.version,
            f.status,
            f.server
                .as_deref()
                .map(|s| format!(", server: {s}"))
                .unwrap_or_default()
        );

        let idle = &self.idle_close;
        let _ = writeln!(
            o,
            "\nIdle close ({} connection{} held idle after one request each, up to {})",
            idle.connections,
            if idle.connections == 1 { "" } else { "s" },
            secs(Duration::from_secs_f64(idle.max_wait_ms / 1000.0))
        );
        match (idle.median(), idle.shortest(), idle.longest()) {
            (Some(med), Some(lo), Some(hi)) => {
                let _ = writeln!(
                    o,
                    "  closed after       median {}, min {}, max {}",
                    s3(med),
                    s3(lo),
                    s3(hi)
                );
                let mut how = Vec::new();
                if idle.fin > 0 {
                    how.push(format!("FIN on {} of {}", idle.fin, idle.connections));
                }
                if idle.rst > 0 {
                    how.push(format!("RST on {} of {}", idle.rst, idle.connections));
                }
                let _ = writeln!(o, "  how                {}", how.join(", "));
            }
            _ if idle.closed_after_response > 0 => {
                let _ = writeln!(
                    o,
                    "  closed after       the response itself on {} of {} (nothing to hold idle)",
                    idle.closed_after_response, idle.connections
                );
            }
            _ => {}
        }
        if idle.no_close > 0 {
            let _ = writeln!(
                o,
                "  no idle close      within {} on {} of {}",
                secs(Duration::from_secs_f64(idle.max_wait_ms / 1000.0)),
                idle.no_close,
                idle.connections
            );
        }
        if idle.failed > 0 {
            let _ = writeln!(
                o,
                "  failed             {} of {}",
                idle.failed, idle.connections
            );
        }

        match &self.keep_alive_hint {
            None => {
                let _ = writeln!(o, "\nKeep-Alive hint      none");
            }
            Some(h) => {
                let verdict = match h.comparison {
                    HintComparison::LongerThanReal => "LONGER than the real idle close (R1)",
                    HintComparison::MatchesReal => "matches the real idle close",
                    HintComparison::ShorterThanReal => "shorter than the real idle close (safe)",
                    HintComparison::Unknown => "not compared (no idle close measured)",
                    HintComparison::NoTimeout => "no timeout= parameter",
                };
                let _ = writeln!(o, "\nKeep-Alive hint      \"{}\": {verdict}", h.hint.raw);
            }
        }

        let l = &self.requests_per_connection;
        let _ = writeln!(o, "\nRequests per connection (up to {})", l.cap);
        let close = l
            .close
            .map(|k| format!(", then {}", k.label()))
            .unwrap_or_default();
        let line = match (l.outcome, l.limit, l.announced) {
            (LimitOutcome::Limit, Some(n), Some(true)) => {
                format!("{n}, announced with Connection: close on the last response{close}")
            }
            (LimitOutcome::Limit, Some(n), _) => {
                format!("{n}, NOT announced: the next request met the close{close}")
            }
            (LimitOutcome::NoLimitWithinCap, _, _) => format!("no limit: {} answered", l.cap),
            _ => format!(
                "not measured: {}",
                l.detail.as_deref().unwrap_or("unknown failure")
            ),
        };
        let _ = writeln!(o, "  limit              {line}");
        if let Some(h) = l.hinted_limit {
            let _ = writeln!(o, "  Keep-Alive max=    adds up to {h}");
        }

        let h = &self.half_close;
        let _ = writeln!(o, "\nHalf-close (shutdown(Write) right after the request)");
        let _ = writeln!(o, "  got                {}", half_line(h));

        let h10 = &self.http10;
        let _ = writeln!(o, "\nHTTP/1.0");
        let _ = writeln!(
            o,
            "  plain              {}{}",
            http10_line(&h10.plain),
            h10.plain_after
                .map(|a| format!(", {}", a.label()))
                .unwrap_or_default()
        );
        let second = match &h10.second {
            Some(s) if s.outcome == Exchange::Response => {
                format!(
                    "; a second request was answered ({})",
                    s.status.unwrap_or(0)
                )
            }
            Some(s) => format!("; a second request got {}", s.outcome.label()),
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "  keep-alive         {}{second}",
            http10_line(&h10.keep_alive)
        );

        match &self.intrusive {
            None => {
                let _ = writeln!(o, "\nIntrusive checks     skipped (use --intrusive)");
            }
            Some(i) => {
                let e = &i.early_response;
                let _ = writeln!(
                    o,
                    "\nEarly response (POST declaring {} KiB, {} KiB sent, then a {} s pause)",
                    super::EARLY_BODY_LEN / 1024,
                    super::EARLY_FIRST_PART / 1024,
                    super::EARLY_WAIT.as_secs()
                );
                let when = if e.answered_early {
                    format!(
                        "answered early, after {} KiB of the body",
                        e.body_bytes_sent / 1024
                    )
                } else {
                    "waited for the whole body".to_string()
                };
                let mut got = e.outcome.label().to_string();
                match (e.status, &e.connection) {
                    (Some(s), Some(c)) => got.push_str(&format!(" ({s}, Connection: {c})")),
                    (Some(s), None) => got.push_str(&format!(" ({s})")),
                    _ => {}
                }
                if e.reset_while_sending {
                    got.push_str(", sending more of the body failed (RST)");
                }
                if let Some(a) = e.after {
                    got.push_str(&format!(", {}", a.label()));
                }
                let _ = writeln!(o, "  server             {when}");
                let _ = writeln!(o, "  got                {got}");
                let lr = &i.late_request;
                let _ = writeln!(
                    o,
                    "\nLate request (sent {} ms after the longest idle close measured)",
                    LATE_BY.as_millis()
                );
                match (&lr.skipped, lr.outcome, lr.idle_ms) {
                    (Some(why), _, _) => {
                        let _ = writeln!(o, "  skipped            {why}");
                    }
                    (None, Some(out), Some(ms)) => {
                        let seen = match lr.closed_before_request {
                            Some(k) => format!(" ({} had already arrived)", k.label()),
                            None => String::new(),
                        };
                        let status = lr.status.map(|s| format!(" ({s})")).unwrap_or_default();
                        let _ = writeln!(
                            o,
                            "  got                {}{status}{seen}, after {:.3} s idle",
                            out.label(),
                            ms / 1000.0
                        );
                    }
                    _ => {}
                }
            }
        }

        let _ = writeln!(o, "\nFindings");
        if self.findings.is_empty() {
            let _ = writeln!(o, "  - nothing a keep-alive client needs to work around");
        }
        for finding in &self.findings {
            let _ = writeln!(o, "{}", wrap(finding, "  - ", "    ", 92));
        }

        let _ = writeln!(o, "\nRecommended linger settings\n");
        o.push_str(&self.recommendation.toml);
        o
    }
}

fn half_line(h: &HalfCloseReport) -> String {
    let mut s = h.outcome.label().to_string();
    if let Some(st) = h.status {
        s.push_str(&format!(" ({st})"));
    }
    if let Some(a) = h.after {
        s.push_str(&format!(", {}", a.label()));
    }
    s
}

fn http10_line(e: &Http10Exchange) -> String {
    match (e.outcome, e.status, &e.response_version) {
        (Exchange::Response, Some(st), Some(v)) => format!(
            "{v} {st}, Connection: {}{}",
            e.connection.as_deref().unwrap_or("(none)"),
            if e.close_delimited {
                ", body delimited by the close"
            } else {
                ""
            }
        ),
        (other, _, _) => other.label().to_string(),
    }
}

/// Wraps `text` at `width` columns with a first-line and a continuation prefix.
fn wrap(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out
}
