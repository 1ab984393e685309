//! What a running linger learned of its upstream endpoints, read from its admin listener's
//! `/upstreams` (`linger check --admin URL`): the idle limits that live traffic proved
//! shorter than the configured ones, and the endpoints that close right after their
//! responses.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Deserialize;

use crate::probe::target::parse_url;

/// The most of a `/upstreams` answer read (a few hundred bytes per endpoint).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// One endpoint as the running linger reports it.
pub use linger_proxy::LearnedView as LearnedFacts;

#[derive(Deserialize)]
struct Answer {
    upstreams: Vec<LearnedFacts>,
}

/// Reads `/upstreams` from the admin listener at `url` (`http://HOST:PORT`).
pub fn fetch(url: &str, timeout: Duration) -> Result<Vec<LearnedFacts>, String> {
    let parsed = parse_url(url).map_err(|e| e.to_string())?;
    let addr = (parsed.host.as_str(), parsed.port)
        .to_socket_addrs()
        .map_err(|e| format!("admin {url}: cannot resolve {}: {e}", parsed.host))?
        .next()
        .ok_or_else(|| format!("admin {url}: {} has no address", parsed.host))?;
    let path = format!("{}/upstreams", parsed.path.trim_end_matches('/'));
    let fail = |what: &str, e: std::io::Error| format!("admin {url}: {what}: {e}");
    let mut sock = TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail("connect", e))?;
    sock.set_read_timeout(Some(timeout))
        .and_then(|_| sock.set_write_timeout(Some(timeout)))
        .map_err(|e| fail("socket", e))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\nconnection: close\r\n\r\n",
        parsed.authority
    );
    sock.write_all(request.as_bytes())
        .map_err(|e| fail("write", e))?;
    let mut answer = Vec::new();
    sock.take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| fail("read", e))?;
    parse_answer(url, &answer)
}

fn parse_answer(url: &str, answer: &[u8]) -> Result<Vec<LearnedFacts>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(format!("admin {url}: the answer ended inside its head"))
        }
        Err(e) => return Err(format!("admin {url}: not an HTTP answer ({e})")),
    };
    let status = resp.code.unwrap_or(0);
    if status != 200 {
        return Err(format!(
            "admin {url}: /upstreams answered {status}; is this linger's admin listener \
             (`admin` in the config, default 127.0.0.1:9901)?"
        ));
    }
    let a: Answer = serde_json::from_slice(&answer[head_len..])
        .map_err(|e| format!("admin {url}: /upstreams is not what linger writes: {e}"))?;
    Ok(a.upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_admin_answer_and_names_what_is_wrong() {
        let body = r#"{"upstreams":[{"cluster":"app","endpoint":"127.0.0.1:3000",
            "idle_limit_s":0.06,"idle_timeout_s":1.5,"hint_s":null,"learned_s":0.06,
            "learning":true,"closes_after_response":false,"changes":{},
            "last_change":{"at_ms":1.0,"cause":"failed_reuse","from_s":1.5,"to_s":0.06,
            "evidence":"a reused connection failed"},"journal":[]}]}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let facts = parse_answer("http://x", answer.as_bytes()).unwrap();
        assert_eq!(facts[0].learned_s, Some(0.06));
        assert_eq!(facts[0].last_change.as_ref().unwrap().cause, "failed_reuse");
        let e = parse_answer("http://x", b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err();
        assert!(e.contains("404"), "{e}");
        let e = parse_answer("http://x", b"HTTP/1.1 200 OK\r\n\r\n{}").unwrap_err();
        assert!(e.contains("not what linger writes"), "{e}");
        let e = parse_answer("http://x", b"SSH-2.0").unwrap_err();
        assert!(e.contains("admin http://x"), "{e}");
    }
}
