//! Writes small captures for the tests: TCP conversations with exact times, sequence and
//! acknowledgement numbers, framed for a chosen link type, in pcap or pcapng.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use etherparse::PacketBuilder;

/// How packets are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// Ethernet with an 802.1Q tag.
    Vlan,
    /// BSD loopback (DLT_NULL), little-endian address family.
    Null,
    /// Linux cooked capture v2 (`tcpdump -i any`).
    Sll2,
}

impl Link {
    fn linktype(self) -> u32 {
        match self {
            Self::Ethernet | Self::Vlan => 1,
            Self::Null => 0,
            Self::Sll2 => 276,
        }
    }
}

#[derive(Debug, Clone)]
struct Frame {
    time: f64,
    bytes: Vec<u8>,
}

/// A capture being written.
#[derive(Debug, Clone)]
pub struct Capture {
    link: Link,
    frames: Vec<Frame>,
}

/// Who sends a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Client,
    Server,
}

/// A TCP connection of a [`Capture`].
#[derive(Debug, Clone)]
pub struct Conn {
    client: SocketAddr,
    server: SocketAddr,
    /// Next sequence number of each side.
    seq: [u32; 2],
}

/// The first packet's time.
pub const T0: f64 = 1_767_225_600.0;

impl Capture {
    pub fn new(link: Link) -> Self {
        Self {
            link,
            frames: Vec::new(),
        }
    }

    /// A capture with one connection, its handshake done at time 0.
    pub fn opened(link: Link, client: &str, server: &str, isn: u32, rtt: f64) -> (Self, Conn) {
        let mut cap = Self::new(link);
        let mut c = cap.conn(client, server, isn);
        cap.handshake(&mut c, 0.0, rtt);
        (cap, c)
    }

    /// A connection from `client` to `server`; `isn` seeds both initial sequence numbers.
    pub fn conn(&self, client: &str, server: &str, isn: u32) -> Conn {
        Conn {
            client: client.parse().expect("client address"),
            server: server.parse().expect("server address"),
            seq: [isn, isn.wrapping_mul(7).wrapping_add(1_000_003)],
        }
    }

    fn push(&mut self, time: f64, ip: Vec<u8>, v6: bool) {
        let mut bytes = Vec::new();
        let ethertype: u16 = if v6 { 0x86dd } else { 0x0800 };
        match self.link {
            Link::Ethernet => {
                bytes.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
                bytes.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::Vlan => {
                bytes.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
                bytes.extend_from_slice(&0x8100u16.to_be_bytes());
                bytes.extend_from_slice(&42u16.to_be_bytes());
                bytes.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::Null => {
                let family: u32 = if v6 { 24 } else { 2 };
                bytes.extend_from_slice(&family.to_le_bytes());
            }
            Link::Sll2 => {
                bytes.extend_from_slice(&ethertype.to_be_bytes());
                bytes.extend_from_slice(&[0, 0]);
                bytes.extend_from_slice(&1u32.to_be_bytes());
                bytes.extend_from_slice(&772u16.to_be_bytes());
                bytes.extend_from_slice(&[0, 6]);
                bytes.extend_from_slice(&[0; 8]);
            }
        }
        bytes.extend_from_slice(&ip);
        self.frames.push(Frame {
            time: T0 + time,
            bytes,
        });
    }

    /// One segment from `by` on `c`: its flags (S, F, R, P) and `data`, which advance
    /// `by`'s sequence number.
    fn segment(&mut self, c: &mut Conn, by: By, time: f64, flags: &str, data: &[u8], ack: bool) {
        let (src, dst, i) = match by {
            By::Client => (c.client, c.server, 0),
            By::Server => (c.server, c.client, 1),
        };
        let seq = c.seq[i];
        let ack_no = c.seq[1 - i];
        let mut ip = Vec::new();
        let v6 = src.is_ipv6();
        let b = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            _ => panic!("one address family per connection"),
        };
        let mut t = b.tcp(src.port(), dst.port(), seq, 65535);
        if flags.contains('S') {
            t = t.syn();
        }
        if flags.contains('F') {
            t = t.fin();
        }
        if flags.contains('R') {
            t = t.rst();
        }
        if flags.contains('P') {
            t = t.psh();
        }
        if ack {
            t = t.ack(ack_no);
        }
        t.write(&mut ip, data).expect("a packet");
        self.push(time, ip, v6);
        let advance = data.len() as u32 + u32::from(flags.contains('S') || flags.contains('F'));
        c.seq[i] = seq.wrapping_add(advance);
    }

    /// SYN, SYN-ACK, ACK at `t`, `t` + rtt/2, `t` + rtt.
    pub fn handshake(&mut self, c: &mut Conn, t: f64, rtt: f64) {
        self.segment(c, By::Client, t, "S", &[], false);
        self.segment(c, By::Server, t + rtt / 2.0, "S", &[], true);
        self.segment(c, By::Client, t + rtt, "", &[], true);
    }

    /// `data` from `by` at `t`, acknowledged by the peer 50 µs later.
    pub fn send(&mut self, c: &mut Conn, by: By, t: f64, data: &[u8]) {
        self.segment(c, by, t, "P", data, true);
        let peer = match by {
            By::Client => By::Server,
            By::Server => By::Client,
        };
        self.segment(c, peer, t + 0.000_05, "", &[], true);
    }

    /// `data` from `by` at `t`, with no acknowledgement.
    pub fn send_unacked(&mut self, c: &mut Conn, by: By, t: f64, data: &[u8]) {
        self.segment(c, by, t, "P", data, true);
    }

    /// The last `data` sent by `by` again, at `t`.
    pub fn retransmit(&mut self, c: &mut Conn, by: By, t: f64, data: &[u8]) {
        let i = usize::from(by == By::Server);
        c.seq[i] = c.seq[i].wrapping_sub(data.len() as u32);
        self.segment(c, by, t, "P", data, true);
    }

    /// `data` from `by` in two segments that the capture sees in the wrong order: the
    /// second half at `t`, the first 100 µs later; the peer acknowledges both after.
    pub fn send_reordered(&mut self, c: &mut Conn, by: By, t: f64, data: &[u8]) {
        let i = usize::from(by == By::Server);
        let half = data.len() / 2;
        let start = c.seq[i];
        c.seq[i] = start.wrapping_add(half as u32);
        self.segment(c, by, t, "P", &data[half..], true);
        c.seq[i] = start;
        self.segment(c, by, t + 0.000_1, "", &data[..half], true);
        c.seq[i] = start.wrapping_add(data.len() as u32);
        let peer = match by {
            By::Client => By::Server,
            By::Server => By::Client,
        };
        self.segment(c, peer, t + 0.000_15, "", &[], true);
    }

    /// A request from the client at `t` and the server's response 1 ms later.
    pub fn exchange(&mut self, c: &mut Conn, t: f64, request: &[u8], response: &[u8]) {
        self.send(c, By::Client, t, request);
        self.send(c, By::Server, t + 0.001, response);
    }

    /// The server's FIN at `t`; the client writes `request` `after` seconds later, and the
    /// server's kernel answers it with an RST.
    pub fn write_into_close(&mut self, c: &mut Conn, t: f64, after: f64, request: &[u8]) {
        self.fin(c, By::Server, t);
        self.send_unacked(c, By::Client, t + after, request);
        self.rst(c, By::Server, t + after + 0.000_1);
    }

    /// A FIN from `by` at `t`, acknowledged by the peer 50 µs later.
    pub fn fin(&mut self, c: &mut Conn, by: By, t: f64) {
        self.segment(c, by, t, "F", &[], true);
        let peer = match by {
            By::Client => By::Server,
            By::Server => By::Client,
        };
        self.segment(c, peer, t + 0.000_05, "", &[], true);
    }

    /// An RST from `by` at `t`.
    pub fn rst(&mut self, c: &mut Conn, by: By, t: f64) {
        self.segment(c, by, t, "R", &[], true);
    }

    fn sorted(&self) -> Vec<&Frame> {
        let mut f: Vec<&Frame> = self.frames.iter().collect();
        f.sort_by(|a, b| a.time.total_cmp(&b.time));
        f
    }

    /// The capture as a pcap file (microsecond times, little-endian).
    pub fn pcap(&self) -> Vec<u8> {
        let mut out = self.pcap_header();
        for f in self.sorted() {
            pcap_record(&mut out, f);
        }
        out
    }

    /// The file header of [`Capture::pcap`].
    pub fn pcap_header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&self.link.linktype().to_le_bytes());
        out
    }

    /// The pcap records of the packets up to `until` seconds, in time order, taken out of
    /// the capture: a long capture is written piece by piece after its header.
    pub fn take_pcap_records(&mut self, until: f64) -> Vec<u8> {
        let (now, later): (Vec<Frame>, Vec<Frame>) = std::mem::take(&mut self.frames)
            .into_iter()
            .partition(|f| f.time <= T0 + until);
        self.frames = later;
        let mut now = now;
        now.sort_by(|a, b| a.time.total_cmp(&b.time));
        let mut out = Vec::new();
        for f in &now {
            pcap_record(&mut out, f);
        }
        out
    }

    /// The capture as a pcapng file: a section header, one interface (microsecond
    /// times), enhanced packet blocks.
    pub fn pcapng(&self) -> Vec<u8> {
        fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
            let pad = (4 - body.len() % 4) % 4;
            let len = (12 + body.len() + pad) as u32;
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(&vec![0; pad]);
            out.extend_from_slice(&len.to_le_bytes());
        }
        let mut out = Vec::new();
        let mut shb = Vec::new();
        shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        block(&mut out, 0x0a0d_0d0a, &shb);
        let mut idb = Vec::new();
        idb.extend_from_slice(&(self.link.linktype() as u16).to_le_bytes());
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&65535u32.to_le_bytes());
        block(&mut out, 1, &idb);
        for f in self.sorted() {
            let micros = (f.time * 1e6).round() as u64;
            let mut epb = Vec::new();
            epb.extend_from_slice(&0u32.to_le_bytes());
            epb.extend_from_slice(&((micros >> 32) as u32).to_le_bytes());
            epb.extend_from_slice(&(micros as u32).to_le_bytes());
            epb.extend_from_slice(&(f.bytes.len() as u32).to_le_bytes());
            epb.extend_from_slice(&(f.bytes.len() as u32).to_le_bytes());
            epb.extend_from_slice(&f.bytes);
            block(&mut out, 6, &epb);
        }
        out
    }
}

fn pcap_record(out: &mut Vec<u8>, f: &Frame) {
    let micros = (f.time * 1e6).round() as u64;
    out.extend_from_slice(&((micros / 1_000_000) as u32).to_le_bytes());
    out.extend_from_slice(&((micros % 1_000_000) as u32).to_le_bytes());
    out.extend_from_slice(&(f.bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&(f.bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&f.bytes);
}
