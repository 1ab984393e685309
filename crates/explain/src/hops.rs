//! Hops: the connections of a capture grouped by the server they reach, what each hop's
//! idle timeouts measure on the wire, and, when a capture holds a proxy's both sides, which
//! hop feeds which (found by matching requests: method, target and `X-Request-Id`, the
//! forwarded copy a moment after the original and answered no later than it).

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::tcp::{find, Conn, Mark, Side};

/// A close within this long of the last response is a close after the response, not an
/// idle close.
pub const RIGHT_AFTER: f64 = 0.020;
/// A forwarded request follows its original within this long.
const FORWARD_WITHIN: f64 = 2.0;
/// Originals looked at for each request, the most recent first: a busy hop sends many
/// requests within [`FORWARD_WITHIN`].
const SCAN_AT_MOST: usize = 256;

/// A request: its connection and its index there.
pub type ReqRef = (usize, usize);

/// What a hop's idle timeouts measure on the wire.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Idle {
    /// The shortest idle age at which the server closed a connection or refused a request
    /// on it: the server's idle timeout is about this, or shorter.
    pub server_close: Option<f64>,
    pub server_close_at: Option<Mark>,
    /// The longest idle age at which the client reused a connection and got an answer.
    pub longest_reuse: Option<f64>,
    /// The longest idle age at which the client wrote a request on a kept-alive connection,
    /// answered or not.
    pub longest_attempt: Option<f64>,
    /// The shortest idle age at which the client closed a connection itself.
    pub client_close: Option<f64>,
}

/// The connections to one server.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub server: SocketAddr,
    pub conns: Vec<usize>,
    pub requests: usize,
    pub idle: Idle,
    /// The server of the hop this one's server forwards to (its server is a proxy).
    pub feeds: Option<SocketAddr>,
    /// The server of the hop whose server is this one's client (its client is a proxy).
    pub fed_by: Option<SocketAddr>,
    /// The client keeps connections idle longer than the server does.
    pub wrong_way: bool,
}

/// The hops of a capture and the requests forwarded between them.
#[derive(Debug, Default)]
pub struct Hops {
    pub hops: Vec<Hop>,
    /// Each connection's hop.
    pub hop_of: HashMap<usize, usize>,
    /// A forwarded request → the original it copies.
    pub original: HashMap<ReqRef, ReqRef>,
    /// An original → its forwarded copies (retries included).
    pub copies: HashMap<ReqRef, Vec<ReqRef>>,
}

/// When the exchange before request `i` ended (or the connection opened): the start of
/// the idle time before it.
pub fn idle_start(c: &Conn, i: usize) -> Option<f64> {
    if i == 0 && c.http.trimmed == 0 {
        return c.half(Side::Client).syn.map(|m| m.time);
    }
    c.http.idle_start(i)
}

impl Idle {
    /// What `self` and `other` measure together (`self` from the earlier connections).
    pub fn merge(&mut self, other: &Idle) {
        if let Some(s) = other.server_close {
            if self.server_close.is_none_or(|m| s < m) {
                self.server_close = Some(s);
                self.server_close_at = other.server_close_at;
            }
        }
        if let Some(r) = other.longest_reuse {
            self.longest_reuse = max_opt(self.longest_reuse, r);
        }
        if let Some(a) = other.longest_attempt {
            self.longest_attempt = max_opt(self.longest_attempt, a);
        }
        if let Some(c) = other.client_close {
            self.client_close = min_opt(self.client_close, c);
        }
    }
}

fn min_opt(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn max_opt(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.max(b)))
}

/// What the connections `ids` of one hop measure of its idle timeouts.
pub fn measure(conns: &[Conn], ids: &[usize]) -> Idle {
    let mut idle = Idle::default();
    for c in ids.iter().filter_map(|&id| find(conns, id)) {
        let reqs = &c.http.requests;
        let resps = &c.http.responses;
        // The exchanges no longer held were all answered.
        if let Some(age) = c.http.trimmed_longest_idle {
            idle.longest_attempt = max_opt(idle.longest_attempt, age);
            idle.longest_reuse = max_opt(idle.longest_reuse, age);
        }
        let first = usize::from(c.http.trimmed == 0);
        for (i, req) in reqs.iter().enumerate().skip(first) {
            let Some(start) = idle_start(c, i) else {
                continue;
            };
            let age = req.start.time - start;
            idle.longest_attempt = max_opt(idle.longest_attempt, age);
            if resps.get(i).is_some() {
                idle.longest_reuse = max_opt(idle.longest_reuse, age);
            }
        }
        let answered = resps.len();
        // The server's close of an idle connection, or its refusal (no answer, then a
        // close) of the request written after one: its idle timeout is at most that age.
        let last_ended = resps
            .last()
            .is_none_or(|r| r.end.is_some() && r.cut.is_none());
        if let Some((mark, _)) = c.close_of(Side::Server).filter(|_| last_ended) {
            let pending = reqs.len() > answered;
            let i = if pending { answered } else { reqs.len() };
            // A close while the client was gone says nothing of the server's idle timeout.
            let client_left_first = c
                .close_of(Side::Client)
                .is_some_and(|(m, _)| m.packet < mark.packet);
            if !client_left_first && i > 0 {
                if let Some(start) = idle_start(c, i) {
                    let at = if pending {
                        reqs[i].start.time.min(mark.time)
                    } else {
                        mark.time
                    };
                    let age = at - start;
                    if age >= RIGHT_AFTER && idle.server_close.is_none_or(|s| age < s) {
                        idle.server_close = Some(age);
                        idle.server_close_at = Some(mark);
                    }
                }
            }
        }
        if let Some((mark, _)) = c.close_of(Side::Client) {
            let quiet = reqs.len() == answered && !reqs.is_empty();
            let server_first = c
                .close_of(Side::Server)
                .is_some_and(|(s, _)| s.packet < mark.packet);
            if quiet && !server_first {
                if let Some(start) = idle_start(c, reqs.len()) {
                    let age = mark.time - start;
                    if age >= RIGHT_AFTER {
                        idle.client_close = min_opt(idle.client_close, age);
                    }
                }
            }
        }
    }
    idle
}

/// The hop that feeds another: its index, the median forwarding delay, and each forwarded
/// request with its original.
type Feed = (usize, f64, Vec<(ReqRef, ReqRef)>);

struct Seen<'a> {
    key: (&'a str, &'a str, Option<&'a str>),
    time: f64,
    /// When its response began, if one came.
    answered: Option<f64>,
    req: ReqRef,
}

impl Seen<'_> {
    /// Whether `self` can be a proxy's copy of `orig`: the same request, sent after it, and
    /// answered no later than it (a proxy answers its client after its upstream answers).
    fn copies(&self, orig: &Seen<'_>) -> bool {
        self.key == orig.key
            && match (self.answered, orig.answered) {
                (Some(copy), Some(orig)) => copy <= orig,
                _ => true,
            }
    }
}

/// Groups `conns` into hops and lines them up.
pub fn line_up(conns: &[Conn]) -> Hops {
    let mut hops = Hops::default();
    let mut by_server: HashMap<SocketAddr, usize> = HashMap::new();
    for c in conns {
        let h = *by_server.entry(c.server()).or_insert_with(|| {
            hops.hops.push(Hop {
                server: c.server(),
                conns: Vec::new(),
                requests: 0,
                idle: Idle::default(),
                feeds: None,
                fed_by: None,
                wrong_way: false,
            });
            hops.hops.len() - 1
        });
        hops.hops[h].conns.push(c.id);
        hops.hops[h].requests += c.http.request_count();
        hops.hop_of.insert(c.id, h);
    }
    for h in &mut hops.hops {
        h.idle = measure(conns, &h.conns);
        if let (Some(s), Some(a)) = (h.idle.server_close, h.idle.longest_attempt) {
            h.wrong_way = a >= s;
        }
    }
    if hops.hops.len() < 2 {
        return hops;
    }
    // Every request by hop, in time order.
    let mut seen: Vec<Vec<Seen<'_>>> = (0..hops.hops.len()).map(|_| Vec::new()).collect();
    for c in conns {
        let h = hops.hop_of[&c.id];
        for (i, r) in c.http.requests.iter().enumerate() {
            seen[h].push(Seen {
                key: (r.method.as_str(), r.target.as_str(), r.id.as_deref()),
                time: r.start.time,
                answered: c.http.responses.get(i).map(|resp| resp.start.time),
                req: (c.id, i),
            });
        }
    }
    for s in &mut seen {
        s.sort_by(|a, b| a.time.total_cmp(&b.time));
    }
    // For each ordered pair of hops: the original in `front` of each request in `back`.
    let n = hops.hops.len();
    let mut best: Vec<Option<Feed>> = vec![None; n];
    for back in 0..n {
        for front in 0..n {
            if back == front || seen[back].is_empty() {
                continue;
            }
            let mut pairs = Vec::new();
            let mut delays = Vec::new();
            for b in &seen[back] {
                let end = seen[front].partition_point(|f| f.time <= b.time);
                let found = seen[front][..end]
                    .iter()
                    .rev()
                    .take_while(|f| b.time - f.time <= FORWARD_WITHIN)
                    .take(SCAN_AT_MOST)
                    .find(|f| b.copies(f));
                if let Some(f) = found {
                    pairs.push((b.req, f.req));
                    delays.push(b.time - f.time);
                }
            }
            if pairs.len() * 2 < seen[back].len() {
                continue;
            }
            delays.sort_by(f64::total_cmp);
            let median = delays[delays.len() / 2];
            let better = best[back]
                .as_ref()
                .is_none_or(|(_, m, p)| (pairs.len(), -median) > (p.len(), -*m));
            if better {
                best[back] = Some((front, median, pairs));
            }
        }
    }
    // A pair matched both ways (requests without ids): the direction with the shorter
    // delay is the forwarding one.
    for back in 0..n {
        let Some((front, median, _)) = &best[back] else {
            continue;
        };
        let mutual = best[*front]
            .as_ref()
            .is_some_and(|(f2, m2, _)| *f2 == back && m2 < median);
        if mutual {
            best[back] = None;
        }
    }
    for (back, b) in best.into_iter().enumerate() {
        let Some((front, _, pairs)) = b else { continue };
        hops.hops[back].fed_by = Some(hops.hops[front].server);
        hops.hops[front].feeds = Some(hops.hops[back].server);
        for (copy, orig) in pairs {
            hops.original.insert(copy, orig);
            hops.copies.entry(orig).or_default().push(copy);
        }
    }
    hops
}

impl Hops {
    /// Whether the original of a forwarded request got a whole answer that the proxy did
    /// not make up (a 5xx that no copy received from upstream is the proxy's own).
    /// `None` when the request is not a forwarded copy.
    pub fn delivered_downstream(&self, conns: &[Conn], copy: ReqRef) -> Option<bool> {
        let orig = *self.original.get(&copy)?;
        let c = find(conns, orig.0)?;
        let Some(resp) = c.http.responses.get(orig.1) else {
            return Some(false);
        };
        if resp.end.is_none() || resp.cut.is_some() {
            return Some(false);
        }
        if resp.status >= 500 {
            let from_upstream = self.copies.get(&orig).is_some_and(|cs| {
                cs.iter().any(|&(cc, ci)| {
                    find(conns, cc)
                        .and_then(|up| up.http.responses.get(ci))
                        .is_some_and(|r| r.status == resp.status)
                })
            });
            return Some(from_upstream);
        }
        Some(true)
    }
}
