//! Long captures stream through a window: connections are explained and dropped as the
//! capture goes on, so what is held stays bounded however long the capture, and no finding
//! is lost or told twice.

mod synth;

use linger_explain::{explain, Options, Report, LINGER};
use synth::{By, Capture, Link};

const GET: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\nx-request-id: 1\r\n\r\n";
const GET2: &[u8] = b"GET /b HTTP/1.1\r\nhost: x\r\nx-request-id: 2\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const RTT: f64 = 0.000_2;
/// A new clean connection every this many seconds.
const EVERY: f64 = 2.0;
const CLEAN: usize = 600;

/// A client → proxy → origin pair at `t`: the origin closes its idle pooled connection at
/// 5.0 s, the proxy writes the next request on it 3 ms later (R1), and answers 502.
fn r1_at(cap: &mut Capture, t: f64, n: u16) {
    let mut front = cap.conn(&format!("10.0.1.1:{n}"), "10.0.1.2:8080", 1000);
    let mut back = cap.conn(&format!("10.0.1.2:{n}"), "10.0.1.3:9000", 5000);
    cap.handshake(&mut front, t, RTT);
    cap.send(&mut front, By::Client, t + 0.001, GET);
    cap.handshake(&mut back, t + 0.0012, RTT);
    cap.send(&mut back, By::Client, t + 0.0016, GET);
    cap.send(&mut back, By::Server, t + 0.0030, OK);
    cap.send(&mut front, By::Server, t + 0.0034, OK);
    cap.fin(&mut back, By::Server, t + 5.0030);
    cap.send(&mut front, By::Client, t + 5.0050, GET2);
    cap.send_unacked(&mut back, By::Client, t + 5.0060, GET2);
    cap.rst(&mut back, By::Server, t + 5.0061);
    cap.send(
        &mut front,
        By::Server,
        t + 5.0070,
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n",
    );
    cap.fin(&mut front, By::Client, t + 5.01);
    cap.fin(&mut front, By::Server, t + 5.011);
}

/// [`CLEAN`] short keep-alive connections to 10.0.0.2:80, one every [`EVERY`] seconds (20
/// minutes in all), each with three exchanges and closed by both sides; among them, an R1
/// through a proxy at 300 s and at 900 s, and a client that reuses a connection after
/// 400 s idle, which the server had closed (R1/R2) at 399 s.
fn long_capture() -> Vec<u8> {
    let mut cap = Capture::new(Link::Ethernet);
    for k in 0..CLEAN {
        let t = k as f64 * EVERY;
        let mut c = cap.conn(&format!("10.0.0.1:{}", 20000 + k), "10.0.0.2:80", k as u32);
        cap.handshake(&mut c, t, RTT);
        for i in 0..3 {
            cap.exchange(&mut c, t + 0.01 + i as f64 * 0.1, GET, OK);
        }
        cap.fin(&mut c, By::Client, t + 0.5);
        cap.fin(&mut c, By::Server, t + 0.501);
    }
    r1_at(&mut cap, 300.0, 41000);
    r1_at(&mut cap, 900.0, 42000);
    let mut idle = cap.conn("10.0.2.1:43000", "10.0.2.2:80", 77);
    cap.handshake(&mut idle, 100.0, RTT);
    cap.exchange(&mut idle, 100.01, GET, OK);
    cap.write_into_close(&mut idle, 499.011, 1.0, GET2);
    cap.pcap()
}

fn run(bytes: Vec<u8>, keep_clean: Option<usize>) -> Report {
    let opts = Options {
        keep_clean,
        ..Options::default()
    };
    explain(std::io::Cursor::new(bytes), "long", &opts, &mut |_| {}).expect("explained")
}

fn races(r: &Report) -> Vec<(String, String)> {
    r.findings
        .iter()
        .map(|f| (f.race.clone(), f.server.to_string()))
        .collect()
}

#[test]
fn a_long_capture_holds_only_the_connections_of_its_window() {
    let report = run(long_capture(), None);
    let all = CLEAN + 2 * 2 + 1;
    assert_eq!(report.connections_seen, all);
    assert_eq!(report.connections.len(), all);
    assert_eq!(report.connections_left_out, 0);
    // Held at once: the connections that ended within the last LINGER and a sweep (30 s),
    // one every EVERY seconds, the R1 pairs and the idle connection; not all of them.
    let bound = ((LINGER + 30.0) / EVERY) as usize + 2 * 2 + 1 + 1;
    assert!(
        report.most_held <= bound,
        "held {} connections at once, more than {bound}",
        report.most_held
    );
    assert!(report.most_held < all / 4);
    // Each race once, and the hop behind each proxy seen as such.
    assert_eq!(
        races(&report),
        vec![
            ("R1/R2".to_string(), "10.0.2.2:80".to_string()),
            ("R1".to_string(), "10.0.1.3:9000".to_string()),
            ("R1".to_string(), "10.0.1.3:9000".to_string()),
        ]
    );
    assert!(report.findings.iter().all(|f| f.lost));
    let idle = &report.findings[0];
    assert!(idle.idle_age.is_some_and(|a| (a - 400.0).abs() < 0.01));
    // Connection ids stay those of the whole capture, in order.
    let ids: Vec<usize> = report.connections.iter().map(|c| c.id).collect();
    assert_eq!(ids, (0..all).collect::<Vec<_>>());
    let hop = report
        .hops
        .iter()
        .find(|h| h.server.to_string() == "10.0.1.3:9000")
        .expect("the origin's hop");
    assert_eq!((hop.connections, hop.requests), (2, 4));
    assert_eq!(
        hop.client_is_proxy_of.map(|s| s.to_string()).as_deref(),
        Some("10.0.1.2:8080")
    );
    let clean = report
        .hops
        .iter()
        .find(|h| h.server.to_string() == "10.0.0.2:80")
        .expect("the clean hop");
    assert_eq!((clean.connections, clean.requests), (CLEAN, 3 * CLEAN));
}

#[test]
fn the_same_races_are_found_in_a_short_part_of_the_capture() {
    // Each race alone, with nothing dropped before the end of its capture.
    let mut cap = Capture::new(Link::Ethernet);
    r1_at(&mut cap, 0.0, 41000);
    let alone = run(cap.pcap(), None);
    assert_eq!(alone.most_held, 2);
    assert_eq!(alone.findings.len(), 1);
    let f = &alone.findings[0];
    let long = run(long_capture(), None);
    // The idle connection's R1/R2 (opened at 100 s) first, then the two proxied R1s.
    for other in &long.findings[1..] {
        assert_eq!((&f.race, f.lost), (&other.race, other.lost));
        assert_eq!(f.peer_idle_close, other.peer_idle_close);
        let (a, b) = (f.idle_age.unwrap(), other.idle_age.unwrap());
        assert!((a - b).abs() < 1e-6, "{a} {b}");
        assert_eq!(f.evidence.len(), other.evidence.len());
    }
}

#[test]
fn past_the_cap_connections_without_findings_are_counted_not_listed() {
    let report = run(long_capture(), Some(50));
    let all = CLEAN + 2 * 2 + 1;
    assert_eq!(report.connections_seen, all);
    let flagged: Vec<usize> = report.findings.iter().map(|f| f.conn).collect();
    let listed_clean: Vec<usize> = report
        .connections
        .iter()
        .map(|c| c.id)
        .filter(|id| !flagged.contains(id))
        .collect();
    // The first 50 by id, whichever were dropped first.
    assert_eq!(listed_clean, (0..50).collect::<Vec<_>>());
    assert!(flagged
        .iter()
        .all(|id| report.connections.iter().any(|c| c.id == *id)));
    assert_eq!(
        report.connections_left_out,
        all - 50 - report.findings.len()
    );
    let text = report.render();
    assert!(
        text.contains(&format!(
            "--json has them all but {} without findings, only counted",
            report.connections_left_out
        )),
        "{text}"
    );
    assert!(text.contains(&format!("{all} TCP connections")), "{text}");
}

/// One keep-alive connection with `n` exchanges 10 ms apart, a 3 s idle gap before the
/// 100th, and an early 417 to `Expect: 100-continue` at the 3rd, with the request after it.
fn long_keep_alive(n: usize) -> Vec<u8> {
    let (mut cap, mut c) =
        Capture::opened(Link::Ethernet, "10.4.0.1:47100", "10.4.0.2:8080", 13, RTT);
    let mut t = 0.001;
    for i in 0..n {
        if i == 2 {
            cap.send(
                &mut c,
                By::Client,
                t,
                b"PUT /f HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
            );
            cap.send(
                &mut c,
                By::Server,
                t + 0.001,
                b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n",
            );
            cap.send(&mut c, By::Client, t + 0.002, b"data");
        } else {
            if i == 99 {
                t += 3.0;
            }
            cap.exchange(&mut c, t, GET, OK);
        }
        t += 0.01;
    }
    cap.fin(&mut c, By::Client, t);
    cap.fin(&mut c, By::Server, t + 0.001);
    cap.pcap()
}

#[test]
fn a_connection_with_many_requests_holds_only_its_last_ones() {
    let n = 5_000;
    let bytes = long_keep_alive(n);
    // What the tracker holds of the connection, segment by segment.
    let mut reader =
        linger_explain::capture::Reader::new(std::io::Cursor::new(bytes.clone())).expect("pcap");
    let mut tracker = linger_explain::tcp::Tracker::default();
    let mut most = 0;
    while let Some(seg) = reader.next_segment().expect("segment") {
        tracker.segment(&seg);
        let http = &tracker.conns[0].http;
        most = most.max(http.requests.len().max(http.responses.len()));
    }
    let keep = linger_explain::http::KEEP_EXCHANGES;
    assert!(most <= 2 * keep + 1, "held {most} requests");
    assert_eq!(tracker.conns[0].http.request_count(), n);
    // The report counts them all, and what was dropped still counts.
    let report = run(bytes, None);
    let c = &report.connections[0];
    assert_eq!((c.requests, c.responses), (n, n));
    assert!(c.longest_idle.is_some_and(|i| i > 2.9 && i < 3.1), "{c:?}");
    assert_eq!(
        report.hops[0].idle.longest_reuse.map(|r| r > 2.9),
        Some(true)
    );
    let r12: Vec<_> = report.findings.iter().filter(|f| f.race == "R12").collect();
    assert_eq!(r12.len(), 1, "{:?}", report.findings);
    assert!(r12[0].text.contains("PUT /f"), "{}", r12[0].text);
    assert!(r12[0].text.contains("GET /a"), "{}", r12[0].text);
}

#[test]
fn a_connection_gone_quiet_is_explained_while_the_capture_goes_on() {
    // A silent drop at 10 s (R6), then nothing more on that connection, and a short clean
    // connection every 10 s for 1200 s: the quiet one is dropped past its idle window.
    let mut cap = Capture::new(Link::Ethernet);
    let mut dead = cap.conn("10.5.0.1:45000", "10.5.0.2:6379", 9);
    cap.handshake(&mut dead, 10.0, RTT);
    cap.send_unacked(&mut dead, By::Client, 10.001, GET);
    for t in [10.2, 10.6, 11.4, 13.0] {
        cap.retransmit(&mut dead, By::Client, t, GET);
    }
    for k in 0..120 {
        let t = 20.0 + k as f64 * 10.0;
        let mut c = cap.conn(&format!("10.0.0.1:{}", 20000 + k), "10.0.0.2:80", k);
        cap.handshake(&mut c, t, RTT);
        cap.exchange(&mut c, t + 0.01, GET, OK);
        cap.fin(&mut c, By::Client, t + 0.5);
        cap.fin(&mut c, By::Server, t + 0.501);
    }
    let report = run(cap.pcap(), None);
    assert_eq!(report.connections_seen, 121);
    assert!(report.most_held < 40, "held {}", report.most_held);
    assert_eq!(races(&report), vec![("R6".into(), "10.5.0.2:6379".into())]);
    let text = &report.findings[0].text;
    // Dropped within a sweep (30 s) past the idle window, 13 s + 900 s.
    assert!(
        text.contains("no RST came in the 9") && !text.contains("capture ended"),
        "{text}"
    );
    let quiet = &report.connections[0];
    assert_eq!(quiet.id, 0);
    assert!(
        quiet
            .quiet_when_dropped
            .is_some_and(|q| q > 900.0 && q < 935.0),
        "{quiet:?}"
    );
    assert!(report.connections[1..]
        .iter()
        .all(|c| c.quiet_when_dropped.is_none()));
    assert!(
        report.render().contains("when it was explained"),
        "{}",
        report.render()
    );
}
