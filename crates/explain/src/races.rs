//! The race detectors: each reads one rebuilt connection (and, for a proxy's hops, the
//! other side's copy of its requests) and names the race of docs/races.md that it shows,
//! with the packets that prove it and the fix.

use std::net::SocketAddr;

use serde::Serialize;

use crate::hops::{idle_start, Hop, Hops, RIGHT_AFTER};
use crate::http::{answered_before_body, Announced, Body};
use crate::report::secs;
use crate::tcp::{find, Conn, Mark, Side};

/// A server still streaming this long after its client's FIN ignores the half-close (R5).
pub const STREAM_AFTER_FIN: f64 = 1.0;
/// Data retransmitted without an ACK for this long is a dead path (R6).
pub const STALL: f64 = 1.0;
/// A proxy that keeps an upstream request going this long after its client left (R7).
pub const KEEPS_WORKING: f64 = 1.0;

/// One packet of the evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub packet: u64,
    /// Seconds since the first packet of the capture.
    pub time: f64,
    pub what: String,
}

/// A line of the timeline printed with a finding.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub packet: u64,
    pub time: f64,
    pub side: Side,
    pub what: String,
}

/// A race found in the capture.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `R1` ... `R12`; `R1/R2` when the capture does not tell whether the server is an
    /// origin behind a proxy's pool (R1) or a proxy behind a load balancer (R2).
    pub race: String,
    pub title: String,
    pub conn: usize,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// A request (or, for R5 and R7, a client's departure) was lost to it: no answer
    /// reached the client that sent it, or work went on for a client that had left.
    pub lost: bool,
    /// What happened, in a paragraph.
    pub text: String,
    pub fix: String,
    pub evidence: Vec<Evidence>,
    /// The idle age at which the request was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_age: Option<f64>,
    /// The server's idle close, as measured on its hop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_idle_close: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in_flight: Option<u64>,
    pub timeline: Vec<Line>,
}

impl Finding {
    /// The race numbers this finding names (`R1/R2` names both).
    pub fn races(&self) -> impl Iterator<Item = &str> {
        self.race.split('/')
    }
}

/// What the detectors read.
pub struct Scope<'a> {
    pub conns: &'a [Conn],
    pub hops: &'a Hops,
    /// Time of the first packet: the report's times are relative to it.
    pub t0: f64,
    /// How far the capture has been read, when the connections are explained while it goes
    /// on (`None` at its end).
    pub now: Option<f64>,
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope").field("t0", &self.t0).finish()
    }
}

struct Draft {
    race: String,
    title: &'static str,
    lost: bool,
    text: String,
    fix: String,
    evidence: Vec<(Mark, String)>,
    idle_age: Option<f64>,
    peer_idle_close: Option<f64>,
    bytes_in_flight: Option<u64>,
}

impl Draft {
    fn new(race: &str, title: &'static str, lost: bool) -> Self {
        Self {
            race: race.to_string(),
            title,
            lost,
            text: String::new(),
            fix: String::new(),
            evidence: Vec::new(),
            idle_age: None,
            peer_idle_close: None,
            bytes_in_flight: None,
        }
    }
}

/// Every finding of the connections `ids` (in order of id), in order of connection and time;
/// the other connections of the scope are read as their other hops.
pub fn detect(scope: &Scope<'_>, ids: &[usize]) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in ids.iter().filter_map(|&id| find(scope.conns, id)) {
        let hop = &scope.hops.hops[scope.hops.hop_of[&c.id]];
        let mut drafts = Vec::new();
        drafts.extend(reuse_into_close(scope, c, hop));
        drafts.extend(early_response(scope, c));
        drafts.extend(half_close_ignored(scope, c));
        drafts.extend(silent_drop(scope, c));
        drafts.extend(client_left(scope, c));
        drafts.extend(cut_mid_body(scope, c));
        drafts.extend(framing(c));
        drafts.extend(expect_answered_early(c));
        for d in drafts {
            out.push(finish(scope, c, d));
        }
    }
    out
}

fn finish(scope: &Scope<'_>, c: &Conn, d: Draft) -> Finding {
    let rel = |m: &Mark| m.time - scope.t0;
    let first = d.evidence.iter().map(|(m, _)| m.packet).min().unwrap_or(0);
    let last = d.evidence.iter().map(|(m, _)| m.packet).max().unwrap_or(0);
    let events: Vec<_> = c.events.iter().collect();
    let lo = events
        .iter()
        .position(|e| e.mark.packet >= first)
        .unwrap_or(events.len());
    let hi = events
        .iter()
        .rposition(|e| e.mark.packet <= last)
        .map_or(lo, |i| i + 1);
    let from = lo.saturating_sub(4);
    let to = (hi.max(lo) + 3).min(events.len());
    let mut timeline: Vec<Line> = events[from..to]
        .iter()
        .map(|e| Line {
            packet: e.mark.packet,
            time: rel(&e.mark),
            side: e.side,
            what: e.what.clone(),
        })
        .collect();
    if timeline.len() > 24 {
        timeline.drain(10..timeline.len() - 10);
    }
    Finding {
        race: d.race,
        title: d.title.to_string(),
        conn: c.id,
        client: c.client(),
        server: c.server(),
        lost: d.lost,
        text: d.text,
        fix: d.fix,
        evidence: d
            .evidence
            .iter()
            .map(|(m, w)| Evidence {
                packet: m.packet,
                time: rel(m),
                what: w.clone(),
            })
            .collect(),
        idle_age: d.idle_age,
        peer_idle_close: d.peer_idle_close,
        bytes_in_flight: d.bytes_in_flight,
        timeline,
    }
}

/// Whether request `i` of `c` was lost: its own answer is missing, and, when a proxy
/// forwarded it, the proxy's client got no real answer either.
fn lost_request(scope: &Scope<'_>, c: &Conn, i: usize) -> bool {
    scope
        .hops
        .delivered_downstream(scope.conns, (c.id, i))
        .is_none_or(|delivered| !delivered)
}

fn who(c: &Conn, side: Side) -> String {
    match side {
        Side::Client => format!("the client {}", c.client()),
        Side::Server => format!("the server {}", c.server()),
    }
}

/// R1, R2, R3, R9: a request written on a connection that the server had closed, or
/// was closing, with no answer.
fn reuse_into_close(scope: &Scope<'_>, c: &Conn, hop: &Hop) -> Option<Draft> {
    let reqs = &c.http.requests;
    let i = c.http.responses.len();
    let req = reqs.get(i)?;
    if i == 0 || c.has_gaps() {
        return None;
    }
    // A request that reached the proxy and went upstream: the race is on the hop behind.
    if scope.hops.copies.contains_key(&(c.id, i)) {
        return None;
    }
    let (close, how) = c.close_of(Side::Server)?;
    let prev = &c.http.responses[i - 1];
    let start = idle_start(c, i)?;
    let age = req.start.time - start;
    let close_age = close.time - start;
    let gap = req.start.time - close.time;
    let order = if gap >= 0.0 {
        format!("{} after the server's {how}", secs(gap))
    } else if how == "RST" {
        format!(
            "and the server's kernel answered it with the RST {} later",
            secs(-gap)
        )
    } else {
        format!("{} before the server's {how}, which crossed it", secs(-gap))
    };
    let lost = lost_request(scope, c, i);
    let mut evidence = vec![
        (
            prev.end.unwrap_or(prev.start),
            format!("response {} ends: the connection is idle", prev.status),
        ),
        (close, format!("server {how}")),
        (
            req.start,
            format!("request {} {} written on it", req.method, req.target),
        ),
    ];
    evidence.sort_by_key(|(m, _)| m.packet);
    let mut d;
    if prev.announced == Announced::Close {
        d = Draft::new(
            "R9",
            "reuse of a connection the server said it would close",
            lost,
        );
        d.text = format!(
            "Response {} (packet {}) said the connection would close, and {} closed it \
             ({how}, packet {}). The client still wrote {} {} on it (packet {}), {order}.",
            prev.status,
            prev.start.packet,
            who(c, Side::Server),
            close.packet,
            req.method,
            req.target,
            req.start.packet
        );
        d.fix = "The client (or the proxy's pool) must never reuse a connection whose response \
                 said `Connection: close` or was HTTP/1.0 without keep-alive."
            .into();
    } else if close_age < RIGHT_AFTER {
        let (race, title) = if prev.announced == Announced::KeepAlive || i >= 2 {
            ("R3", "a close after a response that did not announce it")
        } else {
            (
                "R9",
                "reuse right after a response: the server's FIN was already on its way",
            )
        };
        d = Draft::new(race, title, lost);
        let said = match prev.announced {
            Announced::KeepAlive => "said `Connection: keep-alive`",
            _ => "did not say `Connection: close`",
        };
        d.text = format!(
            "{} closed the connection ({how}, packet {}) {} after response {} (packet {}), \
             which {said}, after {i} exchange(s) on it. The client wrote {} {} on it \
             (packet {}), {order}; it got no answer.",
            capital(&who(c, Side::Server)),
            close.packet,
            secs(close_age),
            prev.status,
            prev.start.packet,
            req.method,
            req.target,
            req.start.packet
        );
        if let Some(rtt) = c.rtt {
            d.text.push_str(&format!(
                " The round-trip time is {}: a client cannot see a FIN sooner than that.",
                secs(rtt)
            ));
        }
        d.fix = if race == "R3" {
            "The server must say `Connection: close` on the response after which it closes \
             (and no hop may forward a `Connection` header it received); a client must \
             retry only what provably never arrived or is idempotent."
                .into()
        } else {
            "A server that closes after a response must say `Connection: close` on it; a \
             client's pool must check a connection for a pending FIN when it takes it, and \
             must not send a non-idempotent request twice."
                .into()
        };
    } else {
        let race = if hop.fed_by.is_some() {
            "R1"
        } else if hop.feeds.is_some() {
            "R2"
        } else {
            "R1/R2"
        };
        d = Draft::new(race, "idle close vs reuse", lost);
        let measured = hop.idle.server_close.unwrap_or(close_age);
        d.peer_idle_close = Some(measured);
        d.idle_age = Some(age);
        let (range, about) = match hop.idle.longest_reuse.filter(|&r| r < measured) {
            Some(r) => (
                format!(
                    "between {} (the longest idle age at which it still answered a request) \
                     and {} (the shortest at which it closed a connection or refused the \
                     request written on it)",
                    secs(r),
                    secs(measured)
                ),
                (r + measured) / 2.0,
            ),
            None => (
                format!(
                    "at most {} (the shortest idle age at which it closed a connection or \
                     refused the request written on it)",
                    secs(measured)
                ),
                measured,
            ),
        };
        let what = if gap < 0.0 && how == "RST" {
            format!(
                "the client wrote {} {} on it (packet {}) at idle age {}, and the server's \
                 kernel answered it with an RST (packet {}) {} later: the server had closed \
                 it before its FIN reached the client",
                req.method,
                req.target,
                req.start.packet,
                secs(age),
                close.packet,
                secs(-gap)
            )
        } else {
            format!(
                "the server closed it ({how}, packet {}) at idle age {}, and the client wrote \
                 {} {} on it (packet {}) at idle age {}, {order}",
                close.packet,
                secs(close_age),
                req.method,
                req.target,
                req.start.packet,
                secs(age)
            )
        };
        d.text = format!(
            "{} closes connections idle for about {:.1} s: measured on this hop, {range}. This connection had been idle since packet {}; {what}. The request got no answer{}.",
            capital(&who(c, Side::Server)),
            about,
            prev.end.unwrap_or(prev.start).packet,
            if lost {
                ""
            } else {
                ", but the proxy in front answered its client anyway (a retry)"
            }
        );
        // A setting to suggest: a second below the measured close (half of it when short),
        // rounded down to a tenth of a second.
        let below = format!(
            "{:.1} s",
            ((measured - 1.0).max(measured / 2.0) * 10.0).floor() / 10.0
        );
        d.fix = match race {
            "R1" => format!(
                "The proxy's pool keeps upstream connections idle longer than {} does: set \
                 its upstream idle timeout below {} (e.g. {}; nginx: `keepalive_timeout` in the \
                 `upstream` block; linger: `cluster.idle_timeout`), or have the origin announce \
                 `Keep-Alive: timeout=N`; retry only requests that provably never arrived or \
                 are idempotent.",
                c.server(),
                secs(measured),
                below
            ),
            "R2" => format!(
                "The proxy at {} closes idle client connections sooner than its client reuses \
                 them: raise its idle timeout above the client's (a load balancer keeps 60 s; \
                 nginx uses 75 s), or lower the client's below {}; close idle connections with \
                 FIN and announce `Keep-Alive: timeout=N`.",
                c.server(),
                secs(measured)
            ),
            _ => format!(
                "Keep the client's idle timeout for {} below the server's {} (e.g. {}), or \
                 make the server's idle timeout longer than the client's; a server can \
                 announce its timeout with `Keep-Alive: timeout=N`. (R1 when the server is an \
                 origin behind a proxy's pool, R2 when it is a proxy behind a load balancer.)",
                c.server(),
                secs(measured),
                below
            ),
        };
    }
    d.evidence = evidence;
    Some(d)
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// R4: a response before the request's body ended, then an RST over the unread body.
fn early_response(scope: &Scope<'_>, c: &Conn) -> Option<Draft> {
    let rst = c.half(Side::Server).rst?;
    let (i, req) = c.http.requests.iter().enumerate().find(|(i, r)| {
        r.body != Body::None
            && c.http.responses.get(*i).is_some_and(|resp| {
                r.end.is_none_or(|e| e.packet > resp.start.packet) && resp.start.packet < rst.packet
            })
    })?;
    let resp = &c.http.responses[i];
    let client = c.half(Side::Client);
    let in_flight = client.sent_high.saturating_sub(client.acked);
    let declared = match req.body {
        Body::Length(n) => format!("of {n} "),
        _ => String::new(),
    };
    let mut d = Draft::new("R4", "early response, then a reset over the unread body", {
        lost_request(scope, c, i)
    });
    d.bytes_in_flight = Some(in_flight);
    d.text = format!(
        "{} answered {} {} with {} (packet {}) while the request body was still arriving \
         ({} {declared}body bytes on the wire in the end), then reset the connection \
         (packet {}) with body bytes unread: the kernel's RST discards the response the \
         client has not read yet.{}",
        capital(&who(c, Side::Server)),
        req.method,
        req.target,
        resp.status,
        resp.start.packet,
        req.body_bytes,
        rst.packet,
        if in_flight > 0 {
            format!(" {in_flight} bytes from the client were unacknowledged when it came.")
        } else {
            String::new()
        }
    );
    d.fix = "Close gracefully after an early response: send it with `Connection: close`, shut \
             down the write side (FIN), keep reading and discarding the body for a bounded \
             time, then close (or hold the response until the body has been read)."
        .into();
    d.evidence = vec![
        (
            req.start,
            format!("request {} {} with a body", req.method, req.target),
        ),
        (
            resp.start,
            format!("response {} before the body ended", resp.status),
        ),
        (rst, "server RST with the body unread".into()),
    ];
    Some(d)
}

/// R5: the client's FIN during a streamed response, and the server keeps streaming.
fn half_close_ignored(scope: &Scope<'_>, c: &Conn) -> Option<Draft> {
    let (fin, how) = c.close_of(Side::Client)?;
    if how != "FIN" {
        return None;
    }
    let resp = c
        .http
        .responses
        .iter()
        .find(|r| r.start.packet < fin.packet && r.end.is_none_or(|e| e.packet > fin.packet))?;
    let server = c.half(Side::Server);
    let last = server.last_data?;
    let streamed = last.time - fin.time;
    if streamed < STREAM_AFTER_FIN {
        return None;
    }
    let after = server
        .bytes
        .saturating_sub(server.bytes_at_peer_fin.unwrap_or(0));
    let mut d = Draft::new("R5", "half-close ignored while streaming", true);
    d.bytes_in_flight = Some(after);
    let ended = match (c.close_of(Side::Server), scope.now) {
        (Some((m, h)), _) => format!("it closed only at packet {} ({h})", m.packet),
        (None, None) => "it had not closed when the capture ended".into(),
        (None, Some(now)) => format!(
            "it had not closed {} after its last packet",
            secs(now - c.last.time)
        ),
    };
    d.text = format!(
        "The client sent a FIN (packet {}) during response {} (packet {}); {} kept streaming \
         for {} after it ({after} more bytes, the last at packet {}), and {ended}.",
        fin.packet,
        resp.status,
        resp.start.packet,
        who(c, Side::Server),
        secs(streamed),
        last.packet
    );
    d.fix = "Treat a client's FIN during a streamed response as the end of the stream: stop, \
             close the upstream connection so that the origin's writes fail and its cleanup \
             runs (RFC 9112 §9.6 allows half-closing clients; serve them only when asked)."
        .into();
    d.evidence = vec![
        (
            resp.start,
            format!("response {} starts streaming", resp.status),
        ),
        (fin, "client FIN".into()),
        (
            last,
            format!("server data {} after the FIN", secs(streamed)),
        ),
    ];
    Some(d)
}

/// R6: data retransmitted with no ACK for longer than [`STALL`], and no RST.
fn silent_drop(scope: &Scope<'_>, c: &Conn) -> Option<Draft> {
    let (side, stall) = [Side::Client, Side::Server]
        .into_iter()
        .filter_map(|s| c.half(s).longest_stall.map(|st| (s, st)))
        .filter(|(_, st)| !st.reset && st.retransmits >= 2 && st.seconds() >= STALL)
        .max_by(|a, b| a.1.seconds().total_cmp(&b.1.seconds()))?;
    let i = c
        .http
        .requests
        .iter()
        .rposition(|r| r.start.packet <= stall.last_retransmit.packet);
    let lost = i.is_none_or(|i| c.http.responses.get(i).is_none() && lost_request(scope, c, i));
    let mut d = Draft::new(
        "R6",
        "silent drop: retransmissions that nothing acknowledges",
        lost,
    );
    d.bytes_in_flight = Some(stall.in_flight);
    let end = if stall.acked {
        "the peer acknowledged them in the end".to_string()
    } else if stall.gave_up {
        "nothing acknowledged them, and the sender gave up with an RST".to_string()
    } else if let Some(now) = scope.now {
        format!(
            "nothing acknowledged them and no RST came in the {} after",
            secs(now - stall.last_retransmit.time)
        )
    } else {
        "nothing acknowledged them and no RST came before the capture ended".to_string()
    };
    d.text = format!(
        "{} sent {} bytes (packet {}) and retransmitted them {} times over {} (last at packet \
         {}) with no ACK: the path is dead, as when a NAT, firewall or load balancer has \
         forgotten an idle flow and drops its packets without a word; {end}. TCP retransmits \
         like this for about 15 minutes (tcp_retries2) before giving up.",
        capital(&who(c, side)),
        stall.in_flight,
        stall.first_sent.packet,
        stall.retransmits,
        secs(stall.seconds()),
        stall.last_retransmit.packet
    );
    d.fix = "Set TCP keepalive (idle, interval, count) and TCP_USER_TIMEOUT on both sides so \
             that a dead path is found within tens of seconds, bound each try with a response \
             timeout, and retry idempotent requests on a fresh connection (linger: \
             `cluster.tcp.user_timeout`, `cluster.response_timeout`)."
        .into();
    d.evidence = vec![
        (stall.first_sent, "data first sent".into()),
        (
            stall.last_retransmit,
            format!("retransmission {}, still no ACK", stall.retransmits),
        ),
    ];
    Some(d)
}

/// R7: the client left while its request waited, and the work went on: the server
/// answered into the closed connection, or (a proxy) kept the upstream request going.
fn client_left(scope: &Scope<'_>, c: &Conn) -> Option<Draft> {
    let (left, how) = c.close_of(Side::Client)?;
    if c.has_gaps() {
        return None;
    }
    let (i, req) = c.http.requests.iter().enumerate().find(|(i, r)| {
        r.start.packet < left.packet
            && c.http
                .responses
                .get(*i)
                .is_none_or(|resp| resp.start.packet > left.packet)
    })?;
    let late = c.http.responses.get(i);
    let mut d = Draft::new("R7", "the client left while its request waited", true);
    d.fix = "While a request waits, watch its client: a FIN or RST from it cancels the work \
             at once (a proxy closes the upstream connection and does not return it to the \
             pool), and nothing more is written to the client (HAProxy: `option \
             abortonclose`)."
        .into();
    d.evidence = vec![
        (req.start, format!("request {} {}", req.method, req.target)),
        (left, format!("client {how}: it left")),
    ];
    let head = format!(
        "The client {} left ({how}, packet {}) while its request {} {} (packet {}) waited",
        c.client(),
        left.packet,
        req.method,
        req.target,
        req.start.packet
    );
    if let Some(&(cc, ci)) = scope.hops.copies.get(&(c.id, i)).and_then(|cs| cs.last()) {
        // A proxy forwarded it: did it cancel the upstream request?
        let up = find(scope.conns, cc)?;
        if up.has_gaps() {
            return None;
        }
        let answered = up.http.responses.get(ci).map(|r| r.start);
        let stop = [
            up.close_of(Side::Client).map(|(m, _)| m),
            up.close_of(Side::Server).map(|(m, _)| m),
            answered,
        ]
        .into_iter()
        .flatten()
        .min_by_key(|m| m.packet);
        let end_time = stop.map_or(up.last.time.max(c.last.time), |m| m.time);
        let kept = end_time - left.time;
        // Still waiting when the capture ended counts however short the capture was after
        // the leave: a proxy that watches its client cancels within milliseconds.
        if stop.is_some() && kept < KEEPS_WORKING {
            return None;
        }
        let outcome = match stop {
            Some(m) if Some(m) == answered => format!(
                "the origin answered (packet {}) {} after the client had left",
                m.packet,
                secs(kept)
            ),
            Some(m) => format!(
                "the upstream connection closed only {} later (packet {})",
                secs(kept),
                m.packet
            ),
            None => match scope.now {
                None => format!(
                    "the upstream connection was still open {} later, when the capture ended",
                    secs(kept)
                ),
                Some(now) => format!(
                    "the upstream connection was still open {} later, and quiet for {} after",
                    secs(kept),
                    secs(now - end_time)
                ),
            },
        };
        d.text = format!(
            "{head}. The proxy {} had forwarded it upstream (packet {}) and did not cancel \
             it: {outcome}.",
            c.server(),
            up.http.requests[ci].start.packet
        );
        if let Some(m) = stop {
            d.evidence.push((m, "upstream ends".into()));
        }
        return Some(d);
    }
    let resp = late?;
    d.text = format!(
        "{head}; {} answered {} {} later (packet {}), into a connection whose client was gone.",
        who(c, Side::Server),
        resp.status,
        secs(resp.start.time - left.time),
        resp.start.packet
    );
    d.evidence.push((
        resp.start,
        format!("response {} after the client left", resp.status),
    ));
    Some(d)
}

/// R11: the server's RST (or FIN) in the middle of a response body.
fn cut_mid_body(scope: &Scope<'_>, c: &Conn) -> Option<Draft> {
    let (i, resp) = c
        .http
        .responses
        .iter()
        .enumerate()
        .find(|(_, r)| r.cut.is_some())?;
    let cut = resp.cut?;
    // A client that closed first cut the response itself (R5, R7), not the server.
    if c.close_of(Side::Client)
        .is_some_and(|(m, _)| m.packet < cut.at.packet)
    {
        return None;
    }
    // The hop behind a proxy shows where the cut came from; the proxy passing it on is
    // not a second race.
    let upstream_cut = scope.hops.copies.get(&(c.id, i)).is_some_and(|cs| {
        cs.iter().any(|&(cc, ci)| {
            find(scope.conns, cc)
                .and_then(|up| up.http.responses.get(ci))
                .is_some_and(|r| r.cut.is_some())
        })
    });
    if upstream_cut {
        return None;
    }
    let looked_complete = scope.hops.delivered_downstream(scope.conns, (c.id, i)) == Some(true);
    let mut d = Draft::new(
        "R11",
        "the server died in the middle of a response body",
        looked_complete,
    );
    let expected = match resp.body {
        Body::Length(n) => format!("of the {n} its Content-Length announced"),
        Body::Chunked => "of a chunked body, without its last chunk".into(),
        _ => String::new(),
    };
    d.text = format!(
        "{} sent response {} (packet {}) and cut it with a {} (packet {}) after {} body bytes \
         {expected}.",
        capital(&who(c, Side::Server)),
        resp.status,
        resp.start.packet,
        cut.by,
        cut.at.packet,
        resp.body_bytes
    );
    if scope.hops.original.contains_key(&(c.id, i)) {
        if looked_complete {
            d.text.push_str(
                " The proxy in front made the cut response look complete to its client: \
                 a short body that looks whole.",
            );
        } else {
            d.text
                .push_str(" The proxy in front passed the cut on visibly.");
        }
    } else {
        d.text
            .push_str(" The client can see the cut (the body ended short of its framing).");
    }
    d.fix = "A proxy must pass a cut on visibly: no final zero-length chunk, or close before \
             the announced Content-Length; never re-frame a cut body as complete."
        .into();
    d.evidence = vec![
        (resp.start, format!("response {}", resp.status)),
        (cut.at, format!("server {} mid-body", cut.by)),
    ];
    Some(d)
}

/// R12: framing that another hop could read differently.
fn framing(c: &Conn) -> Vec<Draft> {
    c.http
        .problems
        .iter()
        .map(|p| {
            let mut d = Draft::new("R12", "ambiguous framing on the wire", false);
            d.text = format!(
                "{} sent a head with ambiguous framing (packet {}): {}. Two hops can read \
                 where this message ends differently (request smuggling, a desynchronised \
                 connection).",
                capital(&who(c, p.side)),
                p.at.packet,
                p.what
            );
            d.fix = "Reject such a request with 400 and close the connection, putting zero \
                     bytes on the upstream; never reuse a connection after such a response."
                .into();
            d.evidence = vec![(p.at, p.what.clone())];
            d
        })
        .collect()
}

/// R12: a final status to `Expect: 100-continue` before the body was sent, on a connection
/// that stays open: whether the body still follows is then a guess on both sides, and the
/// next request can be read as part of it (or the body as a request).
fn expect_answered_early(c: &Conn) -> Option<Draft> {
    let (req, resp, next) = match c.http.expect_early.as_deref() {
        Some((req, resp, next)) => (req, resp, next.as_ref()),
        None => {
            let (i, req) = c.http.requests.iter().enumerate().find(|(i, r)| {
                c.http
                    .responses
                    .get(*i)
                    .is_some_and(|resp| answered_before_body(r, resp))
            })?;
            (req, &c.http.responses[i], c.http.requests.get(i + 1))
        }
    };
    let mut d = Draft::new(
        "R12",
        "a final status to Expect: 100-continue, and the connection kept",
        false,
    );
    d.text = format!(
        "{} {} (packet {}) asked `Expect: 100-continue`; {} answered {} (packet {}) before \
         the body had been sent, without `Connection: close`{}. The client may send the body \
         anyway or not; a server that does not read and discard it, or a client that skips \
         it, reads the connection out of step.",
        req.method,
        req.target,
        req.start.packet,
        who(c, Side::Server),
        resp.status,
        resp.start.packet,
        match next {
            Some(n) => format!(
                ", and the connection carried {} {} next (packet {})",
                n.method, n.target, n.start.packet
            ),
            None => String::new(),
        }
    );
    d.fix = "After a final status to `Expect: 100-continue` whose body was not read, close the \
             connection (say `Connection: close`); a proxy must not reuse such an upstream \
             connection unless the whole body was sent."
        .into();
    d.evidence = vec![
        (req.start, "request with Expect: 100-continue".into()),
        (
            resp.start,
            format!("final status {} before the body", resp.status),
        ),
    ];
    if let Some(n) = next {
        d.evidence
            .push((n.start, format!("next request {} {}", n.method, n.target)));
    }
    Some(d)
}
