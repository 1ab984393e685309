//! The lab's report: a table per scenario and target, who lost requests, the settings each
//! target ran with, and the JSON form (one record per scenario and target).

use std::fmt::Write as _;

use crate::runner::{Record, Report, Status};
use crate::scenarios::{self, Loss};
use crate::targets::{self, TargetKind, Tuning};

fn timing_cell(r: &Record) -> String {
    match &r.measured.timing {
        Some(t) => match (t.median_ms(), t.max_ms()) {
            (Some(p50), Some(max)) => format!("{} / {}", ms(p50), ms(max)),
            _ => "never".into(),
        },
        None => "-".into(),
    }
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2}s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v:.1}ms")
    }
}

fn notes(r: &Record) -> String {
    let m = &r.measured;
    let mut n: Vec<String> = Vec::new();
    match &r.status {
        Status::Ran => {}
        Status::NotInstalled(w) => return format!("not installed: {w}"),
        Status::Unavailable(w) => return format!("unavailable: {w}"),
        Status::Failed(w) => return format!("failed: {w}"),
    }
    if let Some(t) = &m.timing {
        if t.missed > 0 {
            n.push(format!("{} not within {}", t.missed, ms(t.bound_ms as f64)));
        }
    }
    if let Some(v) = m.looked_complete {
        n.push(format!("{v} cut responses looked complete"));
    }
    if let Some(v) = m.not_sent.filter(|&v| v > 0) {
        n.push(format!("{v} not sent (listener closed)"));
    }
    if let Some(v) = m.after_leave_bytes.filter(|&v| v > 0) {
        n.push(format!("{v} bytes written after the client left"));
    }
    if m.connect_failed > 0 {
        n.push(format!("{} connect failed", m.connect_failed));
    }
    n.join("; ")
}

/// Whether `r` shows the loss (or leak, or late notice) its scenario is about.
pub fn lost(r: &Record) -> bool {
    let loss = scenarios::find(r.scenario).map_or(Loss::Requests, |s| s.loss);
    r.ran() && r.measured.lost(loss, r.duplicates)
}

/// The table `linger lab run` prints.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ =
        writeln!(
        out,
        "{:<28} {:<8} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>4} {:>15} {:>4}  notes",
        "scenario", "target", "sent", "ok", "fail", "5xx", "reset", "eof", "cut", "t/o", "dup",
        "time p50 / max", "open"
    );
    let mut last = "";
    for r in &report.records {
        let label = if r.scenario == last {
            String::new()
        } else {
            format!("{} {}", r.scenario, r.name)
        };
        last = r.scenario;
        let m = &r.measured;
        if !r.ran() {
            let _ = writeln!(
                out,
                "{label:<28} {:<8} {:>5}  {}",
                r.target.name(),
                "-",
                notes(r)
            );
            continue;
        }
        let _ = writeln!(
            out,
            "{label:<28} {:<8} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>4} {:>15} {:>4}  {}",
            r.target.name(),
            m.sent,
            m.ok,
            r.failures,
            m.server_error,
            m.reset,
            m.eof,
            m.truncated,
            m.timeout,
            r.duplicates,
            timing_cell(r),
            m.streams_open.map_or("-".into(), |v| v.to_string()),
            notes(r)
        );
    }
    out.push('\n');
    out.push_str(&summary(report));
    out.push('\n');
    out.push_str(&settings(report));
    out
}

/// Per scenario: which targets lost requests (or leaked, or were late).
pub fn summary(report: &Report) -> String {
    let mut out = String::from("Who lost requests (or leaked streams, or noticed too late):\n");
    let mut seen: Vec<&str> = Vec::new();
    for r in &report.records {
        if seen.contains(&r.scenario) {
            continue;
        }
        seen.push(r.scenario);
        let rows: Vec<&Record> = report
            .records
            .iter()
            .filter(|x| x.scenario == r.scenario)
            .collect();
        let losers: Vec<&str> = rows
            .iter()
            .filter(|x| lost(x))
            .map(|x| x.target.name())
            .collect();
        let clean: Vec<&str> = rows
            .iter()
            .filter(|x| x.ran() && !lost(x))
            .map(|x| x.target.name())
            .collect();
        let _ = writeln!(
            out,
            "  {:<4} lost: {:<30} clean: {}",
            r.scenario,
            if losers.is_empty() {
                "none".to_string()
            } else {
                losers.join(", ")
            },
            if clean.is_empty() {
                "none".to_string()
            } else {
                clean.join(", ")
            }
        );
    }
    out
}

/// The settings each target ran with: its base settings once, and per scenario the
/// timeouts it scaled.
pub fn settings(report: &Report) -> String {
    let mut out = String::from("Settings (each target's defaults unless listed):\n");
    for &t in &report.targets {
        let _ = writeln!(
            out,
            "  {:<8} {}",
            t.name(),
            targets::settings(t, Tuning::default()).join("; ")
        );
    }
    let mut seen: Vec<&str> = Vec::new();
    for r in &report.records {
        if seen.contains(&r.scenario) {
            continue;
        }
        seen.push(r.scenario);
        let Some(sc) = scenarios::find(r.scenario) else {
            continue;
        };
        if sc.tuning == Tuning::default() {
            continue;
        }
        let mut scaled = Vec::new();
        for &t in &report.targets {
            if t == TargetKind::Direct {
                continue;
            }
            let base = targets::settings(t, Tuning::default());
            for s in targets::settings(t, sc.tuning) {
                if !base.contains(&s) {
                    scaled.push(format!("{} {s}", t.name()));
                }
            }
        }
        if !scaled.is_empty() {
            let _ = writeln!(out, "  {} scales: {}", sc.id, scaled.join("; "));
        }
    }
    let _ = writeln!(
        out,
        "Seed {} (replay with --seed {}); each record's schedule fingerprint is in --json.",
        report.seed, report.seed
    );
    out
}

/// The JSON form.
pub fn to_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("the report serializes")
}
