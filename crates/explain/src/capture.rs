//! Reads a capture file (pcap or pcapng, as `tcpdump -w` and Wireshark write them) one
//! packet at a time through `pcap-parser`'s streaming reader, whose buffer is bounded, and
//! decodes each packet's link, IP and TCP headers with `etherparse`.
//!
//! Link types: Ethernet (with VLAN tags), Linux cooked capture v1 and v2 (`tcpdump -i any`),
//! BSD loopback (`DLT_NULL`, `DLT_LOOP`) and raw IPv4/IPv6. Packets of other link types, and
//! packets that are not TCP, are counted and skipped. A file that is not a capture, or that
//! ends inside a block, is an error that names the byte offset.

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{Block, Linktype, PcapBlockOwned, PcapError};

/// The reader's buffer: the largest block a capture may hold.
pub const BUFFER: usize = 4 << 20;
/// The buffer's size at first; it doubles up to [`BUFFER`] when a block needs it.
const FIRST_BUFFER: usize = 128 << 10;

/// Why a capture cannot be read.
#[derive(Debug)]
pub enum CaptureError {
    Io(std::io::Error),
    /// The bytes at `offset` are not what a pcap or pcapng file holds there.
    Format {
        offset: u64,
        what: String,
    },
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read the capture: {e}"),
            Self::Format { offset, what } => write!(f, "at byte offset {offset}: {what}"),
        }
    }
}

impl std::error::Error for CaptureError {}

/// One TCP segment of the capture.
#[derive(Debug, Clone)]
pub struct Segment {
    /// 1-based, as Wireshark numbers packets.
    pub number: u64,
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub has_ack: bool,
    pub payload: Vec<u8>,
}

/// What the reader skipped.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Skipped {
    /// Packets of a link type this reader does not decode.
    pub unknown_link: u64,
    /// Packets whose headers did not decode (cut short by the snap length, or not IP).
    pub undecodable: u64,
    /// IP packets that are not TCP.
    pub not_tcp: u64,
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    link: Linktype,
    /// Timestamp units per second.
    resolution: u64,
    offset: i64,
}

/// A capture, read packet by packet.
pub struct Reader {
    inner: Box<dyn PcapReaderIterator + Send>,
    /// Bytes of the file consumed so far: the offset of the next block.
    offset: u64,
    capacity: usize,
    interfaces: Vec<Interface>,
    packets: u64,
    last_time: f64,
    pub skipped: Skipped,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("offset", &self.offset)
            .field("packets", &self.packets)
            .finish()
    }
}

fn format_error(offset: u64, what: impl Into<String>) -> CaptureError {
    CaptureError::Format {
        offset,
        what: what.into(),
    }
}

impl Reader {
    /// Starts reading `input`; fails when it is neither pcap nor pcapng.
    pub fn new(input: impl Read + Send + 'static) -> Result<Self, CaptureError> {
        let inner = pcap_parser::create_reader(FIRST_BUFFER, input).map_err(|e| match e {
            PcapError::Eof => format_error(0, "the file is empty"),
            PcapError::ReadError => format_error(0, "the file cannot be read"),
            PcapError::Incomplete(_) | PcapError::UnexpectedEof => {
                format_error(0, "the file ends inside its header")
            }
            _ => format_error(
                0,
                "not a pcap or pcapng capture (no known magic number at the start)",
            ),
        })?;
        Ok(Self {
            inner,
            offset: 0,
            capacity: FIRST_BUFFER,
            interfaces: Vec::new(),
            packets: 0,
            last_time: 0.0,
            skipped: Skipped::default(),
        })
    }

    /// Bytes of the file read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Packets read so far (TCP or not).
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The next TCP segment, `None` at the end of the file.
    pub fn next_segment(&mut self) -> Result<Option<Segment>, CaptureError> {
        loop {
            let offset = self.offset;
            let got = match self.inner.next() {
                Ok((len, block)) => {
                    let frame = frame(&mut self.interfaces, self.last_time, offset, block)?;
                    Ok((len, frame))
                }
                Err(PcapError::Eof) => return Ok(None),
                Err(PcapError::Incomplete(_)) => Err(true),
                Err(PcapError::UnexpectedEof) => {
                    return Err(format_error(
                        offset,
                        "the file ends inside a block (truncated)",
                    ))
                }
                Err(PcapError::BufferTooSmall) if self.capacity < BUFFER => Err(false),
                Err(PcapError::BufferTooSmall) => {
                    return Err(format_error(
                        offset,
                        format!("a block longer than {} MiB", BUFFER >> 20),
                    ))
                }
                Err(PcapError::ReadError) => {
                    return Err(format_error(offset, "the file cannot be read"))
                }
                Err(e) => return Err(format_error(offset, format!("malformed block ({e})"))),
            };
            match got {
                Ok((len, frame)) => {
                    self.inner.consume(len);
                    self.offset += len as u64;
                    if let Some((link, time, data)) = frame {
                        self.packets += 1;
                        self.last_time = time;
                        if let Some(seg) = self.decode(link, time, &data) {
                            return Ok(Some(seg));
                        }
                    }
                }
                Err(false) => {
                    self.capacity *= 2;
                    self.inner.grow(self.capacity);
                }
                Err(true) => {
                    if self.inner.reader_exhausted() {
                        return Err(format_error(
                            offset,
                            "the file ends inside a block (truncated)",
                        ));
                    }
                    self.inner.refill().map_err(|e| {
                        format_error(offset, format!("reading after this block failed ({e})"))
                    })?;
                    if self.inner.data().is_empty() && self.inner.reader_exhausted() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn decode(&mut self, link: Linktype, time: f64, data: &[u8]) -> Option<Segment> {
        let sliced = match decode_link(link, data) {
            Some(Ok(s)) => s,
            Some(Err(())) => {
                self.skipped.undecodable += 1;
                return None;
            }
            None => {
                self.skipped.unknown_link += 1;
                return None;
            }
        };
        let (src_ip, dst_ip): (IpAddr, IpAddr) = match &sliced.net {
            Some(NetSlice::Ipv4(v4)) => (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
            ),
            Some(NetSlice::Ipv6(v6)) => (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
            ),
            _ => {
                self.skipped.undecodable += 1;
                return None;
            }
        };
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
            self.skipped.not_tcp += 1;
            return None;
        };
        Some(Segment {
            number: self.packets,
            time,
            src: SocketAddr::new(src_ip, tcp.source_port()),
            dst: SocketAddr::new(dst_ip, tcp.destination_port()),
            seq: tcp.sequence_number(),
            ack: tcp.acknowledgment_number(),
            syn: tcp.syn(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            has_ack: tcp.ack(),
            payload: tcp.payload().to_vec(),
        })
    }
}

/// A block's packet, if it holds one: its link type, time and bytes.
fn frame(
    interfaces: &mut Vec<Interface>,
    last_time: f64,
    offset: u64,
    block: PcapBlockOwned<'_>,
) -> Result<Option<(Linktype, f64, Vec<u8>)>, CaptureError> {
    Ok(match block {
        PcapBlockOwned::LegacyHeader(h) => {
            let resolution = if h.is_nanosecond_precision() {
                1_000_000_000
            } else {
                1_000_000
            };
            *interfaces = vec![Interface {
                link: h.network,
                resolution,
                offset: 0,
            }];
            None
        }
        PcapBlockOwned::Legacy(b) => {
            let iface = interfaces
                .first()
                .copied()
                .ok_or_else(|| format_error(offset, "a packet before the file header"))?;
            let time = b.ts_sec as f64 + b.ts_usec as f64 / iface.resolution as f64;
            Some((iface.link, time, b.data.to_vec()))
        }
        PcapBlockOwned::NG(Block::SectionHeader(_)) => {
            interfaces.clear();
            None
        }
        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
            interfaces.push(Interface {
                link: idb.linktype,
                resolution: idb.ts_resolution().unwrap_or(1_000_000).max(1),
                offset: idb.ts_offset(),
            });
            None
        }
        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
            let iface = interfaces.get(epb.if_id as usize).copied().ok_or_else(|| {
                format_error(
                    offset,
                    format!(
                        "a packet of interface {}, which no block described",
                        epb.if_id
                    ),
                )
            })?;
            let ts = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
            let time = (ts / iface.resolution) as f64
                + (ts % iface.resolution) as f64 / iface.resolution as f64
                + iface.offset as f64;
            let len = (epb.caplen as usize).min(epb.data.len());
            Some((iface.link, time, epb.data[..len].to_vec()))
        }
        PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
            let iface = interfaces.first().copied().ok_or_else(|| {
                format_error(offset, "a packet before any interface was described")
            })?;
            // A simple packet block has no time: the previous packet's is the best guess.
            Some((iface.link, last_time, spb.data.to_vec()))
        }
        PcapBlockOwned::NG(_) => None,
    })
}

/// Link-layer decoding; `None` for a link type this reader does not know.
fn decode_link<'a>(link: Linktype, data: &'a [u8]) -> Option<Result<SlicedPacket<'a>, ()>> {
    const SLL2_HEADER: usize = 20;
    let ok = |r: Result<SlicedPacket<'a>, _>| Some(r.map_err(|_| ()));
    match link {
        Linktype::ETHERNET => ok(SlicedPacket::from_ethernet(data)),
        Linktype::LINUX_SLL => ok(SlicedPacket::from_linux_sll(data)),
        Linktype::LINUX_SLL2 => {
            // Protocol type (2), reserved (2), interface index (4), ARPHRD type (2),
            // packet type (1), address length (1), address (8).
            if data.len() < SLL2_HEADER {
                return Some(Err(()));
            }
            let proto = u16::from_be_bytes([data[0], data[1]]);
            ok(SlicedPacket::from_ether_type(
                EtherType(proto),
                &data[SLL2_HEADER..],
            ))
        }
        Linktype::NULL | Linktype::LOOP => {
            // The address family, in the capturing host's byte order for NULL, in network
            // order for LOOP: AF_INET is 2 everywhere, AF_INET6 is 10, 24, 28 or 30.
            if data.len() < 4 {
                return Some(Err(()));
            }
            let b: [u8; 4] = [data[0], data[1], data[2], data[3]];
            let family = if link == Linktype::LOOP {
                u32::from_be_bytes(b)
            } else {
                let le = u32::from_le_bytes(b);
                if le <= 0xffff {
                    le
                } else {
                    u32::from_be_bytes(b)
                }
            };
            match family {
                2 | 10 | 24 | 28 | 30 => ok(SlicedPacket::from_ip(&data[4..])),
                _ => Some(Err(())),
            }
        }
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => ok(SlicedPacket::from_ip(data)),
        // DLT_RAW as OpenBSD and some others number it.
        Linktype(12) | Linktype(14) => ok(SlicedPacket::from_ip(data)),
        _ => None,
    }
}
