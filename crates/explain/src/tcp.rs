//! TCP reassembly: each connection's two byte streams in sequence order, whatever order the
//! segments arrived in and however often they were retransmitted, with the SYN, FIN and RST
//! of each side, the peer's acknowledgements, and retransmissions that went unanswered.
//!
//! Only bytes not yet delivered are kept, out-of-order segments up to [`MAX_PENDING`] bytes a
//! direction; the HTTP tracker consumes what is delivered and keeps no payload either.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;

use serde::Serialize;

use crate::capture::Segment;
use crate::http::Conversation;

/// Most bytes held out of order in one direction; past it the missing bytes are skipped
/// (they were not captured) and counted.
pub const MAX_PENDING: usize = 1 << 20;
/// Timeline events kept per connection (the most recent).
pub const MAX_EVENTS: usize = 400;

/// Where something happened: its packet number and time (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mark {
    pub packet: u64,
    pub time: f64,
}

/// The two ends of a connection: the client opened it (sent the SYN) or, with no SYN in
/// the capture, sent the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// A line of a connection's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub mark: Mark,
    pub side: Side,
    pub what: String,
}

/// Data retransmitted while the peer acknowledged none of it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stall {
    /// When the oldest unacknowledged byte was first sent.
    pub first_sent: Mark,
    pub last_retransmit: Mark,
    pub retransmits: u64,
    /// Bytes sent and not acknowledged when the stall began.
    pub in_flight: u64,
    /// The peer's RST ended it: the path worked.
    pub reset: bool,
    /// The sender's own RST ended it: it gave up.
    pub gave_up: bool,
    /// The peer acknowledged the data in the end.
    pub acked: bool,
}

impl Stall {
    pub fn seconds(&self) -> f64 {
        self.last_retransmit.time - self.first_sent.time
    }
}

/// One direction of a connection.
#[derive(Debug, Default)]
pub struct Half {
    /// Sequence number of the first data byte.
    base: Option<u32>,
    /// Offset of the next byte to deliver.
    next: u64,
    pending: BTreeMap<u64, (Vec<u8>, Mark)>,
    pending_bytes: usize,
    /// End of the highest byte sent.
    pub sent_high: u64,
    /// Bytes the peer has acknowledged.
    pub acked: u64,
    /// The highest acknowledgement, even beyond the data seen.
    highest_ack: u64,
    pub syn: Option<Mark>,
    pub fin: Option<Mark>,
    pub rst: Option<Mark>,
    /// Bytes delivered in order.
    pub bytes: u64,
    /// Bytes never captured (skipped over).
    pub missing: u64,
    pub retransmissions: u64,
    /// The last segment that sent new data.
    pub last_data: Option<Mark>,
    /// Bytes delivered when the peer sent its FIN.
    pub bytes_at_peer_fin: Option<u64>,
    unacked_since: Option<Mark>,
    stall: Option<Stall>,
    /// The longest stall of this direction.
    pub longest_stall: Option<Stall>,
}

impl Half {
    /// `seq` as an offset in the stream, taken near the current position (sequence numbers
    /// wrap at 4 GiB).
    fn offset(&self, seq: u32) -> Option<u64> {
        let base = self.base?;
        let low = u64::from(seq.wrapping_sub(base));
        let near = self.next.max(self.acked);
        let mut v = (near & !0xffff_ffff) | low;
        if v + (1 << 31) < near {
            v += 1 << 32;
        } else if v > near + (1 << 31) && v >= 1 << 32 {
            v -= 1 << 32;
        }
        Some(v)
    }

    /// The peer acknowledged up to `ack`.
    fn acknowledged(&mut self, ack: u32) {
        let Some(at) = self.offset(ack) else { return };
        self.highest_ack = self.highest_ack.max(at);
        if at > self.acked && at <= self.sent_high + 1 {
            self.acked = at;
            if self.acked >= self.sent_high {
                self.unacked_since = None;
            }
            if let Some(mut s) = self.stall.take() {
                s.acked = true;
                self.keep_stall(s);
            }
        }
    }

    fn keep_stall(&mut self, s: Stall) {
        if self.longest_stall.is_none_or(|l| s.seconds() > l.seconds()) {
            self.longest_stall = Some(s);
        }
    }

    /// Ends the current stall: the peer's RST (`reset`), the sender's own RST (`gave_up`),
    /// or the end of the capture (neither).
    pub fn end_stall(&mut self, reset: bool, gave_up: bool) {
        if let Some(mut s) = self.stall.take() {
            s.reset = reset;
            s.gave_up = gave_up;
            self.keep_stall(s);
        }
    }

    /// A segment's data: what it adds to the stream, in order.
    fn data(&mut self, seq: u32, payload: &[u8], mark: Mark) -> Vec<(Vec<u8>, Mark)> {
        if self.base.is_none() {
            self.base = Some(seq);
        }
        let Some(start) = self.offset(seq) else {
            return Vec::new();
        };
        let end = start + payload.len() as u64;
        // Bytes seen before (delivered, or held out of order): a retransmission. A segment
        // that fills a gap below the highest byte sent is not one.
        let seen = start < self.next || self.pending.contains_key(&start);
        if seen && !payload.is_empty() {
            self.retransmissions += 1;
            if self.acked < end {
                let in_flight = self.sent_high.saturating_sub(self.acked);
                let first = self.unacked_since.unwrap_or(mark);
                let s = self.stall.get_or_insert(Stall {
                    first_sent: first,
                    last_retransmit: mark,
                    retransmits: 0,
                    in_flight,
                    reset: false,
                    gave_up: false,
                    acked: false,
                });
                s.last_retransmit = mark;
                s.retransmits += 1;
            }
        }
        if end > self.sent_high {
            self.last_data = Some(mark);
            if self.unacked_since.is_none() {
                self.unacked_since = Some(mark);
            }
            self.sent_high = end;
        }
        let mut out = Vec::new();
        if end <= self.next {
            return out;
        }
        if start > self.next {
            if self.pending_bytes + payload.len() > MAX_PENDING {
                self.skip_gap(&mut out);
            }
            if start > self.next {
                self.pending_bytes += payload.len();
                self.pending.insert(start, (payload.to_vec(), mark));
                return out;
            }
        }
        let skip = (self.next - start) as usize;
        self.push(&mut out, &payload[skip..], mark);
        self.drain(&mut out);
        out
    }

    fn push(&mut self, out: &mut Vec<(Vec<u8>, Mark)>, bytes: &[u8], mark: Mark) {
        self.next += bytes.len() as u64;
        self.bytes += bytes.len() as u64;
        out.push((bytes.to_vec(), mark));
    }

    /// Delivers what the pending segments now continue.
    fn drain(&mut self, out: &mut Vec<(Vec<u8>, Mark)>) {
        while let Some(entry) = self.pending.first_entry() {
            let at = *entry.key();
            if at > self.next {
                break;
            }
            let (bytes, mark) = entry.remove();
            self.pending_bytes -= bytes.len();
            let end = at + bytes.len() as u64;
            if end > self.next {
                let skip = (self.next - at) as usize;
                self.push(out, &bytes[skip..], mark);
            }
        }
    }

    /// Gives up on the bytes before the first pending segment: they were not captured.
    fn skip_gap(&mut self, out: &mut Vec<(Vec<u8>, Mark)>) {
        if let Some((&at, _)) = self.pending.first_key_value() {
            if at > self.next {
                self.missing += at - self.next;
                self.next = at;
            }
            self.drain(out);
        }
    }
}

/// One TCP connection.
#[derive(Debug)]
pub struct Conn {
    pub id: usize,
    /// `[0]` sent the first segment seen.
    pub ends: [SocketAddr; 2],
    /// Which of `ends` is the client, once known.
    client: Option<usize>,
    pub halves: [Half; 2],
    pub first: Mark,
    pub last: Mark,
    /// Round-trip time from the handshake.
    pub rtt: Option<f64>,
    pub http: Conversation,
    pub events: VecDeque<Event>,
    pub events_dropped: u64,
}

impl Conn {
    fn new(id: usize, seg: &Segment, mark: Mark) -> Self {
        Self {
            id,
            ends: [seg.src, seg.dst],
            client: None,
            halves: Default::default(),
            first: mark,
            last: mark,
            rtt: None,
            http: Conversation::default(),
            events: VecDeque::new(),
            events_dropped: 0,
        }
    }

    fn client_index(&self) -> usize {
        self.client.unwrap_or(0)
    }

    pub fn client(&self) -> SocketAddr {
        self.ends[self.client_index()]
    }

    pub fn server(&self) -> SocketAddr {
        self.ends[1 - self.client_index()]
    }

    /// The half that `side` sends.
    pub fn half(&self, side: Side) -> &Half {
        let c = self.client_index();
        match side {
            Side::Client => &self.halves[c],
            Side::Server => &self.halves[1 - c],
        }
    }

    /// Whether the capture missed bytes of this connection (known once it is read whole):
    /// what did not happen on the wire cannot be told from what was not captured.
    pub fn has_gaps(&self) -> bool {
        self.halves[0].missing + self.halves[1].missing > 0
    }

    /// Whether the client's SYN is in the capture.
    pub fn opened_in_capture(&self) -> bool {
        self.half(Side::Client).syn.is_some()
    }

    /// The first FIN or RST of `side`.
    pub fn close_of(&self, side: Side) -> Option<(Mark, &'static str)> {
        let h = self.half(side);
        match (h.fin, h.rst) {
            (Some(f), Some(r)) if r.packet < f.packet => Some((r, "RST")),
            (Some(f), _) => Some((f, "FIN")),
            (None, Some(r)) => Some((r, "RST")),
            (None, None) => None,
        }
    }

    /// Closed by both sides, or reset.
    pub fn finished(&self) -> bool {
        let (a, b) = (&self.halves[0], &self.halves[1]);
        a.rst.is_some() || b.rst.is_some() || (a.fin.is_some() && b.fin.is_some())
    }

    fn side_of(&self, i: usize) -> Side {
        if i == self.client_index() {
            Side::Client
        } else {
            Side::Server
        }
    }

    pub(crate) fn event(&mut self, mark: Mark, side: Side, what: String) {
        push_event(&mut self.events, &mut self.events_dropped, mark, side, what);
    }

    /// The end of this connection's part of the capture: an open stall ends here, and data
    /// held behind bytes that were never captured is delivered after the gap.
    pub fn finish(&mut self) {
        for i in 0..2 {
            let side = self.side_of(i);
            let h = &mut self.halves[i];
            h.end_stall(false, false);
            let mut out = Vec::new();
            h.skip_gap(&mut out);
            // Bytes the peer acknowledged that the capture never saw.
            let fin = u64::from(h.fin.is_some());
            h.missing += h.highest_ack.saturating_sub(h.sent_high + fin);
            for (bytes, at) in out {
                self.http
                    .feed(side, &bytes, at, &mut self.events, &mut self.events_dropped);
            }
        }
    }
}

pub(crate) fn push_event(
    events: &mut VecDeque<Event>,
    dropped: &mut u64,
    mark: Mark,
    side: Side,
    what: String,
) {
    if events.len() == MAX_EVENTS {
        events.pop_front();
        *dropped += 1;
    }
    events.push_back(Event { mark, side, what });
}

/// The connection `id` among `conns` (in order of id), if it is still held.
pub fn find(conns: &[Conn], id: usize) -> Option<&Conn> {
    conns
        .binary_search_by_key(&id, |c| c.id)
        .ok()
        .map(|i| &conns[i])
}

/// The connections of a capture still held: those that may yet change or that another
/// connection's findings may still read. Ids count every connection seen.
#[derive(Debug, Default)]
pub struct Tracker {
    by_ends: HashMap<(SocketAddr, SocketAddr), usize>,
    /// In order of id.
    pub conns: Vec<Conn>,
    next_id: usize,
}

impl Tracker {
    pub fn segment(&mut self, seg: &Segment) {
        let mark = Mark {
            packet: seg.number,
            time: seg.time,
        };
        let key = if seg.src <= seg.dst {
            (seg.src, seg.dst)
        } else {
            (seg.dst, seg.src)
        };
        let fresh_syn = seg.syn && !seg.has_ack;
        let held = self
            .by_ends
            .get(&key)
            .and_then(|&id| self.conns.binary_search_by_key(&id, |c| c.id).ok());
        let idx = match held {
            Some(i) if !(fresh_syn && self.conns[i].finished()) => i,
            _ => {
                let id = self.next_id;
                self.next_id += 1;
                self.conns.push(Conn::new(id, seg, mark));
                self.by_ends.insert(key, id);
                self.conns.len() - 1
            }
        };
        let conn = &mut self.conns[idx];
        conn.last = mark;
        let i = usize::from(conn.ends[0] != seg.src);
        let j = 1 - i;
        if conn.client.is_none() {
            if seg.syn {
                conn.client = Some(if seg.has_ack { j } else { i });
            } else if !seg.payload.is_empty() {
                conn.client = Some(if seg.payload.starts_with(b"HTTP/") {
                    j
                } else {
                    i
                });
            }
        }
        let side = conn.side_of(i);
        if seg.syn {
            let h = &mut conn.halves[i];
            if h.syn.is_none() {
                h.syn = Some(mark);
                h.base = Some(seg.seq.wrapping_add(1));
                let what = if seg.has_ack { "SYN-ACK" } else { "SYN" };
                conn.event(mark, side, what.to_string());
            }
        } else if seg.has_ack && conn.rtt.is_none() && side == Side::Client {
            // The handshake's last ACK: one round trip after the SYN, wherever the
            // capture was taken.
            if let (Some(syn), Some(_)) = (conn.halves[i].syn, conn.halves[j].syn) {
                conn.rtt = Some(mark.time - syn.time);
            }
        }
        if seg.has_ack {
            conn.halves[j].acknowledged(seg.ack);
        }
        if !seg.payload.is_empty() {
            let retrans_before = conn.halves[i].retransmissions;
            let chunks = conn.halves[i].data(seg.seq, &seg.payload, mark);
            if conn.halves[i].retransmissions > retrans_before
                && conn.halves[i].stall.is_some_and(|s| s.retransmits <= 3)
            {
                let n = seg.payload.len();
                conn.event(
                    mark,
                    side,
                    format!("retransmits {n} bytes, not acknowledged"),
                );
            }
            for (bytes, at) in chunks {
                conn.http
                    .feed(side, &bytes, at, &mut conn.events, &mut conn.events_dropped);
            }
            conn.http.trim();
        }
        if seg.fin && conn.halves[i].fin.is_none() {
            let h = &mut conn.halves[i];
            let mut out = Vec::new();
            h.skip_gap(&mut out);
            h.fin = Some(mark);
            conn.halves[j].bytes_at_peer_fin = Some(conn.halves[j].bytes);
            for (bytes, at) in out {
                conn.http
                    .feed(side, &bytes, at, &mut conn.events, &mut conn.events_dropped);
            }
            conn.event(mark, side, "FIN".to_string());
            conn.http.closed(
                side,
                mark,
                "FIN",
                &mut conn.events,
                &mut conn.events_dropped,
            );
        }
        if seg.rst && conn.halves[i].rst.is_none() {
            conn.halves[i].rst = Some(mark);
            // The peer's RST answers the data (the path works); the sender's own gives up.
            conn.halves[i].end_stall(false, true);
            conn.halves[j].end_stall(true, false);
            conn.event(mark, side, "RST".to_string());
            conn.http.closed(
                side,
                mark,
                "RST",
                &mut conn.events,
                &mut conn.events_dropped,
            );
        }
    }

    /// Every connection seen so far.
    pub fn seen(&self) -> usize {
        self.next_id
    }

    /// The connections that `done` picks, taken out of the tracker (in order of id).
    pub fn take(&mut self, mut done: impl FnMut(&Conn) -> bool) -> Vec<Conn> {
        let (gone, kept): (Vec<Conn>, Vec<Conn>) = std::mem::take(&mut self.conns)
            .into_iter()
            .partition(|c| done(c));
        self.conns = kept;
        for c in &gone {
            let key = if c.ends[0] <= c.ends[1] {
                (c.ends[0], c.ends[1])
            } else {
                (c.ends[1], c.ends[0])
            };
            if self.by_ends.get(&key) == Some(&c.id) {
                self.by_ends.remove(&key);
            }
        }
        gone
    }

    /// The end of the capture: every connection's part of it ends.
    pub fn finish(&mut self) {
        for c in &mut self.conns {
            c.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(packet: u64) -> Mark {
        Mark {
            packet,
            time: packet as f64,
        }
    }

    fn delivered(out: Vec<(Vec<u8>, Mark)>) -> Vec<u8> {
        out.into_iter().flat_map(|(b, _)| b).collect()
    }

    #[test]
    fn out_of_order_segments_wait_for_the_bytes_before_them() {
        let mut h = Half {
            base: Some(100),
            ..Half::default()
        };
        assert!(h.data(105, b"fghij", at(1)).is_empty());
        assert_eq!(delivered(h.data(100, b"abcde", at(2))), b"abcdefghij");
        assert_eq!(h.retransmissions, 0, "a gap filled is not a retransmission");
        // The same bytes again, and an overlap that adds two.
        assert!(h.data(100, b"abcde", at(3)).is_empty());
        assert_eq!(delivered(h.data(108, b"ijkl", at(4))), b"kl");
        assert_eq!(h.retransmissions, 2);
        assert_eq!(h.bytes, 12);
    }

    #[test]
    fn sequence_numbers_wrap_past_two_to_the_32() {
        let mut h = Half {
            base: Some(u32::MAX - 2),
            ..Half::default()
        };
        assert_eq!(delivered(h.data(u32::MAX - 2, b"abc", at(1))), b"abc");
        assert_eq!(delivered(h.data(0, b"def", at(2))), b"def");
        h.acknowledged(3);
        assert_eq!(h.acked, 6);
    }

    #[test]
    fn retransmissions_without_an_ack_are_a_stall_until_acknowledged() {
        let mut h = Half {
            base: Some(0),
            ..Half::default()
        };
        h.data(0, b"hello", at(1));
        h.data(0, b"hello", at(3));
        h.data(0, b"hello", at(7));
        h.acknowledged(5);
        let s = h.longest_stall.expect("a stall");
        assert_eq!((s.first_sent.packet, s.last_retransmit.packet), (1, 7));
        assert_eq!((s.retransmits, s.in_flight), (2, 5));
        assert!(s.acked && !s.reset);
        assert_eq!(s.seconds(), 6.0);
    }

    fn seg(
        number: u64,
        from_client: bool,
        seq: u32,
        ack: u32,
        flags: &str,
        data: &[u8],
    ) -> Segment {
        let (c, sv): (SocketAddr, SocketAddr) = (
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let (src, dst) = if from_client { (c, sv) } else { (sv, c) };
        Segment {
            number,
            time: number as f64 / 1000.0,
            src,
            dst,
            seq,
            ack,
            syn: flags.contains('S'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
            has_ack: flags.contains('A'),
            payload: data.to_vec(),
        }
    }

    #[test]
    fn a_connection_knows_its_client_and_the_bytes_the_capture_missed() {
        let mut t = Tracker::default();
        // The SYN-ACK first: its receiver is the client.
        t.segment(&seg(1, false, 500, 1, "SA", b""));
        t.segment(&seg(2, true, 1, 501, "A", b""));
        t.segment(&seg(
            3,
            true,
            1,
            501,
            "PA",
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        ));
        // The response (38 bytes) is not in the capture; the client acknowledges it.
        t.segment(&seg(4, true, 28, 539, "A", b""));
        t.segment(&seg(5, true, 28, 539, "FA", b""));
        t.finish();
        let c = &t.conns[0];
        assert_eq!(c.client().to_string(), "10.0.0.1:40000");
        assert_eq!(c.http.requests.len(), 1);
        assert_eq!(c.half(Side::Server).missing, 38);
        assert!(c.has_gaps());
        assert_eq!(
            c.close_of(Side::Client).map(|(m, how)| (m.packet, how)),
            Some((5, "FIN"))
        );
    }
}
