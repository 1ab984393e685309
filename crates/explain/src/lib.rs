//! `linger explain`: reads a packet capture and names the connection-lifecycle races in it
//! (R1 to R12 of docs/races.md), with the evidence (packet numbers, times, bytes) and the fix.
//!
//! The layers, each in its own module: [`capture`] reads pcap and pcapng files and decodes
//! link, IP and TCP headers; [`tcp`] rebuilds each connection's byte streams; [`http`] follows
//! the HTTP/1.x messages on them; [`hops`] lines up the hops of a proxy; [`races`] names the
//! races; [`report`] prints them as text or JSON.

pub mod capture;
pub mod hops;
pub mod http;
pub mod races;
pub mod report;
pub mod tcp;

use std::io::Read;
use std::path::Path;

pub use capture::CaptureError;
pub use races::Finding;
pub use report::Report;

/// Which packets to read.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only TCP segments from or to one of these ports (all when empty).
    pub ports: Vec<u16>,
    /// Only packets at or after this many seconds from the first packet.
    pub since: Option<f64>,
    /// Only packets at or before this many seconds from the first packet.
    pub until: Option<f64>,
    /// Connections without a finding to list in the report ([`KEEP_CLEAN`] when `None`).
    pub keep_clean: Option<usize>,
}

/// How far the reading has got, for a progress line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub bytes: u64,
    pub packets: u64,
    /// Connections seen so far.
    pub connections: usize,
}

/// Reads the capture at `path` and explains it.
pub fn explain_file(
    path: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, CaptureError> {
    let file = std::fs::File::open(path).map_err(CaptureError::Io)?;
    let reader = std::io::BufReader::with_capacity(1 << 16, file);
    explain(reader, &path.display().to_string(), opts, progress)
}

/// How long (capture time) an ended connection, closed by both sides or reset, is held after
/// its last packet before it is explained and dropped. Its findings read the other hop of
/// each of its requests through a proxy, and what that hop did next (an upstream request
/// kept going after the client left, R7, counts from one second): the copy of a request
/// follows its original within [`hops`]' two seconds, so two minutes hold both sides with
/// room for slow upstreams and for packets written to the capture out of order.
pub const LINGER: f64 = 120.0;
/// How long (capture time) an open connection may go without a packet before it is
/// explained and dropped as it is. Longer than the idle timeouts whose races the report
/// names (load balancers keep 60 s to 350 s, NATs forget flows after 350 s, Google's load
/// balancer keeps 600 s): a connection reused after such an idle gap is still held.
pub const IDLE_WINDOW: f64 = 900.0;
/// How often (capture time) held connections are looked over for those to drop.
const SWEEP_EVERY: f64 = 30.0;
/// Connections without a finding listed in the report, the first ones by id; past this
/// they are only counted (`connections_left_out`). Connections with a finding are all listed.
pub const KEEP_CLEAN: usize = 10_000;

/// What is kept of the connections already explained and dropped.
struct Explained {
    t0: f64,
    keep_clean: usize,
    findings: Vec<Finding>,
    /// Connections with a finding.
    flagged: Vec<report::ConnSummary>,
    /// The first connections by id without one, at most `keep_clean`.
    clean: std::collections::BTreeMap<usize, report::ConnSummary>,
    left_out: usize,
    /// Each hop by its server, with the first connection id that reached it.
    hops: std::collections::HashMap<std::net::SocketAddr, (usize, report::HopSummary)>,
    most_held: usize,
}

impl Explained {
    /// Explains the held connections that `done` picks (the others are their scope, for
    /// the other hops of their requests), keeps their summaries and findings, and drops
    /// them from `tracker`.
    /// `now`: how far the capture has been read, `None` at its end.
    fn settle(
        &mut self,
        tracker: &mut tcp::Tracker,
        now: Option<f64>,
        mut done: impl FnMut(&tcp::Conn) -> bool,
    ) {
        self.most_held = self.most_held.max(tracker.conns.len());
        let ids: Vec<usize> = tracker
            .conns
            .iter_mut()
            .filter(|c| done(c))
            .map(|c| {
                c.finish();
                c.id
            })
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut lined = hops::line_up(&tracker.conns);
        // What the connections dropped before measured of each hop counts too.
        for h in &mut lined.hops {
            if let Some((_, before)) = self.hops.get(&h.server) {
                h.idle = {
                    let mut idle = before.idle.clone();
                    idle.merge(&h.idle);
                    idle
                };
                if let (Some(s), Some(a)) = (h.idle.server_close, h.idle.longest_attempt) {
                    h.wrong_way = a >= s;
                }
                h.fed_by = h.fed_by.or(before.client_is_proxy_of);
                h.feeds = h.feeds.or(before.server_forwards_to);
            }
        }
        let found = races::detect(
            &races::Scope {
                conns: &tracker.conns,
                hops: &lined,
                t0: self.t0,
                now,
            },
            &ids,
        );
        for h in &lined.hops {
            let gone: Vec<usize> = h
                .conns
                .iter()
                .copied()
                .filter(|id| ids.binary_search(id).is_ok())
                .collect();
            if let Some(&first) = gone.first() {
                let entry = self
                    .hops
                    .entry(h.server)
                    .or_insert_with(|| (first, report::HopSummary::new(h.server)));
                entry.0 = entry.0.min(first);
                entry.1.add(h, &tracker.conns, &gone);
            }
        }
        let gone = tracker.take(|c| ids.binary_search(&c.id).is_ok());
        for c in &gone {
            let mut summary = report::summarize(c, self.t0);
            if summary.closes.is_empty() {
                summary.quiet_when_dropped = now.map(|now| now - c.last.time);
            }
            if found.iter().any(|f| f.conn == c.id) {
                self.flagged.push(summary);
            } else {
                self.clean.insert(c.id, summary);
                if self.clean.len() > self.keep_clean {
                    self.clean.pop_last();
                    self.left_out += 1;
                }
            }
        }
        self.findings.extend(found);
    }
}

/// Reads a capture from `input` and explains it; `progress` is called every 16 MiB.
///
/// Memory stays bounded however long the capture: connections are explained and dropped
/// as the capture goes on, [`LINGER`] after they ended or [`IDLE_WINDOW`] after their last
/// packet, and the report keeps every connection with a finding but at most [`KEEP_CLEAN`]
/// without one.
pub fn explain(
    input: impl Read + Send + 'static,
    name: &str,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, CaptureError> {
    const PROGRESS_EVERY: u64 = 16 << 20;
    let mut reader = capture::Reader::new(input)?;
    let mut tracker = tcp::Tracker::default();
    let mut t0: Option<f64> = None;
    let mut t_last = 0.0f64;
    let mut segments = 0u64;
    let mut next_progress = PROGRESS_EVERY;
    let mut next_sweep = f64::NEG_INFINITY;
    let mut done = Explained {
        t0: 0.0,
        keep_clean: opts.keep_clean.unwrap_or(KEEP_CLEAN),
        findings: Vec::new(),
        flagged: Vec::new(),
        clean: Default::default(),
        left_out: 0,
        hops: Default::default(),
        most_held: 0,
    };
    while let Some(seg) = reader.next_segment()? {
        let start = *t0.get_or_insert(seg.time);
        done.t0 = start;
        t_last = t_last.max(seg.time);
        if reader.offset() >= next_progress {
            next_progress += PROGRESS_EVERY;
            progress(Progress {
                bytes: reader.offset(),
                packets: reader.packets(),
                connections: tracker.seen(),
            });
        }
        let at = seg.time - start;
        if opts.since.is_some_and(|s| at < s) || opts.until.is_some_and(|u| at > u) {
            continue;
        }
        if !opts.ports.is_empty()
            && !opts
                .ports
                .iter()
                .any(|&p| p == seg.src.port() || p == seg.dst.port())
        {
            continue;
        }
        segments += 1;
        tracker.segment(&seg);
        if t_last >= next_sweep {
            next_sweep = t_last + SWEEP_EVERY;
            let now = t_last;
            done.settle(&mut tracker, Some(now), |c| {
                let quiet = now - c.last.time;
                (c.finished() && quiet > LINGER) || quiet > IDLE_WINDOW
            });
        }
    }
    done.settle(&mut tracker, None, |_| true);
    let mut hops: Vec<(usize, report::HopSummary)> = done.hops.into_values().collect();
    hops.sort_by_key(|(first, _)| *first);
    let mut connections = done.flagged;
    connections.extend(done.clean.into_values());
    connections.sort_by_key(|c| c.id);
    let mut findings = done.findings;
    findings.sort_by_key(|f| f.conn);
    Ok(Report {
        capture: name.to_string(),
        packets: reader.packets(),
        tcp_segments: segments,
        skipped: reader.skipped.clone(),
        start: t0.unwrap_or(0.0),
        duration: t_last - t0.unwrap_or(0.0),
        hops: hops
            .into_iter()
            .map(|(_, mut h)| {
                h.conclude();
                h
            })
            .collect(),
        findings,
        connections_seen: tracker.seen(),
        connections,
        connections_left_out: done.left_out,
        most_held: done.most_held,
    })
}
