//! The report: what the capture holds (connections, hops) and what went wrong in it (the
//! findings), as text for people and as JSON for programs.

use std::fmt::Write;
use std::net::SocketAddr;

use serde::Serialize;

use crate::capture::Skipped;
use crate::hops::{idle_start, Hop};
use crate::races::Finding;
use crate::tcp::{Conn, Mark, Side};

/// Connections listed one by one in the text report; past this only those with findings.
const LIST_CONNECTIONS: usize = 40;

/// A close of one side.
#[derive(Debug, Clone, Serialize)]
pub struct Close {
    pub side: Side,
    /// "FIN" or "RST".
    pub how: &'static str,
    pub packet: u64,
    pub time: f64,
    /// What it came after: "after response 200, idle 2.000 s", "with GET / waiting".
    pub after: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnSummary {
    pub id: usize,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// The client's SYN, when the capture holds it.
    pub opened: Option<f64>,
    pub opened_packet: Option<u64>,
    pub requests: usize,
    pub responses: usize,
    /// The longest idle gap between an exchange and the next request.
    pub longest_idle: Option<f64>,
    pub closes: Vec<Close>,
    pub retransmissions: u64,
    /// The longest run of retransmissions that nothing acknowledged, and who sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unacked: Option<(Side, crate::tcp::Stall)>,
    /// Bytes the capture missed (never captured, skipped over).
    pub missing_bytes: u64,
    /// Directions not followed as HTTP, and why.
    pub not_followed: Vec<String>,
    /// Seconds without a packet when an open connection was explained and dropped while the
    /// capture went on (past its idle window); absent when it was there to the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_when_dropped: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HopSummary {
    pub server: SocketAddr,
    pub connections: usize,
    pub requests: usize,
    /// The server of the hop whose requests this hop's client forwards (a proxy's front).
    pub client_is_proxy_of: Option<SocketAddr>,
    /// The server this hop's server forwards to.
    pub server_forwards_to: Option<SocketAddr>,
    #[serde(flatten)]
    pub idle: crate::hops::Idle,
    /// The client keeps connections idle at least as long as the server closes them.
    pub wrong_way: bool,
    pub note: Option<String>,
}

/// Everything `linger explain` found in a capture.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub capture: String,
    pub packets: u64,
    pub tcp_segments: u64,
    pub skipped: Skipped,
    /// Time of the first packet, seconds since the epoch; the other times are relative to
    /// it.
    pub start: f64,
    pub duration: f64,
    pub hops: Vec<HopSummary>,
    pub findings: Vec<Finding>,
    /// Every TCP connection of the capture.
    pub connections_seen: usize,
    /// Each connection with a finding, and the first [`crate::KEEP_CLEAN`] without one
    /// (in order of id).
    pub connections: Vec<ConnSummary>,
    /// Connections without a finding past those listed in `connections`.
    pub connections_left_out: usize,
    /// The most connections held in memory at once while reading.
    pub most_held: usize,
}

fn rel(m: Mark, t0: f64) -> f64 {
    m.time - t0
}

/// A duration as the report prints it: milliseconds under a second.
pub(crate) fn secs(s: f64) -> String {
    if s.abs() < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.3} s")
    }
}

/// What a close of `side` at `m` came after.
fn close_context(c: &Conn, m: Mark) -> String {
    let reqs = &c.http.requests;
    let resps = &c.http.responses;
    let sent = reqs.iter().filter(|r| r.start.packet < m.packet).count();
    let answered = resps.iter().filter(|r| r.start.packet < m.packet).count();
    if sent == 0 {
        return if c.http.trimmed == 0 {
            "before any request".into()
        } else {
            format!("after {} exchange(s)", c.http.trimmed)
        };
    }
    if answered < sent {
        let r = &reqs[answered];
        return format!("with request {} {} waiting", r.method, r.target);
    }
    let last = &resps[answered - 1];
    match last.end {
        Some(e) if e.packet <= m.packet => {
            let idle = idle_start(c, sent).map_or(0.0, |s| m.time - s);
            format!("after response {}, idle {}", last.status, secs(idle))
        }
        _ => format!("during response {}", last.status),
    }
}

pub(crate) fn summarize(c: &Conn, t0: f64) -> ConnSummary {
    let syn = c.half(Side::Client).syn;
    let first = usize::from(c.http.trimmed == 0);
    let longest_idle = (first..c.http.requests.len())
        .filter_map(|i| idle_start(c, i).map(|s| c.http.requests[i].start.time - s))
        .chain(c.http.trimmed_longest_idle)
        .max_by(f64::total_cmp);
    let mut closes = Vec::new();
    for side in [Side::Client, Side::Server] {
        let h = c.half(side);
        for (m, how) in [(h.fin, "FIN"), (h.rst, "RST")] {
            if let Some(m) = m {
                closes.push(Close {
                    side,
                    how,
                    packet: m.packet,
                    time: rel(m, t0),
                    after: close_context(c, m),
                });
            }
        }
    }
    closes.sort_by_key(|cl| cl.packet);
    ConnSummary {
        id: c.id,
        client: c.client(),
        server: c.server(),
        opened: syn.map(|m| rel(m, t0)),
        opened_packet: syn.map(|m| m.packet),
        requests: c.http.request_count(),
        responses: c.http.response_count(),
        longest_idle,
        closes,
        retransmissions: c.halves[0].retransmissions + c.halves[1].retransmissions,
        unacked: [Side::Client, Side::Server]
            .into_iter()
            .filter_map(|s| c.half(s).longest_stall.map(|st| (s, st)))
            .filter(|(_, st)| !st.acked)
            .max_by(|a, b| a.1.seconds().total_cmp(&b.1.seconds())),
        missing_bytes: c.halves[0].missing + c.halves[1].missing,
        not_followed: c
            .http
            .opaque
            .iter()
            .map(|(s, why)| format!("{}: {why}", s.name()))
            .collect(),
        quiet_when_dropped: None,
    }
}

impl HopSummary {
    /// A hop with nothing counted yet.
    pub(crate) fn new(server: SocketAddr) -> Self {
        Self {
            server,
            connections: 0,
            requests: 0,
            client_is_proxy_of: None,
            server_forwards_to: None,
            idle: crate::hops::Idle::default(),
            wrong_way: false,
            note: None,
        }
    }

    /// Counts the connections `ids` of `hop` (lined up among `conns`) in this summary.
    pub(crate) fn add(&mut self, hop: &Hop, conns: &[Conn], ids: &[usize]) {
        self.connections += ids.len();
        self.requests += ids
            .iter()
            .filter_map(|&id| crate::tcp::find(conns, id))
            .map(|c| c.http.request_count())
            .sum::<usize>();
        self.idle.merge(&crate::hops::measure(conns, ids));
        self.client_is_proxy_of = hop.fed_by.or(self.client_is_proxy_of);
        self.server_forwards_to = hop.feeds.or(self.server_forwards_to);
    }

    /// Whether the hop is the wrong way round, and the note that says so.
    pub(crate) fn conclude(&mut self) {
        self.wrong_way = matches!(
            (self.idle.server_close, self.idle.longest_attempt),
            (Some(s), Some(a)) if a >= s
        );
        self.note = match (
            self.wrong_way,
            self.idle.server_close,
            self.idle.longest_attempt,
        ) {
            (true, Some(s), Some(a)) => Some(format!(
                "the wrong way round: the client reuses connections idle up to {} but the \
                 server closes them at about {}; the client's idle timeout must be the \
                 shorter",
                secs(a),
                secs(s)
            )),
            _ => None,
        };
    }
}

/// Wraps `text` at `width` columns, each line after `indent`.
fn wrap(out: &mut String, text: &str, indent: &str, width: usize) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > width {
            let _ = writeln!(out, "{indent}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{indent}{line}");
    }
}

impl Report {
    /// Findings that lost a request (or, R5 and R7, kept working for a client that left).
    pub fn lost(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.lost)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The readable report.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{}: {} packets ({} TCP segments), {} TCP connections, {} hop(s), {:.3} s",
            self.capture,
            self.packets,
            self.tcp_segments,
            self.connections_seen,
            self.hops.len(),
            self.duration
        );
        let sk = &self.skipped;
        if sk.unknown_link + sk.undecodable > 0 {
            let _ = writeln!(
                o,
                "  skipped: {} packets of an unknown link type, {} that did not decode",
                sk.unknown_link, sk.undecodable
            );
        }
        let _ = writeln!(o, "\nHops (by the server they reach):");
        for h in &self.hops {
            let mut roles = String::new();
            if let Some(f) = h.client_is_proxy_of {
                let _ = write!(roles, "; its client is the proxy at {f}");
            }
            if let Some(b) = h.server_forwards_to {
                let _ = write!(roles, "; its server is a proxy forwarding to {b}");
            }
            let _ = writeln!(
                o,
                "  {}: {} connection(s), {} request(s){roles}",
                h.server, h.connections, h.requests
            );
            let mut idle = Vec::new();
            if let Some(s) = h.idle.server_close {
                idle.push(format!(
                    "server closes idle connections at about {}",
                    secs(s)
                ));
            }
            if let Some(r) = h.idle.longest_reuse {
                idle.push(format!("longest reuse that got an answer {}", secs(r)));
            }
            if let Some(a) = h.idle.longest_attempt {
                idle.push(format!("longest reuse attempted {}", secs(a)));
            }
            if let Some(c) = h.idle.client_close {
                idle.push(format!(
                    "client closes idle connections at about {}",
                    secs(c)
                ));
            }
            if !idle.is_empty() {
                wrap(&mut o, &format!("idle: {}", idle.join("; ")), "      ", 96);
            }
            if let Some(n) = &h.note {
                wrap(&mut o, &format!("!! {n}"), "      ", 96);
            }
        }
        let lost = self.lost().count();
        let _ = writeln!(
            o,
            "\nFindings: {} ({} lost requests or kept working for a client that left)",
            self.findings.len(),
            lost
        );
        if self.findings.is_empty() {
            let _ = writeln!(o, "  none: no connection-lifecycle race in this capture");
        }
        for (n, f) in self.findings.iter().enumerate() {
            let _ = writeln!(
                o,
                "\n[{}] {} {}: connection #{} {} -> {}{}",
                n + 1,
                f.race,
                f.title,
                f.conn,
                f.client,
                f.server,
                if f.lost { " (LOST)" } else { "" }
            );
            wrap(&mut o, &f.text, "    ", 96);
            wrap(&mut o, &format!("Fix: {}", f.fix), "    ", 96);
            let _ = writeln!(o, "    Timeline:");
            for l in &f.timeline {
                let _ = writeln!(
                    o,
                    "      #{:<7} +{:>10.6} s  {:<6}  {}",
                    l.packet,
                    l.time,
                    l.side.name(),
                    l.what
                );
            }
        }
        let with_findings: Vec<usize> = self.findings.iter().map(|f| f.conn).collect();
        let listed: Vec<&ConnSummary> = if self.connections_seen <= LIST_CONNECTIONS {
            self.connections.iter().collect()
        } else {
            self.connections
                .iter()
                .filter(|c| with_findings.contains(&c.id))
                .collect()
        };
        if listed.len() == self.connections_seen {
            let _ = writeln!(o, "\nConnections ({}):", listed.len());
        } else {
            let json = if self.connections_left_out == 0 {
                "--json has them all".to_string()
            } else {
                format!(
                    "--json has them all but {} without findings, only counted",
                    self.connections_left_out
                )
            };
            let _ = writeln!(
                o,
                "\nConnections ({}; past {LIST_CONNECTIONS} only those with findings are listed, \
                 {json}): {} listed",
                self.connections_seen,
                listed.len()
            );
        }
        for c in listed {
            let opened = match (c.opened, c.opened_packet) {
                (Some(t), Some(p)) => format!("opened by the client (SYN #{p}, +{t:.6} s)"),
                _ => "opened before the capture".into(),
            };
            let mut line = format!(
                "#{} {} -> {}: {opened}; {} request(s), {} response(s)",
                c.id, c.client, c.server, c.requests, c.responses
            );
            if let Some(i) = c.longest_idle {
                let _ = write!(line, "; longest idle {}", secs(i));
            }
            if c.retransmissions > 0 {
                let _ = write!(line, "; {} retransmission(s)", c.retransmissions);
            }
            if let Some((side, st)) = &c.unacked {
                let _ = write!(
                    line,
                    "; the {} retransmitted {} times over {} with no ACK{}",
                    side.name(),
                    st.retransmits,
                    secs(st.seconds()),
                    if st.reset { ", then an RST" } else { "" }
                );
            }
            if c.missing_bytes > 0 {
                let _ = write!(line, "; {} bytes not captured", c.missing_bytes);
            }
            for cl in &c.closes {
                let _ = write!(
                    line,
                    "; {} {} #{} (+{:.6} s) {}",
                    cl.side.name(),
                    cl.how,
                    cl.packet,
                    cl.time,
                    cl.after
                );
            }
            if c.closes.is_empty() {
                match c.quiet_when_dropped {
                    Some(q) => {
                        let _ = write!(
                            line,
                            "; still open, no packet for {} when it was explained",
                            secs(q)
                        );
                    }
                    None => line.push_str("; still open at the end of the capture"),
                }
            }
            for n in &c.not_followed {
                let _ = write!(line, "; not followed as HTTP ({n})");
            }
            wrap(&mut o, &line, "  ", 110);
        }
        o
    }
}
