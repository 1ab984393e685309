//! Every row of the conformance corpus (`crates/lab/corpus/`: public HTTP/1.1 parsing and
//! smuggling cases, re-expressed) through linger to a recording origin. Each row must get
//! what it expects: refused with a 4xx, the connection closed and 0 bytes upstream;
//! forwarded as sent; or, for the ambiguous ones, refused or forwarded with neither
//! connection reused. `--nocapture` prints the tally per source and tier.

mod support;

use std::time::Duration;

use linger_lab::corpus::{self, judge, run_row, RecordingOrigin, Row, Verdict};
use support::*;

/// Rows run on this many linger/origin pairs at once.
const WORKERS: usize = 8;
/// How long a client waits for a byte before it decides the proxy has nothing more to say.
const QUIET: Duration = Duration::from_millis(400);

async fn run_share(rows: Vec<(usize, Row)>) -> Vec<(usize, Row, Verdict)> {
    let origin = RecordingOrigin::start().await.expect("start the origin");
    let linger = InProcess::start(&[origin.addr], |_| {}).expect("start linger");
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows {
        let obs = tokio::time::timeout(OUTER, run_row(linger.addr, &origin, &row, QUIET))
            .await
            .unwrap_or_else(|_| panic!("{}: no outcome within {OUTER:?}", row.label()))
            .expect("connect to linger");
        let v = judge(&row, &obs);
        out.push((i, row, v));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_row_gets_what_it_expects() {
    trace_init();
    let rows = corpus::rows();
    let n = rows.len();
    let mut shares: Vec<Vec<(usize, Row)>> = vec![Vec::new(); WORKERS];
    for (i, row) in rows.into_iter().enumerate() {
        shares[i % WORKERS].push((i, row));
    }
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|s| tokio::spawn(run_share(s)))
        .collect();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.extend(t.await.expect("a corpus worker panicked"));
    }
    results.sort_by_key(|(i, _, _)| *i);
    let results: Vec<(Row, Verdict)> = results.into_iter().map(|(_, r, v)| (r, v)).collect();
    println!("{}", corpus::summary(&results));
    let failures: Vec<String> = results
        .iter()
        .filter(|(_, v)| !v.pass)
        .map(|(r, v)| {
            format!(
                "{}\n    sent: {}\n    {}",
                r.label(),
                corpus::escape(&r.send[..r.send.len().min(200)]),
                v.why.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The corpus is whole: every source contributed its rows.
    for source in [
        "aws/http-desync-guardian",
        "nodejs/llhttp",
        "uNetworking/h1spec",
        "narfindustries/http-garden",
        "linger",
    ] {
        assert!(
            results.iter().any(|(r, _)| r.source == source),
            "no rows from {source}"
        );
    }
}
