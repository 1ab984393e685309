//! The framing guard (R12): follows the request stream of a downstream connection at the IO
//! seam and stops it at the first ambiguous framing, before hyper parses the request.
//!
//! hyper accepts some framings a proxy must refuse: it drops `Content-Length` when
//! `Transfer-Encoding` is also present, and merges duplicate equal `Content-Length`s. A
//! proxy that forwards such a request re-frames it, and the two hops may disagree about
//! where it ends (request smuggling). The guard refuses, before any byte of the request
//! reaches hyper (and so any upstream):
//!
//! * both `Content-Length` and `Transfer-Encoding`;
//! * more than one `Content-Length` (even equal), or one that is not a plain number;
//! * a `Transfer-Encoding` whose last coding is not `chunked`, or `chunked` twice;
//! * `Transfer-Encoding` on HTTP/1.0;
//! * an invalid chunk size line, chunk data not followed by CRLF, obs-fold in trailers.
//!
//! Heads that `httparse` itself rejects (obs-fold, bad tokens) and heads over the size or
//! count limits are left to hyper, which answers them with 400 or 431. After a request
//! that may switch protocols (`Upgrade`, `CONNECT`), the guard steps aside.

use std::fmt;

/// What the guard refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingViolation {
    ContentLengthAndTransferEncoding,
    DuplicateContentLength,
    InvalidContentLength,
    TransferEncodingNotChunked,
    TransferEncodingOnHttp10,
    InvalidChunkSize,
    MissingChunkCrlf,
    ObsFoldInTrailer,
}

impl FramingViolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentLengthAndTransferEncoding => "both Content-Length and Transfer-Encoding",
            Self::DuplicateContentLength => "more than one Content-Length",
            Self::InvalidContentLength => "invalid Content-Length",
            Self::TransferEncodingNotChunked => {
                "Transfer-Encoding whose last coding is not chunked"
            }
            Self::TransferEncodingOnHttp10 => "Transfer-Encoding on HTTP/1.0",
            Self::InvalidChunkSize => "invalid chunk size",
            Self::MissingChunkCrlf => "chunk data not followed by CRLF",
            Self::ObsFoldInTrailer => "obs-fold in a trailer",
        }
    }
}

impl fmt::Display for FramingViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for FramingViolation {}

/// Longest chunk-size line accepted (size plus extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Largest number of header fields the guard parses; more is left to hyper's 431.
const MAX_HEADERS: usize = 256;

#[derive(Debug)]
enum State {
    /// Accumulating a request head.
    Head,
    /// `remaining` bytes of a Content-Length body.
    Body {
        remaining: u64,
    },
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data, then its CRLF.
    ChunkData {
        remaining: u64,
    },
    ChunkCrlf {
        seen: u8,
    },
    /// Trailer lines until an empty line.
    Trailers,
    /// The guard stepped aside (upgrade, CONNECT, or a head hyper will refuse itself).
    Passthrough,
}

/// Follows one connection's request stream.
#[derive(Debug)]
pub struct FramingGuard {
    state: State,
    /// The current head or line, as far as it has arrived.
    pending: Vec<u8>,
    max_head: usize,
}

// === impl FramingGuard ===

impl FramingGuard {
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            pending: Vec::new(),
            max_head,
        }
    }

    /// Feeds bytes as they are read from the downstream socket.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), FramingViolation> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Passthrough => return Ok(()),
                State::Head => {
                    let start = self.pending.len().saturating_sub(3);
                    self.pending.extend_from_slice(bytes);
                    let Some(end) =
                        find(&self.pending[start..], b"\r\n\r\n").map(|p| start + p + 4)
                    else {
                        if self.pending.len() > self.max_head {
                            // hyper answers 431; nothing more to follow.
                            self.state = State::Passthrough;
                        }
                        return Ok(());
                    };
                    // Bytes after the head belong to the body or the next request.
                    let consumed_from_input = bytes.len() - (self.pending.len() - end);
                    bytes = &bytes[consumed_from_input..];
                    self.pending.truncate(end);
                    self.state = self.check_head()?;
                    self.pending.clear();
                }
                State::Body { remaining } => {
                    let n = (*remaining).min(bytes.len() as u64);
                    *remaining -= n;
                    bytes = &bytes[n as usize..];
                    if *remaining == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize | State::Trailers => {
                    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                        self.pending.extend_from_slice(bytes);
                        if self.pending.len() > MAX_CHUNK_LINE {
                            return Err(FramingViolation::InvalidChunkSize);
                        }
                        return Ok(());
                    };
                    self.pending.extend_from_slice(&bytes[..=nl]);
                    bytes = &bytes[nl + 1..];
                    let line = std::mem::take(&mut self.pending);
                    self.state = if matches!(self.state, State::ChunkSize) {
                        match parse_chunk_size(&line)? {
                            0 => State::Trailers,
                            n => State::ChunkData { remaining: n },
                        }
                    } else if line == b"\r\n" {
                        State::Head
                    } else if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                        return Err(FramingViolation::ObsFoldInTrailer);
                    } else {
                        State::Trailers
                    };
                }
                State::ChunkData { remaining } => {
                    let n = (*remaining).min(bytes.len() as u64);
                    *remaining -= n;
                    bytes = &bytes[n as usize..];
                    if *remaining == 0 {
                        self.state = State::ChunkCrlf { seen: 0 };
                    }
                }
                State::ChunkCrlf { seen } => {
                    let want = if *seen == 0 { b'\r' } else { b'\n' };
                    if bytes[0] != want {
                        return Err(FramingViolation::MissingChunkCrlf);
                    }
                    bytes = &bytes[1..];
                    if *seen == 0 {
                        *seen = 1;
                    } else {
                        self.state = State::ChunkSize;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks a complete head and says what follows it.
    fn check_head(&self) -> Result<State, FramingViolation> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.pending) {
            Ok(httparse::Status::Complete(_)) => {}
            // hyper refuses these heads itself (400 or 431).
            _ => return Ok(State::Passthrough),
        }
        let http10 = req.version == Some(0);
        let mut content_length: Option<u64> = None;
        let mut cl_count = 0;
        let mut te: Option<Vec<u8>> = None;
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl_count += 1;
                let v = trim(h.value);
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Err(FramingViolation::InvalidContentLength);
                }
                content_length = Some(
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or(FramingViolation::InvalidContentLength)?,
                );
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let t = te.get_or_insert_with(Vec::new);
                if !t.is_empty() {
                    t.push(b',');
                }
                t.extend_from_slice(h.value);
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if cl_count > 1 {
            return Err(FramingViolation::DuplicateContentLength);
        }
        let method_switches = req.method == Some("CONNECT") || upgrade;
        if let Some(te) = te {
            if content_length.is_some() {
                return Err(FramingViolation::ContentLengthAndTransferEncoding);
            }
            if http10 {
                return Err(FramingViolation::TransferEncodingOnHttp10);
            }
            let codings: Vec<&[u8]> = te.split(|&b| b == b',').map(trim).collect();
            let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
            let last_chunked = codings.last().is_some_and(|c| chunked(c));
            if !last_chunked || codings.iter().filter(|c| chunked(c)).count() > 1 {
                return Err(FramingViolation::TransferEncodingNotChunked);
            }
            return Ok(if method_switches {
                State::Passthrough
            } else {
                State::ChunkSize
            });
        }
        if method_switches {
            return Ok(State::Passthrough);
        }
        Ok(match content_length {
            Some(n) if n > 0 => State::Body { remaining: n },
            _ => State::Head,
        })
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `HEX[;extensions]\r\n` → the size.
fn parse_chunk_size(line: &[u8]) -> Result<u64, FramingViolation> {
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or(FramingViolation::InvalidChunkSize)?;
    let size = match line.iter().position(|&b| b == b';') {
        Some(p) => &line[..p],
        None => line,
    };
    // Whitespace before the extensions is tolerated (RFC 9112 §7.1.1 BWS).
    let size = trim(size);
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(FramingViolation::InvalidChunkSize);
    }
    u64::from_str_radix(
        std::str::from_utf8(size).map_err(|_| FramingViolation::InvalidChunkSize)?,
        16,
    )
    .map_err(|_| FramingViolation::InvalidChunkSize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Result<(), FramingViolation> {
        FramingGuard::new(64 * 1024).feed(input)
    }

    /// Feeds the input one byte at a time: the guard must not depend on read boundaries.
    fn run_bytewise(input: &[u8]) -> Result<(), FramingViolation> {
        let mut g = FramingGuard::new(64 * 1024);
        for b in input {
            g.feed(std::slice::from_ref(b))?;
        }
        Ok(())
    }

    fn both(input: &[u8]) -> Result<(), FramingViolation> {
        let a = run(input);
        assert_eq!(
            a,
            run_bytewise(input),
            "read boundaries changed the verdict"
        );
        a
    }

    #[test]
    fn accepts_plain_pipelined_requests() {
        assert_eq!(
            both(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nPOST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabcGET /x HTTP/1.1\r\nhost: a\r\n\r\n"),
            Ok(())
        );
    }

    #[test]
    fn accepts_chunked_bodies_with_extensions_and_trailers() {
        assert_eq!(
            both(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-sum: 1\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Ok(())
        );
    }

    #[test]
    fn refuses_content_length_with_transfer_encoding() {
        assert_eq!(
            both(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(FramingViolation::ContentLengthAndTransferEncoding)
        );
    }

    #[test]
    fn refuses_duplicate_and_invalid_content_length() {
        assert_eq!(
            both(
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc"
            ),
            Err(FramingViolation::DuplicateContentLength)
        );
        for bad in ["-1", "1,1", "abc", "+5", ""] {
            let req = format!("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: {bad}\r\n\r\n");
            assert_eq!(
                both(req.as_bytes()),
                Err(FramingViolation::InvalidContentLength),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_transfer_encoding_not_ending_in_chunked() {
        for te in ["gzip", "chunked, gzip", "chunked, chunked"] {
            let req = format!("POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: {te}\r\n\r\n");
            assert_eq!(
                both(req.as_bytes()),
                Err(FramingViolation::TransferEncodingNotChunked),
                "{te}"
            );
        }
        assert_eq!(
            both(b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(FramingViolation::TransferEncodingOnHttp10)
        );
    }

    #[test]
    fn refuses_bad_chunk_sizes_and_missing_crlf() {
        let head = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for body in [
            &b"zz\r\n"[..],
            b"5\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
            b"\r\n",
        ] {
            let mut req = head.clone();
            req.extend_from_slice(body);
            assert_eq!(
                both(&req),
                Err(FramingViolation::InvalidChunkSize),
                "{body:?}"
            );
        }
        let mut req = head.clone();
        req.extend_from_slice(b"2\r\nhiX");
        assert_eq!(both(&req), Err(FramingViolation::MissingChunkCrlf));
    }

    #[test]
    fn steps_aside_after_an_upgrade_request() {
        assert_eq!(
            both(b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\x81\x05hello anything"),
            Ok(())
        );
    }
}
