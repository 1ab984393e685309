//! Header rewriting between the two sides (R3): hop-by-hop removal in both directions
//! (RFC 9110 §7.6.1, including every header named in `Connection`), and the forwarding
//! headers `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Via`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::config::{ForwardedFor, HeadersConfig};

/// Names the request path looks up on every message, built once: a lookup by `&str`
/// parses and lowercases the name each time.
pub(crate) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Fixed hop-by-hop headers. `Trailer` is not among them: RFC 9110 §6.6.2 makes it an
/// end-to-end declaration of the trailer fields. (A static: a `const` array would be
/// built and dropped at every use.)
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    KEEP_ALIVE,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Could a name of this length be one of [`HOP_BY_HOP`]? (2, 7, 10, 16 or 17 bytes: most
/// names are ruled out without a comparison.)
fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16 | 17)
}

/// [`HOP_BY_HOP`] as bytes, for heads not yet in a map.
const HOP_BY_HOP_BYTES: [&[u8]; 6] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
];

/// Is `name` one of the fixed hop-by-hop fields (any case)?
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    hop_by_hop_length(name.len())
        && HOP_BY_HOP_BYTES
            .iter()
            .any(|h| h.len() == name.len() && h.eq_ignore_ascii_case(name))
}

/// Writes one field line of a head: `name: value` and its CRLF.
#[inline]
pub(crate) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Removes every hop-by-hop header, including those the `Connection` header names.
/// Returns the `Upgrade` value when the message asked for a protocol upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // One pass over the names first: most messages carry none or one of them, and each
    // lookup by name costs a hash.
    let mut present = [false; 6];
    for k in headers.keys() {
        if !hop_by_hop_length(k.as_str().len()) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return None;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    let mut wants_upgrade = false;
    for v in headers.get_all(header::CONNECTION) {
        if v.to_str().is_err() {
            continue;
        }
        for token in crate::lifecycle::upstream::tokens(v.as_bytes()) {
            if token.eq_ignore_ascii_case(b"upgrade") {
                wants_upgrade = true;
            }
            // The fixed ones go below anyway ("keep-alive", "upgrade", ...).
            if is_hop_by_hop(token) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    let upgrade = if wants_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in named {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    upgrade
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

/// An IP address as text, written into `buf` without a `String` in between (made per
/// request: a value kept per connection would cost every idle connection 80 bytes).
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    // The longest IPv6 text is 45 bytes (an IPv4-mapped address with every group full).
    let n = match ip {
        // The usual case, without the formatting machinery: four numbers and three dots.
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let mut digits = itoa::Buffer::new();
                let d = digits.format(octet).as_bytes();
                buf[n..n + d.len()].copy_from_slice(d);
                n += d.len();
            }
            n
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut rest = &mut buf[..];
            write!(rest, "{v6}").expect("an IPv6 address fits in 48 bytes");
            48 - rest.len()
        }
    };
    &buf[..n]
}

/// The `Via` value linger adds to a message, by the message's version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Via {
    /// None: the message already had one, which the map now holds with linger's appended.
    #[default]
    None,
    V10,
    V11,
    V2,
}

impl Via {
    fn of(version: Version) -> Self {
        match version {
            Version::HTTP_10 => Self::V10,
            Version::HTTP_2 => Self::V2,
            _ => Self::V11,
        }
    }

    /// Writes its field line, if it has one.
    fn write(self, out: &mut Vec<u8>) {
        if let Some(v) = self.value() {
            write_field(out, b"via", v);
        }
    }

    pub fn value(self) -> Option<&'static [u8]> {
        match self {
            Self::None => None,
            Self::V10 => Some(b"1.0 linger"),
            Self::V11 => Some(b"1.1 linger"),
            Self::V2 => Some(b"2 linger"),
        }
    }
}

/// The fields linger adds to a request it forwards that the request did not have: written
/// after the request's own fields when its head is serialized ([`Added::write`]), never
/// put in its header map (an insert is a hash and a probe; most requests carry none of
/// these fields themselves).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Added {
    /// `X-Forwarded-For: <address>`.
    pub forwarded_for: Option<IpAddr>,
    /// `X-Forwarded-Proto: http`.
    pub forwarded_proto: bool,
    pub via: Via,
}

impl Added {
    /// Writes the fields as lines of a head.
    pub fn write(&self, out: &mut Vec<u8>) {
        if let Some(ip) = self.forwarded_for {
            write_field(out, b"x-forwarded-for", ip_text(ip, &mut [0; 48]));
        }
        if self.forwarded_proto {
            write_field(out, b"x-forwarded-proto", b"http");
        }
        self.via.write(out);
    }
}

/// The fields linger adds to a response it forwards or answers that the response did
/// not have, written after its own fields (as [`Added`] for requests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseAdded {
    pub via: Via,
    /// The listener's `Keep-Alive: timeout=N` announcement.
    pub keep_alive: bool,
}

impl ResponseAdded {
    /// Writes the fields as lines of a head; `keep_alive` is the announcement's value.
    pub fn write(&self, out: &mut Vec<u8>, keep_alive: Option<&HeaderValue>) {
        self.via.write(out);
        if let Some(v) = keep_alive.filter(|_| self.keep_alive) {
            write_field(out, b"keep-alive", v.as_bytes());
        }
    }
}

/// Adds the forwarding headers to a request going upstream: into `headers` where the
/// request had the field already (a value appended, or a client's value removed), and
/// otherwise into the returned [`Added`].
pub fn add_forwarding(
    headers: &mut HeaderMap,
    cfg: &HeadersConfig,
    client_ip: IpAddr,
    original_host: Option<&HeaderValue>,
    version: Version,
) -> Added {
    let mut added = Added::default();
    match cfg.x_forwarded_for {
        ForwardedFor::Off => {}
        ForwardedFor::Replace => {
            headers.remove(X_FORWARDED_FOR);
            added.forwarded_for = Some(client_ip);
        }
        ForwardedFor::Append if !headers.contains_key(X_FORWARDED_FOR) => {
            added.forwarded_for = Some(client_ip);
        }
        ForwardedFor::Append => {
            let prior: Vec<String> = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect();
            let mut value = prior.join(", ");
            if !value.is_empty() {
                value.push_str(", ");
            }
            value.push_str(&client_ip.to_string());
            headers.insert(
                X_FORWARDED_FOR,
                HeaderValue::from_str(&value).unwrap_or_else(|_| {
                    HeaderValue::from_str(&client_ip.to_string()).expect("an IP is a valid header")
                }),
            );
        }
    }
    if cfg.x_forwarded_proto {
        // A client's own value is not passed on.
        headers.remove(X_FORWARDED_PROTO);
        added.forwarded_proto = true;
    }
    if cfg.x_forwarded_host {
        match original_host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h.clone());
            }
            // Without a Host there is nothing to forward; a client-supplied value would
            // be a forgery.
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
    if cfg.via {
        added.via = append_via(headers, version);
    }
    added
}

/// Appends `<version> linger` to the message's `Via` (RFC 9110 §7.6.3) when it has one;
/// otherwise returns the value to add (the map is left as it is).
pub fn append_via(headers: &mut HeaderMap, version: Version) -> Via {
    if !headers.contains_key(header::VIA) {
        return Via::of(version);
    }
    let ours = format!("{} linger", version_str(version));
    let mut value: String = headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    value.push_str(", ");
    value.push_str(&ours);
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::VIA, v);
    }
    Via::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.append("connection", HeaderValue::from_static("X-Other"));
        h.append("x-secret", HeaderValue::from_static("1"));
        h.append("x-other", HeaderValue::from_static("1"));
        h.append("keep-alive", HeaderValue::from_static("timeout=5"));
        h.append("te", HeaderValue::from_static("trailers"));
        h.append("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.append("x-kept", HeaderValue::from_static("1"));
        assert!(strip_hop_by_hop(&mut h).is_none());
        assert_eq!(h.len(), 1, "only x-kept must remain: {h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn reports_upgrade_only_when_connection_names_it() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("Upgrade"));
        h.append("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(strip_hop_by_hop(&mut h).unwrap(), "websocket");
        let mut h = HeaderMap::new();
        h.append("upgrade", HeaderValue::from_static("websocket"));
        assert!(strip_hop_by_hop(&mut h).is_none());
        assert!(!h.contains_key("upgrade"));
    }

    /// Every forwarding field on, with `X-Forwarded-For` as `xff` says.
    fn all_on(xff: ForwardedFor, host: bool) -> HeadersConfig {
        HeadersConfig {
            x_forwarded_for: xff,
            x_forwarded_proto: true,
            x_forwarded_host: host,
            via: true,
            preserve_host: true,
        }
    }

    #[test]
    fn appends_x_forwarded_for_and_via() {
        let cfg = all_on(ForwardedFor::Append, true);
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("via", HeaderValue::from_static("1.1 lb"));
        h.append("x-forwarded-proto", HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("example.com");
        let added = add_forwarding(
            &mut h,
            &cfg,
            "127.0.0.2".parse().unwrap(),
            Some(&host),
            Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(h["via"], "1.1 lb, 1.1 linger");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert!(
            !h.contains_key("x-forwarded-proto"),
            "the client's is not passed on"
        );
        let mut out = Vec::new();
        added.write(&mut out);
        assert_eq!(out, b"x-forwarded-proto: http\r\n");
    }

    #[test]
    fn fields_the_request_lacks_are_written_after_its_own() {
        let cfg = all_on(ForwardedFor::Replace, false);
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let added = add_forwarding(&mut h, &cfg, "::1".parse().unwrap(), None, Version::HTTP_10);
        assert!(h.is_empty(), "a replaced value leaves the map: {h:?}");
        let mut out = Vec::new();
        added.write(&mut out);
        assert_eq!(
            out,
            b"x-forwarded-for: ::1\r\nx-forwarded-proto: http\r\nvia: 1.0 linger\r\n"
        );
    }

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter() {
        for (h, bytes) in HOP_BY_HOP.iter().zip(HOP_BY_HOP_BYTES) {
            assert!(hop_by_hop_length(h.as_str().len()), "{h}");
            // The two tables name the same fields.
            assert_eq!(h.as_str().as_bytes(), bytes);
            assert!(is_hop_by_hop(&h.as_str().to_ascii_uppercase().into_bytes()));
        }
        assert!(!is_hop_by_hop(b"content-length") && !is_hop_by_hop(b"ta"));
    }

    #[test]
    fn an_ip_text_is_the_address_text_for_every_length() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "10.20.100.9",
            "255.255.255.255",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "1111:2222:3333:4444:5555:6666:255.255.255.255",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(
                ip_text(parsed, &mut [0; 48]),
                parsed.to_string().as_bytes(),
                "{ip}"
            );
        }
    }
}
