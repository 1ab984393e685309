//! Tallies of a corpus run: per source and tier, how many rows met their expectation and
//! what the proxies did; as text for the test's summary and as `docs/conformance.md`.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{escape, Row, Verdict};

/// Counts for one source and tier.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub rows: usize,
    pub pass: usize,
    /// Outcome class → rows.
    pub outcomes: BTreeMap<&'static str, usize>,
}

fn tallies(results: &[(Row, Verdict)]) -> BTreeMap<(String, String), Tally> {
    let mut t: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for (row, v) in results {
        let e = t.entry((row.source.clone(), row.tier.clone())).or_default();
        e.rows += 1;
        e.pass += usize::from(v.pass);
        *e.outcomes.entry(v.outcome.class()).or_default() += 1;
    }
    t
}

/// One line per source and tier: rows, passes, and outcomes.
pub fn summary(results: &[(Row, Verdict)]) -> String {
    let mut out = String::new();
    for ((source, tier), t) in tallies(results) {
        let outcomes: Vec<String> = t.outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "{source:<28} {tier:<12} {:>3} rows {:>3} pass   ({})",
            t.rows,
            t.pass,
            outcomes.join(", ")
        );
    }
    let pass = results.iter().filter(|(_, v)| v.pass).count();
    let _ = writeln!(
        out,
        "{} rows, {} pass, {} fail",
        results.len(),
        pass,
        results.len() - pass
    );
    out
}

/// `docs/conformance.md`: the rows per source and tier that each target handled as
/// expected, the rows where any target did not, and the rows where linger deviates.
/// `targets` pairs each target's name (and version) with its results, in the same row
/// order.
pub fn markdown(targets: &[(String, Vec<(Row, Verdict)>)], command: &str, date: &str) -> String {
    let mut out = String::new();
    out.push_str("# Conformance: public HTTP/1.1 parsing and smuggling corpora\n\n");
    out.push_str(
        "Every row of `crates/lab/corpus/` (public cases re-expressed in linger's own format, \
         each naming its source and case) sent through each proxy to a recording origin. \
         A row passes when the proxy did what the row expects: `refuse` (a 4xx, the \
         connection closed, 0 bytes upstream), `forward` (the origin got the request as \
         sent and the client its 2xx), or `refuse or isolate` (refused, or forwarded with \
         neither the client nor the origin connection reused). `cargo test -p linger-proxy \
         --test corpus` holds linger to every row on every change.\n\n",
    );
    let _ = writeln!(out, "Generated on {date} by:\n\n```sh\n{command}\n```\n");
    let Some((_, first)) = targets.first() else {
        return out;
    };
    out.push_str("## Rows handled as the source expects\n\n");
    out.push_str(
        "Each source's own verdict: refuse what it calls invalid or severe, refuse or \
         isolate what it calls ambiguous, forward the rest.\n\n",
    );
    let by_tier = |r: &Row| (r.source.clone(), r.tier.clone(), String::new());
    table(&mut out, targets, first, by_tier, |v| v.source_pass);
    out.push_str("\n## Rows handled as linger's rows expect\n\n");
    out.push_str(
        "The same rows held to linger's expectation, which is the source's except where the \
         last section says why linger deviates.\n\n",
    );
    let by_expect = |r: &Row| (r.source.clone(), r.tier.clone(), r.expect.to_string());
    table(&mut out, targets, first, by_expect, |v| v.pass);
    out.push_str("\n## Rows some proxy did not handle as linger's rows expect\n\n");
    out.push_str(
        "Each row's bytes as sent (escaped), what it expects, and what each proxy did.\n\n",
    );
    for (i, (row, _)) in first.iter().enumerate() {
        if targets.iter().all(|(_, res)| res[i].1.pass) {
            continue;
        }
        let _ = writeln!(
            out,
            "- **{}** `{}` ({}, {}): expects {}\n  - sent: `{}`",
            row.source,
            row.case.replace('`', "'"),
            row.file,
            row.tier,
            row.expect,
            truncate(&escape(&row.send), 300).replace('`', "\\x60"),
        );
        for (name, res) in targets {
            let v = &res[i].1;
            let mark = if v.pass { "ok" } else { "**fails**" };
            let _ = writeln!(out, "  - {name}: {mark}: {}", v.outcome);
        }
    }
    out.push_str("\n## Where linger's expectation differs from the source's verdict\n\n");
    let mut any = false;
    for (row, _) in first {
        if let Some(d) = &row.deviation {
            any = true;
            let _ = writeln!(
                out,
                "- **{}** `{}` ({}): expects {}. {}",
                row.source,
                row.case.replace('`', "'"),
                row.tier,
                row.expect,
                d
            );
        }
    }
    if !any {
        out.push_str("None.\n");
    }
    out
}

type Key = (String, String, String);

/// One table: a line per group of rows, each target's count of rows that `pass`.
fn table(
    out: &mut String,
    targets: &[(String, Vec<(Row, Verdict)>)],
    first: &[(Row, Verdict)],
    key: impl Fn(&Row) -> Key,
    pass: impl Fn(&Verdict) -> bool,
) {
    let with_expect = first.iter().any(|(r, _)| !key(r).2.is_empty());
    out.push_str("| source | tier |");
    if with_expect {
        out.push_str(" expect |");
    }
    out.push_str(" rows |");
    for (name, _) in targets {
        let _ = write!(out, " {name} |");
    }
    out.push_str("\n|---|---|");
    if with_expect {
        out.push_str("---|");
    }
    out.push_str("---:|");
    for _ in targets {
        out.push_str("---:|");
    }
    out.push('\n');
    let mut groups: Vec<Key> = Vec::new();
    for (row, _) in first {
        let k = key(row);
        if !groups.contains(&k) {
            groups.push(k);
        }
    }
    for g in &groups {
        let n = first.iter().filter(|(r, _)| &key(r) == g).count();
        let _ = write!(out, "| {} | {} |", g.0, g.1.replace('|', "\\|"));
        if with_expect {
            let _ = write!(out, " {} |", g.2);
        }
        let _ = write!(out, " {n} |");
        for (_, results) in targets {
            let ok = results
                .iter()
                .filter(|(r, v)| &key(r) == g && pass(v))
                .count();
            let _ = write!(out, " {ok} |");
        }
        out.push('\n');
    }
    let _ = write!(out, "| **all** | |");
    if with_expect {
        out.push_str(" |");
    }
    let _ = write!(out, " **{}** |", first.len());
    for (_, results) in targets {
        let _ = write!(
            out,
            " **{}** |",
            results.iter().filter(|(_, v)| pass(v)).count()
        );
    }
    out.push('\n');
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}
