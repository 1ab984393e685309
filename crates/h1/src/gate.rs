//! The request gate (R12): follows the request stream of a downstream connection at the IO
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
//! * an invalid chunk line: a size that is not hex, whitespace after the size without an
//!   extension, an extension without a name, an unterminated quoted value; chunk data not
//!   followed by CRLF, obs-fold in trailers;
//! * a request target that is not in the form its method allows (RFC 9112 §3.2:
//!   origin-form, absolute-form with `http` or `https`, authority-form only for `CONNECT`,
//!   `*` only for `OPTIONS`), or that holds a byte outside visible ASCII or a `#fragment`;
//! * a header name that CGI and WSGI servers fold into a framing header (`Content_Length`,
//!   `Transfer---Encoding`: the same letters with other separators).
//!
//! A request line whose version is `HTTP/1.2` to `HTTP/1.9` is served as HTTP/1.1 (RFC
//! 9110 §2.5: a higher minor version is answered by the highest one supported): the guard
//! rewrites the digit before hyper parses the line, and withholds a request line that
//! arrives in pieces until its end, so that the digit is never handed over unseen.
//!
//! Heads that `httparse` itself rejects (obs-fold, bad tokens) and heads over the size or
//! count limits are left to hyper, which answers them with 400 or 431. After a request
//! that may switch protocols (`Upgrade`, `CONNECT`), the guard steps aside.

use std::fmt;

use crate::body::{parse_length, BodyDecoder, BodyError, Framing};

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
    InvalidTarget,
    FramingHeaderLookalike,
    BareLineEnd,
    TrailersTooLarge,
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
            Self::InvalidTarget => "request target not in a form its method allows",
            Self::BareLineEnd => "a line in the request head not ended by CRLF",
            Self::TrailersTooLarge => "trailers over the limit",
            Self::FramingHeaderLookalike => {
                "header name that folds into Content-Length or Transfer-Encoding"
            }
        }
    }
}

impl fmt::Display for FramingViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for FramingViolation {}

impl From<BodyError> for FramingViolation {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::InvalidChunkLine | BodyError::Truncated => Self::InvalidChunkSize,
            BodyError::MissingChunkCrlf => Self::MissingChunkCrlf,
            BodyError::ObsFoldInTrailer => Self::ObsFoldInTrailer,
            BodyError::TrailersTooLarge => Self::TrailersTooLarge,
        }
    }
}

/// Largest number of header fields the guard parses; more is left to hyper's 431.
const MAX_HEADERS: usize = 256;

#[derive(Debug)]
enum State {
    /// Accumulating a request head.
    Head,
    /// Following a request body.
    Body(BodyDecoder),
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
    /// Bytes of a request line that has not ended yet, read but not handed to the reader.
    held: Vec<u8>,
}

/// What the reader may hand on after [`FramingGuard::feed`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Bytes held back by earlier reads, now released: they go before this read's bytes.
    pub release: Option<Vec<u8>>,
    /// How many bytes at the end of this read are held back (a request line still
    /// arriving).
    pub hold: usize,
}

// === impl FramingGuard ===

impl FramingGuard {
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            pending: Vec::new(),
            max_head,
            held: Vec::new(),
        }
    }

    /// Bytes held back, handed over at the end of the stream.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Feeds bytes as they are read from the downstream socket. It may rewrite a request
    /// line's version in `input`, and says which bytes the reader hands on now.
    pub fn feed(&mut self, input: &mut [u8]) -> Result<Fed, FramingViolation> {
        let mut fed = Fed::default();
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                State::Passthrough => break,
                State::Head => {
                    let old_len = self.pending.len();
                    let line_was_done = request_line_end(&self.pending).is_some();
                    self.pending.extend_from_slice(&input[i..]);
                    // Empty lines before a request line are not a head (RFC 9112 §2.2).
                    let line_start = self
                        .pending
                        .iter()
                        .position(|&b| b != b'\r' && b != b'\n')
                        .unwrap_or(self.pending.len());
                    let start = old_len.saturating_sub(3).max(line_start);
                    let end = find_head_end(&self.pending[start..]).map(|p| start + p + 4);
                    let head_len = end.unwrap_or(self.pending.len());
                    // Every line of a head ends in CRLF: a bare LF or CR is a line end some
                    // parsers see and others do not.
                    // (Only as far as the size limit, past which hyper answers 431.)
                    let checked = head_len.min(self.max_head + 1);
                    if bare_line_end(&self.pending[..checked], line_start, old_len) {
                        return Err(FramingViolation::BareLineEnd);
                    }
                    if !line_was_done {
                        // A request line is looked for within the size limit only.
                        let Some(line_end) = request_line_end(&self.pending[..checked]) else {
                            if head_len > self.max_head {
                                // hyper answers 431; nothing more to follow.
                                self.state = State::Passthrough;
                                if !self.held.is_empty() {
                                    fed.release = Some(std::mem::take(&mut self.held));
                                }
                                return Ok(fed);
                            }
                            self.held.extend_from_slice(&input[i..]);
                            fed.hold = input.len() - i;
                            return Ok(fed);
                        };
                        if let Some(d) = newer_minor_version(&self.pending[..=line_end]) {
                            self.pending[d] = b'1';
                            if d < old_len {
                                self.held[d] = b'1';
                            } else {
                                input[i + d - old_len] = b'1';
                            }
                        }
                        if !self.held.is_empty() {
                            fed.release = Some(std::mem::take(&mut self.held));
                        }
                    }
                    if head_len > self.max_head {
                        // hyper answers 431; nothing more to follow.
                        self.state = State::Passthrough;
                        return Ok(fed);
                    }
                    let Some(end) = end else {
                        return Ok(fed);
                    };
                    // Bytes after the head belong to the body or the next request.
                    i = input.len() - (self.pending.len() - end);
                    self.pending.truncate(end);
                    self.state = self.check_head()?;
                    self.pending.clear();
                }
                State::Body(body) => {
                    let step = body.decode(&input[i..]).map_err(FramingViolation::from)?;
                    i += step.consumed;
                    if body.is_done() {
                        self.state = State::Head;
                    }
                }
            }
        }
        Ok(fed)
    }

    /// Checks a complete head and says what follows it.
    fn check_head(&self) -> Result<State, FramingViolation> {
        let c = check_head(&self.pending)?;
        Ok(match c {
            // hyper refuses these heads itself (400 or 431).
            Checked { parsed: false, .. } | Checked { switches: true, .. } => State::Passthrough,
            Checked {
                framing: Framing::Empty | Framing::Length(0),
                ..
            } => State::Head,
            Checked { framing, .. } => State::Body(BodyDecoder::new(framing)),
        })
    }
}

/// What a complete request head says of what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// `httparse` read the head (within [`MAX_HEADERS`] fields); the other fields mean
    /// nothing when it did not.
    pub parsed: bool,
    /// How the request body is framed.
    pub framing: Framing,
    /// The request may switch protocols (`Upgrade`, `CONNECT`).
    pub switches: bool,
}

/// Checks a complete request head (from its request line to its empty line) against the
/// rules above, and says how its body is framed.
pub fn check_head(head: &[u8]) -> Result<Checked, FramingViolation> {
    // Uninitialised slots: checking a head costs no zeroing of the field table.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(_)) => check_parsed(&req),
        _ => Ok(Checked {
            parsed: false,
            framing: Framing::Empty,
            switches: false,
        }),
    }
}

/// [`check_head`]'s rules on a head the caller parsed completely itself (a server that
/// forwards the request parses it once).
pub fn check_parsed(req: &httparse::Request<'_, '_>) -> Result<Checked, FramingViolation> {
    check_target(req.method.unwrap_or(""), req.path.unwrap_or(""))?;
    let http10 = req.version == Some(0);
    let mut content_length: Option<u64> = None;
    let mut cl_count = 0;
    let mut te: Option<Vec<u8>> = None;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if folds_into_framing_header(h.name) {
            return Err(FramingViolation::FramingHeaderLookalike);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            cl_count += 1;
            content_length =
                Some(parse_length(h.value).ok_or(FramingViolation::InvalidContentLength)?);
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
    let switches = req.method == Some("CONNECT") || upgrade;
    let framing = if let Some(te) = te {
        if content_length.is_some() {
            return Err(FramingViolation::ContentLengthAndTransferEncoding);
        }
        if http10 {
            return Err(FramingViolation::TransferEncodingOnHttp10);
        }
        let codings: Vec<&[u8]> = te.split(|&b| b == b',').map(<[u8]>::trim_ascii).collect();
        let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
        let last_chunked = codings.last().is_some_and(|c| chunked(c));
        if !last_chunked || codings.iter().filter(|c| chunked(c)).count() > 1 {
            return Err(FramingViolation::TransferEncodingNotChunked);
        }
        Framing::Chunked
    } else {
        match content_length {
            Some(n) => Framing::Length(n),
            None => Framing::Empty,
        }
    };
    Ok(Checked {
        parsed: true,
        framing,
        switches,
    })
}

/// Why a request head at the front of a buffer cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// A framing or form rule above (400).
    Violation(FramingViolation),
    /// Over the size limit before its end (431).
    TooLarge,
    /// Not a request head `httparse` reads (400).
    Malformed,
}

/// A complete request head at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundHead {
    /// Where the request line starts (after empty lines before it).
    pub start: usize,
    /// Where the head ends (after its empty line): the body or the next request follows.
    pub end: usize,
    pub framing: Framing,
    pub switches: bool,
}

/// Looks for a complete request head at the front of `buf`, with every rule of the gate:
/// empty lines before it are skipped, every line must end in CRLF (checked as bytes
/// arrive, so a head with bare LFs is refused before it is complete), the head must end
/// within `max_head` bytes, and a request line of `HTTP/1.2` to `HTTP/1.9` is rewritten in
/// place as HTTP/1.1. `Ok(None)`: not complete yet.
pub fn find_head(buf: &mut [u8], max_head: usize) -> Result<Option<FoundHead>, HeadError> {
    let Some(Located { start, end }) = locate_head(buf, max_head)? else {
        return Ok(None);
    };
    let c = check_head(&buf[start..end]).map_err(HeadError::Violation)?;
    if !c.parsed {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let too_many = matches!(
            httparse::Request::new(&mut fields).parse(&buf[start..end]),
            Err(httparse::Error::TooManyHeaders)
        );
        return Err(if too_many {
            HeadError::TooLarge
        } else {
            HeadError::Malformed
        });
    }
    Ok(Some(FoundHead {
        start,
        end,
        framing: c.framing,
        switches: c.switches,
    }))
}

/// Where a complete request head sits in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// Where the request line starts (after empty lines before it).
    pub start: usize,
    /// Where the head ends (after its empty line).
    pub end: usize,
}

/// [`find_head`]'s rules up to the parse: the head's bounds, its line ends, its size, the
/// version rewrite. The caller parses `buf[start..end]` and applies [`check_parsed`].
pub fn locate_head(buf: &mut [u8], max_head: usize) -> Result<Option<Located>, HeadError> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let end = find_head_end(&buf[start..]).map(|p| start + p + 4);
    let limit = (start + max_head + 1).min(buf.len());
    let checked = end.unwrap_or(limit).min(limit);
    if bare_line_end(&buf[..checked], start, 0) {
        return Err(HeadError::Violation(FramingViolation::BareLineEnd));
    }
    let Some(end) = end.filter(|&e| e - start <= max_head) else {
        return if buf.len() - start > max_head {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if let Some(line_end) = request_line_end(&buf[..end]) {
        if let Some(d) = newer_minor_version(&buf[..=line_end]) {
            buf[d] = b'1';
        }
    }
    Ok(Some(Located { start, end }))
}

/// Where a head's empty line is. (The searcher is built once: `memmem::find` builds one
/// per call.)
fn find_head_end(hay: &[u8]) -> Option<usize> {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    FINDER.find(hay)
}

/// Whether `head[from..]` holds an LF not preceded by CR, or a CR followed by anything but
/// LF (a CR just before `from` included). Nothing before `line_start` counts; a CR at the
/// very end may still be followed by its LF.
fn bare_line_end(head: &[u8], line_start: usize, from: usize) -> bool {
    let from = from.saturating_sub(1).max(line_start);
    // Only CRs and LFs matter: jump from one to the next.
    memchr::memchr2_iter(b'\r', b'\n', &head[from..]).any(|p| {
        let i = from + p;
        match head[i] {
            b'\n' => i == line_start || head[i - 1] != b'\r',
            _ => head.get(i + 1).is_some_and(|&n| n != b'\n'),
        }
    })
}

/// Where the request line in `head` ends (its `\n`), after any empty lines before it.
fn request_line_end(head: &[u8]) -> Option<usize> {
    let start = head.iter().position(|&b| b != b'\r' && b != b'\n')?;
    memchr::memchr(b'\n', &head[start..]).map(|p| start + p)
}

/// The index of the minor version digit in a request line that ends in ` HTTP/1.D` with D
/// from 2 to 9 (served as HTTP/1.1), if it does.
fn newer_minor_version(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"\n")?;
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let n = body.len();
    (n > 9 && &body[n - 9..n - 1] == b" HTTP/1." && (b'2'..=b'9').contains(&body[n - 1]))
        .then_some(n - 1)
}

/// RFC 9112 §3.2: origin-form for most methods, absolute-form (`http`, `https`) for any,
/// authority-form only for CONNECT, asterisk-form only for OPTIONS; every byte visible
/// ASCII, and no fragment (a client never sends one).
fn check_target(method: &str, target: &str) -> Result<(), FramingViolation> {
    let t = target.as_bytes();
    if t.is_empty() || t.iter().any(|&b| !(0x21..=0x7e).contains(&b) || b == b'#') {
        return Err(FramingViolation::InvalidTarget);
    }
    let ok = if method == "CONNECT" {
        // host:port; hyper checks the rest.
        t[0] != b'/' && t.contains(&b':')
    } else if t == b"*" {
        method == "OPTIONS"
    } else if t[0] == b'/' {
        true
    } else {
        let lower = target.to_ascii_lowercase();
        lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    };
    if ok {
        Ok(())
    } else {
        Err(FramingViolation::InvalidTarget)
    }
}

/// A name with the letters of `Content-Length` or `Transfer-Encoding` but other separators
/// (`Content_Length`, `Transfer---Encoding`): CGI and WSGI servers map `-` and `_` alike,
/// so such a header can become a framing header behind linger.
fn folds_into_framing_header(name: &str) -> bool {
    let is = |canonical: &str| name.eq_ignore_ascii_case(canonical);
    if is("content-length") || is("transfer-encoding") {
        return false;
    }
    let mut letters = [0u8; 20];
    let mut n = 0;
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            if n == letters.len() {
                return false;
            }
            letters[n] = b.to_ascii_lowercase();
            n += 1;
        } else if b != b'-' && b != b'_' && b != b'.' {
            return false;
        }
    }
    let letters = &letters[..n];
    letters == b"contentlength" || letters == b"transferencoding"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and returns what the reader is handed.
    fn handed_on(input: &[u8], step: usize) -> Result<Vec<u8>, FramingViolation> {
        handed_on_limited(input, step, 64 * 1024)
    }

    fn handed_on_limited(
        input: &[u8],
        step: usize,
        max_head: usize,
    ) -> Result<Vec<u8>, FramingViolation> {
        let mut g = FramingGuard::new(max_head);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            let mut piece = piece.to_vec();
            let fed = g.feed(&mut piece)?;
            if let Some(r) = fed.release {
                out.extend_from_slice(&r);
            }
            out.extend_from_slice(&piece[..piece.len() - fed.hold]);
        }
        out.extend_from_slice(&g.take_held());
        Ok(out)
    }

    /// The verdict, checked to be the same whatever the read boundaries, and the bytes
    /// handed on to be the same too.
    fn both(input: &[u8]) -> Result<(), FramingViolation> {
        let whole = handed_on(input, input.len().max(1));
        for step in [1, 2, 3, 7] {
            assert_eq!(
                whole,
                handed_on(input, step),
                "read boundaries changed the verdict"
            );
        }
        whole.map(|_| ())
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
    fn refuses_targets_not_in_a_form_their_method_allows() {
        for line in [
            "GET ! HTTP/1.1",
            "GET a HTTP/1.1",
            "GET example.com:80 HTTP/1.1",
            "GET * HTTP/1.1",
            "GET /t#narf HTTP/1.1",
            "GET /\u{3b4} HTTP/1.1",
            "GET ftp://a/x HTTP/1.1",
            "GET http:///x HTTP/1.1",
            "CONNECT /x HTTP/1.1",
        ] {
            let req = format!("{line}\r\nhost: a\r\n\r\n");
            assert_eq!(
                both(req.as_bytes()),
                Err(FramingViolation::InvalidTarget),
                "{line}"
            );
        }
        for line in [
            "OPTIONS * HTTP/1.1",
            "GET /a?b=%20 HTTP/1.1",
            "GET http://a/x HTTP/1.1",
            "GET HTTPS://a:8443 HTTP/1.1",
            "CONNECT a:443 HTTP/1.1",
        ] {
            let req = format!("{line}\r\nhost: a\r\n\r\n");
            assert_eq!(both(req.as_bytes()), Ok(()), "{line}");
        }
    }

    #[test]
    fn refuses_names_that_fold_into_framing_headers() {
        for name in [
            "Transfer_Encoding",
            "content_length",
            "Transfer---Encoding",
            "Content.Length",
            "TRANSFER__ENCODING",
        ] {
            let req = format!("POST / HTTP/1.1\r\nhost: a\r\n{name}: chunked\r\n\r\n");
            assert_eq!(
                both(req.as_bytes()),
                Err(FramingViolation::FramingHeaderLookalike),
                "{name}"
            );
        }
        for name in ["X_Content_Length", "Content-Lengths", "x_custom"] {
            let req = format!("GET / HTTP/1.1\r\nhost: a\r\n{name}: 1\r\n\r\n");
            assert_eq!(both(req.as_bytes()), Ok(()), "{name}");
        }
    }

    #[test]
    fn chunk_lines_follow_the_grammar() {
        let head = "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
        for line in [
            "5;a=\"x",
            "2;",
            "a ",
            "2 ;",
            "2;a=",
            "2;a b",
            "2;=b",
            "2;a=\"x\"y",
            "2;a=\"\\",
        ] {
            let req = format!("{head}{line}\r\nhi\r\n0\r\n\r\n");
            assert_eq!(
                both(req.as_bytes()),
                Err(FramingViolation::InvalidChunkSize),
                "{line:?}"
            );
        }
        for line in [
            "2",
            "2;a",
            "2 ; a = b",
            "2;a=\"x;y\\\"z\"",
            "2\t;a;b=c",
            "0002",
        ] {
            let req = format!("{head}{line}\r\nhi\r\n0\r\n\r\n");
            assert_eq!(both(req.as_bytes()), Ok(()), "{line:?}");
        }
    }

    #[test]
    fn a_newer_minor_version_is_handed_on_as_http_1_1_whatever_the_read_boundaries() {
        let input = b"\r\nGET /x HTTP/1.2\r\nhost: a\r\n\r\nGET /y HTTP/1.9\r\nhost: a\r\n\r\nGET /z HTTP/1.1\r\n\r\n";
        let want = b"\r\nGET /x HTTP/1.1\r\nhost: a\r\n\r\nGET /y HTTP/1.1\r\nhost: a\r\n\r\nGET /z HTTP/1.1\r\n\r\n";
        for step in 1..input.len() {
            assert_eq!(
                handed_on(input, step).unwrap(),
                want.to_vec(),
                "step {step}"
            );
        }
        // Other versions are left as they are, for hyper to refuse.
        for v in ["HTTP/1.10", "HTTP/2.0", "HTTP/1.a"] {
            let req = format!("GET / {v}\r\n\r\n");
            assert_eq!(handed_on(req.as_bytes(), 1).unwrap(), req.as_bytes());
        }
    }

    #[test]
    fn a_head_line_not_ended_by_crlf_is_refused() {
        for input in [
            &b"GET / HTTP/\r\r1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\n\n",
            b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
        ] {
            assert_eq!(both(input), Err(FramingViolation::BareLineEnd), "{input:?}");
        }
    }

    /// Found by the fuzzer: past the size limit, a bare CR and a version rewrite were seen
    /// or not depending on where reads split the stream.
    #[test]
    fn heads_past_the_size_limit_get_one_verdict_whatever_the_read_boundaries() {
        let filler = "x".repeat(64);
        for input in [
            format!("GET /{filler} HTTP/1.1\r\nHost: a\r\nX: {filler}\rx\n\r\n"),
            format!("GET / HTTP/1.2\r\nHost: a\r\nX: {filler}{filler}\r\n\r\n"),
            format!("GET /{filler}{filler} HTTP/1.2\r\nHost: a\r\n\r\n"),
        ] {
            let whole = handed_on_limited(input.as_bytes(), input.len(), 100);
            for step in [1, 2, 5, 13] {
                assert_eq!(
                    whole,
                    handed_on_limited(input.as_bytes(), step, 100),
                    "{input:?} in pieces of {step}"
                );
            }
        }
    }

    #[test]
    fn empty_lines_between_requests_are_not_a_head() {
        let input = b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\nq=42\r\n\r\nGET . HTTP/1.1\r\nhost: a\r\n\r\n";
        assert_eq!(both(input), Err(FramingViolation::InvalidTarget));
        let input = b"\r\n\r\nGET /x HTTP/1.1\r\nhost: a\r\n\r\n";
        assert_eq!(both(input), Ok(()));
    }

    #[test]
    fn a_request_line_still_arriving_is_held_and_released_at_the_end_of_the_stream() {
        let mut g = FramingGuard::new(1024);
        let mut part = b"GET /x HT".to_vec();
        assert_eq!(
            g.feed(&mut part),
            Ok(Fed {
                release: None,
                hold: 9
            })
        );
        assert_eq!(g.take_held(), b"GET /x HT");
    }

    #[test]
    fn heads_are_found_whole_with_the_gates_rules() {
        let mut b = b"\r\nGET / HTTP/1.4\r\nhost: a\r\ncontent-length: 2\r\n\r\nhiGET".to_vec();
        let h = find_head(&mut b, 1024).unwrap().unwrap();
        assert_eq!((h.start, h.end), (2, 48));
        assert_eq!(h.framing, Framing::Length(2));
        assert!(
            b.starts_with(b"\r\nGET / HTTP/1.1\r\n"),
            "the version is served as 1.1"
        );
        let mut partial = b"GET / HTTP/1.1\r\nhost: a\r\n".to_vec();
        assert_eq!(find_head(&mut partial, 1024), Ok(None));
        let mut bare = b"GET / HTTP/1.1\nhost: a".to_vec();
        assert_eq!(
            find_head(&mut bare, 1024),
            Err(HeadError::Violation(FramingViolation::BareLineEnd)),
            "refused before the head is complete"
        );
        let mut big = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(100)).into_bytes();
        assert_eq!(find_head(&mut big, 64), Err(HeadError::TooLarge));
        let mut smuggle =
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        assert_eq!(
            find_head(&mut smuggle, 1024),
            Err(HeadError::Violation(
                FramingViolation::ContentLengthAndTransferEncoding
            ))
        );
        let mut junk = b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec();
        assert_eq!(find_head(&mut junk, 1024), Err(HeadError::Malformed));
    }

    #[test]
    fn steps_aside_after_an_upgrade_request() {
        assert_eq!(
            both(b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\x81\x05hello anything"),
            Ok(())
        );
    }
}
