//! A response head's framing (RFC 9112 §6.3): how the body that follows it ends, and
//! whether the connection can carry another exchange after it.

use std::fmt;

use crate::body::{parse_length, Framing};

/// Why a response head cannot be framed safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFramingError {
    /// More than one `Content-Length` with different values, or one that is not a number.
    InvalidContentLength,
}

impl fmt::Display for ResponseFramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidContentLength => "invalid Content-Length in a response",
        })
    }
}

impl std::error::Error for ResponseFramingError {}

/// How a response body ends, and whether its framing leaves the connection reusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFraming {
    pub framing: Framing,
    /// The head framed the body in a way another hop could read otherwise (both
    /// `Content-Length` and `Transfer-Encoding`), or only the close can end it: the
    /// connection must close after this response.
    pub must_close: bool,
}

/// The framing of a response with `status` and `headers` to a request with `method`.
pub fn response_framing(
    method: &str,
    status: u16,
    headers: &[httparse::Header<'_>],
) -> Result<ResponseFraming, ResponseFramingError> {
    let empty = |must_close| ResponseFraming {
        framing: Framing::Empty,
        must_close,
    };
    // 1. HEAD, 1xx, 204 and 304 have no body, whatever the head says.
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Ok(empty(false));
    }
    let mut te_last_chunked = None;
    // The first Content-Length value, and whether any other differs from it (no list:
    // nearly every response has exactly one).
    let mut length: Option<u64> = None;
    let mut lengths_differ = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h
                .value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|c| !c.is_empty());
            te_last_chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',') {
                let n = parse_length(v).ok_or(ResponseFramingError::InvalidContentLength)?;
                lengths_differ |= *length.get_or_insert(n) != n;
            }
        }
    }
    // 2. Transfer-Encoding wins over Content-Length; both at once is a smuggling shape, so
    //    the connection is not reused. A final coding other than chunked ends at the close.
    if let Some(chunked) = te_last_chunked {
        return Ok(ResponseFraming {
            framing: if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            },
            must_close: length.is_some() || !chunked,
        });
    }
    // 3. Content-Length, every copy the same.
    if let Some(first) = length {
        if lengths_differ {
            return Err(ResponseFramingError::InvalidContentLength);
        }
        return Ok(ResponseFraming {
            framing: Framing::Length(first),
            must_close: false,
        });
    }
    // 4. Neither: the body ends when the upstream closes.
    Ok(ResponseFraming {
        framing: Framing::UntilClose,
        must_close: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Framed = Result<ResponseFraming, ResponseFramingError>;
    /// Method, status, headers, and the framing they must give.
    type Row<'a> = (&'a str, u16, &'a [(&'a str, &'a str)], Framed);

    fn framing(method: &str, status: u16, headers: &[(&str, &str)]) -> Framed {
        let hs: Vec<httparse::Header<'_>> = headers
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        response_framing(method, status, &hs)
    }

    #[test]
    fn a_table_of_response_heads() {
        use Framing::*;
        let ok = |framing, must_close| {
            Ok(ResponseFraming {
                framing,
                must_close,
            })
        };
        let rows: &[Row<'_>] = &[
            ("GET", 200, &[("content-length", "5")], ok(Length(5), false)),
            ("HEAD", 200, &[("content-length", "5")], ok(Empty, false)),
            ("GET", 204, &[("content-length", "5")], ok(Empty, false)),
            (
                "GET",
                304,
                &[("transfer-encoding", "chunked")],
                ok(Empty, false),
            ),
            ("GET", 101, &[], ok(Empty, false)),
            (
                "GET",
                200,
                &[("transfer-encoding", "chunked")],
                ok(Chunked, false),
            ),
            (
                "GET",
                200,
                &[("transfer-encoding", "gzip, chunked")],
                ok(Chunked, false),
            ),
            (
                "GET",
                200,
                &[("transfer-encoding", "gzip")],
                ok(UntilClose, true),
            ),
            (
                "GET",
                200,
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
                ok(Chunked, true),
            ),
            (
                "GET",
                200,
                &[("content-length", "5"), ("content-length", "5")],
                ok(Length(5), false),
            ),
            (
                "GET",
                200,
                &[("content-length", "5, 5")],
                ok(Length(5), false),
            ),
            (
                "GET",
                200,
                &[("content-length", "5"), ("content-length", "6")],
                Err(ResponseFramingError::InvalidContentLength),
            ),
            (
                "GET",
                200,
                &[("content-length", "-1")],
                Err(ResponseFramingError::InvalidContentLength),
            ),
            ("GET", 200, &[], ok(UntilClose, true)),
        ];
        for (method, status, headers, want) in rows {
            assert_eq!(
                &framing(method, *status, headers),
                want,
                "{method} {status} {headers:?}"
            );
        }
    }
}
