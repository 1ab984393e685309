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
}

/// How far the reading has got, for a progress line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub bytes: u64,
    pub packets: u64,
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

/// Reads a capture from `input` and explains it; `progress` is called every 16 MiB.
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
    while let Some(seg) = reader.next_segment()? {
        let start = *t0.get_or_insert(seg.time);
        t_last = t_last.max(seg.time);
        if reader.offset() >= next_progress {
            next_progress += PROGRESS_EVERY;
            progress(Progress {
                bytes: reader.offset(),
                packets: reader.packets(),
                connections: tracker.conns.len(),
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
    }
    tracker.finish();
    let t0 = t0.unwrap_or(0.0);
    let hops = hops::line_up(&tracker.conns);
    let findings = races::detect(&races::Scope {
        conns: &tracker.conns,
        hops: &hops,
        t0,
    });
    Ok(Report {
        capture: name.to_string(),
        packets: reader.packets(),
        tcp_segments: segments,
        skipped: reader.skipped.clone(),
        start: t0,
        duration: t_last - t0,
        hops: report::hop_summaries(&hops),
        findings,
        connections: tracker
            .conns
            .iter()
            .map(|c| report::summarize(c, t0))
            .collect(),
    })
}
