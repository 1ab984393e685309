//! Sends one row through a proxy and observes both ends: what the client got back and how
//! its connection ended, and what reached the origin.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::origin::{dechunk, OriginView, RecordingOrigin};
use super::{Expect, Row};

/// How the client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEnd {
    /// The proxy closed it (FIN).
    Closed,
    /// The proxy reset it.
    Reset,
    /// Still open when the client stopped waiting.
    Open,
}

/// What one row did.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Final statuses of the complete responses the client got, in order.
    pub responses: Vec<u16>,
    /// Bytes after the last complete response that did not make a response.
    pub trailing: usize,
    pub end: ClientEnd,
    pub origin: OriginView,
}

/// Sends `row` to `proxy`, whose only upstream is `origin`, and watches both ends. The
/// client stops waiting once the row's outcome is decided, or after `quiet` without a byte.
pub async fn run_row(
    proxy: SocketAddr,
    origin: &RecordingOrigin,
    row: &Row,
    quiet: Duration,
) -> std::io::Result<Observed> {
    origin.take();
    let mut sock = TcpStream::connect(proxy).await?;
    // A proxy may answer and close before it read everything: a failed write is part of
    // what is observed, not an error of the harness.
    let _ = sock.write_all(&row.send).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let end = loop {
        let (responses, _) = responses(&got, row.is_head(), false);
        // A forwarded row is decided once its answers are in; anything else waits for the
        // proxy to close (or to fall quiet).
        let answered =
            responses.len() >= row.requests && responses.iter().all(|s| (200..300).contains(s));
        if row.expect == Expect::Forward && answered {
            break ClientEnd::Open;
        }
        match tokio::time::timeout(quiet, sock.read(&mut buf)).await {
            Err(_) => break ClientEnd::Open,
            Ok(Ok(0)) => break ClientEnd::Closed,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                break ClientEnd::Reset
            }
            Ok(Err(_)) => break ClientEnd::Reset,
        }
    };
    let (responses, trailing) = responses(&got, row.is_head(), end != ClientEnd::Open);
    drop(sock);
    // Whatever the proxy forwarded was written before its answer; give the origin's reader
    // a moment to count it. When something did arrive, wait for the proxy to close the
    // connections that carried it (isolation), for at most `quiet`.
    let mut view = origin
        .wait_for(Duration::from_millis(20), |v| v.bytes > 0)
        .await;
    if !view.requests.is_empty() && end != ClientEnd::Open {
        view = origin
            .wait_for(quiet, |v| {
                !v.requests.is_empty() && v.request_conns_closed()
            })
            .await;
    }
    Ok(Observed {
        responses,
        trailing,
        end,
        origin: view,
    })
}

/// The final statuses of the complete responses in `bytes`, and how many bytes follow the
/// last of them. `eof`: the connection ended, so a close-delimited body is complete.
fn responses(bytes: &[u8], first_is_head: bool, eof: bool) -> (Vec<u16>, usize) {
    let mut statuses = Vec::new();
    let mut rest = bytes;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = resp.parse(rest) else {
            return (statuses, rest.len());
        };
        let status = resp.code.unwrap_or(0);
        let value = |name: &str| {
            resp.headers
                .iter()
                .rev()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        let body = &rest[head_len..];
        let no_body = (first_is_head && statuses.is_empty())
            || status == 204
            || status == 304
            || status < 200;
        let used = if no_body {
            0
        } else if value("transfer-encoding").is_some_and(|t| t.ends_with("chunked")) {
            match dechunk(body) {
                Some(Some((_, used))) => used,
                _ => return (statuses, rest.len()),
            }
        } else if let Some(cl) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if body.len() < cl {
                return (statuses, rest.len());
            }
            cl
        } else if eof {
            body.len()
        } else {
            return (statuses, rest.len());
        };
        if status >= 200 {
            statuses.push(status);
        }
        rest = &rest[head_len + used..];
        if rest.is_empty() {
            return (statuses, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::responses;

    #[test]
    fn reads_pipelined_and_interim_responses() {
        let bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\nHTTP/1.1 200";
        assert_eq!(responses(bytes, false, false), (vec![200, 400], 12));
        assert_eq!(
            responses(b"HTTP/1.1 200 OK\r\n\r\nuntil close", false, true),
            (vec![200], 0)
        );
        assert_eq!(
            responses(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true, false),
            (vec![200], 0)
        );
    }
}
