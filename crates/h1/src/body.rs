//! Message body framing (RFC 9112 §6 and §7.1), sans-io: a decoder is fed the bytes that
//! follow a head and says which of them are body data and where the message ends. The
//! request gate follows request bodies with it today; the proxy's own codec will forward
//! with it.
//!
//! Chunk lines follow the grammar strictly: `size *( BWS ";" BWS name [ BWS "=" BWS value ]
//! ) CRLF`, the size in hex (at most 16 digits), the name a token, the value a token or a
//! quoted string. Trailer lines may not fold (obs-fold), and both are bounded.

use std::fmt;
use std::ops::Range;

/// Longest chunk-size line (size plus extensions) and longest trailer line.
pub const MAX_LINE: usize = 4096;
/// Most bytes of trailer fields after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// Why a body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// A chunk line outside the grammar, or longer than [`MAX_LINE`].
    InvalidChunkLine,
    /// Chunk data not followed by CRLF.
    MissingChunkCrlf,
    /// A folded trailer line.
    ObsFoldInTrailer,
    /// Trailers over [`MAX_TRAILERS`], or a trailer line over [`MAX_LINE`].
    TrailersTooLarge,
    /// The stream ended before the body did.
    Truncated,
}

impl BodyError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidChunkLine => "invalid chunk size line",
            Self::MissingChunkCrlf => "chunk data not followed by CRLF",
            Self::ObsFoldInTrailer => "obs-fold in a trailer",
            Self::TrailersTooLarge => "trailers over the limit",
            Self::Truncated => "the stream ended inside the body",
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for BodyError {}

/// What one call to [`BodyDecoder::decode`] did with its input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Bytes of the input used; the rest belongs to whatever follows the body.
    pub consumed: usize,
    /// Body data within the input, if any.
    pub data: Option<Range<usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Length { remaining: u64 },
    ChunkLine,
    ChunkData { remaining: u64 },
    ChunkCrlf { seen_cr: bool },
    Trailers { total: usize },
    UntilClose,
    Done,
}

/// Follows one message body.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    /// The current chunk or trailer line, as far as it has arrived.
    line: Vec<u8>,
    /// The trailer lines of a chunked body, each with its CRLF (bounded by
    /// [`MAX_TRAILERS`]).
    trailers: Vec<u8>,
}

// === impl BodyDecoder ===

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length { remaining: n },
            Framing::Chunked => State::ChunkLine,
            Framing::UntilClose => State::UntilClose,
        };
        Self {
            state,
            line: Vec::new(),
            trailers: Vec::new(),
        }
    }

    /// The trailer fields that followed the last chunk, each line with its CRLF; empty
    /// when there were none.
    pub fn take_trailers(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.trailers)
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The peer closed: the end of a close-delimited body, and a truncation of any other
    /// body that has not ended.
    pub fn eof(&mut self) -> Result<(), BodyError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }

    /// Decodes from the front of `input` until it has one run of data to report, the body
    /// ends, or the input is used up. Call again with the rest while `consumed` is short
    /// of the input and the body has not ended.
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                State::Done => break,
                State::UntilClose => {
                    return Ok(Step {
                        consumed: input.len(),
                        data: Some(0..input.len()),
                    })
                }
                State::Length { remaining } | State::ChunkData { remaining } => {
                    let n = (*remaining).min((input.len() - i) as u64) as usize;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = match self.state {
                            State::Length { .. } => State::Done,
                            _ => State::ChunkCrlf { seen_cr: false },
                        };
                    }
                    return Ok(Step {
                        consumed: i + n,
                        data: Some(i..i + n),
                    });
                }
                State::ChunkCrlf { seen_cr } => {
                    let want = if *seen_cr { b'\n' } else { b'\r' };
                    if input[i] != want {
                        return Err(BodyError::MissingChunkCrlf);
                    }
                    i += 1;
                    if *seen_cr {
                        self.state = State::ChunkLine;
                    } else {
                        *seen_cr = true;
                    }
                }
                State::ChunkLine | State::Trailers { .. } => {
                    let rest = &input[i..];
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(rest);
                        self.check_line_length()?;
                        return Ok(Step {
                            consumed: input.len(),
                            data: None,
                        });
                    };
                    self.line.extend_from_slice(&rest[..=nl]);
                    self.check_line_length()?;
                    i += nl + 1;
                    let line = std::mem::take(&mut self.line);
                    self.state = match self.state {
                        State::ChunkLine => match parse_chunk_line(&line)? {
                            0 => State::Trailers { total: 0 },
                            n => State::ChunkData { remaining: n },
                        },
                        State::Trailers { total } => {
                            if line == b"\r\n" {
                                State::Done
                            } else if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                                return Err(BodyError::ObsFoldInTrailer);
                            } else if total + line.len() > MAX_TRAILERS {
                                return Err(BodyError::TrailersTooLarge);
                            } else {
                                self.trailers.extend_from_slice(&line);
                                State::Trailers {
                                    total: total + line.len(),
                                }
                            }
                        }
                        _ => unreachable!("only line states read lines"),
                    };
                }
            }
        }
        Ok(Step {
            consumed: i,
            data: None,
        })
    }

    fn check_line_length(&self) -> Result<(), BodyError> {
        if self.line.len() <= MAX_LINE {
            return Ok(());
        }
        Err(match self.state {
            State::Trailers { .. } => BodyError::TrailersTooLarge,
            _ => BodyError::InvalidChunkLine,
        })
    }
}

/// A chunk line with its CRLF → the chunk size.
pub fn parse_chunk_line(line: &[u8]) -> Result<u64, BodyError> {
    let bad = BodyError::InvalidChunkLine;
    let line = line.strip_suffix(b"\r\n").ok_or(bad)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(bad);
    }
    let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).map_err(|_| bad)?, 16)
        .map_err(|_| bad)?;
    let mut rest = &line[digits..];
    let bws = |r: &mut &[u8]| {
        while let [b' ' | b'\t', tail @ ..] = *r {
            *r = tail;
        }
    };
    let token = |r: &mut &[u8]| -> Result<(), BodyError> {
        let n = r.iter().take_while(|&&b| is_tchar(b)).count();
        if n == 0 {
            return Err(bad);
        }
        *r = &r[n..];
        Ok(())
    };
    while !rest.is_empty() {
        bws(&mut rest);
        rest = rest.strip_prefix(b";").ok_or(bad)?;
        bws(&mut rest);
        token(&mut rest)?;
        let mut after_name = rest;
        bws(&mut after_name);
        if let Some(value) = after_name.strip_prefix(b"=") {
            rest = value;
            bws(&mut rest);
            if let Some(quoted) = rest.strip_prefix(b"\"") {
                rest = quoted_string_rest(quoted).ok_or(bad)?;
            } else {
                token(&mut rest)?;
            }
        }
    }
    Ok(size)
}

/// The bytes after a quoted string's closing quote, given the bytes after its opening one.
fn quoted_string_rest(mut s: &[u8]) -> Option<&[u8]> {
    loop {
        match s {
            [b'"', rest @ ..] => return Some(rest),
            [b'\\', c, rest @ ..] if *c == b'\t' || (0x20..=0x7e).contains(c) || *c >= 0x80 => {
                s = rest;
            }
            [c, rest @ ..]
                if *c == b'\t'
                    || *c == b' '
                    || *c >= 0x80
                    || (0x21..=0x7e).contains(c) && *c != b'\\' =>
            {
                s = rest;
            }
            _ => return None,
        }
    }
}

/// A `Content-Length` value (surrounding whitespace allowed): only digits, at most 19 of
/// them, so that it fits a u64.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// RFC 9110 §5.6.2 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data, the bytes left after the body, and whether it ended.
    type Decoded = Result<(Vec<u8>, usize, bool), BodyError>;

    /// Decodes `input` in pieces of `step` bytes.
    fn decode(framing: Framing, input: &[u8], step: usize) -> Decoded {
        let mut d = BodyDecoder::new(framing);
        let mut data = Vec::new();
        let mut left = 0;
        for piece in input.chunks(step) {
            let mut at = 0;
            while at < piece.len() && !d.is_done() {
                let s = d.decode(&piece[at..])?;
                if let Some(r) = s.data {
                    data.extend_from_slice(&piece[at..][r]);
                }
                at += s.consumed;
            }
            left += piece.len() - at;
        }
        Ok((data, left, d.is_done()))
    }

    fn every_split(framing: Framing, input: &[u8]) -> Decoded {
        let whole = decode(framing, input, input.len().max(1));
        for step in [1, 2, 3, 5, 8] {
            assert_eq!(
                whole,
                decode(framing, input, step),
                "{input:?} in pieces of {step}"
            );
        }
        whole
    }

    #[test]
    fn a_table_of_bodies() {
        use Framing::*;
        let ok = |data: &[u8], left: usize, done: bool| Ok((data.to_vec(), left, done));
        let rows: &[(Framing, &[u8], Decoded)] = &[
            (Empty, b"GET /", ok(b"", 5, true)),
            (Length(3), b"abcGET", ok(b"abc", 3, true)),
            (Length(5), b"abc", ok(b"abc", 0, false)),
            (Chunked, b"3\r\nabc\r\n0\r\n\r\nNEXT", ok(b"abc", 4, true)),
            (
                Chunked,
                b"3;a=\"x;y\\\"z\" ; b\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
                ok(b"abc", 0, true),
            ),
            (
                Chunked,
                b"A\r\n0123456789\r\n0\r\n\r\n",
                ok(b"0123456789", 0, true),
            ),
            (Chunked, b"3\r\nab", ok(b"ab", 0, false)),
            (
                UntilClose,
                b"anything at all",
                ok(b"anything at all", 0, false),
            ),
            (Chunked, b"zz\r\n", Err(BodyError::InvalidChunkLine)),
            (Chunked, b"3\nabc", Err(BodyError::InvalidChunkLine)),
            (Chunked, b"a \r\n", Err(BodyError::InvalidChunkLine)),
            (Chunked, b"2;\r\n", Err(BodyError::InvalidChunkLine)),
            (Chunked, b"5;a=\"x\r\n", Err(BodyError::InvalidChunkLine)),
            (
                Chunked,
                b"11111111111111111\r\n",
                Err(BodyError::InvalidChunkLine),
            ),
            (Chunked, b"3\r\nabcX", Err(BodyError::MissingChunkCrlf)),
            (
                Chunked,
                b"0\r\nx: 1\r\n folded\r\n\r\n",
                Err(BodyError::ObsFoldInTrailer),
            ),
        ];
        for (framing, input, want) in rows {
            assert_eq!(&every_split(*framing, input), want, "{framing:?} {input:?}");
        }
    }

    #[test]
    fn lines_and_trailers_are_bounded() {
        let long_ext = format!("1;{}\r\n", "e".repeat(MAX_LINE));
        assert_eq!(
            every_split(Framing::Chunked, long_ext.as_bytes()),
            Err(BodyError::InvalidChunkLine)
        );
        let mut many = b"0\r\n".to_vec();
        for i in 0..2000 {
            many.extend_from_slice(format!("x-trailer-{i}: value\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            every_split(Framing::Chunked, &many),
            Err(BodyError::TrailersTooLarge)
        );
    }

    #[test]
    fn trailers_are_kept_for_whoever_forwards_them() {
        let mut d = BodyDecoder::new(Framing::Chunked);
        let input = b"2\r\nhi\r\n0\r\nx-sum: 1\r\nx-b: 2\r\n\r\n";
        let mut i = 0;
        while !d.is_done() {
            i += d.decode(&input[i..]).unwrap().consumed;
        }
        assert_eq!(i, input.len());
        assert_eq!(d.take_trailers(), b"x-sum: 1\r\nx-b: 2\r\n");
        let mut d = BodyDecoder::new(Framing::Chunked);
        d.decode(b"0\r\n\r\n").unwrap();
        assert!(d.is_done() && d.take_trailers().is_empty());
    }

    #[test]
    fn the_end_of_the_stream_ends_only_a_close_delimited_body() {
        let mut d = BodyDecoder::new(Framing::UntilClose);
        assert_eq!(d.eof(), Ok(()));
        assert!(d.is_done());
        let mut d = BodyDecoder::new(Framing::Length(3));
        assert_eq!(d.decode(b"ab").unwrap().data, Some(0..2));
        assert_eq!(d.eof(), Err(BodyError::Truncated));
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert_eq!(d.eof(), Err(BodyError::Truncated));
        assert_eq!(BodyDecoder::new(Framing::Length(0)).eof(), Ok(()));
    }
}
