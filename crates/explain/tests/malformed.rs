//! Bad input: files that are not captures, captures cut short, and random and mutated
//! captures. Each gets a clear error that names the byte offset, or a report; nothing
//! panics. The mutation run has a fixed seed and is bounded in count and time.

use std::io::Cursor;
use std::time::{Duration, Instant};

use linger_explain::{explain, CaptureError, Options, Report};

const SEEDS: [(&str, &[u8]); 4] = [
    (
        "r1 pcap",
        include_bytes!("fixtures/r1-idle-close-two-hops.pcap"),
    ),
    (
        "r4 pcapng",
        include_bytes!("fixtures/r4-early-response.pcapng"),
    ),
    (
        "r5 sll2",
        include_bytes!("fixtures/r5-half-close-streaming-sll2.pcap"),
    ),
    (
        "r6 ipv6",
        include_bytes!("fixtures/r6-silent-drop-ipv6.pcap"),
    ),
];

fn read(bytes: &[u8]) -> Result<Report, CaptureError> {
    explain(
        Cursor::new(bytes.to_vec()),
        "input",
        &Options::default(),
        &mut |_| {},
    )
}

/// The offset an error names.
fn offset(e: &CaptureError) -> u64 {
    match e {
        CaptureError::Format { offset, .. } => *offset,
        CaptureError::Io(e) => panic!("a read from memory failed: {e}"),
    }
}

/// Where each record of a pcap file starts, and where the file ends.
fn pcap_records(bytes: &[u8]) -> Vec<usize> {
    let mut at = 24;
    let mut starts = Vec::new();
    while at + 16 <= bytes.len() {
        starts.push(at);
        let caplen = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16 + caplen;
    }
    assert_eq!(at, bytes.len(), "the fixture is whole");
    starts
}

#[test]
fn a_file_that_is_not_a_capture_is_named_so_at_offset_0() {
    for bytes in [
        &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        &[0u8; 100][..],
        &b"\xd4\xc3\xb2"[..],
    ] {
        let e = read(bytes).unwrap_err();
        assert_eq!(offset(&e), 0, "{e}");
        assert!(e.to_string().starts_with("at byte offset 0: "), "{e}");
    }
    let e = read(b"").unwrap_err();
    assert_eq!(e.to_string(), "at byte offset 0: the file is empty");
}

#[test]
fn a_capture_cut_inside_a_record_names_where_that_record_starts() {
    let (_, bytes) = SEEDS[0];
    let starts = pcap_records(bytes);
    for (i, &start) in starts.iter().enumerate().skip(1) {
        // Cut inside the record header, and inside the packet.
        for cut in [start + 5, start + 16 + 3] {
            let e = read(&bytes[..cut]).unwrap_err();
            assert_eq!(offset(&e) as usize, start, "record {i} cut at {cut}: {e}");
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        // Cut at the record's start: the records before it are a whole capture.
        let report = read(&bytes[..start]).expect("whole records");
        assert_eq!(report.packets as usize, i);
    }
    // The pcapng fixture, cut in its last block.
    let (_, ng) = SEEDS[1];
    let e = read(&ng[..ng.len() - 7]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!((offset(&e) as usize) < ng.len() - 7, "{e}");
}

#[test]
fn a_record_longer_than_the_reader_holds_is_an_error_not_an_allocation() {
    let (_, bytes) = SEEDS[0];
    let start = pcap_records(bytes)[0];
    let mut b = bytes.to_vec();
    b[start + 8..start + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = read(&b).unwrap_err();
    assert_eq!(offset(&e) as usize, start, "{e}");
}

/// One mutation of a seed: flipped bytes, a cut, inserted bytes, a rewritten length, or
/// random bytes after a valid magic number.
fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> (Vec<u8>, &'static str) {
    let mut b = seed.to_vec();
    let what = match rng.u8(..5) {
        0 => {
            for _ in 0..rng.usize(1..16) {
                let i = rng.usize(..b.len());
                b[i] ^= 1 << rng.u8(..8);
            }
            "flipped bits"
        }
        1 => {
            b.truncate(rng.usize(..b.len()));
            "cut"
        }
        2 => {
            let at = rng.usize(..=b.len());
            let extra: Vec<u8> = (0..rng.usize(1..64)).map(|_| rng.u8(..)).collect();
            b.splice(at..at, extra);
            "inserted bytes"
        }
        3 => {
            let at = rng.usize(..b.len().saturating_sub(4));
            b[at..at + 4].copy_from_slice(&rng.u32(..).to_le_bytes());
            "a rewritten word"
        }
        _ => {
            let keep = 4.min(b.len());
            b.truncate(keep);
            b.extend((0..rng.usize(..4096)).map(|_| rng.u8(..)));
            "random bytes after the magic number"
        }
    };
    (b, what)
}

#[test]
fn random_and_mutated_captures_get_a_report_or_an_error_with_an_offset() {
    const MOST: usize = 4000;
    let budget = Duration::from_secs(4);
    let mut rng = fastrand::Rng::with_seed(0x5eed_1e57);
    let started = Instant::now();
    let (mut n, mut errors) = (0, 0);
    while n < MOST && started.elapsed() < budget {
        let (name, seed) = SEEDS[rng.usize(..SEEDS.len())];
        let (bytes, what) = mutate(&mut rng, seed);
        let outcome = std::panic::catch_unwind(|| read(&bytes));
        match outcome {
            Err(_) => panic!("case {n}: {name} with {what} panicked; input {bytes:02x?}"),
            Ok(Err(e)) => {
                errors += 1;
                assert!(
                    offset(&e) <= bytes.len() as u64,
                    "case {n}: {name} with {what}: {e}"
                );
                assert!(e.to_string().contains("byte offset"), "{e}");
            }
            Ok(Ok(report)) => {
                // Whatever it found, the report renders in both forms.
                assert!(!report.render().is_empty());
                assert!(serde_json::from_str::<serde_json::Value>(&report.to_json()).is_ok());
            }
        }
        n += 1;
    }
    assert!(n >= 200, "only {n} cases within {budget:?}");
    assert!(errors > 0 && errors < n, "{errors} errors in {n} cases");
}
