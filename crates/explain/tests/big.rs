//! Writes a long capture, of any size, to measure what `linger explain` holds while it
//! reads one (docs/explain.md, "Memory"):
//!
//! ```sh
//! LINGER_BIG_CAPTURE=/tmp/big.pcap LINGER_BIG_MB=400 \
//!     cargo test --release -p linger-explain --test big -- --ignored
//! /usr/bin/time -v target/release/linger explain /tmp/big.pcap > /dev/null
//! ```
//!
//! 250 exchanges a second over 200 keep-alive connections to one server; each connection
//! carries 100 exchanges and is closed by both sides, and a new one takes its place. Every
//! 1000th connection ends in an R3 instead: the server closes it right after a response
//! that said keep-alive, and the client writes its next request into the close. With
//! `LINGER_BIG_PROXY=1` that server is a proxy: it forwards each request (each with its own
//! `X-Request-Id`) on one of 50 pooled connections to an origin, which stay open.

mod synth;

use std::io::Write;

use synth::{By, Capture, Link};

const GET: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\nx-request-id: 1\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok";
const RATE: f64 = 250.0;
const SLOTS: usize = 200;
const PER_CONN: usize = 100;
const POOL: usize = 50;

#[test]
#[ignore = "writes hundreds of megabytes for a measurement by hand"]
fn write_a_long_capture() {
    let path = std::env::var("LINGER_BIG_CAPTURE").unwrap_or_else(|_| "/tmp/big.pcap".into());
    let mb: u64 = std::env::var("LINGER_BIG_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("the capture"));
    let mut cap = Capture::new(Link::Ethernet);
    out.write_all(&cap.pcap_header()).expect("written");
    let mut written = 24u64;
    let mut opened = 0usize;
    let mut open = |cap: &mut Capture, t: f64| {
        let n = opened;
        opened += 1;
        let client = format!(
            "10.1.{}.{}:{}",
            n / 50_000 % 250,
            1 + n / 12_500_000,
            10_000 + n % 50_000
        );
        let mut c = cap.conn(&client, "10.0.0.2:80", n as u32);
        cap.handshake(&mut c, t, 0.000_2);
        (n, c, 0usize)
    };
    let mut slots: Vec<_> = (0..SLOTS)
        .map(|j| open(&mut cap, j as f64 / RATE))
        .collect();
    let proxy = std::env::var_os("LINGER_BIG_PROXY").is_some();
    let mut pool: Vec<_> = (0..if proxy { POOL } else { 0 })
        .map(|j| {
            let mut c = cap.conn(&format!("10.0.0.2:{}", 50_000 + j), "10.0.0.3:9000", 7);
            cap.handshake(&mut c, j as f64 / RATE, 0.000_2);
            c
        })
        .collect();
    let mut k = SLOTS;
    while written < mb << 20 {
        let t = k as f64 / RATE;
        let (n, c, done) = &mut slots[k % SLOTS];
        if *done == PER_CONN {
            if *n % 1000 == 999 {
                cap.write_into_close(c, t, 0.000_5, GET);
            } else {
                cap.fin(c, By::Client, t);
                cap.fin(c, By::Server, t + 0.000_5);
            }
            slots[k % SLOTS] = open(&mut cap, t + 0.001);
        } else if proxy {
            let get = format!("GET /a HTTP/1.1\r\nhost: x\r\nx-request-id: {k}\r\n\r\n");
            let up = &mut pool[k % POOL];
            cap.send(c, By::Client, t, get.as_bytes());
            cap.send(up, By::Client, t + 0.000_2, get.as_bytes());
            cap.send(up, By::Server, t + 0.000_8, OK);
            cap.send(c, By::Server, t + 0.001, OK);
            *done += 1;
        } else {
            cap.exchange(c, t, GET, OK);
            *done += 1;
        }
        k += 1;
        if k.is_multiple_of(1000) {
            let records = cap.take_pcap_records(t - 0.1);
            written += records.len() as u64;
            out.write_all(&records).expect("written");
        }
    }
    out.write_all(&cap.take_pcap_records(f64::INFINITY))
        .expect("written");
    out.flush().expect("written");
    eprintln!("{path}: {} connections, {:.0} s", opened, k as f64 / RATE);
}
