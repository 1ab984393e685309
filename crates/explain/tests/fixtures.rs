//! One small capture per race, made by `synth` (this directory), kept in tests/fixtures/ and
//! explained here. The files must be exactly what the generator makes: regenerate them with
//! `LINGER_WRITE_FIXTURES=1 cargo test -p linger-explain --test fixtures the_fixtures_are`
//! (tests/fixtures/README.md).

mod synth;

use std::path::PathBuf;

use linger_explain::{explain_file, Options, Report};
use synth::{By, Capture, Link};

const GET: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\nx-request-id: 1\r\n\r\n";
const GET2: &[u8] = b"GET /b HTTP/1.1\r\nhost: x\r\nx-request-id: 2\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const RTT: f64 = 0.000_2;

/// R1: a proxy (front 10.0.0.2:8080) reuses its pooled connection to the origin
/// (10.0.0.3:9000) 5.003 s after the last response; the origin closed it at 5.0 s idle.
/// The proxy answers its client 502.
fn r1() -> Vec<u8> {
    let mut cap = Capture::new(Link::Ethernet);
    let mut front = cap.conn("10.0.0.1:40000", "10.0.0.2:8080", 1000);
    let mut back = cap.conn("10.0.0.2:50000", "10.0.0.3:9000", 5000);
    cap.handshake(&mut front, 0.0, RTT);
    cap.send(&mut front, By::Client, 0.001, GET);
    cap.handshake(&mut back, 0.0012, RTT);
    cap.send(&mut back, By::Client, 0.0016, GET);
    cap.send(&mut back, By::Server, 0.0030, OK);
    cap.send(&mut front, By::Server, 0.0034, OK);
    // The origin closes the idle connection at 5.0 s; the pool writes at 5.003 s.
    cap.fin(&mut back, By::Server, 5.0030);
    cap.send(&mut front, By::Client, 5.0050, GET2);
    cap.send_unacked(&mut back, By::Client, 5.0060, GET2);
    cap.rst(&mut back, By::Server, 5.0061);
    cap.send(
        &mut front,
        By::Server,
        5.0070,
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n",
    );
    cap.pcap()
}

/// R2: the proxy at 10.0.0.2:8080 closes idle client connections at 1 s; the client (a
/// load balancer) reuses one at 1.0004 s. The earlier request shows the proxy forwarding.
fn r2() -> Vec<u8> {
    let mut cap = Capture::new(Link::Ethernet);
    let mut front = cap.conn("10.0.0.1:40000", "10.0.0.2:8080", 1000);
    let mut back = cap.conn("10.0.0.2:50000", "10.0.0.3:9000", 5000);
    cap.handshake(&mut front, 0.0, RTT);
    cap.send(&mut front, By::Client, 0.001, GET);
    cap.handshake(&mut back, 0.0012, RTT);
    cap.send(&mut back, By::Client, 0.0016, GET);
    cap.send(&mut back, By::Server, 0.0030, OK);
    cap.send(&mut front, By::Server, 0.0034, OK);
    cap.write_into_close(&mut front, 1.0034, 0.0004, GET2);
    cap.pcap()
}

/// R3: the server says `Connection: keep-alive` on its second response and closes right
/// after it; the client's next request meets the close.
fn r3() -> Vec<u8> {
    let (mut cap, mut c) =
        Capture::opened(Link::Vlan, "192.168.1.10:40100", "192.168.1.20:80", 77, RTT);
    let ka = b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok";
    cap.exchange(&mut c, 0.001, GET, ka);
    cap.exchange(&mut c, 0.003, GET2, ka);
    cap.write_into_close(&mut c, 0.0041, 0.0001, GET);
    cap.pcap()
}

/// R4 (pcapng): a 413 while a 100000-byte upload is arriving, then an RST.
fn r4() -> Vec<u8> {
    let (mut cap, mut c) =
        Capture::opened(Link::Ethernet, "10.1.0.1:41000", "10.1.0.2:8080", 900, RTT);
    let head = b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n";
    cap.send(&mut c, By::Client, 0.001, head);
    let piece = vec![b'x'; 1000];
    cap.send(&mut c, By::Client, 0.002, &piece);
    cap.send(
        &mut c,
        By::Server,
        0.0025,
        b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    );
    cap.send_unacked(&mut c, By::Client, 0.003, &piece);
    cap.rst(&mut c, By::Server, 0.0031);
    cap.pcapng()
}

/// R5 (Linux cooked v2, as `tcpdump -i any`): the client's FIN during an event stream; the
/// server streams on for 2 s.
fn r5() -> Vec<u8> {
    let (mut cap, mut c) =
        Capture::opened(Link::Sll2, "127.0.0.1:42000", "127.0.0.1:8000", 4242, RTT);
    cap.send(
        &mut c,
        By::Client,
        0.001,
        b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n",
    );
    cap.send(
        &mut c,
        By::Server,
        0.002,
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for i in 0..30 {
        let t = 0.1 + 0.1 * f64::from(i);
        cap.send(&mut c, By::Server, t, b"b\r\ndata: ping\n\r\n");
        if i == 4 {
            cap.fin(&mut c, By::Client, t + 0.01);
        }
    }
    cap.pcap()
}

/// R6 (IPv6): a request retransmitted for 3 s with no ACK and no RST.
fn r6() -> Vec<u8> {
    let (mut cap, mut c) = Capture::opened(
        Link::Ethernet,
        "[2001:db8::1]:43000",
        "[2001:db8::2]:6379",
        31337,
        RTT,
    );
    cap.exchange(&mut c, 0.001, GET, OK);
    cap.send_unacked(&mut c, By::Client, 60.0, GET2);
    for t in [60.2, 60.6, 61.4, 63.0] {
        cap.retransmit(&mut c, By::Client, t, GET2);
    }
    cap.pcap()
}

/// R7 (BSD loopback): the client leaves with a FIN while its request waits; the server
/// answers 3 s later into the closed connection.
fn r7() -> Vec<u8> {
    let (mut cap, mut c) = Capture::opened(Link::Null, "127.0.0.1:44000", "127.0.0.1:8081", 7, RTT);
    cap.send(
        &mut c,
        By::Client,
        0.001,
        b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n",
    );
    cap.fin(&mut c, By::Client, 0.5);
    cap.send(
        &mut c,
        By::Server,
        3.0,
        b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\n\r\n",
    );
    cap.pcap()
}

/// R9: the server closes right after each response without saying so; the next POST is
/// written 0.1 ms after its FIN.
fn r9() -> Vec<u8> {
    let (mut cap, mut c) =
        Capture::opened(Link::Ethernet, "10.2.0.1:45000", "10.2.0.2:8080", 99, RTT);
    let post = b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi";
    cap.exchange(&mut c, 0.001, post, OK);
    cap.write_into_close(&mut c, 0.0021, 0.0001, post);
    cap.pcap()
}

/// R11: a response with Content-Length 2001 reset after 1000 body bytes.
fn r11() -> Vec<u8> {
    let (mut cap, mut c) =
        Capture::opened(Link::Ethernet, "10.3.0.1:46000", "10.3.0.2:8080", 11, RTT);
    cap.send(&mut c, By::Client, 0.001, GET);
    let mut resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2001\r\n\r\n".to_vec();
    resp.extend_from_slice(&[b'y'; 1000]);
    cap.send(&mut c, By::Server, 0.002, &resp);
    cap.rst(&mut c, By::Server, 0.003);
    cap.pcap()
}

/// R12: a request with both Content-Length and Transfer-Encoding.
fn r12() -> Vec<u8> {
    let (mut cap, mut c) =
        Capture::opened(Link::Ethernet, "10.4.0.1:47000", "10.4.0.2:8080", 12, RTT);
    cap.send(
        &mut c,
        By::Client,
        0.001,
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    cap.send(
        &mut c,
        By::Server,
        0.002,
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    );
    cap.fin(&mut c, By::Server, 0.0021);
    cap.fin(&mut c, By::Client, 0.0022);
    cap.pcap()
}

/// R12: a 417 to `Expect: 100-continue` before the body, the connection kept, the next
/// request on it.
fn r12_expect() -> Vec<u8> {
    let (mut cap, mut c) =
        Capture::opened(Link::Ethernet, "10.4.0.1:47100", "10.4.0.2:8080", 13, RTT);
    cap.send(
        &mut c,
        By::Client,
        0.001,
        b"PUT /f HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
    );
    cap.send(
        &mut c,
        By::Server,
        0.002,
        b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n",
    );
    cap.send(
        &mut c,
        By::Client,
        0.003,
        b"dataGET /g HTTP/1.1\r\nhost: x\r\n\r\n",
    );
    cap.send(&mut c, By::Server, 0.004, OK);
    cap.pcap()
}

/// Nothing wrong: keep-alive exchanges out of order on the wire, a retransmission that is
/// acknowledged, an announced close.
fn clean() -> Vec<u8> {
    let (mut cap, mut c) = Capture::opened(
        Link::Ethernet,
        "10.5.0.1:48000",
        "10.5.0.2:8080",
        4_294_967_250,
        RTT,
    );
    cap.send(&mut c, By::Client, 0.001, GET);
    cap.send_unacked(&mut c, By::Server, 0.002, OK);
    cap.retransmit(&mut c, By::Server, 0.2, OK);
    cap.send(&mut c, By::Client, 0.3, b"");
    cap.send_reordered(&mut c, By::Client, 1.0, GET2);
    cap.send(
        &mut c,
        By::Server,
        1.001,
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    );
    cap.fin(&mut c, By::Server, 1.0011);
    cap.fin(&mut c, By::Client, 1.0012);
    cap.pcap()
}

/// Every fixture: its file name, its bytes, the race it must name (none for `clean`) and
/// whether that race lost a request.
fn fixtures() -> Vec<(&'static str, Vec<u8>, Option<&'static str>, bool)> {
    vec![
        ("r1-idle-close-two-hops.pcap", r1(), Some("R1"), true),
        ("r2-proxy-closes-idle-client.pcap", r2(), Some("R2"), true),
        ("r3-unannounced-close-vlan.pcap", r3(), Some("R3"), true),
        ("r4-early-response.pcapng", r4(), Some("R4"), true),
        ("r5-half-close-streaming-sll2.pcap", r5(), Some("R5"), true),
        ("r6-silent-drop-ipv6.pcap", r6(), Some("R6"), true),
        ("r7-late-response-loopback.pcap", r7(), Some("R7"), true),
        ("r9-close-after-response.pcap", r9(), Some("R9"), true),
        ("r11-reset-mid-body.pcap", r11(), Some("R11"), false),
        ("r12-cl-and-te.pcap", r12(), Some("R12"), false),
        (
            "r12-expect-final-status.pcap",
            r12_expect(),
            Some("R12"),
            false,
        ),
        ("clean.pcap", clean(), None, false),
    ]
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn explain(name: &str) -> Report {
    explain_file(&dir().join(name), &Options::default(), &mut |_| {})
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_fixtures_are_what_the_generator_makes() {
    let write = std::env::var("LINGER_WRITE_FIXTURES").as_deref() == Ok("1");
    for (name, bytes, _, _) in fixtures() {
        let path = dir().join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            on_disk == bytes,
            "{name} differs from what tests/synth makes"
        );
        assert!(bytes.len() < 8 * 1024, "{name}: {} bytes", bytes.len());
    }
}

#[test]
fn each_fixture_names_its_race_and_nothing_else() {
    for (name, _, race, lost) in fixtures() {
        let report = explain(name);
        let text = report.render();
        match race {
            None => assert!(report.findings.is_empty(), "{name}:\n{text}"),
            Some(race) => {
                assert_eq!(report.findings.len(), 1, "{name}:\n{text}");
                let f = &report.findings[0];
                assert_eq!(f.race, race, "{name}:\n{text}");
                assert_eq!(f.lost, lost, "{name}:\n{text}");
                assert!(!f.evidence.is_empty() && !f.timeline.is_empty(), "{name}");
                assert!(!f.fix.is_empty(), "{name}");
            }
        }
    }
}

#[test]
fn r1_names_the_origin_hop_its_measured_idle_close_and_the_fix() {
    let report = explain("r1-idle-close-two-hops.pcap");
    let f = &report.findings[0];
    assert_eq!(f.server.to_string(), "10.0.0.3:9000");
    let measured = f.peer_idle_close.unwrap();
    assert!((measured - 5.0).abs() < 0.001, "{measured}");
    assert!(
        (f.idle_age.unwrap() - 5.003).abs() < 0.0005,
        "{:?}",
        f.idle_age
    );
    assert!(f.fix.contains("below 5.000 s"), "{}", f.fix);
    let behind = report
        .hops
        .iter()
        .find(|h| h.server.to_string() == "10.0.0.3:9000")
        .unwrap();
    assert_eq!(
        behind.client_is_proxy_of.map(|a| a.to_string()).as_deref(),
        Some("10.0.0.2:8080")
    );
    assert!(behind.wrong_way, "{}", report.render());
}

#[test]
fn link_types_and_formats_decode_to_the_same_connections() {
    // pcapng, Linux cooked v2, IPv6, BSD loopback and VLAN each carry one whole connection.
    for (name, client) in [
        ("r4-early-response.pcapng", "10.1.0.1:41000"),
        ("r5-half-close-streaming-sll2.pcap", "127.0.0.1:42000"),
        ("r6-silent-drop-ipv6.pcap", "[2001:db8::1]:43000"),
        ("r7-late-response-loopback.pcap", "127.0.0.1:44000"),
        ("r3-unannounced-close-vlan.pcap", "192.168.1.10:40100"),
    ] {
        let report = explain(name);
        assert_eq!(report.connections.len(), 1, "{name}");
        let c = &report.connections[0];
        assert_eq!(c.client.to_string(), client, "{name}");
        assert!(c.opened.is_some(), "{name}: the SYN");
        assert!(c.requests >= 1, "{name}");
        assert_eq!(report.skipped.undecodable + report.skipped.unknown_link, 0);
    }
    // The connection that lost its path: its retransmissions that nothing acknowledged.
    let report = explain("r6-silent-drop-ipv6.pcap");
    let (side, stall) = report.connections[0].unacked.expect("a stall");
    assert_eq!((side.name(), stall.retransmits), ("client", 4));
    assert!(!stall.reset && (stall.seconds() - 3.0).abs() < 1e-3);
}

#[test]
fn out_of_order_and_retransmitted_segments_are_reassembled_once() {
    let report = explain("clean.pcap");
    let c = &report.connections[0];
    assert_eq!((c.requests, c.responses), (2, 2), "{}", report.render());
    assert_eq!(c.retransmissions, 1);
    // The second request came in two segments, the second half first, and the client's
    // sequence numbers wrap past 2^32 during it.
    assert_eq!(c.missing_bytes, 0);
    assert!(report.findings.is_empty(), "{}", report.render());
}

#[test]
fn ports_and_times_select_what_is_read() {
    let only = |opts: Options| {
        explain_file(
            &dir().join("r1-idle-close-two-hops.pcap"),
            &opts,
            &mut |_| {},
        )
        .unwrap()
        .connections
        .len()
    };
    assert_eq!(only(Options::default()), 2);
    let port = Options {
        ports: vec![9000],
        ..Options::default()
    };
    assert_eq!(only(port), 1);
    let late = Options {
        since: Some(6.0),
        ..Options::default()
    };
    assert_eq!(only(late), 0);
}
