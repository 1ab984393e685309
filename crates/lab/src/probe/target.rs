//! The URL a probe aims at: `http://HOST[:PORT][/PATH][?QUERY]`.

use std::net::SocketAddr;

use super::ProbeError;

/// A parsed and resolved `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// The `Host` header: the authority as written in the URL.
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
    /// The address connected to: the first one the host resolves to, as linger does for
    /// its endpoints.
    pub addr: SocketAddr,
}

/// The parts of a URL, before name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    pub authority: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Splits an `http://` URL. `https://` is refused with its own error: the probe measures
/// the HTTP server's connection handling, and a TLS terminator in front would answer for
/// it.
pub fn parse_url(url: &str) -> Result<ParsedUrl, ProbeError> {
    let bad = |reason: &str| ProbeError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = url.trim();
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return Err(bad("expected http://HOST[:PORT][/PATH]"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => {
            return Err(ProbeError::Https {
                url: url.to_string(),
            })
        }
        other => {
            return Err(bad(&format!(
                "unsupported scheme {other:?} (only http:// is supported)"
            )))
        }
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(bad("user information in the URL is not supported"));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let Some((host, after)) = inner.split_once(']') else {
            return Err(bad("unclosed '[' in the host"));
        };
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("unexpected text after ']'"))?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    let port = match port {
        None | Some("") => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad(&format!("{p:?} is not a port (1 to 65535)"))),
            Ok(p) => p,
        },
    };
    let tail = tail.split('#').next().unwrap_or("");
    let path = if tail.is_empty() {
        "/".to_string()
    } else if tail.starts_with('?') {
        format!("/{tail}")
    } else {
        tail.to_string()
    };
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad("the path contains spaces or control characters"));
    }
    Ok(ParsedUrl {
        authority: authority.to_string(),
        host: host.to_string(),
        port,
        path,
    })
}

// === impl Target ===

impl Target {
    /// Parses `url` and resolves its host.
    pub async fn resolve(url: &str) -> Result<Self, ProbeError> {
        let parsed = parse_url(url)?;
        let unreachable = |reason: String| ProbeError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let addr = tokio::net::lookup_host((parsed.host.as_str(), parsed.port))
            .await
            .map_err(|e| unreachable(format!("{} does not resolve: {e}", parsed.host)))?
            .next()
            .ok_or_else(|| unreachable(format!("{} resolves to no address", parsed.host)))?;
        Ok(Self {
            url: url.to_string(),
            authority: parsed.authority,
            host: parsed.host,
            port: parsed.port,
            path: parsed.path,
            addr,
        })
    }

    /// A request head for this target. `version` is `"1.0"` or `"1.1"`.
    pub(crate) fn request(&self, method: &str, version: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut req = format!(
            "{method} {} HTTP/{version}\r\nHost: {}\r\nUser-Agent: linger-probe/{}\r\nAccept: */*\r\n",
            self.path,
            self.authority,
            env!("CARGO_PKG_VERSION")
        );
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts_default_to_port_80_and_root_path() {
        let p = parse_url("http://example.com").expect("a plain URL must parse");
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("example.com", 80, "/")
        );
        let p = parse_url("HTTP://[::1]:8080?x=1#frag").expect("an IPv6 URL must parse");
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("::1", 8080, "/?x=1")
        );
        assert_eq!(p.authority, "[::1]:8080");
    }

    #[test]
    fn https_and_bad_ports_are_refused() {
        assert!(matches!(
            parse_url("https://example.com/"),
            Err(ProbeError::Https { .. })
        ));
        assert!(matches!(
            parse_url("http://example.com:0/"),
            Err(ProbeError::BadUrl { .. })
        ));
        assert!(matches!(
            parse_url("example.com"),
            Err(ProbeError::BadUrl { .. })
        ));
    }
}
