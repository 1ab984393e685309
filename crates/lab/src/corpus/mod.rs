//! The conformance corpus: public HTTP/1.1 parsing and smuggling cases, re-expressed as
//! rows of linger's own table format (`crates/lab/corpus/*.toml`, described in the README
//! beside them), and the harness that sends each row through a proxy to a recording origin
//! and judges what the proxy did with it.
//!
//! The same rows run in `cargo test` (linger in process) and in `linger lab conformance`
//! (the linger binary, nginx and HAProxy side by side, written to `docs/conformance.md`).

mod judge;
mod origin;
mod report;
mod send;
mod target;

use std::fmt;

use serde::Deserialize;

pub use self::judge::{judge, Outcome, Verdict};
pub use self::origin::RecordingOrigin;
pub use self::report::{markdown, summary, Tally};
pub use self::send::{run_row, ClientEnd, Observed};
pub use self::target::{run_target, QUIET};

/// The corpus files, embedded so the binary carries them.
const FILES: &[(&str, &str)] = &[
    (
        "desync_guardian.toml",
        include_str!("../../corpus/desync_guardian.toml"),
    ),
    ("llhttp.toml", include_str!("../../corpus/llhttp.toml")),
    ("h1spec.toml", include_str!("../../corpus/h1spec.toml")),
    (
        "http_garden.toml",
        include_str!("../../corpus/http_garden.toml"),
    ),
    ("linger.toml", include_str!("../../corpus/linger.toml")),
];

/// Where a file's rows come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub name: String,
    pub license: String,
    pub revision: String,
    pub policy: String,
}

/// What a proxy must do with a row's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// A 4xx (or the row's `status`), the client connection closed, 0 bytes upstream.
    Refuse,
    /// The origin gets the row's requests and the client their 2xx answers.
    Forward,
    /// Refused, or forwarded with neither connection reused afterwards.
    RefuseOrIsolate,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Forward => "forward",
            Self::RefuseOrIsolate => "refuse or isolate",
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One case as written in a corpus file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    case: String,
    file: String,
    tier: String,
    send: String,
    fill: Option<usize>,
    expect: Expect,
    source_expect: Option<Expect>,
    status: Option<u16>,
    requests: Option<usize>,
    upstream_body: Option<String>,
    upstream_target: Option<String>,
    upstream_method: Option<String>,
    deviation: Option<String>,
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusFile {
    source: Source,
    row: Vec<RawRow>,
}

/// One row, ready to send.
#[derive(Debug, Clone)]
pub struct Row {
    /// The source corpus (`owner/repository`).
    pub source: String,
    pub case: String,
    /// Where in the source the case is.
    pub file: String,
    pub tier: String,
    /// The exact bytes a client sends.
    pub send: Vec<u8>,
    pub expect: Expect,
    /// What the source expects, where linger deviates from it (else `expect`).
    pub source_expect: Expect,
    pub status: Option<u16>,
    pub requests: usize,
    pub upstream_body: Option<Vec<u8>>,
    pub upstream_target: Option<String>,
    pub upstream_method: Option<String>,
    /// Why linger's expectation differs from the source's verdict, when it does.
    pub deviation: Option<String>,
    pub note: Option<String>,
}

impl Row {
    /// `source: case` for messages.
    pub fn label(&self) -> String {
        format!("{} [{}] {}", self.source, self.tier, self.case)
    }

    /// Whether the first request is a HEAD (its answer has no body).
    pub fn is_head(&self) -> bool {
        self.send.starts_with(b"HEAD ")
    }
}

/// Every source with its rows, in file order.
pub fn sources() -> Vec<(Source, Vec<Row>)> {
    FILES
        .iter()
        .map(|(name, text)| parse_file(name, text).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// Every row of every source.
pub fn rows() -> Vec<Row> {
    sources().into_iter().flat_map(|(_, rows)| rows).collect()
}

fn parse_file(name: &str, text: &str) -> Result<(Source, Vec<Row>), String> {
    let file: CorpusFile = toml::from_str(text).map_err(|e| format!("corpus/{name}: {e}"))?;
    let mut rows = Vec::with_capacity(file.row.len());
    for (i, r) in file.row.into_iter().enumerate() {
        let at = |field: &str, e: String| format!("corpus/{name}: row {} ({field}): {e}", i + 1);
        if r.deviation.is_some() != r.source_expect.is_some_and(|e| e != r.expect) {
            return Err(at(
                "deviation",
                "a row that deviates gives both `deviation` and a `source_expect` other than `expect`".into(),
            ));
        }
        let mut send = unescape(&r.send).map_err(|e| at("send", e))?;
        send.resize(send.len() + r.fill.unwrap_or(0), b'x');
        let upstream_body = r
            .upstream_body
            .as_deref()
            .map(unescape)
            .transpose()
            .map_err(|e| at("upstream_body", e))?;
        rows.push(Row {
            source: file.source.name.clone(),
            case: r.case,
            file: r.file,
            tier: r.tier,
            send,
            expect: r.expect,
            source_expect: r.source_expect.unwrap_or(r.expect),
            status: r.status,
            requests: r.requests.unwrap_or(1),
            upstream_body,
            upstream_target: r.upstream_target,
            upstream_method: r.upstream_method,
            deviation: r.deviation,
            note: r.note,
        });
    }
    Ok((file.source, rows))
}

/// Decodes the corpus escapes: `\r`, `\n`, `\t`, `\\` and `\xNN`.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = [bytes.next(), bytes.next()];
                let digits: Option<Vec<u8>> = hex.into_iter().collect();
                let v = digits
                    .and_then(|d| std::str::from_utf8(&d).ok().map(str::to_owned))
                    .and_then(|d| u8::from_str_radix(&d, 16).ok())
                    .ok_or("\\x must be followed by two hex digits")?;
                out.push(v);
            }
            Some(other) => return Err(format!("unknown escape \\{}", other as char)),
            None => return Err("a lone \\ at the end".into()),
        }
    }
    Ok(out)
}

/// Bytes as the corpus escapes them, for reports.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        let raw = b"GET /\xce\xb4 HTTP/1.1\r\nx:\t\\\x00\r\n\r\n";
        assert_eq!(unescape(&escape(raw)).unwrap(), raw);
        assert!(unescape("\\x4").is_err());
        assert!(unescape("\\q").is_err());
        assert!(unescape("a\\").is_err());
    }

    #[test]
    fn every_file_parses_and_names_its_cases() {
        let mut seen = std::collections::HashSet::new();
        for (source, rows) in sources() {
            assert!(!rows.is_empty(), "{} has no rows", source.name);
            assert_eq!(source.revision.len(), 40, "{}: revision", source.name);
            for r in rows {
                assert!(
                    !r.case.trim().is_empty(),
                    "{}: a row without a case",
                    r.source
                );
                assert!(
                    r.send.windows(2).any(|w| w == b"\r\n" || w == b"\n\n")
                        || r.send.contains(&b'\n'),
                    "{}: no line end",
                    r.label()
                );
                assert!(
                    seen.insert((r.source.clone(), r.file.clone(), r.case.clone())),
                    "{}: the same case twice",
                    r.label()
                );
            }
        }
    }
}
